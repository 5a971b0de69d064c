"""Exact Williams & Peng TBPTT(k1, k2) for any `jrnn.model.Model`, as a surrogate loss.

`sequence_loss(model, params, ..., k1, k2)` has the value of the full loss and the gradient of
TBPTT(k1, k2): the chunk is cut into blocks of k1 steps and each block's losses back-propagate
through the k2 steps ending at the block's last step (see `jrnn.bptt.truncated` and
`jrnn.bptt.cell_truncated` for the numpy oracles).

How: one plain forward computes the carry after every step (every layer, an LSTM's c too);
then each block re-runs its k2-step window of the whole stack from the stop-gradient'ed carry
just before it, all windows at once as a batch (depth k2, not T). So no JAX or PyTorch
library's k1 = k2 restriction applies here. k1 = k2 >= T is full BPTT.

Rules: integers 1 <= k1 <= k2 (numpy integers too, bools refused), checked before anything
else; k2 < k1 is refused (a block's losses could not reach its own first steps). Windows never
cross a chunk boundary: the carry entering the chunk is where every window stops (it gets
gradient only from windows that reach step 0), and between chunks a training step detaches it.
A mask freezes the carry across padding exactly as the untruncated loss does; padded steps
inside a window still count towards its k2 steps. Dropout between layers draws its keep-masks
once for the chunk (`jrnn.model.dropout_keep`, as the untruncated loss does) and the windows
index them by step, as they index the inputs: forward and windows see the same network.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import checks, losses, model as model_lib, rnn

__all__ = [   # the public API, documented in the API reference
    "sequence_loss",
    "windows",
]


def check_k(k1, k2) -> tuple[int, int]:
    """(k1, k2) as ints with 1 <= k1 <= k2, or a clear error."""
    if (k1 is None) != (k2 is None):   # was "TBPTT k2 must be an integer, got NoneType None"
        raise ValueError(f"TBPTT needs both k1 and k2, got k1={k1!r}, k2={k2!r} (k1 = k2 = T is full BPTT; "
                         f"leave both out for the untruncated loss)")
    k1, k2 = checks.integer("TBPTT k1", k1, minimum=None), checks.integer("TBPTT k2", k2, minimum=None)
    if not 1 <= k1 <= k2:
        raise ValueError(f"TBPTT needs integers 1 <= k1 <= k2, got k1={k1}, k2={k2}")
    return k1, k2


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


def sequence_loss(model, params, inputs, targets, carry=None, *, k1: int, k2: int, mask=None,
                  reduction: str = "mean", unroll: int | None = None, dropout: float = 0.0, key=None,
                  compute_dtype=None):
    """Cross-entropy whose gradient is TBPTT(k1, k2).

    Args:
      model: a `jrnn.model.Model` (any cell, any depth).
      inputs: token ids `[T, ...]` or features `[T, ..., D]`; targets: ids `[T, ...]`, same T.
      carry: initial carry (zeros if None).
      mask: optional `[T, ...]`, 1 = real step.
      dropout: the dropout rate between layers, masks drawn as the untruncated loss draws them.
      key: the PRNG key of those masks.

    Returns:
      (loss, final carry): the loss value equals the untruncated loss, the carry the one
      after the last real step of each sequence.
    """
    k1, k2 = check_k(k1, k2)
    model_lib.check_causal(model, "TBPTT (k1, k2)")
    rnn.check_dropout(dropout, key)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"TBPTT loss supports reductions 'mean' and 'sum', got {reduction!r}")
    layers = model_lib.layer_params(model, params)
    rnn.check_input_array(model.input_size, inputs)
    batch = model_lib.batch_shape(model, inputs)
    targets = model_lib.check_targets(inputs, targets, batch)
    T = np.shape(inputs)[0]
    if k1 >= T and k2 >= T:  # one window over the whole chunk: plain BPTT
        return model_lib.sequence_loss(model, params, inputs, targets, carry, mask=mask, reduction=reduction,
                                       unroll=unroll, dropout=dropout, key=key, compute_dtype=compute_dtype)
    checks.labels(targets, model.output_size)
    p, layers, c0, inputs = model_lib._prepared(model, params, layers, inputs, carry, batch, compute_dtype)
    inputs = rnn.float_inputs(inputs, layers, c0)
    m = jnp.ones((T, *batch), bool) if mask is None else model_lib.check_mask(mask, (T, *batch))
    if jnp.issubdtype(inputs.dtype, jnp.floating):  # "double where": NaN padding never reaches a gradient
        inputs = jnp.where(m[..., None], inputs, 0.0)

    keep = model_lib.dropout_keep(model, dropout, key, T, batch)          # [T, ..., H] per layer > 0

    def body(c, x):
        x_t, m_t, keep_t = x
        new, _ = model_lib._stack_step(model.cell, layers, c, x_t, keep_t, dropout)
        c = model_lib._freeze(m_t, new, c)
        return c, c

    # 1) the carry after every step, detached: the windows' starting points
    final, cs = jax.lax.scan(body, c0, (inputs, m, keep), unroll=rnn.resolve_unroll(unroll, T))
    cs = jax.lax.stop_gradient(cs)
    # before[t] is the carry entering step t; before[0] = c0 keeps its gradient (windows that
    # reach step 0 feed dL/dcarry0)
    before = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), c0, cs)
    times, in_block = windows(T, k1, k2)
    start = np.maximum(times[0], 0)                                        # [NB]
    carry_w = jax.tree.map(lambda a: a[start], before)                     # [NB, ..., H] per leaf
    idx = np.maximum(times, 0)
    xs_w, ys_w = inputs[idx], jnp.asarray(targets)[idx]                    # [k2, NB, ...]
    keep_w = jax.tree.map(lambda a: a[idx], keep)                          # the same steps' masks
    ok = m[idx] & jnp.asarray(times >= 0).reshape(times.shape + (1,) * len(batch))

    # 2) every block's window at once: k2 steps of the stack on a batch of NB windows
    def window(c, x):
        x_t, ok_t, keep_t = x
        new, h = model_lib._stack_step(model.cell, layers, c, x_t, keep_t, dropout)
        return model_lib._freeze(ok_t, new, c), h

    _, hw = jax.lax.scan(window, carry_w, (xs_w, ok, keep_w), unroll=rnn.resolve_unroll(unroll, k2))      # [k2, NB, ..., H]
    per_step = losses.softmax_cross_entropy(model_lib.readout(p, hw).astype(jnp.result_type(params.w_hy)),
                                            ys_w, reduction="none")
    weight = ok & jnp.asarray(in_block).reshape(in_block.shape + (1,) * len(batch))
    total = jnp.sum(jnp.where(weight, per_step, 0.0))
    if reduction == "sum":
        return total, final
    count = jnp.maximum(jnp.sum(m.astype(per_step.dtype)), 1.0)
    return total / count, final
