"""What every experiment shares: CLI flags, progress bar, results JSON, loss plot, clean errors.

Nothing in `jrnn/` imports this module.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import numbers
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import numpy as np

import jrnn
from jrnn import checkpoint, data
from jrnn.distributed import ProcessGroupError
from jrnn.train import NonFiniteError


# ---- the network of every experiment, its init, its compiled step -----------------------------

def model(cell: str = "elman", *, hidden: int, vocab: int | None = None, inputs: int | None = None,
          outputs: int | None = None, layers: int = 1, bidirectional: bool = False,
          activation: str | None = None) -> jrnn.Model:
    """An experiment's network, a `jrnn.Model`: `layers` of `cell` ("elman", "lstm", "gru") of
    `hidden` units each, one or both directions, and a linear readout.

    `vocab`: a language model's vocabulary (token ids in, a logit per token out); else `inputs`
    (D: a vocabulary of ids or a feature width) and `outputs` (classes, bits). `activation`: the
    Elman cell's nonlinearity (tanh unless given: binary addition's is "sigmoid"). Its params come
    from `init`. A Model is hashable: `jax.jit` takes it as a static argument and `multi_step`
    as a cache key.
    """
    inputs = vocab if inputs is None else inputs
    outputs = vocab if outputs is None else outputs
    if inputs is None or outputs is None:
        raise ValueError("common.model: give vocab= (a language model), or both inputs= and outputs=")
    if activation is not None and cell != "elman":
        raise ValueError(f"common.model: activation= sets the Elman cell's nonlinearity; the {cell} cell has its "
                         "own: leave activation out")
    c = jrnn.elman.cell(activation) if activation is not None else jrnn.cells.get(cell)
    return jrnn.model.make(c, input_size=inputs, hidden_size=hidden, output_size=outputs, layers=layers,
                           bidirectional=bidirectional)


def init(net: jrnn.Model, key, *, scheme: str | None = None, scale: float = 0.01):
    """The params of `net` (from `model`) drawn from `key`.

    With `scheme` (one of `jrnn.elman.init`'s: "normal" randn * scale, "uniform" U(+-scale),
    "uniform_fan_in", "uniform01", "default") and the source notebooks' network (one Elman
    layer, one direction), the flat `jrnn.ElmanParams` that `jrnn.elman.init` draws with it, the
    numbers the notebooks' recipes start from. Any other network (a gated cell, a stack,
    bidirectional), or no scheme: the network's own init (`jrnn.Params`: each cell's init, a
    Glorot readout), which is what a notebook's recipe run with another cell starts from.
    """
    if scheme is not None and _notebook_elman(net):
        return jrnn.elman.init(key, input_size=net.input_size, hidden_size=net.hidden_size,
                               output_size=net.output_size, scheme=scheme, scale=scale)
    return net.init(key)


def _notebook_elman(net) -> bool:
    """Whether `net` is one Elman layer, one direction: the network whose params may be flat ElmanParams."""
    types = net.cell.params if isinstance(net.cell.params, tuple) else (net.cell.params,)
    return net.layers == 1 and not net.bidirectional and jrnn.ElmanParams in types


def multi_step(loss, net, optimizer, **step_kw):
    """`jrnn.make_multi_step` of `loss(net, params, batch, carry) -> (loss, carry)` with
    `optimizer`, made once per process for each (loss, net, optimizer, keywords) and reused
    after: a step made anew is a new jitted function, which compiles again on its first call.

    `net`: what `loss` builds its forward pass from, a `jrnn.Model` or anything hashable that
    names one (a cell name, where the loss reads the sizes off the params); `step_kw` go to
    `jrnn.make_multi_step` (precision=, max_consecutive_skips=, guard_nonfinite=). Pass the same
    optimizer object to reuse a step (optimizers compare by identity).
    """
    key = (loss, net, optimizer, tuple(sorted(step_kw.items())))
    try:
        hash(key)
    except TypeError as e:
        raise TypeError(f"common.multi_step: its arguments are the cache key and must be hashable ({e}); pass "
                        "a Model or a cell name as net, and tuples rather than lists as keyword values") from None
    return _multi_step(*key)


@functools.lru_cache(maxsize=None)
def _multi_step(loss, net, optimizer, step_kw):
    return jrnn.make_multi_step(functools.partial(loss, net), optimizer, **dict(step_kw))


multi_step.cache_clear = _multi_step.cache_clear   # a test that counts the steps made starts from none


# ---- argument types: argparse turns their ArgumentTypeError into "argument --x: ...", exit 2 ----

MAX_SEED = 2**32 - 1


def _number(kind, text):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def positive_int(text) -> int:
    v = _number(int, text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def non_negative_int(text) -> int:
    v = _number(int, text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {v}")
    return v


def finite_float(text) -> float:
    v = _number(float, text)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def positive_float(text) -> float:
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {v}")
    return v


def non_negative_float(text) -> float:
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {v}")
    return v


def at_most(limit: int, why: str):
    """A positive_int type that also refuses values above `limit` (saying `why`), at parse time."""
    def bounded(text) -> int:
        v = positive_int(text)
        if v > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit:,} ({why}), got {v:,}")
        return v
    bounded.__name__ = f"at_most_{limit}"
    return bounded


def seed(text) -> int:
    v = _number(int, text)
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32 - 1], got {v}")
    return v


NUMERIC_TYPES = (positive_int, non_negative_int, finite_float, positive_float, non_negative_float, seed)


def out_dir(text) -> Path:
    """--out: create the folder now and prove a file can be written in it, before any training."""
    if not str(text).strip():  # Path("") is ".": the run would write into whatever folder it started in
        raise argparse.ArgumentTypeError(f"must name a folder, got {str(text)!r}")
    if "\0" in str(text):
        raise argparse.ArgumentTypeError(f"a folder name cannot hold a NUL byte, got {str(text)!r}")
    path = Path(text)
    try:
        writable_folder(path)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    for p in [path / "results.json", *path.glob("*.png")]:   # the plot's name depends on the experiment
        if p.is_dir():
            raise argparse.ArgumentTypeError(f"{p} is a folder; results cannot be written there")
    return path


def writable_folder(path: Path) -> None:
    """Create `path` and prove a file can be written in it; ValueError saying why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{path} exists and is not a folder") from None
    except OSError as e:
        raise ValueError(f"cannot create folder {path}: {e.strerror or e}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write_test_")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write in {path}: {e.strerror or e}") from None


