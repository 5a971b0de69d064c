"""Exact Williams & Peng TBPTT(k1, k2) for the Elman language model, as a surrogate loss.

`sequence_loss(..., k1, k2)` has the value of the full loss and the gradient of TBPTT(k1, k2):
the chunk is cut into blocks of k1 steps and each block's losses back-propagate through the k2
states ending at the block's last step (see `jrnn.bptt.truncated` for the numpy oracle).

How: one plain forward computes every state; then each block re-runs its k2-step window from
the stop-gradient'ed state just before it, all windows at once as a batch (depth k2, not T).
So no JAX or PyTorch library's k1 = k2 restriction applies here. k1 = k2 >= T is full BPTT.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import elman, losses, rnn


def windows(T: int, k1: int, k2: int):
    """Static window layout. Returns (times [k2, NB], in_block [k2, NB]) as numpy arrays.

    Window b covers steps times[:, b] = e_b - k2 + 1 ... e_b (negative = before the chunk).
    in_block marks the steps whose loss belongs to block b.
    """
    if not (isinstance(k1, int) and isinstance(k2, int) and 1 <= k1 <= k2):
        raise ValueError(f"TBPTT needs integers 1 <= k1 <= k2, got k1={k1!r}, k2={k2!r}")
    starts = np.arange(0, T, k1)
    ends = np.minimum(starts + k1, T) - 1
    times = ends[None, :] - k2 + 1 + np.arange(k2)[:, None]  # [k2, NB]
    return times, times >= starts[None, :]


def sequence_loss(params: elman.ElmanParams, inputs, targets, h0=None, *, k1: int, k2: int,
                  mask=None, reduction: str = "mean", activation: str = "tanh", unroll: int | None = None):
    """Language-model cross-entropy whose gradient is TBPTT(k1, k2).

    Args:
      inputs: token ids `[T, ...]` or features `[T, ..., D]`.
      targets: ids `[T, ...]`.
      h0: `[..., H]` (zeros if None).
      mask: optional `[T, ...]`.

    Returns:
      (loss, h_T): the loss value equals the untruncated loss; h_T `[..., H]` is the final state.
    """
    T = jnp.shape(targets)[0]
    if k1 >= T and k2 >= T:  # one window over the whole chunk: plain BPTT
        logits, h_T = elman.apply(params, inputs, h0, activation=activation, unroll=unroll)
        return losses.softmax_cross_entropy(logits, targets, mask=mask, reduction=reduction), h_T
    times, in_block = windows(T, k1, k2)
    hs, h_T = elman.hidden(params, inputs, h0, activation=activation, unroll=unroll)
    h0 = elman.zeros_carry(params, hs.shape[1:-1]) if h0 is None else h0
    hs = jax.lax.stop_gradient(hs)
    # state before window b: h_{s-1} (detached), or h0 itself when the window reaches step 0
    before = jnp.concatenate([h0[None], hs])                       # [T+1, ..., H]; before[t+1] = h_t
    start = jnp.asarray(np.maximum(times[0], 0))                   # [NB]
    carry = jnp.where((times[0] <= 0).reshape((-1,) + (1,) * (h0.ndim)), h0[None], before[start])
    us = elman.project(params, inputs)[np.maximum(times, 0)]       # [k2, NB, ..., H]
    valid = jnp.asarray(times >= 0)

    def cell(p, h, x):
        u, ok = x
        h_new, _ = elman.step(p, h, u, activation=activation)
        h = jnp.where(ok.reshape(ok.shape + (1,) * (h.ndim - 1)), h_new, h)  # padding passes h through
        return h, h

    _, hw = rnn.scan(cell, params, carry, (us, valid), unroll=unroll)   # [k2, NB, ..., H]
    per_step = losses.softmax_cross_entropy(
        elman.readout(params, hw), jnp.asarray(targets)[np.maximum(times, 0)], reduction="none")
    weight = jnp.asarray(in_block & (times >= 0), per_step.dtype).reshape(times.shape + (1,) * (per_step.ndim - 2))
    weight = jnp.broadcast_to(weight, per_step.shape)
    if mask is not None:
        weight = weight * jnp.asarray(mask, per_step.dtype)[np.maximum(times, 0)]
    total = jnp.sum(jnp.where(weight > 0, per_step, 0.0) * weight)
    if reduction == "sum":
        return total, h_T
    if reduction == "mean":
        count = jnp.size(targets) if mask is None else jnp.maximum(jnp.sum(jnp.asarray(mask, per_step.dtype)), 1.0)
        return total / count, h_T
    raise ValueError(f"TBPTT loss supports reductions 'mean' and 'sum', got {reduction!r}")
