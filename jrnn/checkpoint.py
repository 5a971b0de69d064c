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
it, and config and vocabulary must equal the caller's, else a `ConfigMismatchError` naming each
setting that differs with both values. A leaf comes back as the template's kind: a jax array, a
numpy array or scalar, a Python number, or a typed PRNG key (`jax.random.key`).

Leaves: numpy's bool, integer, float and complex dtypes are stored as they are; ml_dtypes' (bfloat16,
float8_*, int4, ...) as their raw bits (uint8/16/32) with the real dtype in the header, and typed
PRNG keys as their key data with the key implementation in the header: all bit-exact.

Damage: every way a file can fail to read back as written (truncated, bytes changed, a zip member
flagged encrypted or compressed, a header that is not the documented one, a checksum that does not
match) is a `CheckpointDamagedError` ("this checkpoint file is damaged: <path>, <reason>"), a
ValueError. `load_latest` skips such files with a `SkippedCheckpointWarning` naming each and loads
the newest good one; `save` never reads more than the headers of the files already there and keeps
working whatever they hold.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jrnn import checks

__all__ = [   # the public API, documented in the API reference
    "Checkpoint",
    "start_run",
    "save",
    "load",
    "load_latest",
    "list_checkpoints",
    "run_of",
    "check_fresh",
    "RunConflictError",
    "CheckpointDamagedError",
    "ConfigMismatchError",
    "SkippedCheckpointWarning",
]

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d{10})\.npz$")
RUN_FILE = "run.json"
MAX_STEP = 10**10 - 1   # file names hold 10 digits: a larger or negative step would never be listed
_FOLDER = object()   # load_latest's default: the run that owns the folder
_RESCANS = 10   # load_latest lists a folder again when a file vanished before it was read, at most this often


class RunConflictError(ValueError):
    """A folder holds (or was claimed for) another run's checkpoints."""


class CheckpointDamagedError(ValueError):
    """A checkpoint file that does not read back as it was written (or no checkpoint of a run does)."""


class ConfigMismatchError(ValueError):
    """A checkpoint written with another config or vocabulary than the caller's.

    `differences` lists (key, value in the checkpoint, value given) for each top-level config key
    that differs (`ABSENT` where one side lacks the key), or ("vocab", saved, given).
    """

    def __init__(self, message: str, path: Path, differences: list):
        super().__init__(message)
        self.path, self.differences = path, differences


class SkippedCheckpointWarning(UserWarning):
    """`load_latest` skipped a file it could not load (damaged, or another format version)."""


class _Absent:
    def __repr__(self):
        return "(absent)"


ABSENT = _Absent()   # a config key that one side of a ConfigMismatchError does not have


def _damaged(path, reason: str) -> CheckpointDamagedError:
    return CheckpointDamagedError(f"this checkpoint file is damaged: {path}, {reason}")


class Checkpoint(NamedTuple):
    """What `load` returns."""
    state: Any        # pytree with the template's structure
    step: int
    cursor: Any       # data position (JSON value) saved with the state
    path: Path
    run_id: str | None = None   # the run that wrote it (None: written without a run id)


def _leaf_paths(tree):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


# ---- how a leaf is stored ----------------------------------------------------------------------

# ml_dtypes' types (bfloat16, float8_*, int4, ...): numpy writes them as opaque void ("|V2"), which
# no template matches, so their raw bits go to disk as the unsigned int of their width
_UINT = {n: np.dtype(f"uint{8 * n}") for n in (1, 2, 4, 8)}
_BITS_DTYPES = {np.dtype(t).name: np.dtype(t) for t in vars(ml_dtypes).values()
                if isinstance(t, type) and issubclass(t, np.generic) and np.dtype(t).itemsize in _UINT}
_KEY = "prng_key"   # the header's dtype of a typed PRNG key (`jax.random.key`); "impl" names its implementation
_KEY_DATA = np.dtype(np.uint32)   # the key data of every jax PRNG implementation
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _dtype_of(name) -> np.dtype | None:
    """The dtype that a header's dtype name stands for; None if `save` never writes that name."""
    if not isinstance(name, str):
        return None
    if name in _BITS_DTYPES:
        return _BITS_DTYPES[name]
    try:
        d = np.dtype(name)
    except Exception:   # the name is text from a file: numpy's parser raises TypeError, ValueError, SyntaxError, ...
        return None
    return d if d.kind in "biufc" and d.name == name and d.isnative else None


