"""The time loop that every model and cell goes through, once: masks, reversal, unroll, layers.

A step is `(params, carry, x_t) -> (carry, y_t)`; `scan` owns time-major vs batch-major, reverse
direction, `unroll` and (optional) rematerialisation, so every wrapper works with every cell.

Layout: sequences are time-major, `[T, B, ...]` (what `lax.scan` iterates over, and PyTorch's
`nn.RNN` default); every entry point that takes sequences also takes `time_major=False` for
batch-first `[B, T, ...]` data, and returns its sequences in the layout it was given.

How a layer runs over time is a value, `grad=` (as diffrax's `adjoint=`): `FullBPTT()` (one
`lax.scan`, the default) and `Remat()` (sqrt(T) carries kept for the backward pass) live here;
`jrnn.parallel.Parallel(...)` (DEER/ELK) lives above the cells and is driven through the same
protocol, a strategy's `run_layer(cell, params, us, carry, mask=, reverse=, unroll=)`, so this
module never imports the solver. `jrnn.tbptt.TBPTT` belongs to a loss (`jrnn.Model.loss`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import checks

__all__ = [   # the public API, documented in the API reference
    "FullBPTT",
    "Remat",
    "Cell",
    "Directions",
    "run",
    "scan",
    "checkpointed_scan",
    "stack",
    "bidirectional",
    "check_cell_params",
    "dropout_keep",
    "default_unroll",
    "freeze",
]

Step = Callable[[Any, Any, Any], tuple]

# Steps `lax.scan` unrolls per loop iteration when no `unroll` is given, by backend. A GPU pays a
# kernel launch and a loop-condition sync per iteration, so unrolling 8 steps won on every GPU
# config measured; on the CPU one step per iteration was fastest (docs/performance.md has the
# numbers, `python -m experiments.bench` measures them). Other backends: unmeasured, 1.
DEFAULT_UNROLL = {"gpu": 8, "cuda": 8, "rocm": 8}


def default_unroll(T: int | None = None) -> int:
    """The `unroll` every jrnn scan uses when none is given: 8 on a GPU, 1 elsewhere (read from
    `jax.default_backend()` when traced), never more than the T steps there are."""
    u = DEFAULT_UNROLL.get(jax.default_backend(), 1)
    return u if T is None else max(1, min(u, int(T)))


def resolve_unroll(unroll, T: int | None = None):
    """`unroll` itself when given (a positive int, or True for a full unroll), else the default."""
    if unroll is None:
        return default_unroll(T)
    if unroll is True:
        return unroll
    return checks.integer("unroll (a positive int, True for a full unroll, or None for the default)", unroll)


@dataclasses.dataclass(frozen=True)
class FullBPTT:
    """Back-propagation through the whole sequence: one `lax.scan` (or the cell's own equal
    scan), every step's carry kept for the backward pass. The default `grad=` everywhere."""

    def run_layer(self, cell, params, us, carry, *, mask=None, reverse=False, unroll=None):
        """One layer over projected inputs `us` `[T, ..., G]`: (hs `[T, ..., H]`, final carry)."""
        if cell.scan is not None:
            return cell.scan(params, us, carry, mask=mask, reverse=reverse, unroll=unroll)
        return _scan_layer(cell, params, us, carry, mask, reverse, unroll, remat=False)


@dataclasses.dataclass(frozen=True)
class Remat:
    """Exact gradients with memory growing like sqrt(T) instead of T: only every sqrt(T)-th carry
    is kept for the backward pass, the rest recomputed (one extra forward pass). In a layer
    (`run`, `Model.hidden`) each layer's scan is rematerialised; in `Model.loss` the whole stack,
    readout and loss run in one rematerialised scan, so no `[T, ..., V]` logits are kept either."""

    def run_layer(self, cell, params, us, carry, *, mask=None, reverse=False, unroll=None):
        """One layer over projected inputs `us` `[T, ..., G]`: (hs `[T, ..., H]`, final carry)."""
        return _scan_layer(cell, params, us, carry, mask, reverse, unroll, remat=True)


def _scan_layer(cell, params, us, carry, mask, reverse, unroll, *, remat):
    if mask is None:
        carry, hs = scan(cell.step, params, carry, us, reverse=reverse, unroll=unroll, remat=remat)
    else:
        carry, hs = scan(masked(cell.step), params, carry, (us, mask), reverse=reverse, unroll=unroll, remat=remat)
    return hs, carry


# Deprecated `method=` names and the strategy each stands for; `jrnn.parallel` adds its own
# (it sits above this module, which therefore cannot name its `Parallel`).
METHOD_STRATEGIES = {"sequential": FullBPTT, "auto": FullBPTT}


LAYER_STRATEGIES = "jrnn.FullBPTT(), jrnn.Remat(), jrnn.Parallel(...) or jrnn.Auto()"


def check_strategy(grad, *, what: str = "run", takes: str = LAYER_STRATEGIES):
    """`grad` if it is a strategy a time loop can run (it has `run_layer`; None is `FullBPTT()`),
    else a TypeError naming what it is and what `what` takes (`takes`: a loss also takes TBPTT)."""
    if grad is None:
        return FullBPTT()
    if not hasattr(grad, "run_layer") or isinstance(grad, type):
        if isinstance(grad, type):   # the class for its value: name that class
            args = "k1, k2" if grad.__name__ == "TBPTT" else "..." if grad.__name__ == "Parallel" else ""
            hint = f" (an instance: {grad.__name__}({args}), not {grad.__name__})"
        else:
            hint = (" (TBPTT truncates a loss's gradient: pass it to Model.loss)"
                    if type(grad).__name__ == "TBPTT" else "")
        raise TypeError(f"{what}'s grad= must be {takes}, got {grad!r}" + hint)
    return grad


