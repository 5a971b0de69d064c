"""Karpathy's min-char-rnn on kafka.txt, trained with jrnn.

Same algorithm as min-char-rnn.py (as run in source notebook 003, "Recurrent Neural Network"): H=100, T=25 chunks read in order with the hidden state carried
across chunks (reset at the start and at wrap-around), sum-over-25-steps loss, gradients clipped
to +-5, Adagrad lr 0.1 from a zero accumulator, smooth loss 0.999/0.001 from -ln(1/V)*T, and a
200-char sample every 1000 iterations. min-char-rnn's own numpy loop runs in the same command
for the speed ratio.

`--as-written` runs min-char-rnn exactly as the source notebook writes it: its `lossFun` never adds
`dy` into `dby`, so the readout bias b_y stays 0 for ever (Karpathy's published min-char-rnn, and
the default here, trains it). The flag zeroes b_y's gradient in the optimizer chain (an optax
mask), so Adagrad adds 0 to its memory and moves b_y by exactly 0.

`--cell lstm|gru` runs the same recipe with a gated cell of HIDDEN units (its own init instead of
randn * 0.01; the numpy loop, the seed's Elman network, is then not timed).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jrnn
from experiments import baselines, common

# hyperparameters (min-char-rnn's)
HIDDEN = 100          # size of hidden layer of neurons
SEQ_LEN = 25          # number of steps to unroll the RNN for
LEARNING_RATE = 0.1   # Adagrad
CLIP = 5.0            # elementwise gradient clip
INIT_SCALE = 0.01     # randn * 0.01
SAMPLE_EVERY = 1000   # iterations between samples
SAMPLE_LEN = 200
CALL_ITERS = 100      # optimizer steps per jitted call (lax.scan over chunks)


def make_model(cell, V):
    """min-char-rnn's network: one layer of HIDDEN units, any cell."""
    return common.model(cell, vocab=V, hidden=HIDDEN)


def init(model, key):
    """The seed's randn * 0.01 for its Elman network; a gated cell's own init."""
    return common.init(model, key, scheme="normal", scale=INIT_SCALE)


def loss_fn(cell, params, batch, h):
    """Sum of the 25 per-step losses; the carry h (the layer's: an LSTM's (h, c)) is reset to
    zero where the loop starts over. The network's vocabulary is read off the params."""
    x, y, reset = batch
    h = jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), h)
    logits, (h,) = make_model(cell, jnp.shape(params.w_hy)[-1]).apply(params, x, (h,))
    return jrnn.losses.softmax_cross_entropy(logits, y, reduction="sum"), h


def only_b_y(params):
    """Mask selecting the readout bias: True for b_y, False for every other leaf."""
    return jax.tree.map(lambda _: False, params)._replace(b_y=True)


OPTIMIZER = jrnn.optim.karpathy_adagrad(LEARNING_RATE, clip_value=CLIP)
# the seed as written: dby is never accumulated, i.e. b_y's gradient is 0 before clip and Adagrad
AS_WRITTEN_OPTIMIZER = optax.chain(optax.masked(optax.set_to_zero(), only_b_y), OPTIMIZER)


def multi_step(as_written: bool = False, precision: str | None = "float32", cell: str = "elman"):
    """The compiled multi-step of a mode, --precision and --cell (one per process: `common.multi_step`).
    `train`'s BadStepCounter counts the skipped steps (--max-bad-steps), so the steps do not."""
    return common.multi_step(loss_fn, cell, optimizer(as_written), precision=precision, max_consecutive_skips=None)


def optimizer(as_written: bool = False) -> optax.GradientTransformation:
    return AS_WRITTEN_OPTIMIZER if as_written else OPTIMIZER


def positions(n_iters: int, data_len: int):
    """The seed's data pointer per iteration and where hprev is reset (n == 0 or wrap-around)."""
    ps, resets, p = [], [], 0
    for n in range(n_iters):
        reset = n == 0 or p + SEQ_LEN + 1 > data_len
        p = 0 if reset else p
        ps.append(p)
        resets.append(reset)
        p += SEQ_LEN
    return np.array(ps), np.array(resets)


