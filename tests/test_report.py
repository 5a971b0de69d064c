"""experiments.report rewrites README tables from runs/*/results.json, and flags rather than
invents: synthetic results files in, exact table rows out."""

import json
import os
import re

import pytest

from experiments import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENV = {"jax": "9.9.9", "jaxlib": "9.9.9", "optax": "0.0.7", "numpy": "3.1.4", "backend": "cpu", "device": "cpu",
       "device_count": 2, "python": "3.99.0", "machine": "x86_64", "cpus": 7, "cpu_model": "Test CPU",
       "commit": "abc1234", "load_avg_1min": 3.25}


def write(runs, name, config, metrics, **extra):
    d = runs / name
    d.mkdir(parents=True)
    payload = {"experiment": name, "config": config, "metrics": metrics, "wall_time_s": 12.5,
               "environment": ENV, **extra}
    (d / "results.json").write_text(json.dumps(payload))


def readme(tmp_path, *names, before="# title\n\nintro text\n", after="\nclosing text\n"):
    body = "".join(f"<!-- report:begin {n} -->\nOLD {n} TABLE 1.234\n<!-- report:end {n} -->\n" for n in names)
    p = tmp_path / "README.md"
    p.write_text(before + body + after)
    return p


def test_rows_come_from_the_results_files_and_name_the_machine(tmp_path):
    runs = tmp_path / "runs"
    write(runs, "charlm", {"mode": "recipe", "seeds": [0, 1, 2], "epochs": 10},
          {"cost_before": [4.1804, 4.18, 4.18], "cost_after": [2.5651, 2.5632, 2.5601], "median_cost_after": 2.5632})
    write(runs, "memory", {"lengths": [1000, 4000, 16000], "batch": 8, "hidden": 256, "timed_T": 4000},
          {"rows": [{"T": 1000, "plain": 43.0, "remat": 1.5}, {"T": 4000, "plain": 172.1, "remat": 3.9,
                                                                 "plain_grad_s": 0.5, "remat_grad_s": 0.55},
                    {"T": 16000, "plain": 689.0, "remat": 7.0}]})
    p = readme(tmp_path, "experiments")
    assert report.main(["--readme", str(p), "--runs", str(runs)]) == 0
    text = p.read_text()
    assert text.startswith("# title\n\nintro text\n<!-- report:begin experiments -->\n")
    assert text.endswith("<!-- report:end experiments -->\n\nclosing text\n") and "OLD" not in text
    row = next(line for line in text.splitlines() if line.startswith("| `charlm` (main)"))
    assert "**2.565, 2.563, 2.560** after 10 epochs (median 2.563); 12.5 s for all 3 seeds" in row
    assert "`python -m experiments.charlm --seeds 3`" in row and row.endswith("| [1], load 3.2 |")
    mem = next(line for line in text.splitlines() if line.startswith("| `memory`"))
    assert "T=4000: **172.1 plain, 3.9 with `remat=True`**" in mem and "0.500 vs 0.550 s" in mem
    env = next(line for line in text.splitlines() if line.startswith("[1] "))
    for part in ("x86_64 Test CPU", "7 CPUs", "cpu backend", "jax 9.9.9", "optax 0.0.7", "numpy 3.1.4",
                 "Python 3.99.0", "commit abc1234"):
        assert part in env


def test_missing_and_foreign_runs_are_flagged_never_filled_in(tmp_path, capsys):
    runs = tmp_path / "runs"
    # a --full run written into runs/charlm: not the row's command, so its numbers must not appear
    write(runs, "charlm", {"mode": "full", "epochs": 10}, {"cost_after": [9.876]})
    p = readme(tmp_path, "experiments", "cells", "minchar_modes", "bench", "deer")
    report.main(["--readme", str(p), "--runs", str(runs)])
    text = p.read_text()
    charlm = next(line for line in text.splitlines() if line.startswith("| `charlm` (main)"))
    assert report.NOT_YET in charlm and "another command" in charlm and "9.876" not in text
    for row in report.EXPERIMENTS + report.CELLS + report.MINCHAR_MODES:
        line = next(line for line in text.splitlines() if f"`{row.command}`" in line)
        assert report.NOT_YET in line
        assert not re.search(r"\*\*\d", line)                     # no bold number anywhere in a missing row
    rows = len(report.EXPERIMENTS) + len(report.CELLS) + len(report.MINCHAR_MODES)
    assert text.count(f"{report.NOT_YET}: no ") == rows - 1 + 2
    assert "(no run measured yet)" in text
    out = capsys.readouterr().out
    assert out.count("not yet regenerated: ") == rows + 2


