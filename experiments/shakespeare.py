"""A recurrent character LM against nanoGPT's shakespeare_char baseline (best validation 1.4697
nats/char): `python -m experiments.charlm --recipe shakespeare-char` (or `python -m experiments.shakespeare`).

nanoGPT's data exactly: the vocabulary of the whole tinyshakespeare text (65 chars), the first
90 % of the characters train (1,003,854), the last 10 % validate (111,540). The training streams
are cut from the training slice alone.

Training: --batch streams read --seq-len chars per optimizer step, the carry threaded from chunk to
chunk (stateful; full BPTT over each chunk, or TBPTT(k1, k2) inside it with --k1/--k2), dropout
between layers, AdamW whose rate warms up over --warmup-steps and then decays on a cosine to
--lr-floor x --lr by the end of the budget, global-norm clipping. The budget is --max-minutes of
wall time (the cosine follows the clock, so the decay ends when the time is up however loaded the
machine is) or --steps optimizer steps (the cosine follows the steps: reproducible).

Validation: the mean cross-entropy in nats per character (and bits = nats / ln 2) over every
character of the validation split, without dropout, read as 64 contiguous streams with the carry
threaded across 256-char chunks (each stream starts from a zero carry), every --eval-minutes. This
sees more context than nanoGPT's estimate (random 256-char blocks); the "nanoGPT-style" number at
the end scores the same split as consecutive 256-char blocks, each from a zero carry.

Writes under --out: results.json (config, best validation and when it was reached, wall time,
parameter count, device), train_validation_loss.png (against wall time, nanoGPT's 1.4697 drawn),
checkpoints/ (every --checkpoint-minutes; --resume continues the same curve) and best/ (the best
validation's params). Ends with a 500-char sample from the best params.
"""

from __future__ import annotations

import argparse
import functools
import math
import time

from experiments import one_cpu_device_per_core

one_cpu_device_per_core()  # the streams split over the CPU's cores

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from experiments import common

NANOGPT_VAL = 1.4697       # nanoGPT's config/train_shakespeare_char.py: best validation loss, nats/char
TRAIN_FRACTION = 0.9       # nanoGPT's prepare.py: data[:int(n * 0.9)] trains, the rest validates
PROG = "python -m experiments.charlm --recipe shakespeare-char"

# hyperparameters: the CPU recipe (2 cores, --max-minutes 60); see docs/reproducing.md for the runs
CELL = "gru"
LAYERS = 2
HIDDEN = 256
BATCH = 32             # parallel streams
SEQ_LEN = 64           # chars per optimizer step and stream (the carry crosses chunk boundaries)
LR = 3e-3              # AdamW's peak rate
LR_FLOOR = 0.05        # the cosine ends at this fraction of the peak
WARMUP_STEPS = 100
WEIGHT_DECAY = 1e-4
DROPOUT = 0.2          # between layers
CLIP_NORM = 1.0
MAX_MINUTES = 60.0
TARGET = 1.55          # the CPU target, nats/char
CALL_STEPS = 10        # optimizer steps per jitted call

EVAL_STREAMS = 64      # validation read as this many contiguous streams ...
EVAL_CHUNK = 256       # ... this many chars per scan call, the carry threaded
NANOGPT_BLOCK = 256    # nanoGPT's block_size: the nanoGPT-style number's blocks


# ---- the data ---------------------------------------------------------------------------------

def split(text: str, chars: int | None = None):
    """(vocab, train ids, validation ids): nanoGPT's split, the vocabulary over the whole text,
    the first int(0.9 n) characters train, the rest validate. `chars`: split only the first
    `chars` characters the same way (smoke runs), the vocabulary still the whole text's."""
    vocab = jrnn.data.build_vocab(text)
    ids = vocab.encode(text[:chars] if chars else text)
    cut = int(len(ids) * TRAIN_FRACTION)
    return vocab, ids[:cut], ids[cut:]


def train_streams(train_ids, batch: int, seq_len: int, epoch: int, seed: int):
    """One epoch's (inputs, targets) `[N, T, B]` from the training ids alone: `batch` contiguous
    streams; after the first epoch they start at a random offset below `seq_len`, so the chunk
    boundaries move from epoch to epoch."""
    offset = int(np.random.default_rng([seed, epoch]).integers(seq_len)) if epoch else 0
    return jrnn.data.streams(train_ids[offset:], batch, seq_len)


