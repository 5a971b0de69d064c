"""PyTorch weights in and out: `torch.nn.RNN`, `LSTM` and `GRU` as a jrnn `Model` and `Params`.

    from_torch(module, readout=None) -> (model, params)       # torch -> jrnn
    to_torch(model, params) -> (rnn_module, linear)           # jrnn -> torch, the inverse
    carry_from_torch(model, h0) -> carry                       # h0 [layers * dirs, B, H] -> jrnn's carry
    carry_to_torch(model, carry) -> h_n                        # jrnn's carry -> [layers * dirs, B, H]

Every layer and both directions are converted; weights are transposed (PyTorch stores
`weight_ih_l0` as `[G*H, D]`, jrnn `w_i` as `[D, G*H]`) and the gate columns are already in
PyTorch's order (LSTM [i | f | g | o], GRU [r | z | n]: `jrnn.cells`). The model computes what
the module computes: `model.hidden(params, x, carry)` returns the module's `(output, h_n)` as
`([T, B, H] or [T, B, 2H] states, one carry per layer)`.

Layout: the model reads time-major inputs `[T, B, D]`, as a module with `batch_first=False`
does; the weights do not depend on `batch_first`, so a `batch_first=True` module's `[B, T, D]`
inputs are transposed first (`x.transpose(0, 1)`), or given with `time_major=False` where the
entry point takes it. PyTorch's `h0` / `h_n` are `[layers * dirs, B, H]` whatever the layout.

torch is optional: jrnn never imports it. These functions use the torch that the caller has
imported (`sys.modules["torch"]`), so `import torch` before calling `to_torch` or
`carry_to_torch` (`from_torch` is handed a torch module, so torch is imported already).

Examples:
  >>> import torch
  >>> lstm = torch.nn.LSTM(input_size=5, hidden_size=8, num_layers=2, bidirectional=True)
  >>> model, params = jrnn.interop.from_torch(lstm)            # identity readout: logits are states
  >>> x = torch.randn(7, 3, 5)                                  # [T, B, D]
  >>> out, (h_n, c_n) = lstm(x)                                 # [T, B, 2H], [4, B, H] each
  >>> hs, carry = model.hidden(params, jnp.asarray(x.numpy()))  # hs == out
  >>> h_n2, c_n2 = jrnn.interop.carry_to_torch(model, carry)    # == h_n, c_n
  >>> lstm2, linear = jrnn.interop.to_torch(model, params)      # the same LSTM again
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import cells, checks
from jrnn import model as model_lib
from jrnn.model import Model, Params
from jrnn.rnn import Directions

__all__ = [   # the public API, documented in the API reference
    "from_torch",
    "to_torch",
    "carry_from_torch",
    "carry_to_torch",
]

# the PyTorch modules jrnn has a cell for: torch's `mode` string -> (module class name, jrnn cell, gates)
_ELMAN_TANH, _ELMAN_RELU = cells.elman.cell("tanh"), cells.elman.cell("relu")
_MODES = {
    "RNN_TANH": ("RNN", _ELMAN_TANH, 1),
    "RNN_RELU": ("RNN", _ELMAN_RELU, 1),
    "LSTM": ("LSTM", cells.LSTM, 4),
    "GRU": ("GRU", cells.GRU, 3),
}


def _torch(what: str):
    """The torch module the caller has imported, or an ImportError naming `what` and the fix."""
    torch = sys.modules.get("torch")
    if torch is None:
        raise ImportError(f"{what} needs PyTorch: `import torch` first (jrnn never imports torch itself, so that "
                          f"it runs without it)")
    return torch


def _mode(module) -> str:
    """The torch `mode` of an RNN/LSTM/GRU module, or a TypeError naming what was given."""
    torch = sys.modules.get("torch")
    kinds = () if torch is None else (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU)
    if not kinds or not isinstance(module, kinds):
        raise TypeError(f"module must be a torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU, got "
                        f"{type(module).__module__}.{type(module).__qualname__}: jrnn has no cell for it")
    mode = getattr(module, "mode", None)
    if mode not in _MODES:   # torch.nn.RNN's mode is RNN_TANH or RNN_RELU (its `nonlinearity`)
        raise ValueError(f"module.mode is {mode!r}; jrnn converts {tuple(_MODES)} (torch.nn.RNN's nonlinearity "
                         f"'tanh' or 'relu', LSTM, GRU)")
    return mode


def _to_jax(t, dtype):
    """Torch tensor `t` as a jax array of `dtype`, canonicalised: a float64 tensor is float32 while
    jax_enable_x64 is off. bfloat16 goes through float32 (numpy has no bfloat16; exact both ways)."""
    t = t.detach().cpu()
    torch = sys.modules["torch"]
    a = (t.to(torch.float32) if t.dtype == torch.bfloat16 else t).numpy()
    return jnp.asarray(a, jax.dtypes.canonicalize_dtype(dtype))


_FLOATS = ("float32", "float64", "bfloat16", "float16")   # the torch dtypes jrnn computes in


def _jax_dtype(name: str, t):
    """The jax dtype of torch tensor `t`, or a TypeError naming `name` if jrnn cannot compute in it."""
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _FLOATS:
        raise TypeError(f"{name} has dtype {t.dtype}; jrnn's cells compute in a real float dtype ({', '.join(_FLOATS)}): "
                        f"convert the module first, e.g. module.float()")
    return jnp.dtype(getattr(jnp, dtype))


def from_torch(module, readout=None) -> tuple[Model, Params]:
    """A jrnn `Model` and `Params` computing what a PyTorch RNN module computes.

    Args:
      module: a `torch.nn.RNN` (nonlinearity "tanh" or "relu"), `torch.nn.LSTM` or `torch.nn.GRU`;
        any `num_layers`, `bidirectional` either way, `batch_first` either way (the model reads
        time-major `[T, B, D]`: give a batch-first module's `[B, T, D]` inputs transposed, or
        with `time_major=False`). Refused: `proj_size > 0` (ValueError: jrnn's LSTM has no
        projection), non-float parameters (TypeError), parameters of mixed dtypes (TypeError),
        another module type (TypeError). `bias=False` converts with zero biases (exact: a zero
        bias adds nothing). `dropout` is not a weight: pass `dropout=` (and `key=`) to the
        model's loss when training.
      readout: an optional `torch.nn.Linear(width, V)` read from the top layer's states (width =
        H, or 2H bidirectional): `w_hy [width, V]` = `weight.T`, `b_y [V]` = `bias` (zeros
        without one). Without it, the readout is the identity: `output_size` = width, `w_hy` =
        eye(width), `b_y` = 0, so `model.apply` gives the states too.

    Returns:
      (model, params): `model.hidden(params, x [T, B, D], carry)` equals `module(x, h0)`'s
      output `[T, B, width]`, and its final carry equals `h_n` (`carry_to_torch`); the carry
      `h0 [layers * dirs, B, H]` (an LSTM's `(h0, c0)`) converts with `carry_from_torch`.
      Params are jax arrays of the module's dtype: Elman and LSTM layers hold one bias, torch's
      `bias_ih + bias_hh` (as `jrnn.cells` stores it), GRU layers both. A float64 module gives
      float64 params only with jax_enable_x64 on (`jax.config.update("jax_enable_x64", True)`, or
      inside `with jax.enable_x64(True):`); with it off they are float32, as JAX makes every
      float64 array. Nothing of the module is changed.
    """
    mode = _mode(module)
    _, cell, G = _MODES[mode]
    proj = getattr(module, "proj_size", 0)
    if proj:
        raise ValueError(f"module.proj_size is {proj}: jrnn's LSTM has no output projection (h = o * tanh(c) is "
                         f"the state and the output); convert an LSTM with proj_size=0")
    D, H, L = int(module.input_size), int(module.hidden_size), int(module.num_layers)
    bidirectional = bool(module.bidirectional)
    width = 2 * H if bidirectional else H
    # the weights by torch's names, read as attributes: a parametrized weight (weight_norm,
    # pruning) is its computed value there, not a `named_parameters` entry
    names = [f"{kind}_{side}_l{l}{suffix}" for l in range(L) for suffix in ("", "_reverse")[:1 + bidirectional]
             for kind in ("weight", "bias")[:1 + bool(module.bias)] for side in ("ih", "hh")]
    named = {name: getattr(module, name) for name in names}
    dtype = None
    for name, t in named.items():
        dt = _jax_dtype(f"module.{name}", t)
        if dtype is None:
            dtype, first = dt, name
        elif dt != dtype:
            raise TypeError(f"module.{name} is {t.dtype} but module.{first} is {named[first].dtype}: jrnn computes "
                            f"a model in one dtype, so convert the module first, e.g. module.to({named[first].dtype})")

    def get(name):
        return _to_jax(named[name], dtype)

    def direction(l, suffix):
        w_i, w_h = get(f"weight_ih_l{l}{suffix}").T, get(f"weight_hh_l{l}{suffix}").T
        zeros = jnp.zeros((G * H,), w_i.dtype)
        b_i = get(f"bias_ih_l{l}{suffix}") if module.bias else zeros
        b_h = get(f"bias_hh_l{l}{suffix}") if module.bias else zeros
        if mode == "GRU":
            return cells.GRUParams(w_i, w_h, b_i, b_h)   # b_hn sits inside r * (...): kept apart
        if mode == "LSTM":
            return cells.LSTMParams(w_i, w_h, b_i + b_h)
        return cells.ElmanCellParams(w_i, w_h, b_i + b_h)

    layers = tuple(Directions(direction(l, ""), direction(l, "_reverse")) if bidirectional else direction(l, "")
                   for l in range(L))
    if readout is None:
        pdtype = jax.dtypes.canonicalize_dtype(dtype)
        w_hy, b_y = jnp.eye(width, dtype=pdtype), jnp.zeros((width,), pdtype)
    else:
        w_hy, b_y = _readout_from_torch(readout, width, dtype)
    model = Model(cell, D, H, int(w_hy.shape[1]), L, bidirectional)
    params = Params(layers, w_hy, b_y)
    model_lib.check_params(model, params)   # shapes as the cell makes them: a module edited by hand is named
    return model, params


def _readout_from_torch(readout, width, dtype):
    torch = sys.modules["torch"]
    if not isinstance(readout, torch.nn.Linear):
        raise TypeError(f"readout must be a torch.nn.Linear (or None for the identity), got "
                        f"{type(readout).__module__}.{type(readout).__qualname__}")
    if int(readout.in_features) != width:
        raise ValueError(f"readout.in_features is {readout.in_features}, but the module's outputs have width {width} "
                         f"(hidden_size, times 2 if bidirectional): the readout reads the top layer's states")
    for name in ("weight", "bias"):
        t = getattr(readout, name)   # an attribute: a parametrized weight is its computed value there
        if t is not None and _jax_dtype(f"readout.{name}", t) != dtype:
            raise TypeError(f"readout.{name} is {t.dtype} but the module's parameters are {dtype}: jrnn computes a "
                            f"model in one dtype, so convert the readout first, e.g. readout.to(<the module's dtype>)")
    w_hy = _to_jax(readout.weight, dtype).T
    b_y = (_to_jax(readout.bias, dtype) if readout.bias is not None
           else jnp.zeros((w_hy.shape[1],), w_hy.dtype))
    return w_hy, b_y


def _torch_kind(model, what: str):
    """The torch mode of `model`'s cell (a key of `_MODES`), or a TypeError: torch has modules for the tanh and relu
    Elman cells, the LSTM and the GRU only."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a jrnn.model.Model (e.g. from from_torch or jrnn.lm.model), got "
                        f"{type(model).__name__}")
    for mode, (_, cell, _) in _MODES.items():
        if model.cell == cell:
            return mode
    raise TypeError(f"{what}: the model's cell {model.cell.name!r} has no PyTorch module (torch.nn.RNN takes the "
                    f"tanh or relu Elman cell, torch.nn.LSTM jrnn.cells.LSTM, torch.nn.GRU jrnn.cells.GRU)")


