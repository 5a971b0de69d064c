"""Dropout between layers is one network whichever way the loss runs: the keep-masks are drawn
once per chunk from the key, so the plain loss, the rematerialised loss and the TBPTT forward and
windows drop the same units at the same steps (equal values; equal gradients where nothing is
truncated; a hand-written truncated surrogate where something is), for every cell, with masks."""

import jax
import jrnn
import jax.numpy as jnp
import numpy as np
import pytest

from jrnn import lm, losses, rnn
from jrnn.testing import assert_trees_close

RTOL = 1e-10
T, V, H, RATE = 7, 6, 4, 0.4
MASK = np.arange(T)[:, None] < np.array([T, 4])[None]     # right padding: lengths 7 and 4


def _problem(name, seed=0):
    """A float64 2-layer LM of `name`, perturbed params, ids, targets and a nonzero carry."""
    rng = np.random.RandomState(seed)
    model = lm.model(name, vocab_size=V, hidden_size=H, layers=2)
    p = model.init(jax.random.key(seed), jnp.float64)
    p = jax.tree.map(lambda a: a + 0.3 * jnp.asarray(rng.randn(*a.shape)), p)
    x, y = rng.randint(0, V, (T, 2)), rng.randint(0, V, (T, 2))
    carry = jax.tree.map(lambda a: a + 0.5 * jnp.asarray(rng.randn(*a.shape)), model.zeros(p, (2,)))
    return model, p, x, y, carry


VARIANTS = ({}, {"grad": jrnn.Remat()}, {"grad": jrnn.TBPTT(T, T)}, {"grad": jrnn.TBPTT(2, T)}, {"grad": jrnn.TBPTT(2, 3)})


@pytest.mark.parametrize("name", ["elman", pytest.param("lstm", marks=pytest.mark.slow),
                                  pytest.param("gru", marks=pytest.mark.slow)])
def test_remat_and_untruncated_tbptt_equal_the_plain_dropout_loss_and_gradient(name):
    model, p, x, y, carry = _problem(name, seed=1)

    @jax.jit   # one program for every variant
    def value_and_grads(p, c, key):
        return [jax.value_and_grad(lambda p, c: model.loss(p, x, y, c, mask=MASK, reduction="sum", dropout=RATE,
                                                           key=key, **kw)[0], argnums=(0, 1))(p, c) for kw in VARIANTS]

    (ref, g_ref), *others = value_and_grads(p, carry, jax.random.key(3))
    # remat; TBPTT with k1 = k2 = T (tbptt's shortcut to BPTT); TBPTT on the windowed path with
    # k2 = T (every block's window reaches back to step 0: the full gradient)
    for kw, (value, g) in zip(VARIANTS[1:4], others):
        np.testing.assert_allclose(float(value), float(ref), rtol=RTOL, err_msg=str(kw))
        assert_trees_close(g, g_ref, rtol=RTOL, what=str(kw))
    # a truncated gradient (k1, k2 < T) still has the full loss as its value
    np.testing.assert_allclose(float(others[-1][0]), float(ref), rtol=RTOL)
    # another key, another network, on every path
    again = value_and_grads(p, carry, jax.random.key(4))
    assert all(float(v) != float(ref) for v, _ in again)


def _hand_tbptt(model, p, x, y, mask, c0, key, k1, k2):
    """TBPTT(k1, k2) with dropout written out step by step (no jrnn.model/tbptt code): keep-masks
    as rnn.stack draws them, each block's losses through the k2 steps ending at its last step
    from the detached carry there (c0 itself where the window reaches step 0)."""
    cell, L = model.cell, model.layers
    keep = [None] + [jax.random.bernoulli(jax.random.split(key, L)[i], 1.0 - RATE, (T, 2, H)) for i in range(1, L)]

    def step(c, t):
        h, new = x[t], []
        for i in range(L):
            if i > 0:
                h = jnp.where(keep[i][t], h / (1.0 - RATE), 0.0)
            ci, h = cell.step(p.layers[i], c[i], cell.project(p.layers[i], jnp.asarray(h)[None])[0])
            new.append(jax.tree.map(lambda a, b: jnp.where(mask[t][:, None], a, b), ci, c[i]))
        return tuple(new), h

    before, c = [c0], c0
    for t in range(T):
        c, _ = step(c, t)
        before.append(jax.lax.stop_gradient(c))
    total = 0.0
    for s in range(0, T, k1):
        e = min(s + k1, T) - 1
        w = max(e - k2 + 1, 0)
        c = c0 if w == 0 else before[w]
        for t in range(w, e + 1):
            c, h = step(c, t)
            if t >= s:
                nll = losses.softmax_cross_entropy(h @ p.w_hy + p.b_y[None], y[t], reduction="none")
                total = total + jnp.sum(jnp.where(mask[t], nll, 0.0))
    return total


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) for n in ["elman", "lstm", "gru"]])
def test_truncated_tbptt_with_dropout_equals_the_hand_written_surrogate(name):
    model, p, x, y, carry = _problem(name, seed=2)
    key = jax.random.key(5)
    for k1, k2 in [(2, 3)] if name == "elman" else [(2, 3), (1, 4)]:
        got = jax.jit(jax.value_and_grad(lambda p, c: model.loss(p, x, y, c, mask=MASK, reduction="sum", grad=jrnn.TBPTT(k1, k2),
                                                                 dropout=RATE, key=key)[0], argnums=(0, 1)))(p, carry)
        want = jax.jit(jax.value_and_grad(lambda p, c: _hand_tbptt(model, p, x, y, MASK, c, key, k1, k2),
                                          argnums=(0, 1)))(p, carry)
        np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=RTOL)
        assert_trees_close(got[1], want[1], rtol=RTOL)


