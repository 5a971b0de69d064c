"""Exact Williams & Peng TBPTT(k1, k2) as a gradient strategy: `Model.loss(..., grad=TBPTT(k1, k2))`.

The loss keeps the value of the full loss and takes the gradient of TBPTT(k1, k2): the chunk is
cut into blocks of k1 steps and each block's losses back-propagate through the k2 steps ending
at the block's last step (`jrnn.bptt.truncated` and `jrnn.bptt.cell_truncated` are the numpy
oracles).

How (`truncated_loss`): one plain forward computes the carry after every step (every layer, an
LSTM's c too); then each block re-runs its k2-step window of the whole stack from the
stop-gradient'ed carry just before it, all windows at once as a batch (depth k2, not T). So no
k1 = k2 restriction applies. k1 = k2 >= T is full BPTT. Both passes go through the model's one
step-by-step loop over the stack (`jrnn.model.stack_scan`), handed in as a function, so this
module needs no model.

Rules: integers 1 <= k1 <= k2 (numpy integers too, bools refused), checked when the value is
built; k2 < k1 is refused (a block's losses could not reach its own first steps). Windows never
cross a chunk boundary: the carry entering the chunk is where every window stops (it gets
gradient only from windows that reach step 0), and between chunks a training step detaches it.
A mask freezes the carry across padding exactly as the untruncated loss does; padded steps
inside a window still count towards its k2 steps. Dropout keep-masks are drawn once for the
chunk and the windows index them by step, as they index the inputs: forward and windows see
the same network.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import checks

__all__ = [   # the public API, documented in the API reference
    "TBPTT",
    "windows",
    "truncated_loss",
    "sequence_loss",
]


def check_k(k1, k2) -> tuple[int, int]:
    """(k1, k2) as ints with 1 <= k1 <= k2, or a clear error."""
    if (k1 is None) != (k2 is None):
        raise ValueError(f"TBPTT needs both k1 and k2, got k1={k1!r}, k2={k2!r} (k1 = k2 = T is full BPTT; "
                         f"leave both out for the untruncated loss)")
    k1, k2 = checks.integer("TBPTT k1", k1, minimum=None), checks.integer("TBPTT k2", k2, minimum=None)
    if not 1 <= k1 <= k2:
        raise ValueError(f"TBPTT needs integers 1 <= k1 <= k2, got k1={k1}, k2={k2}")
    return k1, k2


@dataclasses.dataclass(frozen=True)
class TBPTT:
    """Williams & Peng TBPTT(k1, k2): every k1 steps, back-propagate the block's losses through
    the last k2 steps (k2 >= k1). The truncated-BPTT notebook's k-step rule is TBPTT(1, k + 1);
    TBPTT(T, T) is full BPTT. A loss strategy: `Model.loss` takes it, a bare layer does not.
    Needs a causal model (not bidirectional)."""
    k1: int
    k2: int

    def __post_init__(self):
        k1, k2 = check_k(self.k1, self.k2)
        object.__setattr__(self, "k1", k1)
        object.__setattr__(self, "k2", k2)


def windows(T: int, k1: int, k2: int):
    """Static window layout. Returns (times [k2, NB], in_block [k2, NB]) as numpy arrays.

    Window b covers steps times[:, b] = e_b - k2 + 1 ... e_b (negative = before the chunk).
    in_block marks the steps whose loss belongs to block b.
    """
    k1, k2 = check_k(k1, k2)
    starts = np.arange(0, T, k1)
    ends = np.minimum(starts + k1, T) - 1
    times = ends[None, :] - k2 + 1 + np.arange(k2)[:, None]  # [k2, NB]
    return times, times >= starts[None, :]


def truncated_loss(run_steps, per_step_loss, c0, inputs, targets, mask, keep, *, k1: int, k2: int,
                   reduction: str = "mean"):
    """The TBPTT(k1, k2) surrogate loss over one chunk, and the final carry.

    Args:
      run_steps: `(carry, xs, mask, keep, emit) -> (final carry, emitted [T, ...])`, the stack's
        step-by-step loop (`jrnn.model.stack_scan`), with `emit(carry, h)` choosing what each
        step returns.
      per_step_loss: `(hs [k2, NB, ..., H], targets [k2, NB, ...]) -> [k2, NB, ...]`, the readout
        and the loss of each step.
      c0: the carry entering the chunk; inputs `[T, ...]`; targets `[T, ...]` (any trailing axes);
        mask bool `[T, ...]`; keep: the dropout keep-masks, a tuple of `[T, ..., H]` or None.
      reduction: "mean" (over real steps) or "sum".
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"TBPTT loss supports reductions 'mean' and 'sum', got {reduction!r}")
    T, extra = mask.shape[0], mask.ndim - 1
    # 1) the carry after every step, detached: the windows' starting points
    final, cs = run_steps(c0, inputs, mask, keep, lambda c, h: c)
    cs = jax.lax.stop_gradient(cs)
    # before[t] is the carry entering step t; before[0] = c0 keeps its gradient (windows that
    # reach step 0 feed dL/dcarry0)
    before = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), c0, cs)
    times, in_block = windows(T, k1, k2)
    start = np.maximum(times[0], 0)                                        # [NB]
    idx = np.maximum(times, 0)
    carry_w = jax.tree.map(lambda a: a[start], before)                     # [NB, ..., H] per leaf
    xs_w, ys_w = inputs[idx], jax.tree.map(lambda a: a[idx], targets)      # [k2, NB, ...]
    keep_w = jax.tree.map(lambda a: a[idx], keep)                          # the same steps' masks
    ok = mask[idx] & jnp.asarray(times >= 0).reshape(times.shape + (1,) * extra)
    # 2) every block's window at once: k2 steps of the stack on a batch of NB windows
    _, hw = run_steps(carry_w, xs_w, ok, keep_w, lambda c, h: h)           # [k2, NB, ..., H]
    per_step = per_step_loss(hw, ys_w)
    weight = ok & jnp.asarray(in_block).reshape(in_block.shape + (1,) * extra)
    total = jnp.sum(jnp.where(weight, per_step, 0.0))
    if reduction == "sum":
        return total, final
    return total / jnp.maximum(jnp.sum(mask.astype(per_step.dtype)), 1.0), final


def sequence_loss(model, params, inputs, targets, carry=None, *, k1: int, k2: int, **kw):
    """Deprecated (0.1): `model.loss(params, inputs, targets, carry, grad=TBPTT(k1, k2), **kw)`,
    inputs `[T, ...]` ids or `[T, ..., D]` features, targets `[T, ...]`."""
    warnings.warn("jrnn.tbptt.sequence_loss is deprecated and will be removed in jrnn 0.3; use "
                  f"model.loss(..., grad=jrnn.TBPTT({k1!r}, {k2!r}))", DeprecationWarning, stacklevel=2)
    grad = TBPTT(k1, k2)
    if not callable(getattr(model, "loss", None)):
        raise TypeError(f"model must be a jrnn.model.Model (e.g. jrnn.lm.model(...)), got {type(model).__name__}")
    return model.loss(params, inputs, targets, carry, grad=grad, **kw)
