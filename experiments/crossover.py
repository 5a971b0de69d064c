"""Parallel in time against the sequential scan, per cell: where does DEER pay?

Forward+backward of a 2-layer model (`model.hidden`, mean square of the top states), once with the
sequential scan (`grad=jrnn.FullBPTT()`) and once solved in parallel (`grad=jrnn.Parallel("deer")`),
for each cell: the structured ones (diagonal `paragru` and `mingru`, 2x2-block `paralstm`), whose
exact Newton step is elementwise, and the dense `gru` (H x H per step, run only up to
`DENSE_MAX_H`). Reports min-of-rounds times, the speed-up, compile times and the Newton
iterations of the first layer, prints one table, draws the speed-up against T, and with
`--write` rewrites `jrnn/crossovers.py`, the table `jrnn.Auto` reads: for each (structure, B, H),
the smallest measured T from which parallel won at every larger measured T.
"""

from __future__ import annotations

import itertools
import pprint
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from experiments import common, report

# hyperparameters: the grid, and a quick one that fits a loaded 2-core CPU
CELLS = ("paragru", "paralstm", "mingru", "gru")
LENGTHS, HIDDENS, BATCHES = (1024, 4096, 16384), (64, 256, 1024), (1, 16)
QUICK = dict(lengths=(256, 1024, 4096), hiddens=(64, 256), batches=(1, 16))
LAYERS, ROUNDS, DENSE_MAX_H = 2, 3, 64
# cells whose own scan is already an associative scan (parallel): reported, not in the crossover table
OWN_PARALLEL_SCAN = ("mingru",)
TABLE_FILE = Path(__file__).resolve().parents[1] / "jrnn" / "crossovers.py"


def forward_backward(model, grad):
    """The jitted gradient of the mean square of the top layer's states, inputs an argument."""
    return jax.jit(jax.grad(lambda p, x: jnp.mean(model.hidden(p, x, grad=grad)[0] ** 2)))


def timed(f, *args):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t


def measure(name, T, H, B, rounds, key):
    """One config: times (min of interleaved rounds), compile times, Newton iterations."""
    cell = jrnn.cells.get(name)
    model = jrnn.model.make(cell, input_size=H, hidden_size=H, output_size=H, layers=LAYERS)
    params = model.init(key)
    x = jax.random.normal(jax.random.fold_in(key, 1), (T, B, H))
    seq, par = forward_backward(model, jrnn.FullBPTT()), forward_backward(model, jrnn.Parallel("deer"))
    row = {"cell": name, "structure": jrnn.parallel.structure(cell), "T": T, "H": H, "B": B,
           "compile_seq_s": timed(seq, params, x), "compile_par_s": timed(par, params, x)}
    times = {"seq": [], "par": []}
    for _ in range(rounds):               # interleaved: a load change hits both alike
        times["seq"].append(timed(seq, params, x))
        times["par"].append(timed(par, params, x))
    row["seq_s"], row["par_s"] = min(times["seq"]), min(times["par"])
    row["speedup"] = row["seq_s"] / row["par_s"]
    layer = params.layers[0]
    _, _, info = jrnn.parallel.solve(cell.step, layer, cell.project(layer, x), cell.zeros(layer, (B,)),
                                     method="deer", jacobian=cell.jacobian)
    row["iterations"], row["fell_back"] = int(info.iterations), bool(info.fell_back)
    return row


def crossovers(rows, backend):
    """{backend: {structure: [(B, H, t_min)]}} from the measured rows (t_min None: never won)."""
    out = {}
    rows = [r for r in rows if r["cell"] not in OWN_PARALLEL_SCAN]
    for (kind, B, H), group in itertools.groupby(sorted(rows, key=lambda r: (r["structure"], r["B"], r["H"], r["T"])),
                                                 key=lambda r: (r["structure"], r["B"], r["H"])):
        group = list(group)
        t_min = None
        for r in reversed(group):            # the smallest T from which every larger T won too
            if r["speedup"] > 1.0 and not r["fell_back"]:
                t_min = r["T"]
            else:
                break
        rows_kind = out.setdefault(kind, [])
        old = next((i for i, row in enumerate(rows_kind) if row[:2] == (B, H)), None)
        if old is None:
            rows_kind.append((B, H, t_min))
        elif t_min is None or (rows_kind[old][2] is not None and t_min > rows_kind[old][2]):
            rows_kind[old] = (B, H, t_min)      # two cells of one structure: the later crossover
    return {backend: {k: sorted(v) for k, v in out.items()}}