def _encode(path: str, leaf) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(array to write, array to check for NaN/inf or None, header entry without sha256) of one
    state leaf; TypeError/ValueError naming the leaf if it cannot be stored exactly."""
    if _is_key(leaf):
        return np.asarray(jax.random.key_data(leaf)), None, {"dtype": _KEY, "impl": str(jax.random.key_impl(leaf))}
    if isinstance(leaf, int) and not isinstance(leaf, bool) and not -2**63 <= leaf < 2**63:
        raise ValueError(f"state leaf {path} is {leaf}, which no int64 holds: store it in `cursor` (JSON holds any "
                         "int), or as an array of smaller parts")
    a = np.asarray(leaf)
    d = a.dtype
    if d.name in _BITS_DTYPES:
        return a.view(_UINT[d.itemsize]), a, {"dtype": d.name}
    if d.kind not in "biufc" or _dtype_of(d.newbyteorder("=").name) is None:
        raise TypeError(f"state leaf {path} is a {type(leaf).__name__} of dtype {d}: a checkpoint holds arrays and "
                        "numbers (bool, int, float, complex, ml_dtypes such as bfloat16) and PRNG keys; put other "
                        "values in `config` or `cursor`")
    if not d.isnative:
        a = a.astype(d.newbyteorder("="))
    return a, a, {"dtype": a.dtype.name}


def _wanted(path: str, t) -> tuple[str, tuple, str | None]:
    """(dtype name as the header writes it, stored shape, key implementation or None) that a
    template leaf asks for; TypeError naming the leaf if it is not one a checkpoint can fill."""
    if _is_key(t):
        return _KEY, tuple(jax.random.key_data(t).shape), str(jax.random.key_impl(t))
    if isinstance(t, (jax.Array, np.ndarray, np.generic)):
        return np.dtype(t.dtype).name, tuple(t.shape), None
    if isinstance(t, (bool, int, float, complex)) and (not isinstance(t, int) or -2**63 <= t < 2**63):
        return np.asarray(t).dtype.name, (), None
    raise TypeError(f"template leaf {path} is {type(t).__name__} {t!r}: a template holds the arrays, numbers and "
                    "PRNG keys of the state's structure (e.g. a fresh init and optimizer.init)")


def _as_template_kind(a: np.ndarray, t, impl: str | None):
    """A loaded leaf as the template's kind: a jax array for a jax array (a typed key for a key),
    numpy for numpy, a Python number for a Python number. Numpy and Python leaves stay on the host:
    their int64/float64 would narrow to 32 bits in jax without x64 (2**40 -> 0)."""
    if impl is not None:
        return jax.random.wrap_key_data(jnp.asarray(a), impl=impl)
    if isinstance(t, jax.Array):
        return jnp.asarray(a)
    if isinstance(t, np.generic):
        return a[()]
    if isinstance(t, np.ndarray):
        return np.array(a)   # a writable copy (the array read is a view of the file's bytes)
    return a.item()


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


# ---- reading: every way a file can be damaged is a CheckpointDamagedError --------------------

_HEADER = "header.npy"


def _zip(f, path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(f)
    except Exception as e:   # arbitrary bytes: BadZipFile, but also OSError, ValueError, struct.error, ...
        raise _damaged(path, f"it is not a readable zip file ({type(e).__name__}: {e})") from None


def _member(zf: zipfile.ZipFile, name: str, path) -> bytes:
    """The bytes of one member as `save` wrote it (uncompressed, unencrypted, CRC checked)."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise _damaged(path, f"it has no member {name}") from None
    if info.flag_bits & 0x1:
        raise _damaged(path, f"its member {name} is flagged as encrypted (jrnn never encrypts)")
    if info.compress_type != zipfile.ZIP_STORED:
        raise _damaged(path, f"its member {name} claims compression method {info.compress_type} "
                             "(jrnn stores members uncompressed)")
    try:
        return zf.read(name)
    except Exception as e:   # arbitrary bytes: BadZipFile (CRC), EOFError, RuntimeError, NotImplementedError, ...
        raise _damaged(path, f"its member {name} cannot be read ({type(e).__name__}: {e})") from None


