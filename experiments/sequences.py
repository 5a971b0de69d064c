"""Toy sequence tasks of the Rprop toy-sequence notebook (source notebook 004), with three
optimizers and two inits.

Five tasks, 3 input dims, 3 classes, softmax over classes, length 10: constant targets 0, 1, 2
from U(0, 1) inputs (hidden 5), and periodic targets [0,1,0,1,...] (hidden 10) and
[0,1,2,0,1,2,...] (hidden 50) from all-ones inputs. A task is solved when the argmax matches the
target at every step and the summed loss is < 0.05, with no inf/NaN anywhere.

Optimizers: the notebook's "Rprop" (a per-weight multiplier on the gradient, `jrnn.optim.seed_rprop`,
printed as multiplier_rprop), Riedmiller's sign-based Rprop (`optax.rprop`), and SGD. Inits: jrnn's
default (zero-mean) and the notebook's U(0, 1) for every weight and bias (uniform01).

The plot (loss_by_task.png) has one panel per task, log loss over log steps, every optimizer and
both inits drawn: which runs solve which task, and how fast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from experiments import common

# hyperparameters
LENGTH = 10
DIMS = 3
TASKS = {  # name: (hidden, targets, inputs: "uniform" or "ones")
    "constant_0": (5, [0], "uniform"),
    "constant_1": (5, [1], "uniform"),
    "constant_2": (5, [2], "uniform"),
    "periodic_01": (10, [0, 1], "ones"),
    "periodic_012": (50, [0, 1, 2], "ones"),
}
RATES = {"multiplier_rprop": 0.01, "rprop": 0.01, "sgd": 0.1}   # learning rates
OPTIMIZERS = {  # made once: each (optimizer, network) pair's step compiles once (`common.multi_step`)
    "multiplier_rprop": jrnn.optim.seed_rprop(RATES["multiplier_rprop"]),   # the notebook's rule
    "rprop": jrnn.optim.rprop(RATES["rprop"]),
    "sgd": jrnn.optim.sgd(RATES["sgd"]),
}
INITS = ("default", "uniform01")
SOLVED_LOSS = 0.05


def dataset(task, seed):
    hidden, pattern, kind = TASKS[task]
    rng = np.random.RandomState(seed)
    x = rng.uniform(0, 1, (LENGTH, DIMS)) if kind == "uniform" else np.ones((LENGTH, DIMS))
    y = np.array([pattern[t % len(pattern)] for t in range(LENGTH)], np.int32)
    return x.astype(np.float32), y


def network(task):
    """The task's Elman network: DIMS inputs, its hidden size, DIMS classes."""
    return common.model("elman", inputs=DIMS, hidden=TASKS[task][0], outputs=DIMS)


def loss_fn(model, params, batch, carry):
    x, y = batch
    logits, _ = model.apply(params, x)
    return jrnn.losses.softmax_cross_entropy(logits, y, reduction="sum"), carry


def train(task, opt_name, init, steps, seed):
    """Full-batch training on one sequence; returns a result dict."""
    model, opt = network(task), OPTIMIZERS[opt_name]
    params = common.init(model, jax.random.key(seed), scheme=init)
    x, y = dataset(task, seed)
    multi = common.multi_step(loss_fn, model, opt, guard_nonfinite=False)  # we want to *see* divergence here
    xs, ys = np.broadcast_to(x, (steps,) + x.shape), np.broadcast_to(y, (steps,) + y.shape)
    params, _, m, _ = multi(params, opt.init(params), (xs, ys))
    logits, _ = model.apply(params, x)
    loss = float(jrnn.losses.softmax_cross_entropy(logits, y, reduction="sum"))
    finite = bool(np.all(np.isfinite(m["loss"]))) and all(bool(jnp.all(jnp.isfinite(p))) for p in params)
    correct = bool(np.all(np.argmax(np.asarray(logits), -1) == y))
    return {"task": task, "optimizer": opt_name, "init": init, "final_loss": loss, "finite": finite,
            "all_steps_correct": correct, "solved": finite and correct and loss < SOLVED_LOSS,
            "curve_steps": curve_steps(steps) + 1, "curve": np.asarray(m["loss"])[curve_steps(steps)]}


