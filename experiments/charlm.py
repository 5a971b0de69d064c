"""Character-level language model on tinyshakespeare, the main experiment.

Default: the recipe of the truncated-BPTT char-LM notebook (source notebook 002, "Recurrent neural
network implementation"). First 10,000 chars, vocabulary of the whole corpus (65), tanh H=128,
chunks of T=25 read in order from h=0, SGD lr 1e-3 on the chunk's summed loss, weights
U(+-1/sqrt(fan_in)), exact k=5 truncated BPTT (TBPTT(k1=1, k2=6): the loss at step t reaches
at most 6 states), cost = mean NLL per char over the 10k chars, printed before every epoch and
after the last.

--full: the whole corpus, last 10 % held out, B parallel streams with the hidden state carried
across chunks (split over one XLA device per CPU core), Adam + global-norm clipping, validation
nats and bits per char, wall time; any depth (--layers) and TBPTT(k1, k2) inside each chunk
(--k1, --k2; default full BPTT over the chunk).
It also runs as several processes (jax.distributed: `python -m experiments.launch -n 2 --
charlm --full ...`, or SLURM/Open MPI tasks): each process feeds its share of the streams,
process 0 writes results, plot, sample and checkpoints.

Both modes take any cell (--cell elman|lstm|gru; the seed recipe's Elman keeps its
U(+-1/sqrt(fan_in)) init, the gated cells their own).

Both modes end with a 500-char sample (--temperature, --prime).

--recipe shakespeare-char: nanoGPT's shakespeare_char baseline (its 90/10 split, validation
1.4697 nats/char) with a recurrent LM; its own flags (`--recipe shakespeare-char --help`), in
experiments/shakespeare.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time

from experiments import one_cpu_device_per_core

one_cpu_device_per_core()  # --full splits its streams over the CPU's cores

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from experiments import common, shakespeare

# hyperparameters: the default recipe (the truncated-BPTT notebook's)
SEED_CHARS = 10_000    # training_examples
SEED_HIDDEN = 128      # hidden_units
SEED_SEQ_LEN = 25      # sequence_length
SEED_LR = 1e-3         # learning_rate, plain SGD on the chunk's summed loss
SEED_K = 5             # max_bptt_steps: TBPTT(k1=1, k2=k+1)

# hyperparameters: --full mode
FULL_HIDDEN = 512
FULL_BATCH = 64        # parallel streams
FULL_SEQ_LEN = 64      # BPTT length per chunk (state carried across chunks)
FULL_LR = 2e-3         # Adam
FULL_CLIP_NORM = 5.0
FULL_CALL_STEPS = 10   # optimizer steps per jitted call
VAL_FRACTION = 0.1


# ---- default recipe -------------------------------------------------------------------------------

def seed_model(cell, V, H=SEED_HIDDEN):
    """The seed's network (a one-layer LM of H units) with any cell."""
    return common.model(cell, vocab=V, hidden=H)


def seed_init(model, key):
    """The seed's U(+-1/sqrt(fan_in)) init for its Elman network; a gated cell's own init."""
    return common.init(model, key, scheme="uniform_fan_in")


SEED_OPTIMIZER = jrnn.optim.sgd(SEED_LR)


def seed_loss(cell, params, batch, carry):
    """Summed NLL of one chunk from h=0, gradient of exact k-step truncated BPTT (the network's
    sizes read off the params)."""
    x, y = batch
    H, V = jnp.shape(params.w_hy)
    loss, _ = seed_model(cell, V, H).loss(params, x, y, grad=jrnn.TBPTT(1, SEED_K + 1), reduction="sum")
    return loss, carry


def seed_epoch(precision="float32", cell="elman"):
    """One jitted call: an SGD step per chunk of the stacked chunks [N, T] (one epoch), for
    --precision and --cell (one per process: `common.multi_step`)."""
    return common.multi_step(seed_loss, cell, SEED_OPTIMIZER, precision=precision)


