"""Optimizer chains of the reproduced systems, built from optax pieces, and the Rprop
notebook's "Rprop" rule (source notebooks 000-004; see the README's "Reproduced systems").

    sentiment classifier     sgd(2e-2, clip_value=1.0)
    truncated-BPTT char LM   sgd(1e-3)
    iamtrask binary addition sgd(0.1)       (the notebook ascends on y - p; same thing)
    min-char-rnn             karpathy_adagrad(0.1)  = clip +-5, then Adagrad from a zero accumulator
    Rprop toy sequences      seed_rprop(lr)  (a per-weight gradient multiplier) or optax.rprop
"""

from __future__ import annotations

import math
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
    "adamw",
    "warmup_cosine",
    "set_learning_rate",
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


def adamw(learning_rate=1e-3, *, weight_decay=1e-4, clip_value=None, clip_norm=None, settable: bool = False,
          **kw) -> optax.GradientTransformation:
    """optax.adamw (decoupled weight decay) with optional clipping. `settable=True` builds it with
    `optax.inject_hyperparams`, so that `set_learning_rate` can change its rate between calls of
    a step (a schedule driven from outside the step, e.g. by the wall clock)."""
    lr = check_learning_rate(learning_rate)
    weight_decay = checks.real("weight_decay", weight_decay, minimum=0)
    inner = (optax.inject_hyperparams(optax.adamw) if checks.boolean("settable", settable) else optax.adamw)(
        learning_rate=lr, weight_decay=weight_decay, **kw)
    return with_clipping(inner, clip_value=clip_value, clip_norm=clip_norm)


def warmup_cosine(peak, *, warmup_steps: int, floor: float = 0.1):
    """A learning-rate schedule of two clocks, `lr(step, progress) -> float`: a linear warm-up over
    the first `warmup_steps` optimizer steps (from peak / warmup_steps), times a cosine decay from
    `peak` to `floor * peak` as `progress` (the fraction of the run's budget used, in [0, 1];
    beyond 1 it stays at the floor) goes from 0 to 1.

    The budget can be steps (progress = step / total) or wall time (progress = seconds / budget):
    a run given minutes rather than steps then ends its decay when its time is up however fast
    the machine turns out to be. Host-side floats; feed them to an optimizer built with
    `settable=True` through `set_learning_rate`.

    Examples:
      >>> lr = jrnn.optim.warmup_cosine(2e-3, warmup_steps=100, floor=0.05)
      >>> lr(0, 0.0), lr(100, 0.5), lr(5000, 1.0)      # (2e-05, 0.00105, 0.0001)
    """
    peak = check_learning_rate(peak)
    warmup_steps = checks.integer("warmup_steps", warmup_steps, minimum=0)
    floor = checks.real("floor", floor, minimum=0)
    if floor > 1:
        raise ValueError(f"floor is the final rate as a fraction of the peak, in [0, 1], got {floor}")

    def lr(step, progress) -> float:
        step = checks.integer("step", step, minimum=0)
        progress = min(1.0, checks.real("progress", progress, minimum=0))
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return peak * warm * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    return lr


_INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)   # what inject_hyperparams keeps


def set_learning_rate(opt_state, learning_rate):
    """`opt_state` with the learning rate of its `optax.inject_hyperparams` transformation (e.g.
    `adamw(..., settable=True)`, clipped or not) replaced by `learning_rate`; the optimizer's
    moments and counts are untouched. Between calls of a jitted step this is a new value of the
    same shape and dtype: no recompilation. ValueError if the state has no injected
    learning rate (an optimizer built without `settable=True`), or more than one."""
    lr = check_learning_rate(learning_rate)
    found = []

    def replace(node):
        if isinstance(node, _INJECTED):
            if "learning_rate" in node.hyperparams:
                found.append(node)
                old = node.hyperparams["learning_rate"]
                return node._replace(hyperparams={**node.hyperparams,
                                                  "learning_rate": jnp.asarray(lr, jnp.result_type(old))})
        if isinstance(node, tuple) and not hasattr(node, "_fields"):
            return tuple(replace(n) for n in node)
        return node

    new = replace(opt_state)
    if len(found) != 1:
        raise ValueError("set_learning_rate: the optimizer state holds " + ("no" if not found else f"{len(found)}")
                         + " injected learning rate(s); build the optimizer with a settable rate "
                         "(jrnn.optim.adamw(..., settable=True), or optax.inject_hyperparams)")
    return new


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
