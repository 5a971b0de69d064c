"""Elman RNN: h_t = act(x_t W_xh + h_{t-1} W_hh + b_h),  y_t = h_t W_hy + b_y.

Row-vector convention (`x @ W`), so a batch `[B, D] @ [D, H]` needs no transposes. Token-id
inputs replace the seeds' one-hot matmul `W_xh @ onehot(x)` by a row gather `W_xh[x]`.

The input projection of all T steps is one gather/matmul before the scan; only the
recurrence `h_{t-1} W_hh` runs inside it. The readout is applied to all T states at once after.

This module holds the Elman cell's math (`project`, `step`, `cell`) and the seeds' model: the
flat `ElmanParams` with the seeds' init schemes, one instance of `jrnn.model.Model`
(`model(...)`). `hidden`, `apply`, `sequence_loss` & co. are that model's functions with the
carry h `[..., H]` itself instead of a one-layer tuple.
"""

from __future__ import annotations

from typing import NamedTuple

import functools

import jax
import jax.numpy as jnp

from jrnn import checks, elman_scan, hoisted, initializers, rnn
from jrnn import model as model_lib

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

ACTIVATIONS = elman_scan.ACTIVATIONS


class ElmanParams(NamedTuple):
    """Weights of an Elman RNN with a linear readout: `w_xh` [D, H] (a token id gathers its row),
    `w_hh` [H, H], `b_h` [H], `w_hy` [H, V], `b_y` [V]."""
    w_xh: jax.Array  # [D, H] input -> hidden (row x_t of a token id is gathered)
    w_hh: jax.Array  # [H, H] hidden -> hidden
    b_h: jax.Array   # [H]
    w_hy: jax.Array  # [H, V] hidden -> output
    b_y: jax.Array   # [V]


class ElmanCellParams(NamedTuple):
    """Elman recurrence without readout (one layer of a `jrnn.lm` stack): `w_xh` [D, H],
    `w_hh` [H, H], `b_h` [H]."""
    w_xh: jax.Array  # [D, H]
    w_hh: jax.Array  # [H, H]
    b_h: jax.Array   # [H]


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


def activation_fn(activation: str):
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; choose one of {tuple(ACTIVATIONS)}")


def check_inputs(params: ElmanParams, inputs) -> None:
    """Raise ValueError/TypeError for inputs the model cannot take (before anything is jitted)."""
    check_input_array(params.w_xh.shape[0], inputs)


def project(params: ElmanParams, inputs) -> jax.Array:
    """Input projection for all steps at once: `[T, ...]` ids or `[T, ..., D]` -> `[T, ..., H]`."""
    return hoisted.project(params.w_xh, params.b_h, inputs)   # checks them as check_inputs does


def step(params: ElmanParams, h, u, *, activation: str = "tanh"):
    """One recurrence step, scan-shaped: `(params, h [..., H], u [..., H]) -> (h, h)`.

    `u` is the already-projected input `x_t W_xh + b_h` (see `project`).
    """
    h = activation_fn(activation)(u + h @ params.w_hh)
    return h, h


def zeros_carry(params: ElmanParams, batch_shape=()) -> jax.Array:
    """h0 = 0 of shape `[*batch_shape, H]`."""
    # JAX's canonical dtype: a float64 numpy w_hh is float32 while x64 is off (jnp.zeros would warn)
    return jnp.zeros((*batch_shape, params.w_hh.shape[0]), jax.dtypes.canonicalize_dtype(params.w_hh.dtype))


def _scan(params, us, h0, *, mask=None, reverse=False, unroll=None, activation: str = "tanh"):
    """The Elman cell's whole-sequence loop (`jrnn.elman_scan.run`), a `Cell.scan`."""
    return elman_scan.run(params.w_hh, us, h0, mask=mask, activation=activation, reverse=reverse, unroll=unroll)


class _Activated:
    """`fn(..., activation=activation)`: the Elman cell's step or scan for one activation.

    Equal and hashable by `(fn, activation)`, and pickled as those two (`fn` is a module-level
    function): a `Model` of the Elman cell then pickles, and a pickled or deep-copied one equals
    the original and hits the same jit cache entry as a static argument. (A closure does not
    pickle; a `functools.partial` deep-copies into an unequal new object.)"""
    __slots__ = ("fn", "activation")

    def __init__(self, fn, activation: str):
        self.fn, self.activation = fn, activation

    def __call__(self, *args, **kw):
        return self.fn(*args, activation=self.activation, **kw)

    def __eq__(self, other):
        return type(other) is _Activated and (self.fn, self.activation) == (other.fn, other.activation)

    def __hash__(self):
        return hash((_Activated, self.fn, self.activation))

    def __reduce__(self):
        return _Activated, (self.fn, self.activation)

    def __repr__(self):
        return f"{self.fn.__name__}[activation={self.activation!r}]"