RESULTS = "results.json"
CHECKPOINTS = "checkpoints"   # the folder under --out where charlm and minchar keep their checkpoints


def earlier_run(files, *, overwrite: bool = False, resume: bool = False, checkpoints: Path | None = None,
                where: str | None = None) -> None:
    """Refuse, before any work, a run that would replace another run's outputs: ValueError naming
    the folder, the files and the fix, where `files` (the paths this run writes) hold any already.

    `overwrite` (--overwrite) lets the run replace them. `checkpoints`: the folder of the
    experiment's checkpoints (None: it keeps none); `resume` (--resume) continuing the run whose
    checkpoints are there is allowed, but a --resume with none there would start over and replace
    the files, so it is refused. `where` names the folder in the message (default "--out
    <folder>"). A path that is a folder is refused even with --overwrite: no file can go there.
    """
    files = [Path(f) for f in files]
    for f in files:
        if f.is_dir():
            raise ValueError(f"{f} is a folder; results cannot be written there")
    there = [f for f in files if os.path.lexists(f)]   # a dangling symlink too: the run would replace it
    if not there or overwrite:
        return
    held = checkpoints is not None and _holds_checkpoints(checkpoints)
    if resume and held:
        return
    folder = there[0].parent
    what = f"{where or f'--out {folder}'} holds {', '.join(f.name for f in there)} of an earlier run"
    if resume:
        raise ValueError(f"--resume: {what} but no checkpoints under {checkpoints} to continue, so this run would "
                         "start over and replace it: pass --overwrite to replace that run, or --out to write elsewhere")
    raise ValueError(f"{what}, which this run would replace: pass --overwrite to replace that run, "
                     + ("--resume to continue it, " if held else "") + "or --out to write elsewhere")


def _holds_checkpoints(folder: Path) -> bool:
    """Whether `folder` or a folder below it (minchar's seed_<n>) holds a checkpoint file."""
    return Path(folder).is_dir() and any(p.is_file() for p in Path(folder).rglob("ckpt_*.npz"))


