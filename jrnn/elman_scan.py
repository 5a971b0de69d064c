"""The Elman recurrence over time, with a derivative shaped for speed.

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
and GRU; this module holds the Elman step's part of it. Because the rule is an ordinary JAX
function (a `custom_jvp`, not a `custom_vjp`), forward mode, `vmap` and higher derivatives keep
working. Tests compare it with the plain scan and `jrnn.bptt`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrnn import hoisted

__all__ = [   # the public API, documented in the API reference
    "run",
    "linearization",
]

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}

# act'(z) as a function of h = act(z): no need to keep z
DERIVATIVES = {
    "tanh": lambda h: 1.0 - h * h,
    "sigmoid": lambda h: h * (1.0 - h),
    "relu": lambda h: (h > 0).astype(h.dtype),
}


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


def run(w_hh, us, h0, *, mask=None, activation: str = "tanh", reverse: bool = False, unroll: int | None = None):
    """All states of the recurrence.

    Args:
      w_hh: `[H, H]`.
      us: projected inputs `[T, ..., H]`.
      h0: `[..., H]`.
      mask: optional `[T, ...]`: where 0 (padding) the carry is frozen and the output is 0.
      activation: "tanh", "relu" or "sigmoid".
      unroll: steps per loop iteration; None: `jrnn.rnn.default_unroll` (8 on a GPU, 1 on a CPU).

    Returns:
      (hs `[T, ..., H]`, h_T `[..., H]`), equal to a `lax.scan` of `jrnn.elman.step`.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {tuple(ACTIVATIONS)}")
    return hoisted.run(linearization(activation), w_hh, None, us, h0, mask=mask, reverse=reverse, unroll=unroll)
