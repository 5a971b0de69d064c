"""Parallel-in-time evaluation of nonlinear RNNs: DEER and quasi-DEER.

A sequential scan needs T dependent steps. DEER (Lim et al., 2024) instead guesses all T states
at once and refines them by Newton's method: linearising h_t = f(h_{t-1}, u_t) around the
guess gives the *linear* recurrence

    h_t = J_t h_{t-1} + (f(h'_{t-1}, u_t) - J_t h'_{t-1}),     J_t = df/dh at h'_{t-1},

which `jax.lax.associative_scan` solves in O(log T) depth. quasi-DEER (Gonzalez et al., 2024)
keeps only diag(J_t): O(H) instead of O(H^2) per step, more iterations. `damping` < 1 takes
partial Newton steps (a simple stand-in for ELK's trust region) when the linearisation is
unstable.

Convergence is judged on the true residual max_t |h_t - f(h_{t-1}, u_t)|; if it is not below
`tol` after `max_iters`, the result is recomputed with the sequential scan (so the answer is
never silently wrong) and `info.fell_back` says so.

Gradients do not differentiate through the Newton iterations: at the fixed point, the adjoint
lambda_t = dL/dh_t + J_{t+1}^T lambda_{t+1} is itself a linear recurrence, solved (in reverse)
by the same associative scan with the full Jacobians, then one batched vjp of the cell gives
the parameter, input and h0 gradients (`jax.custom_vjp`).

Precision: the solve needs true float32. On NVIDIA GPUs since Ampere JAX computes float32
matmuls as TF32 by default (10-bit mantissa), and the Newton iteration then stalls far above
its tolerance. So every dot product here, the cell's own included (its step is traced inside
`jax.default_matmul_precision("highest")`, which fixes the precision of each traced dot_general
and of its transposes), runs at `Precision.HIGHEST`, whatever the caller's default.

Carries may be any pytree of `[..., H_i]` arrays (the LSTM's (h, c)): they are concatenated into
one state vector `[..., sum H_i]` for the solve, and the cell's outputs are recomputed from the
solved carries in one parallel pass. Shapes: us `[T, ..., G*H]`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import rnn

METHODS = ("sequential", "deer", "quasi_deer", "auto")

HIGHEST = jax.lax.Precision.HIGHEST


def _full_precision(fn):
    """Trace `fn` with every matmul at full precision (the cell step it calls included): the
    precision is fixed on each dot_general when it is traced, so it holds inside the caller's
    jit and under any outer `jax.default_matmul_precision`."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)
    return wrapped


def _mv(A, x):
    """A `[..., H, H]` @ x `[..., H]` at full precision."""
    return jnp.matmul(A, x[..., None], precision=HIGHEST)[..., 0]


class DeerInfo(NamedTuple):
    """What the Newton solve did."""
    iterations: jax.Array  # Newton iterations run
    residual: jax.Array    # max_t |h_t - f(h_{t-1}, u_t)| of the Newton result
    fell_back: jax.Array   # True if it did not converge and the sequential scan was used


def _jacobians(f, prev, us):
    """Per-step, per-sequence Jacobians df/dh: `[T, ..., H, H]`."""
    lead, H = prev.shape[:-1], prev.shape[-1]
    jac = jax.vmap(jax.jacfwd(lambda h, u: f(h[None], u[None])[0]))
    return jac(prev.reshape(-1, H), us.reshape((-1,) + us.shape[len(lead):])).reshape(lead + (H, H))


def _solve_linear(A, b, *, diagonal: bool, reverse: bool = False):
    """x_t = A_t x_{t-1} + b_t with x_{-1} = 0 (x_{T} = 0 when reverse), by associative scan."""
    def combine(first, second):  # apply `first`, then `second`
        A1, b1 = first
        A2, b2 = second
        if diagonal:
            return A2 * A1, A2 * b1 + b2
        return jnp.matmul(A2, A1, precision=HIGHEST), _mv(A2, b1) + b2
    if reverse:
        flip = lambda t: jax.tree.map(lambda a: jnp.flip(a, 0), t)
        _, x = jax.lax.associative_scan(combine, flip((A, b)))
        return jnp.flip(x, 0)
    _, x = jax.lax.associative_scan(combine, (A, b))
    return x