def _npy(data: bytes, name: str, path) -> np.ndarray:
    """The array in one `.npy` member, read-only, without trusting its header to size anything."""
    f = io.BytesIO(data)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(f)
        if version not in readers:
            raise ValueError(f"npy format version {version}")
        shape, fortran, dtype = readers[version](f)
        if dtype.hasobject or dtype.itemsize == 0:
            raise ValueError(f"dtype {dtype}")
        count, offset = math.prod(shape), f.tell()
        if count < 0 or count * dtype.itemsize != len(data) - offset:
            raise ValueError(f"{len(data) - offset} bytes of data for {dtype}{list(shape)}")
        flat = np.frombuffer(data, dtype, count=count, offset=offset) if count else np.empty(0, dtype)
        return flat.reshape(shape, order="F" if fortran else "C")
    except Exception as e:   # numpy's header parser on arbitrary bytes: ValueError, SyntaxError, ...
        raise _damaged(path, f"its member {name} is not a readable array ({type(e).__name__}: {e})") from None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _leaf_problem(meta) -> str | None:
    """What is wrong with one leaf entry of a header (None: nothing)."""
    if not isinstance(meta, dict):
        return f"is a JSON {type(meta).__name__}, not an object"
    if not isinstance(meta.get("path"), str):
        return "has no path"
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
        return f"has shape {shape!r}, not a list of sizes"
    if not isinstance(meta.get("sha256"), str) or not _SHA256.fullmatch(meta["sha256"]):
        return "has no sha256 digest"
    if meta.get("dtype") == _KEY:
        return None if isinstance(meta.get("impl"), str) else "is a PRNG key without its implementation's name"
    if _dtype_of(meta.get("dtype")) is None:
        return f"has dtype {meta.get('dtype')!r}, which jrnn does not write"
    return None


def _check_header(h, path) -> dict:
    """`h` if it is a header as `save` writes it: CheckpointDamagedError naming what is not, a
    ValueError for another format version."""
    if not isinstance(h, dict):
        raise _damaged(path, f"its header is a JSON {type(h).__name__}, not an object")
    version = h.get("format_version")
    if not _is_int(version):
        raise _damaged(path, f"its header's format_version is {version!r}, not an integer")
    if version != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format version {version}, this jrnn reads version {FORMAT_VERSION}")
    if missing := [k for k in ("step", "config", "cursor", "vocab", "leaves") if k not in h]:
        raise _damaged(path, f"its header lacks {', '.join(missing)}")
    if not _is_int(h["step"]) or not 0 <= h["step"] <= MAX_STEP:
        raise _damaged(path, f"its header's step is {h['step']!r}, not an integer in [0, {MAX_STEP}]")
    if not isinstance(h.get("run_id"), (str, type(None))):
        raise _damaged(path, f"its header's run_id is {h['run_id']!r}, not a string")
    if "seq" in h and not (_is_int(h["seq"]) and h["seq"] >= 0):   # headers written before run ids lack it
        raise _damaged(path, f"its header's seq is {h['seq']!r}, not a write count")
    if not isinstance(h["vocab"], (list, type(None))):
        raise _damaged(path, f"its header's vocab is a JSON {type(h['vocab']).__name__}, not a list")
    if not isinstance(h["leaves"], list):
        raise _damaged(path, f"its header's leaves is a JSON {type(h['leaves']).__name__}, not a list")
    for i, meta in enumerate(h["leaves"]):
        if problem := _leaf_problem(meta):
            raise _damaged(path, f"its header's leaf {i} {problem}")
    return h