def _tensor(torch, a, tdtype):
    """jax/numpy array `a` as a torch tensor of `tdtype` (bfloat16 through float32: numpy's
    bfloat16 is not torch's; exact)."""
    a = jnp.asarray(a)
    if a.dtype == jnp.bfloat16:
        a = a.astype(jnp.float32)
    return torch.from_numpy(np.array(a)).to(tdtype)


def _torch_dtype(torch, dtype):
    return getattr(torch, jnp.dtype(dtype).name)


def to_torch(model: Model, params, *, batch_first: bool = False):
    """The PyTorch modules computing what `model` computes with `params`: `(rnn_module, linear)`.

    Args:
      model: a `Model` of the tanh or relu Elman cell (`torch.nn.RNN`), `jrnn.cells.LSTM`
        (`torch.nn.LSTM`) or `jrnn.cells.GRU` (`torch.nn.GRU`), any depth, bidirectional or
        not; any other cell (the sigmoid Elman cell, a custom cell) is a TypeError.
      params: its `Params` (checked: `jrnn.model.check_params`).
      batch_first: the torch module's layout flag (the weights are the same either way).

    Returns:
      `(rnn_module, linear)`: the RNN module (`input_size` D, `hidden_size` H, `num_layers`,
      `bidirectional`, `bias=True`) with `rnn_module(x [T, B, D], h0)` equal to
      `model.hidden(params, x, carry)`, and a `torch.nn.Linear(width, V)` holding the readout
      (`weight [V, width]` = `w_hy.T`, `bias` = `b_y`), so `linear(output)` equals
      `model.apply`'s logits `[T, B, V]`. Both in the params' dtype, on the CPU, in training
      mode as torch makes new modules. The inverse of `from_torch`: every weight and every GRU
      bias comes back as it was; an Elman or LSTM layer holds one bias (torch's `bias_ih +
      bias_hh`), which comes back as `bias_ih`, with `bias_hh` = 0 (the same sum, so the same
      module). A model fed token ids equals the module fed one-hot features
      (`torch.nn.functional.one_hot(ids, D)` in the params' dtype). torch must be imported.
    """
    mode = _torch_kind(model, "to_torch")
    batch_first = checks.boolean("batch_first", batch_first)
    layers = model_lib.check_params(model, params)
    torch = _torch("jrnn.interop.to_torch")
    dtype = jnp.result_type(params.w_hy)
    tdtype = _torch_dtype(torch, dtype)
    cls = getattr(torch.nn, _MODES[mode][0])
    kw = {"nonlinearity": "relu" if mode == "RNN_RELU" else "tanh"} if mode.startswith("RNN") else {}
    module = cls(model.input_size, model.hidden_size, num_layers=model.layers, bias=True, batch_first=batch_first,
                 bidirectional=model.bidirectional, dtype=tdtype, **kw)
    linear = torch.nn.Linear(model.width, model.output_size, bias=True, dtype=tdtype)
    values = {}
    for l, p in enumerate(layers):
        for q, suffix in (zip(p, ("", "_reverse")) if model.bidirectional else ((p, ""),)):
            w_i, w_h = (q.w_xh, q.w_hh) if mode.startswith("RNN") else (q.w_i, q.w_h)
            if mode == "GRU":
                b_i, b_h = q.b_i, q.b_h
            else:
                b_i = q.b_h if mode.startswith("RNN") else q.b
                b_h = jnp.zeros_like(b_i)
            values.update({f"weight_ih_l{l}{suffix}": w_i.T, f"weight_hh_l{l}{suffix}": w_h.T,
                           f"bias_ih_l{l}{suffix}": b_i, f"bias_hh_l{l}{suffix}": b_h})
    with torch.no_grad():
        for name, t in module.named_parameters():
            t.copy_(_tensor(torch, values.pop(name), tdtype))
        linear.weight.copy_(_tensor(torch, params.w_hy.T, tdtype))
        linear.bias.copy_(_tensor(torch, params.b_y, tdtype))
    assert not values, f"weights with no torch parameter: {sorted(values)}"   # every one was copied
    return module, linear