def train(params, ids, n_iters, *, opt_state=None, h=None, start=0, on_call=None, max_bad_steps=10,
          as_written=False, precision="float32", cell="elman", bad=None):
    """Run iterations start..n_iters-1 of min-char-rnn; returns (params, per-iteration losses, h).

    cell: the network's cell (`params` of the seed's Elman network by default); h is the layer's
    carry (an LSTM's is LSTMState(h, c)). Pass the opt_state and h of a checkpoint with `start` to
    resume exactly where it stopped.
    `as_written=True` freezes b_y as the source notebook's lossFun does (its opt_state is
    `optimizer(True).init(params)`). `bad`: a `jrnn.train.BadStepCounter` to count skipped
    (non-finite) steps in (default: a new one).
    """
    opt_state = optimizer(as_written).init(params) if opt_state is None else opt_state
    step = multi_step(as_written, precision, cell)
    h = make_model(cell, jnp.shape(params.w_hy)[-1]).zeros(params)[0] if h is None else h
    ps, resets = positions(n_iters, len(ids))
    offsets = np.arange(SEQ_LEN)
    bad = jrnn.train.BadStepCounter(max_bad_steps) if bad is None else bad
    losses = []
    for first in range(start, n_iters, CALL_ITERS):
        sl = slice(first, min(first + CALL_ITERS, n_iters))
        x = ids[ps[sl, None] + offsets]            # [K, T]
        y = ids[ps[sl, None] + offsets + 1]
        params, opt_state, metrics, h = step(params, opt_state, (x, y, resets[sl]), h)
        losses.append(np.asarray(metrics["loss"]))
        bad.update(metrics["skipped"])
        if on_call is not None:
            on_call(sl.stop, params, opt_state, h, x[-1, 0], np.concatenate(losses))
    return params, np.concatenate(losses) if losses else np.zeros(0), h


def smooth(losses, V):
    """min-char-rnn's smooth loss after each iteration."""
    s, out = -math.log(1.0 / V) * SEQ_LEN, []
    for loss in losses:
        s = s * 0.999 + loss * 0.001
        out.append(s)
    return np.array(out)


def find_resume(seed, vocab, args):
    """(checkpoint folder, fresh state, checkpoint to continue from or None), refusing before any training a
    checkpoint past --steps and a fresh run into another run's checkpoints."""
    model = make_model(args.cell, vocab.size)
    params = init(model, jax.random.key(seed))
    ckpt_dir = args.out / "checkpoints" / f"seed_{seed}"
    state = {"params": params, "opt_state": optimizer(args.as_written).init(params), "h": model.zeros(params)[0]}
    ck = common.find_resume(ckpt_dir, args, state, config=checkpoint_config(seed, args.as_written, args.cell, args.precision),
                            vocab=vocab.chars, omitted={"cell": "elman", "precision": "float32", "b_y": "trained"},
                            flags={"b_y": "--as-written"})
    if ck is not None and ck.step > args.steps:   # its losses and state are past the run asked for
        raise ValueError(f"--steps {args.steps} is fewer than the {ck.step} iterations already in {ck.path}: "
                         f"pass --steps >= {ck.step} to continue that run, or --overwrite to start over")
    return ckpt_dir, state, ck


def run_seed(seed, ids, vocab, args, samples, resume):
    ckpt_dir, state, ck = resume
    config = checkpoint_config(seed, args.as_written, args.cell, args.precision)
    model = make_model(args.cell, vocab.size)
    run_id = common.checkpoint_run(ckpt_dir, args, ck)
    state, start, earlier = (ck.state, ck.step, ck.cursor["losses"]) if ck else (state, 0, [])
    bad = jrnn.train.BadStepCounter(args.max_bad_steps)
    if ck is not None:
        bad.total = ck.cursor.get("skipped", 0)   # NaN/inf steps skipped before the resume count too
        print(f"seed {seed}: resumed from {ck.path} at iteration {start}")
    bar = common.progress(args.steps, f"minchar seed {seed}", args.quiet)
    bar.update(start)
    sample_key = jax.random.key(seed + 10_000)

    def on_call(done, params, opt_state, h, last_input, losses):
        losses = np.concatenate([earlier, losses])
        bar.update(done - bar.n)
        bar.set_postfix(smooth_loss=f"{smooth(losses, vocab.size)[-1]:.2f}")
        if args.checkpoint_every and done % args.checkpoint_every == 0:
            jrnn.checkpoint.save(ckpt_dir, {"params": params, "opt_state": opt_state, "h": h}, step=done,
                                 config=config, vocab=vocab.chars, cursor={"losses": losses.tolist(), "skipped": bad.total},
                                 run_id=run_id)
        if done % SAMPLE_EVERY == 0 or done == args.steps:
            toks, _ = jrnn.generate(model, params, jax.random.fold_in(sample_key, done), [int(last_input)], SAMPLE_LEN,
                                    carry=(h,))
            samples.append({"iter": done, "seed": seed, "text": vocab.decode(toks)})

    with common.Timer() as t:
        _, losses, _ = train(state["params"], ids, args.steps, opt_state=state["opt_state"], h=state["h"],
                             start=start, on_call=on_call, bad=bad, as_written=args.as_written,
                             precision=common.step_precision(args), cell=args.cell)
    bar.close()
    return np.concatenate([earlier, losses]), t.s, bad.total


