"""jrnn.cells.elman.recurrence (the Elman recurrence with a hoisted weight gradient) equals a plain
lax.scan of the Elman step in value and in every derivative JAX offers: reverse, forward, second
order; the deprecated jrnn.elman_scan names still give it, with a DeprecationWarning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jrnn import elman, elman_scan, rnn
from jrnn.cells import elman as elman_cell
from jrnn.testing import assert_trees_close

RTOL = 1e-10


def plain(params, us, h0, mask=None, activation="tanh", reverse=False):
    """The generic path: jrnn.rnn.scan of the Elman step, masked as jrnn.rnn.masked does."""
    step = lambda p, h, u: elman.step(p, h, u, activation=activation)
    if mask is None:
        h_T, hs = rnn.scan(step, params, h0, us, reverse=reverse)
    else:
        h_T, hs = rnn.scan(rnn.masked(step), params, h0, (us, jnp.asarray(mask, bool)), reverse=reverse)
    return hs, h_T


def problem(seed, T=9, B=3, H=5, activation="tanh"):
    rng = np.random.RandomState(seed)
    p = elman.init(jax.random.key(seed), input_size=4, hidden_size=H, output_size=2, scheme="normal",
                   scale=1.2 / np.sqrt(H), dtype=jnp.float64)
    if activation == "relu":  # away from the kink, where both sides of the comparison agree
        p = p._replace(b_h=p.b_h + 0.2)
    us = jnp.asarray(rng.randn(T, B, H)) + p.b_h[None, None]
    mask = jnp.asarray(np.arange(T)[:, None] < rng.randint(1, T + 1, size=B)[None, :])
    return p, us, jnp.asarray(0.3 * rng.randn(B, H)), mask


def fused(params, us, h0, mask=None, activation="tanh", reverse=False):
    return elman_cell.recurrence(params.w_hh, us, h0, mask=mask, activation=activation, reverse=reverse)


@pytest.mark.parametrize("activation,masked,reverse", [
    pytest.param(a, m, r, marks=() if m and r or (a == "tanh" and not m and not r) else pytest.mark.slow)
    for a in ["tanh", "sigmoid", "relu"] for m in [False, True] for r in [False, True]])
def test_values_and_gradients_equal_the_plain_scan(activation, masked, reverse):
    p, us, h0, mask = problem(3, activation=activation)
    mask = mask if masked else None
    weights = jnp.asarray(np.random.RandomState(1).randn(*us.shape))

    def loss(f, w, us, h0):
        hs, h_T = f(p._replace(w_hh=w), us, h0, mask, activation, reverse)
        return jnp.sum(jnp.sin(hs) * weights) + jnp.sum(h_T ** 3)   # both outputs carry gradient

    for a, b in zip(fused(p, us, h0, mask, activation, reverse), plain(p, us, h0, mask, activation, reverse)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    g = jax.grad(lambda *a: loss(fused, *a), argnums=(0, 1, 2))(p.w_hh, us, h0)
    ref = jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2))(p.w_hh, us, h0)
    assert_trees_close(g, ref, rtol=RTOL, what="d loss / (w_hh, us, h0)")


@pytest.mark.slow
def test_forward_mode_and_second_order_equal_the_plain_scan():
    p, us, h0, mask = problem(5, T=6, B=2, H=3)
    f = lambda w, run: jnp.sum(run(p._replace(w_hh=w), us, h0, mask)[0] ** 2)
    assert_trees_close(jax.jacfwd(lambda w: f(w, fused))(p.w_hh), jax.jacfwd(lambda w: f(w, plain))(p.w_hh), rtol=RTOL)
    assert_trees_close(jax.hessian(lambda w: f(w, fused))(p.w_hh), jax.hessian(lambda w: f(w, plain))(p.w_hh),
                       rtol=1e-9)
    check_grads(lambda w, us, h0: fused(p._replace(w_hh=w), us, h0, mask)[0], (p.w_hh, us, h0),
                order=2, modes=("fwd", "rev"))


def test_vmap_over_parameters_equals_a_loop():
    ps = [problem(s)[0] for s in range(3)]
    _, us, h0, mask = problem(0)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *ps)
    grad = lambda p: jax.grad(lambda w: jnp.sum(fused(p._replace(w_hh=w), us, h0, mask)[0] ** 2))(p.w_hh)
    batched = jax.vmap(grad)(stacked)
    for i, p in enumerate(ps):
        np.testing.assert_allclose(batched[i], grad(p), rtol=1e-12)


def test_padding_with_nan_never_reaches_the_gradient():
    p, us, h0, mask = problem(7)
    us = jnp.where(mask[..., None], us, jnp.nan)
    g = jax.grad(lambda w: jnp.sum(fused(p._replace(w_hh=w), us, h0, mask)[0] ** 2))(p.w_hh)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_unknown_activation_is_a_clear_error():
    p, us, h0, _ = problem(0)
    with pytest.raises(ValueError, match="activation"):
        elman_cell.recurrence(p.w_hh, us, h0, activation="gelu")


def test_the_deprecated_elman_scan_names_warn_and_give_the_cells_recurrence():
    """`jrnn.elman_scan.run` and `.linearization` (the 0.1 names) still work for one release:
    a DeprecationWarning naming the new spelling, then the same values as jrnn.cells.elman's."""
    p, us, h0, mask = problem(2, T=4, B=2, H=3)
    with pytest.warns(DeprecationWarning, match="jrnn.cells.elman.recurrence"):
        old = elman_scan.run(p.w_hh, us, h0, mask=mask, activation="sigmoid", reverse=True)
    assert_trees_close(old, fused(p, us, h0, mask, "sigmoid", True), rtol=0.0)
    with pytest.warns(DeprecationWarning, match="jrnn.cells.elman.linearization"):
        assert elman_scan.linearization("relu") is elman_cell.linearization("relu")