# jrnn's own folder: a deprecation is attributed to the first caller outside it
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_deprecated(message: str) -> None:
    """A DeprecationWarning attributed to the first caller outside jrnn. Python's default filters
    show a DeprecationWarning only where it is attributed to `__main__`: one attributed to a jrnn
    module (a `Model` method forwarding to `jrnn.model`, `jrnn.elman` forwarding to it) would never
    reach the script that wrote the old spelling."""
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def legacy_strategy(grad, deprecated: dict, where: str, *, allowed=("remat", "method")):
    """The strategy the deprecated keywords in `deprecated` (`remat=`, `method=`) stand for, with a
    DeprecationWarning; `grad` when there are none. Unknown keywords are a TypeError, and so is
    mixing them with an explicit `grad=` or with each other."""
    unknown = sorted(set(deprecated) - set(allowed))
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    given = {k: v for k, v in deprecated.items() if v is not None}
    if not given:
        return grad
    names = ", ".join(f"{k}=" for k in given)
    if grad is not None:
        raise TypeError(f"{where}: pass grad= or the deprecated {names}, not both")
    remat, method = given.get("remat"), given.get("method")
    if remat is not None:
        remat = checks.boolean("remat", remat)
    if method is not None and (not isinstance(method, str) or method not in METHOD_STRATEGIES):
        raise ValueError(f"unknown method {method!r}; choose one of {tuple(METHOD_STRATEGIES)}")
    if remat and method not in (None, "sequential", "auto"):
        raise ValueError(f"remat applies to the sequential scan only, not to method={method!r}")
    new = Remat() if remat else METHOD_STRATEGIES[method or "sequential"]()
    warn_deprecated(f"{where}: {names} is deprecated and will be removed in jrnn 0.3; pass grad={new!r}")
    return new


def host_array(x):
    """`x` itself if it is an array, else as numpy reads it (nested lists of ids or features);
    ragged lists are a ValueError pointing at padding."""
    if hasattr(x, "dtype"):
        return x
    try:
        return np.asarray(x)
    except ValueError as e:   # numpy: "inhomogeneous shape"
        raise ValueError(f"sequences of different lengths cannot form one array: pad them with "
                         f"jrnn.data.pad and pass its mask ({e})") from None


def time_major_view(x, time_major: bool):
    """`x` time-major: itself, or with its two leading axes swapped when `time_major` is False
    (a batch-first `[B, T, ...]` array); None stays None. The one place the layout turns."""
    time_major = checks.boolean("time_major", time_major)
    if x is None or time_major:
        return x
    x = host_array(x)
    if x.ndim < 2:
        raise ValueError(f"time_major=False takes batch-first [B, T, ...] arrays, got shape {tuple(x.shape)}")
    return jnp.swapaxes(x, 0, 1) if isinstance(x, jax.Array) else np.swapaxes(x, 0, 1)


def time_major_inputs(inputs, time_major: bool):
    """Inputs time-major (`time_major_view`): batch-first ones must have their batch axis, ids
    `[B, T, ...]`, features `[B, T, ..., D]`. A `[T, D]` feature sequence is time-major already;
    swapped, its D would be read as time (and, where the sizes fit, the outputs come back
    transposed)."""
    if checks.boolean("time_major", time_major):
        return inputs
    x = host_array(inputs)
    if not jnp.issubdtype(x.dtype, jnp.integer) and x.ndim < 3:
        raise ValueError(f"time_major=False takes batch-first features [B, T, D] (or ids [B, T]), got shape "
                         f"{tuple(x.shape)}: one sequence [T, D] is time-major already (drop time_major=False), "
                         f"or give it its batch axis (x[None])")
    return time_major_view(x, time_major)


class Cell(NamedTuple):
    """A recurrent cell as pure functions (see `jrnn.cells` for the contract and the cells).

    `scan`, optional, is a cell's own whole-sequence loop, `(params, us, carry, *, mask, reverse,
    unroll) -> (hs, carry)`, equal to scanning `step` but faster (the built-in cells hoist their
    weight gradient out of the backward loop: `jrnn.cells.elman` for Elman, `jrnn.hoisted` for
    LSTM and GRU); `run` uses it unless `remat` is asked for.
    Shapes, for a batch of B: `init(key, D, H)` -> params; `project(params, inputs [T, B, ...])`
    -> us [T, B, ...] (the input projection of every step at once); `step(params, carry, u_t)`
    -> (carry, h_t [B, H]); `zeros(params, (B,))` -> the zero carry.
    `name` names the cell in errors; `params`, optional, is the params type (or tuple of types)
    the cell takes, so that params of another cell are refused with a message naming both.
    `jacobian` declares the shape of d carry_t / d carry_{t-1}, which the parallel-in-time solver
    (`jrnn.Parallel`) uses for exact Newton at the cheapest cost: None (dense, `[n, n]` for a
    carry of n numbers: O(n^3) per step), or an int k >= 1, block-diagonal over the carry's k
    parts (its leaves, each `[..., H]`) with diagonal blocks, so each unit's k x k block is all
    (k = 1: diagonal, O(H) per step; an LSTM-like (h, c) with elementwise recurrence: k = 2).
    A wrong declaration gives wrong parallel solves: tests compare them with the sequential scan.
    A Cell is hashable (its fields are functions, a string and types), so a model holding one
    can be closed over or passed to `jax.jit` as a static argument.
    """
    init: Callable
    project: Callable
    step: Callable
    zeros: Callable
    scan: Callable | None = None
    name: str = "custom"
    params: Any = None
    jacobian: int | None = None