def _read_header(zf: zipfile.ZipFile, path) -> dict:
    arr = _npy(_member(zf, _HEADER, path), _HEADER, path)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise _damaged(path, f"its header is {arr.dtype}{list(arr.shape)}, not a string of bytes")
    try:
        h = json.loads(arr.tobytes().decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _damaged(path, f"its header is not JSON ({type(e).__name__}: {e})") from None
    return _check_header(h, path)


def _read_leaf(zf: zipfile.ZipFile, i: int, meta: dict, path) -> np.ndarray:
    """Leaf `i` as its header entry describes it (dtype, shape, sha256), else CheckpointDamagedError."""
    name = f"leaf_{i}.npy"
    arr = _npy(_member(zf, name, path), name, path)
    if meta["dtype"] == _KEY:
        ok = arr.dtype == _KEY_DATA
    elif meta["dtype"] in _BITS_DTYPES:   # the raw bits; "|V<n>": as jrnn wrote them before storing uint
        real = _BITS_DTYPES[meta["dtype"]]
        ok = arr.dtype in (_UINT[real.itemsize], np.dtype(f"V{real.itemsize}"))
        arr = arr.view(real) if ok else arr
    else:
        ok = arr.dtype == _dtype_of(meta["dtype"])
    if not ok or list(arr.shape) != meta["shape"]:
        raise _damaged(path, f"its member {name} holds {arr.dtype}{list(arr.shape)}, "
                             f"its header says {meta['dtype']}{meta['shape']}")
    if hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() != meta["sha256"]:
        raise _damaged(path, f"{meta['path']} fails its checksum")
    return arr


def _header_of(path: Path) -> dict:
    """The checked header of a checkpoint file, read without its arrays."""
    try:
        with open(path, "rb") as f, _zip(f, path) as zf:
            return _read_header(zf, path)
    except FileNotFoundError:
        raise   # gone since it was listed (the writing run pruned it): not damage
    except OSError as e:
        raise _damaged(path, f"it cannot be read ({e.strerror or e})") from None


def _check_save_args(step, keep) -> tuple[int, int]:
    """`step` and `keep` of `save`, checked before anything is written."""
    step, keep = checks.integer("step", step, minimum=None), checks.integer("keep", keep)
    if not 0 <= step <= MAX_STEP:
        raise ValueError(f"step must be in [0, {MAX_STEP}] (it names the file ckpt_<10 digits>.npz), got {step}")
    return step, keep


def _json(name: str, value, *, allow_nan: bool):
    """`value` as it reads back from the header (tuples -> lists, ...); TypeError/ValueError naming `name`."""
    try:
        return json.loads(json.dumps(value, allow_nan=allow_nan))
    except (TypeError, ValueError, RecursionError) as e:
        raise type(e)(f"{name} must be JSON data (dict, list, str, int, float, bool, None"
                      f"{'' if allow_nan else '; finite numbers'}): {e}") from None


def _vocab_list(vocab) -> list:
    try:
        return _json("vocab", list(vocab), allow_nan=False)
    except TypeError as e:
        raise TypeError(f"vocab must be a sequence of symbols (e.g. a Vocab's .chars), got {type(vocab).__name__}: "
                        f"{e}") from None


def _nonfinite(paths, arrays) -> list[str]:
    """Paths of the float or complex leaves (bfloat16 and float8 included) holding a NaN or inf."""
    return [p for p, a in zip(paths, arrays)
            if a is not None and jnp.issubdtype(a.dtype, jnp.inexact) and not np.all(np.isfinite(a))]


def _scan(directory, run_id) -> tuple[list[tuple[Path, dict]], list[tuple[Path, str]]]:
    """(run `run_id`'s checkpoints with their headers, oldest write first; (path, why) of the
    files whose header cannot be read: damaged, or of another format version)."""
    mine, unreadable = [], []
    for p in list_checkpoints(directory):
        try:
            h = _header_of(p)
        except FileNotFoundError:   # pruned by the run writing there since it was listed
            continue
        except ValueError as e:
            unreadable.append((p, str(e)))
            continue
        if h.get("run_id") == run_id:
            mine.append(((h.get("seq", -1), h["step"], p.name), p, h))
    mine.sort(key=lambda m: m[0])
    return [(p, h) for _, p, h in mine], unreadable


def save(directory, state, *, step: int, config: dict | None = None, vocab=None, cursor=None,
         keep: int = 3, run_id: str | None = None) -> Path:
    """Write `state` as `directory/ckpt_<step>.npz` atomically, as run `run_id` (see `start_run`).

    Keeps the run's newest `keep` writes (never deleting the file just written, nor another
    run's). RunConflictError if the folder belongs to another run than `run_id`. A state holding
    NaN or inf (bfloat16 and float8 leaves included) is refused (ValueError, nothing written): the
    last checkpoint stays the last good state. `step` is an int in [0, MAX_STEP]; `config` is JSON
    data with finite numbers, `cursor` JSON data, `vocab` a sequence of symbols. Damaged files in
    the folder never stop a save: only their headers are read, and they are left alone.
    """
    step, keep = _check_save_args(step, keep)
    config = _json("config", config, allow_nan=False)    # NaN != NaN: a NaN config would never match again
    cursor = _json("cursor", cursor, allow_nan=True)
    vocab = None if vocab is None else _vocab_list(vocab)
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    paths = [jax.tree_util.keystr(p) for p, _ in flat]
    encoded = [_encode(p, x) for p, (_, x) in zip(paths, flat)]
    if bad := _nonfinite(paths, [checked for _, checked, _ in encoded]):
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
    previous, _ = _scan(directory, run_id)
    seq = 1 + (previous[-1][1].get("seq", -1) if previous else -1)
    header = {
        "format_version": FORMAT_VERSION, "step": int(step), "run_id": run_id, "seq": seq,
        "config": config, "cursor": cursor, "vocab": vocab,
        "leaves": [{"path": p, "shape": list(stored.shape), **meta,
                    "sha256": hashlib.sha256(np.ascontiguousarray(stored).tobytes()).hexdigest()}
                   for p, (stored, _, meta) in zip(paths, encoded)],
    }
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
             **{f"leaf_{i}": stored for i, (stored, _, _) in enumerate(encoded)})
    path = directory / f"ckpt_{int(step):010d}.npz"
    _write_atomically(path, buf.getvalue())
    # prune by this run's write order, never the file just written (saving step 100 after
    # steps 500..1500 keeps it) and never another run's files
    older = [p for p, _ in previous if p != path]
    for old in older[: max(0, len(older) - (keep - 1))]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory, *, run_id=_FOLDER) -> list[Path]:
    """Checkpoint files in `directory`: all of them by step (default), or run `run_id`'s in
    write order (oldest first; files whose header cannot be read are left out)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    if run_id is not _FOLDER:
        return [p for p, _ in _scan(directory, run_id)[0]]
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def _differences(saved, given) -> list[tuple[str, Any, Any]]:
    if isinstance(saved, dict) and isinstance(given, dict):
        keys = list(saved) + [k for k in given if k not in saved]
        return [(k, saved.get(k, ABSENT), given.get(k, ABSENT)) for k in keys
                if saved.get(k, ABSENT) != given.get(k, ABSENT)]
    return [("config", saved, given)]


def _symbols(vocab) -> str:
    return "no vocabulary" if vocab is None else f"{len(vocab)} symbols"


def _check_settings(header: dict, path: Path, config, vocab) -> None:
    """ConfigMismatchError naming each config key (both values) or the vocabulary that differs."""
    if config is not None and header["config"] != config:
        diffs = _differences(header["config"], config)
        raise ConfigMismatchError(
            f"checkpoint {path} was written with config that differs from the one given: "
            + "; ".join(f"{k} is {a!r} there, {b!r} here" for k, a, b in diffs), path, diffs)
    if vocab is not None and header["vocab"] != vocab:
        saved = header["vocab"]
        at = next((i for i, (a, b) in enumerate(zip(saved or [], vocab)) if a != b), None)
        raise ConfigMismatchError(
            f"checkpoint {path} was written with another vocabulary ({_symbols(saved)}; the one given has "
            f"{len(vocab)}" + ("" if at is None else f", first difference at {at}: {saved[at]!r} there, "
                               f"{vocab[at]!r} here") + ")", path, [("vocab", saved, vocab)])


def _check_leaves(header: dict, path: Path, paths: list, wanted: list) -> None:
    """ValueError naming the first leaf of the checkpoint that the template does not match."""
    saved = [m["path"] for m in header["leaves"]]
    if saved != paths:
        at = next((i for i, (a, b) in enumerate(zip(saved, paths)) if a != b), min(len(saved), len(paths)))
        there = saved[at] if at < len(saved) else "nothing"
        raise ValueError(f"checkpoint {path} holds a state of another structure than the template ({len(saved)} "
                         f"leaves, the template {len(paths)}; leaf {at} is {there} there, "
                         f"{paths[at] if at < len(paths) else 'nothing'} in the template)")
    for meta, (dtype, shape, impl) in zip(header["leaves"], wanted):
        saved = (meta["dtype"], tuple(meta["shape"]), meta.get("impl"))
        if saved != (dtype, shape, impl):
            show = lambda d, s, k: f"{d}{'' if k is None else f'({k})'}{list(s)}"
            raise ValueError(f"checkpoint {path}: {meta['path']} is {show(*saved)}, "
                             f"template wants {show(dtype, shape, impl)}")


def load(path, template, *, config: dict | None = None, vocab=None) -> Checkpoint:
    """Read one checkpoint into the structure of `template`.

    CheckpointDamagedError (a ValueError) if the file does not read back as written (checked
    before the template is compared: damage is never reported as a mismatch); ConfigMismatchError
    (a ValueError) if `config` or `vocab` (when given) differ from the checkpoint's; ValueError if
    its leaves do not match the template's (structure, dtype, shape) or it has another format
    version; FileNotFoundError if there is no file at `path`.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file: pass one of its ckpt_*.npz files, "
                         "or the folder to load_latest")
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    config = None if config is None else _json("config", config, allow_nan=False)
    vocab = None if vocab is None else _vocab_list(vocab)
    t_leaves, treedef = jax.tree.flatten(template)
    paths = _leaf_paths(template)
    wanted = [_wanted(p, t) for p, t in zip(paths, t_leaves)]   # a template leaf no file could fill: before reading
    try:
        with open(path, "rb") as f, _zip(f, path) as zf:
            header = _read_header(zf, path)
            _check_settings(header, path, config, vocab)
            leaves = [_read_leaf(zf, i, meta, path) for i, meta in enumerate(header["leaves"])]
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint file at {path} (it was removed while being loaded)") from None
    except OSError as e:
        raise _damaged(path, f"it cannot be read ({e.strerror or e})") from None
    _check_leaves(header, path, paths, wanted)
    state = jax.tree.unflatten(treedef, [_as_template_kind(a, t, impl)
                                         for a, t, (_, _, impl) in zip(leaves, t_leaves, wanted)])
    return Checkpoint(state, header["step"], header["cursor"], path, header.get("run_id"))


