"""Jitted training steps: loss, grad, non-finite guard and optax update in one compiled region.

A loss function has the uniform signature

    loss_fn(params, batch, carry) -> (loss, new_carry)

where `carry` is e.g. the hidden state carried across chunks of a long text (min-char-rnn) or
None for stateless losses. The carry never carries gradient between steps: it enters each
step as a plain input and leaves it through `stop_gradient`.

Data parallelism and several processes (`make_data_parallel_step`, `batch_mesh`, `process_rows`,
`to_host`, `ProcessGroupError`) live in `jrnn.distributed`, which builds on the steps here.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import checkify

from jrnn import checks, rnn

__all__ = [   # the public API, documented in the API reference
    "make_step",
    "make_multi_step",
    "with_precision",
    "BadStepCounter",
    "NonFiniteError",
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
    its own max, and unlike a sum it cannot overflow from finite values. One float max-reduction
    per leaf is cheaper than `all(isfinite(x))` per leaf (docs/performance.md, jrnn.train).
    """
    peaks = [jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.result_type(x), jnp.inexact) and jnp.size(x)]
    return jnp.isfinite(functools.reduce(jnp.maximum, peaks)) if peaks else jnp.bool_(True)


def _check_step_args(loss_fn, optimizer) -> None:
    """`loss_fn` callable and `optimizer` an optax GradientTransformation, checked when a step is
    built: else the first call failed inside the trace ("'function' object has no attribute
    'update'" for `optax.sgd` passed uncalled)."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function (params, batch, carry) -> (loss, new_carry), got "
                        f"{type(loss_fn).__name__}")
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        hint = (f": call it first, e.g. {getattr(optimizer, '__name__', 'optax.sgd')}(learning_rate)"
                if callable(optimizer) else "")
        raise TypeError(f"optimizer must be an optax GradientTransformation (with init and update), e.g. "
                        f"optax.sgd(0.1) or jrnn.optim.sgd(0.1), got {type(optimizer).__name__} "
                        f"{getattr(optimizer, '__name__', '')}".rstrip() + hint)


def _loss_and_carry(loss_fn):
    """`loss_fn`, checked to return a pair `(loss, new_carry)` with a scalar loss when it is traced."""
    def checked(params, batch, carry):
        out = loss_fn(params, batch, carry)
        if not (isinstance(out, tuple) and len(out) == 2):
            got = (f"a {type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list)) else
                   f"an array of shape {jnp.shape(out)}" if hasattr(out, "shape") else type(out).__name__)
            raise TypeError(f"loss_fn must return a pair (loss, new_carry), got {got}; a loss without a carry "
                            f"returns (loss, None)")
        if jnp.shape(out[0]) != ():
            raise TypeError(f"loss_fn must return a scalar loss, got shape {jnp.shape(out[0])}; reduce it "
                            f"(e.g. reduction='mean')")
        return out
    return checked


def _update(loss_fn, optimizer, guard_nonfinite, params, opt_state, batch, carry):
    """The body shared by `make_step` and `make_multi_step` (not jitted on its own)."""
    (loss, new_carry), grads = jax.value_and_grad(_loss_and_carry(loss_fn), has_aux=True)(params, batch, carry)
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
    # state (finite params after a finite p + u also mean a finite update). A select per leaf,
    # not a `lax.cond`: XLA's CPU backend gives a conditional its own output buffers and copies
    # the kept params and optimizer state into them on every step (docs/performance.md).
    ok = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"]) & _all_finite((new_params, new_opt_state))
    new_params, new_opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                             (new_params, new_opt_state), (params, opt_state))
    # carry None means "start from zeros" for every jrnn model; a carry the model took as a list
    # or a plain tuple comes back in its canonical structure, the one both branches return
    old_carry = jax.tree.map(jnp.zeros_like, new_carry) if carry is None else _like(carry, new_carry)
    if old_carry is None and carry is not None:
        raise ValueError(
            f"loss_fn returned a carry {jax.tree.structure(new_carry)} with other leaves than the carry it was "
            f"given, {jax.tree.structure(carry)}: on a skipped (non-finite) step the guard keeps the carry it "
            f"was given, so loss_fn must return a carry with the same leaves and shapes as it takes (or build "
            f"the step with guard_nonfinite=False)")
    # the one masking rule of jrnn's loops (a scalar `ok` keeps or freezes every leaf); each leaf
    # in the dtype both carries promote to, as `jnp.where` would give it (freeze's select needs one
    # dtype: a carry given wider than loss_fn returns it stays wide, which make_multi_step's scan needs)
    dtypes = jax.tree.map(jnp.result_type, new_carry, old_carry)
    new_carry = rnn.freeze(ok, *(jax.tree.map(lambda x, d: x.astype(d), c, dtypes) for c in (new_carry, old_carry)))
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

    def passed(self, out):
        """Count a call whose steps were all good (known without reading `skipped`)."""
        self.counter.step += int(np.prod(np.shape(out[2]["skipped"])))
        self.counter.run = 0
        return out

    def __call__(self, out):
        skipped = out[2]["skipped"]
        if isinstance(skipped, jax.core.Tracer):
            # called inside the caller's own jit / vmap / scan: no value to count yet
            return out
        flags = np.asarray(skipped)   # waits for the step: one small device-to-host read
        if not flags.any():           # the usual call, without BadStepCounter.update's loop
            return self.passed(out)
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


def skip_guard(guard_nonfinite, max_consecutive_skips, name: str):
    """The host-side count of skipped steps of a step function built with these arguments
    (checked), as a callable `guard(out) -> out` over each call's `(params, opt_state, metrics,
    carry)`; or None: unguarded steps have no "skipped" metric, and None turns the count off.

    A building block of the steps here and of `jrnn.distributed`'s, which counts on the metrics
    it brings to the host; not part of the public API."""
    checks.boolean("guard_nonfinite", guard_nonfinite)
    if max_consecutive_skips is None:
        return None
    if isinstance(max_consecutive_skips, (bool, np.bool_)) or not isinstance(max_consecutive_skips, (int, np.integer)):
        raise TypeError(f"max_consecutive_skips must be a positive integer, or None for no limit, got "
                        f"{type(max_consecutive_skips).__name__} {max_consecutive_skips!r}")
    if max_consecutive_skips < 1:
        raise ValueError(f"max_consecutive_skips must be >= 1 (or None for no limit), got {max_consecutive_skips}")
    return _SkipGuard(int(max_consecutive_skips), name) if guard_nonfinite else None


# the bits of the one scalar a checked step returns beside its outputs, read after each call
_ALERT_SKIPPED, _ALERT_IDS = 1, 2


def _alert(err, out, guarded: bool):
    """int32 scalar, computed inside the step: `_ALERT_SKIPPED` if a step was skipped (with the
    guard), `_ALERT_IDS` if an id check failed (or, without checkify's private `_pred`, always:
    the host then asks `err.throw()` on every call, as before the flags could be read)."""
    preds = getattr(err, "_pred", None)
    if not isinstance(preds, dict):
        failed = jnp.bool_(True)
    else:
        failed = functools.reduce(jnp.logical_or, [jnp.any(p) for p in preds.values()], jnp.bool_(False))
    alert = jnp.where(failed, _ALERT_IDS, 0).astype(jnp.int32)
    if guarded:
        alert = alert | jnp.where(jnp.any(out[2]["skipped"] != 0), _ALERT_SKIPPED, 0).astype(jnp.int32)
    return alert


def jit_step(fn, donate: bool, check_ids: bool, guard: _SkipGuard | None = None):
    """`jax.jit(fn)`; with `check_ids`, checkify-ed so the id range checks that jrnn's gathers and
    losses add under a trace (`jrnn.checks`) run, and their error is raised after each call;
    with a `guard` (`skip_guard`), each call's skipped steps are counted by it. `donate` donates
    the first two arguments (params and optimizer state).

    A building block of the steps here and of `jrnn.distributed`'s; not part of the public API."""
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

    def traced_with_checks(*args, **kw):
        # jrnn's gathers and losses add their id checks only while traced inside this context
        with checks.tracing_id_checks():
            return fn(*args, **kw)

    def checked_fn(*args, **kw):
        err, out = checkify.checkify(traced_with_checks, errors=checkify.user_checks)(*args, **kw)
        return _alert(err, out, guard is not None), err, out

    checked = jax.jit(checked_fn, donate_argnums=donate_argnums)

    def call(*args, **kw):
        checks.host_ints_fit((args[2:], kw))   # batch and carry, before JAX narrows them at the jit boundary
        alert, err, out = checked(*args, **kw)
        if isinstance(alert, jax.core.Tracer):
            # called inside the caller's own jit / scan / vmap: the flags are traced values that
            # cannot be read here, so the checks drop out as under any jit (an out-of-range label
            # still gives a NaN loss, which the guard skips)
            return out
        # one scalar read per call (it waits for the step): 0 in the usual call, which then
        # runs no more Python; `err.throw()` alone cost about 20 µs of Python per call
        alert = int(alert)
        if alert & _ALERT_IDS:
            try:
                err.throw()  # JaxRuntimeError (a ValueError) naming the range and the bad min/max
            except ValueError as e:
                # what the call returned, as on NonFiniteError: where the step donated params and
                # opt_state, their old buffers are gone, and the guard kept them in `out` (an id
                # out of range gives NaN rows, so the step was skipped)
                e.state = out
                raise
        if guard is None:
            return out
        return guard(out) if alert & _ALERT_SKIPPED else guard.passed(out)

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
    _check_step_args(loss_fn, optimizer)
    guard = skip_guard(guard_nonfinite, max_consecutive_skips, "make_step")

    def step(params, opt_state, batch, carry=None):
        return _update(loss_fn, optimizer, guard_nonfinite, params, opt_state, batch, carry)

    return jit_step(with_precision(step, precision), donate, check_ids, guard)


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
    _check_step_args(loss_fn, optimizer)
    guard = skip_guard(guard_nonfinite, max_consecutive_skips, "make_multi_step")

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

    return jit_step(with_precision(multi_step, precision), donate, check_ids, guard)


# ---- names that moved to jrnn.distributed -------------------------------------------------------

# name -> (its new qualified name, the object): filled by `moved_to` from the module the names
# moved to, when that module is imported (`jrnn.distributed` sits above this one, which may not
# import it); read by `__getattr__`, so that the old spelling keeps working for one release.
_MOVED: dict = {}


def moved_to(module: str, objects: dict) -> None:
    """Keep `jrnn.train.<name>` working for each `name: object` of `objects`, which moved to
    `module`: reading the old name (an attribute, or `from jrnn.train import name`) gives the same
    object with a DeprecationWarning naming the new one. Called by the module they moved to."""
    _MOVED.update({name: (f"{module}.{name}", obj) for name, obj in objects.items()})


def __getattr__(name: str):
    if name in _MOVED:
        new, obj = _MOVED[name]
        warnings.warn(f"jrnn.train.{name} moved to {new} (the same object); the old name is deprecated and will "
                      f"be removed in jrnn 0.3", DeprecationWarning, stacklevel=2)
        return obj
    raise AttributeError(f"module 'jrnn.train' has no attribute {name!r}")
