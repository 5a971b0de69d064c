"""Losses over per-step outputs, computed stably (log-softmax via optax), with masks and reductions.

Two forms: whole-array losses with a reduction (`softmax_cross_entropy`, ...), and per-step losses
`(outputs [..., V], targets) -> [...]`, one value per step and sequence, which `jrnn.Model.loss`
runs through every gradient strategy (`per_step` resolves a name or your own function).

Reductions: "sum" (min-char-rnn reports the sum over its 25 steps), "mean" (the char LM notebook reports the
mean per char; with a mask, the mean over unmasked steps) and "none" (per-element).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jrnn import checks

__all__ = [   # the public API, documented in the API reference
    "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "mean_squared_error",
    "reduce",
    "per_step",
    "check_targets",
]

REDUCTIONS = ("mean", "sum", "none")


def reduce(values, mask=None, reduction: str = "mean"):
    """Reduce per-element losses `[...]` under an optional 0/1 mask of the same shape.

    A concrete mask with any other value (0.5, -1, NaN) raises ValueError; a traced one is read
    as bool. "mean" is the mean over the real (mask 1) steps.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if mask is not None:
        checks.mask01(mask)
        # a mask marks steps, it does not weight them: read as bool (nonzero = real step), as
        # the recurrences that freeze their carry across padding read it, so numerator and
        # denominator count the same steps even for a traced mask that could not be checked
        mask = jnp.asarray(mask, bool)
        if mask.shape != values.shape:
            raise ValueError(f"mask shape {mask.shape} != loss shape {values.shape}")
        # where, not multiply: a NaN in a padded position must not leak into the sum
        values = jnp.where(mask, values, 0.0)
    if reduction == "none":
        return values
    total = jnp.sum(values)
    if reduction == "sum":
        return total
    # no real step (all padding, or an empty batch [T, 0]): the mean is 0, never 0 / 0 = NaN
    count = max(values.size, 1) if mask is None else jnp.maximum(jnp.sum(mask, dtype=values.dtype), 1.0)
    return total / count


def softmax_cross_entropy(logits, labels, *, mask=None, reduction: str = "mean"):
    """-log softmax(logits)[label] per element, reduced.

    Args:
      logits: `[..., V]`.
      labels: integer ids `[...]` in [0, V).
      mask: optional `[...]` 0/1 weights (padding = 0).
      reduction: "mean", "sum" or "none".
    """
    logits = jnp.asarray(logits)
    if logits.ndim < 1:
        raise ValueError(f"logits must be [..., V], got a scalar of shape {logits.shape}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be floats [..., V], got {logits.dtype}")
    checks.labels(labels, logits.shape[-1])
    if not hasattr(labels, "dtype"):   # nested lists, as numpy reads them (checked above)
        labels = np.asarray(labels)
    if jnp.shape(labels) != logits.shape[:-1]:
        raise ValueError(f"labels shape {jnp.shape(labels)} does not match logits {logits.shape[:-1]}")
    if mask is not None and np.shape(mask) == logits.shape[:-1]:
        # the first "where" of the double where: reduce's where zeroes a padded NaN/inf loss,
        # but its gradient would still be NaN * 0 = NaN through the padded logits
        logits = jnp.where(jnp.asarray(mask, bool)[..., None], logits, 0.0)
    per_step = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if isinstance(labels, jax.core.Tracer):
        # unchecked (traced) labels: -1 would read class V-1 and give a finite, wrong loss; an
        # id outside [0, V) gives NaN instead, which the training step's guard catches
        labels = jnp.asarray(labels)
        per_step = jnp.where((labels >= 0) & (labels < logits.shape[-1]), per_step, jnp.nan)
    return reduce(per_step, mask, reduction)


def sigmoid_binary_cross_entropy(logits, targets, *, mask=None, reduction: str = "mean"):
    """Binary cross-entropy of sigmoid(logits) against targets in [0, 1] of the same shape
    (logits `[...]`, e.g. `[T, B]` or `[B]`); `mask` 0/1 of that shape; `reduction` "mean" (over
    the unmasked elements), "sum" or "none" (the per-element losses `[...]`). Targets outside
    [0, 1] or of another shape are a ValueError."""
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be floats, got {logits.dtype}")
    traced = isinstance(targets, jax.core.Tracer)
    if not traced:
        t = np.asarray(targets)
        if t.dtype.kind not in "biuf":
            raise TypeError(f"targets must be numbers in [0, 1], got {t.dtype}")
        t = t.astype(np.float64)
        if t.size and not np.all((t >= 0) & (t <= 1)):  # NaN fails too
            bad = t[~((t >= 0) & (t <= 1))]
            raise ValueError(f"targets must be probabilities in [0, 1], got {bad[:5].tolist()}")
    targets = jnp.asarray(targets, logits.dtype)
    if targets.shape != logits.shape:
        raise ValueError(f"targets shape {targets.shape} != logits shape {logits.shape}")
    if mask is not None and np.shape(mask) == logits.shape:   # double where, as above
        logits = jnp.where(jnp.asarray(mask, bool), logits, 0.0)
    values = optax.sigmoid_binary_cross_entropy(logits, targets)
    if traced:
        # unchecked (traced) targets: 5.0 would give a finite, wrong loss; outside [0, 1] (NaN
        # too) the loss is NaN instead, which the training step's guard catches, as a traced
        # label out of range does in softmax_cross_entropy
        values = jnp.where((targets >= 0) & (targets <= 1), values, jnp.nan)
    return reduce(values, mask, reduction)


