"""Parallel-in-time evaluation of nonlinear RNNs: DEER, quasi-DEER, ELK and quasi-ELK.

A sequential scan needs T dependent steps. DEER (Lim et al., 2024) instead guesses all T states
at once and refines them by Newton's method: linearising h_t = f(h_{t-1}, x_t) around the
guess h' gives the *linear* recurrence

    h_t = J_t h_{t-1} + b_t,     J_t = df/dh at h'_{t-1},   b_t = f(h'_{t-1}, x_t) - J_t h'_{t-1},

which `jax.lax.associative_scan` solves in O(log T) depth. quasi-DEER keeps only diag(J_t):
O(H) instead of O(H^2) per step, more iterations.

Newton's step can overshoot: where the recurrence expands (|J| > 1, e.g. a recurrent spectral
radius above 1) the products of Jacobians in the linear solve blow up. ELK (Gonzalez et al.,
NeurIPS 2024, "Towards Scalable and Stable Parallelization of Nonlinear RNNs") takes a
Levenberg-Marquardt step instead,

    argmin_h  sum_t |h_t - J_t h_{t-1} - b_t|^2 + lam |h_t - h'_t|^2,

which is the posterior mean of a linear-Gaussian state-space model (dynamics J_t, b_t with unit
process noise, the guess h' observed with noise variance 1/lam). A Kalman filter and RTS
smoother compute it, both as associative scans (Saerkkae & Garcia-Fernandez, "Temporal
parallelization of Bayesian smoothers", 2021): O(log T) depth again, with H x H solves per
combination (quasi-ELK: diagonal Jacobians, H independent scalar smoothers). lam -> 0 is DEER,
lam -> inf stays put. lam is fixed per call (`lam=`, default 1e-8 as in the paper's code); a step
that comes out non-finite is rejected and that sequence's lam grows. (A textbook
Levenberg-Marquardt schedule, keeping a step only if it lowers the sum of squared residuals,
stalled here: with expanding dynamics the residual's Jacobian has singular values ~ rho^-T,
so any lam much above that crawls: measured on Elman networks of recurrent spectral radius
1.5-3.)

Convergence is judged on the true residual relative to the states' scale, per sequence:
max_t |h_t - f(h_{t-1}, x_t)| <= tol * max_t |f(h_{t-1}, x_t)| (an absolute test passed the
zero initial guess wherever the true states were below tol). If that does not hold after
`max_iters`, the result is recomputed with the sequential scan (so the answer is never silently
wrong) and `info.fell_back` says so.

Gradients do not differentiate through the iterations: at the fixed point (the same for every
method), the adjoint a_t = dL/dh_t + J_{t+1}^T a_{t+1} is itself a linear recurrence,
solved (in reverse) by the same associative scan with the full Jacobians, then one batched vjp
of the cell gives the parameter, input and h0 gradients (`jax.custom_vjp`).

Precision: the solve needs true float32. On NVIDIA GPUs since Ampere JAX computes float32
matmuls as TF32 by default (10-bit mantissa), and the Newton iteration then stalls far above
its tolerance. So every dot product here, the cell's own included (its step is traced inside
`jax.default_matmul_precision("highest")`, which fixes the precision of each traced dot_general
and of its transposes), runs at `Precision.HIGHEST`, whatever the caller's default.

Carries may be any pytree of `[..., H_i]` arrays (the LSTM's (h, c)): they are concatenated into
one state vector `[..., sum H_i]` for the solve, and the cell's outputs are recomputed from the
solved carries in one parallel pass. Per-step inputs may be any pytree of `[T, ...]` arrays (a
masked step's (u, mask)).

Use it as a value: `Parallel("deer", tol=, max_iters=, lam=)` is a strategy that
`jrnn.rnn.run(..., grad=)`, `jrnn.Model.hidden/apply/loss(..., grad=)` and the training steps
take, as they take `jrnn.FullBPTT()`; `solve` is the same solver over any step function.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import checks, crossovers, rnn

__all__ = [   # the public API, documented in the API reference
    "Parallel",
    "Auto",
    "DeerInfo",
    "solve",
    "evaluate",
    "auto_method",
]

PARALLEL_METHODS = ("deer", "quasi_deer", "elk", "quasi_elk")
METHODS = ("sequential",) + PARALLEL_METHODS

HIGHEST = jax.lax.Precision.HIGHEST

# ELK's lam: the paper's default (its code's sigmasq = 1 / lam = 1e8), close to Newton's step
# but bounded; a step that comes out non-finite is rejected and lam grows by LAM_UP for that sequence
LAM, LAM_UP = 1e-8, 100.0


class DeerInfo(NamedTuple):
    """What the solve did: `iterations` (int [], for ELK rejected trial steps included),
    `residual` (float [], max_t |h_t - f(h_{t-1}, x_t)|), `fell_back` (bool [], the sequential
    scan was used)."""
    iterations: jax.Array  # iterations run (for ELK, rejected trial steps included)
    residual: jax.Array    # worst over sequences of max_t |h_t - f(h_{t-1}, x_t)| / max_t |f(h_{t-1}, x_t)|
                           # of the iterative result (relative: compared with tol)
    fell_back: jax.Array   # True if it did not converge and the sequential scan was used


def _full_precision(fn):
    """Trace `fn` with every matmul at full precision (the cell step it calls included): the
    precision is fixed on each dot_general when it is traced, so it holds inside the caller's
    jit and under any outer `jax.default_matmul_precision`."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)
    return wrapped


