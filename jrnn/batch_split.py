"""The data-parallel tracing context: `batch_split(mesh)` says that the batch axis B of every
time-major `[T, B, ...]` array is split over the "data" axis of `mesh`, and `per_device` runs a
product over all T*B rows on each device's own rows under it.

It sits below the cells (`jrnn.cells`, `jrnn.hoisted`, `jrnn.projection`) because their products
over all rows (the input projection, the hoisted weight gradient) read it when they are traced;
`jrnn.distributed.make_data_parallel_step` sets it and `jrnn.model.readout` reads it too. It holds
no model code: only the context variable and the `shard_map` around a row-wise product.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
from jax.sharding import PartitionSpec as P

__all__ = [   # the public API, documented in the API reference
    "batch_split",
    "split_mesh",
    "per_device",
]

# The mesh whose "data" axis splits the batch (set by `batch_split`), or None: one device.
_SPLIT_MESH = contextvars.ContextVar("jrnn_split_mesh", default=None)


@contextlib.contextmanager
def batch_split(mesh):
    """Trace recurrences for a batch B of `[T, B, ...]` inputs split over the "data" axis of
    `mesh` (`jrnn.distributed.make_data_parallel_step`): each device computes its share of the weight
    gradient from its own rows (`per_device`), then one all-reduce sums them.

    It acts when a function is *traced*, in this thread: a function jitted and already traced
    outside the block (your own `jax.jit` loss, say) keeps that trace inside it and vice versa,
    and a thread started inside the block traces outside it (Python threads do not inherit
    context variables). Either form gives the same numbers up to the order of the weight
    gradient's sum; only the speed differs."""
    token = _SPLIT_MESH.set(mesh)
    try:
        yield
    finally:
        _SPLIT_MESH.reset(token)


def split_mesh():
    """The mesh of the innermost `batch_split` block being traced in, or None outside any: the
    mesh whose "data" axis splits the B of `[T, B, ...]`."""
    return _SPLIT_MESH.get()


def per_device(f, x, w, *, row_dims: int, unsplit=None):
    """`f(x, w)` for a time-major x [T, B, ...] whose B (axis 1) `batch_split` splits over devices:
    each device applies f to its own rows inside a `shard_map`, and JAX's transpose of it is the
    local weight-gradient product plus one all-reduce. Outside `batch_split`, or where x has no
    batch axis (x.ndim <= row_dims + 1, row_dims being f's trailing per-row dims) or B does not
    divide over the devices, it is `f(x, w)` (or `unsplit(x, w)`, where given): correct under any
    sharding.

    Why: letting XLA's sharding propagation place a product over all T*B rows regathers every
    device's rows (merging T with a split B), or copies the rows batch-major first, or (for a
    gather) copies the gradient's rows into another layout before its scatter.
    """
    mesh = _SPLIT_MESH.get()
    if mesh is None or x.ndim <= row_dims + 1 or x.shape[1] % mesh.shape["data"]:
        return (unsplit or f)(x, w)
    rows = P(None, "data")
    return jax.shard_map(f, mesh=mesh, in_specs=(rows, P()), out_specs=rows)(x, w)
