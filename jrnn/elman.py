"""Elman RNN: h_t = act(x_t W_xh + h_{t-1} W_hh + b_h),  y_t = h_t W_hy + b_y.

Row-vector convention (`x @ W`), so a batch `[B, D] @ [D, H]` needs no transposes. Token-id
inputs replace the seeds' one-hot matmul `W_xh @ onehot(x)` by a row gather `W_xh[x]`.

The input projection of all T steps is one gather/matmul before the scan; only the
recurrence `h_{t-1} W_hh` runs inside it. The readout is applied to all T states at once after.

This module is the seeds' flat API above `jrnn.model`: the flat `ElmanParams` with the seeds'
init schemes (`init`), one instance of `jrnn.model.Model` (`model(...)`, `model_of`), and
`hidden`, `apply`, `sequence_loss` & co., that model's functions with the carry h `[..., H]`
itself instead of a one-layer tuple. The cell (its math, `cell`, `project`, `step`) is
`jrnn.cells.elman`; its names stay importable from here.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from jrnn import checks, initializers, rnn
from jrnn import model as model_lib
from jrnn.cells import elman as elman_cell
# the cell's names, importable from here as before (defined in jrnn.cells.elman)
from jrnn.cells.elman import ACTIVATIONS, ElmanCellParams, ElmanParams, activation_fn, cell, project, step  # noqa: F401

__all__ = [   # the public API, documented in the API reference
    "ElmanParams",
    "ElmanCellParams",
    "init",
    "model",
    "model_of",
    "cell",
    "cell_init",
    "project",
    "step",
    "zeros_carry",
    "hidden",
    "readout",
    "apply",
    "apply_last",
    "apply_batch",
    "sequence_loss",
]

cell_init = elman_cell.init
zeros_carry = elman_cell.zeros

check_input_array = rnn.check_input_array


def init(key, *, hidden_size: int, input_size: int | None = None, output_size: int | None = None,
         vocab_size: int | None = None, scheme: str = "default", scale: float = 0.01,
         dtype=jnp.float32) -> ElmanParams:
    """Initialise Elman parameters from a `jax.random` key (deterministic per key).

    Args:
      key: PRNG key.
      hidden_size: H.
      input_size: D (defaults to `vocab_size`).
      output_size: V (defaults to `vocab_size`).
      vocab_size: shorthand for a language model, D = V = vocab_size.
      scheme: "default" (Glorot input/output, orthogonal recurrent), "normal" (randn * scale:
        min-char-rnn 0.01, the sentiment classifier 1e-3), "uniform" (U(+-scale), binary addition with scale 1),
        "uniform_fan_in" (U(+-1/sqrt(fan_in)), the truncated-BPTT char LM), "uniform01" (U(0, 1), Rprop toy tasks).
      scale: standard deviation for "normal", half-width for "uniform".
      dtype: parameter dtype.

    Returns:
      ElmanParams with shapes w_xh [D, H], w_hh [H, H], b_h [H], w_hy [H, V], b_y [V].

    Examples:
      >>> params = jrnn.elman.init(jax.random.key(0), vocab_size=65, hidden_size=128)
    """
    input_size = vocab_size if input_size is None else input_size
    output_size = vocab_size if output_size is None else output_size
    if input_size is None or output_size is None:
        raise ValueError("give vocab_size, or both input_size and output_size")
    D = checks.integer("input_size", input_size)
    H = checks.integer("hidden_size", hidden_size)
    V = checks.integer("output_size", output_size)
    if scheme not in initializers.SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {initializers.SCHEMES}")
    k_xh, k_hh, k_hy, k_bh, k_by = jax.random.split(key, 5)
    w = lambda k, shape, fan_in, recurrent=False: initializers.weight(
        scheme, k, shape, fan_in=fan_in, recurrent=recurrent, scale=scale, dtype=dtype)
    return ElmanParams(
        w_xh=w(k_xh, (D, H), D),
        w_hh=w(k_hh, (H, H), H, recurrent=True),
        b_h=initializers.bias(scheme, k_bh, (H,), dtype=dtype),
        w_hy=w(k_hy, (H, V), H),
        b_y=initializers.bias(scheme, k_by, (V,), dtype=dtype),
    )


def check_inputs(params: ElmanParams, inputs) -> None:
    """Raise ValueError/TypeError for inputs the model cannot take (before anything is jitted)."""
    check_input_array(params.w_xh.shape[0], inputs)


def model(*, hidden_size: int, input_size: int | None = None, output_size: int | None = None,
          vocab_size: int | None = None, activation: str = "tanh") -> model_lib.Model:
    """The seeds' Elman network as a `jrnn.model.Model` (one layer; sizes as `init`). Its params
    are the flat `ElmanParams` from `init` (any scheme) or `Params` from `Model.init`."""
    input_size = vocab_size if input_size is None else input_size
    output_size = vocab_size if output_size is None else output_size
    if input_size is None or output_size is None:
        raise ValueError("give vocab_size, or both input_size and output_size")
    return model_lib.make(cell(activation), input_size=input_size, hidden_size=hidden_size, output_size=output_size)


def model_of(params: ElmanParams, activation: str = "tanh") -> model_lib.Model:
    """The `Model` that `params` (ElmanParams) belong to, sizes read off their shapes."""
    if not isinstance(params, ElmanParams):
        raise TypeError(f"jrnn.elman functions take ElmanParams, got {type(params).__name__}; for other "
                        f"models use jrnn.model (e.g. model.apply(params, ...))")
    (D, H), V = jnp.shape(params.w_xh), jnp.shape(params.w_hy)[1]
    return model_lib.Model(cell(activation), int(D), int(H), int(V), 1)


def hidden(params: ElmanParams, inputs, h0=None, *, grad=None, mask=None, lengths=None, activation: str = "tanh",
           reverse: bool = False, unroll: int | None = None, time_major: bool = True, **deprecated):
    """All hidden states: (hs `[T, ..., H]`, h_T `[..., H]`), h_T the state after the last
    processed step (after t = 0 when `reverse`).

    Args:
      params: ElmanParams.
      inputs: token ids `[T, ...]` (int) or features `[T, ..., D]` (float); `[B, T, ...]` with
        `time_major=False`.
      h0: initial state `[..., H]`; zeros if None.
      grad: `jrnn.FullBPTT()` (None), `jrnn.Remat()` or `jrnn.Parallel(...)` (`jrnn.rnn.run`).
      mask: optional 0/1 padding `[T, ...]` (0 = padding): across it the carry is frozen and the
        output is zero, so right-padded sequences end in their real last state.
      lengths: optional step counts `[...]`, the mask of right-padded sequences (steps past each
        length are padding).
      unroll: scan steps per loop iteration (None: `jrnn.rnn.default_unroll`).
      **deprecated: 0.1's `remat=`, `method=`.
    """
    grad = rnn.legacy_strategy(grad, deprecated, "jrnn.elman.hidden")
    hs, (h_T,) = model_lib.hidden(model_of(params, activation), params, inputs, None if h0 is None else (h0,),
                                  grad=grad, mask=mask, lengths=lengths, reverse=reverse, unroll=unroll,
                                  time_major=time_major)
    return hs, h_T


def readout(params: ElmanParams, h) -> jax.Array:
    """Logits `[..., V]` from states `[..., H]` (`jrnn.model.readout`)."""
    return model_lib.readout(params, h)


def apply(params: ElmanParams, inputs, h0=None, *, grad=None, mask=None, lengths=None, activation: str = "tanh",
          reverse: bool = False, unroll: int | None = None, time_major: bool = True, **deprecated):
    """Many-to-many forward: (logits `[T, ..., V]`, h_T `[..., H]`); arguments as `hidden`."""
    grad = rnn.legacy_strategy(grad, deprecated, "jrnn.elman.apply")
    hs, h_T = hidden(params, inputs, h0, grad=grad, mask=mask, lengths=lengths, activation=activation,
                     reverse=reverse, unroll=unroll, time_major=time_major)
    return readout(params, hs), h_T


def apply_last(params: ElmanParams, inputs, h0=None, *, grad=None, mask=None, lengths=None,
               activation: str = "tanh", reverse: bool = False, unroll: int | None = None, time_major: bool = True,
               **deprecated):
    """Many-to-one forward: (logits `[..., V]` of the final state h_T, h_T `[..., H]`); arguments
    as `hidden`."""
    grad = rnn.legacy_strategy(grad, deprecated, "jrnn.elman.apply_last")
    _, h_T = hidden(params, inputs, h0, grad=grad, mask=mask, lengths=lengths, activation=activation,
                    reverse=reverse, unroll=unroll, time_major=time_major)
    return readout(params, h_T), h_T


def apply_batch(params: ElmanParams, inputs, h0=None, **kw):
    """Deprecated (0.1): `apply(params, inputs, h0, time_major=False, **kw)`, batch-first
    inputs `[B, T]` or `[B, T, D]` and mask `[B, T]` -> (logits `[B, T, V]`, h_T `[B, H]`)."""
    warnings.warn("jrnn.elman.apply_batch is deprecated and will be removed in jrnn 0.3; use "
                  "jrnn.elman.apply(..., time_major=False)", DeprecationWarning, stacklevel=2)
    if isinstance(inputs, (list, tuple)):
        lengths = sorted({len(s) for s in inputs})
        if len(lengths) > 1:
            raise ValueError(f"sequences have different lengths {lengths}: pad them with "
                             f"jrnn.data.pad_batch and pass the mask")
    inputs = jnp.asarray(inputs)
    if kw.get("mask") is not None:
        kw["mask"] = jnp.swapaxes(jnp.asarray(kw["mask"]), 0, 1)
    if inputs.ndim < 2:
        raise ValueError(f"apply_batch needs [B, T] or [B, T, D] inputs, got shape {inputs.shape}")
    logits, h_T = apply(params, jnp.swapaxes(inputs, 0, 1), h0, **kw)
    return jnp.swapaxes(logits, 0, 1), h_T


def sequence_loss(params: ElmanParams, inputs, targets, h0=None, *, grad=None, loss="cross_entropy", mask=None,
                  lengths=None, reduction: str = "mean", activation: str = "tanh", unroll: int | None = None,
                  time_major: bool = True, **deprecated):
    """A per-step loss of the Elman network over a sequence: (loss, h_T); `jrnn.model.sequence_loss`
    of `model_of(params)`, which documents every argument.

    Args:
      inputs: ids `[T, ...]` or features `[T, ..., D]`; targets: class ids `[T, ...]` for the
        default softmax cross-entropy.
      grad: `jrnn.FullBPTT()` (None), `jrnn.Remat()` (memory growing like sqrt(T)),
        `jrnn.TBPTT(k1, k2)` (the truncated-BPTT notebook's k-step rule is TBPTT(1, k + 1)) or
        `jrnn.Parallel(...)`.
      mask: optional 0/1 padding `[T, ...]` (0 = padding): ignored by the loss, carry frozen across it.
      lengths: optional step counts `[...]`: steps past each length are padding, as a mask's 0s.
      **deprecated: 0.1's `remat=`, `k1=`, `k2=`.
    """
    value, (h_T,) = model_lib.sequence_loss(model_of(params, activation), params, inputs, targets,
                                            None if h0 is None else (h0,), grad=grad, loss=loss, mask=mask,
                                            lengths=lengths, reduction=reduction, unroll=unroll,
                                            time_major=time_major, **deprecated)
    return value, h_T
