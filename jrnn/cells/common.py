"""What the built-in cells share: the gates' sigmoid, per-gate weight blocks at init, and the
dtype of a carry.

A module of its own (not the package's `__init__`) so that each cell's module imports it without
importing the others.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrnn import initializers

__all__ = [   # shared by jrnn.cells.lstm, jrnn.cells.gru and jrnn.cells.elman
    "sigmoid",
    "gate_weights",
    "carry_dtype",
]


def gate_weights(key, D, H, n, dtype):
    """(w_i [D, n*H], w_h [H, n*H]): Glorot input blocks and orthogonal recurrent blocks, one
    per gate; sizes and dtype checked first (initializers.check_sizes, check_dtype), half
    precision drawn in float32."""
    D, H = initializers.check_sizes(D, H)
    ki, kh = jax.random.split(key)
    w_i = jnp.concatenate([initializers.glorot_uniform(k, (D, H), dtype) for k in jax.random.split(ki, n)], 1)
    w_h = jnp.concatenate([initializers.orthogonal(k, (H, H), dtype) for k in jax.random.split(kh, n)], 1)
    return w_i, w_h


@jax.custom_jvp
def sigmoid(x):
    """The logistic function as (1 + tanh(x / 2)) / 2, elementwise, derivative y (1 - y) from the
    output.

    XLA's CPU backend expands `jax.nn.sigmoid` into exp and a divide inside a scan's fused loops,
    which measured slower than tanh there (docs/performance.md, "Cells"); the tanh form is as
    exact. Positive x loses nothing; for x < -40 it returns 0 where 1/(1+e^-x) returns a number
    below 4e-18.
    """
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


@sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
    y = sigmoid(primals[0])
    return y, y * (1.0 - y) * tangents[0]


def carry_dtype(w):
    """The dtype a carry computed with weight `w [H, G*H]` has: JAX's canonical one (a float64
    numpy weight is float32 while x64 is off; asking jnp.zeros for float64 then would warn)."""
    return jax.dtypes.canonicalize_dtype(w.dtype)
