"""The one `lax.scan` over time that every model and cell goes through.

A step is `(params, carry, x_t) -> (carry, y_t)`; `scan` owns time-major vs batch-major, reverse
direction, `unroll` and (optional) rematerialisation, so every wrapper works with every cell.
`run` also dispatches to the parallel-in-time solvers of `jrnn.parallel` (`method=`), which sit
below this module (they need only a step function).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import checks, losses, parallel

__all__ = [   # the public API, documented in the API reference
    "Cell",
    "Directions",
    "run",
    "scan",
    "checkpointed_scan",
    "stack",
    "bidirectional",
    "dropout_keep",
    "default_unroll",
]

Step = Callable[[Any, Any, Any], tuple]

# Steps `lax.scan` unrolls per loop iteration when no `unroll` is given, by backend. A GPU pays a
# kernel launch and a loop-condition sync per iteration, so unrolling 8 steps won on every GPU
# config measured on an H100 (issue 14: 2-3.4x at small B*H, 1.15-1.9x at large); on the CPU one
# step per iteration was fastest (`python -m experiments.bench`). Other backends: unmeasured, 1.
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


class Cell(NamedTuple):
    """A recurrent cell as pure functions (see `jrnn.cells` for the contract and the cells).

    `scan`, optional, is a cell's own whole-sequence loop, `(params, us, carry, *, mask, reverse,
    unroll) -> (hs, carry)`, equal to scanning `step` but faster (the built-in cells hoist their
    weight gradient out of the backward loop: `jrnn.elman_scan` for Elman, `jrnn.hoisted` for
    LSTM and GRU); `run` uses it unless `remat` is asked for.
    Shapes, for a batch of B: `init(key, D, H)` -> params; `project(params, inputs [T, B, ...])`
    -> us [T, B, ...] (the input projection of every step at once); `step(params, carry, u_t)`
    -> (carry, h_t [B, H]); `zeros(params, (B,))` -> the zero carry.
    `name` names the cell in errors; `params`, optional, is the params type (or tuple of types)
    the cell takes, so that params of another cell are refused with a message naming both.
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
    [0, D) gives a NaN row (`jrnn.hoisted.take_rows`). Concrete values are checked here; traced ids get a check that jrnn's training steps run
    and raise after the call (`jrnn.checks`). Float
    inputs need at least 2 dims: a 1-D float array would otherwise be read as T steps.
    """
    D = input_size
    x = inputs
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
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
    dts = [a.dtype for a in jax.tree.leaves((params, carry))
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


def run(cell, params, inputs, carry=None, *, mask=None, reverse: bool = False, unroll: int | None = None,
        remat: bool = False, method: str = "sequential"):
    """Run any `jrnn.cells.Cell` over time-major inputs.

    Args:
      cell: a `jrnn.cells.Cell`.
      inputs: token ids `[T, ...]` or features `[T, ..., D]`.
      carry: initial carry (the cell's zeros if None).
      mask: optional `[T, ...]`, 1 = real step. Across padding the carry is frozen and the
        output is zero. With `reverse`, right-padded sequences are length-aware: the padding
        (visited first) leaves the initial carry untouched, so each sequence is read from its
        own last real step back to its first.
      unroll: steps per loop iteration; None picks `default_unroll` (8 on a GPU, 1 on a CPU).
      method: "sequential" (one `lax.scan`), or parallel in time (`jrnn.parallel`): "deer",
        "quasi_deer", "elk", "quasi_elk", each falling back to the scan if it does not
        converge; "auto" picks by backend and size (`jrnn.parallel.auto_method`). Masks work
        with every method; `remat` and `unroll` belong to the sequential scan.

    Returns:
      (hs `[T, ..., H]`, final carry).
    """
    parallel.check_method(method)
    reverse, remat = checks.boolean("reverse", reverse), checks.boolean("remat", remat)   # "False" is truthy
    if remat and method not in ("sequential", "auto"):
        raise ValueError(f"remat applies to the sequential scan only, not to method={method!r}")
    inputs = jnp.asarray(inputs)
    check_time_axis(inputs.shape)
    inputs = float_inputs(inputs, params, carry)
    if mask is not None:
        losses._check_mask(mask)   # 0/1 only, as the losses read it: 0.5 or NaN is not a step
        mask = jnp.asarray(mask, bool)
        steps = inputs.shape if jnp.issubdtype(inputs.dtype, jnp.integer) else inputs.shape[:-1]
        if mask.shape != steps:   # checked before the padding is zeroed (a broadcast error there)
            raise ValueError(f"mask must have shape {steps} ([T, ...]), got {mask.shape}")
    inputs = zero_padding(inputs, mask)
    us = cell.project(params, inputs)
    carry = check_carry(cell, params, carry, us.shape[1:-1])
    unroll = resolve_unroll(unroll, us.shape[0])
    if method == "auto":
        lead = us.shape[1:-1]
        method = "sequential" if remat else parallel.auto_method(
            us.shape[0], math.prod(lead), sum(c.shape[-1] for c in jax.tree.leaves(carry)), jax.default_backend())
    if method != "sequential":
        # a frozen carry across padding is just another step function
        step, xs = (cell.step, us) if mask is None else (masked(cell.step), (us, mask))
        hs, carry, _ = parallel.solve(step, params, xs, carry, method=method, reverse=reverse)
        return hs, carry
    if cell.scan is not None and not remat:
        return cell.scan(params, us, carry, mask=mask, reverse=reverse, unroll=unroll)
    if mask is None:
        carry, hs = scan(cell.step, params, carry, us, reverse=reverse, unroll=unroll, remat=remat)
        return hs, carry
    carry, hs = scan(masked(cell.step), params, carry, (us, mask), reverse=reverse, unroll=unroll, remat=remat)
    return hs, carry


def masked(step):
    """Wrap `step(params, carry, u) -> (carry, h)` to take `(u, m)` per step: where m is 0
    (padding) the carry is frozen and the output is zero."""
    def wrapped(p, c, x):
        u, m = x
        u = jnp.where(m[..., None], u, 0.0)  # "double where": padding never feeds NaN/inf into grads
        new_c, h = step(p, c, u)
        c = jax.tree.map(lambda a, b: jnp.where(m[..., None], a, b), new_c, c)
        return c, jnp.where(m[..., None], h, 0.0)
    return wrapped


class Directions(NamedTuple):
    """The two directions of a bidirectional layer: its cell params, or its carry (each
    direction's carry shaped as the cell's, e.g. [B, H])."""
    forward: Any
    backward: Any


def bidirectional(cell, params_fwd, params_bwd, inputs, *, mask=None, merge: str = "concat",
                  unroll: int | None = None, method: str = "sequential", carry=None, remat: bool = False):
    """Forward and length-aware reverse passes merged per step: `[T, ..., 2H]` (concat, forward
    first) or `[T, ..., H]` (sum). `carry`, optional, is a (forward, backward) pair of initial
    carries, the backward one entering at each sequence's last real step. Returns (hs,
    Directions(final forward carry, final backward carry)); the backward one is its state after
    the first real step."""
    if merge not in ("concat", "sum"):
        raise ValueError(f"merge must be 'concat' or 'sum', got {merge!r}")
    cf, cb = (None, None) if carry is None else carry
    hf, cf = run(cell, params_fwd, inputs, cf, mask=mask, unroll=unroll, remat=remat, method=method)
    hb, cb = run(cell, params_bwd, inputs, cb, mask=mask, reverse=True, unroll=unroll, remat=remat, method=method)
    return (jnp.concatenate([hf, hb], -1) if merge == "concat" else hf + hb), Directions(cf, cb)


def _bidirectional_layer(cell, params, inputs, carry=None, *, reverse, **kw):
    return bidirectional(cell, params[0], params[1], inputs, carry=carry, **kw)


def stack(cell, layer_params, inputs, carries=None, *, mask=None, dropout: float = 0.0, key=None,
          unroll: int | None = None, reverse: bool = False, remat: bool = False, method: str = "sequential",
          bidirectional: bool = False):
    """Multi-layer RNN: layer l reads layer l-1's states; dropout (rate `dropout`, needs `key`)
    between layers only, as PyTorch's nn.LSTM(dropout=...). Returns (top hs, tuple of carries).
    `reverse` runs every layer from t = T-1 down (length-aware under `mask`). `bidirectional`:
    each layer's params (and carry) are a (forward, backward) pair, run and concatenated by
    `bidirectional`, so layer l > 0 reads `[T, ..., 2H]`."""
    check_dropout(dropout, key)
    reverse, remat = checks.boolean("reverse", reverse), checks.boolean("remat", remat)
    if checks.boolean("bidirectional", bidirectional) and reverse:
        raise ValueError("reverse does not apply to a bidirectional stack: it reads both directions already")
    layer = _bidirectional_layer if bidirectional else run
    carries = (None,) * len(layer_params) if carries is None else carries
    hs, finals = inputs, []
    for i, (p, c) in enumerate(zip(layer_params, carries)):
        if i > 0 and dropout > 0.0:
            hs = dropped(hs, dropout_keep(key, dropout, len(layer_params), i, hs.shape), dropout)
        hs, c = layer(cell, p, hs, c, mask=mask, unroll=unroll, reverse=reverse, remat=remat, method=method)
        finals.append(c)
    return hs, tuple(finals)


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
    if dropout > 0.0 and not _is_key(key):
        raise TypeError(f"dropout's key must be one PRNG key (jax.random.key(seed), or a legacy "
                        f"jax.random.PRNGKey(seed)), got {type(key).__name__} of shape {np.shape(key)}")


def _is_key(key) -> bool:
    """One PRNG key: a typed key array of shape (), or a legacy uint32 [2] key."""
    dtype = getattr(key, "dtype", None)
    if dtype is None:
        return False
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return key.shape == ()
    return dtype == jnp.uint32 and key.shape == (2,)


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
