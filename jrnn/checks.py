"""Argument checks shared by jrnn's modules: integer and bool arguments (`integer`, `boolean`), and range checks of
token ids and labels that also hold inside jrnn's jitted training steps (`traced_ids_in_range`).

Eager calls check concrete ids on the host (`jrnn.rnn.check_input_array`,
`jrnn.losses._check_labels`). Under `jit` the values are unknown while tracing, and JAX's gather
would not fail (jrnn's gather, `jrnn.hoisted.take_rows`, gives a NaN row for an id outside [0, V),
-1 included, where `jnp.take` would read -1 as V-1). So a traced id array gets a
`checkify.debug_check` instead: it costs nothing (it is dropped) in a plain `jax.jit`, and is
live inside a `checkify`-ed function, which `jrnn.train.make_step` and friends are by default;
they raise the check's error after the call, naming the range and the offending min/max.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = [   # the public API, documented in the API reference
    "integer",
    "boolean",
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


def boolean(name: str, value) -> bool:
    """`value` as a Python bool (numpy bools accepted), or a TypeError naming `name`: 1 or "no"
    would otherwise pass as a truth value."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def traced_ids_in_range(ids, n: int, what: str) -> None:
    """Under a trace, add a check that every integer in `ids` lies in [0, n); no-op otherwise."""
    if not isinstance(ids, jax.core.Tracer) or ids.size == 0:
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
