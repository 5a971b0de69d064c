"""experiments.report rewrites README tables from runs/*/results.json, and flags rather than
invents: synthetic results files in, exact table rows out."""

import glob
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
    assert report.main(["--readme", str(p), "--runs", str(runs), "--placeholders"]) == 0
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
    report.main(["--readme", str(p), "--runs", str(runs), "--placeholders"])
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
    assert out.count("row(s) marked not yet regenerated") == 5 and "skipped " in out and "another command" in out


def test_a_results_file_missing_a_metric_is_flagged(tmp_path):
    runs = tmp_path / "runs"
    write(runs, "sequences", {"steps": 3000, "seed": 0}, {"solved_of_5": {"default": {"sgd": 5}}})
    p = readme(tmp_path, "experiments")
    report.main(["--readme", str(p), "--runs", str(runs), "--placeholders"])
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
    assert "| B, H, T, V | jrnn | flax | torch | " + " | ".join(report.BENCH_RATIOS.values()) + " |" in lines
    assert "| 1, 100, 25, 80 | 292 | 326 | 1,114 | – | **1.11x** |" in lines   # no default/default: an old run
    assert "| 32, 256, 128, 65 | 26,285 | – | – | – | – |" in lines
    assert any(line.startswith("[1] ") and "torch 2.0" in line for line in lines)


def test_rewriting_is_idempotent_and_check_reports_staleness(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    p = readme(tmp_path, "experiments")
    placeholders = ["--readme", str(p), "--runs", str(runs), "--placeholders"]
    assert report.main([*placeholders, "--check"]) == 1     # "OLD" table: stale
    assert "OLD" in p.read_text()                           # --check writes nothing
    report.main(placeholders)
    once = p.read_text()
    assert report.main([*placeholders, "--check"]) == 0
    report.main(placeholders)
    assert p.read_text() == once


@pytest.mark.parametrize("text, match", [
    ("<!-- report:begin experiments -->\n", "no report:end"),
    ("<!-- report:end experiments -->\n", "without a matching"),
    ("<!-- report:begin nosuch -->\n<!-- report:end nosuch -->\n", "unknown report table"),
])
def test_broken_markers_are_refused(tmp_path, text, match):
    p = tmp_path / "README.md"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        report.main(["--readme", str(p), "--runs", str(tmp_path)])
    assert p.read_text() == text


DOC_FILES = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                                              recursive=True))]
SUMMARY = "<!-- summary table: numbers quoted from the generated tables of the linked pages -->"


def test_every_results_table_in_the_readme_and_docs_is_generated():
    """Outside the report markers the README and the docs pages hold no results table: every other
    table is marked `<!-- static table: no measurements -->` on the line above its header (the module
    table, the list of reproduced systems, feature matrices), or is the README's summary, whose every
    number is quoted from a generated table of the page it links (test_docs checks the quotes)."""
    names, unmarked = [], []
    for name in DOC_FILES:
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            text = f.read()
        names += re.findall(r"<!-- report:begin ([\w-]+) -->", text)
        outside = re.sub(r"<!-- report:begin ([\w-]+) -->.*?<!-- report:end \1 -->", "", text, flags=re.S)
        lines = outside.splitlines()
        unmarked += [f"{name}: {line}" for above, line, below in zip([""] + lines, lines, lines[1:])
                     if below.startswith("|---")
                     and above.strip() not in ("<!-- static table: no measurements -->", SUMMARY)]
    assert sorted(names) == sorted(set(names)), "a table is generated into two places"
    assert set(report.TABLES) <= set(names), "every table the report builds has its place in the docs"
    assert unmarked == [], "tables with numbers come from python -m experiments.report (add a Row there)"


