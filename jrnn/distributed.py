"""Data parallelism and several processes: the training steps of `jrnn.train` with the batch
split over devices (`jax.sharding`), on one host or across processes (`jax.distributed`).

`make_data_parallel_step` builds the step; `batch_mesh` makes a 1-D "data" mesh that splits a batch
evenly; across processes, `process_rows` names the rows of the global batch each process feeds,
`to_host` brings the global arrays a step returns back as numpy values, and `ProcessGroupError`
is raised instead of a hang when another process dies.

These names lived in `jrnn.train` before; `jrnn.train.<name>` still gives them, with a
DeprecationWarning, for one release.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from jrnn import batch_split, checks, train

__all__ = [   # the public API, documented in the API reference
    "make_data_parallel_step",
    "batch_mesh",
    "process_rows",
    "to_host",
    "ProcessGroupError",
]


def _check_mesh(mesh):
    """`mesh` itself if it is a `jax.sharding.Mesh` with a "data" axis and no other axis of size
    > 1 (the steps here split the batch over "data" and nothing else), else a TypeError or
    ValueError naming it and the fix."""
    if not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh with a 'data' axis (jrnn.distributed.batch_mesh(B) makes "
                        f"one), got {type(mesh).__name__}")
    if "data" not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named 'data' to split the batch over, got axes {mesh.axis_names}: "
                         f"build it with jrnn.distributed.batch_mesh(B) or jax.make_mesh((n,), ('data',))")
    others = {a: n for a, n in mesh.shape.items() if a != "data" and n > 1}
    if others:
        raise ValueError(f"mesh splits the batch over its 'data' axis only; its other axes must have size 1, got "
                         f"{others}: build a 1-D mesh over the devices to use, e.g. jrnn.distributed.batch_mesh(B)")
    return mesh


def batch_mesh(batch_size: int, devices=None):
    """A 1-D mesh, axis "data", over the most of `devices` (default: all) that split
    `batch_size` evenly: all of them when they divide it, one when B = 1. Its `size` tells
    whether there is anything to split. Across processes (`jax.distributed`) it is all devices of
    all processes, and B must be divisible by their number."""
    batch_size = checks.integer("batch_size", batch_size)
    devices = jax.devices() if devices is None else list(devices) if np.iterable(devices) else devices
    if not isinstance(devices, list) or not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError(f"devices must be a list of jax devices (e.g. jax.devices()[:2]) or None for all, got "
                        f"{type(devices).__name__}")
    if not devices:
        raise ValueError("devices is empty: a mesh needs at least one device")
    if jax.process_count() > 1:  # every process feeds its share: the mesh takes all devices or fails
        if batch_size % len(devices):
            raise ValueError(f"batch_size {batch_size} is not divisible by the {len(devices)} devices of "
                             f"{jax.process_count()} processes")
        return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                             devices=devices)
    n = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
    return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:n])


def make_data_parallel_step(loss_fn: train.LossFn, optimizer: optax.GradientTransformation, *, mesh=None,
                            batch_axis: int = 1, carry_axis: int = 0, multi_step: bool = False,
                            precision: str | None = train.DEFAULT_PRECISION, **kw):
    """`jrnn.train.make_step` whose batch is split over devices: data parallelism with `jax.sharding`.

    Every batch leaf is sharded along `batch_axis` (1 for time-major `[T, B, ...]`), the carry
    along `carry_axis` (`[B, H]`), params and optimizer state are replicated. XLA inserts the
    gradient all-reduce, so the result equals the single-device step (up to summation order).
    B must be divisible by the number of devices. With `check_ids` (default), token ids and labels
    out of range are refused before the step runs (`_ids_check`). With `multi_step=True` it wraps
    `make_multi_step` instead: batch leaves are stacked `[K, ...]` and `batch_axis` counts
    within one batch, as for `make_step`. `precision`, `guard_nonfinite` and `max_consecutive_skips`
    as for `make_step` / `make_multi_step`.

    On a multi-GPU node this needs no other change: `jax.devices()` lists the GPUs and the
    default mesh spans them all. On a multi-core CPU, one XLA device per core
    (`XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`, set before importing jax)
    lets each core run its share of the batch's sequential scan at once: XLA otherwise runs a
    loop's small per-step matmuls on one core at a time.

    Across processes (after `jax.distributed.initialize`, one process per host or per GPU) the
    same call trains on every device of every process: the default mesh spans `jax.devices()`
    of all processes, and each process passes *its share* of the batch (and of the carry it
    passes in): the rows `process_rows(mesh, B)` of the global batch, e.g. `[T, B/P]`. Params
    and optimizer state must be equal on every process (same seed; checked once when they are
    not yet global arrays); they come back replicated, the carry as a global array to pass to
    the next call, and metrics as numpy values equal on every process. Every process must make
    the same calls in the same order. If another process dies, the step raises
    `ProcessGroupError` instead of waiting.
    """
    if mesh is None:  # Auto axes: XLA's sharding propagation places the gathers and all-reduces
        mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    n = _check_mesh(mesh).devices.size
    replicated = NamedSharding(mesh, P())

    def along(axis):
        def put(x):
            if jnp.ndim(x) <= axis:
                raise ValueError(f"a batch leaf of shape {jnp.shape(x)} has no batch axis {axis} to split over "
                                 f"{n} devices")
            if x.shape[axis] % n:
                raise ValueError(f"batch dimension {x.shape[axis]} is not divisible by {n} devices")
            spec = [None] * x.ndim
            spec[axis] = "data"
            return jax.device_put(x, NamedSharding(mesh, P(*spec)))
        return put

    check_ids = checks.boolean("check_ids", kw.pop("check_ids", True))
    multi_step = checks.boolean("multi_step", multi_step)   # "no" would build the K-step
    # batch_axis >= 0: the K-step's batches are [K, ...], so it counts from one axis further in
    batch_axis = checks.integer("batch_axis", batch_axis, minimum=0)
    carry_axis = checks.integer("carry_axis", carry_axis, minimum=None)
    # counted here, on the metrics this step returns (across processes: once they are on the host)
    guard = train.skip_guard(kw.get("guard_nonfinite", True),
                             kw.pop("max_consecutive_skips", train.DEFAULT_MAX_CONSECUTIVE_SKIPS),
                             "make_data_parallel_step")
    unsplit = (train.make_multi_step if multi_step else train.make_step)(
        loss_fn, optimizer, precision=precision, check_ids=False, max_consecutive_skips=None, **kw)
    ids_check = _ids_check(loss_fn, multi_step) if check_ids else None
    leaf_axis = batch_axis + 1 if multi_step else batch_axis

    def step(params, opt_state, batch, carry=None):
        if ids_check is not None:
            ids_check(params, batch, carry)
        with batch_split.batch_split(mesh):  # traced (on its first call) knowing the batch is split
            return unsplit(params, opt_state, batch, carry)

    def sharded_step(params, opt_state, batch, carry=None):
        if check_ids:
            checks.host_ints_fit((batch, carry))   # before device_put narrows them
        params, opt_state = jax.device_put((params, opt_state), replicated)
        batch = jax.tree.map(along(leaf_axis), batch)
        carry = None if carry is None else jax.tree.map(along(carry_axis), carry)
        out = step(params, opt_state, batch, carry)
        return out if guard is None else guard(out)

    if jax.process_count() == 1:
        return sharded_step
    return _across_processes(step, mesh, leaf_axis, carry_axis, guard)


def _ids_check(loss_fn: train.LossFn, multi_step: bool):
    """`check(params, batch, carry)`: the id range checks of `loss_fn` (`jrnn.checks`) alone, as
    their own jitted program, raising as `make_step` does. Nothing reads the loss, so XLA drops
    it: what runs is a min and a max over each id array.

    The data-parallel step calls it first and traces its own program without `checkify`, whose
    rule for a `shard_map` (`jrnn.batch_split.batch_split`) returns one error per device, which
    its rule for a scan (the K-step) then cannot carry ("select cases must have the same
    shapes")."""
    def ids(params, batch, carry):
        if multi_step:   # every batch of the stack, each with the carry passed in: ids do not depend on it
            jax.lax.map(lambda b: loss_fn(params, b, carry)[0], batch)
        else:
            loss_fn(params, batch, carry)
        return jnp.zeros(())

    return train.jit_step(ids, False, True)


# ---- several processes (jax.distributed) ------------------------------------------------------

class ProcessGroupError(RuntimeError):
    """A collective with the other processes failed: one of them died or was killed."""


# What the runtime's errors say when a peer is gone: gloo's closed connection, the coordination
# service's heartbeat timeout, a barrier that cannot complete.
_PEER_GONE = ("gloo", "heartbeat", "coordination service", "connection closed", "connection reset",
              "unavailable:", "barrier")


def _reraise_peer_failure(e: Exception):
    text = str(e)
    if any(k in text.lower() for k in _PEER_GONE):
        raise ProcessGroupError(
            f"process {jax.process_index()} of {jax.process_count()}: a collective with the other processes "
            f"failed, most likely another process died or was killed (see its output); stopping. "
            f"Runtime said: {text.strip().splitlines()[0][:300]}") from e


def process_rows(mesh, batch_size: int) -> np.ndarray:
    """Indices of the global batch's rows that this process feeds to a data-parallel step over
    `mesh` (sorted, int [B / processes]; `arange(B)` with one process). Slice your global batch with them, or load
    only those rows."""
    batch_size, mesh = checks.integer("batch_size", batch_size), _check_mesh(mesh)
    if batch_size % mesh.devices.size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the mesh's {mesh.devices.size} devices")
    idx = NamedSharding(mesh, P("data")).addressable_devices_indices_map((batch_size,)).values()
    return np.concatenate(sorted((np.arange(batch_size)[i] for i in idx), key=lambda r: r[0]))


def to_host(tree):
    """A numpy copy of a pytree of arrays that may span processes (the global arrays a
    data-parallel step returns): replicated leaves are read locally; a leaf split over processes
    is gathered, a collective, so every process must make the same `to_host` calls."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(one, tree)


def _across_processes(step, mesh, leaf_axis, carry_axis, guard=None):
    """The data-parallel step of `make_data_parallel_step` when the mesh spans processes."""

    replicated = NamedSharding(mesh, P())
    n_local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

    def is_global(x):
        return isinstance(x, jax.Array) and not x.is_fully_addressable

    def along(axis):
        def put(x):
            if is_global(x):  # e.g. the carry the previous call returned
                return x
            x = np.asarray(x)
            if x.ndim <= axis or x.shape[axis] % n_local:
                raise ValueError(f"this process's share of the batch has shape {x.shape}; axis {axis} must "
                                 f"split evenly over its {n_local} devices")
            spec = [None] * x.ndim
            spec[axis] = "data"
            return jax.make_array_from_process_local_data(NamedSharding(mesh, P(*spec)), x)
        return put

    def step_across_processes(params, opt_state, batch, carry=None):
        try:
            if not all(is_global(x) for x in jax.tree.leaves((params, opt_state))):
                # host or local values: every process must hold the same ones, else the replicas
                # would silently diverge
                multihost_utils.assert_equal(to_host((params, opt_state)),
                                             "params/opt_state differ across processes")
            params, opt_state = jax.device_put((params, opt_state), replicated)
        except AssertionError as e:
            raise ValueError(f"process {jax.process_index()}: params and optimizer state must be equal on "
                             f"every process (same seed): {e}") from None
        except Exception as e:  # a peer that died before this call
            _reraise_peer_failure(e)
            raise
        checks.host_ints_fit((batch, carry))   # before they are narrowed into global arrays
        batch = jax.tree.map(along(leaf_axis), batch)
        carry = None if carry is None else jax.tree.map(along(carry_axis), carry)
        try:
            params, opt_state, metrics, carry = step(params, opt_state, batch, carry)
            metrics = to_host(metrics)  # also waits for the step: a dead peer surfaces here
        except Exception as e:
            _reraise_peer_failure(e)
            raise
        out = params, opt_state, metrics, carry
        return out if guard is None else guard(out)   # every process reads the same metrics

    return step_across_processes


# the old spellings, jrnn.train.<name>, deprecated for one release
train.moved_to(__name__, {name: globals()[name] for name in __all__})
