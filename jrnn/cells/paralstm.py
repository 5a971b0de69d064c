"""A coupled-input-forget-gate LSTM with peepholes and elementwise (diagonal) recurrence:
ParaRNN's ParaLSTM (Danieli et al., 2025, arXiv 2510.21450).

With u = x W_i + b (columns [f | g | o]), diagonal recurrent weights u_h = [u_f | u_g | u_o]
[3H] and peepholes p = [p_f | p_o] [2H], all acting elementwise:

    f  = sigmoid(u_f' + u_f * h + p_f * c)          (the forget gate peeps at c_{t-1})
    g  = tanh(u_g' + u_g * h)
    c' = f * c + (1 - f) * g                        (input gate coupled: i = 1 - f)
    o  = sigmoid(u_o' + u_o * h + p_o * c')         (the output gate peeps at c_t)
    h' = o * tanh(c')

(u_f', u_g', u_o' the input projection's columns). Unit j of (h', c') depends on unit j of
(h, c) only, so d (h_t, c_t) / d (h_{t-1}, c_{t-1}) is block-diagonal over the carry's two
leaves with diagonal blocks (`jacobian=2`): each unit's Newton step is a 2 x 2 block, O(T*H).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jrnn import initializers, projection
from jrnn.cells import common
from jrnn.rnn import Cell

__all__ = [   # the public API, re-exported by jrnn.cells
    "PARALSTM",
    "ParaLSTMParams",
    "ParaLSTMState",
    "init",
    "project",
    "step",
    "zeros",
]


class ParaLSTMParams(NamedTuple):
    """ParaLSTM weights, gate columns [f | g | o]: `w_i` [D, 3H], `u_h` [3H] (the diagonal
    recurrent weights [u_f | u_g | u_o]), `b` [3H], `p` [2H] (the peepholes [p_f | p_o]: the
    forget gate reads c_{t-1}, the output gate c_t)."""
    w_i: jax.Array  # [D, 3H]
    u_h: jax.Array  # [3H]: [u_f | u_g | u_o]
    b: jax.Array    # [3H]
    p: jax.Array    # [2H]: [p_f | p_o]


class ParaLSTMState(NamedTuple):
    """ParaLSTM carry: `h` and `c`, each [..., H] (`[B, H]` for a batch, `[H]` for one sequence),
    the layout of the LSTM's `LSTMState`."""
    h: jax.Array  # [..., H]
    c: jax.Array  # [..., H]


def _row(v, like):
    """`v` [N] shaped [1, ..., N] to broadcast against `like` [..., N] without rank promotion."""
    return v.reshape((1,) * (like.ndim - 1) + v.shape)


def init(key, input_size, hidden_size, dtype=jnp.float32) -> ParaLSTMParams:
    """ParaLSTM params: Glorot input blocks, U(-1, 1) diagonal recurrent weights, zero
    peepholes, forget-gate bias 1; `w_i` [input_size, 3H], `u_h` and `b` [3H], `p` [2H]."""
    D, H = initializers.check_sizes(input_size, hidden_size)
    ki, kh = jax.random.split(key)
    w_i = jnp.concatenate([initializers.glorot_uniform(k, (D, H), dtype) for k in jax.random.split(ki, 3)], 1)
    # U(-1, 1): each unit's gain through each gate is at most 1, as the dense cells' orthogonal
    # recurrent blocks have unit singular values
    u_h = initializers.uniform(kh, (3 * H,), scale=1.0, dtype=dtype)
    # forget-gate bias 1 (Jozefowicz et al., 2015): remember by default early in training;
    # zero peepholes: the cell starts as a CIFG LSTM without them and learns what they add
    b = jnp.zeros((3 * H,), u_h.dtype).at[:H].set(1.0)
    return ParaLSTMParams(w_i, u_h, b, jnp.zeros((2 * H,), u_h.dtype))


def project(params: ParaLSTMParams, xs):
    """Every step's gate inputs at once: ids `[T, ...]` or features `[T, ..., D]` -> `[T, ..., 3H]`."""
    return projection.project(params.w_i, params.b, xs)


def step(params: ParaLSTMParams, carry: ParaLSTMState, u):
    """One step, scan-shaped: `(params, ParaLSTMState [..., H] each, u [..., 3H]) ->
    (ParaLSTMState, h [..., H])`."""
    h, c = carry
    H = h.shape[-1]
    a = u + jnp.concatenate([h, h, h], -1) * _row(params.u_h, h)   # [..., 3H]
    p_f, p_o = _row(params.p[:H], h), _row(params.p[H:], h)
    f = common.sigmoid(a[..., :H] + p_f * c)
    g = jnp.tanh(a[..., H:2 * H])
    c = f * c + (1.0 - f) * g
    o = common.sigmoid(a[..., 2 * H:] + p_o * c)
    h = o * jnp.tanh(c)
    return ParaLSTMState(h, c), h


def zeros(params: ParaLSTMParams, batch_shape=()):
    """The zero carry: `ParaLSTMState` of `[*batch_shape, H]` each."""
    z = jnp.zeros((*batch_shape, params.u_h.shape[0] // 3), common.carry_dtype(params.u_h))
    return ParaLSTMState(z, z)


PARALSTM = Cell(init, project, step, zeros, name="paralstm", params=ParaLSTMParams, jacobian=2)
"""The ParaLSTM cell: params `ParaLSTMParams`, carry `ParaLSTMState(h, c)` of [..., H] each,
output h [..., H]; d (h_t, c_t) / d (h_{t-1}, c_{t-1}) is 2 x 2 block-diagonal with diagonal
blocks (`jacobian=2`)."""