def _array(name: str, x):
    """`x` (a torch tensor, or a jax/numpy array or nested list) as a jax array; TypeError naming `name`."""
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach"):
        return _to_jax(x, _jax_dtype(name, x))
    a = jnp.asarray(x)
    if not checks.is_float_dtype(a.dtype):
        raise TypeError(f"{name} must be floating, got {a.dtype}")
    return a


def _check_stacked(model, name, a):
    n = model.layers * (2 if model.bidirectional else 1)
    if a.ndim not in (2, 3) or a.shape[0] != n or a.shape[-1] != model.hidden_size:
        raise ValueError(f"{name} must be [layers * dirs, B, H] = [{n}, B, {model.hidden_size}] (or [{n}, "
                         f"{model.hidden_size}] for one unbatched sequence), as PyTorch's h0 / h_n, got shape "
                         f"{tuple(a.shape)}")


def carry_from_torch(model: Model, h0) -> tuple:
    """PyTorch's initial state as the model's carry (one per layer, as `model.hidden` takes it).

    Args:
      model: a `Model` of a cell torch has (see `to_torch`).
      h0: `[layers * dirs, B, H]` (`[layers * dirs, H]` unbatched), a torch tensor or an array, rows
        ordered as PyTorch's: layer 0 forward, layer 0 backward (bidirectional), layer 1 ...;
        for an LSTM the pair `(h0, c0)`, each so shaped.

    Returns:
      A tuple with one carry per layer: `[B, H]` (Elman, GRU), `LSTMState(h, c)` (LSTM), and
      `Directions(forward, backward)` of those for a bidirectional layer. Arrays keep their
      dtype (float64 only with jax_enable_x64 on).
    """
    mode = _torch_kind(model, "carry_from_torch")
    if mode == "LSTM":
        if not (isinstance(h0, (tuple, list)) and len(h0) == 2):
            raise TypeError(f"h0 of an LSTM is the pair (h0, c0) as torch.nn.LSTM takes it, each [layers * dirs, B, H], "
                            f"got {type(h0).__name__}")
        h, c = _array("h0[0] (h0)", h0[0]), _array("h0[1] (c0)", h0[1])
        _check_stacked(model, "h0[0] (h0)", h)
        _check_stacked(model, "h0[1] (c0)", c)
        if h.shape != c.shape:
            raise ValueError(f"h0 and c0 must have one shape, got {tuple(h.shape)} and {tuple(c.shape)}")
        rows = [cells.LSTMState(h[i], c[i]) for i in range(h.shape[0])]
    else:
        h = _array("h0", h0)
        _check_stacked(model, "h0", h)
        rows = [h[i] for i in range(h.shape[0])]
    if model.bidirectional:
        return tuple(Directions(rows[2 * l], rows[2 * l + 1]) for l in range(model.layers))
    return tuple(rows)