def load_latest(directory, template, *, run_id=_FOLDER, **kw) -> Checkpoint | None:
    """The newest write of one run that loads: damaged files are skipped, each with a
    SkippedCheckpointWarning naming it and why, and the newest good one loads.

    The run is the folder's (its run.json; without one, the checkpoints written with no run id)
    unless `run_id` is given: another run's checkpoints are never loaded. Returns None if the run
    has none; mismatched config/vocab/template still raise (that is not damage), and a folder
    whose candidates are all damaged raises CheckpointDamagedError. A file removed between the
    listing and its read (the run writing there pruned it after a newer save) is no damage: the
    folder is listed again and its newest write loaded.
    """
    if run_id is _FOLDER:
        run_id = _owner(directory)
    for _attempt in range(_RESCANS):
        mine, skipped = _scan(directory, run_id)
        for path, _ in reversed(mine):
            try:
                ck = load(path, template, **kw)
            except FileNotFoundError:
                # the run writing there pruned it after a newer save (another process, e.g. an
                # evaluator reading a live run's folder): that newer one is the latest now
                break
            except CheckpointDamagedError as e:
                skipped.append((path, str(e)))
                continue
            for _, why in skipped:
                warnings.warn(f"load_latest skipped a checkpoint it cannot load ({why}); loaded {ck.path}",
                              SkippedCheckpointWarning, stacklevel=2)
            return ck
        else:
            break
    else:
        raise FileNotFoundError(f"the checkpoints of {directory} were removed while being loaded, {_RESCANS} times "
                                "in a row: is another process deleting them?")
    if skipped:
        raise CheckpointDamagedError(f"no usable checkpoint in {directory}: " + "; ".join(why for _, why in skipped))
    return None
