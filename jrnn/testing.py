"""Gradient checks a user can run on their own cell or loss.

`check_gradients` compares `jax.grad` with float64 central finite differences along random
directions; `assert_trees_close` compares two pytrees (e.g. autodiff vs `jrnn.bptt`) with an
explicit relative tolerance. Both need `jax.config.update("jax_enable_x64", True)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def relative_error(a, b) -> float:
    """Worst leafwise max|a - b| / max|b| over two pytrees of the same structure."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(la) != len(lb):
        raise ValueError(f"trees have {len(la)} and {len(lb)} leaves")
    worst = 0.0
    for x, y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            raise ValueError(f"leaf shapes differ: {x.shape} vs {y.shape}")
        scale = max(np.max(np.abs(y), initial=0.0), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(x - y), initial=0.0) / scale))
    return worst


def assert_trees_close(actual, expected, *, rtol: float, what: str = "trees") -> float:
    """Raise AssertionError if `relative_error(actual, expected) > rtol`; return the error."""
    err = relative_error(actual, expected)
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

    Args:
      fn: scalar function `(params, *args) -> loss`.
      params: pytree of float arrays (cast to float64).
      key: PRNG key for the directions (default key 0).

    Returns:
      The worst relative error; raises AssertionError when above `rtol`.
    """
    _require_x64()
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    f = lambda p: fn(p, *args)
    grad = jax.grad(f)(params)
    leaves, treedef = jax.tree.flatten(params)
    key = jax.random.key(0) if key is None else key
    worst = 0.0
    for k in jax.random.split(key, directions):
        vs = [jax.random.normal(kk, x.shape, jnp.float64) for kk, x in zip(jax.random.split(k, len(leaves)), leaves)]
        norm = jnp.sqrt(sum(jnp.sum(v * v) for v in vs))
        v = jax.tree.unflatten(treedef, [x / norm for x in vs])
        shift = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, v)
        fd = (f(shift(1.0)) - f(shift(-1.0))) / (2 * eps)
        ad = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(v)))
        err = float(jnp.abs(fd - ad) / jnp.maximum(jnp.abs(ad), 1e-12))
        worst = max(worst, err)
    if not worst <= rtol:
        raise AssertionError(f"autodiff vs finite differences: relative error {worst:.3e} > {rtol:.1e}")
    return worst