def carry_to_torch(model: Model, carry):
    """The model's carry (as `model.hidden` returns it: one `[B, H]` carry, an LSTM's `LSTMState(h,
    c)`, or `Directions` of those, per layer) in PyTorch's layout: `h_n [layers * dirs, B, H]`
    (`[layers * dirs, H]` unbatched), or the pair `(h_n, c_n)` for an LSTM, as torch tensors of
    the carry's dtype, rows ordered as PyTorch's (layer 0 forward, layer 0 backward, layer 1 ...).
    torch must be imported (TypeError for a cell torch has no module for, as `to_torch`)."""
    mode = _torch_kind(model, "carry_to_torch")
    if not isinstance(carry, (tuple, list)) or hasattr(carry, "_fields") or len(carry) != model.layers:
        raise TypeError(f"carry must be a tuple with one carry per layer ({model.layers}), as model.hidden returns "
                        f"it, got {type(carry).__name__}")
    torch = _torch("jrnn.interop.carry_to_torch")
    rows = [d for c in carry for d in (c if model.bidirectional else (c,))]
    if mode == "LSTM":
        parts = ([r.h for r in rows], [r.c for r in rows])
    else:
        parts = (rows,)
    out = []
    for part in parts:
        a = jnp.stack([jnp.asarray(r) for r in part])
        out.append(_tensor(torch, a, _torch_dtype(torch, a.dtype)))
    return tuple(out) if mode == "LSTM" else out[0]
