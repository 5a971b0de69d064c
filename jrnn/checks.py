"""Argument checks shared by jrnn's modules: integer and bool arguments (`integer`, `boolean`), PRNG keys
(`prng_key`), params trees of arrays in one float dtype (`array_leaves`), and range checks of token ids and labels
that also hold inside jrnn's jitted training steps (`traced_ids_in_range`).

Eager calls check concrete ids on the host (`jrnn.rnn.check_input_array`,
`jrnn.checks.labels`). Under `jit` the values are unknown while tracing, and JAX's gather
would not fail (jrnn's gather, `jrnn.projection.take_rows`, gives a NaN row for an id outside [0, V),
-1 included, where `jnp.take` would read -1 as V-1). So a traced id array gets a
`checkify.debug_check` instead, while `jrnn.train.make_step` and friends trace their
`checkify`-ed program (`tracing_id_checks`); they raise the check's error after the call, naming
the range and the offending min/max. Anywhere else (a plain `jax.jit`) no check is added: a
`debug_check` left in a plain jit's program gives it an error effect, and a jitted function with an
effect leaves JAX's C++ dispatch path for a Python one on every call.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = [   # the public API, documented in the API reference
    "integer",
    "boolean",
    "real",
    "mask01",
    "labels",
    "traced_ids_in_range",
    "host_ints_fit",
]


def integer(name: str, value, *, minimum: int | None = 1) -> int:
    """`value` as a Python int >= `minimum` (None: no bound), or a TypeError/ValueError naming `name`.

    Numpy integers are accepted; bools are refused (True would quietly be 1), and so are floats
    (4.0 would index as a float) and strings.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def real(name: str, value, *, minimum: float | None = None, strict: bool = False) -> float:
    """`value` as a finite Python float, >= `minimum` (> with `strict`) where one is given, or a
    TypeError/ValueError naming `name`.

    Python, numpy and concrete 0-d array numbers are accepted; bools (True would quietly be 1),
    strings and traced values are refused.
    """
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name} must be a concrete number, got a traced value")
    ok = isinstance(value, numbers.Real) or (
        isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0
        and (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)))
    if isinstance(value, (bool, np.bool_)) or not ok:
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    low = minimum is not None and (value <= minimum if strict else value < minimum)
    if not math.isfinite(value) or low:
        bound = "" if minimum is None else f" and {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{name} must be finite{bound}, got {value}")
    return value


def boolean(name: str, value) -> bool:
    """`value` as a Python bool (numpy bools accepted), or a TypeError naming `name`: 1 or "no"
    would otherwise pass as a truth value."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def as_given(shape, time_major: bool) -> tuple:
    """A time-major `shape` as the caller laid it out: itself, or its two leading axes swapped
    for batch-first data, so an error names the shapes the caller passed and must pass."""
    shape = tuple(shape)
    return shape if time_major or len(shape) < 2 else (shape[1], shape[0], *shape[2:])


def mask01(mask) -> None:
    """A concrete mask (`[T, ...]`, any shape) must hold only 0 and 1 (True/False): 0.5 is not a
    step and a half. A traced mask is read as bool (nonzero = real step) by every consumer."""
    if isinstance(mask, jax.core.Tracer):
        return
    m = np.asarray(mask)
    if m.dtype != bool and m.size and not np.all((m == 0) | (m == 1)):
        bad = m[(m != 0) & (m != 1)]
        raise ValueError(f"mask must hold only 0/1 (padding/real step), got {bad[:5].tolist()}; "
                         "to weight steps, multiply the reduction='none' losses yourself")


def labels(values, num_classes: int) -> None:
    """Integer class ids in [0, num_classes): checked on the host when concrete, with a
    `traced_ids_in_range` check under a trace."""
    if isinstance(values, jax.core.Tracer):
        traced_ids_in_range(values, num_classes, "labels")  # raised by jrnn's train steps
        return
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"labels must be integer class ids, got {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got min {values.min()}, max {values.max()}")


# whether traced_ids_in_range adds its check: only while a step that checkifies traces its program
# (a context variable: another thread tracing at the same time keeps its own value)
_ID_CHECKS = contextvars.ContextVar("jrnn_id_checks", default=False)


@contextlib.contextmanager
def tracing_id_checks():
    """Within this context, `traced_ids_in_range` adds its check to the function being traced;
    `jrnn.train`'s steps trace their `checkify`-ed program inside it. Not part of the public API."""
    token = _ID_CHECKS.set(True)
    try:
        yield
    finally:
        _ID_CHECKS.reset(token)


def traced_ids_in_range(ids, n: int, what: str) -> None:
    """Under the trace of a jrnn step's checkified program (`tracing_id_checks`), add a check that
    every integer in `ids` lies in [0, n); no-op otherwise (eager calls check on the host)."""
    if not _ID_CHECKS.get() or not isinstance(ids, jax.core.Tracer) or ids.size == 0:
        return
    lo, hi = jnp.min(ids), jnp.max(ids)
    checkify.debug_check((lo >= 0) & (hi < n), f"{what} must lie in [0, {n}), got min {{lo}}, max {{hi}}",
                         lo=lo, hi=hi)