def checkpoint_config(seed, as_written=False, cell="elman", precision="float32"):
    """What a resumed run must share with the run that wrote the checkpoint."""
    config = {"experiment": "minchar", "seed": seed, "hidden": HIDDEN, "seq_len": SEQ_LEN, "lr": LEARNING_RATE,
              "clip": CLIP, "init_scale": INIT_SCALE, "call_iters": CALL_ITERS}
    if cell != "elman":  # only then, so that checkpoints of the seed's network still resume
        config["cell"] = cell
    if as_written:  # only then, so that checkpoints of the default mode still resume
        config["b_y"] = "frozen at 0 (seed 003b as written)"
    if precision != "float32":  # only then (as above): a resume must train at the precision results.json records
        config["precision"] = precision
    return config


def main(argv=None):
    ap = common.parser("minchar", __doc__, steps=4000, plots=("smooth_loss.png",))
    ap.add_argument("--seeds", type=common.positive_int, default=1, help="independent runs (seeds seed..seed+n-1)")
    ap.add_argument("--data", default=None, help="path to kafka.txt (else $JRNN_DATA_DIR or download)")
    ap.add_argument("--cell", choices=sorted(jrnn.cells.CELLS), default="elman", help="recurrent cell (seed: elman)")
    ap.add_argument("--baseline-steps", type=common.non_negative_int, default=300, help="numpy-loop iterations timed for the ratio (0: skip)")
    common.add_checkpoint_flags(ap, f"save the training state every N iterations (multiple of {CALL_ITERS}; 0: never)")
    ap.add_argument("--max-bad-steps", type=common.positive_int, default=10, help="stop after this many consecutive NaN/inf steps")
    ap.add_argument("--as-written", action="store_true",
                    help="min-char-rnn exactly as the source notebook writes it: its lossFun never accumulates dby, "
                         "so b_y stays 0 "
                         "(default: train b_y, as Karpathy's published min-char-rnn does)")
    common.add_precision(ap)
    args = ap.parse_args(argv)
    if args.as_written and args.cell != "elman":
        ap.error("--as-written is the min-char-rnn notebook's Elman network as written; it takes no --cell")
    common.check_seed_range(args, args.seeds)
    if args.checkpoint_every % CALL_ITERS:
        raise ValueError(f"--checkpoint-every must be a multiple of {CALL_ITERS}, got {args.checkpoint_every}")
    text = jrnn.data.load_text("kafka", args.data)
    vocab = jrnn.data.build_vocab(text)
    ids = vocab.encode(text)
    if len(ids) < SEQ_LEN + 1:
        raise ValueError(f"corpus has {len(ids)} chars; min-char-rnn needs at least {SEQ_LEN + 1}")

    seeds = range(args.seed, args.seed + args.seeds)
    resumes = [find_resume(seed, vocab, args) for seed in seeds]   # every seed checked before any trains
    runs, samples = [], []
    for seed, resume in zip(seeds, resumes):
        losses, wall, skipped = run_seed(seed, ids, vocab, args, samples, resume)
        sm = smooth(losses, vocab.size)
        marks = {str(i): float(sm[i]) for i in range(0, args.steps, 1000)}
        marks[str(args.steps)] = float(sm[-1])
        runs.append({"seed": seed, "smooth_loss": marks, "final_smooth_loss": float(sm[-1]), "losses": losses,
                     "first_loss": float(losses[0]), "wall_s": wall, "iters_per_s": args.steps / wall,
                     "skipped_steps": skipped,
                     "curve": sm[:: max(1, args.steps // 500)]})
    for s in samples[-1:]:
        print(f"---- sample at iter {s['iter']} (seed {s['seed']})\n{s['text']}\n----")

    # steady-state jrnn speed (compiled) vs the seed's numpy loop, same command, same machine
    params = init(make_model(args.cell, vocab.size), jax.random.key(args.seed))
    metrics = {"final_smooth_loss_per_seed": [r["final_smooth_loss"] for r in runs],
               "median_final_smooth_loss": float(np.median([r["final_smooth_loss"] for r in runs])),
               "skipped_steps": sum(r["skipped_steps"] for r in runs)}  # NaN/inf steps the guard skipped
    if args.baseline_steps > 0 and args.cell == "elman":   # the numpy loop is the seed's Elman network
        n = max(CALL_ITERS, args.steps // CALL_ITERS * CALL_ITERS)
        train(params, ids, CALL_ITERS, as_written=args.as_written, precision=common.step_precision(args))  # compile
        with common.Timer() as tj:
            train(params, ids, n, as_written=args.as_written, precision=common.step_precision(args))
        with common.Timer() as tn:
            baselines.minchar_numpy(params, ids, args.baseline_steps, as_written=args.as_written)
        metrics.update(jrnn_iters_per_s=n / tj.s, numpy_iters_per_s=args.baseline_steps / tn.s)
        metrics["speedup_vs_numpy"] = metrics["jrnn_iters_per_s"] / metrics["numpy_iters_per_s"]

    config = {"cell": args.cell, "hidden": HIDDEN, "seq_len": SEQ_LEN, "optimizer": "karpathy_adagrad", "lr": LEARNING_RATE,
              "clip": CLIP, "init_scale": INIT_SCALE, "steps": args.steps, "steps_per_call": CALL_ITERS,
              "as_written": args.as_written, "precision": args.precision,
              "seeds": list(range(args.seed, args.seed + args.seeds)), "vocab_size": vocab.size, "chars": len(ids),
              "data": args.data, "baseline_steps": args.baseline_steps, "resume": args.resume}
    xs = np.arange(args.steps)[:: max(1, args.steps // 500)]
    plot = common.plot_curves(args.out, {f"seed {r['seed']}": (xs, r["curve"]) for r in runs},
                              xlabel=f"iteration (one {SEQ_LEN}-char chunk each)",
                              ylabel=f"smooth loss, nats per {SEQ_LEN} chars",
                              title=f"min-char-rnn on kafka.txt: {args.cell} H={HIDDEN}, Adagrad lr {LEARNING_RATE:g}"
                                    + ("\n(as written: b_y frozen at 0)" if args.as_written else ""),
                              refs={f"a uniform guess: {SEQ_LEN} ln {vocab.size}": SEQ_LEN * np.log(vocab.size)},
                              filename="smooth_loss.png")
    common.save_results(args.out, "minchar", config, metrics, sum(r["wall_s"] for r in runs), runs=runs,
                        samples=samples, plot=plot.name)
    for r in runs:
        print(f"seed {r['seed']}: smooth loss " + ", ".join(f"{k}: {v:.2f}" for k, v in r["smooth_loss"].items())
              + f"  (wall {r['wall_s']:.1f} s, compile included)")
    what = "smooth loss" if args.seeds == 1 else f"median smooth loss of {args.seeds} seeds"
    print(f"{what} at iter {args.steps}: {metrics['median_final_smooth_loss']:.2f}")
    if "speedup_vs_numpy" in metrics:
        print(f"speed (compiled, steady state; the figure to compare): jrnn {metrics['jrnn_iters_per_s']:.0f} it/s, "
              f"min-char-rnn's numpy loop {metrics['numpy_iters_per_s']:.0f} it/s -> {metrics['speedup_vs_numpy']:.1f}x")
    common.print_saved(args.out, plot)
    return metrics


run = common.cli(main)

if __name__ == "__main__":
    run()