SEED_EPOCH = seed_epoch()   # the seed's Elman network in full float32


@functools.partial(jax.jit, static_argnames="model")
def seed_cost(model, params, xs, ys):
    """The seed's calculate_cost: mean NLL per char, every chunk from h=0. xs, ys: [N, T]."""
    logits, _ = model.apply(params, xs.T)          # chunks side by side: [T, N, V]
    return jrnn.losses.softmax_cross_entropy(logits, ys.T)


def run_seed_mode(seed, ids, V, epochs, quiet, precision="float32", cell="elman"):
    xs, ys = jrnn.data.chunks(ids[: SEED_CHARS + 1], SEED_SEQ_LEN)     # [400, 25] each
    model = seed_model(cell, V)
    params = seed_init(model, jax.random.key(seed))
    opt_state = SEED_OPTIMIZER.init(params)
    seed_cost_ = functools.partial(seed_cost, model)
    epoch_step = seed_epoch(precision, cell)
    costs = [float(seed_cost_(params, xs, ys))]
    bar = common.progress(epochs, f"charlm seed {seed}", quiet)
    bar.set_postfix(cost=f"{costs[-1]:.3f}")
    for epoch in range(epochs):
        if quiet:
            print(f"seed {seed} epoch {epoch}: cost {costs[-1]:.4f}")
        params, opt_state, _, _ = epoch_step(params, opt_state, (xs, ys))
        costs.append(float(seed_cost_(params, xs, ys)))
        bar.update(1)
        bar.set_postfix(cost=f"{costs[-1]:.3f}")
    bar.close()
    return model, params, costs


# ---- full mode -------------------------------------------------------------------------------

def full_loss(model_and_grad, params, batch, carries):
    """Mean NLL of one [T, B] chunk, continuing each stream from its carried state; the gradient
    is `grad` (full BPTT over the chunk, or TBPTT(k1, k2) inside it). model_and_grad: (model, grad)."""
    model, grad = model_and_grad
    x, y = batch
    return model.loss(params, x, y, carries, grad=grad)


@functools.partial(jax.jit, static_argnames="model")
def stream_nll(model, params, xs, ys, carries):
    """Summed NLL over stacked chunks [K, T, B] with carried state (evaluation)."""
    def body(carries, batch):
        loss, carries = model.loss(params, batch[0], batch[1], carries, reduction="sum")
        return carries, loss
    carries, sums = jax.lax.scan(body, carries, (xs, ys))
    return jnp.sum(sums), carries


VAL_BATCH = 16


