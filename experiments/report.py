"""Every results table's markdown, and the command that regenerates the tables of README.md and
docs/*.md from the runs' results.json files (bench and the device report print their rows with
the renderers here too; this module needs no jax).

    python -m experiments.report                 # regenerate the tables whose runs are here, keep the rest
    python -m experiments.report --readme docs/benchmarks.md   # just this file (repeat for several)
    python -m experiments.report --check         # write nothing; exit 1 if a table with its runs here is stale
    python -m experiments.report --only bench_lstm,bench_gru   # just these tables
    python -m experiments.report --placeholders  # every table, a missing run's row marked "not yet regenerated"

Every results table lives between `<!-- report:begin NAME -->` and `<!-- report:end NAME -->`
in README.md or a page of docs/ (by default, every one of those files that holds a marker) and is
replaced as a whole, never edited by hand. A row's numbers come
from `runs/<dir>/results.json` of the command printed in the row. A table is regenerated only
when every run it needs is here and usable; a table with a run that is missing, unreadable or
from another command (its recorded config is not the row's command's) is kept byte for byte as
it is, and the command says which file and why. `--placeholders` regenerates those tables too,
each such row marked "not yet regenerated" instead of a number. Under each table: the machine,
CPU count and versions each row was measured with, read from the results file's `environment`.

A page that shows `img/bench_cpu.svg` or `img/bench_gpu.svg` gets those plots (best peer / best jrnn
per config and cell, from the page's bench tables and the device report's ratio lines) redrawn in
its img/ folder whenever the report writes it; `--check` does not compare plots.

`--check` compares the tables it can regenerate with the file and names the stale ones (exit 1);
the tables it cannot regenerate are listed as not checked, and when not one table could be
checked it exits 1 too (a check of nothing passes nothing). With `--placeholders` it checks every
table as `--placeholders` would write it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

NOT_YET = "**not yet regenerated**"


class Row(NamedTuple):
    """One README row: the run folder under runs/, the command that writes it, the config keys
    that command records (a results file with other values came from another command), a
    formatter of the measured numbers, and the fixed text of the last column."""
    run: str
    command: str
    expect: dict
    measured: Callable[[dict], str]
    reference: str = ""
    label: str = ""


# ---- formatters: results.json -> the "measured" cell ---------------------------------------

def _join(values, fmt="{:.3f}"):
    return ", ".join(fmt.format(v) for v in values)


def _range(values, fmt="{:.3f}"):
    values = [v for v in values if v is not None]
    if not values:
        return "none"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"


def charlm_recipe(r):
    m = r["metrics"]
    n = len(m["cost_after"])
    median = f" (median {m['median_cost_after']:.3f})" if n > 1 else ""
    return (f"cost {m['cost_before'][0]:.3f} → **{_join(m['cost_after'])}** after {r['config']['epochs']} epochs"
            f"{median}; {r['wall_time_s']:.1f} s for {'all ' + str(n) + ' seeds' if n > 1 else 'the run'}")


def charlm_full(r):
    m, c = r["metrics"], r["config"]
    return (f"validation **{m['val_nats']:.3f} nats/char ({m['val_bits']:.3f} bits)** after {m['epochs_run']} "
            f"epochs ({m['steps']:,} steps), {r['wall_time_s']:.0f} s; {c['cell']} x{c['layers']}, "
            f"H={c['hidden']}, {m['parameters']:,} parameters")


def minchar(r):
    m, c = r["metrics"], r["config"]
    n = len(m["final_smooth_loss_per_seed"])
    s = (f"smooth loss at iteration {c['steps']}: **{_join(m['final_smooth_loss_per_seed'], '{:.2f}')}**"
         + (f" (median {m['median_final_smooth_loss']:.2f})" if n > 1 else ""))
    if "speedup_vs_numpy" in m:
        s += (f"; **{m['speedup_vs_numpy']:.1f}x** min-char-rnn's numpy loop ({m['jrnn_iters_per_s']:,.0f} vs "
              f"{m['numpy_iters_per_s']:,.0f} it/s, compiled steady state)")
    return s


def sentiment(r):
    m, c = r["metrics"], r["config"]
    n = len(c["seeds"])
    s = (f"test accuracy 20/20 in **{m['test_perfect_runs']} of {n}** seeds (lowest {m['min_test_accuracy']:.2f}), "
         f"train accuracy {_range(m['train_accuracy'], '{:.3f}')}")
    if "speedup_vs_numpy" in m:
        s += (f"; **{m['speedup_vs_numpy']:.1f}x** the numpy loop's epochs/s ({m['jrnn_epochs_per_s']:,.0f} for "
              f"{n} seeds under vmap on {c['devices']} device(s) vs {m['numpy_epochs_per_s']:.1f} for one run)")
    return s


def binary_addition(r):
    m, c = r["metrics"], r["config"]
    parts = []
    if "seeds_at_100pct" in m:
        firsts = ", ".join("never" if v is None else str(v) for v in m["first_iteration_at_100pct"])
        parts.append(f"**100 % of all 16,384 pairs in {m['seeds_at_100pct']} of {len(c['seeds'])} seeds** "
                     f"after {c['steps']:,} iterations (first reached at {firsts})")
    if "batched_steps_to_100pct" in m:
        parts.append(f"batched recipe ({c['batched_batch']} pairs/step, Adam): 100 % after "
                     f"{_range(m['batched_steps_to_100pct'], '{}')} steps, "
                     f"{_range(m['batched_train_seconds'])} s of training")
    return "; ".join(parts)


def sequences(r):
    m = r["metrics"]
    per = lambda init: ", ".join(f"{o} {n}/5" for o, n in m["solved_of_5"][init].items())
    fails = ", ".join(m["failures"]) or "none"
    return f"tasks solved, default init: {per('default')}; U(0, 1) init: {per('uniform01')}. Failures: {fails}"


def many_to_many(r):
    m = r["metrics"]
    return (f"loss {m['first_loss']:.1f} → {m['final_loss']:.3f}, test token accuracy "
            f"**{m['test_token_accuracy']:.3f}**; `jax.grad` vs hand-written BPTT "
            f"{m['grad_vs_bptt_rel_error_start']:.1e} / {m['grad_vs_bptt_rel_error_end']:.1e} (start / end)")


def memory(r):
    c, rows = r["config"], r["metrics"]["rows"]
    mib = "; ".join(f"T={x['T']}: **{x['plain']:.1f} plain, {x['remat']:.1f} with `remat=True`**" for x in rows)
    timed = next(x for x in rows if x["T"] == c["timed_T"])
    return (f"loss + grad temp MiB at B={c['batch']}, H={c['hidden']}: {mib}; gradient time at "
            f"T={c['timed_T']}: {timed['plain_grad_s']:.3f} vs {timed['remat_grad_s']:.3f} s")


def minchar_mode_row(r):
    finals = r["metrics"]["final_smooth_loss_per_seed"]
    std = statistics.pstdev(finals) if len(finals) > 1 else 0.0
    return (f"**{r['metrics']['median_final_smooth_loss']:.2f}** | {_range(finals, '{:.2f}')} | {std:.2f} | "
            f"{_join(finals, '{:.2f}')}")


def cell_row(r):
    m = r["metrics"]
    return (f"{m['parameters']:,} | {m['val_nats']:.3f} | {m['val_bits']:.3f} | {m['steps']:,} | "
            f"{r['wall_time_s']:.0f} s")


# ---- the README's tables ------------------------------------------------------------------------

SEEDS5 = [0, 1, 2, 3, 4]
FULL = {"mode": "full", "layers": 1, "batch": 64, "seq_len": 64, "lr": 0.002}

EXPERIMENTS = [
    Row("charlm", "python -m experiments.charlm --seeds 3", {"mode": "recipe", "seeds": [0, 1, 2], "epochs": 10},
        charlm_recipe, "notebook: 4.18 → 2.65 after 9 epochs; bar ≤ 2.60", "`charlm` (main)"),
    Row("charlm_full", "python -m experiments.charlm --full --epochs 20 --out runs/charlm_full",
        {**FULL, "cell": "elman", "hidden": 512, "epochs": 20}, charlm_full, "bar ≤ 1.8 nats/char in < 30 min",
        "`charlm --full`"),
    Row("minchar", "python -m experiments.minchar --seeds 5", {"seeds": SEEDS5, "steps": 4000, "as_written": False},
        minchar,
        "min-char-rnn: 53.08 at iteration 4000; bar median ≤ 55, ≥ 10x numpy", "`minchar`"),
    Row("sentiment", "python -m experiments.sentiment", {"seeds": SEEDS5, "epochs": 1000}, sentiment,
        "notebook: 0.90 test accuracy; bar 20/20 in ≥ 4 of 5, none < 0.95, ≥ 20x numpy", "`sentiment`"),
    Row("binary_addition", "python -m experiments.binary_addition", {"recipe": "both", "seeds": SEEDS5, "steps": 10000},
        binary_addition, "iamtrask's: converged at ~5,000 iterations", "`binary_addition`"),
    Row("sequences", "python -m experiments.sequences", {"steps": 3000, "seed": 0}, sequences,
        "notebook: both periodic tasks failed", "`sequences`"),
    Row("many_to_many", "python -m experiments.many_to_many", {"steps": 3000, "seed": 0}, many_to_many,
        "notebook's backward had 7 bugs", "`many_to_many`"),
    Row("memory", "python -m experiments.memory", {"lengths": [1000, 4000, 16000]}, memory, "–", "`memory`"),
]

CELLS = [
    Row(f"charlm_{cell}", f"python -m experiments.charlm --full --cell {cell} --hidden {h} --epochs 10 "
        f"--out runs/charlm_{cell}", {**FULL, "cell": cell, "hidden": h, "epochs": 10}, cell_row, label=cell)
    for cell, h in (("elman", 512), ("lstm", 248), ("gru", 290))
]

# Elman vs LSTM vs GRU at ~99k parameters, full BPTT over each 64-char chunk vs TBPTT inside it:
# 2 epochs of the first 300,000 chars (short enough to regenerate in minutes; it ranks nothing).
CELLS_TBPTT = [
    Row(f"cells_tbptt/{cell}_{k1}_{k2}",
        f"python -m experiments.charlm --full --cell {cell} --hidden {h}"
        + (f" --k1 {k1} --k2 {k2}" if k1 else "") + f" --epochs 2 --chars 300000 --out runs/cells_tbptt/{cell}_{k1}_{k2}",
        {**FULL, "cell": cell, "hidden": h, "epochs": 2, "corpus_chars": 300000, "k1": k1, "k2": k2}, cell_row,
        label=f"{cell}, " + (f"TBPTT({k1}, {k2})" if k1 else "full BPTT (64)"))
    for cell, h in (("elman", 256), ("lstm", 122), ("gru", 143))
    for k1, k2 in ((0, 0), (16, 32), (8, 8))
]


MINCHAR_MODES = [
    Row("minchar", "python -m experiments.minchar --seeds 5", {"seeds": SEEDS5, "steps": 4000, "as_written": False},
        minchar_mode_row, label="default (b_y trained)"),
    Row("minchar_as_written", "python -m experiments.minchar --seeds 5 --as-written --out runs/minchar_as_written",
        {"seeds": SEEDS5, "steps": 4000, "as_written": True}, minchar_mode_row, label="`--as-written` (b_y = 0)"),
]


# ---- the benchmark tables: bench prints its rows as it measures, the device report and the
# README/docs tables are built from the same rows --------------------------------------------------

def md_cell(value) -> str:
    """One markdown table cell: a `|` or a line break (nvidia-smi prints a line per GPU) would split the row."""
    return "; ".join(str(value).splitlines()).replace("|", "\\|")


BENCH_ROW_HEADER = ("| B, H, T, V | impl | compile s | train µs/step | fwd µs/step | train µs/timestep "
                    "| loss after 1st call |\n|---|---|---|---|---|---|---|")


def bench_row(r) -> str:
    """One measured bench row (an implementation at a config), as bench prints it."""
    fwd = "" if r["forward_us"] is None else f"{r['forward_us']:.0f}"
    return (f"| {', '.join(map(str, r['config']))} | {r['impl']} | {r['compile_s']:.2f} | {r['train_us']:.0f} | "
            f"{fwd} | {r['train_us_per_timestep']:.2f} | {r['loss_after_first_call']:.5f} |")


BENCH_RATIOS = {  # bench's two ratios (results.json metrics key -> the name each table gives it)
    "jrnn_speedup_default_vs_default": "default/default: fastest peer default ÷ jrnn default",
    "jrnn_speedup_vs_best_peer": "best/best: fastest peer ÷ fastest jrnn, same techniques",
}


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.2f}x"


def bench_ratio_row(cfg, ratios) -> str:
    """The line bench prints after a config's rows: `{"default/default": x, "best/best": y}`,
    each named."""
    names = " · ".join(f"{k}: {_ratio(v)}" for k, v in ratios.items())
    return f"| {', '.join(map(str, cfg))} | {names} | | | | | |"


DEER_ROW_HEADER = ("| T | H | B | method | compile s | fwd ms | fwd+bwd ms | vs sequential (fwd, fwd+bwd) "
                   "| Newton iters |\n|---|---|---|---|---|---|---|---|---|")


def deer_row(r) -> str:
    """One measured parallel-in-time row (a method at a (T, H, B)), as bench --deer prints it."""
    if "skipped" in r:
        return f"| {r['T']} | {r['H']} | {r['B']} | {r['method']} | skipped: {r['skipped']} | | | | |"
    ratio = "" if r["method"] == "sequential" else f"{r['forward_speedup']:.2f}x, {r['train_speedup']:.2f}x"
    it = "" if r["method"] == "sequential" else f"{r['iterations']}{' (fell back)' if r['fell_back'] else ''}"
    return (f"| {r['T']} | {r['H']} | {r['B']} | {r['method']} | {r['compile_s']:.1f} | {r['forward_ms']:.1f} | "
            f"{r['train_ms']:.1f} | {ratio} | {it} |")


# the device report's parts in the order it runs them, and the bench parts' cells
# (experiments.device_report runs them; the tables of its report.json are built here)
DEVICE_PARTS = ("env", "tests", "bench", "bench_lstm", "bench_gru", "deer", "charlm")
DEVICE_BENCH_CELLS = {"bench": "elman", "bench_lstm": "lstm", "bench_gru": "gru"}


def device_markdown(report: dict) -> str:
    """A device report's tables (`experiments.device_report`'s report.md, and what the docs take
    with the card and versions)."""
    lines = ["# Device report", ""]
    env = report["parts"].get("env", {}).get("result", {})
    if env:
        lines += ["| what | value |", "|---|---|"] + [f"| {md_cell(k)} | {md_cell(v)} |" for k, v in sorted(env.items())]
        lines += [""]
    lines += ["| part | seconds | exit | note |", "|---|---|---|---|"]
    order = {name: i for i, name in enumerate(DEVICE_PARTS)}   # run order; a part of an older report's last
    for name, p in sorted(report["parts"].items(), key=lambda kv: (order.get(kv[0], len(DEVICE_PARTS)), kv[0])):
        note = "stopped at its time limit" if p.get("timed_out") else p.get("summary", "")
        lines.append(f"| {md_cell(name)} | {p['seconds']:.0f} | {p['rc']} | {md_cell(note)} |")
    for name, cell in DEVICE_BENCH_CELLS.items():
        b = report["parts"].get(name, {}).get("result")
        if not b:
            continue
        lines += ["", f"## bench --gpu-quick --cell {cell} (precision {b.get('config', {}).get('precision')})", "",
                  BENCH_ROW_HEADER]
        lines += [bench_row(r) for r in b.get("rows", [])]
        defaults = b.get("metrics", {}).get("jrnn_speedup_default_vs_default", {})
        ratios = b.get("metrics", {}).get("jrnn_speedup_vs_best_peer", {})
        lines += ["", "default/default (fastest peer default ÷ jrnn default): "
                  + (", ".join(f"({k}) {v:.2f}x" for k, v in defaults.items() if v) or "none measured")]
        lines += ["", "best peer / best jrnn: " + (", ".join(f"({k}) {v:.2f}x" for k, v in ratios.items() if v)
                                                   or "none measured")]
        if b.get("not_measured"):
            lines += ["", f"not (fully) measured (time budget): {b['not_measured']}"]
    d = report["parts"].get("deer", {}).get("result")
    if d:
        lines += ["", "## parallel-in-time vs sequential scan (Elman)", "", DEER_ROW_HEADER]
        lines += [deer_row(r) for r in d.get("rows", [])]
        if d.get("not_measured"):
            lines += ["", f"not measured (time budget): {d['not_measured']}"]
    c = report["parts"].get("charlm", {}).get("result")
    if c:
        lines += ["", "## charlm --full", "", "| epoch | step | val nats/char | val bits/char | wall s |",
                  "|---|---|---|---|---|"]
        lines += [f"| {h['epoch']} | {h['step']} | {h['val_nats']:.4f} | {h['val_bits']:.4f} | {h['wall_s']:.1f} |"
                  for h in c.get("history", [])]
    s = (c or {}).get("shakespeare_char")
    if s:
        m, cfg = s["metrics"], s["config"]
        lines += ["", "## charlm --recipe shakespeare-char (nanoGPT's baseline: 1.4697 nats/char)", "",
                  f"{cfg['layers']}-layer {cfg['cell']} H={cfg['hidden']}, {m['parameters']:,} parameters, "
                  f"{m['device']}: best validation **{m['best_val_nats']:.4f}** nats/char at "
                  f"{m['best_at_wall_s']:.0f} s (step {m['best_at_step']}), target {m['target_nats']} "
                  + ("reached" if m["reached_target"] else "missed") + f"; nanoGPT-style {m['val_nanogpt_style_nats']:.4f}; "
                  f"{m['tokens_per_s']:,.0f} tokens/s", "", "| wall s | step | val nats/char |", "|---|---|---|"]
        lines += [f"| {h['wall_s']:.1f} | {h['step']} | {h['val_nats']:.4f} |" for h in s.get("history", [])]
    return "\n".join(lines) + "\n"


def bench_table(r):
    """The benchmark's rows pivoted: one line per config, one column per implementation (µs/step)."""
    impls, by_cfg = [], {}
    for row in r["rows"]:
        if row["impl"] not in impls:
            impls.append(row["impl"])
        by_cfg.setdefault(", ".join(map(str, row["config"])), {})[row["impl"]] = row["train_us"]
    # two ratios, each named in the header; a run from before the default/default ratio shows "–"
    metrics = r["metrics"]
    if not isinstance(metrics, dict):
        raise TypeError(f"'metrics' is {_kind(metrics)}, not an object")
    ratios = [metrics.get(key) or {} for key in BENCH_RATIOS]
    lines = ["| B, H, T, V | " + " | ".join(impls) + " | " + " | ".join(BENCH_RATIOS.values()) + " |",
             "|---" * (len(impls) + 1 + len(BENCH_RATIOS)) + "|"]
    for cfg, us in by_cfg.items():
        cells = [ratio.get(cfg.replace(" ", "")) for ratio in ratios]
        lines.append(f"| {cfg} | " + " | ".join(f"{us[i]:,.0f}" if i in us else "–" for i in impls)
                     + "".join(f" | {'–' if v is None else f'**{v:.2f}x**'}" for v in cells) + " |")
    if r.get("not_measured"):   # a --time-budget run: configs it did not (fully) measure
        lines += ["", "Not (fully) measured (time budget spent): "
                  + ", ".join(f"({', '.join(map(str, c))})" for c in r["not_measured"]) + "."]
    return lines


