"""A GRU with elementwise (diagonal) recurrence: ParaRNN's ParaGRU (Danieli et al., 2025,
arXiv 2510.21450), written in this library's GRU convention.

Each gate reads the previous state through a vector, not a matrix: with u = x W_i + b_i
(columns [r | z | n]) and the recurrent weights u_h = [u_r | u_z | u_n], [3H],

    r = sigmoid(u_r' + u_r * h + b_hr),  z = sigmoid(u_z' + u_z * h + b_hz)
    n = tanh(u_n' + r * (u_n * h + b_hn));  h' = (1 - z) * n + z * h

(u_r', u_z', u_n' the input projection's columns). Unit j of h' depends on unit j of h only, so
d h_t / d h_{t-1} is diagonal (`jacobian=1`): the parallel-in-time solver's Newton step is then
an elementwise scan, O(T*H), and exact. Mixing across units is left to the input projection of
the next layer (or the readout).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jrnn import initializers, projection
from jrnn.cells import common
from jrnn.rnn import Cell

__all__ = [   # the public API, re-exported by jrnn.cells
    "PARAGRU",
    "ParaGRUParams",
    "init",
    "project",
    "step",
    "zeros",
]


class ParaGRUParams(NamedTuple):
    """ParaGRU weights, gate columns [r | z | n] (the GRU's order): `w_i` [D, 3H], `u_h` [3H]
    (the diagonal recurrent weights [u_r | u_z | u_n], one per unit and gate), `b_i` [3H],
    `b_h` [3H] (b_hn sits inside r * (...), so it cannot merge with b_in)."""
    w_i: jax.Array  # [D, 3H]
    u_h: jax.Array  # [3H]: [u_r | u_z | u_n]
    b_i: jax.Array  # [3H]
    b_h: jax.Array  # [3H]


def _row(v, like):
    """`v` [N] shaped [1, ..., N] to broadcast against `like` [..., N] without rank promotion."""
    return v.reshape((1,) * (like.ndim - 1) + v.shape)


def init(key, input_size, hidden_size, dtype=jnp.float32) -> ParaGRUParams:
    """ParaGRU params: Glorot input blocks (the same draws as the GRU's `w_i` from this key),
    U(-1, 1) diagonal recurrent weights, zero biases; `w_i` [input_size, 3H], `u_h`, `b_i`,
    `b_h` [3H]."""
    D, H = initializers.check_sizes(input_size, hidden_size)
    ki, kh = jax.random.split(key)
    w_i = jnp.concatenate([initializers.glorot_uniform(k, (D, H), dtype) for k in jax.random.split(ki, 3)], 1)
    # U(-1, 1): each unit's gain through each gate is at most 1, as the dense cells' orthogonal
    # recurrent blocks have unit singular values
    u_h = initializers.uniform(kh, (3 * H,), scale=1.0, dtype=dtype)
    zeros = jnp.zeros((3 * H,), u_h.dtype)
    return ParaGRUParams(w_i, u_h, zeros, zeros)


def project(params: ParaGRUParams, xs):
    """Every step's gate inputs at once: ids `[T, ...]` or features `[T, ..., D]` -> `[T, ..., 3H]`."""
    return projection.project(params.w_i, params.b_i, xs)


def step(params: ParaGRUParams, h, u):
    """One step, scan-shaped: `(params, h [..., H], u [..., 3H]) -> (h, h)`."""
    H = h.shape[-1]
    a = jnp.concatenate([h, h, h], -1) * _row(params.u_h, h) + _row(params.b_h, h)   # [..., 3H]
    rz = common.sigmoid(u[..., :2 * H] + a[..., :2 * H])
    r, z = rz[..., :H], rz[..., H:]
    n = jnp.tanh(u[..., 2 * H:] + r * a[..., 2 * H:])
    h = (1.0 - z) * n + z * h
    return h, h


def zeros(params: ParaGRUParams, batch_shape=()):
    """The zero carry h `[*batch_shape, H]`."""
    return jnp.zeros((*batch_shape, params.u_h.shape[0] // 3), common.carry_dtype(params.u_h))


PARAGRU = Cell(init, project, step, zeros, name="paragru", params=ParaGRUParams, jacobian=1)
"""The ParaGRU cell: params `ParaGRUParams`, carry and output h [..., H]; d h_t / d h_{t-1} is
diagonal (`jacobian=1`)."""