def test_the_plain_path_draws_as_before_and_rate_zero_is_no_dropout():
    model, p, x, y, carry = _problem("elman", seed=3)
    key = jax.random.key(7)
    # rnn.stack's stream: split(key, layers)[i] -> bernoulli over [T, ..., H] (as before this change)
    h1, _ = rnn.run(model.cell, p.layers[0], x, carry[0])
    keep = jax.random.bernoulli(jax.random.split(key, 2)[1], 1.0 - RATE, h1.shape)
    h2, _ = rnn.run(model.cell, p.layers[1], jnp.where(keep, h1 / (1.0 - RATE), 0.0), carry[1])
    np.testing.assert_array_equal(model.hidden(p, x, carry, dropout=RATE, key=key)[0], h2)
    # rate 0 is no dropout at all (checked on the windowed TBPTT path); keys are compared above
    loss = lambda **d: float(model.loss(p, x, y, carry, mask=MASK, grad=jrnn.TBPTT(2, 3), **d)[0])
    assert loss(dropout=0.0, key=key) == loss()


def test_bad_dropout_arguments_are_refused_before_tracing():
    model, p, x, y, _ = _problem("lstm")
    for kw in ({}, {"grad": jrnn.Remat()}, {"grad": jrnn.TBPTT(2, 3)}, {"grad": jrnn.TBPTT(40, 40)}):
        with pytest.raises(ValueError, match="needs a PRNG key"):
            model.loss(p, x, y, dropout=0.5, **kw)
        for rate in (1.0, -0.1, float("nan")):
            with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
                model.loss(p, x, y, dropout=rate, key=jax.random.key(0), **kw)
    with pytest.raises(ValueError, match="TBPTT .* takes no remat"):
        model.loss(p, x, y, k1=2, k2=3, remat=True)


def test_a_numpy_float64_rate_keeps_the_states_dtype_and_equals_the_python_float():
    """dropout=np.float64(r) drops as dropout=r does on every path, float32 params included
    (its 1 / (1 - r) scale promoted float32 states to float64: a scan carry-type error)."""
    model, p, x, y, _ = _problem("elman")
    p = jax.tree.map(lambda a: a.astype(jnp.float32), p)
    key = jax.random.key(3)
    hidden = lambda rate: model.hidden(p, x, dropout=rate, key=key)[0]      # rnn.stack's path
    got = hidden(np.float64(RATE))
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, hidden(RATE))
    # the TBPTT windows and the remat loss scale through the same rnn.dropped, per step
    hs, keep = jnp.ones((2, 3), jnp.bfloat16), jnp.asarray([[True, False, True]] * 2)
    for rate in (np.float64(RATE), np.float32(RATE)):
        assert rnn.dropped(hs, keep, rate).dtype == jnp.bfloat16
        np.testing.assert_array_equal(rnn.dropped(hs, keep, rate), rnn.dropped(hs, keep, RATE))


def test_a_dropout_rate_or_key_of_the_wrong_kind_is_a_type_error_naming_it():
    model, p, x, y, _ = _problem("elman")
    for rate in ("0.3", True, None):
        with pytest.raises(TypeError, match="dropout must be a number"):
            model.loss(p, x, y, dropout=rate, key=jax.random.key(0))
    # one typed key or one legacy uint32 [2] key; an int, a float array, a batch of keys are refused
    for key in (0, jnp.zeros(2), jnp.zeros(3, jnp.uint32), jax.random.split(jax.random.key(0), 2)):
        for kw in ({}, {"grad": jrnn.TBPTT(2, 3)}):
            with pytest.raises(TypeError, match="dropout's key must be one PRNG key"):
                model.loss(p, x, y, dropout=RATE, key=key, **kw)
    assert float(model.loss(p, x, y, dropout=RATE, key=jax.random.PRNGKey(0))[0]) == \
        float(model.loss(p, x, y, dropout=RATE, key=jax.random.wrap_key_data(jax.random.PRNGKey(0)))[0])
