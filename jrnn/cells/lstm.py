"""The LSTM cell (PyTorch's gate layout): params, init, input projection, step, zero carry and
its whole-sequence loop with the weight gradient hoisted out of the backward loop
(`jrnn.hoisted`).

Gate columns [i | f | g | o] of w_i [D, 4H], w_h [H, 4H]; one bias b = b_ih + b_hh.
    i, f, o = sigmoid(.), g = tanh(.);  c' = f*c + i*g;  h' = o*tanh(c')
PyTorch's `weight_ih_l0` is `w_i.T`, so weights copy over by transposition.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jrnn import hoisted, projection
from jrnn.cells import common
from jrnn.rnn import Cell

__all__ = [   # the public API, re-exported by jrnn.cells
    "LSTM",
    "LSTMParams",
    "LSTMState",
    "LSTM_LINEARIZATION",
    "init",
    "project",
    "step",
    "zeros",
    "scan",
]


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


def init(key, input_size, hidden_size, dtype=jnp.float32) -> LSTMParams:
    """LSTM params: Glorot input blocks, orthogonal recurrent blocks, forget-gate bias 1;
    `w_i` [input_size, 4H], `w_h` [H, 4H], `b` [4H]."""
    w_i, w_h = common.gate_weights(key, input_size, hidden_size, 4, dtype)
    # forget-gate bias 1 (Jozefowicz et al., 2015): remember by default early in training
    b = jnp.zeros((4 * hidden_size,), dtype).at[hidden_size:2 * hidden_size].set(1.0)
    return LSTMParams(w_i, w_h, b)


def project(params: LSTMParams, xs):
    """Every step's gate inputs at once: ids `[T, ...]` or features `[T, ..., D]` -> `[T, ..., 4H]`."""
    return projection.project(params.w_i, params.b, xs)


def _blockwise(values, like):
    """Each of `values` over one gate's H columns of `like [..., G*H]`, shaped [1, ..., G*H]."""
    v = jnp.repeat(jnp.asarray(values, like.dtype), like.shape[-1] // len(values))
    return v.reshape((1,) * (like.ndim - 1) + v.shape)


def _gates(z):
    """[i | f | g | o] pre-activations -> activations, in one tanh over all 4H columns:
    sigmoid(x) = tanh(x / 2) / 2 + 1/2 for i, f, o, tanh for g."""
    half = _blockwise([0.5, 0.5, 1.0, 0.5], z)
    return half * jnp.tanh(half * z) + _blockwise([0.5, 0.5, 0.0, 0.5], z)


def _forward(w, b, carry: LSTMState, u):
    act = _gates(u + carry.h @ w)
    i, f, g, o = jnp.split(act, 4, axis=-1)
    c = f * carry.c + i * g
    tc = jnp.tanh(c)
    # the tangent's coefficients, here where c_{t-1} and the gates are at hand: z = u + h W =
    # [z_i | z_f | z_g | z_o];  dc' = A_i dz_i + A_f dz_f + A_g dz_g + f dc,  dh' = A_o dz_o + k dc'.
    # (Computed afterwards on whole [T, ...] arrays, they cost one more pass over [T, B, 4H].)
    # A plain step drops them: XLA removes what nothing reads.
    A = jnp.concatenate([i * (1 - i) * g, f * (1 - f) * carry.c, i * (1 - g * g), o * (1 - o) * tc], -1)
    return LSTMState(o * tc, c), (A, f, o * (1 - tc * tc))


def step(params: LSTMParams, carry: LSTMState, u):
    """One step, scan-shaped: `(params, LSTMState [..., H] each, u [..., 4H]) -> (LSTMState, h [..., H])`."""
    carry, _ = _forward(params.w_h, None, carry, u)
    return carry, carry.h


def _tangent(k, d: LSTMState, y, s):
    # dz = y + s = dh W + (du + h dW): one [..., 4H] input per step, so JAX's transpose of this
    # step hands back dz itself as the cotangent of s, the [T, ..., 4H] array that dW, db and
    # the input matrix's gradient are computed from, with no multiply after the loop
    A, f, kc = k
    q_i, q_f, q_g, q_o = jnp.split(A * (y + s), 4, axis=-1)
    dc = q_i + q_f + q_g + f * d.c
    return LSTMState(q_o + kc * dc, dc)


LSTM_LINEARIZATION = hoisted.Linearization(_forward, lambda c: c.h, lambda c: c.h,
                                           lambda saved, prev, new: (saved, None), lambda k, e, du, da: du + da,
                                           _tangent)
"""The LSTM step split for `jrnn.hoisted.run`: gate coefficients [..., 4H] kept by the forward loop."""


def scan(params: LSTMParams, us, carry: LSTMState, *, mask=None, reverse=False, unroll=None):
    """The LSTM over projected inputs `us [T, ..., 4H]`, weight gradient hoisted (`jrnn.hoisted`)."""
    hs, final = hoisted.run(LSTM_LINEARIZATION, params.w_h, None, us, LSTMState(*carry), mask=mask,
                            reverse=reverse, unroll=unroll)
    return hs, final


def zeros(params: LSTMParams, batch_shape=()):
    """The zero carry: `LSTMState` of `[*batch_shape, H]` each."""
    z = jnp.zeros((*batch_shape, params.w_h.shape[0]), common.carry_dtype(params.w_h))
    return LSTMState(z, z)


LSTM = Cell(init, project, step, zeros, scan, name="lstm", params=LSTMParams)
"""The LSTM cell: params `LSTMParams`, carry `LSTMState(h, c)` of [..., H] each, output h [..., H];
forget-gate bias 1; its `scan` hoists the weight gradient (`jrnn.hoisted`)."""
