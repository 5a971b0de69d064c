"""Recurrent cells behind one interface, so every wrapper (stacks, directions, masks, models)
works with every cell.

A `Cell` is a NamedTuple of pure functions:

    init(key, input_size, hidden_size, dtype) -> params
    project(params, xs) -> us          # input projection of all T steps at once, before the scan
                                       # (token ids [T, ...] are a row gather, features a matmul)
    step(params, carry, u_t) -> (carry, h_t)   # one scan step
    zeros(params, batch_shape) -> carry

Gate layouts follow PyTorch so weights copy over by transposition:
  LSTM: columns [i | f | g | o] of w_i [D, 4H], w_h [H, 4H]; one bias b = b_ih + b_hh.
      i, f, o = sigmoid(.), g = tanh(.);  c' = f*c + i*g;  h' = o*tanh(c')
  GRU: columns [r | z | n] of w_i [D, 3H], w_h [H, 3H]; biases b_i, b_h kept apart because
      n = tanh(x W_in + b_in + r * (h W_hn + b_hn));  h' = (1 - z)*n + z*h
  Elman: `jrnn.elman` (w_xh, w_hh, b_h), h' = act(x W_xh + h W_hh + b_h).

A custom cell is any `Cell(init, project, step, zeros)` with these shapes (give it a `name`, and
its params type as `params` for clear errors): pass it to `jrnn.model.make` or `jrnn.lm.model`
and every feature (masks, stacks, directions, TBPTT, remat, dropout, sampling) works with it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jrnn import elman, rnn
from jrnn.rnn import Cell


def _gather_or_matmul(w, b, xs):
    rnn.check_input_array(w.shape[0], xs)
    xs = jnp.asarray(xs)
    u = jnp.take(w, xs, axis=0) if jnp.issubdtype(xs.dtype, jnp.integer) else xs @ w
    return u + b.reshape((1,) * (u.ndim - 1) + b.shape)


def _blocks(key, D, H, n, dtype):
    """Glorot input blocks and orthogonal recurrent blocks, one per gate."""
    ki, kh = jax.random.split(key)
    w_i = jnp.concatenate([jax.nn.initializers.glorot_uniform()(k, (D, H), dtype) for k in jax.random.split(ki, n)], 1)
    w_h = jnp.concatenate([jax.nn.initializers.orthogonal()(k, (H, H), dtype) for k in jax.random.split(kh, n)], 1)
    return w_i, w_h


# ---- Elman (the recurrence part of jrnn.elman) -------------------------------------------------

ElmanCellParams = elman.ElmanCellParams
ELMAN = elman.cell("tanh")


# ---- LSTM --------------------------------------------------------------------------------------

class LSTMParams(NamedTuple):
    """LSTM weights, gate columns [i | f | g | o] (PyTorch order)."""
    w_i: jax.Array  # [D, 4H]
    w_h: jax.Array  # [H, 4H]
    b: jax.Array    # [4H]


class LSTMState(NamedTuple):
    """LSTM carry."""
    h: jax.Array  # [..., H]
    c: jax.Array  # [..., H]


def lstm_init(key, input_size, hidden_size, dtype=jnp.float32) -> LSTMParams:
    w_i, w_h = _blocks(key, input_size, hidden_size, 4, dtype)
    # forget-gate bias 1 (Jozefowicz et al., 2015): remember by default early in training
    b = jnp.zeros((4 * hidden_size,), dtype).at[hidden_size:2 * hidden_size].set(1.0)
    return LSTMParams(w_i, w_h, b)


def lstm_project(params: LSTMParams, xs):
    return _gather_or_matmul(params.w_i, params.b, xs)


def lstm_step(params: LSTMParams, carry: LSTMState, u):
    z = u + carry.h @ params.w_h
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return LSTMState(h, c), h


def lstm_zeros(params: LSTMParams, batch_shape=()):
    z = jnp.zeros((*batch_shape, params.w_h.shape[0]), params.w_h.dtype)
    return LSTMState(z, z)


LSTM = Cell(lstm_init, lstm_project, lstm_step, lstm_zeros, name="lstm", params=LSTMParams)


# ---- GRU ---------------------------------------------------------------------------------------

class GRUParams(NamedTuple):
    """GRU weights, gate columns [r | z | n] (PyTorch order)."""
    w_i: jax.Array  # [D, 3H]
    w_h: jax.Array  # [H, 3H]
    b_i: jax.Array  # [3H]
    b_h: jax.Array  # [3H]  (b_hn sits inside r * (...), so it cannot merge with b_in)


def gru_init(key, input_size, hidden_size, dtype=jnp.float32) -> GRUParams:
    w_i, w_h = _blocks(key, input_size, hidden_size, 3, dtype)
    zeros = jnp.zeros((3 * hidden_size,), dtype)
    return GRUParams(w_i, w_h, zeros, zeros)


def gru_project(params: GRUParams, xs):
    return _gather_or_matmul(params.w_i, params.b_i, xs)


def gru_step(params: GRUParams, h, u):
    hh = h @ params.w_h + params.b_h.reshape((1,) * (h.ndim - 1) + params.b_h.shape)
    u_r, u_z, u_n = jnp.split(u, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(hh, 3, axis=-1)
    r, z = jax.nn.sigmoid(u_r + h_r), jax.nn.sigmoid(u_z + h_z)
    n = jnp.tanh(u_n + r * h_n)
    h = (1.0 - z) * n + z * h
    return h, h


def gru_zeros(params: GRUParams, batch_shape=()):
    return jnp.zeros((*batch_shape, params.w_h.shape[0]), params.w_h.dtype)


GRU = Cell(gru_init, gru_project, gru_step, gru_zeros, name="gru", params=GRUParams)

CELLS = {"elman": ELMAN, "lstm": LSTM, "gru": GRU}


def get(cell) -> Cell:
    """A Cell from its name ("elman", "lstm", "gru") or a Cell itself."""
    if isinstance(cell, Cell):
        return cell
    try:
        return CELLS[cell]
    except KeyError:
        raise ValueError(f"unknown cell {cell!r}; choose one of {tuple(CELLS)} or pass a jrnn.cells.Cell")
