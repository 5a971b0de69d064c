"""Regenerate README.md's results tables from the runs' results.json files.

    python -m experiments.report            # rewrite README.md between its report markers
    python -m experiments.report --check    # exit 1 if README.md's tables differ from the runs
    python -m experiments.report --only bench_lstm,bench_gru   # just these tables

Every results table of the README lives between `<!-- report:begin NAME -->` and
`<!-- report:end NAME -->` and is replaced as a whole, never edited by hand. A row's numbers come
from `runs/<dir>/results.json` of the command printed in the row; a run that is missing, or whose
recorded config is not that command's, becomes a row marked "not yet regenerated" instead of a
number. Under each table: the machine, CPU count and versions each row was measured with, read
from the results file's `environment`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
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
    import statistics
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


def bench_table(r):
    """The benchmark's rows pivoted: one line per config, one column per implementation (µs/step)."""
    impls, by_cfg = [], {}
    for row in r["rows"]:
        if row["impl"] not in impls:
            impls.append(row["impl"])
        by_cfg.setdefault(", ".join(map(str, row["config"])), {})[row["impl"]] = row["train_us"]
    ratios = r["metrics"]["jrnn_speedup_vs_best_peer"]
    lines = ["| B, H, T, V | " + " | ".join(impls) + " | best peer / best jrnn |",
             "|---" * (len(impls) + 2) + "|"]
    for cfg, us in by_cfg.items():
        ratio = ratios.get(cfg.replace(" ", ""))
        lines.append(f"| {cfg} | " + " | ".join(f"{us[i]:,.0f}" if i in us else "–" for i in impls)
                     + f" | {'–' if ratio is None else f'**{ratio:.2f}x**'} |")
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


WHOLE = {  # tables that are one run's rows: (run, command, expected config, lines formatter)
    "bench": ("bench", "python -m experiments.bench --quick", {"quick": True, "precision": "float32"}, bench_table),
    "bench_lstm": ("bench_lstm", "python -m experiments.bench --quick --cell lstm",
                   {"quick": True, "precision": "float32", "cell": "lstm", "time_budget_s": None}, bench_table),
    "bench_gru": ("bench_gru", "python -m experiments.bench --quick --cell gru",
                  {"quick": True, "precision": "float32", "cell": "gru", "time_budget_s": None}, bench_table),
    "deer": ("bench_deer", "python -m experiments.bench --deer --quick --time-budget 240",
             {"quick": True, "time_budget_s": 240}, deer_table),
}


DEVICE = ("device_report", "PYTHONPATH=. python -m experiments.device_report")   # run folder, command


