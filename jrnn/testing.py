"""Gradient checks a user can run on their own cell or loss.

`check_gradients` compares `jax.grad` with float64 central finite differences along random
directions; `assert_trees_close` compares two pytrees (e.g. autodiff vs `jrnn.bptt`) with an
explicit relative tolerance. Both need `jax.config.update("jax_enable_x64", True)`.

A NaN or inf anywhere (in either tree, in the function's value or in its gradient) fails the
check: `relative_error` returns NaN then, which no tolerance accepts. The comparisons run in
numpy float64, so they are exact whatever JAX's default matmul precision (TF32 on recent NVIDIA
GPUs).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import checks

__all__ = [   # the public API, documented in the API reference
    "check_gradients",
    "assert_trees_close",
    "relative_error",
]


def _check_rtol(rtol) -> float:
    return checks.real("rtol", rtol, minimum=0)


def _nonfinite_leaves(tree) -> list[str]:
    """Key paths of the leaves of `tree` holding a NaN or inf."""
    return [jax.tree_util.keystr(p) or "<root>" for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if not np.all(np.isfinite(np.asarray(x, np.float64)))]


def _leaf_names(tree) -> list[tuple]:
    """Each leaf's dict keys and attribute names along its path. Sequence positions are left out,
    so a tuple or a list compares with a NamedTuple or dict of the same leaves (positions only);
    where both trees name a leaf, the names must agree (a dict flattens by sorted key, a
    NamedTuple by field: with other names or another order they would pair the wrong leaves)."""
    def name(k):
        for attr in ("key", "name"):  # DictKey / FlattenedIndexKey, GetAttrKey
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return None                   # SequenceKey: a position
    return [tuple(n for n in map(name, p) if n is not None)
            for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _as_float64(x) -> np.ndarray:
    """float64 (complex128 for complex leaves: a cast to float64 would drop the imaginary part)."""
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def relative_error(a, b) -> float:
    """Worst leafwise max|a - b| / max|b| over two pytrees of the same structure.

    NaN when any value of either tree is NaN or inf (so `err <= rtol` is False for every rtol).
    """
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(la) != len(lb):
        raise ValueError(f"trees have {len(la)} and {len(lb)} leaves")
    pa, pb = _leaf_names(a), _leaf_names(b)
    if any(x and y and x != y for x, y in zip(pa, pb)):
        # same count, other keys (or None elsewhere): leaves would be paired by position
        raise ValueError(f"trees hold other leaves: {pa} vs {pb}")
    worst = 0.0
    for x, y in zip(la, lb):
        x, y = _as_float64(x), _as_float64(y)
        if x.shape != y.shape:
            raise ValueError(f"leaf shapes differ: {x.shape} vs {y.shape}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            return math.nan  # inf - inf and max(.., nan) would hide it otherwise
        scale = max(np.max(np.abs(y), initial=0.0), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(x - y), initial=0.0) / scale))
    return worst


def assert_trees_close(actual, expected, *, rtol: float, what: str = "trees") -> float:
    """Raise AssertionError if `relative_error(actual, expected) > rtol` or either tree holds a
    NaN/inf; return the error."""
    rtol = _check_rtol(rtol)
    err = relative_error(actual, expected)
    if math.isnan(err):
        bad = {name: _nonfinite_leaves(t) for name, t in (("actual", actual), ("expected", expected))}
        raise AssertionError(f"{what}: NaN/inf in " + "; ".join(f"{k} {', '.join(v)}" for k, v in bad.items() if v))
    if not err <= rtol:
        raise AssertionError(f"{what}: relative error {err:.3e} > {rtol:.1e}")
    return err


def _require_x64():
    if not jax.config.jax_enable_x64:
        raise RuntimeError('gradient checks need float64: jax.config.update("jax_enable_x64", True)')


def check_gradients(fn, params, *args, key=None, directions: int = 8, eps: float = 1e-6,
                    rtol: float = 1e-6) -> float:
    """Check `jax.grad(fn)(params, *args)` against float64 finite differences.

    For random unit directions v, compares <grad, v> with (f(p + eps v) - f(p - eps v)) / 2 eps.
    The inner products run in numpy float64 (never at TF32).

    Args:
      fn: scalar function `(params, *args) -> loss`.
      params: pytree of float arrays (cast to float64).
      key: PRNG key for the directions (default key 0).
      directions: number of random directions, an int >= 1.
      eps: finite-difference step, finite and > 0.
      rtol: tolerance, finite and >= 0.

    Returns:
      The worst relative error; raises AssertionError when above `rtol`, or when the value,
      the gradient or a finite difference is NaN/inf.
    """
    directions = checks.integer("directions", directions)
    eps = checks.real("eps", eps, minimum=0, strict=True)
    rtol = _check_rtol(rtol)
    _require_x64()
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    f = lambda p: fn(p, *args)
    value, grad = jax.value_and_grad(f)(params)
    if not np.isfinite(float(value)):
        raise AssertionError(f"the function's value is {float(value)}: NaN/inf fails the check")
    if bad := _nonfinite_leaves(grad):
        raise AssertionError(f"NaN/inf in the gradient at {bad}")
    leaves, treedef = jax.tree.flatten(params)
    if sum(np.size(x) for x in leaves) == 0:
        raise ValueError("params hold no values: there is no gradient to check")
    g_leaves = [np.asarray(g, np.float64) for g in jax.tree.leaves(grad)]
    key = jax.random.key(0) if key is None else key
    worst = 0.0
    for k in jax.random.split(key, int(directions)):
        vs = [np.asarray(jax.random.normal(kk, x.shape, jnp.float64))
              for kk, x in zip(jax.random.split(k, len(leaves)), leaves)]
        norm = math.sqrt(sum(float(np.sum(v * v)) for v in vs))
        vs = [x / norm for x in vs]
        v = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in vs])
        shift = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, v)
        fd = (float(f(shift(1.0))) - float(f(shift(-1.0)))) / (2 * eps)
        ad = sum(float(np.sum(g * d)) for g, d in zip(g_leaves, vs))
        err = abs(fd - ad) / max(abs(ad), 1e-12)
        if not math.isfinite(err):
            raise AssertionError(f"autodiff vs finite differences: <grad, v> = {ad}, finite difference {fd} "
                                 f"(NaN/inf fails the check)")
        worst = max(worst, err)
    if not worst <= rtol:
        raise AssertionError(f"autodiff vs finite differences: relative error {worst:.3e} > {rtol:.1e}")
    return worst