class ExperimentParser(argparse.ArgumentParser):
    """An experiment's parser (`parser`): after every flag is parsed, `parse_args` refuses an --out
    holding another run's results.json or plots (`earlier_run`), one line and exit code 2, before
    anything is loaded, compiled or trained."""

    def __init__(self, *a, plots=(), folder=None, own_check: bool = False, **kw):
        super().__init__(*a, **kw)
        self.plots = tuple(plots)    # the plot files a run writes beside results.json
        self.folder = folder         # args -> the folder a run writes in, where that is not --out
        self.own_check = own_check   # the experiment checks the files it writes itself (device_report)
        self.checkpoints = None      # the folder under --out holding the run's checkpoints (add_checkpoint_flags)

    def parse_args(self, args=None, namespace=None):
        ns = super().parse_args(args, namespace)
        if not self.own_check:
            folder = Path(self.folder(ns)) if self.folder is not None else ns.out
            try:
                earlier_run([folder / name for name in (RESULTS, *self.plots)], overwrite=ns.overwrite,
                            resume=getattr(ns, "resume", False),
                            checkpoints=None if self.checkpoints is None else ns.out / self.checkpoints,
                            where=None if folder == ns.out else f"{folder} (where this run writes)")
            except ValueError as e:
                self.exit(2, f"{self.prog}: error: {e}\n")   # one line: the flags parsed, the usage is no help
        return ns


def parser(name: str, doc: str, *, steps: int | None = None, epochs: int | None = None, plots=(),
           folder=None, own_check: bool = False) -> ExperimentParser:
    """An argparse parser with the flags every experiment takes.

    Every numeric flag takes one of the types above, so a bad value is one line naming the flag
    and exit code 2 before anything is compiled; --out is created and tested for writing, and
    refused when it holds another run's results.json or one of `plots` (the file names of the
    plots the experiment writes there) unless --overwrite (or --resume, see `add_checkpoint_flags`).
    `folder(args)`: the folder the run writes in where that is not --out (bench --cell lstm writes
    beside runs/bench, in runs/bench_lstm). `own_check`: the experiment refuses its files itself.
    """
    p = ExperimentParser(prog=f"python -m experiments.{name}", description=doc,
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter, plots=plots, folder=folder,
                         own_check=own_check)
    if steps is not None:
        p.add_argument("--steps", type=positive_int, default=steps, help="training iterations")
    if epochs is not None:
        p.add_argument("--epochs", type=positive_int, default=epochs, help="passes over the training data")
    p.add_argument("--seed", type=seed, default=0, help="PRNG seed (first seed when --seeds > 1)")
    # a str default: argparse passes it through out_dir too, after every other flag parsed
    p.add_argument("--out", type=out_dir, default=str(Path("runs") / name), help="folder for results.json and the plot")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (the files it wrote, and its checkpoints where the experiment "
                        "keeps them); without it a run refuses an --out that holds another run's")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


PRECISION_CHOICES = ("float32", "tensorfloat32", "bfloat16", "default")


def add_precision(p: argparse.ArgumentParser) -> None:
    """--precision: float32 matmul precision of the training step (`jrnn.make_step(precision=)`)."""
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="float32",
                   help="float32 matmul precision of training: full float32, TF32 or bfloat16 passes on NVIDIA "
                        "GPUs, or JAX's default (TF32 on recent NVIDIA GPUs); CPUs compute float32 whichever")


def step_precision(args):
    """The `precision=` of jrnn's steps for --precision ("default" -> None, JAX's own)."""
    return None if args.precision == "default" else args.precision


def check_seed_range(args, count: int):
    """Seeds --seed .. --seed + count - 1 must all be valid PRNG seeds."""
    if args.seed + count - 1 > MAX_SEED:
        raise ValueError(f"--seed {args.seed} with --seeds {count} goes past the largest seed 2**32 - 1")


def coordinator(text) -> str:
    """--coordinator: host:port with a port in [1, 65535] (else jax.distributed waits its whole
    initialization timeout for an address that cannot answer)."""
    host, sep, port = str(text).rpartition(":")
    try:
        ok = bool(sep and host.strip("[]") and not any(c.isspace() for c in host) and 1 <= int(port) <= 65535)
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"must be host:port with a port in [1, 65535], got {text!r}")
    return str(text)


