"""Jitted training steps: loss, grad, non-finite guard and optax update in one compiled region.

A loss function has the uniform signature

    loss_fn(params, batch, carry) -> (loss, new_carry)

where `carry` is e.g. the hidden state carried across chunks of a long text (min-char-rnn) or
None for stateless losses. The carry never carries gradient between steps: it enters each
step as a plain input and leaves it through `stop_gradient`.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import checkify, multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from jrnn import checks, hoisted

__all__ = [   # the public API, documented in the API reference
    "make_step",
    "make_multi_step",
    "make_data_parallel_step",
    "batch_mesh",
    "process_rows",
    "to_host",
    "with_precision",
    "BadStepCounter",
    "NonFiniteError",
    "ProcessGroupError",
]

LossFn = Callable[..., tuple]

# Float32 matmul precision of a training step, as `jax.default_matmul_precision` names it.
# "float32" (the default) asks every dot product of the step for full float32 (HIGHEST);
# "tensorfloat32" lets NVIDIA tensor cores round their inputs to TF32 (10-bit mantissa) for
# speed; "bfloat16" allows one bfloat16 pass; None keeps JAX's own default, which is TF32 on
# NVIDIA GPUs since Ampere. CPUs compute float32 whichever is asked.
PRECISIONS = ("float32", "tensorfloat32", "bfloat16")
DEFAULT_PRECISION = "float32"


def check_precision(precision):
    """Return `precision` if it is None or one of PRECISIONS, else raise ValueError."""
    if precision is not None and (not isinstance(precision, str) or precision not in PRECISIONS):
        raise ValueError(f"precision must be None or one of {PRECISIONS}, got {precision!r}")
    return precision


def with_precision(fn, precision):
    """`fn` traced under `jax.default_matmul_precision(precision)` (unchanged when None):
    every dot product it issues without an explicit precision gets this one."""
    if check_precision(precision) is None:
        return fn

    @functools.wraps(fn)
    def wrapped(*args, **kw):
        with jax.default_matmul_precision(precision):
            return fn(*args, **kw)
    return wrapped


def _select(ok, new, old):
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def _like(given, returned):
    """The carry `given` in the pytree structure of the carry `returned` by the loss when they
    differ only in their containers (a list for a tuple, a plain `(h, c)` for an LSTM's
    `LSTMState`): a jrnn model accepts such a carry and returns its own canonical one. Same
    leaves in the same order with the same shapes, else None (nothing to conform to)."""
    target = jax.tree.structure(returned)
    if jax.tree.structure(given) == target:
        return given
    g, r = jax.tree.leaves(given), jax.tree.leaves(returned)
    if len(g) != len(r) or any(jnp.shape(a) != jnp.shape(b) for a, b in zip(g, r)):
        return None
    return jax.tree.unflatten(target, g)


def _all_finite(tree):
    """True when every floating-point value in `tree` is finite (integer leaves are ignored).

    As the largest |x| over all leaves being finite: NaN propagates through max and abs, inf is
    its own max, and unlike a sum it cannot overflow from finite values. A float max-reduction
    per leaf measured 20 µs per step less than `all(isfinite(x))` per leaf on a small Elman step
    (1, 100, 25, 80) on the 2-core CPU (146 -> 122 µs, K-step scan, min of 7 rounds).
    """
    peaks = [jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.result_type(x), jnp.inexact) and jnp.size(x)]
    return jnp.isfinite(functools.reduce(jnp.maximum, peaks)) if peaks else jnp.bool_(True)


def _update(loss_fn, optimizer, guard_nonfinite, params, opt_state, batch, carry):
    """The body shared by `make_step` and `make_multi_step` (not jitted on its own)."""
    (loss, new_carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, carry)
    new_carry = jax.lax.stop_gradient(new_carry)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if not guard_nonfinite:
        return new_params, new_opt_state, metrics, new_carry
    # NaN/inf must never reach the parameters or the optimizer state: keep the old ones (and
    # the old carry) and report the skip. A finite loss and gradient are not enough: a learning
    # rate or an optimizer statistic can overflow on its own (sgd(1e38) with |g| ~ 10). So the
    # test covers the loss, the gradients (their global norm: any NaN/inf, or an overflowing
    # norm, makes it non-finite), and every float value of the candidate params and optimizer
    # state (finite params after a finite p + u also mean a finite update). One `cond`, not a
    # `where` per leaf: the good path then writes the new state once (a per-leaf select measured
    # 20 % of a min-char-rnn step on CPU); under `vmap` it becomes the same select.
    ok = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"]) & _all_finite((new_params, new_opt_state))
    new_params, new_opt_state = jax.lax.cond(ok, lambda: (new_params, new_opt_state), lambda: (params, opt_state))
    # carry None means "start from zeros" for every jrnn model; a carry the model took as a list
    # or a plain tuple comes back in its canonical structure, the one both branches return
    old_carry = jax.tree.map(jnp.zeros_like, new_carry) if carry is None else _like(carry, new_carry)
    if old_carry is None and carry is not None:
        raise ValueError(
            f"loss_fn returned a carry {jax.tree.structure(new_carry)} with other leaves than the carry it was "
            f"given, {jax.tree.structure(carry)}: on a skipped (non-finite) step the guard keeps the carry it "
            f"was given, so loss_fn must return a carry with the same leaves and shapes as it takes (or build "
            f"the step with guard_nonfinite=False)")
    new_carry = _select(ok, new_carry, old_carry)
    metrics["skipped"] = (~ok).astype(jnp.int32)
    return new_params, new_opt_state, metrics, new_carry


# ---- counting skipped steps --------------------------------------------------------------------

# How many consecutive skipped steps the steps of `make_step` and friends allow before raising.
DEFAULT_MAX_CONSECUTIVE_SKIPS = 10

_SKIP_CAUSES = ("Likely causes: token ids or labels out of range (optax's losses, e.g. "
                "optax.softmax_cross_entropy_with_integer_labels, do no range check and give a NaN loss for a "
                "label >= the number of classes; jrnn's own losses and gathers are checked with check_ids=True), "
                "a learning rate too large (the loss, the update or an optimizer statistic overflowed), or a "
                "NaN/inf in the batch, the carry or the loss function itself.")


class NonFiniteError(RuntimeError):
    """Too many consecutive training steps were skipped for a NaN/inf loss, gradient, new params
    or new optimizer state.

    `state`: when a step of `make_step` and friends raised it, what that call returned,
    `(params, opt_state, metrics, carry)`, whose params and optimizer state are those of the
    last good step (the ones to keep where the step donated its inputs); None from a
    `BadStepCounter`.
    """

    def __init__(self, message: str, state=None):
        super().__init__(message)
        self.state = state


class BadStepCounter:
    """Counts skipped (non-finite) steps; stops training after `limit` consecutive ones.

    Feed it `metrics["skipped"]` (a scalar or a `[K]` array from `make_multi_step`) after each
    call; it raises NonFiniteError naming the step and the likely causes, so the caller's last
    checkpoint stays the last good state. `total` counts every skipped step, `run` the current
    run of consecutive ones, `step` the steps fed so far.

    The steps of `make_step` and friends keep such a count themselves (`max_consecutive_skips`,
    default 10): build them with `max_consecutive_skips=None` where this counter does the
    counting, so that its limit is the one that stops training.
    """

    def __init__(self, limit: int = DEFAULT_MAX_CONSECUTIVE_SKIPS):
        self.limit, self.run, self.total, self.step = checks.integer("limit", limit), 0, 0, 0
        self._fix = "Raise the BadStepCounter's limit to allow longer runs of skipped steps."

    def update(self, skipped) -> None:
        flags = np.asarray(skipped).reshape(-1)
        if not flags.any():   # the usual call: nothing skipped, no loop over the K steps
            self.step += flags.size
            self.run = 0
            return
        flags = flags.tolist()
        for i, s in enumerate(flags):
            self.step += 1
            self.run = self.run + 1 if s else 0
            self.total += int(bool(s))
            if self.run >= self.limit:
                # a K-step may have trained again after the run, within the same call
                kept = ("those of the last good step" if all(flags[i:]) else
                        "those of the last good step before them (a later step of the same call was finite "
                        "again and trained)")
                raise NonFiniteError(
                    f"{self.run} consecutive steps were skipped (the last at step {self.step}): each had "
                    f"a NaN/inf loss, gradient, new params or new optimizer state. {_SKIP_CAUSES} Each skipped "
                    f"step left params, opt_state and the carry as they were, so they are still {kept}. "
                    f"{self._fix}")


class _SkipGuard:
    """The count of consecutive skipped steps of one step function (its `max_consecutive_skips`),
    read from each call's `metrics["skipped"]` on the host: a RuntimeWarning at the first skipped
    step, NonFiniteError (carrying the call's outputs) at `limit` in a row."""

    def __init__(self, limit: int, name: str):
        self.counter, self.name, self.warned = BadStepCounter(limit), name, False
        self.counter._fix = ("Build the step with a larger max_consecutive_skips to allow longer runs of skipped "
                             "steps, or max_consecutive_skips=None to turn this check off.")

    def __call__(self, out):
        skipped = out[2]["skipped"]
        if isinstance(skipped, jax.core.Tracer):
            # called inside the caller's own jit / vmap / scan: no value to count yet
            return out
        flags = np.asarray(skipped)   # waits for the step: one small device-to-host read
        if not flags.any():           # the usual call, without BadStepCounter.update's loop
            self.counter.step += flags.size
            self.counter.run = 0
            return out
        if not self.warned:
            self.warned = True
            first = self.counter.step + int(np.argmax(flags.reshape(-1))) + 1
            try:
                warnings.warn(
                    f"{self.name}: training step {first} was skipped: its loss, gradient, new params or new optimizer "
                    f"state held NaN/inf, so params, opt_state and the carry were left as they were. {_SKIP_CAUSES} "
                    f"After {self.counter.limit} consecutive skipped steps this step function raises "
                    f"jrnn.train.NonFiniteError (max_consecutive_skips={self.counter.limit}; None turns that off). "
                    f"This warning is given once per step function.", RuntimeWarning, stacklevel=3)
            except RuntimeWarning as w:
                # warnings turned into errors (-W error, pytest's filterwarnings): the call's
                # outputs go with it, as on NonFiniteError (a donating step's inputs are gone)
                w.state = out
                raise
        try:
            self.counter.update(flags)
        except NonFiniteError as e:
            self.counter.run = 0   # a caller that handles the error gets `limit` more steps
            e.state = out
            raise
        return out


def _skip_guard(guard_nonfinite, max_consecutive_skips, name: str):
    """The `_SkipGuard` of a step built with these arguments (checked), or None: unguarded steps
    have no "skipped" metric, and None turns the count off."""
    checks.boolean("guard_nonfinite", guard_nonfinite)
    if max_consecutive_skips is None:
        return None
    if isinstance(max_consecutive_skips, (bool, np.bool_)) or not isinstance(max_consecutive_skips, (int, np.integer)):
        raise TypeError(f"max_consecutive_skips must be a positive integer, or None for no limit, got "
                        f"{type(max_consecutive_skips).__name__} {max_consecutive_skips!r}")
    if max_consecutive_skips < 1:
        raise ValueError(f"max_consecutive_skips must be >= 1 (or None for no limit), got {max_consecutive_skips}")
    return _SkipGuard(int(max_consecutive_skips), name) if guard_nonfinite else None


def _jit(fn, donate: bool, check_ids: bool, guard: _SkipGuard | None = None):
    """`jax.jit(fn)`; with `check_ids`, checkify-ed so the id range checks that jrnn's gathers and
    losses add under a trace (`jrnn.checks`) run, and their error is raised after each call;
    with a `guard`, each call's skipped steps are counted by it."""
    # bools only: donate="no" would donate, and check_ids=0 or "False" read as a truth value
    donate, check_ids = checks.boolean("donate", donate), checks.boolean("check_ids", check_ids)
    donate_argnums = (0, 1) if donate else ()
    if not check_ids:
        jitted = jax.jit(fn, donate_argnums=donate_argnums)
        if guard is None:
            return jitted

        def guarded(*args, **kw):
            return guard(jitted(*args, **kw))

        guarded._cache_size, guarded.lower = jitted._cache_size, jitted.lower
        return guarded
    checked = jax.jit(checkify.checkify(fn, errors=checkify.user_checks), donate_argnums=donate_argnums)

    def call(*args, **kw):
        checks.host_ints_fit((args[2:], kw))   # batch and carry, before JAX narrows them at the jit boundary
        err, out = checked(*args, **kw)
        # `err.throw()` alone costs ~20 us of Python per call (3-6 % of a small step on a CPU);
        # reading the error flags first costs one small device-to-host read. Without the private
        # `_pred` (another jax version), fall back to `throw`.
        preds = getattr(err, "_pred", None)
        flags = list(preds.values()) if isinstance(preds, dict) else jax.tree.leaves(out)[:1]
        if any(isinstance(f, jax.core.Tracer) for f in flags):
            # called inside the caller's own jit / scan / vmap: the flags are traced values that
            # cannot be read here, so the checks drop out as under any jit (an out-of-range label
            # still gives a NaN loss, which the guard skips)
            return out
        if not isinstance(preds, dict) or any(np.any(np.asarray(f)) for f in flags):
            try:
                err.throw()  # JaxRuntimeError (a ValueError) naming the range and the bad min/max
            except ValueError as e:
                # what the call returned, as on NonFiniteError: where the step donated params and
                # opt_state, their old buffers are gone, and the guard kept them in `out` (an id
                # out of range gives NaN rows, so the step was skipped)
                e.state = out
                raise
        return out if guard is None else guard(out)

    call._cache_size, call.lower = checked._cache_size, checked.lower
    return call


def make_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
              guard_nonfinite: bool = True, donate: bool = False, precision: str | None = DEFAULT_PRECISION,
              check_ids: bool = True, max_consecutive_skips: int | None = DEFAULT_MAX_CONSECUTIVE_SKIPS):
    """Build `step(params, opt_state, batch, carry=None) -> (params, opt_state, metrics, carry)`.

    Args:
      loss_fn: `(params, batch, carry) -> (scalar loss, new carry)`. A carry that `loss_fn`
        takes in another container than it returns (a jrnn model's list carry, an LSTM layer's
        plain `(h, c)` tuple) comes back in the structure `loss_fn` returns.
      optimizer: any optax GradientTransformation (`opt_state = optimizer.init(params)`).
      guard_nonfinite: skip (and count in `metrics["skipped"]`) steps whose loss, gradients, new
        params or new optimizer state hold a NaN/inf; params, optimizer state and carry stay as
        they were.
      max_consecutive_skips: with the guard, the step reads `metrics["skipped"]` after each call
        and raises `NonFiniteError` once this many consecutive steps were skipped (default 10),
        so a step that can never succeed (labels out of range of an optax loss, a learning rate
        that overflows) stops instead of skipping silently forever; the first skipped step
        gives a RuntimeWarning (once per step function). The error's `state` holds what the
        call returned; params and optimizer state are those of the last good step (so does the
        warning's, where warnings are raised as errors). The read
        waits for the step to finish, as the `check_ids` read does anyway; with
        `check_ids=False` it is the call's only wait (the next call is then no longer
        dispatched while this one runs). None: no count, no warning, no read (count yourself,
        e.g. with `BadStepCounter`). The count belongs to the step function, across all its
        calls. Where the step is called inside the caller's own jit, vmap or scan, its metrics
        are traced values that cannot be read, and nothing is counted: read
        `metrics["skipped"]` outside.
      donate: donate params/opt_state buffers to the update (saves memory on accelerators).
      precision: float32 matmul precision of the whole step, forward and backward: "float32"
        (default: full float32, the same arithmetic on a GPU as on a CPU), "tensorfloat32"
        (TF32 tensor cores on NVIDIA GPUs, faster for large matmuls, 10-bit mantissa),
        "bfloat16", or None for JAX's default (TF32 on recent NVIDIA GPUs). Applied with
        `jax.default_matmul_precision` while the step is traced; dot products that set their
        own precision keep it. No effect on a CPU's float32 or on float64.
      check_ids: refuse token ids and labels out of range in jrnn's gathers and losses (a
        ValueError after the call, naming the range and the bad min/max). Its `state`, as a
        `NonFiniteError`'s, holds what the call returned: with the guard the step was skipped
        (the ids gave NaN rows), so its params and optimizer state are the ones passed in, to
        keep where the step donated those.

    Returns:
      A jitted function; it compiles once per batch shape/dtype. `batch` is what `loss_fn`
      takes (for a jrnn model, e.g. `(x [T, B], y [T, B])` token ids); the carry keeps its
      shapes (`[B, H]` per layer). metrics has "loss",
      "grad_norm" (before clipping) and, when guarded, "skipped" (0 or 1).

    Examples:
      >>> step = jrnn.make_step(loss_fn, jrnn.optim.karpathy_adagrad(0.1))
      >>> params, opt_state, metrics, h = step(params, opt_state, (x, y), h)
    """
    guard = _skip_guard(guard_nonfinite, max_consecutive_skips, "make_step")

    def step(params, opt_state, batch, carry=None):
        return _update(loss_fn, optimizer, guard_nonfinite, params, opt_state, batch, carry)

    return _jit(with_precision(step, precision), donate, check_ids, guard)


