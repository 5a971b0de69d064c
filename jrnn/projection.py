"""Every step's input projection at once, before the time loop: token ids `[T, ...]` gather
rows of the input matrix (`take_rows`), features `[T, ..., D]` are one matmul over all T*B rows
(`merged`), plus the input bias. Every built-in cell's `project` is `project(w_in, b, xs)`.

Each product runs per device under `jrnn.batch_split.batch_split` (`per_device`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrnn import batch_split, rnn

__all__ = [   # the public API, documented in the API reference
    "project",
    "take_rows",
    "merged",
]


def merged(x, w):
    """x [T, ..., K] @ w [K, N] as one 2-D matmul over all T*B rows."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[:-1] + w.shape[-1:])


def take_rows(ids, w):
    """Rows of w [V, N] for ids [T, ...], gathered over the flattened ids. An id outside [0, V)
    gives a NaN row, -1 included (`jnp.take` alone would read it as V-1): under a plain `jax.jit`,
    where jrnn's id checks cannot raise, the loss is NaN rather than quietly wrong."""
    flat = ids.reshape(-1)
    # every id outside [0, V) -> V, past the end: the gather's fill value. Both ends are tested
    # here, on the ids' own width: the gather narrows int64 indices to int32, so 2**32 + 1 would
    # otherwise read row 1. Narrow ids widen to int32 first, so that V fits.
    flat = flat.astype(jnp.promote_types(flat.dtype, jnp.int32))
    flat = jnp.where((flat >= 0) & (flat < w.shape[0]), flat, w.shape[0])
    # Rows as [N, 1, K] slices (the row axis kept, then reshaped away), not `jnp.take`'s collapsed
    # [N, K]: the gradient's scatter-add then reads the cotangent where it lies. With the axis
    # collapsed, XLA's CPU backend first copies all T*B rows into another layout
    # (docs/performance.md, "Cells").
    dn = jax.lax.GatherDimensionNumbers(offset_dims=(1, 2), collapsed_slice_dims=(), start_index_map=(0,))
    rows = jax.lax.gather(w, flat[:, None], dn, slice_sizes=(1,) + w.shape[1:], mode="fill", fill_value=jnp.nan)
    return rows.reshape(ids.shape + w.shape[1:])


def project(w, b, xs):
    """Every step's input projection at once: rows of w [D, N] for token ids [T, ...], or
    features [T, ..., D] @ w; plus b [N]. Per device under `batch_split`. Inputs are checked first
    (`jrnn.rnn.check_input_array`: no time axis, empty, ids outside [0, D), wrong feature size)."""
    rnn.check_input_array(w.shape[0], xs)
    xs = jnp.asarray(xs)
    if jnp.issubdtype(xs.dtype, jnp.integer):   # row gather == onehot(x) W
        # b goes where there are fewer rows: on the [D, N] table when D < T*B (then db is a sum
        # over D rows of the table's gradient instead of all T*B rows of the cotangent), else on
        # the gathered rows. Either way the same sums.
        if w.shape[0] < xs.size:
            return batch_split.per_device(take_rows, xs, w + b[None], row_dims=0)
        u = batch_split.per_device(take_rows, xs, w, row_dims=0)
    else:
        u = batch_split.per_device(merged, xs, w, row_dims=1, unsplit=jnp.matmul)
    return u + b.reshape((1,) * (u.ndim - 1) + b.shape)
