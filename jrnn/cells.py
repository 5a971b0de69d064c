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

from jrnn import elman, hoisted, initializers, rnn
from jrnn.rnn import Cell

__all__ = [   # the public API, documented in the API reference
    "LSTM",
    "GRU",
    "ELMAN",
    "LSTMParams",
    "LSTMState",
    "GRUParams",
    "get",
    "sigmoid",
]


def _blocks(key, D, H, n, dtype):
    """Glorot input blocks and orthogonal recurrent blocks, one per gate; sizes and dtype
    checked first (initializers.check_sizes, check_dtype), half precision drawn in float32."""
    D, H = initializers.check_sizes(D, H)
    ki, kh = jax.random.split(key)
    w_i = jnp.concatenate([initializers.glorot_uniform(k, (D, H), dtype) for k in jax.random.split(ki, n)], 1)
    w_h = jnp.concatenate([initializers.orthogonal(k, (H, H), dtype) for k in jax.random.split(kh, n)], 1)
    return w_i, w_h


@jax.custom_jvp
def sigmoid(x):
    """The logistic function as (1 + tanh(x / 2)) / 2, derivative y (1 - y) from the output.

    XLA's CPU backend expands `jax.nn.sigmoid` into exp and a divide inside a scan's fused loops,
    which measured ~1.4x the time of tanh there (min of 30, [128, 32, 1024] float32 through a
    scan, jax 0.10.2, 2-core Xeon); the tanh form is as exact. Positive x loses nothing; for
    x < -40 it returns 0 where 1/(1+e^-x) returns a number below 4e-18.
    """
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


@sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
    y = sigmoid(primals[0])
    return y, y * (1.0 - y) * tangents[0]


def _carry_dtype(w):
    """The dtype a carry computed with weight `w` has: JAX's canonical one (a float64 numpy
    weight is float32 while x64 is off; asking jnp.zeros for float64 then would warn)."""
    return jax.dtypes.canonicalize_dtype(w.dtype)