def columns(ids, length: int):
    """Every prediction of `ids` (input ids[i] -> target ids[i + 1]) laid out time-major in
    columns of `length` consecutive positions: (x, y, mask) `[length, C]`, column j holding
    positions j*length .. (j+1)*length - 1, the last one padded (mask 0)."""
    x, y = np.asarray(ids[:-1]), np.asarray(ids[1:])
    n = len(x)
    cols = -(-n // length)
    pad = cols * length - n
    m = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
    x, y = (np.concatenate([a, np.zeros(pad, a.dtype)]) for a in (x, y))
    return tuple(a.reshape(cols, length).T for a in (x, y, m))


@functools.partial(jax.jit, static_argnames="model")
def _nll_sum(model, params, xs, ys, ms):
    """Summed cross-entropy over chunks `[K, T, C]` read in order from a zero carry (no dropout)."""
    def body(carry, chunk):
        x, y, m = chunk
        loss, carry = model.loss(params, x, y, carry, mask=m, reduction="sum")
        return carry, loss
    _, sums = jax.lax.scan(body, model.zeros(params, (xs.shape[-1],)), (xs, ys, ms))
    return jnp.sum(sums)


def _score(model, params, x, y, m, chunk: int, group: int) -> float:
    """Mean nats per real position of (x, y, m) `[L, C]`: columns `group` at a time, each column
    read in chunks of `chunk` with its carry threaded (L a multiple of chunk)."""
    total = 0.0
    L, C = x.shape
    for c in range(0, C, group):
        sl = slice(c, c + group)
        xs, ys, ms = (a[:, sl] for a in (x, y, m))
        if xs.shape[1] < group:   # one compiled shape: pad the last group with masked columns
            xs, ys, ms = (np.pad(a, ((0, 0), (0, group - a.shape[1]))) for a in (xs, ys, ms))
        xs, ys, ms = (a.reshape(L // chunk, chunk, group) for a in (xs, ys, ms))
        total += float(_nll_sum(model, params, xs, ys, ms))
    return total / float(m.sum())


def evaluate(model, params, val_ids, streams: int = EVAL_STREAMS, chunk: int = EVAL_CHUNK) -> float:
    """Validation nats/char over every prediction of `val_ids`: `streams` contiguous streams (each
    from a zero carry), read `chunk` chars at a time with the carry threaded; no dropout."""
    per = -(-(len(val_ids) - 1) // streams)
    per = -(-per // chunk) * chunk            # whole chunks; the padding is masked
    x, y, m = columns(val_ids, per)
    if x.shape[1] < streams:
        x, y, m = (np.pad(a, ((0, 0), (0, streams - a.shape[1]))) for a in (x, y, m))
    return _score(model, params, x, y, m, chunk, streams)


def evaluate_blocks(model, params, val_ids, block: int = NANOGPT_BLOCK, group: int = EVAL_STREAMS) -> float:
    """nanoGPT-style validation nats/char: the split as consecutive `block`-char blocks, each
    from a zero carry (as a transformer sees at most `block` chars), every prediction counted."""
    x, y, m = columns(val_ids, block)
    return _score(model, params, x, y, m, block, group)


# ---- training ---------------------------------------------------------------------------------

def _loss(spec, params, batch, carry):
    """Mean NLL of one `[T, B]` chunk continuing each stream's carry; dropout between layers with
    the call's key (`keys[0, 0]`: the keys ride in the batch `[1, B]`, so they split over devices
    with it)."""
    model, grad, dropout = spec
    x, y, keys = batch
    return model.loss(params, x, y, carry, grad=grad, dropout=dropout, key=keys[0, 0] if dropout else None)


def _step(args, model, grad, opt):
    spec = (model, grad, args.dropout)
    mesh = jrnn.distributed.batch_mesh(args.batch)
    if mesh.size > 1:   # each core scans its share of the streams (see docs/training.md)
        return jrnn.distributed.make_data_parallel_step(
            functools.partial(_loss, spec), opt, mesh=mesh, multi_step=True,
            precision=common.step_precision(args), max_consecutive_skips=None), mesh.size
    return common.multi_step(_loss, spec, opt, precision=common.step_precision(args), max_consecutive_skips=None), 1


def _config(args, V):
    """What a checkpoint must share with the run that resumes it (the flags that change the curve)."""
    return {k: getattr(args, k) for k in ("seed", "cell", "layers", "hidden", "batch", "seq_len", "lr", "lr_floor",
                                          "warmup_steps", "weight_decay", "dropout", "clip_norm", "max_minutes",
                                          "steps", "k1", "k2", "precision")} | {"vocab_size": V}


def train(args, vocab, train_ids, val_ids):
    """Train under the budget; returns (model, best params, record) where record holds the
    evaluations, the training curve and the best validation's time and step."""
    V = vocab.size
    model = jrnn.lm.model(args.cell, vocab_size=V, hidden_size=args.hidden, layers=args.layers)
    grad = jrnn.TBPTT(args.k1, args.k2 or args.k1) if args.k1 else jrnn.FullBPTT()
    opt = jrnn.optim.adamw(args.lr, weight_decay=args.weight_decay, clip_norm=args.clip_norm, settable=True)
    schedule = jrnn.optim.warmup_cosine(args.lr, warmup_steps=args.warmup_steps, floor=args.lr_floor)
    multi_step, devices = _step(args, model, grad, opt)
    params = model.init(jax.random.key(args.seed))
    print(f"{args.layers}-layer {args.cell} H={args.hidden}: {jrnn.lm.param_count(params):,} parameters; "
          f"{args.batch} streams x {args.seq_len} chars per step" + (f" over {devices} devices" if devices > 1 else ""))
    state = {"params": params, "opt_state": opt.init(params), "h": model.zeros(params, (args.batch,))}
    config = _config(args, V)
    ckpt_dir, best_dir = args.out / common.CHECKPOINTS, args.out / "best"
    ck = common.find_resume(ckpt_dir, args, state, config=config, vocab=vocab.chars)
    run_id = common.checkpoint_run(ckpt_dir, args, ck)
    cur = {"step": 0, "epoch": 0, "call": 0, "wall_s": 0.0, "history": [], "curve": [], "best": None, "skipped": 0}
    best_params = params
    if ck is not None:
        state, cur = ck.state, ck.cursor
        best_run = jrnn.checkpoint.run_of(best_dir)
        best = jrnn.checkpoint.load_latest(best_dir, {"params": params}, run_id=best_run) if best_run else None
        best_params = state["params"] if best is None else best.state["params"]
        print(f"resumed from {ck.path} at step {cur['step']}, {cur['wall_s'] / 60:.1f} min")
    else:
        best_run = jrnn.checkpoint.start_run(best_dir, overwrite=True)   # a fresh run's best replaces any older
    params, opt_state, h = state["params"], state["opt_state"], state["h"]
    budget_s = 60.0 * args.max_minutes
    history, curve = cur["history"], cur["curve"]
    step, epoch, call = cur["step"], cur["epoch"], cur["call"]
    bad = jrnn.train.BadStepCounter(args.max_bad_steps)
    bad.total = cur["skipped"]
    tokens_per_call = CALL_STEPS * args.seq_len * args.batch
    base_key = jax.random.key(args.seed)
    xs = ys = None
    bar = common.progress(round(budget_s) if budget_s else args.steps, "shakespeare-char", args.quiet)
    t0 = time.perf_counter() - cur["wall_s"]
    last_eval = last_ckpt = cur["wall_s"]
    bar.update(round(cur["wall_s"]) if budget_s else step)
    toks_s, val, first = None, (history[-1]["val_nats"] if history else None), True

    def wall():
        return time.perf_counter() - t0

    def save(now):
        if not run_id:
            return
        cursor = {"step": step, "epoch": epoch, "call": call, "wall_s": now, "history": history, "curve": curve,
                  "best": cur["best"], "skipped": bad.total}
        jrnn.checkpoint.save(ckpt_dir, {"params": params, "opt_state": opt_state, "h": h}, step=step, config=config,
                             vocab=vocab.chars, cursor=cursor, run_id=run_id, keep=2)

    def done(now):
        return (budget_s and now >= budget_s) or (args.steps and step >= args.steps)

    while not done(wall()):
        if xs is None or call == 0:
            xs, ys = train_streams(train_ids, args.batch, args.seq_len, epoch, args.seed)
            n_calls = len(xs) // CALL_STEPS
            if call == 0:
                h = model.zeros(params, (args.batch,))   # each epoch reads its streams from their start
        now = wall()
        progress = max(now / budget_s if budget_s else 0.0, step / args.steps if args.steps else 0.0)
        lr = schedule(step, progress)
        opt_state = jrnn.optim.set_learning_rate(opt_state, lr)
        keys = jax.random.split(jax.random.fold_in(base_key, step), CALL_STEPS * args.batch)
        sl = slice(call * CALL_STEPS, (call + 1) * CALL_STEPS)
        batch = (xs[sl], ys[sl], keys.reshape(CALL_STEPS, 1, args.batch))
        params, opt_state, m, h = multi_step(params, opt_state, batch, h)
        bad.update(m["skipped"])
        loss = float(np.mean(m["loss"]))       # waits for the call: the clock below is its end
        step += CALL_STEPS
        call += 1
        if call == n_calls:
            epoch, call = epoch + 1, 0
        after = wall()
        if first:   # its time is mostly compilation
            first = False
        else:
            rate = tokens_per_call / max(after - now, 1e-9)
            toks_s = rate if toks_s is None else 0.9 * toks_s + 0.1 * rate
        curve.append([round(after, 2), step, round(loss, 4)])
        if after - last_eval >= 60.0 * args.eval_minutes or done(after):
            val = evaluate(model, params, val_ids)
            after = wall()    # the evaluation's time counts: it is part of the run
            last_eval = after
            history.append({"step": step, "wall_s": after, "val_nats": val, "val_bits": val / math.log(2),
                            "train_loss": loss, "lr": lr, "epoch": step * args.batch * args.seq_len / len(train_ids)})
            if cur["best"] is None or val < cur["best"]["val_nats"]:
                cur["best"] = {"val_nats": val, "step": step, "wall_s": after}
                best_params = params
                jrnn.checkpoint.save(best_dir, {"params": params}, step=step, config=config, vocab=vocab.chars,
                                     cursor=cur["best"], run_id=best_run, keep=1)
            line = (f"{after / 60:6.1f} min  step {step:6d}  train {loss:.4f}  val {val:.4f} nats/char "
                    f"({val / math.log(2):.3f} bits)  " + ("-" if toks_s is None else f"{toks_s:,.0f}") + " tok/s")
            (print if args.quiet else bar.write)(line)   # the curve as it goes, above the bar
        if after - last_ckpt >= 60.0 * args.checkpoint_minutes and args.checkpoint_minutes:
            save(after)
            last_ckpt = after
        bar.update((min(round(after), round(budget_s)) - bar.n) if budget_s else CALL_STEPS)
        bar.set_postfix(loss=f"{loss:.3f}", val="-" if val is None else f"{val:.3f}", tok_s="-" if toks_s is None else f"{toks_s:,.0f}",
                        lr=f"{lr:.1e}")
    bar.close()
    if run_id and args.checkpoint_minutes:   # the last state too, so that a resume past the budget is a no-op
        save(wall())
    cur.update(step=step, epoch=epoch, wall_s=wall(), skipped=bad.total, tokens_per_s=toks_s,
               devices=devices, parameters=jrnn.lm.param_count(params))
    return model, best_params, cur


# ---- main -------------------------------------------------------------------------------------

def parser():
    ap = common.parser("shakespeare", __doc__, plots=("train_validation_loss.png",))
    ap.prog = PROG
    ap.add_argument("--cell", choices=("lstm", "gru"), default=CELL, help="recurrent cell")
    ap.add_argument("--layers", type=common.positive_int, default=LAYERS, help="stacked layers")
    ap.add_argument("--hidden", type=common.positive_int, default=HIDDEN, help="hidden units per layer")
    ap.add_argument("--batch", type=common.positive_int, default=BATCH, help="parallel streams")
    ap.add_argument("--seq-len", type=common.positive_int, default=SEQ_LEN, help="chars per stream and step")
    ap.add_argument("--k1", type=common.non_negative_int, default=0, help="TBPTT block inside a chunk (0: full BPTT)")
    ap.add_argument("--k2", type=common.non_negative_int, default=0, help="TBPTT window, k2 >= k1 (0: k2 = k1)")
    ap.add_argument("--lr", type=common.positive_float, default=LR, help="AdamW's peak learning rate")
    ap.add_argument("--lr-floor", type=common.non_negative_float, default=LR_FLOOR,
                    help="the cosine's end as a fraction of --lr")
    ap.add_argument("--warmup-steps", type=common.non_negative_int, default=WARMUP_STEPS, help="linear warm-up steps")
    ap.add_argument("--weight-decay", type=common.non_negative_float, default=WEIGHT_DECAY, help="AdamW's decay")
    ap.add_argument("--dropout", type=common.non_negative_float, default=DROPOUT, help="dropout between layers")
    ap.add_argument("--clip-norm", type=common.positive_float, default=CLIP_NORM, help="global-norm clipping")
    ap.add_argument("--max-minutes", type=common.non_negative_float, default=MAX_MINUTES,
                    help="wall-time budget; the cosine decays over it (0: no time limit, give --steps)")
    ap.add_argument("--steps", type=common.non_negative_int, default=0,
                    help="optimizer steps budget (0: none); alone (--max-minutes 0) the cosine decays over it")
    ap.add_argument("--eval-minutes", type=common.positive_float, default=3.0, help="validate every this many minutes")
    ap.add_argument("--checkpoint-minutes", type=common.non_negative_float, default=3.0,
                    help="save the training state every this many minutes (0: never; --resume needs them)")
    ap.add_argument("--resume", action="store_true", help=f"continue the run whose checkpoints are under --out/{common.CHECKPOINTS}")
    ap.checkpoints = common.CHECKPOINTS
    ap.add_argument("--target", type=common.positive_float, default=TARGET,
                    help="nats/char: results.json says whether and when validation reached it")
    ap.add_argument("--max-bad-steps", type=common.positive_int, default=10, help="stop after this many consecutive NaN/inf steps")
    ap.add_argument("--chars", type=common.positive_int, default=None,
                    help="use only the first N chars of the corpus, split 90/10 the same way (smoke runs)")
    ap.add_argument("--data", default=None, help="path to tinyshakespeare.txt (else $JRNN_DATA_DIR or download)")
    ap.add_argument("--temperature", type=common.positive_float, default=1.0, help="sampling temperature")
    ap.add_argument("--prime", default="\n", help="text the sample starts from")
    ap.add_argument("--sample-len", type=common.positive_int, default=500, help="characters to sample")
    common.add_precision(ap)
    return ap


def check_args(args, train_ids, val_ids):
    """Every flag combination refused before anything is compiled, naming the flag and the fix."""
    if not args.max_minutes and not args.steps:
        raise ValueError("--max-minutes 0 and --steps 0: the run needs a budget; give either (or both)")
    if args.dropout >= 1:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.lr_floor > 1:
        raise ValueError(f"--lr-floor is a fraction of --lr in [0, 1], got {args.lr_floor}")
    if (args.k2 and not args.k1) or (args.k1 and args.k2 and args.k2 < args.k1):
        raise ValueError(f"--k1/--k2: need 1 <= k1 <= k2 (or 0 for full BPTT), got --k1 {args.k1} --k2 {args.k2}")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run under --out, --overwrite replaces it: choose one")
    need = args.batch * (args.seq_len * CALL_STEPS + 1) + args.seq_len
    if len(train_ids) < need:
        raise ValueError(f"{len(train_ids)} training chars cannot fill one call of {CALL_STEPS} steps of --batch "
                         f"{args.batch} x --seq-len {args.seq_len} (need {need}): use more --chars or smaller flags")
    if len(val_ids) < 2:
        raise ValueError(f"{len(val_ids)} validation chars: nothing to score; use more --chars")
    try:
        jrnn.optim.check_learning_rate(args.lr)
    except ValueError as e:
        raise ValueError(f"--lr: {e}") from None


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    args.checkpoint_every = args.checkpoint_minutes   # what common.find_resume reads: whether this run writes any
    text = jrnn.data.load_text("tinyshakespeare", args.data)
    if args.chars is not None and args.chars > len(text):
        raise ValueError(f"--chars {args.chars} is more than the corpus holds ({len(text)} chars)")
    vocab, train_ids, val_ids = split(text, args.chars)
    check_args(args, train_ids, val_ids)
    if not args.prime:
        raise ValueError("--prime must not be empty")
    try:
        prime = vocab.encode(args.prime)
    except ValueError as e:
        raise ValueError(f"--prime: {e}") from None

    with common.Timer() as t:
        model, best_params, rec = train(args, vocab, train_ids, val_ids)
    best = rec["best"]
    blocks = evaluate_blocks(model, best_params, val_ids)
    hit = next((r for r in rec["history"] if r["val_nats"] <= args.target), None)
    toks, _ = jrnn.generate(model, best_params, jax.random.key(args.seed), prime, args.sample_len,
                            temperature=args.temperature)
    sample = args.prime + vocab.decode(toks)
    print(f"---- sample (temperature {args.temperature}, best params)\n{sample}\n----")
    tokens = rec["step"] * args.batch * args.seq_len
    metrics = {"best_val_nats": best["val_nats"], "best_val_bits": best["val_nats"] / math.log(2),
               "best_at_wall_s": best["wall_s"], "best_at_step": best["step"],
               "final_val_nats": rec["history"][-1]["val_nats"],
               "val_nanogpt_style_nats": blocks, "nanogpt_val_nats": NANOGPT_VAL,
               "target_nats": args.target, "reached_target": hit is not None,
               "target_reached_at_wall_s": None if hit is None else hit["wall_s"],
               "parameters": rec["parameters"], "steps": rec["step"], "train_wall_s": rec["wall_s"],
               "tokens_trained": tokens, "epochs": tokens / len(train_ids), "tokens_per_s": tokens / rec["wall_s"],
               "tokens_per_s_steady": rec["tokens_per_s"],   # training calls only (no compile, no evaluation)
               "skipped_steps": rec["skipped"], "device": str(jax.devices()[0].device_kind),
               "data_parallel_devices": rec["devices"]}
    config = {"recipe": "shakespeare-char", **_config(args, vocab.size), "optimizer": "adamw",
              "schedule": "linear warm-up over warmup_steps, cosine to lr_floor * lr over the budget "
                          + ("(wall-time clock)" if args.max_minutes else "(step clock)"),
              "state": "carried across consecutive chunks of each stream",
              "grad": "full BPTT over each chunk" if not args.k1 else f"TBPTT({args.k1}, {args.k2 or args.k1})",
              "steps_per_call": CALL_STEPS, "train_chars": len(train_ids), "val_chars": len(val_ids),
              "validation": f"every prediction of the validation split, {EVAL_STREAMS} streams, carry threaded over "
                            f"{EVAL_CHUNK}-char chunks, no dropout",
              "validation_nanogpt_style": f"consecutive {NANOGPT_BLOCK}-char blocks, each from a zero carry",
              "eval_minutes": args.eval_minutes, "chars": args.chars, "data": args.data, "target": args.target,
              "temperature": args.temperature, "prime": args.prime, "sample_len": args.sample_len}
    curve = np.asarray(rec["curve"], float).reshape(-1, 3)
    hist = rec["history"]
    plot = common.plot_curves(
        args.out, {"train (with dropout)": (curve[:, 0] / 60, curve[:, 2]),
                   "validation": ([r["wall_s"] / 60 for r in hist], [r["val_nats"] for r in hist])},
        xlabel="wall time, minutes", ylabel="loss, nats per char",
        title=f"tinyshakespeare, nanoGPT's split: {args.layers}-layer {args.cell} H={args.hidden}, "
              f"{rec['parameters']:,} params\n{metrics['device']}",
        refs={f"nanoGPT shakespeare_char: {NANOGPT_VAL}": NANOGPT_VAL}, filename="train_validation_loss.png")
    common.save_results(args.out, "shakespeare-char", config, metrics, t.s, sample=sample, plot=plot.name,
                        history=hist, curve=rec["curve"])
    print(f"best validation {best['val_nats']:.4f} nats/char ({metrics['best_val_bits']:.4f} bits) at "
          f"{best['wall_s'] / 60:.1f} min, step {best['step']} (nanoGPT: {NANOGPT_VAL}); nanoGPT-style "
          f"(256-char blocks from a zero carry) {blocks:.4f}; {metrics['tokens_per_s_steady'] or 0:,.0f} tok/s training, "
          f"{metrics['tokens_per_s']:,.0f} overall (compiling and evaluations included), "
          f"{metrics['epochs']:.1f} epochs")
    common.print_saved(args.out, plot)
    return metrics


run = common.cli(main)

if __name__ == "__main__":
    run()
