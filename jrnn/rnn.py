"""The one `lax.scan` over time that every model and cell goes through.

A step is `(params, carry, x_t) -> (carry, y_t)`; `scan` owns time-major vs batch-major, reverse
direction, `unroll` and (optional) rematerialisation, so every wrapper works with every cell.
"""

from __future__ import annotations

import functools
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
      remat: rematerialise each step in the backward pass (`jax.checkpoint`) to trade compute
        for activation memory on long sequences.

    Returns:
      (final carry, ys) with ys in the same major order as `xs`.
    """
    if not time_major:
        xs = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), xs)
    body = functools.partial(step, params)
    if remat:
        body = jax.checkpoint(body)
    carry, ys = jax.lax.scan(body, carry, xs, reverse=reverse, unroll=unroll)
    if not time_major:
        ys = jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1), ys)
    return carry, ys
