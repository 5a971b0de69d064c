"""A recurrent model as one value: a cell, a depth, sizes and a linear readout.

    x_t (ids [T, ...] or features [T, ..., D]) -> `layers` x cell -> h_t W_hy + b_y -> logits [T, ..., V]

`Model` is a hashable NamedTuple (its cell is a `jrnn.rnn.Cell`), so it can be closed over or
passed to `jax.jit` as a static argument; the parameters stay a plain pytree, `Params(layers,
w_hy, b_y)`, and every function here is pure. The seeds' single-layer Elman network is one
instance: `jrnn.elman.model(...)` is a `Model` of the Elman cell, and its flat `ElmanParams`
(w_xh, w_hh, b_h, w_hy, b_y) are taken as a one-layer model's params as they are.

Everything a model does is written here once, above all cells: the layer-by-layer forward
(`hidden`, `apply`: `jrnn.rnn.stack`), the step-by-step loop over the whole stack (`stack_step`,
`stack_scan`: what sampling, TBPTT windows and the rematerialised loss run on), losses, and
carries. A carry is a tuple with one cell carry per layer (an LSTM layer's is `LSTMState(h, c)`).

How gradients flow is a value, `grad=` (as diffrax's `adjoint=`): `jrnn.FullBPTT()` (default),
`jrnn.Remat()`, `jrnn.TBPTT(k1, k2)` (a loss's only) and `jrnn.Parallel(...)`. Any per-step loss
(`loss="cross_entropy"`, `"binary_cross_entropy"`, `"mse"`, or your function) goes through each.

Layout: time-major `[T, B, ...]`; `time_major=False` on every function here that takes
sequences reads (and returns) batch-first `[B, T, ...]` (`jrnn.rnn.time_major_view`).

`bidirectional=True` makes every layer a forward and a length-aware backward cell
(`rnn.bidirectional`): a layer's params and carry are `Directions(forward, backward)`, layer
l > 0 reads the `[T, ..., 2H]` concat of layer l-1 and the readout is `[2H, V]`. Such a model sees
the whole sequence at every step, so what needs a causal per-step model (`step`, `jrnn.generate`,
TBPTT, the `Remat()` loss) refuses it; `hidden`, `apply`, `apply_last` and the full-BPTT loss (masks,
dropout, `compute_dtype`, `grad=Parallel(...)`) take it.

Examples:
  >>> model = jrnn.lm.model("lstm", vocab_size=65, hidden_size=128, layers=2)
  >>> params = model.init(jax.random.key(0))
  >>> logits, carry = model.apply(params, tokens)                # tokens [T, B] ids
  >>> loss, carry = model.loss(params, tokens, targets, grad=jrnn.TBPTT(25, 50))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import batch_split, checks, initializers, losses, projection, rnn, tbptt
from jrnn.rnn import Directions  # noqa: F401  (a bidirectional layer's params and carry)

__all__ = [   # the public API, documented in the API reference
    "Model",
    "Params",
    "make",
    "check_params",
    "init",
    "zeros",
    "hidden",
    "apply",
    "apply_last",
    "readout",
    "step",
    "stack_step",
    "stack_scan",
    "sequence_loss",
    "param_count",
]


class Params(NamedTuple):
    """Stacked cell params and the readout: `layers`, one cell params pytree per layer (layer 0
    reads the inputs; a `jrnn.rnn.Directions` per layer when bidirectional), `w_hy` [H, V]
    ([2H, V] bidirectional), `b_y` [V]."""
    layers: tuple    # one cell params pytree per layer; layer 0 reads the inputs
    w_hy: jax.Array  # [H, V]
    b_y: jax.Array   # [V]


class _ModelFields(NamedTuple):
    cell: rnn.Cell
    input_size: int
    hidden_size: int
    output_size: int
    layers: int = 1
    bidirectional: bool = False


class Model(_ModelFields):
    """`layers` cells of `hidden_size` units reading `input_size` ids/features, read out to
    `output_size` logits; `bidirectional`: two cells (forward, backward) per layer, see above.
    Methods are the module functions with the model as first argument, with the same arguments.

    Shapes: token ids `[T, ...]` (int, with `input_size` the vocabulary) or features
    `[T, ..., D]`; `apply` gives logits `[T, ..., V]` and one carry per layer (`[..., H]` each);
    masks are 0/1 `[T, ...]`.

    The constructor validates (as `_replace` and unpickling do, both going through it): a
    `jrnn.rnn.Cell`, sizes and `layers` integers >= 1 (numpy integers are stored as int; bools,
    floats and 0 refused), `bidirectional` a bool. Still a NamedTuple: hashable, comparable, a
    static `jax.jit` argument."""
    __slots__ = ()

    def __new__(cls, cell, input_size, hidden_size, output_size, layers=1, bidirectional=False):
        rnn.check_cell(cell)
        return super().__new__(cls, cell, checks.integer("input_size", input_size),
                               checks.integer("hidden_size", hidden_size), checks.integer("output_size", output_size),
                               checks.integer("layers", layers), checks.boolean("bidirectional", bidirectional))

    @classmethod
    def _make(cls, iterable):
        # namedtuple's own _make (behind _replace) builds the tuple without __new__
        return cls(*iterable)

    @property
    def width(self) -> int:
        """Features each layer outputs: H, or 2H (forward and backward) if bidirectional."""
        return 2 * self.hidden_size if self.bidirectional else self.hidden_size

    def init(self, key, dtype=jnp.float32) -> Params:
        """Params from a PRNG key (`jrnn.model.init`): the cell's init per layer, a Glorot readout."""
        return init(self, key, dtype)

    def hidden(self, params, inputs, carry=None, *, grad=None, mask=None, lengths=None, reverse: bool = False,
               dropout: float = 0.0, key=None, compute_dtype=None, unroll: int | None = None,
               time_major: bool = True, **deprecated):
        """Top-layer states `[T, ..., H]` and the final carry (`jrnn.model.hidden`, which
        documents every argument)."""
        return hidden(self, params, inputs, carry, grad=grad, mask=mask, lengths=lengths, reverse=reverse,
                      dropout=dropout, key=key, compute_dtype=compute_dtype, unroll=unroll, time_major=time_major,
                      **deprecated)

    def apply(self, params, inputs, carry=None, *, grad=None, mask=None, lengths=None, reverse: bool = False,
              dropout: float = 0.0, key=None, compute_dtype=None, unroll: int | None = None,
              time_major: bool = True, **deprecated):
        """Outputs (logits) `[T, ..., V]` and the final carry (`jrnn.model.apply`; arguments as
        `jrnn.model.hidden`)."""
        return apply(self, params, inputs, carry, grad=grad, mask=mask, lengths=lengths, reverse=reverse,
                     dropout=dropout, key=key, compute_dtype=compute_dtype, unroll=unroll, time_major=time_major,
                     **deprecated)

    def apply_last(self, params, inputs, carry=None, *, grad=None, mask=None, lengths=None, reverse: bool = False,
                   dropout: float = 0.0, key=None, compute_dtype=None, unroll: int | None = None,
                   time_major: bool = True, **deprecated):
        """Many-to-one: outputs `[..., V]` at each sequence's last real step, and the final carry
        (`jrnn.model.apply_last`; arguments as `jrnn.model.hidden`)."""
        return apply_last(self, params, inputs, carry, grad=grad, mask=mask, lengths=lengths, reverse=reverse,
                          dropout=dropout, key=key, compute_dtype=compute_dtype, unroll=unroll,
                          time_major=time_major, **deprecated)

    def loss(self, params, inputs, targets, carry=None, *, grad=None, loss="cross_entropy", mask=None,
             lengths=None, reduction: str = "mean", dropout: float = 0.0, key=None, compute_dtype=None,
             unroll: int | None = None, time_major: bool = True, **deprecated):
        """(loss, final carry) of a per-step loss under a gradient strategy
        (`jrnn.model.sequence_loss`, which documents every argument)."""
        return sequence_loss(self, params, inputs, targets, carry, grad=grad, loss=loss, mask=mask,
                             lengths=lengths, reduction=reduction, dropout=dropout, key=key,
                             compute_dtype=compute_dtype, unroll=unroll, time_major=time_major, **deprecated)

    def step(self, params, carry, x_t):
        """One step of the whole stack: `(carry, x_t [...] or [..., D]) -> (carry, logits_t [..., V])`."""
        return step(self, params, carry, x_t)

    def zeros(self, params, batch_shape=()) -> tuple:
        """The zero carry for a batch of shape `batch_shape`: one cell carry per layer."""
        return zeros(self, params, batch_shape)


