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
working. A cell opts in with a `Linearization` (below): `jrnn.cells.lstm`, `jrnn.cells.gru` and
`jrnn.cells.elman` each give theirs. Tests (`tests/test_hoisted.py`, `tests/test_elman_scan.py`)
compare each with the plain scan of its step.

The weight gradient's affine term, a product over all T*B rows, goes through
`jrnn.batch_split.per_device`: under `batch_split(mesh)`, as in a data-parallel step, each
device computes on its own rows. The input projection (`project`, `take_rows`, `merged`) lives in
`jrnn.projection` and the data-parallel tracing context (`batch_split`, `per_device`) in
`jrnn.batch_split`; those names stay importable from here.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jrnn import projection, rnn
from jrnn.batch_split import batch_split, per_device  # noqa: F401  (batch_split: re-exported, below)
# moved to the module named for them; importable from here too (plain re-exports)
from jrnn.projection import merged, project, take_rows  # noqa: F401

__all__ = [   # the public API, documented in the API reference
    "Linearization",
    "run",
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


def _entering(cs, c0, reverse):
    """The carry entering each step: c0, then the carries shifted by one in the direction of travel."""
    if reverse:
        return jax.tree.map(lambda a, z: jnp.concatenate([a[1:], z[None]]), cs, c0)
    return jax.tree.map(lambda a, z: jnp.concatenate([z[None], a[:-1]]), cs, c0)


def _affine(h, w, b):
    """h [T, ..., H] @ w + b, every step at once, as one 2-D matmul over all T*B rows.

    The weight gradient JAX derives from it, a [T*B, G*H]^T x [T*B, H] product, is then a 2-D
    matmul too. With the rows left as [T, B], XLA's CPU backend first copies the [T, B, G*H]
    cotangent into a transposed layout and multiplies more slowly. Under `batch_split` each
    device merges its own rows (`per_device`): merged over the split B, or batch-major after a
    copy, the data-parallel step measured slower (docs/performance.md).
    """
    a = per_device(projection.merged, h, w, row_dims=1)
    return a if b is None else a + b.reshape((1,) * (a.ndim - 1) + b.shape)


def _forward(lin, w, b, us, c0, mask, reverse, unroll, *, keep_saved=True):
    """(final carry, carries after every step [T, ...], saved [T, ...] or None if not keep_saved).

    Where the first leaf of a cell's `saved` is shaped like u_t (the LSTM's gate
    coefficients, [..., 4H]), the loop writes it over us[t], just read, instead of stacking it
    in a new [T, ..., G*H] array: its cache lines are at hand, and no zero-filled stack is
    allocated. us is dead after this loop in `_recurrence_jvp`; a plain forward pass
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
            new = rnn.freeze(m, new, c)   # m is already [..., H], each leaf's shape
            return new, (new, saved)

        final, (cs, saved) = jax.lax.scan(body, c0, (us, mask), reverse=reverse, unroll=unroll)
        return final, cs, saved

    def body_over_us(carry, x):
        c, buf = carry
        t, m = x
        new, saved = lin.forward(w, b, c, jax.lax.dynamic_index_in_dim(buf, t, keepdims=False))
        first, *rest = jax.tree.leaves(saved)
        buf = jax.lax.dynamic_update_index_in_dim(buf, first, t, 0)
        new = rnn.freeze(m, new, c)   # m is already [..., H], each leaf's shape
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
    # at; against w itself, each step's dot contracts w's rows in place, which measured slower.
    # A single row (B = 1, a matrix-vector product) keeps w, which measured faster there.
    # Forward mode pays the other way round (docs/performance.md, "Cells").
    rows = math.prod(jax.tree.leaves(c0)[0].shape[:-1])
    wt = w.T if rows > 1 else None

    def body(dc, x):
        k_t, s_t, m = x
        dh = lin.h(dc)
        y = dh @ w if wt is None else jax.lax.dot_general(dh, wt, (((dh.ndim - 1,), (1,)), ((), ())))
        new = lin.tangent(k_t, dc, y, s_t)
        new = rnn.freeze(m, new, dc)
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