def deer_table(r):
    lines = ["| T | H | B | method | fwd ms | fwd+bwd ms | sequential / this (fwd, fwd+bwd) | Newton iters |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        if "skipped" in x:
            lines.append(f"| {x['T']} | {x['H']} | {x['B']} | {x['method']} | skipped: {x['skipped']} | | | |")
            continue
        ratio = "" if x["method"] == "sequential" else f"{x['forward_speedup']:.3g}x, {x['train_speedup']:.3g}x"
        it = "" if x["method"] == "sequential" else f"{x['iterations']}{' (fell back)' if x['fell_back'] else ''}"
        lines.append(f"| {x['T']} | {x['H']} | {x['B']} | {x['method']} | {x['forward_ms']:.1f} | "
                     f"{x['train_ms']:.1f} | {ratio} | {it} |")
    if r.get("not_measured"):   # the time budget ran out before these (T, H, B)
        lines += ["", "Not measured (time budget spent): " + ", ".join(f"({', '.join(map(str, c))})"
                                                                       for c in r["not_measured"]) + "."]
    return lines


def crossover_table(r):
    """experiments.crossover's rows: sequential vs DEER forward+backward per cell and size."""
    lines = ["| cell | T | H | B | sequential ms | DEER ms | speed-up | Newton iterations | compile s (seq / DEER) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in r["metrics"]["rows"]:
        lines.append(f"| {x['cell']} | {x['T']} | {x['H']} | {x['B']} | {1e3 * x['seq_s']:.1f} | {1e3 * x['par_s']:.1f} "
                     f"| {x['speedup']:.2f}x | {x['iterations']}{' (fell back)' if x['fell_back'] else ''} "
                     f"| {x['compile_seq_s']:.1f} / {x['compile_par_s']:.1f} |")
    return lines


WHOLE = {  # tables that are one run's rows: (run, command, expected config, lines formatter)
    "bench": ("bench", "python -m experiments.bench --quick", {"quick": True, "precision": "float32"}, bench_table),
    "bench_lstm": ("bench_lstm", "python -m experiments.bench --quick --cell lstm",
                   {"quick": True, "precision": "float32", "cell": "lstm", "time_budget_s": None}, bench_table),
    "bench_gru": ("bench_gru", "python -m experiments.bench --quick --cell gru",
                  {"quick": True, "precision": "float32", "cell": "gru", "time_budget_s": None}, bench_table),
    "deer": ("bench_deer", "python -m experiments.bench --deer --quick --time-budget 240",
             {"quick": True, "time_budget_s": 240}, deer_table),
    "crossover": ("crossover", "python -m experiments.crossover --quick",
                  {"grid": {"lengths": [256, 1024, 4096], "hiddens": [64, 256], "batches": [1, 16]}}, crossover_table),
}


DEVICE = ("device_report", "PYTHONPATH=. python -m experiments.device_report")   # run folder, command


def device_lines(runs: Path) -> tuple[list[str], list[str]]:
    """The device report's tables (`runs/device_report/report.json`, copied back from the GPU
    machine), its headings one level down; a `--smoke` report is not a device's."""
    run, command = DEVICE
    path = runs / run / "report.json"
    r, why = read_json(path)
    if why is None:
        try:
            if not isinstance(r, dict) or not isinstance(r.get("parts"), dict) \
                    or not all(isinstance(p, dict) for p in r["parts"].values()):
                raise ValueError("not a device report (an object whose 'parts' maps each part to an object)")
            if r.get("smoke"):
                raise ValueError("a --smoke report (tiny sizes on a CPU)")
            md = device_markdown(r).splitlines()[1:]      # without its "# Device report" title
            lines = [f"**{ln[3:]}**" if ln.startswith("## ") else ln for ln in md]
            return ([f"`{command}` on the device machine, {r['wall_s']:.0f} s (the table below names the card "
                     "and versions; µs per training step, ms per call for DEER):", *lines], [])
        except MALFORMED as e:   # any malformed part
            why = f"{path}: {e.__class__.__name__}: {e}"
    return [f"{NOT_YET}: {why}. Run `{command}` on a GPU machine, copy its --out folder to {runs / run}, "
            "then `python -m experiments.report`."], [f"{run}: {why}"]


# ---- building ---------------------------------------------------------------------------------

# what a results file whose values are not what the formatters expect raises (a list for an
# object, null for a number, a missing key, an empty list): the run is skipped, never the report
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, StopIteration, ZeroDivisionError,
             OverflowError)


class Malformed(ValueError):
    """A results file's part that is not what the report reads (its message says which)."""


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def read_json(path: Path):
    """(the parsed JSON, None) or (None, why: naming `path` and what is wrong with it)."""
    if not path.exists():
        return None, f"no {path}"
    if not path.is_file():
        return None, f"{path} is not a file"
    try:
        raw = path.read_bytes()
    except OSError as e:
        return None, f"{path} cannot be read ({e.strerror or e})"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
    if not text.strip():
        return None, f"{path} is empty"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        cut = (e.pos >= len(text.rstrip())          # it ends where a value, a comma or a string's end was due
               or e.msg.startswith("Unterminated string") and "\n" not in text[e.pos:])
        cut = " (cut short?)" if cut else ""
        return None, f"{path} is not valid JSON{cut}: {e.msg} at line {e.lineno} column {e.colno}"
    except RecursionError:
        return None, f"{path} is nested too deeply to read"


def load(runs: Path, run: str, expect: dict):
    """(results, None) or (None, why the run cannot be used, naming its file)."""
    path = runs / run / "results.json"
    r, why = read_json(path)
    if why is not None:
        return None, why
    if not isinstance(r, dict):
        return None, f"{path} holds {_kind(r)}, not a results object"
    config = r.get("config")
    if not isinstance(config, dict):
        return None, (f"{path} has no 'config'" if "config" not in r
                      else f"{path}: 'config' is {_kind(config)}, not an object")
    wrong = {k: config.get(k, "missing") for k, v in expect.items() if config.get(k, "missing") != v}
    if wrong:
        return None, f"{path} is from another command (config {wrong})"
    return r, None


def unusable(path: Path, e: Exception) -> str:
    """Why a results file that loaded cannot be formatted (a key or value not as written now)."""
    if isinstance(e, KeyError):
        return f"{path} lacks {e.args[0]!r} (written by an older version?)"
    if isinstance(e, Malformed):
        return f"{path}: {e}"
    return f"{path} holds a value of the wrong kind ({e.__class__.__name__}: {e})"


def describe(env: dict, extra_versions: dict | None = None) -> str:
    """One line: machine, CPU count and versions of a results file's environment."""
    versions = {k: env[k] for k in ("jax", "jaxlib", "optax", "numpy") if env.get(k)}
    if extra_versions is not None and not isinstance(extra_versions, dict):
        raise Malformed(f"'versions' is {_kind(extra_versions)}, not an object")
    versions.update(extra_versions or {})
    cpu = env.get("cpu_model")
    s = (f"{env.get('machine', '?')}{' ' + cpu if cpu else ''}, {env.get('cpus', '?')} CPUs, "
         f"{env.get('backend', '?')} backend ({env.get('device', '?')} x{env.get('device_count', '?')}), "
         f"Python {env.get('python', '?')}, " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if env.get("commit"):
        s += f", commit {env['commit']}"
    return s


class Footnotes:
    """Numbers distinct environments [1], [2], ... so each row points at the one it ran on."""
    def __init__(self):
        self.envs = []

    def mark(self, r) -> str:
        """The row's footnote mark; a malformed environment raises (one of MALFORMED) before any is noted."""
        env = r.get("environment", {})
        if not isinstance(env, dict):
            raise Malformed(f"'environment' is {_kind(env)}, not an object")
        d = describe(env, r.get("versions"))
        load = env.get("load_avg_1min")   # timings from a busy machine are slower: say how busy it was
        load = f", load {load:.1f}" if load is not None else ""
        if d not in self.envs:
            self.envs.append(d)
        return f"[{self.envs.index(d) + 1}]" + load

    def lines(self):
        return [f"[{i + 1}] {d}" + ("  " if i + 1 < len(self.envs) else "") for i, d in enumerate(self.envs)]


def table_of_rows(runs: Path, rows, header: list[str], cells) -> tuple[list[str], list[str]]:
    """Rows of an experiments-style table; returns (lines, problems)."""
    notes, problems = Footnotes(), []
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in rows:
        r, why = load(runs, row.run, row.expect)
        if r is not None:
            try:
                measured = row.measured(r)
                lines.append("| " + " | ".join(cells(row, measured, notes.mark(r))) + " |")
                continue
            except MALFORMED as e:
                why = unusable(runs / row.run / "results.json", e)
        problems.append(f"{row.run}: {why}")
        lines.append("| " + " | ".join(cells(row, f"{NOT_YET}: {why}; run the command, then "
                                                  "`python -m experiments.report`", None)) + " |")
    return lines + [""] + (notes.lines() or ["(no run measured yet)"]), problems


def build(name: str, runs: Path) -> tuple[list[str], list[str]]:
    """The lines between the markers of table `name`, and what could not be regenerated."""
    if name == "experiments":
        def cells(row, measured, mark):
            cols = [row.label, f"`{row.command}`", measured, row.reference]
            return cols + [mark or "–"]
        return table_of_rows(runs, EXPERIMENTS, ["experiment", "command", "measured", "reproduces / bar",
                                                 "run on, 1-min load average"],
                             cells)
    if name == "cells":
        def cells(row, measured, mark):
            parts = measured.split(" | ") if mark else [measured, "", "", "", ""]
            return [f"`{row.command}`", *parts, mark or "–"]
        return table_of_rows(runs, CELLS, ["command", "parameters", "validation nats/char", "bits/char",
                                           "optimizer steps", "wall", "run on, 1-min load average"], cells)
    if name == "cells_tbptt":
        def cells(row, measured, mark):
            parts = measured.split(" | ") if mark else [measured, "", "", "", ""]
            return [row.label, f"`{row.command}`", *parts, mark or "–"]
        return table_of_rows(runs, CELLS_TBPTT, ["cell, gradient", "command", "parameters", "validation nats/char",
                                                 "bits/char", "optimizer steps", "wall", "run on, 1-min load average"],
                             cells)
    if name == "minchar_modes":
        def cells(row, measured, mark):
            parts = measured.split(" | ") if mark else [measured, "", "", ""]
            return [row.label, f"`{row.command}`", *parts, mark or "–"]
        return table_of_rows(runs, MINCHAR_MODES, ["mode", "command", "median", "min-max over 5 seeds", "std",
                                                   "per seed (0-4)", "run on, 1-min load average"], cells)
    if name == "device":
        return device_lines(runs)
    if name in WHOLE:
        run, command, expect, fmt = WHOLE[name]
        r, why = load(runs, run, expect)
        if r is not None:
            try:
                notes = Footnotes()
                mark = notes.mark(r)
                unit = {"deer": "ms per call, compiling excluded",
                        "crossover": "ms per forward+backward of a 2-layer model, min of interleaved rounds, "
                                     "compiling excluded"}.get(name, "µs per training step unless noted")
                head = f"`{command}` {mark}, {r['wall_time_s']:.0f} s ({unit}):"
                return [head, "", *fmt(r), "", *notes.lines()], []
            except MALFORMED as e:
                why = unusable(runs / run / "results.json", e)
        return [f"{NOT_YET}: {why}. Run `{command}`, then `python -m experiments.report`."], [f"{run}: {why}"]
    raise ValueError(f"unknown report table {name!r}; known: {', '.join(TABLES)}")


TABLES = ("experiments", "cells", "cells_tbptt", "minchar_modes", "device", *WHOLE)


MARKER = re.compile(r"<!-- report:(begin|end) ([\w-]+) -->")


def regions(text: str) -> list[tuple[str, int, int]]:
    """(name, start, end) of the text between each pair of report markers; ValueError if the
    markers do not pair up or name a table this module does not build."""
    spans, open_name, start = [], None, 0
    for m in MARKER.finditer(text):
        kind, name = m.groups()
        if kind == "begin":
            if open_name is not None:
                raise ValueError(f"report:begin {name} inside report:begin {open_name} (missing its end marker)")
            open_name, start = name, m.end()
        else:
            if open_name != name:
                raise ValueError(f"report:end {name} without a matching report:begin {name}")
            spans.append((name, start, m.start()))
            open_name = None
    if open_name is not None:
        raise ValueError(f"report:begin {open_name} has no report:end {open_name}")
    unknown = sorted({name for name, _, _ in spans} - set(TABLES))
    if unknown:
        raise ValueError(f"unknown report table {unknown[0]!r}; known: {', '.join(TABLES)}")
    return spans


class Outcome(NamedTuple):
    """What became of one marked table: regenerated (else kept as it was), whether its text
    changed (or, kept, would change under --placeholders), and each run it could not use."""
    name: str
    regenerated: bool
    changed: bool
    problems: list


def render(readme: str, runs: Path, only=None, placeholders: bool = False) -> tuple[str, list[Outcome]]:
    """README text with the marked tables regenerated: those named in `only` (all, if None)
    whose runs are all here and usable, or with `placeholders` every one of them; every other
    table keeps its text byte for byte. (new text, an Outcome per table considered)."""
    out, outcomes, pos = [], [], 0
    for name, start, end in regions(readme):
        if only is not None and name not in only:
            continue
        lines, problems = build(name, runs)
        new = "\n" + "\n".join(lines) + "\n"
        regenerate = placeholders or not problems
        outcomes.append(Outcome(name, regenerate, new != readme[start:end], problems))
        if regenerate:
            out += [readme[pos:start], new]
            pos = end
    out.append(readme[pos:])
    return "".join(out), outcomes


def runs_of(name: str) -> list[str]:
    """The run folders (under --runs) table `name` is built from."""
    rows = {"experiments": EXPERIMENTS, "cells": CELLS, "cells_tbptt": CELLS_TBPTT, "minchar_modes": MINCHAR_MODES}
    if name in rows:
        return list(dict.fromkeys(row.run for row in rows[name]))
    return [DEVICE[0]] if name == "device" else [WHOLE[name][0]]


def explain(o: Outcome, runs: Path) -> list[str]:
    """Lines saying which of the table's runs are not here, and each file that is here but
    unusable (naming the file and what is wrong with it)."""
    absent = [p.split(": ", 1)[0] for p in o.problems if p.split(": ", 1)[1].startswith("no ")]
    lines = []
    if absent:
        total = len(runs_of(o.name))
        lines.append(f"    {'its run' if total == 1 else f'{len(absent)} of its {total} runs'} not in {runs}: "
                     + ", ".join(absent))
    lines += [f"    skipped {p.split(': ', 1)[1]}" for p in o.problems if not p.split(": ", 1)[1].startswith("no ")]
    return lines


def _write(path: Path, text: str) -> None:
    """Replace `path`'s content at once (a temporary file beside it, renamed over it), keeping its
    permissions; through a symlink, its target is rewritten."""
    path = path.resolve()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")   # no user file's name
    try:
        os.fchmod(fd, os.stat(path).st_mode & 0o7777)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not any(names):
        raise argparse.ArgumentTypeError(f"names no table, got {text!r}; e.g. --only bench_lstm,bench_gru")
    if not all(names):
        raise argparse.ArgumentTypeError(f"an empty name in {text!r}; e.g. --only bench_lstm,bench_gru")
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown table(s) {unknown}; the tables: {', '.join(TABLES)}")
    return names


def _path(text: str) -> Path:
    if not text.strip():   # Path("") is ".": the current folder
        raise argparse.ArgumentTypeError(f"must name a path, got {text!r}")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"a path cannot hold a NUL byte, got {text!r}")
    return Path(text)


def _files(args, ap) -> list[Path]:
    """The files to rewrite: those given with --readme, else README.md and docs/**/*.md that hold a
    marker (README.md alone when no docs/ page holds one: its errors name it)."""
    if args.readme:
        return args.readme
    docs = sorted(p for p in Path("docs").rglob("*.md") if p.is_file()) if Path("docs").is_dir() else []
    marked = [p for p in docs if MARKER.search(p.read_bytes().decode("utf-8", "replace"))]
    readme = Path("README.md")
    if marked and readme.is_file() and not MARKER.search(readme.read_bytes().decode("utf-8", "replace")):
        return marked
    return [readme, *marked]


def _read(path: Path, ap) -> str:
    """A marked file's text, or an argparse error naming it."""
    if not path.exists():
        ap.error(f"argument --readme: no file {path}: run from the repository root or pass --readme")
    if not path.is_file():
        ap.error(f"argument --readme: {path} is not a file")
    try:
        text = path.read_bytes().decode("utf-8")   # bytes as they are: "\r\n" stays "\r\n" outside the tables
    except OSError as e:
        ap.error(f"argument --readme: cannot read {path}: {e.strerror or e}")
    except UnicodeDecodeError as e:
        ap.error(f"argument --readme: {path} is not UTF-8 text (byte at offset {e.start}): not a README")
    if not MARKER.search(text):
        ap.error(f"argument --readme: {path} has no <!-- report:begin NAME --> markers: nothing to regenerate")
    return text


# ---- plots of the bench tables ----------------------------------------------------------------

PLOTS = {"cpu": "img/bench_cpu.svg", "gpu": "img/bench_gpu.svg"}
CELL_TABLES = {"bench": "Elman", "bench_lstm": "LSTM", "bench_gru": "GRU"}


def bench_ratios(text: str) -> dict:
    """{"cpu"|"gpu": {cell: {config: ratio}}} read from a page's generated tables: the last column of
    the CPU bench tables, and the device report's "best peer / best jrnn: (cfg) 1.23x, ..." lines."""
    out = {"cpu": {}, "gpu": {}}
    for name, start, end in regions(text):
        body = text[start:end]
        if name in CELL_TABLES:
            for m in re.finditer(r"^\| ([\d, ]+) \|.*\| \*\*([\d.]+)x\*\* \|$", body, flags=re.M):
                out["cpu"].setdefault(CELL_TABLES[name], {})[m.group(1)] = float(m.group(2))
        if name == "device":
            cell = None
            for line in body.splitlines():
                head = re.match(r"\*\*bench --gpu-quick --cell (\w+)", line)
                if head:
                    cell = {"elman": "Elman", "lstm": "LSTM", "gru": "GRU"}.get(head.group(1), head.group(1))
                if cell and line.startswith("best peer / best jrnn:"):
                    for cfg, r in re.findall(r"\(([\d,]+)\) ([\d.]+)x", line):
                        out["gpu"].setdefault(cell, {})[cfg.replace(",", ", ")] = float(r)
    return out


def ratio_svg(ratios: dict, title: str) -> bytes:
    """A grouped bar chart (a bar per cell at each config) of best peer / best jrnn, as SVG bytes that
    depend on the numbers only (fixed hash salt, no date)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(c for per in ratios.values() for c in per))
    cells = list(ratios)
    with matplotlib.rc_context({"svg.hashsalt": "jrnn", "svg.fonttype": "none", "font.size": 10}):
        fig, ax = plt.subplots(figsize=(8, 3.6))
        width = 0.8 / max(len(cells), 1)
        for k, cell in enumerate(cells):
            xs = [i + (k - (len(cells) - 1) / 2) * width for i, c in enumerate(configs) if c in ratios[cell]]
            ys = [ratios[cell][c] for c in configs if c in ratios[cell]]
            bars = ax.bar(xs, ys, width, label=cell)
            ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7, padding=1)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(configs)), [f"({c})" for c in configs], fontsize=8)
        ax.set_xlabel("config (B, H, T, V)")
        ax.set_ylabel("best peer / best jrnn")
        ax.set_title(title)
        ax.legend(frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        plt.close(fig)
    return buf.getvalue()


def write_plots(path: Path, text: str) -> list[str]:
    """Redraw the plots `path` shows (see PLOTS) from its tables; the lines to print."""
    wanted = [k for k, rel in PLOTS.items() if f"]({rel})" in text]
    if not wanted:
        return []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return [f"plots of {path} not redrawn: matplotlib is not installed (pip install -e '.[experiments]')"]
    ratios, lines = bench_ratios(text), []
    titles = {"cpu": "jrnn's training step on the CPU: best of Flax and PyTorch / best jrnn",
              "gpu": "on one GPU (the device report): best peer / best jrnn"}
    for kind in wanted:
        if not ratios[kind]:
            lines.append(f"plot {PLOTS[kind]} of {path} not drawn: no ratios in its tables")
            continue
        out = path.resolve().parent / PLOTS[kind]
        svg = ratio_svg(ratios[kind], titles[kind])
        if out.exists() and out.read_bytes() == svg:
            continue
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(svg)
        lines.append(f"plot: {out}")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", type=_path, action="append", default=None,
                    help="a file to rewrite, repeatable (default: README.md and every docs/*.md page that "
                         "holds a report marker)")
    ap.add_argument("--runs", type=_path, default=None, help="folder of the runs (default: runs)")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if a table whose runs are here differs from the file, or if "
                         "no table could be checked")
    ap.add_argument("--only", type=_names, default=None,
                    help="comma-separated table names to regenerate (e.g. bench_lstm,bench_gru); the "
                         "other tables keep their text")
    ap.add_argument("--placeholders", action="store_true",
                    help="also regenerate the tables with a run missing or unusable, marking its row "
                         f"{NOT_YET!r} (without it those tables keep their text)")
    args = ap.parse_args(argv)
    files = _files(args, ap)
    texts = {path: _read(path, ap) for path in files}
    if args.runs is None:
        runs = Path("runs")
    else:
        runs = args.runs
        if not runs.is_dir():
            ap.error(f"argument --runs: {runs} {'is not a folder' if runs.exists() else 'does not exist'}")
    names = set()
    for path, text in texts.items():
        try:
            names |= {name for name, _, _ in regions(text)}
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    if args.only is not None:
        absent = [n for n in args.only if n not in names]
        if absent:
            where = files[0] if len(files) == 1 else ", ".join(map(str, files))
            ap.error(f"argument --only: {where} has no table {', '.join(absent)}; its tables: "
                     f"{', '.join(sorted(names))}")
    if not runs.is_dir():
        print(f"no folder {runs}: no table's runs are here")
    status, checked = 0, 0
    for path, text in texts.items():
        code, done = _one(path, text, runs, args)
        status, checked = max(status, code), checked + done
    if args.check and not checked:   # a check of nothing passes nothing
        return 1
    return status


def _one(path: Path, text: str, runs: Path, args) -> tuple[int, int]:
    """Regenerate (or --check) one file's tables: (exit status, tables checked or regenerated)."""
    new, outcomes = render(text, runs, None if args.only is None else set(args.only), args.placeholders)
    for o in outcomes:
        if o.regenerated:
            verb = "up to date" if not o.changed else ("out of date" if args.check else "regenerated")
            marked = f" ({len(o.problems)} row(s) marked not yet regenerated)" if o.problems else ""
            print(f"{verb}: {o.name}{marked}")
        else:
            print(f"{'not checked' if args.check else 'kept as it is'}: {o.name}")
        for line in explain(o, runs):
            print(line)
    done = [o for o in outcomes if o.regenerated]
    stale = [o.name for o in done if o.changed]
    kept = len(outcomes) - len(done)
    if args.check:
        if stale:
            print(f"{path}: out of date: {', '.join(stale)} (`python -m experiments.report` rewrites "
                  f"{'it' if len(stale) == 1 else 'them'})")
            return 1, len(done)
        if not done:
            print(f"{path}: nothing checked: not one table has all its runs in {runs}")
            return 0, 0
        print(f"{path}: up to date ({len(done)} table(s) checked, {kept} not checked)")
        return 0, len(done)
    if new != text:
        _write(path, new)
    for line in write_plots(path, new):
        print(line)
    hint = "; --placeholders marks their missing rows instead" if kept else ""
    print(f"{path}: {'rewritten' if new != text else 'unchanged'} ({len(stale)} table(s) with new text, "
          f"{kept} kept as {'it was' if kept == 1 else 'they were'}{hint})")
    return 0, len(done)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
