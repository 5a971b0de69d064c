"""The GRU cell (PyTorch's formulation): params, init, input projection, step, zero carry and
its whole-sequence loop with the weight gradient hoisted out of the backward loop
(`jrnn.hoisted`).

Gate columns [r | z | n] of w_i [D, 3H], w_h [H, 3H]; biases b_i, b_h kept apart because
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn));  h' = (1 - z)*n + z*h
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jrnn import hoisted, projection
from jrnn.cells import common
from jrnn.rnn import Cell

__all__ = [   # the public API, re-exported by jrnn.cells
    "GRU",
    "GRUParams",
    "GRU_LINEARIZATION",
    "init",
    "project",
    "step",
    "zeros",
    "scan",
]


class GRUParams(NamedTuple):
    """GRU weights, gate columns [r | z | n] (PyTorch order): `w_i` [D, 3H], `w_h` [H, 3H],
    `b_i` [3H], `b_h` [3H] (b_hn sits inside r * (...), so it cannot merge with b_in)."""
    w_i: jax.Array  # [D, 3H]
    w_h: jax.Array  # [H, 3H]
    b_i: jax.Array  # [3H]
    b_h: jax.Array  # [3H]  (b_hn sits inside r * (...), so it cannot merge with b_in)


def init(key, input_size, hidden_size, dtype=jnp.float32) -> GRUParams:
    """GRU params: Glorot input blocks, orthogonal recurrent blocks, zero biases; `w_i`
    [input_size, 3H], `w_h` [H, 3H], `b_i` and `b_h` [3H]."""
    w_i, w_h = common.gate_weights(key, input_size, hidden_size, 3, dtype)
    zeros = jnp.zeros((3 * hidden_size,), dtype)
    return GRUParams(w_i, w_h, zeros, zeros)


def project(params: GRUParams, xs):
    """Every step's gate inputs at once: ids `[T, ...]` or features `[T, ..., D]` -> `[T, ..., 3H]`."""
    return projection.project(params.w_i, params.b_i, xs)


def _forward(w, b, h, u):
    a = h @ w + b.reshape((1,) * (h.ndim - 1) + b.shape)   # [..., 3H]: h W_h + b_h
    H = h.shape[-1]
    rz = common.sigmoid(u[..., :2 * H] + a[..., :2 * H])
    r, z = rz[..., :H], rz[..., H:]
    a_n = a[..., 2 * H:]
    n = jnp.tanh(u[..., 2 * H:] + r * a_n)
    return (1.0 - z) * n + z * h, (r, z, n, a_n)


def step(params: GRUParams, h, u):
    """One step, scan-shaped: `(params, h [..., H], u [..., 3H]) -> (h, h)`."""
    h, _ = _forward(params.w_h, params.b_h, h, u)
    return h, h


def _coefficients(saved, h_prev, _):
    # a = h W + b = [a_r | a_z | a_n], y = dh W:  dh' = z dh + s + K_r y_r + K_z y_z + K_n y_n
    r, z, n, a_n = saved
    c_r, e_n = r * (1 - r), (1 - z) * (1 - n * n)
    K = jnp.concatenate([e_n * a_n * c_r, (h_prev - n) * z * (1 - z), e_n * r], -1)
    return (K, z), e_n


def _drive(k, e_n, du, da):
    K_r, K_z, K_n = jnp.split(k[0], 3, axis=-1)
    du_r, du_z, du_n = jnp.split(du, 3, axis=-1)
    da_r, da_z, da_n = jnp.split(da, 3, axis=-1)
    return K_r * (du_r + da_r) + K_z * (du_z + da_z) + K_n * da_n + e_n * du_n


def _tangent(k, dh, y, s):
    q_r, q_z, q_n = jnp.split(k[0] * y, 3, axis=-1)
    return s + q_r + q_z + q_n + k[1] * dh


GRU_LINEARIZATION = hoisted.Linearization(_forward, lambda h: h, lambda h: h, _coefficients, _drive, _tangent)
"""The GRU step split for `jrnn.hoisted.run`: r, z, n and h W_n + b_n ([..., H] each) kept by the
forward loop, the coefficients computed on whole [T, ...] arrays after it."""


def scan(params: GRUParams, us, h, *, mask=None, reverse=False, unroll=None):
    """The GRU over projected inputs `us [T, ..., 3H]`, weight gradient hoisted (`jrnn.hoisted`)."""
    return hoisted.run(GRU_LINEARIZATION, params.w_h, params.b_h, us, h, mask=mask, reverse=reverse, unroll=unroll)


def zeros(params: GRUParams, batch_shape=()):
    """The zero carry h `[*batch_shape, H]`."""
    return jnp.zeros((*batch_shape, params.w_h.shape[0]), common.carry_dtype(params.w_h))


GRU = Cell(init, project, step, zeros, scan, name="gru", params=GRUParams)
"""The GRU cell (PyTorch's formulation): params `GRUParams`, carry and output h [..., H]; its `scan`
hoists the weight gradient (`jrnn.hoisted`)."""
