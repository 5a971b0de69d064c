"""A bidirectional model (`jrnn.model.make(..., bidirectional=True)`) is the composition it
claims for every cell: per layer a forward run and a reverse run of each sequence's own real
steps, concatenated, read out from 2H; in value and gradient (x64), under right padding (the
length-aware property), 2 layers, many-to-one, dropout; and what needs a causal model refuses it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import cells, lm, losses, rnn, tbptt
from jrnn.model import Directions
from jrnn.testing import assert_trees_close

RTOL = 1e-10
T, D, H, V = 6, 4, 3, 5
LENGTHS = [6, 3, 5]
MASK = np.arange(T)[:, None] < np.array(LENGTHS)[None]          # right padding, [T, B]


def _problem(name, seed=0, layers=2):
    """A float64 bidirectional model of `name` over dense features, perturbed params, padded
    inputs (NaN in the padding: it must never reach a value or gradient), targets, a carry."""
    rng = np.random.RandomState(seed)
    model = jrnn.model.make(cells.get(name), input_size=D, hidden_size=H, output_size=V, layers=layers,
                            bidirectional=True)
    p = model.init(jax.random.key(seed), jnp.float64)
    p = jax.tree.map(lambda a: a + 0.3 * jnp.asarray(rng.randn(*a.shape)), p)
    x = np.where(MASK[..., None], rng.randn(T, len(LENGTHS), D), np.nan)
    y = rng.randint(0, V, (T, len(LENGTHS)))
    carry = jax.tree.map(lambda a: a + 0.5 * jnp.asarray(rng.randn(*a.shape)), model.zeros(p, (len(LENGTHS),)))
    return model, p, x, y, carry


def _by_hand(model, p, x, carry):
    """Top states of each sequence, composed from one-direction runs of its real steps only:
    a list of ([n, 2H] states, forward final carries, backward final carries) per sequence."""
    out = []
    for b, n in enumerate(LENGTHS):
        hs, fin = jnp.asarray(x[:n, b]), []
        for layer, c in zip(p.layers, carry):
            pick = lambda t: jax.tree.map(lambda a: a[b], t)
            hf, cf = rnn.run(model.cell, layer.forward, hs, pick(c.forward))
            hb, cb = rnn.run(model.cell, layer.backward, hs, pick(c.backward), reverse=True)
            hs = jnp.concatenate([hf, hb], -1)
            fin.append((cf, cb))
        out.append((hs, fin))
    return out


@pytest.mark.parametrize("name", ["elman", pytest.param("lstm", marks=pytest.mark.slow),
                                  pytest.param("gru", marks=pytest.mark.slow)])
def test_bidirectional_model_equals_the_composition_by_hand_in_value_and_gradient(name):
    model, p, x, y, carry = _problem(name, seed=1)

    def both(p, c):
        logits, final = model.apply(p, x, c, mask=MASK)
        last, _ = model.apply_last(p, x, c, mask=MASK)
        loss = model.loss(p, x, y, c, mask=MASK, reduction="sum")[0]
        hand = _by_hand(model, p, x, c)
        hand_logits = [hs @ p.w_hy + p.b_y[None] for hs, _ in hand]
        hand_loss = sum(jnp.sum(losses.softmax_cross_entropy(lg, y[:n, b], reduction="none"))
                        for b, (n, lg) in enumerate(zip(LENGTHS, hand_logits)))
        # many-to-one: forward at the last real step, backward at t = 0 (both read everything)
        hand_last = jnp.stack([jnp.concatenate([hs[-1, :H], hs[0, H:]]) for hs, _ in hand]) @ p.w_hy + p.b_y[None]
        return (logits, final, last, loss), (hand_logits, [f for _, f in hand], hand_last, hand_loss)

    @jax.jit   # one program: both sides' values and gradients
    def run(p, c):
        grad = lambda i: jax.grad(lambda p, c: both(p, c)[i][3], argnums=(0, 1))(p, c)
        return both(p, c), grad(0), grad(1)

    ((logits, final, last, loss), (hand_logits, hand_final, hand_last, hand_loss)), g, g_hand = run(p, carry)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(logits[:n, b], hand_logits[b], rtol=RTOL)   # the length-aware property
        assert np.all(np.asarray(logits[n:, b]) == np.asarray(p.b_y))          # padding: zero states
        for layer, (cf, cb) in zip(final, hand_final[b]):
            assert_trees_close(jax.tree.map(lambda a: a[b], tuple(layer)), (cf, cb), rtol=RTOL)
    np.testing.assert_allclose(last, hand_last, rtol=RTOL)
    np.testing.assert_allclose(float(loss), float(hand_loss), rtol=RTOL)
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(g))             # NaN padding never leaks
    assert_trees_close(g, g_hand, rtol=RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["elman", "lstm"])
def test_dropout_remat_states_and_compute_dtype_work_on_a_bidirectional_model(name):
    model, p, x, y, carry = _problem(name, seed=2)
    key = jax.random.key(4)
    rate = 0.3
    # dropout between layers drops units of the [T, B, 2H] concat, as rnn.stack draws them
    xs = jnp.where(MASK[..., None], jnp.asarray(x), 0.0)
    h0, _ = rnn.bidirectional(model.cell, *p.layers[0], xs, mask=MASK, carry=carry[0])
    keep = rnn.dropout_keep(key, rate, 2, 1, h0.shape)
    h1, _ = rnn.bidirectional(model.cell, *p.layers[1], rnn.dropped(h0, keep, rate), mask=MASK, carry=carry[1])
    got, _ = model.hidden(p, x, carry, mask=MASK, dropout=rate, key=key)
    np.testing.assert_allclose(got, h1, rtol=RTOL)
    plain, _ = model.hidden(p, x, carry, mask=MASK)
    assert not np.allclose(got, plain)
    # per-layer rematerialised scans (hidden's remat, not the fused causal loss): the same states
    np.testing.assert_allclose(model.hidden(p, x, carry, mask=MASK, grad=jrnn.Remat())[0], plain, rtol=RTOL)
    # bf16 compute: logits in the params' dtype, close to float64's
    lo16, _ = model.apply(p, x, carry, mask=MASK, compute_dtype=jnp.bfloat16)
    assert lo16.dtype == jnp.float64
    np.testing.assert_allclose(lo16, model.apply(p, x, carry, mask=MASK)[0], atol=0.1)


@pytest.mark.slow
def test_parallel_in_time_methods_give_a_bidirectional_model_the_sequential_states():
    model, p, x, _, carry = _problem("gru", seed=3)
    want, _ = model.hidden(p, x, carry, mask=MASK)
    for method in ("deer", "elk"):
        got, _ = model.hidden(p, x, carry, mask=MASK, grad=jrnn.Parallel(method))
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10, err_msg=method)


def test_what_needs_a_causal_model_refuses_a_bidirectional_one_before_tracing():
    model, p, x, y, carry = _problem("elman", layers=1)
    ids = lm.model("gru", vocab_size=V, hidden_size=H)
    tagger = jrnn.model.make(cells.GRU, input_size=V, hidden_size=H, output_size=V, bidirectional=True)
    tp = tagger.init(jax.random.key(0))
    z = np.zeros(4, np.int32)
    for call, what in [(lambda: model.step(p, carry, x[0]), "step"),
                       (lambda: model.loss(p, x, y, mask=MASK, grad=jrnn.TBPTT(2, 3)), "TBPTT"),
                       (lambda: model.loss(p, x, y, mask=MASK, grad=jrnn.TBPTT(T, T)), "TBPTT"),
                       (lambda: model.loss(p, x, y, mask=MASK, grad=jrnn.Remat()), "remat"),
                       (lambda: jrnn.generate(tagger, tp, jax.random.key(0), [1], 3), "generate")]:
        with pytest.raises(ValueError, match=f"{what}.*causal.*bidirectional"):
            call()
    with pytest.raises(ValueError, match="reverse does not apply to a bidirectional"):
        model.apply(p, x, mask=MASK, reverse=True)
    with pytest.raises(ValueError, match="language model cannot be bidirectional"):
        lm.model("gru", vocab_size=V, hidden_size=H, bidirectional=True)
    with pytest.raises(TypeError, match="bidirectional must be a bool"):
        jrnn.model.make(cells.GRU, input_size=V, hidden_size=H, output_size=V, bidirectional="yes")
    # params of the other kind, both ways: a TypeError naming what the model takes
    with pytest.raises(TypeError, match="this model is unidirectional: Directions"):
        ids.apply(tp, z)
    with pytest.raises(TypeError, match="this model is bidirectional: each layer takes Directions"):
        tagger.apply(ids.init(jax.random.key(0)), z)
    # right kind, wrong cell; right layers, a one-direction readout
    with pytest.raises(TypeError, match="LSTMParams.*'gru'"):
        tagger.apply(jrnn.model.make(cells.LSTM, input_size=V, hidden_size=H, output_size=V,
                                     bidirectional=True).init(jax.random.key(0)), z)
    with pytest.raises(ValueError, match=r"w_hy has shape \(3, 5\).*\(6, 5\) \(\[2H, V\]"):
        tagger.apply(tp._replace(w_hy=tp.w_hy[:H]), z)
    # the tagger itself runs on ids, one label per token
    assert tagger.apply(tp, z)[0].shape == (4, V)


def test_carries_and_checkpoints_of_a_bidirectional_model(tmp_path):
    model = jrnn.model.make(cells.LSTM, input_size=D, hidden_size=H, output_size=V, layers=2, bidirectional=True)
    p = model.init(jax.random.key(0))
    assert model != model._replace(bidirectional=False) and hash(model) == hash(model._replace())
    z = model.zeros(p, (2,))
    assert all(isinstance(c, Directions) and c.forward.h.shape == c.backward.c.shape == (2, H) for c in z)
    x = np.random.RandomState(0).randn(T, 2, D).astype(np.float32)
    logits, final = model.apply(p, x, z)
    assert jax.tree.structure(final) == jax.tree.structure(z)
    # a carry given as nested lists is converted; a one-direction carry is refused
    listed = [[[np.asarray(a).tolist() for a in s] for s in c] for c in z]
    np.testing.assert_array_equal(model.apply(p, x, listed)[0], logits)
    with pytest.raises(TypeError, match="carry of layer 0 must look like"):
        model.apply(p, x, tuple(c.forward for c in z))
    state = {"params": p, "carry": final}
    jrnn.checkpoint.save(tmp_path, state, step=1)
    back = jrnn.checkpoint.load_latest(tmp_path, state).state
    assert_trees_close(back, state, rtol=0)
    assert isinstance(back["params"].layers[1], Directions) and back["params"].w_hy.shape == (2 * H, V)
    one_way = jrnn.model.make(cells.LSTM, input_size=D, hidden_size=H, output_size=V, layers=2).init(jax.random.key(0))
    with pytest.raises(ValueError):
        jrnn.checkpoint.load_latest(tmp_path, {"params": one_way, "carry": final})


def test_float64_features_into_float32_params_with_masks_run_in_float32():
    """The bidirectional loss with padding, on float64 features (numpy's
    default under x64) and float32 params: float32 results equal to features cast by hand (was
    a lax.select dtype error inside the backward direction's scan)."""
    model, p, x, y, _ = _problem("elman", layers=1)
    p = jax.tree.map(lambda a: a.astype(jnp.float32), p)
    x32 = x.astype(np.float32)
    for f in (lambda m, q, a: m.loss(q, a, y, mask=MASK)[0],):
        got = f(model, p, x)
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(got, f(model, p, x32))


def test_lm_model_takes_numpy_false_and_refuses_non_bools():
    assert not lm.model("gru", vocab_size=V, hidden_size=H, bidirectional=np.False_).bidirectional
    with pytest.raises(ValueError, match="language model cannot be bidirectional"):
        lm.model("gru", vocab_size=V, hidden_size=H, bidirectional=np.True_)
    for b in (0, 1, "yes", None):
        with pytest.raises(TypeError, match="bidirectional must be a bool"):
            lm.model("gru", vocab_size=V, hidden_size=H, bidirectional=b)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_apply_last_reads_the_real_steps_under_left_padding_and_holes(bidirectional):
    """apply_last over a masked sequence equals apply_last over its real steps alone, wherever
    the padding sits (left, holes, both ends), forward and with `reverse` (was: the step at
    index (number of real steps) - 1, a padded step or the wrong one, and t = 0 with reverse)."""
    model = jrnn.model.make(cells.ELMAN, input_size=D, hidden_size=H, output_size=V, bidirectional=bidirectional)
    p = model.init(jax.random.key(1), jnp.float64)
    x = np.random.RandomState(2).randn(5, 4, D)
    mask = np.array([[0, 1, 1, 0, 0], [1, 0, 1, 0, 1], [1, 1, 0, 1, 1], [0, 0, 0, 1, 1]]).T.astype(bool)  # [T, B]
    for kw in ({},) if bidirectional else ({}, {"reverse": True}):
        got = model.apply_last(p, x, mask=mask, **kw)[0]
        for b in range(4):
            want = model.apply_last(p, x[mask[:, b], b], **kw)[0]
            np.testing.assert_allclose(got[b], want, rtol=1e-12, atol=1e-14)