def test_with_no_readme_flag_the_report_rewrites_every_marked_docs_page(tmp_path, capsys, monkeypatch):
    """The tables moved from README.md to docs/ pages: the default files are README.md (when it holds
    a marker) and every docs page that does, and a page without runs stays byte for byte."""
    runs = tmp_path / "runs"
    write(runs, "bench", BENCH_CONFIG, BENCH_METRICS, rows=BENCH_ROWS)
    (tmp_path / "README.md").write_text("# short readme, no tables\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    bench = readme(docs, "bench").rename(docs / "benchmarks.md")
    repro = readme(docs, "experiments").rename(docs / "reproducing.md")
    (docs / "index.md").write_text("# home\n")
    before = repro.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert report.main([]) == 0
    out = capsys.readouterr().out
    assert "| 1, 100, 25, 80 | 292 | 326 |" in bench.read_text() and repro.read_bytes() == before
    assert "docs/benchmarks.md: rewritten" in out and "docs/reproducing.md: unchanged" in out, out
    assert report.main(["--check"]) == 0
    assert report.main(["--only", "bench", "--check"]) == 0


def test_a_page_showing_the_bench_plots_gets_them_drawn_from_its_tables(tmp_path):
    """benchmarks.md shows img/bench_cpu.svg and img/bench_gpu.svg: the report draws them from the
    page's bench tables (one bar per cell and config), byte-identical for the same numbers."""
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs"
    write(runs, "bench", BENCH_CONFIG, BENCH_METRICS, rows=BENCH_ROWS)
    p = readme(tmp_path, "bench", before="# b\n\n![cpu](img/bench_cpu.svg)\n\n")
    assert report.main(["--readme", str(p), "--runs", str(runs)]) == 0
    svg = (tmp_path / "img" / "bench_cpu.svg").read_bytes()
    assert svg.startswith(b"<?xml") and b"Elman" in svg and b"(1, 100, 25, 80)" in svg
    (tmp_path / "img" / "bench_cpu.svg").unlink()
    assert report.main(["--readme", str(p), "--runs", str(runs)]) == 0
    assert (tmp_path / "img" / "bench_cpu.svg").read_bytes() == svg
    assert not (tmp_path / "img" / "bench_gpu.svg").exists()      # the page does not show it
    ratios = report.bench_ratios(p.read_text())
    assert list(ratios["cpu"]) == ["Elman"] and ratios["gpu"] == {}


def test_the_docs_bench_plots_show_the_tables_of_the_benchmarks_page():
    """The checked-in plots are what the report draws from docs/benchmarks.md as it stands."""
    pytest.importorskip("matplotlib")
    with open(os.path.join(ROOT, "docs", "benchmarks.md"), encoding="utf-8") as f:
        text = f.read()
    ratios = report.bench_ratios(text)
    assert set(ratios["cpu"]) == {"Elman", "LSTM", "GRU"} and set(ratios["gpu"]) == {"Elman", "LSTM", "GRU"}
    for kind, rel in report.PLOTS.items():
        with open(os.path.join(ROOT, "docs", rel), "rb") as f:
            drawn = f.read()
        labels = re.findall(rb">([\d.]+)</text>", drawn)   # svg.fonttype none: the bar labels as text
        assert sorted(float(x) for x in labels if b"." in x) == sorted(
            round(r, 2) for per in ratios[kind].values() for r in per.values()), rel


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
    assert report.main(["--readme", str(p), "--runs", str(runs), "--placeholders"]) == 0
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
    assert "| 1, 100, 25, 80 | 900 | 1,800 | – | **2.00x** |" in text   # best/best; no default/default here
    # a budgeted GRU run is another command than the table's: its table kept, its numbers not shown
    gru = text[text.index("report:begin bench_gru"):]
    assert "OLD bench_gru TABLE 1.234" in gru and "900" not in gru
    report.main(["--readme", str(p), "--runs", str(runs), "--placeholders"])
    gru = p.read_text()[p.read_text().index("report:begin bench_gru"):]
    assert report.NOT_YET in gru and "900" not in gru and "time_budget_s" in gru


def test_only_rewrites_the_named_tables_and_keeps_the_others_verbatim(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    p = readme(tmp_path, "experiments", "bench_lstm", "cells")
    report.main(["--readme", str(p), "--runs", str(runs), "--only", "bench_lstm", "--placeholders"])
    text = p.read_text()
    assert "OLD experiments TABLE 1.234" in text and "OLD cells TABLE 1.234" in text
    assert "OLD bench_lstm TABLE" not in text and "not yet regenerated" in text
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        report.main(["--readme", str(p), "--runs", str(runs), "--only", "bench_gru"])   # not in this file
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --only:" in err and "has no table bench_gru" in err
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
    assert path.read_text() == text                      # a smoke report is no device's: the table kept
    report.main(["--readme", str(path), "--runs", str(runs), "--only", "device", "--placeholders"])
    assert report.NOT_YET in path.read_text() and "--smoke" in path.read_text()


@pytest.mark.parametrize("content, why", [
    ('{"smoke": false, "parts": {"env": ', "is not valid JSON (cut short?)"),          # copied back cut short
    ("[1, 2]", "not a device report"), ("null", "not a device report"),
    ('{"smoke": false, "wall_s": 1, "parts": []}', "not a device report"),
    ('{"smoke": false, "wall_s": 1, "parts": {"env": [1]}}', "not a device report"),
    ('{"smoke": false, "wall_s": 1, "parts": {"bench": {"rc": 0, "seconds": 1, "result": [1]}}}', "AttributeError"),
    ('{"smoke": false, "parts": {}}', "wall_s")])
def test_a_malformed_device_report_is_flagged_not_a_crash(tmp_path, content, why, capsys):
    """A report.json that is not a device report's object (a list, null, parts as a list) raised
    AttributeError out of `report`, losing every other table's rewrite; it is now named, with
    what is wrong, and its table kept (or marked, under --placeholders)."""
    path = readme(tmp_path, "device")
    before = path.read_bytes()
    (tmp_path / "runs" / "device_report").mkdir(parents=True)
    (tmp_path / "runs" / "device_report" / "report.json").write_text(content)
    argv = ["--readme", str(path), "--runs", str(tmp_path / "runs"), "--only", "device"]
    assert report.main(argv) == 0
    out = capsys.readouterr().out
    assert path.read_bytes() == before and f"skipped {tmp_path / 'runs' / 'device_report' / 'report.json'}" in out
    assert why in out and "kept as it is: device" in out
    assert report.main([*argv, "--placeholders"]) == 0
    text = path.read_text()
    assert report.NOT_YET in text and why in text and "OLD device TABLE" not in text


# ---- no destructive default: a table is regenerated only from its own runs -----------------------

BENCH_CONFIG = {"quick": True, "precision": "float32"}
BENCH_ROWS = [{"config": [1, 100, 25, 80], "impl": "jrnn", "train_us": 292.4},
              {"config": [1, 100, 25, 80], "impl": "flax", "train_us": 326.0}]
BENCH_METRICS = {"jrnn_speedup_vs_best_peer": {"1,100,25,80": 1.115}}


def region(text, name):
    return text[text.index(f"<!-- report:begin {name} -->"):text.index(f"<!-- report:end {name} -->")]


def test_with_no_flags_a_table_whose_runs_are_not_here_is_kept_byte_for_byte(tmp_path, capsys):
    """`python -m experiments.report` on a machine without the runs replaced every table's
    numbers with "not yet regenerated" (176 README lines) and exited 0."""
    runs = tmp_path / "runs"
    write(runs, "bench", BENCH_CONFIG, BENCH_METRICS, rows=BENCH_ROWS)
    write(runs, "charlm", {"mode": "recipe", "seeds": [0, 1, 2], "epochs": 10},     # 1 of experiments' 8 runs
          {"cost_before": [4.18], "cost_after": [2.56, 2.57, 2.55], "median_cost_after": 2.56})
    p = readme(tmp_path, "experiments", "bench", "device")
    before = p.read_bytes()
    assert report.main(["--readme", str(p), "--runs", str(runs)]) == 0
    after = p.read_bytes()
    for name in ("experiments", "device"):
        assert region(after.decode(), name) == region(before.decode(), name)
    assert "OLD bench TABLE" not in region(after.decode(), "bench") and "| 1, 100, 25, 80 | 292 | 326 |" in after.decode()
    assert report.NOT_YET not in after.decode()
    # everything outside the bench table is the old file's bytes
    b0, b1 = before.index(b"<!-- report:begin bench -->"), before.index(b"<!-- report:end bench -->")
    a0, a1 = after.index(b"<!-- report:begin bench -->"), after.index(b"<!-- report:end bench -->")
    assert before[:b0] == after[:a0] and before[b1:] == after[a1:]
    out = capsys.readouterr().out
    assert "regenerated: bench\n" in out and "kept as it is: experiments\n" in out and "kept as it is: device\n" in out
    assert f"7 of its 8 runs not in {runs}: charlm_full, minchar," in out
    assert f"its run not in {runs}: device_report" in out
    assert "1 table(s) with new text, 2 kept as they were" in out


def test_check_names_the_stale_tables_it_can_regenerate_and_lists_those_it_cannot(tmp_path, capsys):
    runs = tmp_path / "runs"
    write(runs, "bench", BENCH_CONFIG, BENCH_METRICS, rows=BENCH_ROWS)
    p = readme(tmp_path, "experiments", "bench")
    before = p.read_bytes()
    check = ["--readme", str(p), "--runs", str(runs), "--check"]
    assert report.main(check) == 1 and p.read_bytes() == before          # --check writes nothing
    out = capsys.readouterr().out
    assert "out of date: bench\n" in out and "not checked: experiments\n" in out and "out of date: bench (" in out
    assert report.main(check[:-1]) == 0
    assert report.main(check) == 0
    out = capsys.readouterr().out
    assert "up to date: bench\n" in out and "not checked: experiments\n" in out
    assert "up to date (1 table(s) checked, 1 not checked)" in out


def test_check_with_no_table_checkable_fails_instead_of_passing_on_nothing(tmp_path, capsys):
    """With none of the tables' runs here, every table is "not checked": exit 1, said so, so a
    check of nothing cannot pass forever."""
    (tmp_path / "runs").mkdir()
    p = readme(tmp_path, "experiments", "bench")
    assert report.main(["--readme", str(p), "--runs", str(tmp_path / "runs"), "--check"]) == 1
    assert "nothing checked: not one table has all its runs in" in capsys.readouterr().out
    # --placeholders checks every table as it would write it
    assert report.main(["--readme", str(p), "--runs", str(tmp_path / "runs"), "--check", "--placeholders"]) == 1
    assert "out of date: experiments, bench" in capsys.readouterr().out


GOOD_BENCH = {"experiment": "bench", "config": BENCH_CONFIG, "metrics": BENCH_METRICS, "rows": BENCH_ROWS,
              "wall_time_s": 3.0, "environment": ENV}


@pytest.mark.parametrize("content, what", [
    (b"[]", "holds a list, not a results object"),
    (b"null", "holds null, not a results object"),
    (b'{"config": null}', "'config' is null, not an object"),
    (b'{"metrics": {}}', "has no 'config'"),
    (b"\xff\xfe{}", "is not UTF-8 text (byte 0xff at offset 0)"),
    (json.dumps(GOOD_BENCH).encode()[:60], "is not valid JSON (cut short?)"),
    (b"", "is empty"),
    (json.dumps({k: v for k, v in GOOD_BENCH.items() if k != "rows"}).encode(), "lacks 'rows'"),
    (json.dumps({**GOOD_BENCH, "environment": None}).encode(), "'environment' is null"),
    (json.dumps({**GOOD_BENCH, "metrics": []}).encode(), "holds a value of the wrong kind (TypeError"),
    (json.dumps({**GOOD_BENCH, "rows": [None]}).encode(), "holds a value of the wrong kind (TypeError"),
    (None, "is not a file"),            # results.json a folder
])
def test_a_malformed_results_file_is_named_skipped_and_the_other_tables_regenerated(tmp_path, capsys, content, what):
    """One bad results.json ([], null, {"config": null}, invalid UTF-8, cut short, a key missing)
    raised an AttributeError traceback, or an error not naming the file, and aborted every table."""
    runs = tmp_path / "runs"
    write(runs, "bench_lstm", {**BENCH_CONFIG, "cell": "lstm", "time_budget_s": None}, BENCH_METRICS, rows=BENCH_ROWS)
    path = runs / "bench" / "results.json"
    path.parent.mkdir(parents=True)
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    p = readme(tmp_path, "bench", "bench_lstm")
    before = p.read_text()
    assert report.main(["--readme", str(p), "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert f"skipped {path} {what}" in out or f"skipped {path}: {what}" in out, out
    assert "kept as it is: bench\n" in out and "regenerated: bench_lstm\n" in out
    text = p.read_text()
    assert region(text, "bench") == region(before, "bench")                 # kept, not blanked
    assert "`python -m experiments.bench --quick --cell lstm` [1]" in region(text, "bench_lstm")


@pytest.mark.parametrize("make, says", [
    (lambda d: d / "nothere.md", "no file"),
    (lambda d: d, "is not a file"),
    (lambda d: (d / "notes.md").write_text("# notes\n\n| a | b |\n|---|---|\n") and d / "notes.md", "has no <!-- report:begin"),
    (lambda d: (d / "bin.md").write_bytes(b"\xff<!-- report:begin bench -->") and d / "bin.md", "is not UTF-8 text"),
])
def test_a_readme_that_is_missing_a_folder_or_not_a_marked_readme_is_refused(tmp_path, capsys, make, says):
    path = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        report.main(["--readme", str(path), "--runs", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --readme:" in err and says in err, err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("argv, flag", [
    (["--only", ""], "--only"), (["--only", ","], "--only"), (["--only", "bench,,deer"], "--only"),
    (["--only", "nosuch"], "--only"), (["--only", "deer"], "--only"),     # a table this README lacks
    (["--runs", ""], "--runs"), (["--runs", "   "], "--runs"), (["--runs", "RUNS_FILE"], "--runs"),
    (["--runs", "no such folder"], "--runs"), (["--readme", ""], "--readme"),
])
def test_hostile_flags_are_argparse_errors_before_any_work(tmp_path, capsys, argv, flag):
    (tmp_path / "RUNS_FILE").write_text("a file")
    argv = [str(tmp_path / a) if a in ("RUNS_FILE", "no such folder") else a for a in argv]
    p = readme(tmp_path, "bench")
    before = p.read_bytes()
    with pytest.raises(SystemExit) as e:
        report.main(["--readme", str(p), "--runs", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}:" in err, err
    assert p.read_bytes() == before


def test_a_rewrite_keeps_line_endings_permissions_symlinks_and_a_users_tmp_file(tmp_path):
    """The rewrite went through a fixed README.md.tmp (a user's file of that name was replaced and
    then gone), read with universal newlines (every \\r\\n of the file became \\n) and left the
    file with the default permissions."""
    folder = tmp_path / "my docs"
    runs = folder / "my runs"
    write(runs, "bench", BENCH_CONFIG, BENCH_METRICS, rows=BENCH_ROWS)
    p = readme(folder, "bench", before="# title\r\n\r\nintro text\r\n")
    p.chmod(0o640)
    (folder / "README.md.tmp").write_text("mine")
    assert report.main(["--readme", str(p), "--runs", str(runs)]) == 0
    data = p.read_bytes()
    assert data.startswith(b"# title\r\n\r\nintro text\r\n") and b"| 1, 100, 25, 80 | 292 | 326 |" in data
    assert (p.stat().st_mode & 0o777) == 0o640 and (folder / "README.md.tmp").read_text() == "mine"
    assert sorted(x.name for x in folder.iterdir()) == ["README.md", "README.md.tmp", "my runs"]
    link = folder / "LINK.md"
    link.symlink_to(p.name)
    p.write_bytes(data.replace(b"| 292 |", b"| 1 |"))
    assert report.main(["--readme", str(link), "--runs", str(runs)]) == 0
    assert link.is_symlink() and p.read_bytes() == data


def test_the_report_renders_every_table_without_jax(tmp_path):
    """One module renders every results table, and it needs no jax: the device report's tables
    were drawn by importing experiments.device_report, which imports jax and jrnn (a check of the
    docs failed while jrnn did not import)."""
    import subprocess
    import sys
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from experiments import report\n"
            "for name in report.TABLES:\n"
            "    report.build(name, Path(sys.argv[1]))\n"
            "assert 'jax' not in sys.modules and 'jrnn' not in sys.modules, sorted(m for m in sys.modules if 'ja' in m)\n")
    runs = tmp_path / "runs"
    (runs / "device_report").mkdir(parents=True)
    (runs / "device_report" / "report.json").write_text(json.dumps(
        {"wall_s": 1.0, "parts": {"env": {"rc": 0, "seconds": 1.0, "result": {"backend": "gpu"}}}}))
    p = subprocess.run([sys.executable, "-c", code, str(runs)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