# ---- params checked against the cell's own init ------------------------------------------------

# (input_size, hidden_size) pairs the cell's init is traced at to learn how each params dim
# depends on them: three to fit dim = a*D + b*H + c, a fourth to confirm it
_PROBE_SIZES = ((2, 3), (3, 3), (2, 4), (5, 7))


def _cached(fn, *args):
    """`fn(*args)` through its lru_cache, or uncached where a custom Cell in `args` is unhashable."""
    try:
        hash(args)
    except TypeError:
        return fn.__wrapped__(*args)
    return fn(*args)


@functools.lru_cache(maxsize=1024)
def _traced_init(cell, input_size, hidden_size, x64):
    key = jax.eval_shape(lambda: jax.random.key(0))
    try:
        return jax.eval_shape(lambda k: cell.init(k, input_size, hidden_size, jnp.float32), key)
    except Exception:   # a custom init that cannot be traced abstractly: its params go unchecked
        return None


def init_shapes(cell, input_size: int, hidden_size: int):
    """The params pytree `cell.init` makes at these sizes (in float32), as `jax.ShapeDtypeStruct`s:
    traced abstractly (no array is made) and cached per cell and sizes. None if the init cannot
    be traced so (a custom cell's), in which case its params are not shape-checked."""
    return _cached(_traced_init, cell, int(input_size), int(hidden_size), bool(jax.config.jax_enable_x64))


@functools.lru_cache(maxsize=256)
def _size_rules(cell, x64):
    """How each dim of each params leaf depends on the sizes: `(a, b, c)` with dim = a*D + b*H + c,
    or None for a dim that is not affine in them; None if the init cannot be traced."""
    shapes = [init_shapes(cell, D, H) for D, H in _PROBE_SIZES]
    if any(s is None for s in shapes) or len({jax.tree.structure(s) for s in shapes}) > 1:
        return None
    rules = []
    for l0, lD, lH, lv in zip(*(jax.tree.leaves(s) for s in shapes)):
        if len({len(l0.shape), len(lD.shape), len(lH.shape), len(lv.shape)}) > 1:
            rules.append(())
            continue
        dims = []
        for f0, fD, fH, fv in zip(l0.shape, lD.shape, lH.shape, lv.shape):
            a, b = fD - f0, fH - f0
            c = f0 - 2 * a - 3 * b
            dims.append((a, b, c) if 5 * a + 7 * b + c == fv else None)
        rules.append(tuple(dims))
    return tuple(rules)