def _newton(f, us, h0, *, diagonal, tol, max_iters, damping):
    T = us.shape[0]
    shift = lambda hs: jnp.concatenate([h0[None], hs[:-1]])

    def residual(hs):
        # inf unless every state is finite: products of many Jacobians can overflow, and a
        # NaN must never pass for convergence
        diff = jnp.abs(hs - f(shift(hs), us))
        return jnp.where(jnp.all(jnp.isfinite(diff)), jnp.max(diff), jnp.inf)

    def body(state):
        hs, it, _ = state
        prev = shift(hs)
        fs = f(prev, us)
        J = _jacobians(f, prev, us)
        if diagonal:
            J = jnp.diagonal(J, axis1=-2, axis2=-1)
            b = fs - J * prev
            b = b.at[0].add(J[0] * h0)          # h_{-1} = h0 enters through step 0
        else:
            b = fs - _mv(J, prev)
            b = b.at[0].add(_mv(J[0], h0))
        new = _solve_linear(J, b, diagonal=diagonal)
        new = hs + damping * (new - hs)
        return new, it + 1, residual(new)

    def cond(state):
        _, it, res = state
        return (it < max_iters) & ~(res <= tol)

    hs0 = jnp.zeros((T,) + h0.shape, h0.dtype)
    hs, it, res = jax.lax.while_loop(cond, body, (hs0, jnp.asarray(0), residual(hs0)))
    return hs, it, res


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4, 5, 6, 7))
@_full_precision
def _solve(step, params, us, h0, diagonal, tol, max_iters, damping):
    """(hs, DeerInfo): one Newton solve; the info rides along as a non-differentiable output."""
    f = lambda prev, u: step(params, prev, u)[0]
    hs, it, res = _newton(f, us, h0, diagonal=diagonal, tol=tol, max_iters=max_iters, damping=damping)
    ok = res <= tol
    # not converged: the sequential scan gives the right answer (one cond, no silent error)
    hs = jax.lax.cond(ok, lambda: hs, lambda: rnn.scan(step, params, h0, us)[1])
    return hs, DeerInfo(it, res, ~ok)


@_full_precision
def _solve_fwd(step, params, us, h0, diagonal, tol, max_iters, damping):
    hs, info = _solve(step, params, us, h0, diagonal, tol, max_iters, damping)
    return (hs, info), (params, us, h0, hs)


@_full_precision  # traced when the caller differentiates, outside the forward's context
def _solve_bwd(step, diagonal, tol, max_iters, damping, res, cotangents):
    params, us, h0, hs = res
    g = cotangents[0]                    # the info's cotangents are zeros: nothing flows back
    prev = jnp.concatenate([h0[None], hs[:-1]])
    f = lambda p, hp, u: step(p, hp, u)[0]
    _, vjp = jax.vjp(f, params, prev, us)
    # adjoint: lambda_t = g_t + J_{t+1}^T lambda_{t+1}; the exact gradient needs the full J
    J = _jacobians(lambda hp, u: f(params, hp, u), prev, us)        # J[t] = df_t/dh_{t-1}
    A = jnp.concatenate([jnp.swapaxes(J[1:], -1, -2), jnp.zeros_like(J[:1])])
    lam = _solve_linear(A, g, diagonal=False, reverse=True)
    d_params, d_prev, d_us = vjp(lam)
    return d_params, d_us, d_prev[0]


_solve.defvjp(_solve_fwd, _solve_bwd)


