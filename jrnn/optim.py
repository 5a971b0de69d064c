"""Optimizer chains of the reproduced systems, built from optax pieces, and the Rprop
notebook's "Rprop" rule (source notebooks 000-004; see the README's "Reproduced systems").

    sentiment classifier     sgd(2e-2, clip_value=1.0)
    truncated-BPTT char LM   sgd(1e-3)
    iamtrask binary addition sgd(0.1)       (the notebook ascends on y - p; same thing)
    min-char-rnn             karpathy_adagrad(0.1)  = clip +-5, then Adagrad from a zero accumulator
    Rprop toy sequences      seed_rprop(lr)  (a per-weight gradient multiplier) or optax.rprop
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jrnn import checks

__all__ = [   # the public API, documented in the API reference
    "sgd",
    "karpathy_adagrad",
    "adam",
    "rprop",
    "seed_rprop",
    "scale_by_seed_rprop",
    "SeedRpropState",
    "with_clipping",
    "check_learning_rate",
]


def check_learning_rate(lr) -> float:
    """A learning rate must be a positive number that float32 represents (checked before anything
    is traced).

    float32 is the parameters' default dtype and the narrowest jrnn trains in, so a rate that
    overflows it (> 3.4e38: every update would be inf) or rounds to 0 in it (< 1.4e-45: no
    update at all) is refused even for float64 parameters, which could hold it. Schedules
    (callables) are not checked here; the training step's guard skips any step whose update
    is not finite. A number is `jrnn.checks.real`'s: Python and numpy numbers and concrete 0-d
    arrays; bools (numpy's too) are refused.
    """
    if callable(lr):  # an optax schedule
        return lr
    lr = checks.real("learning rate", lr, minimum=0, strict=True)
    f32 = np.finfo(np.float32)
    if not float(f32.smallest_subnormal) <= float(lr) <= float(f32.max):
        raise ValueError(f"learning rate {lr} is not representable in float32 (the parameters' dtype): "
                         f"it must lie in [{f32.smallest_subnormal:.1e}, {float(f32.max):.3e}]")
    return lr


def with_clipping(optimizer: optax.GradientTransformation, *, clip_value: float | None = None,
                  clip_norm: float | None = None) -> optax.GradientTransformation:
    """Clip gradients elementwise to +-clip_value and/or to global norm clip_norm, then optimize.
    Each, when given, must be a finite number > 0 (None: no clipping): 0 stopped training
    silently, a negative clip_value turned descent into ascent, NaN made every update NaN."""
    if clip_value is not None:
        clip_value = checks.real("clip_value (None for no clipping)", clip_value, minimum=0, strict=True)
    if clip_norm is not None:
        clip_norm = checks.real("clip_norm (None for no clipping)", clip_norm, minimum=0, strict=True)
    parts = []
    if clip_value is not None:
        parts.append(optax.clip(clip_value))
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))
    return optax.chain(*parts, optimizer) if parts else optimizer


def sgd(learning_rate, *, clip_value=None, clip_norm=None) -> optax.GradientTransformation:
    """Plain SGD, p -= lr * g, optionally after clipping (seeds 000, 002, 003a)."""
    lr = check_learning_rate(learning_rate)
    return with_clipping(optax.sgd(lr), clip_value=clip_value, clip_norm=clip_norm)


def karpathy_adagrad(learning_rate=0.1, *, clip_value=5.0, eps=1e-8) -> optax.GradientTransformation:
    """min-char-rnn's update: clip to +-5, mem += g^2, p -= lr * g / sqrt(mem + eps).

    optax's defaults differ (accumulator starts at 0.1, eps 1e-7); min-char-rnn starts at 0.
    """
    lr = check_learning_rate(learning_rate)
    eps = checks.real("eps", eps, minimum=0)   # a negative eps can make sqrt(mem + eps) NaN
    return with_clipping(optax.adagrad(lr, initial_accumulator_value=0.0, eps=eps), clip_value=clip_value)


def adam(learning_rate=1e-3, *, clip_value=None, clip_norm=None, **kw) -> optax.GradientTransformation:
    """optax.adam with optional clipping."""
    return with_clipping(optax.adam(check_learning_rate(learning_rate), **kw),
                         clip_value=clip_value, clip_norm=clip_norm)


def rprop(learning_rate=1e-3, **kw) -> optax.GradientTransformation:
    """Riedmiller & Braun's sign-based Rprop (optax.rprop); `learning_rate` is the initial step."""
    return optax.rprop(check_learning_rate(learning_rate), **kw)


class SeedRpropState(NamedTuple):
    """State of the Rprop notebook's multiplier rule."""
    prev_grad: optax.Updates   # same tree as params; starts at ones, as the seed
    multiplier: optax.Updates  # per-weight factor in [lo, hi]; starts at ones


def scale_by_seed_rprop(eta_plus=1.2, eta_minus=0.5, lo=0.01, hi=100.0) -> optax.GradientTransformation:
    """The Rprop notebook's rule: multiplier *= 1.2 where sign(g) == sign(g_prev), else *= 0.5, clipped to
    [0.01, 100]; the update is g * multiplier. Unlike Rprop it keeps the gradient's magnitude.
    Needs 0 < eta_minus < 1 < eta_plus and 0 < lo <= hi (finite), else a ValueError."""
    eta_plus = checks.real("eta_plus", eta_plus, minimum=1, strict=True)
    eta_minus = checks.real("eta_minus", eta_minus, minimum=0, strict=True)
    lo, hi = (checks.real(name, v, minimum=0, strict=True) for name, v in (("lo", lo), ("hi", hi)))
    if eta_minus >= 1.0:
        raise ValueError(f"eta_minus must lie in (0, 1) (it shrinks the step on a sign change), got {eta_minus}")
    if lo > hi:
        raise ValueError(f"lo must be <= hi (the multiplier's bounds), got lo={lo}, hi={hi}")

    def init(params):
        ones = jax.tree.map(jnp.ones_like, params)
        return SeedRpropState(prev_grad=ones, multiplier=ones)

    def update(grads, state, params=None):
        del params
        same = jax.tree.map(lambda g, p: jnp.sign(g) == jnp.sign(p), grads, state.prev_grad)
        mult = jax.tree.map(lambda m, s: jnp.clip(jnp.where(s, m * eta_plus, m * eta_minus), lo, hi),
                            state.multiplier, same)
        updates = jax.tree.map(lambda g, m: g * m, grads, mult)
        return updates, SeedRpropState(prev_grad=grads, multiplier=mult)

    return optax.GradientTransformation(init, update)


def seed_rprop(learning_rate, **kw) -> optax.GradientTransformation:
    """The Rprop notebook's "Rprop": p -= lr * g * multiplier (see `scale_by_seed_rprop`)."""
    lr = check_learning_rate(learning_rate)
    return optax.chain(scale_by_seed_rprop(**kw), optax.scale(-lr))
