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
        with pytest.raises(TypeError, match=f"{name} .*must be a number"):
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
