"""Optimizer arguments that silently broke training (no update, ascent, NaN) are refused by name."""

import jax.numpy as jnp
import numpy as np
import pytest

from jrnn import optim


@pytest.mark.parametrize("make", [lambda **kw: optim.sgd(0.1, **kw), lambda **kw: optim.adam(1e-3, **kw)])
def test_clipping_thresholds_must_be_positive_finite_numbers(make):
    """clip_value=-1 made SGD climb (+0.1 for a gradient of 10), 0 froze it, NaN gave NaN
    updates, True clipped at 1."""
    for name in ("clip_value", "clip_norm"):
        for bad in (0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"{name} .*must be finite and > 0"):
                make(**{name: bad})
        with pytest.raises(TypeError, match=f"{name} .*must be a real number"):
            make(**{name: True})
    opt = optim.sgd(0.1, clip_value=np.float32(1.0))
    p = {"w": jnp.ones(3)}
    np.testing.assert_allclose(opt.update({"w": jnp.full(3, 10.0)}, opt.init(p), p)[0]["w"], -0.1)


def test_adagrad_eps_and_seed_rprop_factors_are_checked():
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        optim.karpathy_adagrad(0.1, eps=-1.0)
    for kw, match in ((dict(eta_plus=0.5), "eta_plus"), (dict(eta_minus=1.5), "eta_minus must lie in"),
                      (dict(eta_minus=float("nan")), "eta_minus"), (dict(lo=10.0, hi=1.0), "lo must be <= hi"),
                      (dict(lo=0.0), "lo must be finite and > 0")):
        with pytest.raises(ValueError, match=match):
            optim.scale_by_seed_rprop(**kw)


@pytest.mark.parametrize("lr", [np.True_, jnp.asarray(True), np.array([0.1]), "0.1"])
def test_a_learning_rate_that_is_a_bool_or_not_a_scalar_is_a_type_error(lr):
    """jrnn.checks.real's rule, as for clip values and the temperature: numpy's True (and a jax
    bool array) passed as a learning rate of 1.0, and a [1] array passed as its one element."""
    with pytest.raises(TypeError, match=r"^learning rate must be a real number, got "):
        optim.sgd(lr)


@pytest.mark.parametrize("value", [np.float32(0.5), np.int64(2), np.array(0.5), jnp.asarray(2.0)])
def test_numpy_scalars_and_0d_arrays_are_numbers_for_every_optimizer_argument(value):
    """One rule for every real-valued argument (jrnn.checks.real): a 0-d array was refused as a
    clip value ("must be a number, got ndarray") while taken as a learning rate."""
    want = float(value)
    assert optim.check_learning_rate(value) == want
    opt = optim.sgd(0.1, clip_value=value)
    p = {"w": jnp.ones(3)}
    np.testing.assert_allclose(opt.update({"w": jnp.full(3, 10.0)}, opt.init(p), p)[0]["w"], -0.1 * want, rtol=1e-6)
