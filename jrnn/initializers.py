"""Named weight-initialisation schemes of the reproduced systems and a sensible default.

Each scheme maps (key, shape, fan_in, dtype) -> array. Biases follow the scheme too: zero for
every scheme except "uniform01", which the Rprop toy-sequence notebook applies to biases as well.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import checks

__all__ = [   # the public API, documented in the API reference
    "normal",
    "uniform",
    "uniform_fan_in",
    "uniform01",
    "weight",
    "bias",
]

Initializer = Callable[..., jax.Array]

SCHEMES = ("default", "normal", "uniform", "uniform_fan_in", "uniform01")


def check_dtype(dtype):
    """`dtype` as a float dtype (float32, float64, bfloat16, float16; None is JAX's default
    float), else a TypeError: an integer, bool or complex parameter dtype has no gradient
    descent to run (JAX's own error named its `uniform`, not the argument)."""
    try:
        dt = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64) if dtype is None else dtype)
    except TypeError:
        raise TypeError(f"dtype must be a float dtype (jnp.float32, jnp.float64, jnp.bfloat16, "
                        f"jnp.float16), got {dtype!r}") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"dtype must be a float dtype (jnp.float32, jnp.float64, jnp.bfloat16, "
                        f"jnp.float16), got {dt}")
    return dt


def check_sizes(input_size, hidden_size) -> tuple[int, int]:
    """(input_size, hidden_size) as ints >= 1 (numpy integers accepted, bools and floats not)."""
    return checks.integer("input_size", input_size), checks.integer("hidden_size", hidden_size)


def _shape(shape) -> tuple:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    return tuple(checks.integer("shape entries", d, minimum=0) for d in shape)


def normal(key, shape, *, scale: float, dtype=jnp.float32) -> jax.Array:
    """randn * scale: min-char-rnn uses 0.01, the sentiment classifier 1/1000 (scale 0: all-zero
    weights, a legitimate if symmetric start)."""
    scale, dtype = checks.real("scale", scale, minimum=0.0), check_dtype(dtype)
    return (scale * jax.random.normal(key, _shape(shape), dtype)).astype(dtype)


def uniform(key, shape, *, scale: float, dtype=jnp.float32) -> jax.Array:
    """U(-scale, scale): iamtrask's binary addition uses 2 * random - 1, scale 1."""
    scale, dtype = checks.real("scale", scale, minimum=0.0), check_dtype(dtype)
    return jax.random.uniform(key, _shape(shape), dtype, -scale, scale)


def uniform_fan_in(key, shape, *, fan_in: int, dtype=jnp.float32) -> jax.Array:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the truncated-BPTT char LM (and PyTorch's nn.RNN)."""
    fan_in, dtype = checks.integer("fan_in", fan_in), check_dtype(dtype)   # 0 gave NaN weights
    bound = 1.0 / jnp.sqrt(jnp.asarray(fan_in, dtype))
    return jax.random.uniform(key, _shape(shape), dtype, -bound, bound)


def uniform01(key, shape, *, dtype=jnp.float32) -> jax.Array:
    """U(0, 1) for every weight and bias, as the Rprop toy-sequence notebook. All-positive: see experiments.sequences."""
    return jax.random.uniform(key, _shape(shape), check_dtype(dtype), 0.0, 1.0)


def _in_float32(init, key, shape, dtype):
    """`init` drawn in float32 and rounded to a narrower float dtype: the orthogonal
    initializer's QR has no float16/bfloat16 kernel (jaxlib's LAPACK: NotImplementedError)."""
    dtype = check_dtype(dtype)
    work = jnp.promote_types(dtype, jnp.float32)
    return init(key, _shape(shape), work).astype(dtype)


def orthogonal(key, shape, dtype=jnp.float32) -> jax.Array:
    """An orthogonal matrix (`jax.nn.initializers.orthogonal`), any float dtype."""
    return _in_float32(jax.nn.initializers.orthogonal(), key, shape, dtype)


def glorot_uniform(key, shape, dtype=jnp.float32) -> jax.Array:
    """Glorot (Xavier) uniform (`jax.nn.initializers.glorot_uniform`), any float dtype."""
    return _in_float32(jax.nn.initializers.glorot_uniform(), key, shape, dtype)


def weight(scheme: str, key, shape, *, fan_in: int, recurrent: bool, scale: float, dtype):
    """One weight matrix under `scheme`; the default is Glorot inputs, orthogonal recurrence."""
    if scheme == "normal":
        return normal(key, shape, scale=scale, dtype=dtype)
    if scheme == "uniform":
        return uniform(key, shape, scale=scale, dtype=dtype)
    if scheme == "uniform_fan_in":
        return uniform_fan_in(key, shape, fan_in=fan_in, dtype=dtype)
    if scheme == "uniform01":
        return uniform01(key, shape, dtype=dtype)
    if scheme == "default":
        # Orthogonal W_hh keeps the recurrence's singular values at 1 (Saxe et al., 2014).
        return (orthogonal if recurrent else glorot_uniform)(key, shape, dtype)
    raise ValueError(f"unknown init scheme {scheme!r}; choose one of {SCHEMES}")


def bias(scheme: str, key, shape, *, dtype) -> jax.Array:
    """Zero biases, except uniform01 (the Rprop toy-sequence notebook draws its biases from U(0, 1) too)."""
    if scheme not in SCHEMES:   # weight() refuses it; a bias alone came back zeros
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {SCHEMES}")
    if scheme == "uniform01":
        return uniform01(key, shape, dtype=dtype)
    return jnp.zeros(_shape(shape), check_dtype(dtype))