def evaluate(model, params, ids, batch=VAL_BATCH, seq_len=256):
    """Validation nats/char: `batch` contiguous streams, read `seq_len` chars per scan step."""
    seq_len = max(1, min(seq_len, (len(ids) - 1) // batch))
    xs, ys = jrnn.data.streams(ids, batch, seq_len)
    total, _ = stream_nll(model, params, xs, ys, model.zeros(params, (batch,)))
    return float(total) / ys.size


def full_mode_split(ids, args):
    """(train ids, validation ids); ValueError naming the flags if the text is too short for them."""
    n_val = int(len(ids) * VAL_FRACTION)
    train_ids, val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    need = args.batch * args.seq_len * FULL_CALL_STEPS + 1
    if len(train_ids) < need:
        raise ValueError(f"--chars {len(ids)}: {len(train_ids)} training chars (after the {VAL_FRACTION:.0%} held out) "
                         f"cannot fill one call of {FULL_CALL_STEPS} steps of --batch {args.batch} streams x "
                         f"--seq-len {args.seq_len}; need at least {need}")
    if len(val_ids) < VAL_BATCH + 1:
        raise ValueError(f"--chars {len(ids)}: {len(val_ids)} validation chars cannot fill {VAL_BATCH} streams; "
                         f"use at least {math.ceil((VAL_BATCH + 1) / VAL_FRACTION)} chars")
    return train_ids, val_ids


def run_full_mode(args, ids, vocab):
    V = vocab.size
    train_ids, val_ids = full_mode_split(ids, args)
    xs, ys = jrnn.data.streams(train_ids, args.batch, args.seq_len)      # [N, T, B]
    opt = jrnn.optim.adam(args.lr, clip_norm=FULL_CLIP_NORM)
    mesh = jrnn.distributed.batch_mesh(args.batch)
    procs = jax.process_count()
    if procs > 1:  # this process feeds its share of the streams (its devices' rows of the batch)
        rows = jrnn.distributed.process_rows(mesh, args.batch)
        xs, ys = xs[..., rows], ys[..., rows]
        print(f"{procs} processes, {args.batch} streams; process {jax.process_index()} feeds {len(rows)}")
    model = common.model(args.cell, vocab=V, hidden=args.hidden, layers=args.layers)
    k1 = args.k1 or None
    k2 = (args.k2 or args.k1) or None
    grad = (jrnn.TBPTT(k1, k2) if k1 else jrnn.Parallel(args.parallel) if args.parallel else jrnn.FullBPTT())
    if mesh.size > 1:
        # the streams split over the devices (one per CPU core, see experiments.bench): each core
        # scans its share of the batch; XLA adds the gradient all-reduce
        multi_step = jrnn.distributed.make_data_parallel_step(
            functools.partial(full_loss, (model, grad)), opt, mesh=mesh, multi_step=True,
            precision=common.step_precision(args), max_consecutive_skips=None)
        print(f"{args.batch} streams split over {mesh.size} devices")
    else:
        multi_step = common.multi_step(full_loss, (model, grad), opt, precision=common.step_precision(args),
                                       max_consecutive_skips=None)
    params = common.init(model, jax.random.key(args.seed))
    print(f"{args.cell} x{args.layers}, H={args.hidden}: {jrnn.lm.param_count(params):,} parameters"
          + (f", TBPTT({k1}, {k2})" if k1 else f", parallel in time ({args.parallel})" if args.parallel else ""))
    n_calls = len(xs) // FULL_CALL_STEPS
    state = {"params": params, "opt_state": opt.init(params), "h": model.zeros(params, (args.batch,))}
    ckpt_dir = args.out / "checkpoints"
    config = {k: getattr(args, k) for k in ("seed", "cell", "layers", "hidden", "batch", "seq_len", "lr", "chars",
                                            "k1", "k2")}
    if procs > 1:  # a resume must use the same process count (a config mismatch is refused)
        config["processes"] = procs
    if args.precision != "float32":  # and the precision results.json records (only then: older checkpoints resume)
        config["precision"] = args.precision
    history, step, skipped = [], 0, 0
    if args.resume:
        written_by = _checkpoint_processes(ckpt_dir)
        if written_by not in (None, procs):
            raise ValueError(f"--resume: the checkpoints under {ckpt_dir} were written by a run of {written_by} "
                             f"process(es), this run has {procs}; resume with the same number of processes")
    ck = common.find_resume(ckpt_dir, args, state, config=config, vocab=vocab.chars,
                            omitted={"processes": 1, "precision": "float32"})
    if procs > 1:  # also a barrier: every process has checked the folder before process 0 claims it
        _same_checkpoint_everywhere(ckpt_dir, -1 if ck is None else ck.step)
    steps_per_epoch = n_calls * FULL_CALL_STEPS
    if ck is not None and ck.step > args.epochs * steps_per_epoch:   # its state is past the run asked for
        raise ValueError(f"--epochs {args.epochs} ({args.epochs * steps_per_epoch} steps) ends before step {ck.step} "
                         f"of {ck.path}: pass --epochs >= {math.ceil(ck.step / steps_per_epoch)} to continue that "
                         "run, or --overwrite to start over")
    run_id = common.checkpoint_run(ckpt_dir, args, ck) if jax.process_index() == 0 else None  # process 0 writes
    if ck is not None:
        state, step, history = ck.state, ck.step, ck.cursor["history"]
        skipped = ck.cursor.get("skipped", 0)
        print(f"resumed from {ck.path} at step {step}")
    params, opt_state, h = state["params"], state["opt_state"], state["h"]
    if procs > 1:
        h = jax.tree.map(lambda a: np.asarray(a)[rows], h)
    bar = common.progress(args.epochs * n_calls * FULL_CALL_STEPS, "charlm --full", args.quiet)
    bar.update(step)
    # this counter, not the step (max_consecutive_skips=None above), stops the run: --max-bad-steps
    bad = jrnn.train.BadStepCounter(args.max_bad_steps)
    bad.total = skipped                     # NaN/inf steps skipped before a resume count too
    t0 = time.perf_counter() - (history[-1]["wall_s"] if history else 0.0)
    for epoch in range(step // (n_calls * FULL_CALL_STEPS), args.epochs):
        for c in range(step // FULL_CALL_STEPS - epoch * n_calls, n_calls):
            if c == 0:
                h = model.zeros(params, (xs.shape[-1],))   # each epoch reads from the start
            sl = slice(c * FULL_CALL_STEPS, (c + 1) * FULL_CALL_STEPS)
            params, opt_state, m, h = multi_step(params, opt_state, (xs[sl], ys[sl]), h)
            bad.update(m["skipped"])
            step += FULL_CALL_STEPS
            bar.update(FULL_CALL_STEPS)
            bar.set_postfix(loss=f"{float(m['loss'][-1]):.3f}")
            if c == n_calls - 1:
                val = evaluate(model, jrnn.distributed.to_host(params) if procs > 1 else params, val_ids)
                history.append({"epoch": epoch + 1, "step": step, "val_nats": val, "val_bits": val / math.log(2),
                                "train_loss": float(m["loss"].mean()), "wall_s": time.perf_counter() - t0})
                print(f"epoch {epoch + 1}: val {val:.4f} nats/char ({val / math.log(2):.4f} bits), "
                      f"{history[-1]['wall_s']:.0f} s")
            if args.checkpoint_every and step % args.checkpoint_every == 0:
                ck_state = {"params": params, "opt_state": opt_state, "h": h}
                if procs > 1:  # every process takes part in gathering h; process 0 writes
                    ck_state = jrnn.distributed.to_host(ck_state)
                if jax.process_index() == 0:
                    jrnn.checkpoint.save(ckpt_dir, ck_state, step=step,
                                         config=config, vocab=vocab.chars, cursor={"history": history, "skipped": bad.total},
                                         run_id=run_id)
        if _stop_now(args.max_minutes and history and history[-1]["wall_s"] > 60 * args.max_minutes):
            print(f"stopping: --max-minutes {args.max_minutes} reached")
            break
    bar.close()
    return model, (jrnn.distributed.to_host(params) if procs > 1 else params), history, bad.total


def _checkpoint_processes(ckpt_dir):
    """How many processes wrote the newest checkpoint of the run that owns `ckpt_dir` (the one
    --resume loads; another run's files in the folder do not count). None: no such checkpoint,
    or unreadable: `find_resume` then decides."""
    try:
        paths = jrnn.checkpoint.list_checkpoints(ckpt_dir, run_id=jrnn.checkpoint.run_of(ckpt_dir))
    except jrnn.checkpoint.RunConflictError:
        return None
    try:
        with np.load(paths[-1]) as z:
            return (json.loads(z["header"].tobytes().decode())["config"] or {}).get("processes", 1)
    except Exception:
        return None


def _stop_now(stop) -> bool:
    """Process 0's decision, so that all processes stop after the same step."""
    if jax.process_count() == 1:
        return bool(stop)
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.bool_(bool(stop))))


def _same_checkpoint_everywhere(ckpt_dir, step):
    """Every process resumes from the same step, else the replicas would differ."""
    from jax.experimental import multihost_utils
    steps = multihost_utils.process_allgather(np.int64(step))
    if len(set(steps.tolist())) > 1:
        raise ValueError(f"--resume: the processes found different checkpoints under {ckpt_dir} (steps "
                         f"{steps.tolist()}, -1: none); --out must be a folder every process sees")


# ---- main ------------------------------------------------------------------------------------

MAX_SAMPLE_LEN = 100_000   # the sample is drawn after training: a length it cannot draw would lose the run

FULL_ONLY = ("hidden", "layers", "batch", "seq_len", "lr", "max_minutes", "checkpoint_every", "resume",
             "max_bad_steps", "k1", "k2", "parallel")   # not --overwrite: it replaces a default-recipe run too


RECIPES = {"shakespeare-char": shakespeare.main}   # --recipe NAME: a recipe with its own flags


def main(argv=None):
    pre = argparse.ArgumentParser(prog="python -m experiments.charlm", add_help=False)   # --recipe first: the recipe parses the rest
    pre.add_argument("--recipe", choices=sorted(RECIPES), default=None)
    known, rest = pre.parse_known_args(argv)
    if known.recipe is not None:
        return RECIPES[known.recipe](rest)
    ap = common.parser("charlm", __doc__, epochs=10, plots=("cost.png", "validation_loss.png"))
    ap.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                    help="a recipe with its own flags (see --recipe NAME --help): shakespeare-char trains to "
                         "nanoGPT's shakespeare_char baseline on its split")
    ap.add_argument("--seeds", type=common.positive_int, default=1,
                    help="default recipe: independent runs with random seeds seed..seed+n-1 (median reported)")
    ap.add_argument("--full", action="store_true", help="train on the whole corpus with minibatches")
    ap.add_argument("--hidden", type=common.positive_int, default=FULL_HIDDEN, help="--full: hidden units")
    ap.add_argument("--cell", choices=sorted(jrnn.cells.CELLS), default="elman", help="recurrent cell")
    ap.add_argument("--k1", type=common.non_negative_int, default=0, help="--full: TBPTT block length inside a chunk (0: full BPTT)")
    ap.add_argument("--k2", type=common.non_negative_int, default=0, help="--full: TBPTT window, k2 >= k1 (0: k2 = k1)")
    ap.add_argument("--parallel", choices=jrnn.parallel.PARALLEL_METHODS, default=None,
                    help="--full: solve each layer in parallel in time (grad=jrnn.Parallel(METHOD)); exact Newton "
                         "in O(T*H) for the structured cells (paragru, paralstm, mingru)")
    ap.add_argument("--layers", type=common.positive_int, default=1, help="--full: stacked layers")
    ap.add_argument("--batch", type=common.positive_int, default=FULL_BATCH, help="--full: parallel streams")
    ap.add_argument("--seq-len", type=common.positive_int, default=FULL_SEQ_LEN, help="--full: BPTT length")
    ap.add_argument("--lr", type=common.positive_float, default=FULL_LR, help="--full: Adam learning rate")
    ap.add_argument("--max-minutes", type=common.non_negative_float, default=0,
                    help="--full: stop after the epoch that passes this (0: no limit)")
    ap.add_argument("--chars", type=common.positive_int, default=None, help="use only the first N chars of the corpus (smoke runs)")
    common.add_checkpoint_flags(ap, f"--full: save the training state every N steps (multiple of {FULL_CALL_STEPS}; 0: never)")
    ap.add_argument("--max-bad-steps", type=common.positive_int, default=10, help="--full: stop after this many consecutive NaN/inf steps")
    ap.add_argument("--data", default=None, help="path to tinyshakespeare.txt (else $JRNN_DATA_DIR or download)")
    ap.add_argument("--temperature", type=common.positive_float, default=1.0, help="sampling temperature")
    ap.add_argument("--prime", default="\n", help="text the sample starts from (default: %(default)r, a newline)")
    ap.add_argument("--sample-len", type=common.at_most(MAX_SAMPLE_LEN, "the sample is drawn after training, printed "
                                                        "and stored in results.json"),
                    default=500, help="characters to sample")
    common.distributed_flags(ap)
    common.add_precision(ap)
    args = ap.parse_args(argv)
    if common.init_distributed(args) and not args.full:
        raise ValueError("several processes train only with --full")
    common.check_seed_range(args, args.seeds)
    if args.checkpoint_every % FULL_CALL_STEPS:
        raise ValueError(f"--checkpoint-every must be a multiple of {FULL_CALL_STEPS}, got {args.checkpoint_every}")
    if not args.full:   # the default recipe fixes these: a value given would be silently ignored
        given = ["--" + k.replace("_", "-") for k in FULL_ONLY if getattr(args, k) != ap.get_default(k)]
        if given:
            raise ValueError(f"{', '.join(given)}: only with --full (the default recipe fixes H={SEED_HIDDEN}, "
                             f"T={SEED_SEQ_LEN}, SGD {SEED_LR}); add --full or drop them")
    elif args.seeds != 1:
        raise ValueError("--seeds: default recipe only; --full trains one model (choose it with --seed)")
    try:
        jrnn.optim.check_learning_rate(args.lr)
    except ValueError as e:
        raise ValueError(f"--lr: {e}") from None
    if args.parallel and args.k1:
        raise ValueError("--parallel and --k1: TBPTT truncates a loss, Parallel solves each layer in time; "
                         "choose one gradient strategy")
    if (args.k2 and not args.k1) or (args.k1 and args.k2 and args.k2 < args.k1):
        raise ValueError(f"--k1/--k2: need 1 <= k1 <= k2 (or 0 for full BPTT), got --k1 {args.k1} --k2 {args.k2}")
    text = jrnn.data.load_text("tinyshakespeare", args.data)
    vocab = jrnn.data.build_vocab(text)          # of the whole corpus, as the notebook
    if args.chars is not None and args.chars > len(text):
        raise ValueError(f"--chars {args.chars} is more than the corpus holds ({len(text)} chars)")
    ids = vocab.encode(text[: args.chars] if args.chars else text)
    if args.full:
        full_mode_split(ids, args)               # enough text for --batch, --seq-len and validation?
    elif len(ids) < SEED_SEQ_LEN + 1:
        raise ValueError(f"--chars {len(ids)}: the default recipe reads chunks of {SEED_SEQ_LEN + 1} chars")
    if not args.prime:
        raise ValueError("--prime must not be empty")
    try:
        prime = vocab.encode(args.prime)         # validates the prime before any training
    except ValueError as e:
        raise ValueError(f"--prime: {e}") from None

    with common.Timer() as t:
        if args.full:
            model, params, history, skipped = run_full_mode(args, ids, vocab)
            metrics = {"val_nats": history[-1]["val_nats"], "val_bits": history[-1]["val_bits"],
                       "parameters": jrnn.lm.param_count(params),
                       "best_val_nats": min(r["val_nats"] for r in history),
                       "epochs_run": len(history), "steps": history[-1]["step"],
                       "steps_per_s": history[-1]["step"] / history[-1]["wall_s"],
                       "skipped_steps": skipped}  # NaN/inf steps the guard skipped
            runs = {"history": history}
            config = {"mode": "full", "cell": args.cell, "layers": args.layers, "hidden": args.hidden,
                      "batch": args.batch, "seq_len": args.seq_len, "optimizer": "adam", "lr": args.lr,
                      "clip_global_norm": FULL_CLIP_NORM, "steps_per_call": FULL_CALL_STEPS,
                      "val_fraction": VAL_FRACTION, "train_chars": len(ids) - int(len(ids) * VAL_FRACTION),
                      "k1": args.k1, "k2": args.k2, "parallel": args.parallel, "epochs": args.epochs, "seed": args.seed, "max_minutes": args.max_minutes}
            curves = {"validation": ([r["step"] for r in history], [r["val_nats"] for r in history])}
            xlabel, ylabel = "optimizer step", "validation loss, nats per char"
        else:
            results = [run_seed_mode(s, ids, vocab.size, args.epochs, args.quiet, common.step_precision(args), args.cell)
                       for s in range(args.seed, args.seed + args.seeds)]
            model, params = results[0][:2]
            results = [(p, c) for _, p, c in results]
            finals = [c[-1] for _, c in results]
            metrics = {"cost_before": [c[0] for _, c in results], "cost_after": finals,
                       "median_cost_after": float(np.median(finals)),
                       "parameters": sum(int(np.size(a)) for a in jax.tree.leaves(params))}
            n_chunks = (min(len(ids), SEED_CHARS + 1) - 1) // SEED_SEQ_LEN     # as run_seed_mode cuts them
            n_steps = n_chunks * args.epochs * args.seeds
            config = {"mode": "recipe", "cell": args.cell, "hidden": SEED_HIDDEN, "seq_len": SEED_SEQ_LEN,
                      "optimizer": "sgd", "lr": SEED_LR, "tbptt_k": SEED_K, "batch": 1,
                      "init": "uniform_fan_in" if args.cell == "elman" else f"{args.cell} default",
                      "train_chars": n_chunks * SEED_SEQ_LEN, "epochs": args.epochs,
                      "seeds": list(range(args.seed, args.seed + args.seeds))}
            runs = {"costs": [c for _, c in results]}
            curves = {f"seed {args.seed + i}": (np.arange(len(c)), c) for i, (_, c) in enumerate(results)}
            xlabel, ylabel = "epoch (0: before training)", "cost, nats per char (first 10k chars)"
    toks, _ = jrnn.generate(model, params, jax.random.key(args.seed), prime, args.sample_len, temperature=args.temperature)
    sample = args.prime + vocab.decode(toks)
    print(f"---- sample (temperature {args.temperature})\n{sample}\n----")
    # what ran, not the argparse defaults of the other mode
    config.update(vocab_size=vocab.size, corpus_chars=len(ids), data=args.data, temperature=args.temperature,
                  prime=args.prime, sample_len=args.sample_len, precision=args.precision)
    if not args.full:
        metrics["steps_per_s"] = n_steps / t.s
    plot = args.out / ("validation_loss.png" if args.full else "cost.png")
    if jax.process_index() == 0:  # one writer per run
        config["processes"] = jax.process_count()
        recipe = (f"{args.layers}-layer {args.cell} H={args.hidden}, Adam lr {args.lr:g}, batch {args.batch} "
                  f"x {args.seq_len} chars" + (f", TBPTT k1={args.k1} k2={args.k2}" if args.k1 else "") if args.full else
                  f"{args.cell} H={SEED_HIDDEN}, SGD lr {SEED_LR:g}, {SEED_SEQ_LEN}-char chunks, truncated BPTT k={SEED_K}")
        plot = common.plot_curves(args.out, curves, xlabel=xlabel, ylabel=ylabel,
                                  title=f"char-level LM on tinyshakespeare\n{recipe}",
                                  refs={f"a uniform guess: ln {vocab.size}": np.log(vocab.size)}, filename=plot.name)
        common.save_results(args.out, "charlm", config, metrics, t.s, sample=sample, plot=plot.name, **runs)
    if args.full:
        print(f"validation: {metrics['val_nats']:.4f} nats/char = {metrics['val_bits']:.4f} bits/char, wall {t.s:.0f} s")
    else:
        for s, c in zip(range(args.seed, args.seed + args.seeds), runs["costs"]):
            print(f"seed {s}: cost " + " ".join(f"{v:.3f}" for v in c))
        what = "cost" if args.seeds == 1 else f"median cost of {args.seeds} seeds"
        print(f"{what} after {args.epochs} epochs: {metrics['median_cost_after']:.4f} (wall {t.s:.1f} s)")
    common.print_saved(args.out, plot)
    return metrics


run = common.cli(main)

if __name__ == "__main__":
    run()