def host_ints_fit(tree) -> None:
    """64-bit numpy integers in `tree` must fit the 32 bits JAX gives them while
    `jax_enable_x64` is off: JAX narrows them on the way into a jitted step by wrapping, so a
    token id of 2**32 + 1 would arrive as 1, in range, and train on the wrong row. Checked on the
    host, before the step; jax arrays (already converted) and Python ints (JAX refuses those
    that overflow) are left alone."""
    if jax.config.jax_enable_x64:
        return
    for x in jax.tree.leaves(tree):
        if isinstance(x, (np.ndarray, np.integer)) and x.dtype.kind in "iu" and x.dtype.itemsize > 4 and x.size:
            info = np.iinfo(np.int32 if x.dtype.kind == "i" else np.uint32)
            lo, hi = np.min(x), np.max(x)
            if lo < info.min or hi > info.max:
                raise ValueError(f"{x.dtype} values {lo}..{hi} do not fit {info.dtype}, which JAX narrows them "
                                 f"to (wrapping) while jax_enable_x64 is off; token ids must lie in [0, V)")


def is_key(key) -> bool:
    """One PRNG key: a typed key array of shape (), or a legacy uint32 [2] key."""
    dtype = getattr(key, "dtype", None)
    if dtype is None:
        return False
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return key.shape == ()
    return dtype == jnp.uint32 and key.shape == (2,)


def prng_key(name: str, key):
    """`key` itself if it is one PRNG key (`is_key`), else a TypeError naming `name`: an int seed
    or a batch of keys would otherwise fail deep inside jax.random."""
    if not is_key(key):
        raise TypeError(f"{name} must be one PRNG key (jax.random.key(seed), or a legacy jax.random.PRNGKey(seed)), "
                        f"got {type(key).__name__} of shape {np.shape(key)}")
    return key


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


@functools.lru_cache(maxsize=64)
def is_float_dtype(dtype) -> bool:
    """jnp.issubdtype(dtype, jnp.floating) (bfloat16 included), cached: it is asked per leaf."""
    return bool(jnp.issubdtype(dtype, jnp.floating))


def leaf_name(where: str, path) -> str:
    """A params leaf named by its key path after `where` (`params.w_i`, `layer_params[1].b`);
    `where=""`: the bare path (`layers[0].w_i`)."""
    key = path if isinstance(path, str) else jax.tree_util.keystr(path)
    return where + key if where else (key[1:] if key.startswith(".") else key) or "params"


def array_leaves(tree, where: str = "params") -> list:
    """The leaves of a params tree as `[(path, leaf)]` (`leaf_name(where, path)` names one:
    `params.w_i`; `where=""`: the bare path, `layers[0].w_i`), checked first:

    - every leaf is a jax or numpy array: a None leaf (a missing weight), a Python number or a
      list's items are a TypeError naming the leaf; so is a foreign array such as a torch tensor
      (anything else with `__array__`), which JAX cannot read as it is, with the fix;
    - every floating leaf has the same dtype once JAX has canonicalised it (float64 numpy arrays
      are float32 while jax_enable_x64 is off): jrnn computes a layer in its params' one dtype,
      and a float64 or bfloat16 leaf among float32 ones would promote a step's carry (a scan
      carry-type error) or quietly change the readout's precision. Mixed precision is
      `compute_dtype=` instead.

    Shapes only: no array is copied or moved to a device.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    first = None
    for path, x in flat:
        if x is None:
            raise TypeError(f"{leaf_name(where, path)} is None; the cell needs an array there (a missing weight?)")
        if not _is_array(x):
            if hasattr(x, "__array__") or type(x).__module__.split(".")[0] == "torch":
                raise TypeError(f"{leaf_name(where, path)} is a {type(x).__module__}.{type(x).__qualname__}, not a "
                                f"jax or numpy array: convert it first, e.g. jnp.asarray(t.detach().cpu().numpy()) "
                                f"for a torch tensor (and transpose PyTorch's [G*H, in] weights: jrnn stores [in, G*H])")
            raise TypeError(f"{leaf_name(where, path)} must be a jax or numpy array, got {type(x).__name__}")
        if is_float_dtype(x.dtype):
            dt = jax.dtypes.canonicalize_dtype(x.dtype)
            if first is None:
                first = (path, dt)
            elif dt != first[1]:
                what = where or "params"
                raise TypeError(f"{what} mix float dtypes: {leaf_name(where, first[0])} is {first[1]}, "
                                f"{leaf_name(where, path)} is {dt}; jrnn computes in the params' one dtype, so cast "
                                f"them all, e.g. jax.tree.map(lambda a: a.astype(jnp.{first[1]}), {what}) (for mixed "
                                f"precision pass compute_dtype=)")
    return flat
