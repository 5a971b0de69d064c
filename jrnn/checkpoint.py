"""Checkpoints of a whole training state, written atomically, checked on load.

A checkpoint is one `.npz` file holding every array leaf of a state pytree (params, optimizer
state, PRNG key data, carried hidden state, ...) plus a JSON header: format version, step,
config, vocabulary, data cursor, each leaf's path/shape/dtype and a sha256 of its bytes.

Writing: temp file in the same folder, flush + fsync, `os.replace`, fsync of the folder; so a
crash (even SIGKILL) mid-write leaves the previous checkpoints untouched and at worst a stray
`*.tmp` file.

Runs: a folder's checkpoints belong to one training run. `start_run(folder)` gives a run an id,
written to `folder/run.json`, and refuses a folder that holds checkpoints already unless told to
`overwrite` (then they are deleted); `save(..., run_id=)` stamps the id and a write counter into
every header and refuses a folder that another run has claimed since; `load_latest` loads only
the folder's run (its newest write first), and `save` keeps that run's last `keep` writes, never
deleting the file it has just written nor another run's. Without run ids (`run_id=None`, no
run.json) a folder is one anonymous run, as before.

Loading needs a *template* state of the same structure (e.g. a fresh init and
`optimizer.init`), as Flax's `restore_checkpoint(target=...)` does: leaves are checked against
it, and config and vocabulary must equal the caller's, else a clear ValueError.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jrnn import checks

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d{10})\.npz$")
RUN_FILE = "run.json"
_FOLDER = object()   # load_latest's default: the run that owns the folder


class RunConflictError(ValueError):
    """A folder holds (or was claimed for) another run's checkpoints."""


class Checkpoint(NamedTuple):
    """What `load` returns."""
    state: Any        # pytree with the template's structure
    step: int
    cursor: Any       # data position (JSON value) saved with the state
    path: Path
    run_id: str | None = None   # the run that wrote it (None: written without a run id)


def _leaf_paths(tree):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _to_numpy(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        raise TypeError("store PRNG keys as jax.random.key_data(key); rebuild with jax.random.wrap_key_data")
    return np.asarray(x)


def _write_atomically(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt_", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _owner(directory) -> str | None:
    """The run id in `directory/run.json`; None without one. RunConflictError if unreadable."""
    path = Path(directory) / RUN_FILE
    try:
        run_id = json.loads(path.read_text())["run_id"]
        if isinstance(run_id, str):
            return run_id
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise RunConflictError(f"{path} is damaged: it cannot tell which run owns {directory}")


def run_of(directory) -> str | None:
    """The id of the run that owns `directory` (its run.json), or None if none has claimed it.

    RunConflictError if the folder holds checkpoints but no readable run.json (an older jrnn
    wrote them, or the file was removed): which run they belong to cannot be told.
    """
    run_id = _owner(directory)
    if run_id is not None or not list_checkpoints(directory):
        return run_id
    raise RunConflictError(f"{directory} holds checkpoints without a readable {RUN_FILE}: it cannot tell which run "
                           "wrote them; start a new run with overwrite (--overwrite) or move them away")


def check_fresh(directory) -> None:
    """RunConflictError if `directory` holds checkpoints (of any run): a new run must not mix in."""
    found = list_checkpoints(directory)
    if found:
        raise RunConflictError(
            f"{directory} holds {len(found)} checkpoint(s) of an earlier run ({found[0].name} .. {found[-1].name}): "
            "continue that run with --resume, or replace it with --overwrite (deletes them), or choose another --out")


def start_run(directory, *, overwrite: bool = False) -> str:
    """Claim `directory` for a new run and return its id (write it with `save(..., run_id=)`).

    A folder holding checkpoints is refused (RunConflictError) unless `overwrite`: then the new
    run.json is written first and the old checkpoints are deleted after, so a crash in between
    leaves files that the new run never loads.
    """
    directory = Path(directory)
    old = list_checkpoints(directory)
    if not overwrite:
        check_fresh(directory)
    directory.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex
    _write_atomically(directory / RUN_FILE, json.dumps({"run_id": run_id}).encode())
    for p in old + sorted(directory.glob(".ckpt_*.tmp")):
        p.unlink(missing_ok=True)
    return run_id


def _header(path: Path) -> dict | None:
    """The JSON header of a checkpoint file, read without its arrays; None if unreadable."""
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:   # reads the header member only
            h = json.loads(z["header"].tobytes().decode())
        return h if isinstance(h, dict) else None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, UnicodeDecodeError):
        return None


MAX_STEP = 10**10 - 1   # file names hold 10 digits: a larger or negative step would never be listed


def _check_save_args(step, keep) -> tuple[int, int]:
    """`step` and `keep` of `save`, checked before anything is written."""
    step, keep = checks.integer("step", step, minimum=None), checks.integer("keep", keep)
    if not 0 <= step <= MAX_STEP:
        raise ValueError(f"step must be in [0, {MAX_STEP}] (it names the file ckpt_<10 digits>.npz), got {step}")
    return step, keep


def _nonfinite(paths, leaves) -> list[str]:
    """Paths of the inexact leaves holding a NaN or inf."""
    return [p for p, a in zip(paths, leaves)
            if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a))]


def _written_by(directory, run_id) -> tuple[list[Path], list[Path]]:
    """(run `run_id`'s checkpoints, oldest write first; files whose header cannot be read)."""
    mine, unreadable = [], []
    for p in list_checkpoints(directory):
        h = _header(p)
        if h is None:
            unreadable.append(p)
        elif h.get("run_id") == run_id:
            mine.append((h.get("seq", -1), h.get("step", -1), p))
    return [p for *_, p in sorted(mine)], unreadable