def device_lines(runs: Path) -> tuple[list[str], list[str]]:
    """The device report's tables (`runs/device_report/report.json`, copied back from the GPU
    machine), its headings one level down; a `--smoke` report is not a device's."""
    from experiments import device_report
    run, command = DEVICE
    path = runs / run / "report.json"
    try:
        r = json.loads(path.read_text())
        if not isinstance(r, dict) or not isinstance(r.get("parts"), dict) \
                or not all(isinstance(p, dict) for p in r["parts"].values()):
            raise ValueError("not a device report (an object whose 'parts' maps each part to an object)")
        if r.get("smoke"):
            raise ValueError("a --smoke report (tiny sizes on a CPU)")
        md = device_report.markdown(r).splitlines()[1:]      # without its "# Device report" title
        lines = [f"**{ln[3:]}**" if ln.startswith("## ") else ln for ln in md]
        return ([f"`{command}` on the device machine, {r['wall_s']:.0f} s (the table below names the card "
                 "and versions; µs per training step, ms per call for DEER):", *lines], [])
    except (OSError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:   # any malformed part
        why = f"{path}: {e.__class__.__name__}: {e}"
        return [f"{NOT_YET}: {why}. Run `{command}` on a GPU machine, copy its --out folder to {runs / run}, "
                "then `python -m experiments.report`."], [f"{run}: {why}"]


# ---- building ---------------------------------------------------------------------------------

def load(runs: Path, run: str, expect: dict):
    """(results, None) or (None, why the run cannot be used)."""
    path = runs / run / "results.json"
    if not path.is_file():
        return None, f"no {path}"
    try:
        r = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return None, f"{path} unreadable ({e.__class__.__name__})"
    config = r.get("config", {})
    wrong = {k: config.get(k, "missing") for k, v in expect.items() if config.get(k, "missing") != v}
    if wrong:
        return None, f"{path} is from another command (config {wrong})"
    return r, None


def describe(env: dict, extra_versions: dict | None = None) -> str:
    """One line: machine, CPU count and versions of a results file's environment."""
    versions = {k: env[k] for k in ("jax", "jaxlib", "optax", "numpy") if env.get(k)}
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
        env = r.get("environment", {})
        d = describe(env, r.get("versions"))
        if d not in self.envs:
            self.envs.append(d)
        load = env.get("load_avg_1min")   # timings from a busy machine are slower: say how busy it was
        return f"[{self.envs.index(d) + 1}]" + (f", load {load:.1f}" if load is not None else "")

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
                lines.append("| " + " | ".join(cells(row, row.measured(r), notes.mark(r))) + " |")
                continue
            except (KeyError, TypeError, ValueError, StopIteration) as e:
                why = f"{runs / row.run / 'results.json'} lacks {e!r} (written by an older version?)"
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
                unit = ("ms per call, compiling excluded" if name == "deer" else "µs per training step unless noted")
                return ([f"`{command}` {mark}, {r['wall_time_s']:.0f} s ({unit}):", "",
                         *fmt(r), "", *notes.lines()], [])
            except (KeyError, TypeError, ValueError) as e:
                why = f"{runs / run / 'results.json'} lacks {e!r} (written by an older version?)"
        return [f"{NOT_YET}: {why}. Run `{command}`, then `python -m experiments.report`."], [f"{run}: {why}"]
    raise ValueError(f"unknown report table {name!r}; known: experiments, cells, cells_tbptt, minchar_modes, device, {', '.join(WHOLE)}")


MARKER = re.compile(r"<!-- report:(begin|end) ([\w-]+) -->")


def render(readme: str, runs: Path, only=None) -> tuple[str, list[str]]:
    """README text with every marked region replaced (only those named in `only`, if given; the
    others keep their text); (new text, problems)."""
    out, problems, pos, open_name = [], [], 0, None
    for m in MARKER.finditer(readme):
        kind, name = m.groups()
        if kind == "begin":
            if open_name is not None:
                raise ValueError(f"report:begin {name} inside report:begin {open_name} (missing its end marker)")
            out.append(readme[pos:m.end()])
            open_name = name
        else:
            if open_name != name:
                raise ValueError(f"report:end {name} without a matching report:begin {name}")
            if only is None or name in only:
                lines, bad = build(name, runs)
                problems += bad
                out.append("\n" + "\n".join(lines) + "\n")
            else:
                out.append(readme[pos:m.start()])
            out.append(m.group(0))
            open_name = None
        pos = m.end()
    if open_name is not None:
        raise ValueError(f"report:begin {open_name} has no report:end {open_name}")
    out.append(readme[pos:])
    return "".join(out), problems


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", type=Path, default=Path("README.md"), help="file to rewrite (default: README.md)")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="folder of the runs (default: runs)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is out of date")
    ap.add_argument("--only", type=lambda s: [n.strip() for n in s.split(",") if n.strip()], default=None,
                    help="comma-separated table names to regenerate (e.g. bench_lstm,bench_gru); the "
                         "other tables keep their text")
    args = ap.parse_args(argv)
    if not args.readme.is_file():
        raise ValueError(f"no {args.readme}: run from the repository root or pass --readme")
    text = args.readme.read_text()
    if not MARKER.search(text):
        raise ValueError(f"{args.readme} has no <!-- report:begin NAME --> markers: nothing to regenerate")
    if args.only is not None:
        names = set(n for kind, n in MARKER.findall(text) if kind == "begin")
        unknown = [n for n in args.only if n not in names]
        if unknown or not args.only:
            raise ValueError(f"--only names no table of {args.readme}: {unknown or args.only}; "
                             f"its tables: {', '.join(sorted(names))}")
    new, problems = render(text, args.runs, None if args.only is None else set(args.only))
    for p in problems:
        print(f"not yet regenerated: {p}")
    if args.check:
        print(f"{args.readme}: {'up to date' if new == text else 'out of date'}")
        return 0 if new == text else 1
    if new != text:
        tmp = args.readme.with_suffix(args.readme.suffix + ".tmp")
        tmp.write_text(new)
        tmp.replace(args.readme)
    print(f"{args.readme}: {'rewritten' if new != text else 'unchanged'} "
          f"({len(problems)} row(s) marked not yet regenerated)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
