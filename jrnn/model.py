"""A recurrent model as one value: a cell, a depth, sizes and a linear readout.

    x_t (ids [T, ...] or features [T, ..., D]) -> `layers` x cell -> h_t W_hy + b_y -> logits [T, ..., V]

`Model` is a hashable NamedTuple (its cell is a `jrnn.rnn.Cell`), so it can be closed over or
passed to `jax.jit` as a static argument; the parameters stay a plain pytree, `Params(layers,
w_hy, b_y)`, and every function here is pure. The seeds' single-layer Elman network is one
instance: `jrnn.elman.model(...)` is a `Model` of the Elman cell, and its flat `ElmanParams`
(w_xh, w_hh, b_h, w_hy, b_y) are taken as a one-layer model's params as they are.

Everything a model does is written here once, above all cells: the layer-by-layer forward
(`hidden`, `apply`), the per-step forward of the whole stack (`step`, which sampling, TBPTT
windows and the rematerialised loss run on), losses, and carries. A carry is a tuple with one
cell carry per layer (an LSTM layer's is `LSTMState(h, c)`).

`bidirectional=True` makes every layer a forward and a length-aware backward cell
(`rnn.bidirectional`): a layer's params and carry are `Directions(forward, backward)`, layer
l > 0 reads the `[T, ..., 2H]` concat of layer l-1 and the readout is `[2H, V]`. Such a model sees
the whole sequence at every step, so what needs a causal per-step model (`step`, `jrnn.generate`,
TBPTT, the `remat` loss) refuses it; `hidden`, `apply`, `apply_last` and the full-BPTT loss (masks,
dropout, `compute_dtype`, `method=`) take it.

Examples:
  >>> model = jrnn.lm.model("lstm", vocab_size=65, hidden_size=128, layers=2)
  >>> params = model.init(jax.random.key(0))
  >>> logits, carry = model.apply(params, tokens)                # tokens [T, B] ids
  >>> loss, carry = model.loss(params, tokens, targets, k1=25, k2=50)   # TBPTT(25, 50)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import checks, hoisted, initializers, losses, rnn
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
    Methods are the module functions with the model as first argument.

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

    def init(self, key, dtype=jnp.float32):
        return init(self, key, dtype)

    def hidden(self, params, inputs, carry=None, **kw):
        return hidden(self, params, inputs, carry, **kw)

    def apply(self, params, inputs, carry=None, **kw):
        return apply(self, params, inputs, carry, **kw)

    def apply_last(self, params, inputs, carry=None, **kw):
        return apply_last(self, params, inputs, carry, **kw)

    def loss(self, params, inputs, targets, carry=None, **kw):
        return sequence_loss(self, params, inputs, targets, carry, **kw)

    def step(self, params, carry, x_t):
        return step(self, params, carry, x_t)

    def zeros(self, params, batch_shape=()):
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


def _prepared(model, params, layers, inputs, carry, batch, compute_dtype):
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
    logits = hoisted.per_device(hoisted.merged, hs, params.w_hy, row_dims=1, unsplit=jnp.matmul)
    return logits + params.b_y.reshape((1,) * (logits.ndim - 1) + params.b_y.shape)


def hidden(model: Model, params, inputs, carry=None, *, mask=None, reverse: bool = False, unroll: int | None = None,
           remat: bool = False, dropout: float = 0.0, key=None, compute_dtype=None, method: str = "sequential"):
    """Top-layer states `[T, ..., H]` (`[T, ..., 2H]`, forward then backward, if bidirectional)
    and the final carry (a tuple, one per layer).

    Args:
      inputs: token ids `[T, ...]` or features `[T, ..., D]`, time-major.
      carry: initial carry (zeros if None).
      mask: optional `[T, ...]`, 1 = real step: across padding the carry is frozen and the
        output is zero; with `reverse` (and a bidirectional model's backward direction),
        right-padded sequences are read from their own last step.
      reverse: run every layer from t = T-1 down (not for a bidirectional model).
      dropout: rate between layers (needs `key`), as PyTorch's nn.LSTM(dropout=...).
      compute_dtype: e.g. jnp.bfloat16 runs the cells in that dtype; params keep their own.
      method: how each layer runs over time (`jrnn.rnn.run`: "sequential", or parallel-in-time).
    """
    layers = layer_params(model, params)
    reverse = checks.boolean("reverse", reverse)   # "False" would run the layers backwards
    if model.bidirectional and reverse:
        raise ValueError("reverse does not apply to a bidirectional model: it reads both directions already")
    rnn.check_input_array(model.input_size, inputs)
    _, layers, c0, inputs = _prepared(model, params, layers, inputs, carry, batch_shape(model, inputs), compute_dtype)
    return rnn.stack(model.cell, layers, inputs, c0, mask=mask, dropout=dropout, key=key, unroll=unroll,
                     reverse=reverse, remat=remat, method=method, bidirectional=model.bidirectional)


def apply(model: Model, params, inputs, carry=None, **kw):
    """Logits `[T, ..., V]` (in the params' dtype) and the final carry; keywords as `hidden`."""
    hs, final = hidden(model, params, inputs, carry, **kw)
    p, _ = _compute(params, (), kw.get("compute_dtype"))
    return readout(p, hs).astype(jnp.result_type(params.w_hy)), final


def apply_last(model: Model, params, inputs, carry=None, *, mask=None, **kw):
    """Many-to-one: logits `[..., V]` of the top layer's output at each sequence's last real
    step (its last mask-1 step; with `reverse`, its first), and the final carry. Bidirectional:
    the forward output at the last real step concatenated with the backward output at the first
    real step, where each direction has read the whole sequence. Left padding and holes in the
    mask are read the same way."""
    hs, final = hidden(model, params, inputs, carry, mask=mask, **kw)
    if mask is None:
        at_first, at_last = hs[0], hs[-1]
    else:
        # the first and last mask-1 steps, wherever the padding is (right, left, holes); a
        # sequence with no real step reads its zero output at t = 0 / T-1
        m = jnp.asarray(mask, bool)
        first = jnp.argmax(m, axis=0)                                         # [...]
        last_t = m.shape[0] - 1 - jnp.argmax(jnp.flip(m, 0), axis=0)          # [...]
        at = lambda t: jnp.take_along_axis(hs, t[None, ..., None], axis=0)[0]
        at_first, at_last = at(first), at(last_t)
    last = at_first if kw.get("reverse") else at_last
    if model.bidirectional:
        H = model.hidden_size
        last = jnp.concatenate([at_last[..., :H], at_first[..., H:]], -1)
    p, _ = _compute(params, (), kw.get("compute_dtype"))
    return readout(p, last).astype(jnp.result_type(params.w_hy)), final


def step(model: Model, params, carry, x_t):
    """One time step of the whole stack: `(carry, x_t) -> (carry, logits_t)`, x_t ids `[...]` or
    features `[..., D]`. Scan-shaped; sampling, TBPTT windows and `remat` run on it. A
    bidirectional model has no step (ValueError)."""
    check_causal(model, "step")
    layers = layer_params(model, params)
    x_t = x_t if hasattr(x_t, "dtype") else np.asarray(x_t)
    checks.host_ints_fit(x_t)   # before jnp.asarray narrows int64 ids by wrapping (2**32 + 1 -> 1)
    rnn.check_input_array(model.input_size, x_t[None])   # ids in [0, D), D features
    carry = carries(model, layers, batch_shape(model, x_t[None]), carry)
    carry, h = _stack_step(model.cell, layers, carry, x_t)
    return carry, readout(params, h)


def _stack_step(cell, layers, carry, x_t, keep=None, rate=0.0):
    """One step of every layer; `keep`, with dropout `rate` > 0, holds this step's keep-mask
    `[..., H]` of the inputs of each layer > 0 (None for layer 0), see `dropout_keep`."""
    h, new = x_t, []
    for i, (p, c) in enumerate(zip(layers, carry)):
        if i > 0 and rate:
            h = rnn.dropped(h, keep[i], rate)
        c, h = cell.step(p, c, cell.project(p, jnp.asarray(h)[None])[0])
        new.append(c)
    return tuple(new), h


def dropout_keep(model: Model, dropout: float, key, T: int, batch) -> tuple:
    """The keep-masks of a whole chunk, drawn once from `key`: None for layer 0 and a bool
    `[T, *batch, H]` per layer > 0, as `rnn.stack` draws them (`rnn.dropout_keep`); so the plain
    loss, the rematerialised loss and the TBPTT windows (which index them by step) drop the
    same units at the same steps. All None when `dropout` is 0."""
    return tuple(None if i == 0 or not dropout else
                 rnn.dropout_keep(key, dropout, model.layers, i, (T, *batch, model.width))
                 for i in range(model.layers))


def _freeze(m, new, old):
    """`new` where m (a real step), `old` across padding."""
    return jax.tree.map(lambda a, b: jnp.where(m.reshape(m.shape + (1,) * (a.ndim - m.ndim)), a, b), new, old)


def check_targets(inputs, targets, batch):
    """Targets must be integer ids of the inputs' `[T, ...]` shape: neither shorter nor longer.
    Returns them as an array (nested lists as numpy reads them: the loss's gather takes no list)."""
    targets = targets if hasattr(targets, "dtype") else np.asarray(targets)
    T = np.shape(inputs)[0]
    if tuple(targets.shape) != (T, *batch):
        raise ValueError(f"targets must have the inputs' shape [T, ...] = {(T, *batch)}, got {tuple(targets.shape)}")
    return targets


def check_mask(mask, shape):
    if mask is None:
        return None
    if tuple(np.shape(mask)) != tuple(shape):
        raise ValueError(f"mask must have shape {tuple(shape)} ([T, ...]), got {tuple(np.shape(mask))}")
    checks.mask01(mask)   # 0/1 only, as the plain loss reads it
    return jnp.asarray(mask, bool)


def sequence_loss(model: Model, params, inputs, targets, carry=None, *, mask=None, reduction: str = "mean",
                  k1: int | None = None, k2: int | None = None, remat: bool = False, unroll: int | None = None,
                  dropout: float = 0.0, key=None, compute_dtype=None):
    """Softmax cross-entropy of per-step targets: (loss, final carry).

    Args:
      inputs: ids `[T, ...]` or features `[T, ..., D]`; targets: ids `[T, ...]`.
      mask: optional `[T, ...]` (padding = 0): ignored by the loss, carry frozen across it.
      k1: if given (with k2), the gradient is Williams & Peng TBPTT(k1, k2) (`jrnn.tbptt`):
        blocks of k1 steps; the value is the full loss either way.
      k2: each block's losses back-propagate through the k2 states ending at its last step.
      remat: the readout and loss run inside a scan that keeps only sqrt(T) carries for the
        backward pass (`rnn.checkpointed_scan`): memory grows like sqrt(T) instead of T, for one
        extra forward pass and per-step projections and readouts. Not with k1/k2 (the TBPTT
        windows already bound what the backward pass keeps). Both k1/k2 and remat run the stack
        step by step, so a bidirectional model takes neither (ValueError): its loss is full BPTT.
      dropout: rate between layers (needs `key`). Its keep-masks are drawn once for the chunk
        (`dropout_keep`), so with the same key the plain, `remat` and TBPTT losses drop the same
        units at the same steps: equal values, and equal gradients where the truncation is none.
        (With `remat` the masks are one byte per unit and step of layers > 0: still O(T).)
    """
    rnn.check_dropout(dropout, key)
    remat = checks.boolean("remat", remat)
    if k1 is not None or k2 is not None:
        check_causal(model, "TBPTT (k1, k2)")
        if remat:
            raise ValueError("TBPTT (k1, k2) takes no remat: its windows already bound the backward pass "
                             "to k2 steps each; use one or the other")
        from jrnn import tbptt  # tbptt is built on this module: imported on use
        return tbptt.sequence_loss(model, params, inputs, targets, carry, k1=k1, k2=k2, mask=mask,
                                   reduction=reduction, unroll=unroll, dropout=dropout, key=key,
                                   compute_dtype=compute_dtype)
    layers = layer_params(model, params)
    rnn.check_input_array(model.input_size, inputs)
    batch = batch_shape(model, inputs)
    targets = check_targets(inputs, targets, batch)
    if not remat:
        logits, final = apply(model, params, inputs, carry, mask=mask, unroll=unroll, dropout=dropout, key=key,
                              compute_dtype=compute_dtype)
        return losses.softmax_cross_entropy(logits, targets, mask=mask, reduction=reduction), final
    check_causal(model, "the remat loss (a fused per-step scan)")
    checks.labels(targets, model.output_size)
    p, layers, c0, inputs = _prepared(model, params, layers, inputs, carry, batch, compute_dtype)
    inputs = rnn.float_inputs(inputs, layers, c0)
    T = inputs.shape[0]
    m = jnp.ones((T, *batch), bool) if mask is None else check_mask(mask, (T, *batch))
    out_dtype = jnp.result_type(params.w_hy)
    keep = dropout_keep(model, dropout, key, T, batch)   # scanned with the inputs: every segment sees its steps'

    def fused(_, c, x):
        # the input projection runs in the step too: a hoisted [T, ..., G*H] projection (and its
        # gradient) would be the largest O(T) buffers left
        x_t, y, m_t, keep_t = x
        x_t = jnp.where(m_t[..., None], x_t, 0) if x_t.ndim > m_t.ndim else x_t
        new, h = _stack_step(model.cell, layers, c, x_t, keep_t, dropout)
        c = _freeze(m_t, new, c)
        nll = losses.softmax_cross_entropy(readout(p, h).astype(out_dtype), y, reduction="none")
        return c, jnp.where(m_t, nll, 0.0)

    final, per_step = rnn.scan(fused, None, c0, (inputs, jnp.asarray(targets), m, keep), unroll=unroll,
                               remat=True)
    return losses.reduce(per_step, m, reduction), final