@functools.lru_cache(maxsize=None)
def cell(activation: str = "tanh") -> rnn.Cell:
    """The Elman recurrence as a `jrnn.rnn.Cell` (`jrnn.cells.ELMAN` is the tanh one). Cached, so
    equal activations give the same (hashable, equal) cell and jitted models compile once; its
    functions compare by value, so a pickled or deep-copied cell equals it too."""
    activation_fn(activation)
    return rnn.Cell(cell_init, project, _Activated(step, activation), zeros_carry, _Activated(_scan, activation),
                    name="elman" if activation == "tanh" else f"elman({activation})",
                    params=(ElmanCellParams, ElmanParams))


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


def hidden(params: ElmanParams, inputs, h0=None, *, mask=None, activation: str = "tanh",
           reverse: bool = False, unroll: int | None = None, remat: bool = False, method: str = "sequential"):
    """All hidden states.

    Args:
      params: ElmanParams.
      inputs: token ids `[T, ...]` (int) or features `[T, ..., D]` (float), time-major.
      h0: initial state `[..., H]`; zeros if None.
      mask: optional `[T, ...]` (1 = real step, 0 = padding). Across padding the carry is
        frozen and the output is zero, so right-padded sequences end in their real last state.
      unroll: scan steps per loop iteration, a speed knob; None: `jrnn.rnn.default_unroll`
        (8 on a GPU, 1 on a CPU).
      method: "sequential" (one lax.scan), or parallel in time: "deer", "quasi_deer", "elk",
        "quasi_elk", "auto" (see `jrnn.rnn.run`).

    Returns:
      (hs `[T, ..., H]`, h_T `[..., H]`): h_T is the state after the last processed step
      (after t = 0 when `reverse`).
    """
    hs, (h_T,) = model_lib.hidden(model_of(params, activation), params, inputs, None if h0 is None else (h0,),
                                  mask=mask, reverse=reverse, unroll=unroll, remat=remat, method=method)
    return hs, h_T


def cell_init(key, input_size, hidden_size, dtype=jnp.float32) -> ElmanCellParams:
    """Elman recurrence parameters alone (the default scheme of `init`): an `ElmanCellParams`
    with `w_xh` [input_size, H], `w_hh` [H, H], `b_h` [H]."""
    p = init(key, input_size=input_size, hidden_size=hidden_size, output_size=1, dtype=dtype)
    return ElmanCellParams(p.w_xh, p.w_hh, p.b_h)


def readout(params: ElmanParams, h) -> jax.Array:
    """Logits `[..., V]` from states `[..., H]` (`jrnn.model.readout`)."""
    return model_lib.readout(params, h)


def apply(params: ElmanParams, inputs, h0=None, **kw):
    """Many-to-many forward: (logits `[T, ..., V]`, h_T `[..., H]`). Keywords as `hidden`."""
    hs, h_T = hidden(params, inputs, h0, **kw)
    return readout(params, hs), h_T


def apply_last(params: ElmanParams, inputs, h0=None, **kw):
    """Many-to-one forward: (logits `[..., V]` of the last state, h_T `[..., H]`)."""
    _, h_T = hidden(params, inputs, h0, **kw)
    return readout(params, h_T), h_T


def apply_batch(params: ElmanParams, inputs, h0=None, **kw):
    """Batch-major many-to-many: inputs `[B, T]` or `[B, T, D]` -> (logits `[B, T, V]`, h_T `[B, H]`).

    Sequences of different lengths must be padded (`jrnn.data.pad_batch`) and the mask
    passed as `mask=` (`[B, T]`).
    """
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


def sequence_loss(params: ElmanParams, inputs, targets, h0=None, *, mask=None, reduction: str = "mean",
                  activation: str = "tanh", unroll: int | None = None, remat: bool = False, k1: int | None = None,
                  k2: int | None = None):
    """Many-to-many softmax cross-entropy of a sequence: (loss, h_T); `jrnn.model.sequence_loss`
    of the Elman model.

    Args:
      inputs: ids `[T, ...]` or features `[T, ..., D]`; targets: ids `[T, ...]`.
      mask: optional `[T, ...]` (padding = 0): ignored by the loss, carry frozen across it.
      remat: for long sequences: memory grows like sqrt(T) instead of T, for one extra forward.
      k1: TBPTT(k1, k2) gradient (`jrnn.tbptt`): the block length; the truncated-BPTT
        notebook's k-step rule is k1 = 1, k2 = k + 1.
      k2: the window each block's losses back-propagate through (k2 >= k1).
    """
    loss, (h_T,) = model_lib.sequence_loss(model_of(params, activation), params, inputs, targets,
                                           None if h0 is None else (h0,), mask=mask, reduction=reduction,
                                           unroll=unroll, remat=remat, k1=k1, k2=k2)
    return loss, h_T