def make(cell: rnn.Cell, *, input_size: int, hidden_size: int, output_size: int, layers: int = 1,
         bidirectional: bool = False) -> Model:
    """A `Model`, sizes validated (as `Model(...)` validates them)."""
    return Model(cell, input_size, hidden_size, output_size, layers, bidirectional)


def init(model: Model, key, dtype=jnp.float32) -> Params:
    """Params from a PRNG key: the cell's own init per layer (per direction), Glorot readout
    `w_hy` [H, V] ([2H, V] bidirectional), zero output bias `b_y` [V]; V is `output_size`."""
    dtype = initializers.check_dtype(dtype)   # before any draw: an int dtype was JAX's `uniform` error
    keys = jax.random.split(key, model.layers + 1)
    H = model.hidden_size

    def layer(i):
        d = model.input_size if i == 0 else model.width
        if not model.bidirectional:
            return model.cell.init(keys[i], d, H, dtype)
        kf, kb = jax.random.split(keys[i])
        return Directions(model.cell.init(kf, d, H, dtype), model.cell.init(kb, d, H, dtype))

    w_hy = jax.nn.initializers.glorot_uniform()(keys[-1], (model.width, model.output_size), dtype)
    return Params(tuple(layer(i) for i in range(model.layers)), w_hy, jnp.zeros((model.output_size,), dtype))


