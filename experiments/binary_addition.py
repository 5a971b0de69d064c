"""8-bit binary addition (iamtrask's, as run in source notebook 003): a sigmoid RNN adds two numbers
bit by bit.

iamtrask's recipe (`--recipe iamtrask`): inputs are the bits of a and b (a, b in [0, 128)), least
significant first; the RNN emits the bits of a + b. Sigmoid hidden layer of 16, weights U(-1, 1),
one random pair per iteration, SGD lr 0.1, 10,000 iterations. jrnn uses a sigmoid output with
binary cross-entropy (iamtrask back-propagated a squared error through the output sigmoid) and also learns biases.
Every 100 iterations the model is checked on **all** 16,384 pairs at once (vmapped).

Batched recipe: minibatches of pairs (vmapped) and Adam, timed to 100 % exhaustive accuracy.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from experiments import common

# hyperparameters (iamtrask's)
BITS = 8
HIDDEN = 16
LEARNING_RATE = 0.1
INIT_SCALE = 1.0        # 2 * np.random.random(...) - 1
EVAL_EVERY = 100        # iterations per jitted call; exhaustive check after each

# hyperparameters (batched recipe)
BATCH = 64
BATCHED_LR = 0.03       # Adam
BATCHED_EVAL_EVERY = 20


def encode(a, b):
    """Pairs -> inputs [T=8, ..., 2] and targets [T, ..., 1], least significant bit first."""
    a, b = np.asarray(a), np.asarray(b)
    bit = lambda v: (v[None] >> np.arange(BITS).reshape((BITS,) + (1,) * v.ndim)) & 1
    x = np.stack([bit(a), bit(b)], -1).astype(np.float32)
    return x, bit(a + b)[..., None].astype(np.float32)


ALL_A, ALL_B = np.meshgrid(np.arange(128), np.arange(128), indexing="ij")
ALL_X, ALL_Y = encode(ALL_A.reshape(-1), ALL_B.reshape(-1))        # [8, 16384, 2], [8, 16384, 1]


MODEL = common.model("elman", inputs=2, hidden=HIDDEN, outputs=1, activation="sigmoid")


def forward(params, x):
    logits, _ = MODEL.apply(params, x)
    return logits


def loss_fn(model, params, batch, carry):
    x, y = batch
    logits, _ = model.apply(params, x)
    return jrnn.losses.sigmoid_binary_cross_entropy(logits, y, reduction="sum") / (y.size // BITS), carry


@jax.jit
def exhaustive_accuracy(params):
    """Fraction of all 16,384 pairs whose 8 output bits are all right."""
    pred = forward(params, jnp.asarray(ALL_X)) > 0
    return jnp.mean(jnp.all(pred == (jnp.asarray(ALL_Y) > 0.5), axis=(0, 2)))


SEED_OPT = jrnn.optim.sgd(LEARNING_RATE)
BATCHED_OPT = jrnn.optim.adam(BATCHED_LR)


def init(seed):
    return common.init(MODEL, jax.random.key(seed), scheme="uniform", scale=INIT_SCALE)


def train_iamtrask_recipe(seed, steps, quiet):
    """One pair per iteration. Returns (first iteration at 100 %, accuracy curve, final acc)."""
    rng = np.random.RandomState(seed)
    params = init(seed)
    opt_state = SEED_OPT.init(params)
    step = common.multi_step(loss_fn, MODEL, SEED_OPT)
    curve, first = [], None
    bar = common.progress(steps, f"binary_addition seed {seed}", quiet)
    for done in range(EVAL_EVERY, steps + 1, EVAL_EVERY):
        x, y = encode(rng.randint(0, 128, EVAL_EVERY), rng.randint(0, 128, EVAL_EVERY))
        # one pair per step: [K, T, 2] with K = EVAL_EVERY
        params, opt_state, m, _ = step(params, opt_state, (x.transpose(1, 0, 2), y.transpose(1, 0, 2)))
        acc = float(exhaustive_accuracy(params))
        curve.append((done, acc, float(m["loss"].mean())))
        first = done if first is None and acc == 1.0 else first
        bar.update(EVAL_EVERY)
        bar.set_postfix(loss=f"{curve[-1][2]:.3f}", exhaustive=f"{acc:.3f}")
    bar.close()
    return first, curve, curve[-1][1]


def train_batched_recipe(seed, max_steps=3000):
    """Minibatches of BATCH pairs; returns (steps to 100 %, training seconds, compile seconds)."""
    rng = np.random.RandomState(seed)
    params = init(seed)
    opt_state = BATCHED_OPT.init(params)
    step = common.multi_step(loss_fn, MODEL, BATCHED_OPT)

    def batches():
        x, y = encode(rng.randint(0, 128, (BATCHED_EVAL_EVERY, BATCH)), rng.randint(0, 128, (BATCHED_EVAL_EVERY, BATCH)))
        return x.transpose(1, 0, 2, 3), y.transpose(1, 0, 2, 3)      # [K, T, B, .]

    with common.Timer() as tc:  # compile (and discard) on a copy of the state
        jax.block_until_ready(step(params, opt_state, batches()))
        exhaustive_accuracy(params)
    rng = np.random.RandomState(seed)
    train_s, steps = 0.0, 0
    while steps < max_steps:
        data = batches()
        with common.Timer() as t:
            params, opt_state, _, _ = step(params, opt_state, data)
            jax.block_until_ready(params)
        train_s += t.s
        steps += BATCHED_EVAL_EVERY
        if float(exhaustive_accuracy(params)) == 1.0:
            return steps, train_s, tc.s
    return None, train_s, tc.s


def main(argv=None):
    ap = common.parser("binary_addition", __doc__, steps=10_000, plots=("accuracy.png",))
    ap.add_argument("--seeds", type=common.positive_int, default=5, help="independent runs")
    ap.add_argument("--recipe", choices=["iamtrask", "batched", "both"], default="both",
                    help="iamtrask: one pair per SGD step, as the source; batched: 64 pairs per Adam step")
    args = ap.parse_args(argv)
    common.check_seed_range(args, args.seeds)
    if args.steps % EVAL_EVERY:
        raise ValueError(f"--steps must be a multiple of {EVAL_EVERY}")
    seeds = list(range(args.seed, args.seed + args.seeds))
    metrics, curves = {}, {}
    with common.Timer() as t:
        if args.recipe in ("iamtrask", "both"):
            runs = [train_iamtrask_recipe(s, args.steps, args.quiet) for s in seeds]
            metrics["first_iteration_at_100pct"] = [r[0] for r in runs]
            metrics["final_exhaustive_accuracy"] = [r[2] for r in runs]
            metrics["seeds_at_100pct"] = sum(r[2] == 1.0 for r in runs)
            curves = {f"seed {s}": ([c[0] for c in r[1]], [c[1] for c in r[1]]) for s, r in zip(seeds, runs)}
        if args.recipe in ("batched", "both"):
            b = [train_batched_recipe(s) for s in seeds]
            metrics["batched_steps_to_100pct"] = [r[0] for r in b]
            metrics["batched_train_seconds"] = [r[1] for r in b]
            metrics["batched_compile_seconds"] = [r[2] for r in b]
    config = {"recipe": args.recipe, "bits": BITS, "hidden": HIDDEN, "init_scale": INIT_SCALE, "seeds": seeds}
    if args.recipe in ("iamtrask", "both"):
        config.update(steps=args.steps, optimizer="sgd", lr=LEARNING_RATE, batch=1, eval_every=EVAL_EVERY)
    if args.recipe in ("batched", "both"):
        config.update(batched_optimizer="adam", batched_lr=BATCHED_LR, batched_batch=BATCH,
                      batched_eval_every=BATCHED_EVAL_EVERY, batched_max_steps=3000)
    plot = None
    if curves:
        percent = {k: (xs, [100 * a for a in acc]) for k, (xs, acc) in curves.items()}
        plot = common.plot_curves(args.out, percent, xlabel="iteration (one random pair each)",
                                  ylabel=f"sums right, % of all {ALL_A.size:,} pairs",
                                  title=f"8-bit binary addition: sigmoid RNN H={HIDDEN}, iamtrask's recipe "
                                        f"(SGD lr {LEARNING_RATE:g})",
                                  refs={"every pair right": 100.0}, logy=False, filename="accuracy.png")
    common.save_results(args.out, "binary_addition", config, metrics, t.s, curves=curves,
                        plot=plot.name if plot else None)
    if curves:
        for s, first, acc in zip(seeds, metrics["first_iteration_at_100pct"], metrics["final_exhaustive_accuracy"]):
            print(f"seed {s}: exhaustive accuracy {acc:.4f} after {args.steps} iterations; first 100 % at {first}")
        print(f"100 % exhaustive in {metrics['seeds_at_100pct']} of {len(seeds)} seeds")
    if "batched_steps_to_100pct" in metrics:
        for s, n, ts in zip(seeds, metrics["batched_steps_to_100pct"], metrics["batched_train_seconds"]):
            print(f"batched seed {s}: 100 % after {n} steps of {BATCH} pairs, {ts:.3f} s of training")
    common.print_saved(args.out, plot, "the batched recipe alone has no curve")
    return metrics


run = common.cli(main)

if __name__ == "__main__":
    run()
