"""minGRU (Feng et al., 2024, "Were RNNs All We Needed?"): a GRU whose gate and candidate read
the input only, so the recurrence is linear in h.

With u = x W_i + b (columns [z | h~]):

    z_t = sigmoid(u_z'),  h~_t = u_h',  h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

Each step is the affine map h -> a_t h + b_t with (a_t, b_t) = (1 - z_t, z_t h~_t), and affine
maps compose associatively: (a1, b1) then (a2, b2) is (a2 a1, a2 b1 + b2). So the whole
sequence is ONE `jax.lax.associative_scan`, O(log T) deep, with no Newton iteration at all: the
limiting case of the parallel-in-time cells (d h_t / d h_{t-1} = diag(1 - z_t): `jacobian=1`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jrnn import initializers, projection
from jrnn.cells import common
from jrnn.rnn import Cell

__all__ = [   # the public API, re-exported by jrnn.cells
    "MINGRU",
    "MinGRUParams",
    "init",
    "project",
    "step",
    "zeros",
    "scan",
]


class MinGRUParams(NamedTuple):
    """minGRU weights, columns [z | h~]: `w_i` [D, 2H], `b` [2H]; no recurrent weights."""
    w_i: jax.Array  # [D, 2H]
    b: jax.Array    # [2H]


def init(key, input_size, hidden_size, dtype=jnp.float32) -> MinGRUParams:
    """minGRU params: Glorot blocks for the gate and the candidate, zero biases; `w_i`
    [input_size, 2H], `b` [2H]."""
    D, H = initializers.check_sizes(input_size, hidden_size)
    w_i = jnp.concatenate([initializers.glorot_uniform(k, (D, H), dtype) for k in jax.random.split(key, 2)], 1)
    return MinGRUParams(w_i, jnp.zeros((2 * H,), w_i.dtype))


def project(params: MinGRUParams, xs):
    """Every step's gate and candidate at once: ids `[T, ...]` or features `[T, ..., D]` -> `[T, ..., 2H]`."""
    return projection.project(params.w_i, params.b, xs)


def _affine(u):
    """The step's affine map h -> a h + b from its projected input `u [..., 2H]`: (a, b) `[..., H]` each."""
    H = u.shape[-1] // 2
    z = common.sigmoid(u[..., :H])
    return 1.0 - z, z * u[..., H:]


def step(params: MinGRUParams, h, u):
    """One step, scan-shaped: `(params, h [..., H], u [..., 2H]) -> (h, h)`."""
    a, b = _affine(u)
    h = a * h + b
    return h, h


def _compose(first, then):
    """The affine map `first` followed by `then`, elementwise: (a2 a1, a2 b1 + b2)."""
    a1, b1 = first
    a2, b2 = then
    return a2 * a1, a2 * b1 + b2


def scan(params: MinGRUParams, us, h, *, mask=None, reverse=False, unroll=None):
    """The minGRU over projected inputs `us [T, ..., 2H]` from `h [..., H]`, as one
    `jax.lax.associative_scan` of the steps' affine maps: (hs `[T, ..., H]`, final h `[..., H]`).

    Equal to scanning `step` (masked as `jrnn.rnn.run` masks): a padded step (mask 0, mask
    `[T, ...]`) is the identity map (a = 1, b = 0), so the carry is frozen across it and its
    output is 0. `reverse` runs from t = T-1 down: the same prefix composition over the flipped
    time axis, so under a right-padded mask the padding, visited first, leaves the initial carry
    untouched and each sequence is read from its own last real step back to its first.
    `unroll` is accepted for the Cell contract and unused (there is no sequential loop)."""
    del unroll
    a, b = _affine(us)
    if mask is not None:
        m = jnp.asarray(mask, bool)[..., None]
        a, b = jnp.where(m, a, 1.0), jnp.where(m, b, 0.0)
    # (A_t, B_t): the composition of every map from the start (the end, reversed) up to step t
    A, B = jax.lax.associative_scan(_compose, (a, b), reverse=reverse)
    hs = A * h[None] + B
    final = hs[0] if reverse else hs[-1]
    if mask is not None:
        hs = jnp.where(m, hs, 0.0)
    return hs, final


def zeros(params: MinGRUParams, batch_shape=()):
    """The zero carry h `[*batch_shape, H]`."""
    return jnp.zeros((*batch_shape, params.b.shape[0] // 2), common.carry_dtype(params.b))


MINGRU = Cell(init, project, step, zeros, scan, name="mingru", params=MinGRUParams, jacobian=1)
"""The minGRU cell: params `MinGRUParams`, carry and output h [..., H]; linear in h, its `scan`
is one associative scan (`jacobian=1`: d h_t / d h_{t-1} = diag(1 - z_t))."""
