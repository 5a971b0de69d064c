"""Named weight-initialisation schemes of the reproduced systems and a sensible default.

Each scheme maps (key, shape, fan_in, dtype) -> array. Biases follow the scheme too: zero for
every scheme except "uniform01", which the Rprop toy-sequence notebook applies to biases as well.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

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


def normal(key, shape, *, scale: float, dtype=jnp.float32) -> jax.Array:
    """randn * scale: min-char-rnn uses 0.01, the sentiment classifier 1/1000."""
    return scale * jax.random.normal(key, shape, dtype)


def uniform(key, shape, *, scale: float, dtype=jnp.float32) -> jax.Array:
    """U(-scale, scale): iamtrask's binary addition uses 2 * random - 1, scale 1."""
    return jax.random.uniform(key, shape, dtype, -scale, scale)


def uniform_fan_in(key, shape, *, fan_in: int, dtype=jnp.float32) -> jax.Array:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the truncated-BPTT char LM (and PyTorch's nn.RNN)."""
    bound = 1.0 / jnp.sqrt(jnp.asarray(fan_in, dtype))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def uniform01(key, shape, *, dtype=jnp.float32) -> jax.Array:
    """U(0, 1) for every weight and bias, as the Rprop toy-sequence notebook. All-positive: see experiments.sequences."""
    return jax.random.uniform(key, shape, dtype, 0.0, 1.0)


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
        init = jax.nn.initializers.orthogonal() if recurrent else jax.nn.initializers.glorot_uniform()
        return init(key, shape, dtype)
    raise ValueError(f"unknown init scheme {scheme!r}; choose one of {SCHEMES}")


def bias(scheme: str, key, shape, *, dtype) -> jax.Array:
    """Zero biases, except uniform01 (the Rprop toy-sequence notebook draws its biases from U(0, 1) too)."""
    if scheme == "uniform01":
        return uniform01(key, shape, dtype=dtype)
    return jnp.zeros(shape, dtype)
