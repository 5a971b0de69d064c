"""The 0.2 API attacked as a hostile user would: strategy values as classes, in the wrong place
and as jit cache keys; deprecated keywords mixed and where their warnings point; batch-first
data the layouts cannot tell apart; traced lengths and targets out of range inside a checked
training step. Each test names the property it guards; shapes are tiny (T <= 6, H = 4)."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn import cells

T, B, V, H = 6, 3, 4, 4


@functools.lru_cache(maxsize=None)
def _lm(cell="gru"):
    model = jrnn.model.make(cells.get(cell), input_size=V, hidden_size=H, output_size=V)
    return model, model.init(jax.random.key(0))


def _ids(seed=0, shape=(T, B)):
    return np.random.RandomState(seed).randint(0, V, shape)


def _features_model():
    model = jrnn.model.make(cells.get("elman"), input_size=2, hidden_size=H, output_size=V)
    return model, model.init(jax.random.key(0))


# ---- deprecated keywords -------------------------------------------------------------------

def test_deprecation_warnings_point_at_the_users_call_not_into_jrnn():
    """Python shows a DeprecationWarning by default only where it is attributed to `__main__`:
    one attributed to jrnn/model.py is never seen by a script's author. Each old spelling, on
    every entry point, must name the caller's file. (Each call is then refused for bad params or
    targets, after its warning: nothing is computed.)"""
    model, p = _lm()
    ep = jrnn.elman.init(jax.random.key(0), hidden_size=H, vocab_size=V)
    x, y, bad_y = _ids(0), _ids(1), _ids(1)[:1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in (lambda: model.loss(None, x, y, remat=True),
                     lambda: model.loss(None, x, y, k1=2, k2=3),
                     lambda: model.loss(None, x, y, method="sequential"),
                     lambda: model.apply(None, x, remat=True),
                     lambda: model.apply_last(None, x, remat=True),
                     lambda: model.hidden(None, x, method="auto"),
                     lambda: jrnn.model.sequence_loss(model, None, x, y, remat=True),
                     lambda: jrnn.model.sequence_loss(model, None, x, y, k1=2, k2=3),
                     lambda: jrnn.model.apply(model, None, x, remat=True),
                     lambda: jrnn.elman.sequence_loss(ep, x, bad_y, remat=True),
                     lambda: jrnn.elman.sequence_loss(ep, x, bad_y, k1=2, k2=3),
                     lambda: jrnn.elman.apply(None, x, remat=True),
                     lambda: jrnn.rnn.run(None, p.layers[0], x, remat=True)):
            with pytest.raises((TypeError, ValueError)):
                call()
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 13   # one per call
    assert [w.filename for w in deprecations] == [__file__] * 13, [
        (str(w.message)[:40], w.filename) for w in deprecations if w.filename != __file__]


def test_tbptt_keywords_mixed_with_method_are_a_type_error():
    """k1=/k2= with method= asked for two strategies at once; method= was dropped without a word."""
    model, p = _lm()
    with pytest.raises(TypeError, match="method="):
        model.loss(p, _ids(0), _ids(1), k1=2, k2=3, method="deer")


# ---- strategy values -----------------------------------------------------------------------

@pytest.mark.parametrize("cls", [jrnn.FullBPTT, jrnn.Remat, jrnn.Parallel, jrnn.TBPTT])
def test_a_strategy_class_for_its_instance_is_refused_naming_that_class(cls):
    model, p = _lm()
    with pytest.raises(TypeError, match=rf"an instance: {cls.__name__}\(.*\), not {cls.__name__}\b"):
        model.loss(p, _ids(0), _ids(1), grad=cls)


def test_the_loss_refusing_a_strategy_lists_tbptt_and_the_layers_do_not():
    model, p = _lm()
    with pytest.raises(TypeError, match=r"jrnn\.TBPTT\(k1, k2\)") as loss_error:
        model.loss(p, _ids(0), _ids(1), grad="remat")
    assert "Model.loss" in str(loss_error.value) and "jrnn.Auto()" in str(loss_error.value)
    with pytest.raises(TypeError) as apply_error:
        model.apply(p, _ids(0), grad="remat")
    assert "jrnn.TBPTT" not in str(apply_error.value) and "jrnn.Auto()" in str(apply_error.value)


def test_an_equal_strategy_value_reuses_the_jitted_step():
    traced = []

    @functools.partial(jax.jit, static_argnames="grad")
    def f(x, grad):
        traced.append(grad)
        return x + 1

    for g in (jrnn.FullBPTT(), jrnn.FullBPTT(), jrnn.Remat(), jrnn.TBPTT(2, 3), jrnn.TBPTT(np.int64(2), np.int32(3)),
              jrnn.Parallel(), jrnn.Parallel("deer", max_iters=np.int64(50))):
        f(1.0, grad=g)
    assert traced == [jrnn.FullBPTT(), jrnn.Remat(), jrnn.TBPTT(2, 3), jrnn.Parallel()]
    assert jrnn.FullBPTT() != jrnn.Remat()


# ---- layouts -------------------------------------------------------------------------------

def test_batch_first_dense_features_without_a_batch_axis_are_refused_not_transposed():
    """`[T, D]` features with time_major=False are one time-major sequence, not `[B, T]`: the swap
    read D as time, and where the sizes allowed (T = D = 2) returned logits `[V, T]`."""
    model, p = _features_model()
    x = np.random.RandomState(0).randn(2, 2).astype(np.float32)
    for call in (lambda: model.apply(p, x, time_major=False),
                 lambda: model.loss(p, x, _ids(0, (2,)) % V, time_major=False),
                 lambda: jrnn.rnn.run(model.cell, p.layers[0], x, time_major=False)):
        with pytest.raises(ValueError, match=r"\[B, T, D\]"):
            call()
    logits, _ = model.apply(p, x[None], time_major=False)   # with its batch axis: [B, T, V]
    assert logits.shape == (1, 2, V)


def test_batch_first_shape_errors_name_the_shapes_as_the_user_gave_them():
    """With time_major=False the messages showed the swapped (time-major) shapes: a `[T, B]` mask
    passed as (6, 3) was 'must have shape (6, 3), got (3, 6)'."""
    model, p = _lm()
    x_bf, y_bf = _ids(0).T, _ids(1).T                                   # [B, T] = (3, 6)
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 6\).*got \(6, 3\)"):
        model.loss(p, x_bf, y_bf, mask=np.ones((T, B)), time_major=False)
    with pytest.raises(ValueError, match=r"targets must have .*\(3, 6\).*got \(6, 3\)"):
        model.loss(p, x_bf, y_bf.T, time_major=False)
    with pytest.raises(ValueError, match=r"targets must have .*\(3, 6, 4\).*got \(6, 3, 4\)"):
        model.loss(p, x_bf, np.zeros((T, B, V), np.float32), loss="mse", time_major=False)
    with pytest.raises(ValueError, match=r"mask must have .*\(3, 6\).*got \(6, 3\)"):
        jrnn.rnn.run(model.cell, p.layers[0], x_bf, mask=np.ones((T, B)), time_major=False)


# ---- traced values in a checked training step ----------------------------------------------

def _checked_step(loss_kw, batch_names):
    model, p = _lm()

    def loss_fn(params, batch, carry):
        kw = dict(zip(batch_names, batch[2:]))
        return model.loss(params, batch[0], batch[1], carry, **kw, **loss_kw)

    opt = optax.sgd(0.1)
    return jrnn.make_step(loss_fn, opt), p, opt.init(p)


@pytest.mark.parametrize("lengths", [[T + 5, 2, 3], [-1, 2, 3]])
def test_traced_lengths_outside_zero_to_t_are_refused_by_the_checked_step(lengths):
    """Eagerly they are a ValueError; traced, 60 read as 'every step real' and -1 as 'none'."""
    step, p, state = _checked_step({}, ("lengths",))
    with pytest.raises(ValueError, match="lengths must lie in"):
        step(p, state, (_ids(0), _ids(1), np.array(lengths)))
    step(p, state, (_ids(0), _ids(1), np.array([T, 0, 3])))   # the bounds themselves are fine


def test_traced_bce_targets_outside_zero_one_give_no_finite_loss():
    """Concrete ones are a ValueError; traced, 5.0 gave a finite, wrong loss (as a traced label out
    of range gives NaN, which the step's guard skips)."""
    model, p = _lm()
    bad = np.full((T, B, V), 5.0, np.float32)
    value = jax.jit(lambda t: model.loss(p, _ids(0), t, loss="binary_cross_entropy")[0])(bad)
    assert np.isnan(value)
    good = np.full((T, B, V), 0.5, np.float32)
    assert np.isfinite(jax.jit(lambda t: model.loss(p, _ids(0), t, loss="binary_cross_entropy")[0])(good))
    step, p, state = _checked_step({"loss": "binary_cross_entropy"}, ())
    with pytest.warns(RuntimeWarning):
        _, _, metrics, _ = step(p, state, (_ids(0), bad))
    assert int(metrics["skipped"]) == 1
