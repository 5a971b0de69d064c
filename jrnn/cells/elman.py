"""The Elman cell: h_t = act(x_t W_xh + h_{t-1} W_hh + b_h), with its params, init, input
projection, step, zero carry and its whole-sequence loop with a derivative shaped for speed.

    h_t = act(u_t + h_{t-1} W)        u_t = x_t W_xh + b_h, projected before the scan

Differentiating a plain `lax.scan` of this step gives a backward loop that, at every step, does
the product it needs (dz_t W^T) and also accumulates dL/dW += h_{t-1}^T dz_t, one [H, B] x [B, H]
outer product per step, into a loop-carried sum. Here the recurrence has a custom JVP whose
tangent is the linear recurrence

    dh_t = a_t * (du_t + h_{t-1} dW + dh_{t-1} W)        a_t = act'(z_t), read off h_t

with the `h_{t-1} dW` term for all t computed by one matmul before a scan that is linear in dh
only. JAX transposes that for reverse mode: the backward loop keeps just dz_t W^T, and dL/dW
becomes one [H, T*B] x [T*B, H] matmul after it (`python -m experiments.bench` measures it).
The machinery (time, masks, direction, the custom JVP) is `jrnn.hoisted`, shared with the LSTM
and GRU; `linearization` is the Elman step's part of it. Because the rule is an ordinary JAX
function (a `custom_jvp`, not a `custom_vjp`), forward mode, `vmap` and higher derivatives keep
working. Tests compare it with the plain scan and `jrnn.bptt`.

The reproduced systems' Elman network with a readout and their init schemes is `jrnn.elman`,
built on this cell; its flat `ElmanParams` are defined here because the cell takes them too
(their readout ignored).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jrnn import hoisted, initializers, projection
from jrnn.cells import common
from jrnn.rnn import Cell

__all__ = [   # the public API, re-exported by jrnn.cells and jrnn.elman
    "ELMAN",
    "ElmanCellParams",
    "ElmanParams",
    "ACTIVATIONS",
    "activation_fn",
    "cell",
    "init",
    "project",
    "step",
    "zeros",
    "scan",
    "recurrence",
    "linearization",
]

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}
"""The activations the Elman cell takes, by name: elementwise functions of z [..., H]."""

# act'(z) as a function of h = act(z): no need to keep z
DERIVATIVES = {
    "tanh": lambda h: 1.0 - h * h,
    "sigmoid": lambda h: h * (1.0 - h),
    "relu": lambda h: (h > 0).astype(h.dtype),
}


class ElmanCellParams(NamedTuple):
    """Elman recurrence without readout (one layer of a `jrnn.lm` stack): `w_xh` [D, H],
    `w_hh` [H, H], `b_h` [H]."""
    w_xh: jax.Array  # [D, H]
    w_hh: jax.Array  # [H, H]
    b_h: jax.Array   # [H]


class ElmanParams(NamedTuple):
    """Weights of an Elman RNN with a linear readout: `w_xh` [D, H] (a token id gathers its row),
    `w_hh` [H, H], `b_h` [H], `w_hy` [H, V], `b_y` [V]."""
    w_xh: jax.Array  # [D, H] input -> hidden (row x_t of a token id is gathered)
    w_hh: jax.Array  # [H, H] hidden -> hidden
    b_h: jax.Array   # [H]
    w_hy: jax.Array  # [H, V] hidden -> output
    b_y: jax.Array   # [V]


def activation_fn(activation: str):
    """The elementwise function named `activation` ("tanh", "relu" or "sigmoid"), applied to
    z [..., H]; a ValueError naming the choices for any other."""
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; choose one of {tuple(ACTIVATIONS)}") from None


def init(key, input_size, hidden_size, dtype=jnp.float32) -> ElmanCellParams:
    """Elman recurrence parameters alone (the default scheme of `jrnn.elman.init`, drawn from the
    same keys, so the same numbers): an `ElmanCellParams` with `w_xh` [input_size, H] (Glorot),
    `w_hh` [H, H] (orthogonal), `b_h` [H] (zeros)."""
    D, H = initializers.check_sizes(input_size, hidden_size)
    # jrnn.elman.init's key layout (w_xh, w_hh, w_hy, b_h, b_y): the readout's keys go unused here
    k_xh, k_hh, _, _, _ = jax.random.split(key, 5)
    return ElmanCellParams(initializers.weight("default", k_xh, (D, H), fan_in=D, recurrent=False, scale=0.0,
                                               dtype=dtype),
                           initializers.weight("default", k_hh, (H, H), fan_in=H, recurrent=True, scale=0.0,
                                               dtype=dtype),
                           jnp.zeros((H,), initializers.check_dtype(dtype)))


def project(params, inputs) -> jax.Array:
    """Input projection for all steps at once: `[T, ...]` ids or `[T, ..., D]` -> `[T, ..., H]`
    (`x W_xh + b_h`; inputs checked first, `jrnn.rnn.check_input_array`)."""
    return projection.project(params.w_xh, params.b_h, inputs)


def step(params, h, u, *, activation: str = "tanh"):
    """One recurrence step, scan-shaped: `(params, h [..., H], u [..., H]) -> (h, h)`.

    `u` is the already-projected input `x_t W_xh + b_h` (see `project`).
    """
    h = activation_fn(activation)(u + h @ params.w_hh)
    return h, h


def zeros(params, batch_shape=()) -> jax.Array:
    """h0 = 0 of shape `[*batch_shape, H]`."""
    return jnp.zeros((*batch_shape, params.w_hh.shape[0]), common.carry_dtype(params.w_hh))


@functools.lru_cache(maxsize=None)
def linearization(activation: str) -> hoisted.Linearization:
    """The Elman step h' = act(u + h W) for `jrnn.hoisted`: nothing saved beyond the states,
    coefficient a_t = act'(z_t) read off h_t, tangent dh' = a_t (du_t + h_{t-1} dW + dh W).
    Cached, so each activation's is one hashable value (one compiled program per activation)."""
    act, slope = ACTIVATIONS[activation], DERIVATIVES[activation]
    forward = lambda w, b, h, u: (act(u + h @ w), None)
    coefficients = lambda saved, prev, new: (slope(new), None)
    drive = lambda a, _, du, da: du + da          # (the coefficient waits for the loop: see hoisted.run)
    tangent = lambda a, dh, y, s: a * (s + y)
    same = lambda h: h
    return hoisted.Linearization(forward, same, same, coefficients, drive, tangent)


