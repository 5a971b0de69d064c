"""Generic many-to-many RNN on a generated task: echo the previous token.

The system of the many-to-many BPTT notebook (source notebook 001) (one-hot inputs, tanh RNN, softmax output at every step, randn * 0.1 weights,
zero biases, per-step cross-entropy summed over time, SGD) with its bugs fixed (see `jrnn.bptt`
for the list). Task: random sequences over a V-token vocabulary; the target at step t is the
input at step t-1 (0 at t = 0), so the RNN must remember one step back.

At the start and the end of training the experiment checks, in float64, that `jax.grad` of the
scan forward equals `jrnn.bptt.many_to_many` (the hand-written BPTT) on a training sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from experiments import common

# hyperparameters (the notebook's where it says)
VOCAB = 4
HIDDEN = 32
LENGTH = 12
INIT_SCALE = 0.1        # np.random.randn(...) * 0.1
LEARNING_RATE = 0.05    # SGD on the summed loss (the seed: 0.01, one sequence per step)
BATCH = 32              # sequences per step (the seed used one)
N_TRAIN = 1024
STEPS_PER_CALL = 50


def make_data(seed, n):
    """Random token sequences [n, T] and their one-step echoes."""
    x = np.random.RandomState(seed).randint(0, VOCAB, (n, LENGTH)).astype(np.int32)
    y = np.concatenate([np.zeros((n, 1), np.int32), x[:, :-1]], axis=1)
    return x, y


MODEL = common.model("elman", vocab=VOCAB, hidden=HIDDEN)


def loss_fn(model, params, batch, carry):
    """Per-sequence summed cross-entropy (the seed's loss), averaged over the batch. batch: [T, B]."""
    x, y = batch
    logits, _ = model.apply(params, x)
    return jrnn.losses.softmax_cross_entropy(logits, y, reduction="sum") / x.shape[1], carry


OPTIMIZER = jrnn.optim.sgd(LEARNING_RATE)


def gradient_check(params, x, y) -> float:
    """Worst relative error of jax.grad vs the hand-written BPTT, in float64."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        g = jax.grad(lambda p: jrnn.losses.softmax_cross_entropy(MODEL.apply(p, x)[0], y, reduction="sum"))(p64)
        _, ref, _ = jrnn.bptt.many_to_many(p64, x, y)
        return jrnn.testing.relative_error(g, jrnn.ElmanParams(**ref))


def accuracy(params, x, y):
    """Token accuracy of sequences x, y [N, T] (batch-first, as drawn)."""
    logits, _ = MODEL.apply(params, x.T)                  # time-major [T, N, V]
    return float(jnp.mean(jnp.argmax(logits, -1) == y.T))


def main(argv=None):
    ap = common.parser("many_to_many", __doc__, steps=3000, plots=("train_loss.png",))
    args = ap.parse_args(argv)
    common.check_seed_range(args, 2)   # the test set is drawn with seed + 1
    if args.steps % STEPS_PER_CALL:
        raise ValueError(f"--steps must be a multiple of {STEPS_PER_CALL}")
    x, y = make_data(args.seed, N_TRAIN)
    x_test, y_test = make_data(args.seed + 1, 256)
    params = common.init(MODEL, jax.random.key(args.seed), scheme="normal", scale=INIT_SCALE)
    grad_err_start = gradient_check(params, x[0], y[0])
    opt_state = OPTIMIZER.init(params)
    step = common.multi_step(loss_fn, MODEL, OPTIMIZER)
    rng = np.random.RandomState(args.seed)
    losses = []
    bar = common.progress(args.steps, "many_to_many", args.quiet)
    with common.Timer() as t:
        for _ in range(args.steps // STEPS_PER_CALL):
            idx = rng.randint(0, N_TRAIN, (STEPS_PER_CALL, BATCH))
            batch = (x[idx].transpose(0, 2, 1), y[idx].transpose(0, 2, 1))     # [K, T, B]
            params, opt_state, m, _ = step(params, opt_state, batch)
            losses.extend(np.asarray(m["loss"]).tolist())
            bar.update(STEPS_PER_CALL)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    grad_err_end = gradient_check(params, x[0], y[0])
    metrics = {"first_loss": losses[0], "final_loss": float(np.mean(losses[-50:])),
               "test_token_accuracy": accuracy(params, x_test, y_test),
               "grad_vs_bptt_rel_error_start": grad_err_start, "grad_vs_bptt_rel_error_end": grad_err_end,
               "steps_per_s": args.steps / t.s}
    config = {"vocab": VOCAB, "hidden": HIDDEN, "length": LENGTH, "init_scale": INIT_SCALE, "optimizer": "sgd",
              "lr": LEARNING_RATE, "batch": BATCH, "n_train": N_TRAIN, "steps": args.steps, "seed": args.seed}
    plot = common.plot_curves(args.out, {"train": (np.arange(len(losses)), losses)},
                              xlabel=f"SGD step (batch of {BATCH} sequences)",
                              ylabel=f"loss, nats summed over the {LENGTH} steps",
                              title=f"many-to-many Elman RNN (H={HIDDEN}): echo the previous token\n"
                                    f"{N_TRAIN} random sequences of {LENGTH} tokens, vocabulary {VOCAB}, SGD lr {LEARNING_RATE:g}",
                              filename="train_loss.png")
    common.save_results(args.out, "many_to_many", config, metrics, t.s, losses=losses[:: max(1, args.steps // 500)],
                        plot=plot.name)
    print(f"loss {metrics['first_loss']:.3f} -> {metrics['final_loss']:.3f}; "
          f"test token accuracy {metrics['test_token_accuracy']:.4f}")
    print(f"jax.grad vs hand-written BPTT (float64): rel. error {grad_err_start:.1e} at start, {grad_err_end:.1e} at end")
    common.print_saved(args.out, plot)
    return metrics


run = common.cli(main)

if __name__ == "__main__":
    run()