def curve_steps(steps, points=200):
    """Indices of the recorded loss curve, log-spaced: the first steps are where the tasks are solved."""
    return np.unique(np.geomspace(1, steps, points).astype(int)) - 1


def plot_tasks(out, results, steps):
    """One panel per task; colour = optimizer, dashes = init; log-log, failing runs included."""
    colors = dict(zip(OPTIMIZERS, ("tab:red", "tab:blue", "tab:green")))
    dashes = {"default": "-", "uniform01": "--"}
    panels = {}
    for task, (hidden, pattern, _) in TASKS.items():
        runs = [r for r in results if r["task"] == task]
        failed = [f"{r['optimizer']}/{r['init']}" for r in runs if not r["solved"]]
        name = f"{task} (H={hidden}): " + (f"{len(failed)} of {len(runs)} fail" if failed else "all solve")
        panels[name] = {f"{r['optimizer']}, {r['init']} init": (r["curve_steps"], r["curve"]) for r in runs}
    style = lambda label: {"color": colors[label.split(",")[0]], "linestyle": dashes[label.split(", ")[1][:-5]],
                           "linewidth": 1.4}
    return common.plot_panels(out, panels, xlabel="step", ylabel="summed loss, nats (0 drawn at 1e-8)", logx=True, logy=True, floor=1e-8,
                              style=style, filename="loss_by_task.png",
                              title=f"toy sequence tasks: loss per optimizer and init, {steps} full-batch steps "
                                    f"(solved: loss < {SOLVED_LOSS}, every step right)")


def main(argv=None):
    ap = common.parser("sequences", __doc__, steps=3000, plots=("loss_by_task.png",))
    args = ap.parse_args(argv)
    results = []
    bar = common.progress(len(TASKS) * len(OPTIMIZERS) * len(INITS), "sequences", args.quiet)
    with common.Timer() as t:
        for init in INITS:
            for opt_name in OPTIMIZERS:
                for task in TASKS:
                    results.append(train(task, opt_name, init, args.steps, args.seed))
                    bar.update(1)
    bar.close()
    solved = {init: {o: sum(r["solved"] for r in results if r["init"] == init and r["optimizer"] == o)
                     for o in OPTIMIZERS} for init in INITS}
    metrics = {"solved_of_5": solved, "all_solved_default_init": all(v == len(TASKS) for v in solved["default"]),
               "failures": [f"{r['init']}/{r['optimizer']}/{r['task']}" for r in results if not r["solved"]]}
    config = {"steps": args.steps, "tasks": {k: v[:2] for k, v in TASKS.items()}, "length": LENGTH,
              "optimizers": dict(RATES), "inits": list(INITS),
              "solved_loss": SOLVED_LOSS, "seed": args.seed}
    plot = plot_tasks(args.out, results, args.steps)
    common.save_results(args.out, "sequences", config, metrics, t.s, runs=results, plot=plot.name)
    print(f"{'init':10s} {'optimizer':16s} " + " ".join(f"{k:>13s}" for k in TASKS))
    for init in INITS:
        for o in OPTIMIZERS:
            cells = [next(r for r in results if r["init"] == init and r["optimizer"] == o and r["task"] == k) for k in TASKS]
            print(f"{init:10s} {o:16s} " + " ".join(
                f"{('ok ' if c['solved'] else 'FAIL')} {c['final_loss']:8.2g}" if c["finite"] else f"{'NaN/inf':>13s}"
                for c in cells))
    common.print_saved(args.out, plot)
    return metrics


run = common.cli(main)

if __name__ == "__main__":
    run()