def _read_sizes(rules, shapes):
    """(D, H) as the params' own shapes give them: every dim that depends on D alone (or H
    alone) votes for the size it implies; the size most dims agree on wins, a bias's (1-D)
    vote breaking ties (a transposed 2-D weight outvoted, not trusted). None where no dim
    tells."""
    votes = ({}, {})
    for i, (rule, shape) in enumerate(zip(rules, shapes)):
        for r, g in zip(rule, shape) if len(rule) == len(shape) else ():
            if r is None:
                continue
            a, b, c = r
            for which, k in ((0, a), (1, b)):
                if k > 0 and (a, b)[1 - which] == 0 and (g - c) % k == 0 and (g - c) // k >= 1:
                    n, one_d, first = votes[which].get((g - c) // k, (0, False, i))
                    votes[which][(g - c) // k] = (n + 1, one_d or len(shape) == 1, first)
    return tuple(max(v, key=lambda size: (v[size][0], v[size][1], -v[size][2])) if v else None for v in votes)


def _cell_view(params, want):
    """`params` as the cell's own params type where they carry its fields and more (the seeds'
    flat `ElmanParams`, whose readout the cell ignores), else as given."""
    if (hasattr(want, "_fields") and hasattr(params, "_fields") and type(params) is not type(want)
            and set(want._fields) <= set(params._fields)):
        return type(want)(*(getattr(params, f) for f in want._fields))
    return params


def _mismatch(cell, leaves, where, want, needs):
    """The first of `leaves` ([(path, leaf)], `jrnn.checks.array_leaves`) whose dtype kind or shape
    is not `want`'s, as an exception to raise (None if all fit). `needs` says who needs the shape."""
    for (path, g), w in zip(leaves, jax.tree.leaves(want)):
        if checks.is_float_dtype(w.dtype) and not checks.is_float_dtype(g.dtype):
            return TypeError(f"{checks.leaf_name(where, path)} has dtype {g.dtype}; the {cell.name} cell's params "
                             f"are floating (cast with .astype(jnp.float32))")
        if g.shape != w.shape:
            hint = ""
            # its rows the size of the columns wanted: the [G*H, in] layout of PyTorch
            if len(w.shape) == 2 and len(g.shape) == 2 and g.shape[0] == w.shape[1]:
                hint = (": transposed? (PyTorch stores weight_ih as [G*H, D] and weight_hh as [G*H, H]; "
                        "jrnn stores their transposes: pass w.T)")
            return ValueError(f"{checks.leaf_name(where, path)} has shape {tuple(g.shape)}, {needs} needs "
                              f"{tuple(w.shape)}{hint}")
    return None


def check_cell_params(cell, params, sizes=None, *, where: str = "params", features: int | None = None,
                      needs: str | None = None):
    """`params` checked against the params `cell.init` makes, before anything is traced: every
    leaf an array (`jrnn.checks.array_leaves`: no None, list or torch tensor, one float dtype),
    the pytree the cell's init makes (a missing or extra leaf, a dict for a NamedTuple named),
    and every leaf's shape (an LSTM's `w_i [D, 4H]`, `w_h [H, 4H]`, `b [4H]`), named by its path
    after `where` (`params.w_i has shape (64, 5), ... needs (5, 64): transposed? ...`).

    `sizes`: the (input_size, hidden_size) the params must have (a model knows them); None reads
    them off the params themselves (`_read_sizes`), and `features`, the dense inputs' D where
    known, is what a transposed input matrix is measured against. Returns the (D, H) checked, or
    None where the cell's init cannot be traced abstractly (then only the leaves are checked).
    Shapes only, on the host: under `jit` this runs once, at trace time."""
    leaves = checks.array_leaves(params, where)
    x64 = bool(jax.config.jax_enable_x64)
    rules = None if sizes is not None else _cached(_size_rules, cell, x64)
    probe = init_shapes(cell, *(sizes or _PROBE_SIZES[0]))
    if probe is None:
        return None
    view = _cell_view(params, probe)
    if view is not params:
        leaves = checks.array_leaves(view, where)
    if jax.tree.structure(view) != jax.tree.structure(probe):
        key = lambda path: jax.tree_util.keystr(path)
        given = {key(p) for p, _ in jax.tree_util.tree_flatten_with_path(view)[0]}
        made = [key(p) for p, _ in jax.tree_util.tree_flatten_with_path(probe)[0]]
        missing = [checks.leaf_name(where, k) for k in made if k not in given]
        extra = [checks.leaf_name(where, k) for k in sorted(given - set(made))]
        detail = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                             f"unexpected {', '.join(extra)}" if extra else "") if part)
        raise TypeError(f"{where or 'params'} are {type(view).__name__}, but the {cell.name} cell's init makes "
                        f"{type(probe).__name__} {jax.tree.structure(probe)}" + (f": {detail}" if detail else ""))
    for (path, g), w in zip(leaves, jax.tree.leaves(probe)):
        if len(g.shape) != len(w.shape):   # whatever the sizes: told before they are read
            raise ValueError(f"{checks.leaf_name(where, path)} has shape {tuple(g.shape)}, the {cell.name} cell needs "
                             f"a {len(w.shape)}-D array there")
    if sizes is None:
        if rules is None:
            return None
        D, H = _read_sizes(rules, [x.shape for _, x in leaves])
        D = features if D is None else D
        if D is None or H is None:
            return None
        candidates = [D] + ([features] if features is not None and features != D else [])
    else:
        (D, H), candidates = sizes, [sizes[0]]
    error = None
    for d in candidates:
        want = init_shapes(cell, d, H)
        if want is None:
            return None
        said = "the inputs' features" if sizes is None and d == features else "read off the params"
        error = _mismatch(cell, leaves, where, want, needs or f"the {cell.name} cell with input_size {d} ({said}) and "
                                                      f"hidden_size {H}" + ("" if sizes else " (read off the params)"))
        if error is None:
            return d, H
    raise error


