"""The one `lax.scan` over time that every model and cell goes through.

A step is `(params, carry, x_t) -> (carry, y_t)`; `scan` owns time-major vs batch-major, reverse
direction, `unroll` and (optional) rematerialisation, so every wrapper works with every cell.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

Step = Callable[[Any, Any, Any], tuple]


def scan(step: Step, params, carry, xs, *, reverse: bool = False, unroll: int = 1,
         time_major: bool = True, remat: bool = False):
    """Run `step` over the time axis of `xs`.

    Args:
      step: `(params, carry, x_t) -> (carry, y_t)`.
      params: pytree closed over by every step (not scanned).
      carry: initial carry pytree, e.g. h0 `[B, H]` or `[H]`.
      xs: pytree of per-step inputs, `[T, ...]` if `time_major` else `[B, T, ...]`.
      reverse: run from t = T-1 down to 0; outputs stay aligned with inputs.
      unroll: how many steps `lax.scan` unrolls per loop iteration (a speed knob only).
      remat: keep only sqrt(T) carries for the backward pass and recompute the rest
        (`checkpointed_scan`), trading one extra forward for memory on long sequences.

    Returns:
      (final carry, ys) with ys in the same major order as `xs`.
    """
    if not time_major:
        xs = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), xs)
    body = functools.partial(step, params)
    if remat:
        carry, ys = checkpointed_scan(body, carry, xs, reverse=reverse, unroll=unroll)
    else:
        carry, ys = jax.lax.scan(body, carry, xs, reverse=reverse, unroll=unroll)
    if not time_major:
        ys = jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1), ys)
    return carry, ys


def checkpointed_scan(body, carry, xs, *, reverse: bool = False, unroll: int = 1, segment: int | None = None):
    """`lax.scan` that stores only every `segment`-th carry for the backward pass.

    The T steps run as T // S segments of S steps (S = sqrt(T) by default) under
    `jax.checkpoint`, plus a plain tail of T % S steps. The backward pass recomputes each
    segment from its first carry, so the scan's saved residuals shrink from O(T) to
    O(T / S + S) carries, at the price of one extra forward pass. (Outputs `ys` are still
    `[T, ...]`: to save memory, return small per-step values such as losses.)
    """
    T = jax.tree.leaves(xs)[0].shape[0]
    S = max(1, math.isqrt(T)) if segment is None else segment
    if reverse:  # run the flipped sequence forwards, flip the outputs back
        flip = lambda t: jax.tree.map(lambda a: jnp.flip(a, 0), t)
        carry, ys = checkpointed_scan(body, carry, flip(xs), unroll=unroll, segment=S)
        return carry, flip(ys)
    n, head = T // S, (T // S) * S
    seg = jax.checkpoint(lambda c, x: jax.lax.scan(body, c, x, unroll=unroll))
    split = jax.tree.map(lambda a: a[:head].reshape((n, S) + a.shape[1:]), xs)
    carry, ys = jax.lax.scan(seg, carry, split)
    ys = jax.tree.map(lambda a: a.reshape((head,) + a.shape[2:]), ys)
    if head < T:
        carry, tail = jax.lax.scan(body, carry, jax.tree.map(lambda a: a[head:], xs), unroll=unroll)
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys, tail)
    return carry, ys