def _flat(carry):
    """A carry pytree as one `[..., sum H_i]` array, and the function that splits it back."""
    leaves, tree = jax.tree.flatten(carry)
    if not leaves or len({l.shape[:-1] for l in leaves}) != 1:
        raise ValueError(f"carry leaves must share their leading shape, got {[l.shape for l in leaves]}")
    if len(leaves) == 1:
        return leaves[0], lambda z: jax.tree.unflatten(tree, [z])
    cuts = np.cumsum([l.shape[-1] for l in leaves])[:-1].tolist()
    return (jnp.concatenate(leaves, -1),
            lambda z: jax.tree.unflatten(tree, jnp.split(z, cuts, axis=-1)))


@_full_precision
def _evaluate(step, params, us, carry0, *, method, tol, max_iters, damping):
    """(outputs `[T, ...]`, final carry, DeerInfo)."""
    if method not in ("deer", "quasi_deer"):
        raise ValueError(f"method must be 'deer' or 'quasi_deer', got {method!r}")
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    z0, unflat = _flat(carry0)
    tol = (1e-10 if z0.dtype == jnp.float64 else 1e-5) if tol is None else tol

    def flat_step(p, z, u):  # scan-shaped, emits its carry (what the sequential fallback keeps)
        z = _flat(step(p, unflat(z), u)[0])[0]
        return z, z

    zs, info = _solve(flat_step, params, us, z0, method == "quasi_deer", tol, max_iters, damping)
    # the outputs of every step at once, from the carries entering it (parallel over t)
    ys = step(params, unflat(jnp.concatenate([z0[None], zs[:-1]])), us)[1]
    return ys, unflat(zs[-1]), info


def evaluate(step, params, us, h0, *, method: str = "deer", tol: float | None = None, max_iters: int = 50,
             damping: float = 1.0):
    """All outputs of the recurrence `(carry_t, y_t) = step(params, carry_{t-1}, u_t)` by (quasi-)DEER.

    Args:
      step: a scan-shaped cell step `(params, carry, u) -> (carry, y)`; the carry is an array
        `[..., H]` or a pytree of them (the LSTM's (h, c)).
      us: projected inputs `[T, ..., G*H]`; h0: the initial carry.
      method: "deer" (full Jacobian) or "quasi_deer" (diagonal).
      tol: residual tolerance (default 1e-10 in float64, 1e-5 otherwise).
      max_iters: Newton iterations before falling back to the sequential scan.
      damping: Newton step size in (0, 1].

    Returns:
      (ys `[T, ..., H]`, DeerInfo). Differentiable (exact gradients of the fixed point).
    """
    ys, _, info = _evaluate(step, params, us, h0, method=method, tol=tol, max_iters=max_iters, damping=damping)
    return ys, info


def run(cell, params, inputs, carry=None, *, method: str = "deer", reverse: bool = False,
        tol: float | None = None, max_iters: int = 50, damping: float = 1.0):
    """`jrnn.rnn.run` by (quasi-)DEER for any `jrnn.cells.Cell` (no mask); keywords as `evaluate`.

    Returns:
      (hs `[T, ..., H]`, final carry, DeerInfo); with `reverse`, the final carry is the one
      after t = 0.
    """
    us = cell.project(params, inputs)
    carry = cell.zeros(params, us.shape[1:-1]) if carry is None else carry
    us = jnp.flip(us, 0) if reverse else us
    ys, final, info = _evaluate(cell.step, params, us, carry, method=method, tol=tol, max_iters=max_iters,
                                damping=damping)
    return (jnp.flip(ys, 0) if reverse else ys), final, info


def auto_method(T: int, batch: int, hidden: int, backend: str | None = None) -> str:
    """The method `method="auto"` uses. Measured on CPU (experiments.bench --deer): the
    sequential scan won every configuration, so CPU always gets "sequential". No GPU has been
    measured yet, so GPUs get "sequential" too until the benchmark documents a threshold."""
    del T, batch, hidden, backend
    return "sequential"