def make_multi_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    guard_nonfinite: bool = True, donate: bool = False,
                    precision: str | None = DEFAULT_PRECISION, check_ids: bool = True,
                    max_consecutive_skips: int | None = DEFAULT_MAX_CONSECUTIVE_SKIPS):
    """Like `make_step`, but one call runs K optimizer steps over a stack of batches.

    `multi_step(params, opt_state, batches, carry=None)` scans over the leading axis K of
    every leaf of `batches` (`[K, ...]`), threading params, optimizer state and carry, and
    returns metrics stacked as `[K]`. For small models this removes K-1 Python dispatches.
    `precision` and `check_ids` as for `make_step`; `max_consecutive_skips` counts each of the
    K inner steps (a run of skipped steps may span calls), and the error comes after the call
    in which the run reached it.
    """
    guard = _skip_guard(guard_nonfinite, max_consecutive_skips, "make_multi_step")

    def multi_step(params, opt_state, batches, carry=None):
        if carry is not None:
            # the scan threads the carry in the structure loss_fn returns it in (a jrnn model
            # takes a list or a plain (h, c) and returns its own tuple / LSTMState): traced once,
            # for its structure only
            returned = jax.eval_shape(loss_fn, params, jax.tree.map(lambda b: b[0], batches), carry)[1]
            conformed = _like(carry, returned)
            carry = carry if conformed is None else conformed   # None: the body names the mismatch

        def body(state, batch):
            p, s, c = state
            p, s, m, new_c = _update(loss_fn, optimizer, guard_nonfinite, p, s, batch, c)
            if jax.tree.structure(new_c) != jax.tree.structure(c):
                # else lax.scan's "carry input and carry output must have the same pytree structure"
                raise ValueError(
                    f"make_multi_step threads the carry through its K steps, so loss_fn must return it as it "
                    f"takes it: given {jax.tree.structure(c)}, it returned {jax.tree.structure(new_c)}. Pass "
                    f"the first carry explicitly (a jrnn model's: model.zeros(params, (B,))), not None")
            return (p, s, new_c), m

        (params, opt_state, carry), metrics = jax.lax.scan(body, (params, opt_state, carry), batches)
        return params, opt_state, metrics, carry

    return _jit(with_precision(multi_step, precision), donate, check_ids, guard)


