"""Checkpoints of a whole training state, written atomically, checked on load.

A checkpoint is one `.npz` file holding every array leaf of a state pytree (params, optimizer
state, PRNG key data, carried hidden state, ...) plus a JSON header: format version, step,
config, vocabulary, data cursor, each leaf's path/shape/dtype and a sha256 of its bytes.

Writing: temp file in the same folder, flush + fsync, `os.replace`, fsync of the folder; so a
crash (even SIGKILL) mid-write leaves the previous checkpoints untouched and at worst a stray
`*.tmp` file. The last `keep` checkpoints are kept.

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
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d{10})\.npz$")


class Checkpoint(NamedTuple):
    """What `load` returns."""
    state: Any        # pytree with the template's structure
    step: int
    cursor: Any       # data position (JSON value) saved with the state
    path: Path


def _leaf_paths(tree):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _to_numpy(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        raise TypeError("store PRNG keys as jax.random.key_data(key); rebuild with jax.random.wrap_key_data")
    return np.asarray(x)


def save(directory, state, *, step: int, config: dict | None = None, vocab=None, cursor=None,
         keep: int = 3) -> Path:
    """Write `state` as `directory/ckpt_<step>.npz` atomically; keep the newest `keep` files."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    leaves = [_to_numpy(x) for x in jax.tree.leaves(state)]
    header = {
        "format_version": FORMAT_VERSION, "step": int(step), "config": config, "cursor": cursor,
        "vocab": None if vocab is None else list(vocab),
        "leaves": [{"path": p, "shape": list(a.shape), "dtype": str(a.dtype),
                    "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}
                   for p, a in zip(_leaf_paths(state), leaves)],
    }
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
             **{f"leaf_{i}": a for i, a in enumerate(leaves)})
    path = directory / f"ckpt_{int(step):010d}.npz"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ckpt_", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory) -> list[Path]:
    """Checkpoint files in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
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
    state = jax.tree.unflatten(treedef, [jax.numpy.asarray(a) for a in leaves])
    return Checkpoint(state, header["step"], header["cursor"], path)


def load_latest(directory, template, **kw) -> Checkpoint | None:
    """Newest loadable checkpoint (a corrupted newest file falls back to the one before it).

    Returns None if there is none; mismatched config/vocab still raise (that is not damage).
    """
    errors = []
    for path in reversed(list_checkpoints(directory)):
        try:
            return load(path, template, **kw)
        except ValueError as e:
            if "truncated or corrupted" not in str(e) and "checksum" not in str(e):
                raise
            errors.append(str(e))
    if errors:
        raise ValueError("no usable checkpoint: " + "; ".join(errors))
    return None
