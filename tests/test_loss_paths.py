"""Every loss path combined (TBPTT k1/k2, mask, dropout, remat, compute_dtype): the
combinations that run agree with the plain loss where they should, and those refused name
both options."""

import jax
import jrnn
import jax.numpy as jnp
import numpy as np
import pytest

from jrnn import lm
from jrnn.testing import assert_trees_close

T, B, V, H = 5, 2, 5, 3
MASK = np.arange(T)[:, None] < np.array([5, 2])[None, :]


def setup(cell):
    model = lm.model(cell, vocab_size=V, hidden_size=H, layers=2)
    rng = np.random.RandomState(0)
    return model, model.init(jax.random.key(1), jnp.float64), rng.randint(0, V, (T, B)), rng.randint(0, V, (T, B))


# the default suite has this property for the Elman model (test_dropout's remat and untruncated TBPTT test)
@pytest.mark.parametrize("cell", [pytest.param("lstm", marks=pytest.mark.slow), pytest.param("gru", marks=pytest.mark.slow),
                                  pytest.param("elman", marks=pytest.mark.slow)])
def test_remat_and_full_window_tbptt_equal_the_plain_loss_with_mask_and_dropout(cell):
    """mask + dropout (same key): remat and TBPTT(1, T) (every block's window reaches step 0)
    have the plain loss's value and gradient; TBPTT(2, 3) its value."""
    model, p, x, y = setup(cell)
    kw = dict(mask=MASK, dropout=0.4, key=jax.random.key(7))
    vg = lambda **extra: jax.value_and_grad(lambda p: model.loss(p, x, y, **kw, **extra)[0])(p)
    plain = vg()
    assert_trees_close(vg(grad=jrnn.Remat()), plain, rtol=1e-12, what="remat")
    assert_trees_close(vg(grad=jrnn.TBPTT(1, T)), plain, rtol=1e-12, what="TBPTT(1, T)")
    np.testing.assert_allclose(vg(grad=jrnn.TBPTT(2, 3))[0], plain[0], rtol=1e-12)


@pytest.mark.slow   # every loss path compiled in bfloat16, 9 s: test_model's bfloat16 carry test is the default case
def test_bfloat16_compute_runs_finite_on_every_loss_path():
    model, p, x, y = setup("gru")
    kw = dict(mask=MASK, dropout=0.4, key=jax.random.key(7), compute_dtype=jnp.bfloat16)
    plain = None
    for extra in ({}, {"grad": jrnn.Remat()}, {"grad": jrnn.TBPTT(2, 3)}):
        value, g = jax.value_and_grad(lambda p: model.loss(p, x, y, **kw, **extra)[0])(p)
        assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves((value, g))), extra
        plain = value if plain is None else plain
        np.testing.assert_allclose(value, plain, rtol=0.05)    # bfloat16 rounding apart


def test_refused_combinations_name_both_options():
    model, p, x, y = setup("elman")
    with pytest.raises(ValueError, match="TBPTT.*remat"):
        model.loss(p, x, y, k1=2, k2=3, remat=True)
    for k1, k2 in ((2, None), (None, 3)):     # was "TBPTT k2 must be an integer, got NoneType None"
        with pytest.raises(ValueError, match="TBPTT needs both k1 and k2"):
            model.loss(p, x, y, grad=jrnn.TBPTT(k1, k2))
    with pytest.raises(ValueError, match="TBPTT loss supports reductions"):
        model.loss(p, x, y, grad=jrnn.TBPTT(2, 3), reduction="none")
    with pytest.raises(ValueError, match="dropout needs a PRNG key"):
        model.loss(p, x, y, grad=jrnn.TBPTT(2, 3), dropout=0.3)
    with pytest.raises(TypeError, match="compute_dtype must be a float dtype"):
        model.loss(p, x, y, grad=jrnn.TBPTT(2, 3), compute_dtype=jnp.int32)