def save(directory, state, *, step: int, config: dict | None = None, vocab=None, cursor=None,
         keep: int = 3, run_id: str | None = None) -> Path:
    """Write `state` as `directory/ckpt_<step>.npz` atomically, as run `run_id` (see `start_run`).

    Keeps the run's newest `keep` writes (never deleting the file just written, nor another
    run's). RunConflictError if the folder belongs to another run than `run_id`. A state holding
    NaN or inf is refused (ValueError, nothing written): the last checkpoint stays the last good
    state. `step` is an int in [0, MAX_STEP].
    """
    step, keep = _check_save_args(step, keep)
    leaves = [_to_numpy(x) for x in jax.tree.leaves(state)]
    if bad := _nonfinite(_leaf_paths(state), leaves):
        raise ValueError(f"state at step {step} holds NaN/inf in {', '.join(bad[:5])}: not saved "
                         "(the last checkpoint stays the last good state)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    owner = _owner(directory)
    if owner != run_id:
        raise RunConflictError(
            f"{directory} belongs to run {owner}, not to run {run_id}: another run has claimed it; "
            "nothing was written" if owner is not None else
            f"{directory} was not claimed by run {run_id}: call start_run first; nothing was written")
    previous, _ = _written_by(directory, run_id)
    seq = 1 + max([_header(p).get("seq", -1) for p in previous[-1:]], default=-1)
    header = {
        "format_version": FORMAT_VERSION, "step": int(step), "run_id": run_id, "seq": seq,
        "config": config, "cursor": cursor,
        "vocab": None if vocab is None else list(vocab),
        "leaves": [{"path": p, "shape": list(a.shape), "dtype": str(a.dtype),
                    "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}
                   for p, a in zip(_leaf_paths(state), leaves)],
    }
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
             **{f"leaf_{i}": a for i, a in enumerate(leaves)})
    path = directory / f"ckpt_{int(step):010d}.npz"
    _write_atomically(path, buf.getvalue())
    # prune by this run's write order, never the file just written (saving step 100 after
    # steps 500..1500 keeps it) and never another run's files
    older = [p for p in previous if p != path]
    for old in older[: max(0, len(older) - (keep - 1))]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory, *, run_id=_FOLDER) -> list[Path]:
    """Checkpoint files in `directory`: all of them by step (default), or run `run_id`'s in
    write order (oldest first)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    if run_id is not _FOLDER:
        return _written_by(directory, run_id)[0]
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def load(path, template, *, config: dict | None = None, vocab=None) -> Checkpoint:
    """Read one checkpoint into the structure of `template`; ValueError on any mismatch."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file: pass one of its ckpt_*.npz files, "
                         "or the folder to load_latest")
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            leaves = [z[f"leaf_{i}"] for i in range(len(header["leaves"]))]
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint {path} is truncated or corrupted ({e.__class__.__name__}: {e})") from None
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format version {header.get('format_version')}, "
                         f"this jrnn reads version {FORMAT_VERSION}")
    if config is not None and header["config"] != json.loads(json.dumps(config)):
        raise ValueError(f"checkpoint {path} was written with config {header['config']}, not {config}")
    if vocab is not None and header["vocab"] != list(vocab):
        raise ValueError(f"checkpoint {path} was written with another vocabulary")
    expected = _leaf_paths(template)
    if [l["path"] for l in header["leaves"]] != expected:
        raise ValueError(f"checkpoint {path} holds a state of another structure than the template")
    t_leaves, treedef = jax.tree.flatten(template)
    for meta, arr, t in zip(header["leaves"], leaves, t_leaves):
        if list(arr.shape) != list(np.shape(t)) or str(arr.dtype) != str(np.asarray(t).dtype):
            raise ValueError(f"checkpoint {path}: {meta['path']} is {arr.dtype}{list(arr.shape)}, "
                             f"template wants {np.asarray(t).dtype}{list(np.shape(t))}")
        if hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() != meta["sha256"]:
            raise ValueError(f"checkpoint {path}: {meta['path']} fails its checksum (corrupted)")
    # a leaf comes back as the template's kind: a jax array for a jax array; numpy for numpy or
    # Python values, whose int64/float64 jax would narrow to 32 bits without x64 (2**40 -> 0)
    state = jax.tree.unflatten(treedef, [jax.numpy.asarray(a) if isinstance(t, jax.Array) else a
                                         for a, t in zip(leaves, t_leaves)])
    return Checkpoint(state, header["step"], header["cursor"], path, header.get("run_id"))


def load_latest(directory, template, *, run_id=_FOLDER, **kw) -> Checkpoint | None:
    """The newest write of one run that loads (a corrupted newest file falls back to the one before).

    The run is the folder's (its run.json; without one, the checkpoints written with no run id)
    unless `run_id` is given: another run's checkpoints are never loaded. Returns None if the run
    has none; mismatched config/vocab still raise (that is not damage), and so does a folder
    whose only candidates are damaged.
    """
    if run_id is _FOLDER:
        run_id = _owner(directory)
    mine, unreadable = _written_by(directory, run_id)
    errors = [f"checkpoint {p} is truncated or corrupted (its header cannot be read)" for p in unreadable]
    for path in reversed(mine):
        try:
            return load(path, template, **kw)
        except ValueError as e:
            if "truncated or corrupted" not in str(e) and "checksum" not in str(e):
                raise
            errors.append(str(e))
    if errors:
        raise ValueError("no usable checkpoint: " + "; ".join(errors))
    return None
