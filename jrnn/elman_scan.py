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
Because the rule is an ordinary JAX function (a `custom_jvp`, not a `custom_vjp`), forward mode,
`vmap` and higher derivatives keep working. Tests compare it with the plain scan and `jrnn.bptt`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrnn import rnn

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}

# act'(z) as a function of h = act(z): no need to keep z
DERIVATIVES = {
    "tanh": lambda h: 1.0 - h * h,
    "sigmoid": lambda h: h * (1.0 - h),
    "relu": lambda h: (h > 0).astype(h.dtype),
}


def _select(m, new, old):
    return new if m is None else jax.lax.select(m, new, old)


def _carries(w, us, h0, mask, activation, reverse, unroll):
    """Carry after every step `[T, ..., H]` and the final carry (frozen where mask is 0)."""
    act = ACTIVATIONS[activation]

    def body(h, x):
        u, m = x
        h = _select(m, act(u + h @ w), h)
        return h, h

    return jax.lax.scan(body, h0, (us, mask), reverse=reverse, unroll=unroll)


def _previous(cs, h0, reverse):
    """The carry entering each step: h0 then cs shifted by one in the direction of travel."""
    if reverse:
        return jnp.concatenate([cs[1:], h0[None]])
    return jnp.concatenate([h0[None], cs[:-1]])


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6))
def _recurrence(w, us, h0, mask, activation, reverse, unroll):
    h_T, cs = _carries(w, us, h0, mask, activation, reverse, unroll)
    return (cs if mask is None else jnp.where(mask, cs, 0.0)), h_T


@_recurrence.defjvp
def _recurrence_jvp(activation, reverse, unroll, primals, tangents):
    w, us, h0, mask = primals
    dw, dus, dh0, _ = tangents
    h_T, cs = _carries(w, us, h0, mask, activation, reverse, unroll)
    a = DERIVATIVES[activation](cs)
    drive = dus + _previous(cs, h0, reverse) @ dw     # every step's dW term in one matmul

    def body(dh, x):
        a_t, d_t, m = x
        dh = _select(m, a_t * (d_t + dh @ w), dh)
        return dh, dh

    dh_T, dcs = jax.lax.scan(body, dh0, (a, drive, mask), reverse=reverse, unroll=unroll)
    if mask is not None:
        cs, dcs = jnp.where(mask, cs, 0.0), jnp.where(mask, dcs, 0.0)
    return (cs, h_T), (dcs, dh_T)


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
    if mask is not None:
        # broadcast once to [T, ..., H], so the loops' bodies hold no mask-only work for JAX to
        # split into a loop of its own when it differentiates them
        mask = jnp.broadcast_to(jnp.asarray(mask, bool)[..., None], us.shape)
        us = jnp.where(mask, us, 0.0)  # "double where": padding never feeds NaN/inf into grads
    return _recurrence(w_hh, us, h0, mask, activation, reverse, rnn.resolve_unroll(unroll, us.shape[0]))