def batch_mesh(batch_size: int, devices=None):
    """A 1-D mesh, axis "data", over the most of `devices` (default: all) that split
    `batch_size` evenly: all of them when they divide it, one when B = 1. Its `size` tells
    whether there is anything to split. Across processes (`jax.distributed`) it is all devices of
    all processes, and B must be divisible by their number."""
    batch_size = checks.integer("batch_size", batch_size)
    devices = jax.devices() if devices is None else list(devices)
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


def make_data_parallel_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, mesh=None,
                            batch_axis: int = 1, carry_axis: int = 0, multi_step: bool = False,
                            precision: str | None = DEFAULT_PRECISION, **kw):
    """`make_step` whose batch is split over devices: data parallelism with `jax.sharding`.

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
    n = mesh.devices.size
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
    guard = _skip_guard(kw.get("guard_nonfinite", True),
                        kw.pop("max_consecutive_skips", DEFAULT_MAX_CONSECUTIVE_SKIPS), "make_data_parallel_step")
    unsplit = (make_multi_step if multi_step else make_step)(loss_fn, optimizer, precision=precision,
                                                             check_ids=False, max_consecutive_skips=None, **kw)
    ids_check = _ids_check(loss_fn, multi_step) if check_ids else None
    leaf_axis = batch_axis + 1 if multi_step else batch_axis

    def step(params, opt_state, batch, carry=None):
        if ids_check is not None:
            ids_check(params, batch, carry)
        with hoisted.batch_split(mesh):  # traced (on its first call) knowing the batch is split
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


def _ids_check(loss_fn: LossFn, multi_step: bool):
    """`check(params, batch, carry)`: the id range checks of `loss_fn` (`jrnn.checks`) alone, as
    their own jitted program, raising as `make_step` does. Nothing reads the loss, so XLA drops
    it: what runs is a min and a max over each id array.

    The data-parallel step calls it first and traces its own program without `checkify`, whose
    rule for a `shard_map` (`jrnn.hoisted.batch_split`) returns one error per device, which
    its rule for a scan (the K-step) then cannot carry (jax 0.10.2: "select cases must have
    the same shapes")."""
    def ids(params, batch, carry):
        if multi_step:   # every batch of the stack, each with the carry passed in: ids do not depend on it
            jax.lax.map(lambda b: loss_fn(params, b, carry)[0], batch)
        else:
            loss_fn(params, batch, carry)
        return jnp.zeros(())

    return _jit(ids, False, True)


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
    batch_size = checks.integer("batch_size", batch_size)
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