def distributed_flags(p: argparse.ArgumentParser) -> None:
    """Flags of a run over several processes (`jax.distributed`); see `init_distributed`."""
    g = p.add_argument_group("several processes (jax.distributed; see python -m experiments.launch)")
    g.add_argument("--coordinator", type=coordinator, default=None, help="host:port of process 0 (with --num-processes, --process-id)")
    g.add_argument("--num-processes", type=positive_int, default=None, help="processes in the run")
    g.add_argument("--process-id", type=non_negative_int, default=None, help="this process: 0 .. num-processes - 1")
    g.add_argument("--heartbeat-timeout", type=positive_int, default=30,
                   help="seconds after which a silent process counts as dead and the others stop")


def _cluster_launched() -> bool:
    """Started as one of several tasks by SLURM or Open MPI (what jax.distributed detects)."""
    env = os.environ
    return (int(env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS") or 1) > 1
            or int(env.get("OMPI_COMM_WORLD_SIZE") or 1) > 1 or "JAX_COORDINATOR_ADDRESS" in env)


def init_distributed(args) -> bool:
    """Join the other processes of a multi-process run; call it before any JAX computation.

    With --coordinator/--num-processes/--process-id it uses them; else, when a cluster launched
    several tasks (SLURM, Open MPI, or $JAX_COORDINATOR_ADDRESS set), `jax.distributed.initialize()`
    reads them from the environment; else this is a single-process run (returns False).
    """
    flags = (args.coordinator, args.num_processes, args.process_id)
    if any(v is not None for v in flags):
        if any(v is None for v in flags):
            raise ValueError("--coordinator, --num-processes and --process-id go together")
        if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
            raise ValueError(f"need --num-processes >= 1 and 0 <= --process-id < --num-processes, "
                             f"got {args.num_processes} and {args.process_id}")
        if args.num_processes == 1:
            return False
        kw = dict(coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    elif _cluster_launched():
        kw = {}
    else:
        return False
    if args.heartbeat_timeout < 1:
        raise ValueError(f"--heartbeat-timeout must be positive, got {args.heartbeat_timeout}")
    jax.distributed.initialize(**kw, initialization_timeout=120, heartbeat_timeout_seconds=args.heartbeat_timeout)
    if jax.process_index() > 0:  # process 0 speaks for the run; errors still reach stderr
        sys.stdout = open(os.devnull, "w")
        args.quiet = True
    return True


def positive(args, *names):
    """Reject non-positive counts before anything is compiled."""
    for n in names:
        v = getattr(args, n)
        if v is None or v <= 0:
            raise ValueError(f"--{n.replace('_', '-')} must be positive, got {v}")


def add_checkpoint_flags(ap, every_help: str):
    """--checkpoint-every and --resume, for an experiment that keeps its checkpoints under
    --out/checkpoints (`parser` gives every experiment --overwrite, which replaces them too)."""
    ap.add_argument("--checkpoint-every", type=non_negative_int, default=0, help=every_help)
    ap.add_argument("--resume", action="store_true",
                    help=f"continue the run whose checkpoints are under --out/{CHECKPOINTS}")
    ap.checkpoints = CHECKPOINTS


def find_resume(directory, args, template, *, omitted=None, flags=None, **load_kw):
    """Before training, reading only: the checkpoint to continue from under --resume (None:
    start fresh). Without --resume, a run that will write checkpoints refuses a folder holding
    another run's (RunConflictError, a ValueError) unless --overwrite.

    A checkpoint written with another config or vocabulary (`load_kw`'s config=, vocab=) is
    refused naming each flag that differs and both values; `omitted` maps a config key that the
    experiment leaves out at its default to that default (minchar writes "cell" only when not elman);
    `flags` maps a config key that is not itself a flag's name to the flag that sets it (minchar's
    "b_y": "--as-written").
    """
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run under --out, --overwrite replaces it: choose one")
    if args.checkpoint_every or args.overwrite:   # checked now, not when the first checkpoint is due
        try:
            writable_folder(Path(directory))
        except ValueError as e:
            raise ValueError(f"--out: checkpoints cannot be written: {e}") from None
    if args.resume:
        run_id = checkpoint.run_of(directory)
        try:
            ck = None if run_id is None else checkpoint.load_latest(directory, template, run_id=run_id, **load_kw)
        except checkpoint.ConfigMismatchError as e:
            raise ValueError(_resume_mismatch(e, args, omitted or {}, flags or {})) from None
        except checkpoint.CheckpointDamagedError as e:
            raise ValueError(f"--resume: {e}; move the damaged files away, or start over with --overwrite "
                             "(deletes the checkpoints) or another --out") from None
        if ck is not None:
            return ck
    # nothing to continue: this run starts fresh, and `checkpoint_run` will claim the folder;
    # refuse another run's checkpoints now, not after the seeds before this one have trained
    if args.checkpoint_every and not args.overwrite:
        checkpoint.check_fresh(directory)
    return None


def _resume_mismatch(e: checkpoint.ConfigMismatchError, args, omitted: dict, flags: dict) -> str:
    """--resume refused: each setting of this command that differs from the checkpoint's run,
    named as its flag where it is one (config key seq_len: --seq-len), with both values."""
    parts = []
    for key, there, here in e.differences:
        if key == "vocab":
            symbols = [f"{len(v)} symbols" if isinstance(v, list) else "none" for v in (there, here)]
            parts.append(f"the corpus gives another vocabulary ({symbols[0]} in the checkpoint's run, {symbols[1]} "
                         "now): resume on the same corpus (--data)")
            continue
        there, here = (omitted.get(key, v) if v is checkpoint.ABSENT else v for v in (there, here))
        if key in flags:   # a setting that a flag of another name sets
            parts.append(f"{flags[key]}: {key} {there} in the checkpoint's run, {here} now")
            continue
        name = f"--{key.replace('_', '-')}" if hasattr(args, key) else f"{key}:"
        parts.append(f"{name} {there} in the checkpoint's run, {name} {here} now")
    return (f"--resume: {e.path} was written by a run with other settings: {'; '.join(parts)}. Resume with the same "
            "flags, or start over with --overwrite (deletes its checkpoints) or another --out")


def checkpoint_run(directory, args, resumed) -> str | None:
    """The run id to save checkpoints as: the resumed run's, or a new run that claims the folder
    (deleting the old checkpoints under --overwrite). Call after `find_resume` passed for all."""
    if resumed is not None:
        return resumed.run_id
    if args.checkpoint_every or args.overwrite:
        return checkpoint.start_run(directory, overwrite=args.overwrite)
    return None


def progress(total: int, desc: str, quiet: bool = False):
    """A tqdm bar (disabled with --quiet); call .set_postfix(loss=...) to show the running loss."""
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=quiet, dynamic_ncols=True, mininterval=0.5)


def environment() -> dict:
    """Where a result was measured: backend, device, CPU, versions and the commit that ran."""
    d = jax.devices()[0]
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "device": str(d.device_kind),
           "device_count": jax.device_count(), "python": platform.python_version(),
           "machine": platform.machine(), "cpus": os.cpu_count(), "cpu_model": _cpu_model(),
           "numpy": np.__version__}
    for mod in ("jaxlib", "optax"):
        try:
            env[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            pass
    env["commit"] = _COMMIT
    if hasattr(os, "getloadavg"):  # timings from a busy machine are slower: say how busy it was
        env["load_avg_1min"] = round(os.getloadavg()[0], 2)
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str | None:
    """The git commit of this checkout (+ "-dirty" with uncommitted changes), None outside git."""
    import subprocess
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def save_results(out: Path, name: str, config: dict, metrics: dict, wall_s: float, **extra) -> Path:
    """Write `out/results.json`: config, metrics, wall time, jax backend and device."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"experiment": name, "config": _plain(config), "metrics": _plain(metrics),
               "wall_time_s": wall_s, "environment": environment(), **_plain(extra)}
    path = out / "results.json"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".results_", suffix=".json.tmp")   # a name no user file has
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)   # as a plain open() would (mkstemp makes it private)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(payload, indent=2, sort_keys=True))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def print_saved(out: Path, plot: Path | None, why_no_plot: str = "nothing to draw") -> None:
    """The closing lines of every experiment: where its plot and results are (`plot: none (why)`
    when this run has no plot)."""
    print(f"plot: {plot}" if plot is not None else f"plot: none ({why_no_plot})")
    print(f"results: {out / 'results.json'}")


# ---- plots: read by a person, so every axis says what it shows and in which unit -------------

PLOT_STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
              "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 12}
PLOT_DPI = 120
FEW_POINTS = 30    # curves with at most this many points get a marker on each (a line alone hides them)
LOG_DECADES = 2    # a positive axis whose values span this many powers of 10 or more is drawn log


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def spans_decades(arrays, decades: float = LOG_DECADES) -> bool:
    """True when every finite value is positive and max / min >= 10**decades (a log axis reads better)."""
    vals = np.concatenate([np.ravel(np.asarray(a, float)) for a in arrays]) if len(arrays) else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    return bool(vals.size) and vals.min() > 0 and vals.max() / vals.min() >= 10 ** decades


def _plain_log_ticks(axis) -> None:
    """A log axis labelled 0.01, 2, 300 rather than 10^-2, 2x10^0, 3x10^2 where the values allow."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    lo, hi = sorted(axis.get_view_interval())
    if lo > 0 and lo >= 1e-3 and hi <= 1e6:
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        # minor labels where the powers of ten alone would be too few to read a value off: all of
        # them inside one decade, 2 and 5 over up to three, none beyond (they would crowd the axis)
        decades = np.log10(hi) - np.log10(lo)
        if np.floor(np.log10(hi)) == np.floor(np.log10(lo)):
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        elif decades <= 3:
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        else:
            axis.set_minor_formatter(NullFormatter())


def _integer_ticks_if_integral(axis, values) -> None:
    """Whole-number data (epochs, steps, lengths) gets whole-number ticks, never 0.2 of an epoch."""
    from matplotlib.ticker import MaxNLocator
    vals = np.concatenate([np.ravel(np.asarray(v, float)) for v in values]) if len(values) else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if vals.size and np.all(vals == np.round(vals)):
        axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def _save(fig, out: Path, filename: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    # "tight" keeps a legend placed outside the axes inside the image
    fig.savefig(path, dpi=PLOT_DPI, bbox_inches="tight", pad_inches=0.15)
    _pyplot().close(fig)
    return path


def curves_figure(curves: dict, *, xlabel: str, ylabel: str, title: str, logy: bool | None = None,
                  logx: bool = False, refs: dict | None = None):
    """The figure of `plot_curves` (unsaved): one line per curve, curves = {label: (xs, ys)};
    `logy=None` draws the y axis log when the curves span LOG_DECADES powers of ten; `refs`
    = {label: y} draws each as a dashed grey line (chance level, say), named in the legend."""
    if not curves:
        raise ValueError("plot_curves: curves is empty; pass {label: (xs, ys)} with at least one curve")
    refs = refs or {}
    plt = _pyplot()
    with plt.rc_context(PLOT_STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        few = max(len(np.ravel(xs)) for xs, _ in curves.values()) <= FEW_POINTS
        for label, (xs, ys) in curves.items():
            ax.plot(np.asarray(xs), np.asarray(ys, float), label=label,
                    **({"marker": "o", "markersize": 4} if few else {}))
        for (label, y), dash in zip(refs.items(), ("--", ":", "-.")):
            ax.axhline(y, color="0.35", linestyle=dash, linewidth=1.0, label=label)
        if logy is None:
            logy = spans_decades([ys for _, ys in curves.values()])
        ax.set_yscale("log" if logy else "linear")
        ax.set_xscale("log" if logx else "linear")
        ax.set(xlabel=xlabel, ylabel=ylabel + (" (log scale)" if logy else ""), title=title)
        if not logx:
            _integer_ticks_if_integral(ax.xaxis, [xs for xs, _ in curves.values()])
        if len(curves) + len(refs) > 1:   # beside the axes: it never covers a curve
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
        ax.grid(alpha=0.3, which="both" if logy else "major")
        for axis, log in ((ax.xaxis, logx), (ax.yaxis, logy)):
            if log:
                _plain_log_ticks(axis)
        fig.tight_layout()
    return fig


def plot_curves(out: Path, curves: dict, *, xlabel: str, ylabel: str, title: str, filename: str,
                logy: bool | None = None, logx: bool = False, refs: dict | None = None) -> Path:
    """One PNG named `filename` (say what it shows: `smooth_loss.png`, not `loss.png`) with a
    line per curve, curves = {label: (xs, ys)}; see `curves_figure`."""
    fig = curves_figure(curves, xlabel=xlabel, ylabel=ylabel, title=title, logy=logy, logx=logx, refs=refs)
    return _save(fig, out, filename)


def plot_panels(out: Path, panels: dict, *, xlabel: str, ylabel: str, title: str, filename: str,
                logx: bool = False, logy: bool = False, style=None, floor: float | None = None,
                xticks=None) -> Path:
    """Small multiples: one axes per panel, panels = {panel title: {label: (xs, ys)}}, one shared
    legend below them. `style(label)` gives each label's matplotlib keywords (the same label
    looks the same in every panel); `floor` clips ys from below so a log axis keeps zeros;
    `xticks` puts the x ticks at those values (the lengths measured, say)."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter
    with plt.rc_context(PLOT_STYLE):
        n = len(panels)
        cols = min(n, 3)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(max(4.2 * cols, 6.0), 3.4 * rows + 0.9), squeeze=False,
                                 sharex=True)
        handles = {}
        for ax, (name, curves) in zip(axes.flat, panels.items()):
            for label, (xs, ys) in curves.items():
                ys = np.asarray(ys, float)
                if floor is not None:
                    ys = np.where(np.isfinite(ys), np.maximum(ys, floor), ys)
                (line,) = ax.plot(np.asarray(xs), ys, label=label, **(style(label) if style else {}))
                handles.setdefault(label, line)
            ax.set_title(name, fontsize=PLOT_STYLE["axes.titlesize"] - 1)
            ax.set_xscale("log" if logx else "linear")
            ax.set_yscale("log" if logy else "linear")
            ax.grid(alpha=0.3, which="both" if logy else "major")
            if xticks is not None:
                ax.set_xticks(list(xticks), [f"{v:g}" for v in xticks])
                ax.xaxis.set_minor_formatter(NullFormatter())
        for ax in axes.flat[n:]:
            ax.axis("off")
        for ax in axes.flat[max(0, n - cols):n]:
            ax.set_xlabel(xlabel)
            ax.xaxis.set_tick_params(which="both", labelbottom=True)   # sharex hid them above
        for ax in axes[:, 0]:
            ax.set_ylabel(ylabel)
        for ax in axes.flat[:n]:
            if logy:
                _plain_log_ticks(ax.yaxis)
            if logx and xticks is None:
                _plain_log_ticks(ax.xaxis)
        fig.suptitle(title)
        if n < rows * cols:   # the legend takes the first empty panel
            axes.flat[n].legend(list(handles.values()), list(handles), loc="center", frameon=False)
            fig.tight_layout()
        else:                 # below the panels, outside every axes
            fig.tight_layout()
            fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                       ncol=min(len(handles), 3), frameon=False)
    return _save(fig, out, filename)


def _is_ratio(v) -> bool:
    """A value `ratios_figure` draws as a bar: a finite positive number (not None, a reason, or a bool)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _ratio_ticks(lo: float, hi: float) -> list:
    """1-2-5 ticks (0.5, 1, 2, 5, 10, ...) inside [lo, hi]; powers of ten alone when those crowd."""
    ticks = [m * 10.0 ** e for e in range(-6, 7) for m in (1, 2, 5)]
    inside = [t for t in ticks if lo <= t <= hi]
    if len(inside) > 9:
        inside = [t for t in inside if np.log10(t) == round(np.log10(t))]
    return inside


def ratios_figure(labels: list, series: dict, *, title: str, xlabel: str = "configuration",
                  ylabel: str = "speed-up, ×", missing: str = "not measured"):
    """The figure of `plot_ratios` (unsaved): grouped bars of ratios on a log axis, each bar drawn
    from the dashed 1× line (so 2× and 0.5× look equally far from it) and labelled with its value.

    labels: one per group (a configuration: "B=1 H=100\\nT=25 V=80"); series: {name: values},
    one value per label: a ratio, a str saying why there is none, or None (or a value no ratio
    can be: 0, NaN) drawn as the text `missing`. Series names go in the legend, below the plot.
    """
    if not labels:
        raise ValueError("plot_ratios: labels is empty; pass one label per configuration")
    if not series:
        raise ValueError("plot_ratios: series is empty; pass {name: [ratio per label]}")
    for name, values in series.items():
        if len(values) != len(labels):
            raise ValueError(f"plot_ratios: series {name!r} has {len(values)} values for {len(labels)} labels; "
                             f"pass one value (a ratio, None or a reason) per label")
    plt = _pyplot()
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullFormatter
    drawn = [float(v) for vs in series.values() for v in vs if _is_ratio(v)]
    lo, hi = min(drawn + [1.0]) / 1.6, max(drawn + [1.0]) * 1.6    # room for the value labels
    k, n = len(series), len(labels)
    width = 0.8 / k
    digits = ".3g" if k <= 2 else ".2g"    # narrower labels where bars stand side by side
    handles = []
    with plt.rc_context(PLOT_STYLE):
        fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + n * (0.45 + 0.3 * k)), 4.6))
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        for j, (name, values) in enumerate(series.items()):
            xs = np.arange(n) + (j - (k - 1) / 2) * width
            color = f"C{j}"
            for x, v in zip(xs, values):
                if _is_ratio(v):
                    v = float(v)
                    ax.bar(x, v - 1.0, bottom=1.0, width=width * 0.9, color=color)
                    ax.annotate(f"{v:{digits}}×", (x, v), xytext=(0, 3 if v >= 1 else -3), textcoords="offset points",
                                ha="center", va="bottom" if v >= 1 else "top", fontsize=8)
                else:   # halfway up the axes, whatever its range
                    ax.text(x, 0.5, v if isinstance(v, str) else missing, rotation=90, ha="center", va="center",
                            fontsize=8, color="0.4", transform=ax.get_xaxis_transform())
            handles.append(Patch(color=color, label=name))    # one legend entry per series
        handles.append(ax.axhline(1.0, color="k", linestyle="--", linewidth=1.0, label="1×: as fast"))
        ax.set_xticks(np.arange(n), labels)
        ax.set_xlim(-0.6, n - 0.4)
        ticks = _ratio_ticks(lo, hi)
        ax.set_yticks(ticks, [f"{t:g}×" for t in ticks])
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel=xlabel, ylabel=ylabel + " (log scale)", title=title)
        ax.grid(alpha=0.3, axis="y", which="major")
        fig.tight_layout()
        short = all(len(h.get_label()) <= 24 for h in handles)     # method names side by side, sentences stacked
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 5) if short else 1,
                   frameon=False)
    return fig