def param_count(params) -> int:
    """The number of scalars in a params pytree (every leaf's size, summed), e.g. 329,281 for
    `jrnn.elman.init(key, vocab_size=65, hidden_size=512)`: w_xh [65, 512], w_hh [512, 512], ..."""
    return sum(int(np.size(x)) for x in jax.tree.leaves(params))


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def check_params(model: Model, params) -> tuple:
    """`params` checked against `model` before anything is traced, or a TypeError/ValueError
    naming the leaf and the fix; returns the per-layer cell params. Every Model entry point
    (`apply`, `apply_last`, `hidden`, `loss`, `step`, `zeros`) and `jrnn.generate` call it.

    - a `Params` (or, for a one-layer model, the seeds' flat `ElmanParams`) of `model.layers`
      layers, each of the model's cell (`Directions` of two if bidirectional);
    - every leaf a jax or numpy array: a None or list leaf is named, and so is a torch tensor,
      with the conversion (`jrnn.checks.array_leaves`);
    - one float dtype across all leaves (after JAX's canonicalisation: float64 numpy arrays
      are float32 with x64 off). A float64 or bfloat16 leaf among float32 ones is refused, not
      promoted: cast the params, or compute in another dtype with `compute_dtype=`;
    - every layer's pytree and leaf shapes as the cell's init makes them at the model's sizes
      (`jrnn.rnn.check_cell_params`): `layers[0].w_i has shape (64, 5), the model needs (5, 64):
      transposed? ...`; the readout `w_hy [H, V]` (`[2H, V]` bidirectional) and `b_y [V]`.

    Shapes and dtypes only, on the host; under `jit` it runs at trace time."""
    return layer_params(model, params)


