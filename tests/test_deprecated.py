"""0.1's spellings still work for one release: each warns (DeprecationWarning naming the new
spelling) and gives bit-identical values and gradients to the 0.2 spelling it stands for; mixing
an old keyword with `grad=` and unknown keywords are TypeErrors. `Model`'s methods show their
real arguments."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import cells, data, elman, lm, parallel, rnn, tbptt

T, B, V, H = 7, 2, 5, 4


def _lm(cell="lstm", layers=2):
    model = lm.model(cell, vocab_size=V, hidden_size=H, layers=layers)
    p = model.init(jax.random.key(0))
    rng = np.random.RandomState(0)
    x, y = rng.randint(0, V, (T, B)), rng.randint(0, V, (T, B))
    mask = np.ones((T, B), bool)
    mask[5:, 1] = False
    return model, p, x, y, mask


def _same(old, new):
    """Bit-identical pytrees (values and gradients)."""
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("old,new", [
    (dict(k1=2, k2=3), dict(grad=jrnn.TBPTT(2, 3))),
    (dict(remat=True), dict(grad=jrnn.Remat())),
    (dict(remat=False), dict(grad=jrnn.FullBPTT())),
    (dict(k1=T, k2=T), dict(grad=jrnn.TBPTT(T, T))),
], ids=["tbptt", "remat", "remat-false", "tbptt-whole"])
def test_the_losss_old_keywords_warn_and_give_the_same_value_and_gradient(old, new):
    model, p, x, y, mask = _lm()
    f = lambda **kw: jax.value_and_grad(lambda p: model.loss(p, x, y, mask=mask, **kw)[0])(p)
    want = f(**new)
    with pytest.warns(DeprecationWarning, match="deprecated.*grad="):
        got = f(**old)
    _same(got, want)


@pytest.mark.parametrize("old,new", [
    (dict(remat=True), dict(grad=jrnn.Remat())),
    pytest.param(dict(method="deer"), dict(grad=jrnn.Parallel("deer")), marks=pytest.mark.slow),
    pytest.param(dict(method="quasi_elk"), dict(grad=jrnn.Parallel("quasi_elk")), marks=pytest.mark.slow),
    (dict(method="sequential"), dict()),
    (dict(method="auto"), dict()),
], ids=["remat", "deer", "quasi_elk", "sequential", "auto"])
def test_hidden_and_run_old_keywords_warn_and_give_the_same_states_and_gradient(old, new):
    model, p, x, _, mask = _lm("gru")
    f = lambda **kw: jax.value_and_grad(lambda p: jnp.sum(model.hidden(p, x, mask=mask, **kw)[0] ** 2))(p)
    want = f(**new)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        got = f(**old)
    _same(got, want)
    layer = p.layers[0]
    run = lambda **kw: rnn.run(cells.GRU, layer, x, mask=mask, **kw)
    want = run(**new)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        _same(run(**old), want)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        _same(rnn.stack(cells.GRU, p.layers, x, mask=mask, **old), rnn.stack(cells.GRU, p.layers, x, mask=mask, **new))


def test_tbptt_sequence_loss_warns_and_is_the_models_tbptt_loss():
    model, p, x, y, mask = _lm()
    want = jax.value_and_grad(lambda p: model.loss(p, x, y, mask=mask, grad=jrnn.TBPTT(1, 3))[0])(p)
    with pytest.warns(DeprecationWarning, match="tbptt.sequence_loss is deprecated"):
        got = jax.value_and_grad(lambda p: tbptt.sequence_loss(model, p, x, y, k1=1, k2=3, mask=mask)[0])(p)
    _same(got, want)


def test_elman_flat_api_old_keywords_warn_and_give_the_same_numbers():
    params = elman.init(jax.random.key(1), vocab_size=V, hidden_size=H)
    x = np.random.RandomState(1).randint(0, V, (T, B))
    want = jax.value_and_grad(lambda p: elman.sequence_loss(p, x, x, grad=jrnn.TBPTT(1, 4))[0])(params)
    with pytest.warns(DeprecationWarning):
        _same(jax.value_and_grad(lambda p: elman.sequence_loss(p, x, x, k1=1, k2=4)[0])(params), want)
    with pytest.warns(DeprecationWarning):
        _same(elman.hidden(params, x, remat=True), elman.hidden(params, x, grad=jrnn.Remat()))


def test_pad_batch_warns_and_is_pad_batch_first():
    seqs = [[1, 2, 3], [4], [0, 1]]
    with pytest.warns(DeprecationWarning, match="pad_batch is deprecated"):
        old = data.pad_batch(seqs, bucket=4)
    _same(old, data.pad(seqs, bucket=4, time_major=False))
    ids, mask = data.pad(seqs, bucket=4)
    _same((ids.T, mask.T), old)
    assert ids.shape == (4, 3) and mask.sum(0).tolist() == [3, 1, 2]


def test_auto_method_warns_and_still_answers_sequential():
    with pytest.warns(DeprecationWarning, match="auto_method is deprecated"):
        assert parallel.auto_method(100, 1, 8, "cpu") == "sequential"


def test_an_old_keyword_beside_grad_or_an_unknown_keyword_is_a_type_error():
    model, p, x, y, _ = _lm()
    with pytest.raises(TypeError, match="not both"):
        model.loss(p, x, y, grad=jrnn.Remat(), k1=1, k2=2)
    with pytest.raises(TypeError, match="not both"):
        model.hidden(p, x, grad=jrnn.FullBPTT(), remat=True)
    with pytest.raises(TypeError, match="unexpected keyword argument.*'mehtod'"):
        model.apply(p, x, mehtod="deer")
    with pytest.raises(TypeError, match="unexpected keyword argument.*'k3'"):
        model.loss(p, x, y, k3=2)
    with pytest.raises(ValueError, match="TBPTT needs both k1 and k2"):
        model.loss(p, x, y, k1=2)
    with pytest.raises(ValueError, match="takes no remat"):
        model.loss(p, x, y, k1=2, k2=3, remat=True)


def test_strategy_values_are_distinct_hashable_and_equal_by_value():
    """Empty NamedTuples would all equal () and each other: a jitted step keyed on FullBPTT()
    would then reuse Remat()'s program."""
    assert jrnn.FullBPTT() != jrnn.Remat() and jrnn.FullBPTT() == jrnn.FullBPTT()
    assert jrnn.TBPTT(2, 3) == jrnn.TBPTT(np.int64(2), 3) and hash(jrnn.TBPTT(2, 3)) == hash(jrnn.TBPTT(2, 3))
    assert jrnn.TBPTT(2, 3) != (2, 3) and jrnn.Parallel("deer") != jrnn.Parallel("elk")
    assert len({jrnn.FullBPTT(), jrnn.Remat(), jrnn.TBPTT(1, 1), jrnn.Parallel(), jrnn.Parallel(tol=1e-6)}) == 5
    assert isinstance(jrnn.Parallel(tol=np.float32(1e-6)).tol, float)


@pytest.mark.parametrize("method", ["hidden", "apply", "apply_last", "loss"])
def test_model_methods_show_their_real_arguments_and_a_docstring(method):
    sig = inspect.signature(getattr(jrnn.Model, method))
    names = list(sig.parameters)
    assert {"grad", "mask", "lengths", "dropout", "key", "compute_dtype", "unroll", "time_major"} <= set(names)
    kinds = {p.kind for n, p in sig.parameters.items() if n != "deprecated"}
    assert inspect.Parameter.VAR_KEYWORD not in kinds and names[-1] == "deprecated"
    assert getattr(jrnn.Model, method).__doc__
