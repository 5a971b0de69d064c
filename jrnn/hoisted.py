"""Any cell's recurrence with its weight gradient hoisted out of the backward loop.

A cell step is `carry' = core(carry, u_t, a_t)` with the recurrent term `a_t = h_{t-1} W (+ b)`
([..., H] x [H, G*H]). Differentiating a plain `lax.scan` of it gives a backward loop that, at
every step, re-derives the gates' derivatives, multiplies by W^T, and accumulates dL/dW +=
h_{t-1}^T da_t, one [H, B] x [B, G*H] outer product per step into a loop-carried sum.

Here the recurrence has a custom JVP in three parts:

1. the forward scan also keeps what the derivative needs (an LSTM's per-step derivative
   coefficients, computed in the loop and written over its inputs; a GRU's r, z, n and
   h W_n + b_n), so no gate is evaluated twice;
2. outside any loop, on whole `[T, ...]` arrays: the GRU's derivative coefficients, and every
   step's input-and-weight term `du_t`, `h_{t-1} dW + db` (one [T*B, H] x [H, G*H] matmul);
3. a tangent scan that is linear in the carry's tangent, with one product `dh W` per step and
   only `[..., H]`-sized inputs and outputs per step.

JAX transposes part 3 for reverse mode: the backward loop keeps one `dz_t W^T` per step, and
dL/dW becomes one [G*H, T*B] x [T*B, H] matmul after it. Because the rule is an ordinary JAX
function (a `custom_jvp`, not a `custom_vjp`), forward mode, `vmap` and higher derivatives keep
working. A cell opts in with a `Linearization` (below): `jrnn.cells` gives the LSTM's and
GRU's, `jrnn.elman_scan` the Elman step's. Tests (`tests/test_hoisted.py`,
`tests/test_elman_scan.py`) compare each with the plain scan of its step.

The products over all T*B rows around the loops (that weight gradient's affine term, every
model's input projection `project`, `jrnn.model.readout`) go through `per_device`: under
`batch_split(mesh)`, as in a data-parallel step, each device computes on its own rows.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jrnn import rnn

__all__ = [   # the public API, documented in the API reference
    "Linearization",
    "run",
    "project",
    "take_rows",
    "batch_split",
    "per_device",
    "merged",
]


class Linearization(NamedTuple):
    """A cell's step split around its recurrent matmul, with its tangent.

      forward(w, b, carry, u) -> (carry', saved)   one primal step; `saved` is what the tangent
                                                   needs that the carries do not hold
      h(carry) -> [..., H]                         the part of the carry that multiplies W
      out(carry) -> [..., H]                       the step's output (h)
      coefficients(saved, prev, new) -> (k, e)     per-step coefficients, computed on whole [T, ...]
                                                   arrays (prev/new: the carries entering / leaving
                                                   each step): k for the tangent scan, e for drive
      drive(k, e, du, da) -> s                     the tangent's inputs at each step, linear in
                                                   (du [T, ..., G*H], da = h_{t-1} dW + db), on
                                                   whole arrays (the LSTM's is du + da itself, the
                                                   GRU's [T, ..., H])
      tangent(k_t, dcarry, y, s_t) -> dcarry'      one tangent step, linear in (dcarry, y, s_t),
                                                   y = h(dcarry) W
    """
    forward: Callable
    h: Callable
    out: Callable
    coefficients: Callable
    drive: Callable
    tangent: Callable


def _select(m, new, old):
    """`new` where m (a real step), `old` across padding; m has the carry leaves' shape."""
    if m is None:
        return new
    # lax.select, not jnp.where: the latter is a nested jitted call inside the loop body
    return jax.tree.map(lambda a, b: jax.lax.select(m, a, b), new, old)


def _entering(cs, c0, reverse):
    """The carry entering each step: c0, then the carries shifted by one in the direction of travel."""
    if reverse:
        return jax.tree.map(lambda a, z: jnp.concatenate([a[1:], z[None]]), cs, c0)
    return jax.tree.map(lambda a, z: jnp.concatenate([z[None], a[:-1]]), cs, c0)


# The mesh whose "data" axis splits the batch (set by `batch_split`), or None: one device.
_SPLIT_MESH = contextvars.ContextVar("jrnn_hoisted_split_mesh", default=None)


@contextlib.contextmanager
def batch_split(mesh):
    """Trace recurrences for a batch split over the "data" axis of `mesh`
    (`jrnn.train.make_data_parallel_step`): each device computes its share of the weight
    gradient from its own rows (below), then one all-reduce sums them.

    It acts when a function is *traced*, in this thread: a function jitted and already traced
    outside the block (your own `jax.jit` loss, say) keeps that trace inside it and vice versa,
    and a thread started inside the block traces outside it (Python threads do not inherit
    context variables). Either form gives the same numbers up to the order of the weight
    gradient's sum; only the speed differs."""
    token = _SPLIT_MESH.set(mesh)
    try:
        yield
    finally:
        _SPLIT_MESH.reset(token)


def merged(x, w):
    """x [T, ..., K] @ w [K, N] as one 2-D matmul over all T*B rows."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[:-1] + w.shape[-1:])


def take_rows(ids, w):
    """Rows of w [V, N] for ids [T, ...], gathered over the flattened ids. An id outside [0, V)
    gives a NaN row, -1 included (`jnp.take` alone would read it as V-1): under a plain `jax.jit`,
    where jrnn's id checks cannot raise, the loss is NaN rather than quietly wrong."""
    flat = ids.reshape(-1)
    # every id outside [0, V) -> V, past the end: the gather's fill value. Both ends are tested
    # here, on the ids' own width: the gather narrows int64 indices to int32, so 2**32 + 1 would
    # otherwise read row 1. Narrow ids widen to int32 first, so that V fits.
    flat = flat.astype(jnp.promote_types(flat.dtype, jnp.int32))
    flat = jnp.where((flat >= 0) & (flat < w.shape[0]), flat, w.shape[0])
    # Rows as [N, 1, K] slices (the row axis kept, then reshaped away), not `jnp.take`'s collapsed
    # [N, K]: the gradient's scatter-add then reads the cotangent where it lies. With the axis
    # collapsed, XLA's CPU backend first copied all T*B rows into another layout (20.8 ms of an
    # LSTM's 650 ms K-step data-parallel step per device at (64, 256, 1024, 65), 2-core CPU).
    dn = jax.lax.GatherDimensionNumbers(offset_dims=(1, 2), collapsed_slice_dims=(), start_index_map=(0,))
    rows = jax.lax.gather(w, flat[:, None], dn, slice_sizes=(1,) + w.shape[1:], mode="fill", fill_value=jnp.nan)
    return rows.reshape(ids.shape + w.shape[1:])


def per_device(f, x, w, *, row_dims: int, unsplit=None):
    """`f(x, w)` for a time-major x [T, B, ...] whose B (axis 1) `batch_split` splits over devices:
    each device applies f to its own rows inside a `shard_map`, and JAX's transpose of it is the
    local weight-gradient product plus one all-reduce. Outside `batch_split`, or where x has no
    batch axis (x.ndim <= row_dims + 1, row_dims being f's trailing per-row dims) or B does not
    divide over the devices, it is `f(x, w)` (or `unsplit(x, w)`, where given): correct under any
    sharding.

    Why: letting XLA's sharding propagation place a product over all T*B rows regathers every
    device's rows (merging T with a split B), or copies the rows batch-major first, or (for a
    gather) copies the gradient's rows into another layout before its scatter.
    """
    mesh = _SPLIT_MESH.get()
    if mesh is None or x.ndim <= row_dims + 1 or x.shape[1] % mesh.shape["data"]:
        return (unsplit or f)(x, w)
    rows = P(None, "data")
    return jax.shard_map(f, mesh=mesh, in_specs=(rows, P()), out_specs=rows)(x, w)


def project(w, b, xs):
    """Every step's input projection at once: rows of w [D, N] for token ids [T, ...], or
    features [T, ..., D] @ w; plus b [N]. Per device under `batch_split`. Inputs are checked first
    (`jrnn.rnn.check_input_array`: no time axis, empty, ids outside [0, D), wrong feature size)."""
    rnn.check_input_array(w.shape[0], xs)
    xs = jnp.asarray(xs)
    if jnp.issubdtype(xs.dtype, jnp.integer):   # row gather == onehot(x) W
        # b goes where there are fewer rows: on the [D, N] table when D < T*B (then db is a sum
        # over D rows of the table's gradient instead of all T*B rows of the cotangent: the
        # K-step data-parallel LSTM step at (64, 256, 1024, 65) 608-628 -> 564-606 ms, 2-core
        # CPU, interleaved), else on the rows (at (1, 100, 25, 80) the table measured 344 ->
        # 377 us). Either way the same sums.
        if w.shape[0] < xs.size:
            return per_device(take_rows, xs, w + b[None], row_dims=0)
        u = per_device(take_rows, xs, w, row_dims=0)
    else:
        u = per_device(merged, xs, w, row_dims=1, unsplit=jnp.matmul)
    return u + b.reshape((1,) * (u.ndim - 1) + b.shape)


def _affine(h, w, b):
    """h [T, ..., H] @ w + b, every step at once, as one 2-D matmul over all T*B rows.

    The weight gradient JAX derives from it, a [T*B, G*H]^T x [T*B, H] product, is then a 2-D
    matmul too. With the rows left as [T, B], XLA's CPU backend first copies the [T, B, G*H]
    cotangent into a transposed layout and multiplies ~3x slower (an LSTM's value_and_grad at
    (B, H, T) = (32, 256, 1024): 865 ms unmerged, 654 ms merged, 2-core CPU).

    Under `batch_split` each device merges its own rows (`per_device`). The K-step data-parallel
    LSTM step at (64, 256, 1024, 65) measured 985 ms with unmerged rows, 1170 ms merged over the
    split B, and (another day) 671 ms merged batch-major after a copy of h and of the
    cotangent against 644 ms per device, 2-core CPU, 3 interleaved runs each.
    """
    a = per_device(merged, h, w, row_dims=1)
    return a if b is None else a + b.reshape((1,) * (a.ndim - 1) + b.shape)


def _forward(lin, w, b, us, c0, mask, reverse, unroll, *, keep_saved=True):
    """(final carry, carries after every step [T, ...], saved [T, ...] or None if not keep_saved).

    Where the first leaf of a cell's `saved` is shaped like u_t (the LSTM's gate
    coefficients, [..., 4H]), the loop writes it over us[t], just read, instead of stacking it
    in a new [T, ..., G*H] array: its cache lines are at hand, and no zero-filled stack is
    allocated. The K-step data-parallel LSTM step at (64, 256, 1024, 65): that write 15.7 ->
    7.8 ms per device and step, the step 659-682 -> 615-662 ms (3 interleaved rounds, 2-core
    CPU). us is dead after this loop in `_recurrence_jvp`; a plain forward pass
    (`keep_saved=False`) scans without the buffer and XLA drops what it would have saved.
    """
    # saved is any pytree (a tuple, a NamedTuple, nested): its first leaf, if shaped like u_t,
    # goes over us, the rest are stacked, and the tree is rebuilt as the cell returned it
    leaves, tree = ([], None) if not keep_saved else \
        jax.tree.flatten(jax.eval_shape(lambda c, u: lin.forward(w, b, c, u)[1], c0, us[0]))
    over_us = bool(leaves) and (leaves[0].shape, leaves[0].dtype) == (us.shape[1:], us.dtype)
    if not over_us:
        def body(c, x):
            u, m = x
            new, saved = lin.forward(w, b, c, u)   # b: the recurrent bias, if the cell has one
            new = _select(m, new, c)
            return new, (new, saved)

        final, (cs, saved) = jax.lax.scan(body, c0, (us, mask), reverse=reverse, unroll=unroll)
        return final, cs, saved

    def body_over_us(carry, x):
        c, buf = carry
        t, m = x
        new, saved = lin.forward(w, b, c, jax.lax.dynamic_index_in_dim(buf, t, keepdims=False))
        first, *rest = jax.tree.leaves(saved)
        buf = jax.lax.dynamic_update_index_in_dim(buf, first, t, 0)
        new = _select(m, new, c)
        return (new, buf), (new, rest)

    (final, first), (cs, rest) = jax.lax.scan(body_over_us, (c0, us), (jnp.arange(us.shape[0]), mask),
                                              reverse=reverse, unroll=unroll)
    return final, cs, jax.tree.unflatten(tree, [first, *rest])


def _outputs(lin, cs, mask):
    hs = lin.out(cs)
    return hs if mask is None else jnp.where(mask, hs, 0.0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 6, 7))
def _recurrence(lin, w, b, us, c0, mask, reverse, unroll):
    final, cs, _ = _forward(lin, w, b, us, c0, mask, reverse, unroll, keep_saved=False)
    return _outputs(lin, cs, mask), final


@_recurrence.defjvp
def _recurrence_jvp(lin, reverse, unroll, primals, tangents):
    w, b, us, c0, mask = primals
    dw, db, dus, dc0, _ = tangents
    final, cs, saved = _forward(lin, w, b, us, c0, mask, reverse, unroll)
    prev = _entering(cs, c0, reverse)
    k, e = lin.coefficients(saved, prev, cs)
    da = _affine(lin.h(prev), dw, None if b is None else db)   # every step's dW term, one matmul
    s = lin.drive(k, e, dus, da)
    # dh @ w written against w^T, materialized outside the loop: the backward loop (JAX's
    # transpose of this one) then multiplies dz @ w^T in the layout XLA's CPU dots are fastest
    # at. Against w itself, each step's dot contracts w's rows in place: at B = 32, H = 256,
    # 1,024 steps on one core, 144 ms against 111 ms. The K-step LSTM step (2-core CPU,
    # interleaved): (64, 256, 1024, 65) data-parallel 650-668 -> 625-647 ms, (16, 128, 1024, 65)
    # 64-66 -> 56-58 ms. A single row (B = 1, a matrix-vector product) keeps w: at
    # (1, 100, 25, 80) w^T took 425-455 us per step against 380-390. Forward mode pays the
    # other way round.
    rows = math.prod(jax.tree.leaves(c0)[0].shape[:-1])
    wt = w.T if rows > 1 else None

    def body(dc, x):
        k_t, s_t, m = x
        dh = lin.h(dc)
        y = dh @ w if wt is None else jax.lax.dot_general(dh, wt, (((dh.ndim - 1,), (1,)), ((), ())))
        new = lin.tangent(k_t, dc, y, s_t)
        new = _select(m, new, dc)
        return new, lin.out(new)

    dfinal, dhs = jax.lax.scan(body, dc0, (k, s, mask), reverse=reverse, unroll=unroll)
    if mask is not None:
        dhs = jnp.where(mask, dhs, 0.0)
    return (_outputs(lin, cs, mask), final), (dhs, dfinal)


def run(lin: Linearization, w, b, us, c0, *, mask=None, reverse: bool = False, unroll: int | None = None):
    """All outputs of the recurrence and its final carry.

    Args:
      lin: the cell's `Linearization`.
      w: recurrent weight `[H, G*H]`; b: recurrent bias `[G*H]` or None.
      us: projected inputs `[T, ..., G*H]`.
      c0: initial carry (a pytree of `[..., H]`).
      mask: optional `[T, ...]`: where 0 (padding) the carry is frozen and the output is 0.
      unroll: steps per loop iteration; None: `jrnn.rnn.default_unroll`.

    Returns:
      (hs `[T, ..., H]`, final carry), equal to a `lax.scan` of the cell's step.
    """
    if mask is not None:
        mask = jnp.asarray(mask, bool)[..., None]
        us = jnp.where(mask, us, 0.0)  # "double where": padding never feeds NaN/inf into grads
        # broadcast once to the carry's [T, ..., H], so the loops' bodies hold no mask-only work
        # for JAX to split into a loop of its own when it differentiates them
        mask = jnp.broadcast_to(mask, mask.shape[:-1] + jax.tree.leaves(c0)[0].shape[-1:])
    return _recurrence(lin, w, b, us, c0, mask, bool(reverse), rnn.resolve_unroll(unroll, us.shape[0]))