def write_table(table, command, env=None):
    """Rewrite the data line of jrnn/crossovers.py (its docstrings stay), naming the command and
    where it ran (`env`: a results.json's environment; None: this process's)."""
    text = TABLE_FILE.read_text()
    head, rest = text.split("CROSSOVERS = ", 1)
    tail = rest[rest.index('\n"""'):]
    env = common.environment() if env is None else env
    head = head.rsplit("# python -m experiments.crossover", 1)[0]
    TABLE_FILE.write_text(head + f"# {command}  (commit {env['commit']}, {env['backend']}: {env['cpu_model']}, "
                          f"{env['cpus']} cores, load {env.get('load_avg_1min')}, jax {env['jax']})\n"
                          + "CROSSOVERS = " + pprint.pformat(table, width=100) + tail)


def main(argv=None):
    ap = common.parser("crossover", __doc__, plots=("speedup.png",))
    ap.add_argument("--quick", action="store_true", help=f"the small grid {QUICK}")
    ap.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS), help="cells to measure")
    ap.add_argument("--rounds", type=common.positive_int, default=ROUNDS, help="timed rounds per config (min kept)")
    ap.add_argument("--write", action="store_true", help="rewrite jrnn/crossovers.py from this run")
    args = ap.parse_args(argv)
    grid = QUICK if args.quick else dict(lengths=LENGTHS, hiddens=HIDDENS, batches=BATCHES)
    configs = [(c, T, H, B) for c in args.cells for H in grid["hiddens"] for B in grid["batches"]
               for T in grid["lengths"] if c != "gru" or H <= DENSE_MAX_H]
    key = jax.random.key(args.seed)
    rows = []
    bar = common.progress(len(configs), "crossover", args.quiet)
    with common.Timer() as t:
        for name, T, H, B in configs:
            rows.append(measure(name, T, H, B, args.rounds, key))
            bar.update(1)
            bar.set_postfix(cell=name, T=T, H=H, B=B, speedup=f"{rows[-1]['speedup']:.2f}x")
    bar.close()
    print(f"forward+backward of a {LAYERS}-layer model, sequential scan vs DEER ({jax.default_backend()}, "
          f"jax {jax.__version__}, min of {args.rounds} rounds):")
    print("\n".join(report.crossover_table({"metrics": {"rows": rows}})))
    table = crossovers(rows, jax.default_backend())
    print("crossovers:", table)
    if args.write:
        write_table(table, "python -m experiments.crossover" + (" --quick" if args.quick else ""))
        print(f"wrote {TABLE_FILE}")
    series = {f"{r['cell']} B={r['B']} H={r['H']}": None for r in rows}
    for label in series:
        pts = [r for r in rows if f"{r['cell']} B={r['B']} H={r['H']}" == label]
        series[label] = ([r["T"] for r in pts], [r["speedup"] for r in pts])
    plot = common.plot_panels(args.out, {"DEER / sequential, forward+backward": series},
                              xlabel="sequence length T (log scale)", ylabel="speed-up of DEER (log scale)",
                              logx=True, logy=True, xticks=sorted({r["T"] for r in rows}),
                              style=lambda label: {"marker": "o"},
                              title=f"parallel in time vs the sequential scan ({jax.default_backend()})",
                              filename="speedup.png")
    config = {"cells": args.cells, "grid": {k: list(v) for k, v in grid.items()}, "layers": LAYERS,
              "rounds": args.rounds, "seed": args.seed}
    common.save_results(args.out, "crossover", config, {"rows": rows, "crossovers": table}, t.s, plot=plot.name)
    common.print_saved(args.out, plot)
    return rows


if __name__ == "__main__":
    main()