def layer_params(model: Model, params) -> tuple:
    """The per-layer cell params of `params`, checked against `model` (`check_params`)."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a jrnn.model.Model (e.g. jrnn.lm.model(...)), got {type(model).__name__}")
    if not (hasattr(params, "w_hy") and hasattr(params, "b_y")) or (
            not isinstance(params, Params) and model.layers != 1):
        raise TypeError(f"params must be jrnn.model.Params (or, for a one-layer model, the seeds' jrnn.ElmanParams), "
                        f"got {type(params).__name__}")
    layers = params.layers if isinstance(params, Params) else (params,)
    if type(layers) not in (tuple, list):
        raise TypeError(f"params.layers must be a tuple with one cell params per layer, got {type(layers).__name__}")
    if len(layers) != model.layers:
        raise ValueError(f"params have {len(layers)} layers, the model has {model.layers}")
    checks.array_leaves(params, "")    # arrays only (no None, list or torch tensor), one float dtype
    want = model.cell.params
    for i, p in enumerate(layers):
        if isinstance(p, Directions) != model.bidirectional:
            raise TypeError(f"params of layer {i} are {type(p).__name__}, but this model is "
                            + ("bidirectional: each layer takes Directions(forward, backward) cell params"
                               if model.bidirectional else "unidirectional: Directions(forward, backward) "
                               "params belong to a bidirectional model (jrnn.model.make(..., bidirectional=True))"))
        for q in (p if model.bidirectional else (p,)):
            if want is not None and not isinstance(q, want):
                plain = type(q) in (dict, list, tuple)   # the right leaves, maybe, in a container of no type
                raise TypeError(f"params of layer {i} are {type(q).__name__}, but this model's cell is "
                                f"{model.cell.name!r}, which takes {_type_names(want)}: " + (
                                    f"build them as such, e.g. {_type_names(want).split(' or ')[0]}(**layer)"
                                    if plain else "params and model are of different cells"))
    for i, p in enumerate(layers):
        qs = zip(p, ("forward", "backward")) if model.bidirectional else ((p, None),)
        for q, side in qs:
            where = "" if not isinstance(params, Params) else f"layers[{i}]" + (f".{side}" if side else "")
            rnn.check_cell_params(model.cell, q, (model.input_size if i == 0 else model.width, model.hidden_size),
                                  where=where, needs="the model")
    for name, want, what in (("w_hy", (model.width, model.output_size), "[2H, V]: bidirectional" if model.bidirectional
                              else "[H, V]"), ("b_y", (model.output_size,), "[V]")):
        leaf = getattr(params, name)   # an array: checks.array_leaves saw it
        if tuple(leaf.shape) != want:
            raise ValueError(f"readout {name} has shape {tuple(leaf.shape)}, the model needs {want} ({what})")
        if not checks.is_float_dtype(leaf.dtype):
            raise TypeError(f"readout {name} must be floating, got {leaf.dtype} (cast with .astype(jnp.float32))")
    return tuple(layers)


def check_causal(model: Model, what: str) -> None:
    """ValueError if `model` is bidirectional: `what` needs a model whose step t reads only steps <= t."""
    if isinstance(model, Model) and model.bidirectional:
        raise ValueError(f"{what} needs a causal model, one step at a time; this model is bidirectional: "
                         f"its backward direction reads each sequence from its end, so it has no per-step "
                         f"forward (use apply / the full-BPTT loss, or a unidirectional model)")


def batch_shape(model: Model, inputs) -> tuple:
    """The `...` of inputs `[T, ...]` (ids) or `[T, ..., D]` (features); nested lists are read
    as numpy reads them, as `rnn.check_input_array` does (JAX's result_type refuses a list)."""
    x = inputs if hasattr(inputs, "dtype") else np.asarray(inputs)
    return tuple(x.shape[1:]) if jnp.issubdtype(x.dtype, jnp.integer) else tuple(x.shape[1:-1])


def _layer_zeros(model: Model, p, batch):
    if model.bidirectional:
        return Directions(model.cell.zeros(p.forward, batch), model.cell.zeros(p.backward, batch))
    return model.cell.zeros(p, batch)


def zeros(model: Model, params, batch_shape=()) -> tuple:
    """The zero carry: one cell carry `[*batch_shape, H]` (or a pytree of them) per layer; a
    bidirectional layer's is `Directions(forward carry, backward carry)`."""
    return tuple(_layer_zeros(model, p, tuple(batch_shape)) for p in layer_params(model, params))


def carries(model: Model, layers: tuple, batch, carry) -> tuple:
    """The initial carry for inputs of batch shape `batch`: zeros if None, else `carry` checked
    (a tuple or list with one carry per layer; arrays may be given as lists or numpy)."""
    zero = tuple(_layer_zeros(model, p, tuple(batch)) for p in layers)
    if carry is None:
        return zero
    if not isinstance(carry, (tuple, list)) or len(carry) != len(layers) or (
            isinstance(carry, tuple) and hasattr(carry, "_fields")):
        raise TypeError(f"carry must be a tuple with one carry per layer ({len(layers)}), as "
                        f"jrnn.model.zeros returns, got {type(carry).__name__}")
    return tuple(rnn.conform_carry(c, z, f"carry of layer {i}") for i, (c, z) in enumerate(zip(carry, zero)))


def _compute(params, layers, compute_dtype):
    if compute_dtype is None:
        return params, layers
    try:
        floating = jnp.issubdtype(compute_dtype, jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise TypeError(f"compute_dtype must be a float dtype (e.g. jnp.bfloat16) or None, got {compute_dtype!r}")
    cast = lambda t: jax.tree.map(lambda a: a.astype(compute_dtype), t)
    return cast(params), cast(layers)


def prepared(model, params, layers, inputs, carry, batch, compute_dtype):
    """What every path over the layers starts from: (params, layers, initial carries, inputs),
    cast to `compute_dtype` where given (float inputs only; token ids stay ids)."""
    c0 = carries(model, layers, batch, carry)
    p, layers = _compute(params, layers, compute_dtype)
    inputs = jnp.asarray(inputs)
    if compute_dtype is not None:
        c0 = jax.tree.map(lambda a: a.astype(compute_dtype), c0)
        if jnp.issubdtype(inputs.dtype, jnp.floating):
            inputs = inputs.astype(compute_dtype)
    return p, layers, c0, inputs



def readout(params, hs) -> jax.Array:
    """Logits `[..., V]` from states `[..., H]`."""
    logits = batch_split.per_device(projection.merged, hs, params.w_hy, row_dims=1, unsplit=jnp.matmul)
    return logits + params.b_y.reshape((1,) * (logits.ndim - 1) + params.b_y.shape)


def sequences(model: Model, inputs, mask=None, lengths=None, *, time_major: bool = True):
    """(inputs, mask) time-major, checked: inputs as `rnn.check_input_array` takes them; `mask`
    0/1 `[T, ...]` or `lengths` `[...]` (integers in [0, T]: the first `lengths` steps are real),
    or both, which must then agree; the mask comes back bool `[T, ...]` or None. A mask or lengths
    whose shape fits the other layout is named as such (`time_major=False`?)."""
    inputs = rnn.time_major_inputs(inputs, time_major)
    rnn.check_input_array(model.input_size, inputs)
    x = inputs if hasattr(inputs, "dtype") else np.asarray(inputs)
    T, batch = x.shape[0], batch_shape(model, x)
    other = "" if len(batch) < 1 else (" (batch-first data? pass time_major=False)" if time_major
                                       else " (time-major data? drop time_major=False)")
    if mask is not None:
        # checked as given: an error names the shapes in the caller's layout
        want = checks.as_given((T, *batch), time_major)
        if tuple(np.shape(mask)) != want:
            raise ValueError(f"mask must have shape {want} ({'[T, ...]' if time_major else '[B, T, ...]'}), got "
                             f"{tuple(np.shape(mask))}: one entry per step of the inputs" + other)
        mask = rnn.time_major_view(mask, time_major)
        checks.mask01(mask)
        mask = jnp.asarray(mask, bool)
    if lengths is not None:
        n = lengths if hasattr(lengths, "dtype") else np.asarray(lengths)
        if not jnp.issubdtype(n.dtype, jnp.integer):
            raise TypeError(f"lengths must be integer step counts [...], got {n.dtype}")
        if tuple(n.shape) != tuple(batch):
            raise ValueError(f"lengths must have the batch shape {tuple(batch)}, got {tuple(n.shape)}" + other)
        if not isinstance(n, jax.core.Tracer) and n.size and (np.min(n) < 0 or np.max(n) > T):
            raise ValueError(f"lengths must lie in [0, T = {T}], got min {np.min(n)}, max {np.max(n)}")
        # traced: a check that jrnn's training steps run (else T + 5 would read as T, -1 as 0)
        checks.traced_ids_in_range(n, T + 1, "lengths")
        from_lengths = jnp.arange(T).reshape((T,) + (1,) * len(batch)) < jnp.asarray(n)[None]
        if mask is not None:
            if isinstance(n, jax.core.Tracer) or isinstance(mask, jax.core.Tracer):
                raise ValueError("pass mask= or lengths=, not both, under a trace (they cannot be compared)")
            if not bool(jnp.all(mask == from_lengths)):
                raise ValueError("mask and lengths disagree: the mask's real steps are not the first `lengths` "
                                 "of each sequence" + other)
        mask = from_lengths
    return inputs, mask


def hidden(model: Model, params, inputs, carry=None, *, grad=None, mask=None, lengths=None, reverse: bool = False,
           dropout: float = 0.0, key=None, compute_dtype=None, unroll: int | None = None, time_major: bool = True,
           **deprecated):
    """Top-layer states `[T, ..., H]` (`[T, ..., 2H]`, forward then backward, if bidirectional)
    and the final carry (a tuple, one per layer).

    Args:
      inputs: token ids `[T, ...]` or features `[T, ..., D]` (`[B, T, ...]` with `time_major=False`).
      carry: initial carry (zeros if None), as `zeros` makes it.
      grad: how each layer runs over time: `jrnn.FullBPTT()` (None), `jrnn.Remat()` (each layer's
        scan keeps sqrt(T) carries) or `jrnn.Parallel(...)` (DEER/ELK).
      mask: optional 0/1 `[T, ...]`, 1 = real step: across padding the carry is frozen and the
        output is zero; with `reverse` (and a bidirectional model's backward direction),
        right-padded sequences are read from their own last step.
      lengths: optional `[...]` step counts, the mask of right-padded sequences (with `mask`, they
        must agree).
      reverse: run every layer from t = T-1 down (not for a bidirectional model).
      dropout: rate between layers (needs `key`), as PyTorch's nn.LSTM(dropout=...).
      compute_dtype: e.g. jnp.bfloat16 runs the cells in that dtype; params keep their own.
      unroll: steps per scan iteration (None: `jrnn.rnn.default_unroll`).
      time_major: False for batch-first inputs, mask and outputs.
      **deprecated: 0.1's `remat=` and `method=` (now `grad=`), with a DeprecationWarning.
    """
    grad = rnn.check_strategy(rnn.legacy_strategy(grad, deprecated, "jrnn.model.hidden"), what="Model.hidden")
    hs, final, _ = _hidden(model, params, inputs, carry, grad, mask, lengths, reverse, dropout, key, compute_dtype,
                           unroll, time_major)
    return rnn.time_major_view(hs, time_major), final


def _hidden(model, params, inputs, carry, grad, mask, lengths, reverse, dropout, key, compute_dtype, unroll,
            time_major):
    layers = layer_params(model, params)
    reverse = checks.boolean("reverse", reverse)   # "False" would run the layers backwards
    if model.bidirectional and reverse:
        raise ValueError("reverse does not apply to a bidirectional model: it reads both directions already")
    inputs, mask = sequences(model, inputs, mask, lengths, time_major=time_major)
    _, layers, c0, inputs = prepared(model, params, layers, inputs, carry, batch_shape(model, inputs), compute_dtype)
    hs, final = rnn.stack(model.cell, layers, inputs, c0, grad=grad, mask=mask, dropout=dropout, key=key,
                          unroll=unroll, reverse=reverse, bidirectional=model.bidirectional)
    return hs, final, mask   # time-major: the callers turn what they return


def apply(model: Model, params, inputs, carry=None, *, grad=None, mask=None, lengths=None, reverse: bool = False,
          dropout: float = 0.0, key=None, compute_dtype=None, unroll: int | None = None, time_major: bool = True,
          **deprecated):
    """Logits `[T, ..., V]` (in the params' dtype) and the final carry; arguments as `hidden`."""
    grad = rnn.check_strategy(rnn.legacy_strategy(grad, deprecated, "jrnn.model.apply"), what="Model.apply")
    hs, final, _ = _hidden(model, params, inputs, carry, grad, mask, lengths, reverse, dropout, key,
                           compute_dtype, unroll, time_major)
    p, _ = _compute(params, (), compute_dtype)
    return rnn.time_major_view(readout(p, hs).astype(jnp.result_type(params.w_hy)), time_major), final


def apply_last(model: Model, params, inputs, carry=None, *, grad=None, mask=None, lengths=None,
               reverse: bool = False, dropout: float = 0.0, key=None, compute_dtype=None,
               unroll: int | None = None, time_major: bool = True, **deprecated):
    """Many-to-one: logits `[..., V]` of the top layer's output at each sequence's last real
    step (its last mask-1 step; with `reverse`, its first), and the final carry. Bidirectional:
    the forward output at the last real step concatenated with the backward output at the first
    real step, where each direction has read the whole sequence. Left padding and holes in the
    mask are read the same way. Arguments as `hidden`."""
    grad = rnn.check_strategy(rnn.legacy_strategy(grad, deprecated, "jrnn.model.apply_last"),
                              what="Model.apply_last")
    hs, final, mask = _hidden(model, params, inputs, carry, grad, mask, lengths, reverse, dropout, key,
                              compute_dtype, unroll, time_major)
    if mask is None:
        at_first, at_last = hs[0], hs[-1]
    else:
        # the first and last mask-1 steps, wherever the padding is (right, left, holes); a
        # sequence with no real step reads its zero output at t = 0 / T-1
        first = jnp.argmax(mask, axis=0)                                          # [...]
        last_t = mask.shape[0] - 1 - jnp.argmax(jnp.flip(mask, 0), axis=0)        # [...]
        at = lambda t: jnp.take_along_axis(hs, t[None, ..., None], axis=0)[0]
        at_first, at_last = at(first), at(last_t)
    last = at_first if reverse else at_last
    if model.bidirectional:
        H = model.hidden_size
        last = jnp.concatenate([at_last[..., :H], at_first[..., H:]], -1)
    p, _ = _compute(params, (), compute_dtype)
    return readout(p, last).astype(jnp.result_type(params.w_hy)), final


def step(model: Model, params, carry, x_t):
    """One time step of the whole stack: `(carry, x_t) -> (carry, logits_t)`, x_t ids `[...]` or
    features `[..., D]`. Scan-shaped; sampling runs on it. A bidirectional model has no step
    (ValueError)."""
    check_causal(model, "step")
    layers = layer_params(model, params)
    x_t = x_t if hasattr(x_t, "dtype") else np.asarray(x_t)
    checks.host_ints_fit(x_t)   # before jnp.asarray narrows int64 ids by wrapping (2**32 + 1 -> 1)
    rnn.check_input_array(model.input_size, x_t[None])   # ids in [0, D), D features
    carry = carries(model, layers, batch_shape(model, x_t[None]), carry)
    carry, h = stack_step(model.cell, layers, carry, x_t)
    return carry, readout(params, h)


def stack_step(cell, layers, carry, x_t, keep=None, rate=0.0):
    """One step of every layer: (carry, top h_t `[..., H]`). `keep`, with dropout `rate` > 0,
    holds this step's keep-mask `[..., H]` of the inputs of each layer > 0 (None for layer 0)."""
    h, new = x_t, []
    for i, (p, c) in enumerate(zip(layers, carry)):
        if i > 0 and rate:
            h = rnn.dropped(h, keep[i], rate)
        c, h = cell.step(p, c, cell.project(p, jnp.asarray(h)[None])[0])
        new.append(c)
    return tuple(new), h


def stack_scan(cell, layers, carry, inputs, mask, keep, emit, *, extra=None, rate=0.0, unroll=None,
               remat=False):
    """The one step-by-step loop over a whole stack, which the `Remat()` loss and the TBPTT
    passes drive: each step runs every layer (`stack_step`), freezes the carry where `mask` is 0
    (`jrnn.rnn.freeze`) and returns `emit(carry, h_t, extra_t)`. inputs `[T, ...]` (float
    features zeroed across padding first, the double where), mask bool `[T, ...]`, keep per
    layer `[T, ..., H]` or None, `extra` any pytree of `[T, ...]` scanned alongside. Returns
    (final carry, emitted `[T, ...]`); `remat` keeps sqrt(T) carries for the backward pass."""
    inputs = rnn.zero_padding(inputs, mask)

    def body(_, c, x):
        x_t, m_t, keep_t, extra_t = x
        new, h = stack_step(cell, layers, c, x_t, keep_t, rate)
        c = rnn.freeze(m_t, new, c)
        return c, emit(c, h, extra_t)

    return rnn.scan(body, None, carry, (inputs, mask, keep, extra), unroll=unroll, remat=remat)


def dropout_masks(model: Model, dropout: float, key, T: int, batch) -> tuple:
    """The keep-masks of a whole chunk, drawn once from `key`: None for layer 0 and a bool
    `[T, *batch, H]` per layer > 0, as `rnn.stack` draws them (`rnn.dropout_keep`); so the plain
    loss, the `Remat()` loss and the TBPTT windows (which index them by step) drop the same units
    at the same steps. All None when `dropout` is 0."""
    return tuple(None if i == 0 or not dropout else
                 rnn.dropout_keep(key, dropout, model.layers, i, (T, *batch, model.width))
                 for i in range(model.layers))


def _legacy_loss_strategy(grad, deprecated: dict):
    """0.1's `k1=`/`k2=`/`remat=` of the loss as the strategy they stand for (DeprecationWarning)."""
    k1, k2 = deprecated.pop("k1", None), deprecated.pop("k2", None)
    if k1 is None and k2 is None:
        return rnn.legacy_strategy(grad, deprecated, "jrnn.model.sequence_loss")
    if grad is not None:
        raise TypeError("jrnn.model.sequence_loss: pass grad= or the deprecated k1=/k2=, not both")
    if deprecated.get("method") is not None:   # two strategies at once
        raise TypeError(f"jrnn.model.sequence_loss: pass the deprecated k1=/k2= (TBPTT) or method="
                        f"{deprecated['method']!r}, not both (TBPTT windows run the step-by-step stack)")
    new = tbptt.TBPTT(k1, k2) if (k1 is not None and k2 is not None) else tbptt.check_k(k1, k2)
    if deprecated.get("remat") is not None and checks.boolean("remat", deprecated["remat"]):
        raise ValueError("TBPTT (k1, k2) takes no remat: its windows already bound the backward pass "
                         "to k2 steps each; use one or the other")
    deprecated.pop("remat", None)
    rnn.legacy_strategy(None, deprecated, "jrnn.model.sequence_loss")   # unknown keywords
    rnn.warn_deprecated(f"jrnn.model.sequence_loss: k1=, k2= are deprecated and will be removed in jrnn 0.3; "
                        f"pass grad={new!r}")
    return new


def sequence_loss(model: Model, params, inputs, targets, carry=None, *, grad=None, loss="cross_entropy", mask=None,
                  lengths=None, reduction: str = "mean", dropout: float = 0.0, key=None, compute_dtype=None,
                  unroll: int | None = None, time_major: bool = True, **deprecated):
    """A per-step loss over a sequence, and the final carry: (loss, carry).

    Args:
      inputs: ids `[T, ...]` or features `[T, ..., D]` (`[B, T, ...]` with `time_major=False`).
      targets: what `loss` takes per step, `[T, ...]` leading: class ids `[T, ...]` for
        "cross_entropy", floats `[T, ..., V]` for "mse" and "binary_cross_entropy" (in [0, 1]).
      grad: the gradient strategy. `jrnn.FullBPTT()` (None); `jrnn.TBPTT(k1, k2)`: blocks of k1
        steps, each back-propagating through the k2 states ending at its last step, the value
        still the full loss (`jrnn.tbptt`); `jrnn.Remat()`: the whole stack, readout and loss in
        one scan keeping sqrt(T) carries for the backward pass (one extra forward; no
        `[T, ..., V]` logits kept); `jrnn.Parallel(...)`: every layer solved in parallel in time.
        TBPTT and Remat run the stack step by step, so a bidirectional model takes neither.
      loss: "cross_entropy" (softmax, the default), "binary_cross_entropy" (sigmoid), "mse", or a
        function `(outputs_t [..., V], targets_t) -> [...]`, one loss per step (`jrnn.losses.per_step`).
      mask: optional 0/1 padding `[T, ...]` (0 = padding): ignored by the loss, carry frozen across it.
      lengths: optional step counts `[...]`: steps past each length are padding, as a mask's 0s.
      reduction: "mean" over real steps, "sum", or "none" (per-step losses `[T, ...]`; not TBPTT).
      dropout: rate between layers (needs `key`). Its keep-masks are drawn once for the chunk
        (`dropout_masks`), so with the same key every strategy drops the same units at the same
        steps: equal values, and equal gradients where the truncation is none.
      compute_dtype: as `hidden`.
      unroll: as `hidden`.
      time_major: as `hidden` (False: batch-first inputs, targets, mask and a "none" reduction's losses).
      **deprecated: 0.1's `k1=`, `k2=`, `remat=` (now `grad=`), with a DeprecationWarning.
    """
    grad = _legacy_loss_strategy(grad, deprecated)
    grad = rnn.FullBPTT() if grad is None else grad
    if not isinstance(grad, tbptt.TBPTT):
        rnn.check_strategy(grad, what="Model.loss",
                           takes="jrnn.FullBPTT(), jrnn.Remat(), jrnn.TBPTT(k1, k2), jrnn.Parallel(...) or jrnn.Auto()")
    fn = losses.per_step(loss)
    rnn.check_dropout(dropout, key)
    if reduction not in losses.REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {losses.REDUCTIONS}")
    layers = layer_params(model, params)
    inputs, mask = sequences(model, inputs, mask, lengths, time_major=time_major)
    batch = batch_shape(model, inputs)
    T = np.shape(inputs)[0]
    targets = losses.check_targets(loss, targets, (T, *batch), model.output_size, time_major=time_major)
    if isinstance(grad, (tbptt.TBPTT, rnn.Remat)):
        check_causal(model, "TBPTT (k1, k2)" if isinstance(grad, tbptt.TBPTT)
                     else "the remat loss (grad=Remat(): a fused per-step scan)")
    if isinstance(grad, tbptt.TBPTT) and grad.k1 >= T and grad.k2 >= T:
        grad = rnn.FullBPTT()     # one window over the whole chunk: plain BPTT
    if isinstance(grad, (tbptt.TBPTT, rnn.Remat)):
        if isinstance(grad, tbptt.TBPTT) and reduction == "none":
            raise ValueError("TBPTT loss supports reductions 'mean' and 'sum', got 'none'")
        p, layers, c0, inputs = prepared(model, params, layers, inputs, carry, batch, compute_dtype)
        inputs = rnn.float_inputs(inputs, layers, c0)
        m = jnp.ones((T, *batch), bool) if mask is None else mask
        keep = dropout_masks(model, dropout, key, T, batch)
        out_dtype = jnp.result_type(params.w_hy)
        per_step = lambda hs, ys: fn(readout(p, hs).astype(out_dtype), ys)
        run_steps = lambda c, xs, ms, ks, emit: stack_scan(model.cell, layers, c, xs, ms, ks,
                                                           lambda c, h, _: emit(c, h), rate=dropout, unroll=unroll)
        if isinstance(grad, tbptt.TBPTT):
            return tbptt.truncated_loss(run_steps, per_step, c0, inputs, targets, m, keep, k1=grad.k1, k2=grad.k2,
                                        reduction=reduction)
        # Remat: the readout and the loss inside the rematerialised scan, per step; the input
        # projection runs in the step too (a hoisted [T, ..., G*H] one would be the largest O(T)
        # buffer left)
        emit = lambda c, h, e: jnp.where(e[1], per_step(h, e[0]), 0.0)
        final, values = stack_scan(model.cell, layers, c0, inputs, m, keep, emit, extra=(targets, m), rate=dropout,
                                   unroll=unroll, remat=True)
        values = losses.reduce(values, m, reduction)
        return (rnn.time_major_view(values, time_major) if reduction == "none" else values), final
    hs, final, _ = _hidden(model, params, inputs, carry, grad, mask, None, False, dropout, key, compute_dtype,
                           unroll, True)   # inputs and mask are time-major by now
    p, _ = _compute(params, (), compute_dtype)
    logits = readout(p, hs).astype(jnp.result_type(params.w_hy))
    if mask is not None:   # the first "where" of the double where: padded logits never reach a gradient
        logits = jnp.where(mask[..., None], logits, 0.0)
    values = losses.reduce(fn(logits, targets), mask, reduction)
    return (rnn.time_major_view(values, time_major) if reduction == "none" else values), final