def recurrence(w_hh, us, h0, *, mask=None, activation: str = "tanh", reverse: bool = False,
               unroll: int | None = None):
    """All states of the recurrence, its weight gradient hoisted out of the backward loop.

    Args:
      w_hh: `[H, H]`.
      us: projected inputs `[T, ..., H]`.
      h0: `[..., H]`.
      mask: optional `[T, ...]`: where 0 (padding) the carry is frozen and the output is 0.
      activation: "tanh", "relu" or "sigmoid".
      unroll: steps per loop iteration; None: `jrnn.rnn.default_unroll` (8 on a GPU, 1 on a CPU).

    Returns:
      (hs `[T, ..., H]`, h_T `[..., H]`), equal to a `lax.scan` of `step`.
    """
    activation_fn(activation)
    return hoisted.run(linearization(activation), w_hh, None, us, h0, mask=mask, reverse=reverse, unroll=unroll)


def scan(params, us, h0, *, mask=None, reverse=False, unroll=None, activation: str = "tanh"):
    """The Elman cell's whole-sequence loop over projected inputs `us [T, ..., H]` (`recurrence`
    of `params.w_hh`), a `Cell.scan`: (hs `[T, ..., H]`, h_T `[..., H]`)."""
    return recurrence(params.w_hh, us, h0, mask=mask, activation=activation, reverse=reverse, unroll=unroll)


class _Activated:
    """`fn(..., activation=activation)`: the Elman cell's step or scan for one activation.

    Equal and hashable by `(fn, activation)`, and pickled as those two (`fn` is a module-level
    function): a `Model` of the Elman cell then pickles, and a pickled or deep-copied one equals
    the original and hits the same jit cache entry as a static argument. (A closure does not
    pickle; a `functools.partial` deep-copies into an unequal new object.)"""
    __slots__ = ("fn", "activation")

    def __init__(self, fn, activation: str):
        self.fn, self.activation = fn, activation

    def __call__(self, *args, **kw):
        return self.fn(*args, activation=self.activation, **kw)

    def __eq__(self, other):
        return type(other) is _Activated and (self.fn, self.activation) == (other.fn, other.activation)

    def __hash__(self):
        return hash((_Activated, self.fn, self.activation))

    def __reduce__(self):
        return _Activated, (self.fn, self.activation)

    def __repr__(self):
        return f"{self.fn.__name__}[activation={self.activation!r}]"


@functools.lru_cache(maxsize=None)
def cell(activation: str = "tanh") -> Cell:
    """The Elman recurrence as a `jrnn.rnn.Cell` (`ELMAN` is the tanh one): carry and output
    h [..., H]. Cached, so equal activations give the same (hashable, equal) cell and jitted models
    compile once; its functions compare by value, so a pickled or deep-copied cell equals it too.
    Its params are `ElmanCellParams`, or the flat `ElmanParams` (readout ignored)."""
    activation_fn(activation)
    return Cell(init, project, _Activated(step, activation), zeros, _Activated(scan, activation),
                name="elman" if activation == "tanh" else f"elman({activation})",
                params=(ElmanCellParams, ElmanParams))


ELMAN = cell("tanh")
"""The tanh Elman cell: params `ElmanCellParams` (or the flat `ElmanParams`), carry and output
h [..., H] (`cell(activation)` for relu or sigmoid)."""