def mean_squared_error(outputs, targets, *, mask=None, reduction: str = "mean"):
    """Squared error per element, `(outputs - targets)^2`, of two float arrays of one shape
    (e.g. `[T, B, V]`); `mask` 0/1 of that shape; `reduction` as `reduce`."""
    outputs = jnp.asarray(outputs)
    if not jnp.issubdtype(outputs.dtype, jnp.floating):
        raise TypeError(f"outputs must be floats, got {outputs.dtype}")
    targets = jnp.asarray(targets, outputs.dtype)
    if targets.shape != outputs.shape:
        raise ValueError(f"targets shape {targets.shape} != outputs shape {outputs.shape}")
    return reduce(jnp.square(outputs - targets), mask, reduction)


def _cross_entropy_step(outputs, targets):
    return softmax_cross_entropy(outputs, targets, reduction="none")


def _bce_step(outputs, targets):
    return jnp.mean(sigmoid_binary_cross_entropy(outputs, targets, reduction="none"), -1)


def _mse_step(outputs, targets):
    return jnp.mean(mean_squared_error(outputs, targets, reduction="none"), -1)


# per-step losses by name: (outputs [..., V], targets) -> [...]; the features' losses are averaged
# over V, so the mean over steps is the mean over every element, as PyTorch's default reductions
NAMED = {
    "cross_entropy": _cross_entropy_step,          # targets: integer class ids [...]
    "binary_cross_entropy": _bce_step,             # targets: probabilities [..., V]
    "mse": _mse_step,                              # targets: floats [..., V]
}


def per_step(loss):
    """The per-step loss `(outputs [..., V], targets) -> [...]` that `loss` names: one of `NAMED`
    ("cross_entropy", "binary_cross_entropy", "mse") or your own function of that form (it is
    called on one step's `[B, V]` or on many steps' `[T, B, V]` at once, so it must treat the
    leading axes alike)."""
    if isinstance(loss, str):
        if loss not in NAMED:
            raise ValueError(f"unknown loss {loss!r}; choose one of {tuple(NAMED)} or pass a function "
                             f"(outputs_t [..., V], targets_t) -> per-step losses [...]")
        return NAMED[loss]
    if not callable(loss):
        raise TypeError(f"loss must be a name in {tuple(NAMED)} or a function (outputs_t, targets_t) -> [...], "
                        f"got {type(loss).__name__}")
    return loss


def check_targets(loss, targets, lead: tuple, num_outputs: int, dtype=jnp.float32, *, time_major: bool = True):
    """`targets` for the per-step `loss` over steps of shape `lead` (`[T, ...]`), checked on the
    host before anything is traced, and returned as an array: class ids of shape `lead` in
    [0, V) for cross-entropy; floats `lead + (V,)` for MSE and binary cross-entropy (in [0, 1]);
    for your own function, any array whose leading axes are `lead`, and the function must give
    one loss per step (checked on shapes, `jax.eval_shape`). `time_major=False`: the targets
    are batch-first `[B, T, ...]` (returned time-major), and errors name the shapes so laid out."""
    targets = targets if hasattr(targets, "dtype") else np.asarray(targets)
    if not checks.boolean("time_major", time_major):
        if np.ndim(targets) < 2:
            raise ValueError(f"time_major=False takes batch-first targets [B, T, ...], got shape "
                             f"{tuple(np.shape(targets))}")
        targets = jnp.swapaxes(targets, 0, 1) if isinstance(targets, jax.Array) else np.swapaxes(targets, 0, 1)
    given = lambda s: checks.as_given(s, time_major)   # shapes as the caller laid them out
    steps = "[T, ...]" if time_major else "[B, T, ...]"
    lead, shape = tuple(lead), tuple(np.shape(targets))
    fn = per_step(loss)
    if fn is _cross_entropy_step:
        want = lead
        checks.labels(targets, num_outputs)
    elif fn in (_bce_step, _mse_step):
        want = lead + (num_outputs,)
        if not jnp.issubdtype(targets.dtype, jnp.floating) and not jnp.issubdtype(targets.dtype, jnp.integer):
            raise TypeError(f"{loss} targets must be numbers [T, ..., V], got {targets.dtype}")
    else:
        want = None
        if shape[:len(lead)] != lead:
            raise ValueError(f"targets must start with the steps' shape {steps} = {given(lead)}, got {given(shape)}")
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(lead + (num_outputs,), dtype),
                             jax.ShapeDtypeStruct(shape, targets.dtype))
        if not hasattr(out, "shape") or tuple(out.shape) != lead:
            raise ValueError(f"loss {getattr(fn, '__name__', fn)!r} must return one loss per step, shape {lead} "
                             f"for outputs {lead + (num_outputs,)}, got {getattr(out, 'shape', type(out).__name__)}")
    if want is not None and shape != want:
        raise ValueError(f"targets must have the inputs' shape {given(want)} ({steps}"
                         f"{'' if want == lead else ' + [V]'} for loss={loss!r}), got {given(shape)}")
    if fn is _bce_step and not isinstance(targets, jax.core.Tracer):
        t = np.asarray(targets, np.float64)
        if t.size and not np.all((t >= 0) & (t <= 1)):
            raise ValueError(f"binary_cross_entropy targets must be probabilities in [0, 1], "
                             f"got {t[~((t >= 0) & (t <= 1))][:5].tolist()}")
    return targets