def _mm(A, B):
    return jnp.matmul(A, B, precision=HIGHEST)


def _mv(A, x):
    """A `[..., H, H]` @ x `[..., H]` at full precision."""
    return _mm(A, x[..., None])[..., 0]


def _mT(A):
    return jnp.swapaxes(A, -1, -2)


def _plus_eye(A):
    """A `[..., H, H]` + I."""
    H = A.shape[-1]
    return A + jnp.eye(H, dtype=A.dtype).reshape((1,) * (A.ndim - 2) + (H, H))


def _jacobians(f, prev, xs):
    """Per-step, per-sequence Jacobians df/dh: `[T, ..., H, H]`."""
    lead, H = prev.shape[:-1], prev.shape[-1]
    flat_xs = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[len(lead):]), xs)
    one = lambda h, x: f(h[None], jax.tree.map(lambda a: a[None], x))[0]
    return jax.vmap(jax.jacfwd(one))(prev.reshape(-1, H), flat_xs).reshape(lead + (H, H))


def _to_blocks(z, k):
    """A flat state `[..., k*H]` (k parts of H) as `[..., H, k]`: unit u's k numbers together."""
    return jnp.swapaxes(z.reshape(z.shape[:-1] + (k, z.shape[-1] // k)), -1, -2)


def _from_blocks(x):
    """`[..., H, k]` back to the flat state `[..., k*H]`."""
    return jnp.swapaxes(x, -1, -2).reshape(x.shape[:-2] + (-1,))


def _block_jacobians(f, prev, xs, k):
    """Per-step, per-unit k x k blocks `[T, ..., H, k, k]` of a Jacobian that is block-diagonal
    over the state's k parts with diagonal blocks: k forward-mode products, one per part (a
    tangent of ones on part j gives column j of every unit's block), O(k * T * n) in all."""
    n = prev.shape[-1]
    cols = []
    for j in range(k):
        e = jnp.broadcast_to(jnp.zeros((k, n // k), prev.dtype).at[j].set(1.0).reshape(n), prev.shape)
        cols.append(_to_blocks(jax.jvp(lambda h: f(h, xs), (prev,), (e,))[1], k))
    return jnp.stack(cols, -1)


class _Linear(NamedTuple):
    """The Jacobians of every step in the cheapest exact form: `kind` "dense" (`J [T, ..., n, n]`),
    "diagonal" (`[T, ..., n]`) or "block" (`[T, ..., H, k, k]`, k > 1)."""
    J: jax.Array
    kind: str
    k: int

    def apply(self, J, x):
        """J x for one step's or every step's J and flat states x `[..., n]`."""
        if self.kind == "diagonal":
            return J * x
        if self.kind == "dense":
            return _mv(J, x)
        return _from_blocks(_mv(J, _to_blocks(x, self.k)))


def _linearize(f, prev, xs, jacobian, quasi: bool) -> _Linear:
    """d f / d prev at every step, in the form the cell's declared `jacobian` structure allows
    (None: dense; k: k diagonal blocks), or its diagonal when `quasi`."""
    if jacobian is None:
        J = _jacobians(f, prev, xs)
        return _Linear(jnp.diagonal(J, axis1=-2, axis2=-1), "diagonal", 1) if quasi else _Linear(J, "dense", 1)
    B = _block_jacobians(f, prev, xs, jacobian)
    if quasi or jacobian == 1:
        return _Linear(_from_blocks(jnp.diagonal(B, axis1=-2, axis2=-1)), "diagonal", 1)
    return _Linear(B, "block", jacobian)


def _solve_linear(A, b, *, diagonal: bool, reverse: bool = False):
    """x_t = A_t x_{t-1} + b_t with x_{-1} = 0 (x_t = A_t x_{t+1} + b_t, x_T = 0 when reverse),
    by associative scan. A `[T, ..., H, H]` (or `[T, ..., H]` if `diagonal`), b `[T, ..., H]`."""
    def combine(first, second):  # apply `first`, then `second`
        A1, b1 = first
        A2, b2 = second
        if diagonal:
            return A2 * A1, A2 * b1 + b2
        return _mm(A2, A1), _mv(A2, b1) + b2
    _, x = jax.lax.associative_scan(combine, (A, b), reverse=reverse)
    return x


def _smooth(F, c, y, lam, *, diagonal: bool):
    """The ELK (Levenberg-Marquardt) step: the posterior mean of the linear-Gaussian model

        x_t = F_t x_{t-1} + c_t + N(0, I),   y_t = x_t + N(0, I / lam),   x_{-1} = 0,

    i.e. argmin_x sum_t |x_t - F_t x_{t-1} - c_t|^2 + lam |x_t - y_t|^2, by a parallel Kalman
    filter and RTS smoother (Saerkkae & Garcia-Fernandez 2021, with their H = I, Q = I,
    R = I / lam). F `[T, ..., H, H]` (`[T, ..., H]` if `diagonal`: H scalar smoothers),
    c, y `[T, ..., H]`, lam `[...]` (per sequence).
    """
    F = F.at[0].set(0.0)                       # x_{-1} is known exactly (h0 is folded into c_0)
    k = (lam / (1.0 + lam))[None, ..., None]   # the Kalman gain of every step: Q (Q + R)^-1
    # filtering elements (A, b, C, eta, J) of every step: p(x_t | x_{t-1}, y_t) as a linear map
    # A x_{t-1} + b with covariance C, and the likelihood of y_t as a function of x_{t-1}
    # (information vector eta, information matrix J)
    if diagonal:
        elems = ((1 - k) * F, (1 - k) * c + k * y, jnp.broadcast_to(1 - k, c.shape),
                 k * F * (y - c), k * F * F)
    else:
        kk = k[..., None]
        elems = ((1 - kk) * F, (1 - k) * c + k * y, _plus_eye(jnp.zeros_like(F)) * (1 - kk),
                 k * _mv(_mT(F), y - c), kk * _mm(_mT(F), F))

    def combine(first, second):  # the filtering associative operator, `first` earlier in time
        A1, b1, C1, e1, J1 = first
        A2, b2, C2, e2, J2 = second
        if diagonal:
            d = 1.0 + C1 * J2
            return (A2 * A1 / d, A2 * (b1 + C1 * e2) / d + b2, A2 * A2 * C1 / d + C2,
                    A1 * (e2 - J2 * b1) / d + e1, A1 * A1 * J2 / d + J1)
        # N = (I + C1 J2)^-1 and, C and J being symmetric, N^T = (I + J2 C1)^-1
        N = jnp.linalg.inv(_plus_eye(_mm(C1, J2)))
        A2N, A1TNT = _mm(A2, N), _mT(_mm(N, A1))
        sym = lambda S: 0.5 * (S + _mT(S))     # covariances stay symmetric despite rounding
        return (_mm(A2N, A1), _mv(A2N, b1 + _mv(C1, e2)) + b2, sym(_mm(_mm(A2N, C1), _mT(A2)) + C2),
                _mv(A1TNT, e2 - _mv(J2, b1)) + e1, sym(_mm(_mm(A1TNT, J2), A1) + J1))

    _, m, P, _, _ = jax.lax.associative_scan(combine, elems)   # filtered means and covariances
    # RTS smoothing: x_t = E_t x_{t+1} + g_t, E_t = P_t F'^T (F' P_t F'^T + I)^-1 with F' = F_{t+1}
    Fn, cn = F[1:], c[1:]
    if diagonal:
        E = P[:-1] * Fn / (Fn * Fn * P[:-1] + 1.0)
        g = m[:-1] - E * (Fn * m[:-1] + cn)
    else:
        S = _plus_eye(_mm(_mm(Fn, P[:-1]), _mT(Fn)))
        E = _mT(jnp.linalg.solve(S, _mm(Fn, P[:-1])))     # P, S symmetric
        g = m[:-1] - _mv(E, _mv(Fn, m[:-1]) + cn)
    E = jnp.concatenate([E, jnp.zeros((1,) + E.shape[1:], E.dtype)])   # not E[:1]: empty when T = 1
    g = jnp.concatenate([g, m[-1:]])
    return _solve_linear(E, g, diagonal=diagonal, reverse=True)


def _iterate(f, xs, h0, *, method, tol, max_iters, lam, jacobian=None):
    """The (quasi-)DEER / (quasi-)ELK iteration from h = 0: (hs `[T, ..., H]`, iterations,
    residual). `jacobian`: the cell's declared structure (`jrnn.rnn.Cell.jacobian`), which makes
    DEER's exact Newton step elementwise (k = 1) or k x k per unit instead of H x H."""
    diagonal = method.startswith("quasi")
    elk = method.endswith("elk")
    T = jax.tree.leaves(xs)[0].shape[0]
    shift = lambda hs: jnp.concatenate([h0[None], hs[:-1]])
    finite = lambda a: jnp.all(jnp.isfinite(a), axis=(0, a.ndim - 1))     # [T, ..., H] -> [...]

    def residual(hs, fs):
        # relative to each sequence's own scale, max_t |f(h_{t-1}, x_t)|: an absolute test let
        # the zero guess pass for converged wherever the true states are below tol (inputs of
        # 1e-7: outputs 100% off, a zero weight gradient). Relative, a tol < 1 stops the zero
        # guess only where every f is exactly 0, i.e. where it is the fixed point.
        # inf unless every state is finite: products of many Jacobians can overflow, and a
        # NaN must never pass for convergence
        axes = (0, hs.ndim - 1)
        diff = jnp.max(jnp.abs(hs - fs), axis=axes, initial=0.0)
        scale = jnp.max(jnp.abs(fs), axis=axes, initial=0.0)
        rel = jnp.where(diff == 0, 0.0, diff / scale)            # diff > 0 = scale: inf
        rel = jnp.max(rel, initial=0.0)
        return jnp.where(jnp.all(jnp.isfinite(hs - fs)), rel, jnp.inf)

    def body(state):
        hs, fs, lam, it, _ = state
        prev = shift(hs)
        lin = _linearize(f, prev, xs, jacobian, diagonal)
        J = lin.J
        b = (fs - lin.apply(J, prev)).at[0].add(lin.apply(J[0], h0))    # h_{-1} = h0 enters through step 0
        if lin.kind == "block":   # each unit's k x k system, the units a batch axis
            blocks = lambda z: _to_blocks(z, lin.k)
            per_unit = jnp.broadcast_to(lam[..., None], lam.shape + (J.shape[-3],))
            new = _from_blocks(_smooth(J, blocks(b), blocks(hs), per_unit, diagonal=False) if elk
                               else _solve_linear(J, blocks(b), diagonal=False))
        else:
            flat = lin.kind == "diagonal"
            new = _smooth(J, b, hs, lam, diagonal=flat) if elk else _solve_linear(J, b, diagonal=flat)
        new_fs = f(shift(new), xs)
        # Newton always moves (a NaN then fails the convergence test); ELK keeps finite steps only
        keep = finite(new - new_fs) if elk else jnp.ones(h0.shape[:-1], bool)
        lam = jnp.where(keep, lam, lam * LAM_UP)
        where = lambda a, b: jnp.where(keep[None, ..., None], a, b)
        hs, fs = where(new, hs), where(new_fs, fs)
        return hs, fs, lam, it + 1, residual(hs, fs)

    def cond(state):
        it, res = state[-2:]
        return (it < max_iters) & ~(res <= tol)

    hs0 = jnp.zeros((T,) + h0.shape, h0.dtype)
    fs0 = f(shift(hs0), xs)
    lam0 = jnp.full(h0.shape[:-1], lam, h0.dtype)
    hs, _, _, it, res = jax.lax.while_loop(cond, body, (hs0, fs0, lam0, jnp.asarray(0), residual(hs0, fs0)))
    return hs, it, res


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4, 5, 6, 7, 8))
@_full_precision
def _solve(step, params, xs, h0, method, tol, max_iters, lam, jacobian):
    """(hs, DeerInfo): one solve; the info rides along as a non-differentiable output."""
    f = lambda prev, x: step(params, prev, x)[0]
    hs, it, res = _iterate(f, xs, h0, method=method, tol=tol, max_iters=max_iters, lam=lam, jacobian=jacobian)
    ok = res <= tol
    # not converged: the sequential scan gives the right answer (one cond, no silent error)
    hs = jax.lax.cond(ok, lambda: hs, lambda: jax.lax.scan(functools.partial(step, params), h0, xs)[1])
    return hs, DeerInfo(it, res, ~ok)


@_full_precision
def _solve_fwd(step, params, xs, h0, method, tol, max_iters, lam, jacobian):
    hs, info = _solve(step, params, xs, h0, method, tol, max_iters, lam, jacobian)
    return (hs, info), (params, xs, h0, hs)


@_full_precision  # traced when the caller differentiates, outside the forward's context
def _solve_bwd(step, method, tol, max_iters, lam, jacobian, res, cotangents):
    params, xs, h0, hs = res
    g = cotangents[0]                    # the info's cotangents are zeros: nothing flows back
    prev = jnp.concatenate([h0[None], hs[:-1]])
    f = lambda p, hp, x: step(p, hp, x)[0]
    _, vjp = jax.vjp(f, params, prev, xs)
    # adjoint: a_t = g_t + J_{t+1}^T a_{t+1}; the exact gradient needs the exact J (in the cell's
    # declared structure, so a diagonal cell's adjoint is elementwise)
    lin = _linearize(lambda hp, x: f(params, hp, x), prev, xs, jacobian, False)   # J[t] = df_t/dh_{t-1}
    J = lin.J if lin.kind == "diagonal" else _mT(lin.J)
    A = jnp.concatenate([J[1:], jnp.zeros_like(J[:1])])
    if lin.kind == "block":
        adjoint = _from_blocks(_solve_linear(A, _to_blocks(g, lin.k), diagonal=False, reverse=True))
    else:
        adjoint = _solve_linear(A, g, diagonal=lin.kind == "diagonal", reverse=True)
    d_params, d_prev, d_xs = vjp(adjoint)
    return d_params, d_xs, d_prev[0]


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


def check_method(method: str, *, parallel_only: bool = False) -> str:
    """`method` if it is one of `METHODS` (of `PARALLEL_METHODS` with `parallel_only`), else ValueError."""
    allowed = PARALLEL_METHODS if parallel_only else METHODS
    if not isinstance(method, str) or method not in allowed:
        raise ValueError(f"unknown method {method!r}; choose one of {allowed}")
    return method


MAX_ITERS = int(np.iinfo(np.int32).max)


def default_tol(dtype) -> float:
    """The default relative tolerance for carries of `dtype`: 1e-10 in float64, 1e-5 in
    float32, and 1 eps of a half-precision dtype (2^-7 bfloat16, 2^-10 float16), whose carries
    are iterated in float32 (see `_solve_flat`): every step rounds its carry to the half dtype, so
    the residual falls to 0 only at the half-precision scan's own states, which Newton reaches
    only about one step per iteration; at 1 eps every method stops within a few eps of the
    half-precision scan (docs/performance.md has the measured iterations)."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64:
        return 1e-10
    return 1e-5 if dtype.itemsize >= 4 else float(jnp.finfo(dtype).eps)


def _check_xs(xs):
    """Per-step inputs: a pytree of arrays `[T, ...]` sharing T >= 1 (lists and scalars refused)."""
    leaves = jax.tree.leaves(xs)
    if not leaves or not all(isinstance(a, (np.ndarray, jax.Array)) for a in leaves):
        raise TypeError(f"xs must be an array or a pytree of arrays [T, ...], got "
                        f"{sorted({type(a).__name__ for a in leaves}) or type(xs).__name__}")
    Ts = {a.shape[0] if a.ndim else None for a in leaves}
    if len(Ts) != 1 or None in Ts:
        raise ValueError(f"xs leaves must all be [T, ...] with one T, got shapes {[a.shape for a in leaves]}")
    if Ts == {0}:
        raise ValueError("xs is an empty sequence (T = 0); need at least one time step")
    return jax.tree.map(jnp.asarray, xs)


def _check_carry(step, params, xs, carry0):
    """carry0 as float arrays in the dtypes `step` returns (a narrower carry is widened, as
    `jrnn.rnn.widen_carry` does: the while loop's carry must keep its type), or a clear error
    when it is not a pytree of float arrays or does not match the step's carry."""
    leaves = jax.tree.leaves(carry0)
    if not leaves or not all(isinstance(a, (np.ndarray, jax.Array)) and a.ndim >= 1
                             and jnp.issubdtype(a.dtype, jnp.floating) for a in leaves):
        raise TypeError(f"carry0 must be a float array [..., H] or a pytree of them, got "
                        f"{[(type(a).__name__, getattr(a, 'dtype', None), np.shape(a)) for a in leaves]}")
    carry0 = jax.tree.map(jnp.asarray, carry0)
    x0 = jax.tree.map(lambda a: a[0], xs)
    try:
        out = jax.eval_shape(lambda c: step(params, c, x0)[0], carry0)
    except (TypeError, ValueError) as e:
        raise ValueError(f"step(params, carry0, xs[0]) fails for carry0 of shapes "
                         f"{[a.shape for a in leaves]}: {e}") from e
    if jax.tree.structure(out) != jax.tree.structure(carry0) or any(
            o.shape != c.shape for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(carry0))):
        raise ValueError(f"the step returns a carry of {[o.shape for o in jax.tree.leaves(out)]} "
                         f"({jax.tree.structure(out)}) for carry0 of {[c.shape for c in jax.tree.leaves(carry0)]} "
                         f"({jax.tree.structure(carry0)}): they must match")
    return jax.tree.map(lambda c, o: c.astype(o.dtype), carry0, out)


def solve(step, params, xs, carry0, *, method: str = "deer", reverse: bool = False, tol: float | None = None,
          max_iters: int = 50, lam: float = LAM, jacobian: int | None = None):
    """All outputs of the recurrence `(carry_t, y_t) = step(params, carry_{t-1}, x_t)`, in parallel.

    Args:
      step: a scan-shaped step `(params, carry, x) -> (carry, y)`, batch-polymorphic (it is
        also called on all T steps at once); the carry is an array `[..., H]` or a pytree of
        them (the LSTM's (h, c)).
      xs: per-step inputs, an array or pytree of `[T, ...]` (a cell's projected inputs).
      carry0: the initial carry.
      method: "deer" (Newton, full Jacobians), "quasi_deer" (diagonal Jacobians), "elk"
        (Levenberg-Marquardt by Kalman smoothing, full) or "quasi_elk" (diagonal).
      reverse: run from t = T-1 down to 0 (outputs stay aligned with xs).
      tol: relative residual tolerance in (0, 1): converged when every sequence's
        max_t |h_t - f(h_{t-1}, x_t)| <= tol * max_t |f(h_{t-1}, x_t)| (default
        `default_tol`: 1e-10 in float64, 1e-5 in float32, 1 eps of float16/bfloat16, whose
        carries are iterated in float32).
      max_iters: iterations before falling back to the sequential scan (1 to 2^31 - 1).
      lam: ELK's Levenberg-Marquardt parameter (> 0; the observation precision of the current
        guess): small is close to Newton's step, large takes shorter steps.
      jacobian: the structure of d carry_t / d carry_{t-1} (`jrnn.rnn.Cell.jacobian`): None
        (dense: H x H products per step), or k, block-diagonal over the carry's k leaves with
        diagonal blocks (k = 1: diagonal), which makes the exact Newton step and the adjoint
        elementwise (k x k per unit): O(T * H) instead of O(T * H^3).

    Returns:
      (ys `[T, ...]`, final carry, DeerInfo); with `reverse` the final carry is the one after
      t = 0. Differentiable (exact gradients of the fixed point, whatever the method).
    """
    check_method(method, parallel_only=True)
    reverse = checks.boolean("reverse", reverse)     # "no" is truthy: it would run backwards
    max_iters = checks.integer("max_iters", max_iters)
    if max_iters > MAX_ITERS:                        # the iteration counter is an int32
        raise ValueError(f"max_iters must be <= {MAX_ITERS}, got {max_iters}")
    xs = _check_xs(xs)
    carry0 = _check_carry(step, params, xs, carry0)
    z0, unflat = _flat(carry0)
    if jacobian is not None:
        jacobian = checks.integer("jacobian (None for dense, k >= 1 for k diagonal blocks)", jacobian)
        if z0.shape[-1] % jacobian:   # the parts are k equal slices of the flat carry (its leaves, in order)
            raise ValueError(f"jacobian={jacobian} diagonal blocks need a carry of {jacobian} equal parts, got "
                             f"leaves of sizes {[l.shape[-1] for l in jax.tree.leaves(carry0)]}")
    work = jnp.promote_types(z0.dtype, jnp.float32)   # the dtype the iteration runs in
    tol = default_tol(z0.dtype) if tol is None else checks.real("tol", tol)
    if not 0 < tol < 1:
        raise ValueError(f"tol is relative to the states' scale and must lie in (0, 1), got {tol!r} "
                         f"(tol >= 1 would pass the zero initial guess for converged)")
    lam = checks.real("lam", lam)
    if not 0 < lam <= float(jnp.finfo(work).max):
        raise ValueError(f"lam must be a positive finite number in the iteration's dtype {work} "
                         f"(<= {float(jnp.finfo(work).max):.3g}), got {lam!r}")
    if reverse:
        xs = jax.tree.map(lambda a: jnp.flip(a, 0), xs)
    ys, final, info = _solve_flat(step, params, xs, z0, unflat, method, tol, max_iters, lam, jacobian)
    return (jax.tree.map(lambda a: jnp.flip(a, 0), ys) if reverse else ys), final, info


@_full_precision
def _solve_flat(step, params, xs, z0, unflat, method, tol, max_iters, lam, jacobian):
    # Half-precision carries are iterated in float32, each step rounding its carry to the half
    # dtype and back: the linear solves then do not add half-precision rounding of their own
    # (iterated in bfloat16 the residual stalls at a few eps, so the default tol always fell back
    # after max_iters, and a looser one stopped visibly off the scan).
    dtype = z0.dtype
    work = jnp.promote_types(dtype, jnp.float32)

    def flat_step(p, z, x):  # scan-shaped, emits its carry (what the sequential fallback keeps)
        z = _flat(step(p, unflat(z.astype(dtype)), x)[0])[0].astype(work)
        return z, z

    zs, info = _solve(flat_step, params, xs, z0.astype(work), method, tol, max_iters, lam, jacobian)
    zs = zs.astype(dtype)
    # the outputs of every step at once, from the carries entering it (parallel over t)
    ys = step(params, unflat(jnp.concatenate([z0[None], zs[:-1]])), xs)[1]
    return ys, unflat(zs[-1]), info


def evaluate(step, params, us, h0, **kw):
    """`solve` without the final carry: (ys `[T, ...]`, DeerInfo). Keywords as `solve`."""
    ys, _, info = solve(step, params, us, h0, **kw)
    return ys, info


def auto_method(T: int, batch: int, hidden: int, backend: str | None = None) -> str:
    """Deprecated (0.1's `method="auto"`): always "sequential", since no measured threshold says
    where a parallel solve wins. Pass `grad=jrnn.FullBPTT()` or `grad=jrnn.Parallel(...)`."""
    warnings.warn("jrnn.parallel.auto_method is deprecated and will be removed in jrnn 0.3: it always "
                  "answers 'sequential'; choose grad=jrnn.FullBPTT() or grad=jrnn.Parallel(...)",
                  DeprecationWarning, stacklevel=2)
    del T, batch, hidden, backend
    return "sequential"


@dataclasses.dataclass(frozen=True)
class Parallel:
    """Parallel-in-time evaluation as a strategy value: each layer's recurrence is solved for all
    T steps at once by `solve` (see the module docstring), falling back to the sequential scan
    where it does not converge, with exact gradients of the fixed point.

    Args:
      method: "deer" (Newton, full Jacobians), "quasi_deer" (diagonal), "elk" (Levenberg-Marquardt
        by Kalman smoothing) or "quasi_elk".
      tol: relative residual tolerance in (0, 1); None: `default_tol` of the carry's dtype.
      max_iters: iterations before the sequential fallback (1 to 2^31 - 1).
      lam: ELK's Levenberg-Marquardt parameter (> 0).

    Checked when built: `Parallel("dear")` or `Parallel(tol=2)` fails here, not in a trace.
    Hashable, so a model's jitted step can close over it."""
    method: str = "deer"
    tol: float | None = None
    max_iters: int = 50
    lam: float = LAM

    def __post_init__(self):
        check_method(self.method, parallel_only=True)
        max_iters = checks.integer("max_iters", self.max_iters)
        if max_iters > MAX_ITERS:                        # the iteration counter is an int32
            raise ValueError(f"max_iters must be <= {MAX_ITERS}, got {max_iters}")
        tol = None if self.tol is None else checks.real("tol", self.tol)
        if tol is not None and not 0 < tol < 1:
            raise ValueError(f"tol is relative to the states' scale and must lie in (0, 1), got {tol!r}")
        lam = checks.real("lam", self.lam)
        if not lam > 0:
            raise ValueError(f"lam must be a positive finite number, got {lam!r}")
        object.__setattr__(self, "max_iters", max_iters)
        object.__setattr__(self, "tol", tol)
        object.__setattr__(self, "lam", lam)

    def run_layer(self, cell, params, us, carry, *, mask=None, reverse=False, unroll=None):
        """One layer over projected inputs `us` `[T, ..., G]`: (hs `[T, ..., H]`, final carry);
        a mask's frozen carry is one more step function (`jrnn.rnn.masked`). `unroll` belongs
        to the sequential scan and is not used."""
        del unroll
        step, xs = (cell.step, us) if mask is None else (rnn.masked(cell.step), (us, mask))
        hs, carry, _ = solve(step, params, xs, carry, method=self.method, reverse=reverse, tol=self.tol,
                             max_iters=self.max_iters, lam=self.lam, jacobian=cell.jacobian)
        return hs, carry


def structure(cell) -> str:
    """"dense", "diagonal" or "blocks": a cell's declared `jacobian` as the crossover table names it."""
    return "dense" if cell.jacobian is None else "diagonal" if cell.jacobian == 1 else "blocks"


@dataclasses.dataclass(frozen=True)
class Auto:
    """Per layer, `Parallel(method)` where the measured table (`jrnn.crossovers.CROSSOVERS`, by
    backend, Jacobian structure, batch, width and length) says it beats the sequential scan, and
    `FullBPTT()` everywhere else. The choice is made when the layer is traced, from static
    shapes and `jax.default_backend()`, so it costs nothing at run time.

    Args:
      method: the parallel method used where parallel wins ("deer" is what the table measured).
      table: the crossover table (None: `jrnn.crossovers.CROSSOVERS`), `{backend: {structure:
        ((batch, hidden, t_min), ...)}}`."""
    method: str = "deer"
    table: tuple | None = None

    def __post_init__(self):
        check_method(self.method, parallel_only=True)
        if self.table is not None and not isinstance(self.table, tuple):   # hashable: a static jit argument
            object.__setattr__(self, "table", tuple(sorted((b, tuple(sorted((s, tuple(map(tuple, rows)))
                                                                              for s, rows in v.items())))
                                                             for b, v in dict(self.table).items())))

    def rows(self, backend: str, kind: str) -> tuple:
        """The measured `(batch, hidden, t_min)` rows for `backend` and structure `kind`."""
        if self.table is None:
            return tuple(map(tuple, crossovers.CROSSOVERS.get(backend, {}).get(kind, ())))
        return dict(dict(self.table).get(backend, ())).get(kind, ())

    def choose(self, cell, T: int, batch: int, hidden: int, backend: str | None = None):
        """`Parallel(self.method)` if a measured row covers this layer (the smallest row with
        batch and hidden at least these) and T reaches its `t_min`, else `FullBPTT()`."""
        backend = jax.default_backend() if backend is None else backend
        fits = sorted(r for r in self.rows(backend, structure(cell)) if r[0] >= batch and r[1] >= hidden)
        t_min = fits[0][2] if fits else None
        return Parallel(self.method) if t_min is not None and T >= t_min else rnn.FullBPTT()

    def run_layer(self, cell, params, us, carry, *, mask=None, reverse=False, unroll=None):
        """One layer, run as `choose` picks for its shapes: (hs `[T, ..., H]`, final carry)."""
        hidden = sum(a.shape[-1] for a in jax.tree.leaves(carry)) // max(cell.jacobian or 1, 1)
        batch = int(np.prod(us.shape[1:-1], dtype=np.int64))
        return self.choose(cell, us.shape[0], batch, hidden).run_layer(cell, params, us, carry, mask=mask,
                                                                       reverse=reverse, unroll=unroll)


# 0.1's `method="deer"` etc. in `jrnn.rnn.run` (deprecated) stand for these values
rnn.METHOD_STRATEGIES.update({m: functools.partial(Parallel, m) for m in PARALLEL_METHODS})