def test_a_results_file_missing_a_metric_is_flagged(tmp_path):
    runs = tmp_path / "runs"
    write(runs, "sequences", {"steps": 3000, "seed": 0}, {"solved_of_5": {"default": {"sgd": 5}}})
    p = readme(tmp_path, "experiments")
    report.main(["--readme", str(p), "--runs", str(runs)])
    line = next(line for line in p.read_text().splitlines() if line.startswith("| `sequences`"))
    assert report.NOT_YET in line and "lacks" in line


def test_bench_table_pivots_every_implementation(tmp_path):
    runs = tmp_path / "runs"
    rows = [{"config": [1, 100, 25, 80], "impl": i, "train_us": us} for i, us in
            (("jrnn", 292.4), ("flax", 326.0), ("torch", 1114.0))]
    rows.append({"config": [32, 256, 128, 65], "impl": "jrnn", "train_us": 26285.0})
    write(runs, "bench", {"quick": True, "precision": "float32"},
          {"jrnn_speedup_vs_best_peer": {"1,100,25,80": 1.115, "32,256,128,65": None}}, rows=rows,
          versions={"jax": "9.9.9", "torch": "2.0"})
    p = readme(tmp_path, "bench")
    report.main(["--readme", str(p), "--runs", str(runs)])
    lines = p.read_text().splitlines()
    assert "| B, H, T, V | jrnn | flax | torch | best peer / best jrnn |" in lines
    assert "| 1, 100, 25, 80 | 292 | 326 | 1,114 | **1.11x** |" in lines
    assert "| 32, 256, 128, 65 | 26,285 | – | – | – |" in lines
    assert any(line.startswith("[1] ") and "torch 2.0" in line for line in lines)


def test_rewriting_is_idempotent_and_check_reports_staleness(tmp_path):
    runs = tmp_path / "runs"
    p = readme(tmp_path, "experiments")
    assert report.main(["--readme", str(p), "--runs", str(runs), "--check"]) == 1   # "OLD" table: stale
    assert "OLD" in p.read_text()                                                   # --check writes nothing
    report.main(["--readme", str(p), "--runs", str(runs)])
    once = p.read_text()
    assert report.main(["--readme", str(p), "--runs", str(runs), "--check"]) == 0
    report.main(["--readme", str(p), "--runs", str(runs)])
    assert p.read_text() == once


@pytest.mark.parametrize("text, match", [
    ("<!-- report:begin experiments -->\n", "no report:end"),
    ("<!-- report:end experiments -->\n", "without a matching"),
    ("<!-- report:begin nosuch -->\n<!-- report:end nosuch -->\n", "unknown report table"),
    ("no markers at all\n", "no <!-- report:begin"),
])
def test_broken_markers_are_refused(tmp_path, text, match):
    p = tmp_path / "README.md"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        report.main(["--readme", str(p), "--runs", str(tmp_path)])
    assert p.read_text() == text