def _blockwise(values, like):
    """Each of `values` over one gate's H columns of `like [..., G*H]`, shaped [1, ..., G*H]."""
    v = jnp.repeat(jnp.asarray(values, like.dtype), like.shape[-1] // len(values))
    return v.reshape((1,) * (like.ndim - 1) + v.shape)


# ---- Elman (the recurrence part of jrnn.elman) -------------------------------------------------

ElmanCellParams = elman.ElmanCellParams
ELMAN = elman.cell("tanh")
"""The tanh Elman cell: params `jrnn.elman.ElmanCellParams`, carry and output h [..., H]
(`jrnn.elman.cell(activation)` for relu or sigmoid)."""


# ---- LSTM --------------------------------------------------------------------------------------

class LSTMParams(NamedTuple):
    """LSTM weights, gate columns [i | f | g | o] (PyTorch order): `w_i` [D, 4H], `w_h` [H, 4H],
    `b` [4H]. PyTorch's `weight_ih_l0` is `w_i.T` and its two biases sum to `b`."""
    w_i: jax.Array  # [D, 4H]
    w_h: jax.Array  # [H, 4H]
    b: jax.Array    # [4H]


class LSTMState(NamedTuple):
    """LSTM carry: `h` and `c`, each [..., H] (`[B, H]` for a batch, `[H]` for one sequence)."""
    h: jax.Array  # [..., H]
    c: jax.Array  # [..., H]


def lstm_init(key, input_size, hidden_size, dtype=jnp.float32) -> LSTMParams:
    w_i, w_h = _blocks(key, input_size, hidden_size, 4, dtype)
    # forget-gate bias 1 (Jozefowicz et al., 2015): remember by default early in training
    b = jnp.zeros((4 * hidden_size,), dtype).at[hidden_size:2 * hidden_size].set(1.0)
    return LSTMParams(w_i, w_h, b)


def lstm_project(params: LSTMParams, xs):
    return hoisted.project(params.w_i, params.b, xs)


def _lstm_gates(z):
    """[i | f | g | o] pre-activations -> activations, in one tanh over all 4H columns:
    sigmoid(x) = tanh(x / 2) / 2 + 1/2 for i, f, o, tanh for g."""
    half = _blockwise([0.5, 0.5, 1.0, 0.5], z)
    return half * jnp.tanh(half * z) + _blockwise([0.5, 0.5, 0.0, 0.5], z)


def _lstm_forward(w, b, carry: LSTMState, u):
    act = _lstm_gates(u + carry.h @ w)
    i, f, g, o = jnp.split(act, 4, axis=-1)
    c = f * carry.c + i * g
    tc = jnp.tanh(c)
    # the tangent's coefficients, here where c_{t-1} and the gates are at hand: z = u + h W =
    # [z_i | z_f | z_g | z_o];  dc' = A_i dz_i + A_f dz_f + A_g dz_g + f dc,  dh' = A_o dz_o + k dc'.
    # (Computed afterwards on whole [T, ...] arrays, they cost one more pass over [T, B, 4H]:
    # an LSTM's K-step data-parallel step at (64, 256, 1024, 65) took 776 ms that way, 694 ms so.)
    # A plain step drops them: XLA removes what nothing reads.
    A = jnp.concatenate([i * (1 - i) * g, f * (1 - f) * carry.c, i * (1 - g * g), o * (1 - o) * tc], -1)
    return LSTMState(o * tc, c), (A, f, o * (1 - tc * tc))


def lstm_step(params: LSTMParams, carry: LSTMState, u):
    carry, _ = _lstm_forward(params.w_h, None, carry, u)
    return carry, carry.h


def _lstm_tangent(k, d: LSTMState, y, s):
    # dz = y + s = dh W + (du + h dW): one [..., 4H] input per step, so JAX's transpose of this
    # step hands back dz itself as the cotangent of s, the [T, ..., 4H] array that dW, db and
    # the input matrix's gradient are computed from, with no multiply after the loop
    A, f, kc = k
    q_i, q_f, q_g, q_o = jnp.split(A * (y + s), 4, axis=-1)
    dc = q_i + q_f + q_g + f * d.c
    return LSTMState(q_o + kc * dc, dc)


LSTM_LINEARIZATION = hoisted.Linearization(_lstm_forward, lambda c: c.h, lambda c: c.h,
                                           lambda saved, prev, new: (saved, None), lambda k, e, du, da: du + da,
                                           _lstm_tangent)


def lstm_scan(params: LSTMParams, us, carry: LSTMState, *, mask=None, reverse=False, unroll=None):
    """The LSTM over projected inputs `us [T, ..., 4H]`, weight gradient hoisted (`jrnn.hoisted`)."""
    hs, final = hoisted.run(LSTM_LINEARIZATION, params.w_h, None, us, LSTMState(*carry), mask=mask,
                            reverse=reverse, unroll=unroll)
    return hs, final


def lstm_zeros(params: LSTMParams, batch_shape=()):
    z = jnp.zeros((*batch_shape, params.w_h.shape[0]), _carry_dtype(params.w_h))
    return LSTMState(z, z)


LSTM = Cell(lstm_init, lstm_project, lstm_step, lstm_zeros, lstm_scan, name="lstm", params=LSTMParams)
"""The LSTM cell: params `LSTMParams`, carry `LSTMState(h, c)` of [..., H] each, output h [..., H];
forget-gate bias 1; its `scan` hoists the weight gradient (`jrnn.hoisted`)."""


# ---- GRU ---------------------------------------------------------------------------------------

class GRUParams(NamedTuple):
    """GRU weights, gate columns [r | z | n] (PyTorch order): `w_i` [D, 3H], `w_h` [H, 3H],
    `b_i` [3H], `b_h` [3H] (b_hn sits inside r * (...), so it cannot merge with b_in)."""
    w_i: jax.Array  # [D, 3H]
    w_h: jax.Array  # [H, 3H]
    b_i: jax.Array  # [3H]
    b_h: jax.Array  # [3H]  (b_hn sits inside r * (...), so it cannot merge with b_in)


def gru_init(key, input_size, hidden_size, dtype=jnp.float32) -> GRUParams:
    w_i, w_h = _blocks(key, input_size, hidden_size, 3, dtype)
    zeros = jnp.zeros((3 * hidden_size,), dtype)
    return GRUParams(w_i, w_h, zeros, zeros)


def gru_project(params: GRUParams, xs):
    return hoisted.project(params.w_i, params.b_i, xs)


def _gru_forward(w, b, h, u):
    a = h @ w + b.reshape((1,) * (h.ndim - 1) + b.shape)   # [..., 3H]: h W_h + b_h
    H = h.shape[-1]
    rz = sigmoid(u[..., :2 * H] + a[..., :2 * H])
    r, z = rz[..., :H], rz[..., H:]
    a_n = a[..., 2 * H:]
    n = jnp.tanh(u[..., 2 * H:] + r * a_n)
    return (1.0 - z) * n + z * h, (r, z, n, a_n)


def gru_step(params: GRUParams, h, u):
    h, _ = _gru_forward(params.w_h, params.b_h, h, u)
    return h, h


def _gru_coefficients(saved, h_prev, _):
    # a = h W + b = [a_r | a_z | a_n], y = dh W:  dh' = z dh + s + K_r y_r + K_z y_z + K_n y_n
    r, z, n, a_n = saved
    c_r, e_n = r * (1 - r), (1 - z) * (1 - n * n)
    K = jnp.concatenate([e_n * a_n * c_r, (h_prev - n) * z * (1 - z), e_n * r], -1)
    return (K, z), e_n


def _gru_drive(k, e_n, du, da):
    K_r, K_z, K_n = jnp.split(k[0], 3, axis=-1)
    du_r, du_z, du_n = jnp.split(du, 3, axis=-1)
    da_r, da_z, da_n = jnp.split(da, 3, axis=-1)
    return K_r * (du_r + da_r) + K_z * (du_z + da_z) + K_n * da_n + e_n * du_n


def _gru_tangent(k, dh, y, s):
    q_r, q_z, q_n = jnp.split(k[0] * y, 3, axis=-1)
    return s + q_r + q_z + q_n + k[1] * dh


GRU_LINEARIZATION = hoisted.Linearization(_gru_forward, lambda h: h, lambda h: h, _gru_coefficients,
                                          _gru_drive, _gru_tangent)


def gru_scan(params: GRUParams, us, h, *, mask=None, reverse=False, unroll=None):
    """The GRU over projected inputs `us [T, ..., 3H]`, weight gradient hoisted (`jrnn.hoisted`)."""
    return hoisted.run(GRU_LINEARIZATION, params.w_h, params.b_h, us, h, mask=mask, reverse=reverse, unroll=unroll)


def gru_zeros(params: GRUParams, batch_shape=()):
    return jnp.zeros((*batch_shape, params.w_h.shape[0]), _carry_dtype(params.w_h))


GRU = Cell(gru_init, gru_project, gru_step, gru_zeros, gru_scan, name="gru", params=GRUParams)
"""The GRU cell (PyTorch's formulation): params `GRUParams`, carry and output h [..., H]; its `scan`
hoists the weight gradient (`jrnn.hoisted`)."""

CELLS = {"elman": ELMAN, "lstm": LSTM, "gru": GRU}


def get(cell) -> Cell:
    """A Cell from its name ("elman", "lstm", "gru") or a Cell itself."""
    if isinstance(cell, Cell):
        return cell
    try:
        return CELLS[cell]
    except KeyError:
        raise ValueError(f"unknown cell {cell!r}; choose one of {tuple(CELLS)} or pass a jrnn.cells.Cell")
