"""jrnn.optim.warmup_cosine, adamw(settable=True) and set_learning_rate: a learning rate driven
from outside the jitted step (the shakespeare-char recipe's wall-clock budget)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrnn import optim


def test_warmup_cosine_rises_linearly_over_the_steps_then_decays_to_the_floor_over_the_budget():
    lr = optim.warmup_cosine(1e-2, warmup_steps=10, floor=0.1)
    assert lr(0, 0.0) == pytest.approx(1e-3) and lr(4, 0.0) == pytest.approx(5e-3)
    assert lr(9, 0.0) == lr(500, 0.0) == pytest.approx(1e-2)
    assert lr(500, 0.5) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))
    assert lr(500, 1.0) == lr(500, 3.0) == pytest.approx(1e-3)          # past the budget: the floor
    assert optim.warmup_cosine(1e-2, warmup_steps=0)(0, 0.25) == pytest.approx(
        1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))


@pytest.mark.parametrize("kw,err,match", [
    (dict(warmup_steps=-1), ValueError, "warmup_steps"),
    (dict(warmup_steps=1.5), TypeError, "warmup_steps"),
    (dict(warmup_steps=10, floor=1.5), ValueError, "floor is the final rate"),
    (dict(warmup_steps=10, floor=-0.1), ValueError, "floor"),
])
def test_warmup_cosine_refuses_bad_settings_by_name(kw, err, match):
    with pytest.raises(err, match=match):
        optim.warmup_cosine(1e-3, **kw)


def test_warmup_cosine_refuses_a_negative_progress_or_step():
    lr = optim.warmup_cosine(1e-3, warmup_steps=10)
    with pytest.raises(ValueError, match="progress"):
        lr(0, -0.1)
    with pytest.raises(ValueError, match="step"):
        lr(-1, 0.0)


def test_set_learning_rate_sets_the_next_updates_rate_without_recompiling(backend_compiles):
    """Adam's first update is -lr * sign(g) (up to eps): with the rate set between two calls of
    one jitted update, each call moves by its own rate, and the second call compiles nothing."""
    opt = optim.adamw(1e-3, weight_decay=0.0, clip_norm=10.0, settable=True)
    params = {"w": jnp.ones(3, jnp.float32)}
    grads = {"w": jnp.asarray([1.0, -2.0, 3.0], jnp.float32)}
    update = jax.jit(lambda s: opt.update(grads, s, params))
    state = opt.init(params)
    first, _ = update(optim.set_learning_rate(state, 0.5))
    np.testing.assert_allclose(first["w"], [-0.5, 0.5, -0.5], rtol=1e-5)
    compiled = len(backend_compiles)
    second, _ = update(optim.set_learning_rate(state, 0.25))
    np.testing.assert_allclose(second["w"], [-0.25, 0.25, -0.25], rtol=1e-5)
    assert len(backend_compiles) == compiled


def test_set_learning_rate_on_an_optimizer_without_a_settable_rate_names_the_fix():
    state = optim.adam(1e-3, clip_norm=1.0).init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"settable=True"):
        optim.set_learning_rate(state, 1e-3)
    with pytest.raises(ValueError, match="learning rate"):
        optim.set_learning_rate(optim.adamw(settable=True).init({"w": jnp.ones(3)}), -1.0)