def plot_ratios(out: Path, labels: list, series: dict, *, title: str, filename: str, xlabel: str = "configuration",
                ylabel: str = "speed-up, ×", missing: str = "not measured") -> Path:
    """One PNG named `filename` of ratios per configuration (see `ratios_figure`)."""
    fig = ratios_figure(labels, series, title=title, xlabel=xlabel, ylabel=ylabel, missing=missing)
    return _save(fig, out, filename)


def _plain(x):
    """Make numpy/jax scalars and arrays JSON-serialisable."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    return x


_COMMIT = _commit()   # read when the experiment starts: the code that runs is the code loaded now


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.s = time.perf_counter() - self.t0


def cli(main):
    """Run `main(argv)`; a missing corpus or bad argument is one clear line and exit code 2."""
    def run(argv=None):
        try:
            return main(sys.argv[1:] if argv is None else argv)
        except (data.CorpusNotFoundError, ValueError, NonFiniteError, ProcessGroupError) as e:
            if argv is not None:  # called from Python (tests): let the caller see the exception
                raise
            print(f"error: {e}", file=sys.stderr)
            _exit(2)
        except BaseException:
            if argv is None and jax.distributed.is_initialized():
                traceback.print_exc()
                _exit(1)
            raise
    return run


def _exit(code: int):
    """Exit; in a multi-process run at once, without the runtime's shutdown barrier, which would
    wait for the other processes while they wait in a collective for this one: they then see it
    gone and stop too."""
    if jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