def test_every_results_table_in_the_readme_is_generated():
    """Outside the report markers the README holds no results table: every other table is marked
    `<!-- static table: no measurements -->` on the line above its header (the module table, the
    list of reproduced systems, feature matrices)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    names = re.findall(r"<!-- report:begin ([\w-]+) -->", text)
    assert {"experiments", "cells", "minchar_modes", "bench", "deer"} <= set(names)
    outside = re.sub(r"<!-- report:begin ([\w-]+) -->.*?<!-- report:end \1 -->", "", text, flags=re.S)
    lines = outside.splitlines()
    unmarked = [line for above, line, below in zip([""] + lines, lines, lines[1:])
                if below.startswith("|---") and above.strip() != "<!-- static table: no measurements -->"]
    assert unmarked == [], "tables with numbers come from python -m experiments.report (add a Row there)"
    assert "| module | owns |" in lines


def test_cells_tbptt_rows_tell_gradients_apart_and_deer_lists_what_the_budget_left_out(tmp_path):
    runs = tmp_path / "runs"
    full = {"mode": "full", "layers": 1, "batch": 64, "seq_len": 64, "lr": 0.002, "epochs": 2, "corpus_chars": 300000}
    metrics = {"parameters": 99739, "val_nats": 2.9, "val_bits": 4.184, "steps": 120}
    write(runs, "cells_tbptt/lstm_16_32", {**full, "cell": "lstm", "hidden": 122, "k1": 16, "k2": 32}, metrics)
    # a full-BPTT run written where the TBPTT(8, 8) row reads: another command, never shown as that row
    write(runs, "cells_tbptt/lstm_8_8", {**full, "cell": "lstm", "hidden": 122, "k1": 0, "k2": 0}, metrics)
    write(runs, "bench_deer", {"configs": [[1000, 8, 1], [16000, 8, 1]], "quick": True, "time_budget_s": 240}, {},
          rows=[{"T": 1000, "H": 8, "B": 1, "method": "sequential", "forward_ms": 0.1, "train_ms": 0.2},
                {"T": 1000, "H": 8, "B": 1, "method": "elk", "forward_ms": 28.9, "train_ms": 28.8,
                 "forward_speedup": 0.00346, "train_speedup": 0.00694, "iterations": 5, "fell_back": False}],
          not_measured=[[16000, 8, 1]])
    p = readme(tmp_path, "cells_tbptt", "deer")
    assert report.main(["--readme", str(p), "--runs", str(runs)]) == 0
    lines = p.read_text().splitlines()
    row = next(line for line in lines if line.startswith("| lstm, TBPTT(16, 32)"))
    assert "--k1 16 --k2 32" in row and "| 99,739 | 2.900 | 4.184 | 120 | 12 s |" in row
    row = next(line for line in lines if line.startswith("| lstm, TBPTT(8, 8)"))
    assert report.NOT_YET in row and "2.900" not in row
    assert any(line.startswith("| 1000 | 8 | 1 | elk | 28.9 | 28.8 | 0.00346x, 0.00694x | 5 |") for line in lines)
    assert "Not measured (time budget spent): (16000, 8, 1)." in lines


def test_a_budgeted_cell_bench_is_another_command_and_a_full_run_fills_the_table(tmp_path):
    runs = tmp_path / "runs"
    rows = [{"config": [1, 100, 25, 80], "impl": i, "train_us": us} for i, us in (("jrnn", 900.0), ("flax", 1800.0))]
    write(runs, "bench_lstm", {"quick": True, "precision": "float32", "cell": "lstm", "time_budget_s": None},
          {"jrnn_speedup_vs_best_peer": {"1,100,25,80": 2.0}}, rows=rows)
    write(runs, "bench_gru", {"quick": True, "precision": "float32", "cell": "gru", "time_budget_s": 240.0},
          {"jrnn_speedup_vs_best_peer": {"1,100,25,80": 2.0}}, rows=rows, not_measured=[[64, 256, 1024, 65]])
    p = readme(tmp_path, "bench_lstm", "bench_gru")
    report.main(["--readme", str(p), "--runs", str(runs)])
    text = p.read_text()
    assert "`python -m experiments.bench --quick --cell lstm` [1]" in text
    assert "| 1, 100, 25, 80 | 900 | 1,800 | **2.00x** |" in text
    # a budgeted GRU run is another command than the table's: flagged, its numbers not shown
    gru = text[text.index("report:begin bench_gru"):]
    assert report.NOT_YET in gru and "900" not in gru and "time_budget_s" in gru


def test_only_rewrites_the_named_tables_and_keeps_the_others_verbatim(tmp_path):
    runs = tmp_path / "runs"
    p = readme(tmp_path, "experiments", "bench_lstm", "cells")
    report.main(["--readme", str(p), "--runs", str(runs), "--only", "bench_lstm"])
    text = p.read_text()
    assert "OLD experiments TABLE 1.234" in text and "OLD cells TABLE 1.234" in text
    assert "OLD bench_lstm TABLE" not in text and "not yet regenerated" in text
    with pytest.raises(ValueError, match="--only names no table"):
        report.main(["--readme", str(p), "--runs", str(runs), "--only", "bench_gru"])   # not in this file
    assert p.read_text() == text


def test_the_device_table_comes_from_a_device_reports_json_and_refuses_a_smoke_run(tmp_path):
    """`report --only device` renders runs/device_report/report.json (headings one level down);
    a missing or `--smoke` report is flagged, never filled in."""
    path = readme(tmp_path, "device")
    runs = tmp_path / "runs"
    (runs / "device_report").mkdir(parents=True)
    deer_row = {"T": 16384, "H": 8, "B": 1, "method": "deer", "compile_s": 5.9, "forward_ms": 0.8, "train_ms": 1.1,
                "forward_speedup": 20.5, "train_speedup": 33.1, "iterations": 5, "fell_back": False, "residual": 1e-7}
    rep = {"smoke": False, "wall_s": 461.0, "parts": {
        "deer": {"rc": 0, "seconds": 64.0, "timed_out": False, "result": {"rows": [deer_row], "not_measured": [[65536, 8, 1]]}},
        "env": {"rc": 0, "seconds": 8.0, "timed_out": False, "result": {"jax": "9.9.9", "devices": ["Test GPU"]}}}}
    (runs / "device_report" / "report.json").write_text(json.dumps(rep))
    assert report.main(["--readme", str(path), "--runs", str(runs), "--only", "device"]) == 0
    text = path.read_text()
    assert "OLD device TABLE" not in text and "| jax | 9.9.9 |" in text and "['Test GPU']" in text
    assert "| 16384 | 8 | 1 | deer | 5.9 | 0.8 | 1.1 | 20.50x, 33.10x | 5 |" in text
    assert "\n## " not in text and "**parallel-in-time vs sequential scan (Elman)**" in text
    assert text.index("| env | 8 |") < text.index("| deer | 64 |")       # the parts in run order
    rep["smoke"] = True
    (runs / "device_report" / "report.json").write_text(json.dumps(rep))
    report.main(["--readme", str(path), "--runs", str(runs), "--only", "device"])
    assert report.NOT_YET in path.read_text() and "--smoke" in path.read_text()


@pytest.mark.parametrize("content, why", [
    ('{"smoke": false, "parts": {"env": ', "JSONDecodeError"),          # copied back cut short
    ("[1, 2]", "not a device report"), ("null", "not a device report"),
    ('{"smoke": false, "wall_s": 1, "parts": []}', "not a device report"),
    ('{"smoke": false, "wall_s": 1, "parts": {"env": [1]}}', "not a device report"),
    ('{"smoke": false, "wall_s": 1, "parts": {"bench": {"rc": 0, "seconds": 1, "result": [1]}}}', "AttributeError"),
    ('{"smoke": false, "parts": {}}', "wall_s")])
def test_a_malformed_device_report_is_flagged_not_a_crash(tmp_path, content, why):
    """A report.json that is not a device report's object (a list, null, parts as a list) raised
    AttributeError out of `report`, losing every other table's rewrite; it is now flagged."""
    path = readme(tmp_path, "device")
    (tmp_path / "runs" / "device_report").mkdir(parents=True)
    (tmp_path / "runs" / "device_report" / "report.json").write_text(content)
    assert report.main(["--readme", str(path), "--runs", str(tmp_path / "runs"), "--only", "device"]) == 0
    text = path.read_text()
    assert report.NOT_YET in text and why in text and "OLD device TABLE" not in text