def check_cell(cell) -> None:
    """TypeError unless `cell` is a `Cell` (a name such as "lstm" goes through `jrnn.cells.get`)
    whose `jacobian` is None or an int >= 1."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jrnn.rnn.Cell (e.g. jrnn.cells.LSTM, or jrnn.cells.get('lstm')), "
                        f"got {type(cell).__name__}")
    if cell.jacobian is not None:
        checks.integer(f"the {cell.name} cell's jacobian (None for dense, k >= 1 for k diagonal blocks)",
                       cell.jacobian)


def host_inputs(inputs):
    """Inputs as an array with a time axis, still on the host where given so: a list as numpy
    reads it, and 64-bit numpy ids checked to fit the 32 bits JAX narrows them to while x64 is
    off (`jrnn.checks.host_ints_fit`), before `jnp.asarray` would wrap 2**32 + 1 to 1."""
    x = host_array(inputs)
    checks.host_ints_fit(x)
    check_time_axis(np.shape(x))
    return x


def dense_features(x) -> int | None:
    """D of float features `[T, ..., D]`; None for token ids (or a 1-D float array, refused later)."""
    return int(x.shape[-1]) if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim >= 2 else None


def positive_int(name, value) -> int:
    """`value` as an int >= 1; numpy integers are accepted, bools and floats refused (`jrnn.checks.integer`)."""
    return checks.integer(name, value)


def check_time_axis(shape) -> None:
    """Inputs are `[T, ...]` with T >= 1: a scalar (a numpy integer, say) has no time axis."""
    if len(shape) == 0:
        raise ValueError("inputs must be a sequence [T, ...] (token ids) or [T, ..., D] (features), got a scalar")
    if shape[0] == 0:
        raise ValueError(f"empty sequence: inputs have shape {tuple(shape)}; need at least one time step")


def check_input_array(input_size: int, inputs) -> None:
    """Inputs must be a non-empty `[T, ...]` of token ids in [0, D) or float features `[T, ..., D]`.

    Token ids are range-checked because a gather cannot fail: under a plain `jit` an id outside
    [0, D) gives a NaN row (`jrnn.projection.take_rows`). Concrete values are checked here;
    traced ids get a check that jrnn's training steps run and raise after the call
    (`jrnn.checks`). Float
    inputs need at least 2 dims: a 1-D float array would otherwise be read as T steps.
    """
    D = input_size
    x = host_array(inputs)
    check_time_axis(x.shape)
    if jnp.issubdtype(x.dtype, jnp.integer):
        checks.traced_ids_in_range(x, D, "token ids")   # raised by jrnn's training steps
        if not isinstance(x, jax.core.Tracer) and x.size:
            lo, hi = int(np.min(np.asarray(x))), int(np.max(np.asarray(x)))
            if lo < 0 or hi >= D:
                raise ValueError(f"token ids must lie in [0, {D}), got min {lo}, max {hi}")
    elif jnp.issubdtype(x.dtype, jnp.floating):
        if x.ndim < 2:
            raise ValueError(f"dense inputs are [T, ..., D] (at least 2-D), got shape {x.shape}; "
                             f"one step of D features is x[None], token ids must be integers")
        if x.shape[-1] != D:
            raise ValueError(f"dense inputs need last dim {D} (input_size), got shape {x.shape}")
    else:
        raise TypeError(f"inputs must be integer token ids or float features, got {x.dtype}")


def scan(step: Step, params, carry, xs, *, reverse: bool = False, unroll: int | None = None,
         time_major: bool = True, remat: bool = False):
    """Run `step` over the time axis of `xs`.

    Args:
      step: `(params, carry, x_t) -> (carry, y_t)`.
      params: pytree closed over by every step (not scanned).
      carry: initial carry pytree, e.g. h0 `[B, H]` or `[H]`.
      xs: pytree of per-step inputs, `[T, ...]` if `time_major` else `[B, T, ...]`.
      reverse: run from t = T-1 down to 0; outputs stay aligned with inputs.
      unroll: how many steps `lax.scan` unrolls per loop iteration (a speed knob only; None:
        `default_unroll`, 8 on a GPU, 1 on a CPU).
      remat: keep only sqrt(T) carries for the backward pass and recompute the rest
        (`checkpointed_scan`), trading one extra forward for memory on long sequences.

    Returns:
      (final carry, ys) with ys in the same major order as `xs`.
    """
    if not time_major:
        xs = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), xs)
    unroll = resolve_unroll(unroll, jax.tree.leaves(xs)[0].shape[0])
    body = functools.partial(step, params)
    if remat:
        carry, ys = checkpointed_scan(body, carry, xs, reverse=reverse, unroll=unroll)
    else:
        carry, ys = jax.lax.scan(body, carry, xs, reverse=reverse, unroll=unroll)
    if not time_major:
        ys = jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1), ys)
    return carry, ys


def checkpointed_scan(body, carry, xs, *, reverse: bool = False, unroll: int | None = None,
                      segment: int | None = None):
    """`lax.scan` that stores only every `segment`-th carry for the backward pass.

    The T steps run as T // S segments of S steps (S = sqrt(T) by default) under
    `jax.checkpoint`, plus a plain tail of T % S steps. The backward pass recomputes each
    segment from its first carry, so the scan's saved residuals shrink from O(T) to
    O(T / S + S) carries, at the price of one extra forward pass. (Outputs `ys` are still
    `[T, ...]`: to save memory, return small per-step values such as losses.)
    """
    T = jax.tree.leaves(xs)[0].shape[0]
    S = max(1, math.isqrt(T)) if segment is None else segment
    unroll = resolve_unroll(unroll, S)
    if reverse:  # run the flipped sequence forwards, flip the outputs back
        flip = lambda t: jax.tree.map(lambda a: jnp.flip(a, 0), t)
        carry, ys = checkpointed_scan(body, carry, flip(xs), unroll=unroll, segment=S)
        return carry, flip(ys)
    n, head = T // S, (T // S) * S
    seg = jax.checkpoint(lambda c, x: jax.lax.scan(body, c, x, unroll=unroll))
    split = jax.tree.map(lambda a: a[:head].reshape((n, S) + a.shape[1:]), xs)
    carry, ys = jax.lax.scan(seg, carry, split)
    ys = jax.tree.map(lambda a: a.reshape((head,) + a.shape[2:]), ys)
    if head < T:
        carry, tail = jax.lax.scan(body, carry, jax.tree.map(lambda a: a[head:], xs), unroll=unroll)
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys, tail)
    return carry, ys


def zero_padding(inputs, mask):
    """Zero float features at padded steps before the (hoisted) input projection: the first
    `where` of the "double where" pattern, so NaN/inf padding never reaches a gradient."""
    if mask is None or not jnp.issubdtype(inputs.dtype, jnp.floating):
        return inputs
    mask = jnp.asarray(mask, bool)
    return jnp.where(mask.reshape(mask.shape + (1,) * (inputs.ndim - mask.ndim)), inputs, 0.0)


def float_inputs(inputs, params, carry=None):
    """Float features in the dtype the cells compute in (the params' float dtype, or the given
    carry's), where they would otherwise promote it: float64 features (numpy's default, kept
    under x64) into float32 params, or float32 into bfloat16 ones, would make each step's carry
    wider than the one entering it (a scan-type error deep in JAX). Others are returned as given."""
    if not hasattr(inputs, "dtype") or not jnp.issubdtype(inputs.dtype, jnp.floating):
        return inputs
    # canonical dtypes: a float64 numpy carry while x64 is off is float32 to JAX (and asking
    # result_type about float64 itself would warn)
    dts = [jax.dtypes.canonicalize_dtype(a.dtype) for a in jax.tree.leaves((params, carry))
           if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)]
    if not dts:
        return inputs
    dt = jnp.result_type(*dts)
    return inputs if jnp.promote_types(inputs.dtype, dt) == dt else jnp.asarray(inputs).astype(dt)


def check_carry(cell, params, carry, batch_shape):
    """The cell's zero carry for `batch_shape` if `carry` is None, else `carry` conformed to it
    (`conform_carry`), or a TypeError/ValueError naming the carry before anything is traced."""
    zero = cell.zeros(params, tuple(batch_shape))
    return zero if carry is None else conform_carry(carry, zero, f"carry of the {cell.name} cell")


def conform_carry(given, zero, what: str):
    """`given` as a carry shaped like `zero`: a tuple or list where `zero` is a NamedTuple (an
    LSTM's `(h, c)`, a bidirectional layer's pair) is converted, as are lists, numpy arrays and
    numbers (not tuples) where `zero` has an array (into its dtype); then the pytree and every leaf shape must
    match, else a TypeError/ValueError that starts with `what`. Leaves narrower than `zero`'s are
    widened (`widen_carry`). The one carry check of `run` and of `jrnn.model`."""
    def convert(g, z):
        if isinstance(z, jax.Array) and not isinstance(g, jax.Array):
            # not a tuple: where an array is expected, a tuple is a pytree of the wrong kind
            if isinstance(g, (list, np.ndarray, float, int)) or np.isscalar(g):
                return jnp.asarray(g, z.dtype)
        elif isinstance(z, tuple) and isinstance(g, (list, tuple)) and len(g) == len(z):
            parts = [convert(a, b) for a, b in zip(g, z)]
            return type(z)(*parts) if hasattr(z, "_fields") else type(z)(parts)
        return g

    given = convert(given, zero)
    if jax.tree.structure(given) != jax.tree.structure(zero):
        raise TypeError(f"{what} must look like {jax.tree.structure(zero)} (its zero carry), got "
                        f"{type(given).__name__} {jax.tree.structure(given)}")
    for g, z in zip(jax.tree.leaves(given), jax.tree.leaves(zero)):
        if not hasattr(g, "shape"):
            raise TypeError(f"{what} must hold arrays, got {type(g).__name__}")
        if tuple(g.shape) != tuple(z.shape):
            raise ValueError(f"{what} must have shape {tuple(z.shape)} for these inputs, "
                             f"got {tuple(g.shape)}")
    return widen_carry(given, zero)


def widen_carry(carry, zero):
    """Each carry leaf in the dtype its step returns: a narrower one (a bfloat16 or integer
    carry into float32 params) would come out of the first step wider than it went in (a scan
    carry-type error); a wider one (float64 into float32 params) already computes as given."""
    def widen(g, z):
        dt = jnp.promote_types(g.dtype, z.dtype)
        return g if dt == g.dtype else g.astype(dt)
    return jax.tree.map(widen, carry, zero)


def run(cell, params, inputs, carry=None, *, grad=None, mask=None, reverse: bool = False,
        unroll: int | None = None, time_major: bool = True, **deprecated):
    """Run any `jrnn.rnn.Cell` over a sequence: (hs `[T, ..., H]`, final carry).

    Args:
      cell: a `jrnn.rnn.Cell` (`jrnn.cells.LSTM`, ...).
      inputs: token ids `[T, ...]` or features `[T, ..., D]` (`[B, T, ...]` with `time_major=False`).
      carry: initial carry (the cell's zeros if None).
      grad: how the layer runs over time: `FullBPTT()` (None: the default, one `lax.scan`),
        `Remat()` (sqrt(T) memory for the backward pass), or `jrnn.Parallel(...)` (DEER/ELK,
        falling back to the scan if it does not converge). Masks work with each.
      mask: optional `[T, ...]` (same layout as inputs), 1 = real step. Across padding the carry
        is frozen and the output is zero. With `reverse`, right-padded sequences are
        length-aware: the padding (visited first) leaves the initial carry untouched, so each
        sequence is read from its own last real step back to its first.
      unroll: steps per loop iteration; None picks `default_unroll` (8 on a GPU, 1 on a CPU).
      time_major: False for batch-first inputs and mask; hs come back batch-first too.
      **deprecated: `remat=`, `method=` (0.1's spelling of `grad=`), with a DeprecationWarning.

    `params` are checked against the cell's own init first (`check_cell_params`, sizes read off
    the params), so a transposed or missing weight is named, not met as a shape error mid-scan.
    """
    grad = check_strategy(legacy_strategy(grad, deprecated, "jrnn.rnn.run"), what="jrnn.rnn.run")
    check_cell(cell)
    reverse = checks.boolean("reverse", reverse)   # "False" is truthy
    inputs, mask = time_major_inputs(inputs, time_major), time_major_view(mask, time_major)
    x = host_inputs(inputs)
    sizes = check_cell_params(cell, params, features=dense_features(x))
    if sizes is not None and dense_features(x) not in (None, sizes[0]):
        # params that agree among themselves: the inputs are wrong (as the built-in cells'
        # `project` says too; a custom one might not check)
        raise ValueError(f"dense inputs need last dim {sizes[0]} (input_size), got shape {tuple(x.shape)}")
    inputs = jnp.asarray(x)
    inputs = float_inputs(inputs, params, carry)
    if mask is not None:
        checks.mask01(mask)   # 0/1 only, as the losses read it: 0.5 or NaN is not a step
        mask = jnp.asarray(mask, bool)
        steps = inputs.shape if jnp.issubdtype(inputs.dtype, jnp.integer) else inputs.shape[:-1]
        if mask.shape != steps:   # checked before the padding is zeroed (a broadcast error there)
            raise ValueError(f"mask must have the inputs' steps' shape {checks.as_given(steps, time_major)} "
                             f"({'[T, ...]' if time_major else '[B, T, ...]: time_major=False, both batch-first'}), "
                             f"got {checks.as_given(mask.shape, time_major)}")
    inputs = zero_padding(inputs, mask)
    us = cell.project(params, inputs)
    carry = check_carry(cell, params, carry, us.shape[1:-1])
    unroll = resolve_unroll(unroll, us.shape[0])
    hs, carry = grad.run_layer(cell, params, us, carry, mask=mask, reverse=reverse, unroll=unroll)
    return time_major_view(hs, time_major), carry


def freeze(m, new, old):
    """The one masking rule of every loop: each leaf of `new` where `m` (a real step), of `old`
    across padding. `m` is bool `[...]`, broadcast over each leaf's trailing axes (`[..., H]`);
    None means every step is real."""
    if m is None:
        return new
    # lax.select, not jnp.where: inside a loop body the latter is one more nested jitted call
    return jax.tree.map(lambda a, b: jax.lax.select(
        jnp.broadcast_to(m.reshape(m.shape + (1,) * (a.ndim - m.ndim)), a.shape), a, b), new, old)


def masked(step):
    """Wrap `step(params, carry, u) -> (carry, h)` to take `(u, m)` per step: where m is 0
    (padding) the carry is frozen and the output is zero."""
    def wrapped(p, c, x):
        u, m = x
        u = jnp.where(m[..., None], u, 0.0)  # "double where": padding never feeds NaN/inf into grads
        new_c, h = step(p, c, u)
        return freeze(m, new_c, c), freeze(m, h, jnp.zeros_like(h))
    return wrapped


class Directions(NamedTuple):
    """The two directions of a bidirectional layer: its cell params, or its carry (each
    direction's carry shaped as the cell's, e.g. [B, H])."""
    forward: Any
    backward: Any


def bidirectional(cell, params_fwd, params_bwd, inputs, *, grad=None, mask=None, merge: str = "concat",
                  unroll: int | None = None, carry=None, time_major: bool = True, **deprecated):
    """Forward and length-aware reverse passes merged per step: `[T, ..., 2H]` (concat, forward
    first) or `[T, ..., H]` (sum). `carry`, optional, is a (forward, backward) pair of initial
    carries, the backward one entering at each sequence's last real step. `grad`, `mask`,
    `unroll` and `time_major` as `run`. Returns (hs, Directions(final forward carry, final
    backward carry)); the backward one is its state after the first real step."""
    grad = check_strategy(legacy_strategy(grad, deprecated, "jrnn.rnn.bidirectional"), what="bidirectional")
    inputs, mask = time_major_inputs(inputs, time_major), time_major_view(mask, time_major)
    if merge not in ("concat", "sum"):
        raise ValueError(f"merge must be 'concat' or 'sum', got {merge!r}")
    check_cell(cell)
    x = host_inputs(inputs)
    _check_directions(cell, params_fwd, params_bwd, "params_fwd", "params_bwd", dense_features(x))
    if carry is not None and not (isinstance(carry, Directions) or (type(carry) in (tuple, list) and len(carry) == 2)):
        raise TypeError(f"carry must be a (forward, backward) pair of carries, e.g. Directions(cf, cb), got "
                        f"{type(carry).__name__}")
    cf, cb = (None, None) if carry is None else carry
    inputs = x
    hf, cf = run(cell, params_fwd, inputs, cf, grad=grad, mask=mask, unroll=unroll)
    hb, cb = run(cell, params_bwd, inputs, cb, grad=grad, mask=mask, reverse=True, unroll=unroll)
    hs = jnp.concatenate([hf, hb], -1) if merge == "concat" else hf + hb
    return time_major_view(hs, time_major), Directions(cf, cb)


def _check_directions(cell, fwd, bwd, where_f, where_b, features):
    """Both directions' params checked (`check_cell_params`) and of the same sizes; their (D, H)."""
    sf = check_cell_params(cell, fwd, where=where_f, features=features)
    sb = check_cell_params(cell, bwd, where=where_b, features=features)
    if sf is not None and sb is not None and sf != sb:
        raise ValueError(f"{where_b} have input_size {sb[0]} and hidden_size {sb[1]}, {where_f} {sf[0]} and {sf[1]}: "
                         f"both directions need the same sizes")
    return sf


def _bidirectional_layer(cell, params, inputs, carry=None, *, reverse, **kw):
    return bidirectional(cell, params[0], params[1], inputs, carry=carry, **kw)


def stack(cell, layer_params, inputs, carries=None, *, grad=None, mask=None, dropout: float = 0.0, key=None,
          unroll: int | None = None, reverse: bool = False, bidirectional: bool = False, time_major: bool = True,
          **deprecated):
    """Multi-layer RNN: layer l reads layer l-1's states; dropout (rate `dropout`, needs `key`)
    between layers only, as PyTorch's nn.LSTM(dropout=...). Returns (top hs `[T, ..., H]`, tuple
    of carries). `reverse` runs every layer from t = T-1 down (length-aware under `mask`).
    `bidirectional`: each layer's params (and carry) are a (forward, backward) pair, run and
    concatenated by `bidirectional`, so layer l > 0 reads `[T, ..., 2H]`. `grad`, `mask`,
    `unroll` and `time_major` as `run`."""
    grad = check_strategy(legacy_strategy(grad, deprecated, "jrnn.rnn.stack"), what="jrnn.rnn.stack")
    check_dropout(dropout, key)
    reverse = checks.boolean("reverse", reverse)
    inputs, mask = time_major_inputs(inputs, time_major), time_major_view(mask, time_major)
    if checks.boolean("bidirectional", bidirectional) and reverse:
        raise ValueError("reverse does not apply to a bidirectional stack: it reads both directions already")
    check_cell(cell)
    if type(layer_params) not in (tuple, list) or not layer_params:
        raise TypeError(f"layer_params must be a tuple with one cell params per layer (at least one), got "
                        f"{type(layer_params).__name__}" + (" of none" if type(layer_params) in (tuple, list) else ""))
    if carries is not None and (type(carries) not in (tuple, list) or len(carries) != len(layer_params)):
        # zipped with fewer carries, the layers past them would be dropped and the states of
        # the last one given returned as the top layer's
        raise ValueError(f"carries must be a tuple with one carry per layer ({len(layer_params)}), or None for "
                         f"zeros, got {type(carries).__name__}"
                         + (f" of {len(carries)}" if type(carries) in (tuple, list) else ""))
    inputs = host_inputs(inputs)
    _check_layers(cell, layer_params, dense_features(inputs), bidirectional)
    layer = _bidirectional_layer if bidirectional else run
    carries = (None,) * len(layer_params) if carries is None else carries
    hs, finals = inputs, []
    for i, (p, c) in enumerate(zip(layer_params, carries)):
        if i > 0 and dropout > 0.0:
            hs = dropped(hs, dropout_keep(key, dropout, len(layer_params), i, hs.shape), dropout)
        hs, c = layer(cell, p, hs, c, grad=grad, mask=mask, unroll=unroll, reverse=reverse)
        finals.append(c)
    return time_major_view(hs, time_major), tuple(finals)


def _check_layers(cell, layer_params, features, bidirectional) -> None:
    """Every layer's params checked (`check_cell_params`), each layer > 0 reading the features the
    one below outputs (H, 2H if bidirectional)."""
    width = features
    for i, p in enumerate(layer_params):
        where = f"layer_params[{i}]"
        if bidirectional:
            if not (isinstance(p, Directions) or (type(p) in (tuple, list) and len(p) == 2)):
                raise TypeError(f"{where} must be a (forward, backward) pair of cell params, e.g. Directions(pf, pb), "
                                f"as bidirectional=True takes, got {type(p).__name__}")
            sizes = _check_directions(cell, p[0], p[1], where + ".forward", where + ".backward", width)
        else:
            sizes = check_cell_params(cell, p, where=where, features=width)
        if i > 0 and sizes is not None and width is not None and sizes[0] != width:
            raise ValueError(f"{where} read {sizes[0]} features (their input_size), but layer {i - 1} outputs "
                             f"{width}" + (" (2H: bidirectional)" if bidirectional else " (its hidden_size)"))
        width = None if sizes is None else sizes[1] * (2 if bidirectional else 1)


def check_dropout(dropout, key) -> None:
    """A rate in [0, 1) (NaN refused), and a PRNG key when it is > 0."""
    number = isinstance(dropout, (int, float, np.integer, np.floating)) or (
        isinstance(dropout, (np.ndarray, jax.Array)) and dropout.ndim == 0
        and jnp.issubdtype(dropout.dtype, jnp.floating))
    if isinstance(dropout, (bool, np.bool_)) or not number:
        raise TypeError(f"dropout must be a number in [0, 1), got {type(dropout).__name__} {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if dropout > 0.0 and key is None:
        raise ValueError("dropout needs a PRNG key (pass key=...; use dropout=0 at evaluation)")
    if dropout > 0.0 and not checks.is_key(key):
        raise TypeError(f"dropout's key must be one PRNG key (jax.random.key(seed), or a legacy "
                        f"jax.random.PRNGKey(seed)), got {type(key).__name__} of shape {np.shape(key)}")


def dropout_keep(key, rate, n_layers: int, layer: int, shape) -> jax.Array:
    """The keep-mask (True = kept) of the inputs of `layer` >= 1 of an `n_layers` stack, drawn
    once for the whole chunk, `shape` = `[T, ..., H]`. `stack`, the rematerialised loss and the
    TBPTT windows (`jrnn.model`, `jrnn.tbptt`) all draw here, so one key drops the same units at
    the same steps in each."""
    return jax.random.bernoulli(jax.random.split(key, n_layers)[layer], 1.0 - rate, shape)


def dropped(hs, keep, rate):
    """Inverted dropout: kept units scaled by 1 / (1 - rate), so evaluation needs no rescaling."""
    # the scale in hs's dtype: a numpy float64 rate would otherwise promote float32/bfloat16 states
    return jnp.where(keep, hs / jnp.asarray(1.0 - rate, hs.dtype), 0.0)
