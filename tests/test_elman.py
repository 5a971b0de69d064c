"""Forward pass: init schemes, scan vs loop, hoisted projection, batching, reverse, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import elman, initializers
from jrnn.testing import assert_trees_close


@pytest.fixture
def params():
    return elman.init(jax.random.key(0), vocab_size=9, hidden_size=6, dtype=jnp.float64)


@pytest.mark.parametrize("scheme", initializers.SCHEMES)
def test_init_is_a_deterministic_pytree_with_declared_shapes(scheme):
    p = elman.init(jax.random.key(3), input_size=4, hidden_size=5, output_size=7, scheme=scheme)
    assert isinstance(p, elman.ElmanParams)
    assert [x.shape for x in p] == [(4, 5), (5, 5), (5,), (5, 7), (7,)]
    q = elman.init(jax.random.key(3), input_size=4, hidden_size=5, output_size=7, scheme=scheme)
    assert all(np.array_equal(a, b) for a, b in zip(p, q))
    r = elman.init(jax.random.key(4), input_size=4, hidden_size=5, output_size=7, scheme=scheme)
    assert not np.array_equal(p.w_hh, r.w_hh)


@pytest.mark.slow
def test_init_schemes_follow_the_seeds():
    big = dict(input_size=400, hidden_size=300, output_size=200)
    p = elman.init(jax.random.key(0), scheme="normal", scale=0.01, **big)
    assert abs(float(jnp.std(p.w_hh)) - 0.01) < 5e-4 and float(jnp.abs(p.b_h).max()) == 0.0
    p = elman.init(jax.random.key(0), scheme="uniform_fan_in", **big)
    assert float(jnp.abs(p.w_xh).max()) <= 1 / np.sqrt(400) and float(jnp.abs(p.w_xh).max()) > 0.9 / np.sqrt(400)
    assert float(jnp.abs(p.w_hy).max()) <= 1 / np.sqrt(300)
    p = elman.init(jax.random.key(0), scheme="uniform01", **big)
    assert float(p.b_h.min()) >= 0 and float(p.b_h.max()) <= 1 and float(p.w_hh.min()) >= 0
    p = elman.init(jax.random.key(0), **big)  # default: orthogonal recurrence
    np.testing.assert_allclose(p.w_hh @ p.w_hh.T, np.eye(300), atol=1e-5)


@pytest.mark.parametrize("bad", [0, -3])
def test_init_rejects_nonpositive_sizes(bad):
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        elman.init(jax.random.key(0), vocab_size=5, hidden_size=bad)


def test_init_rejects_unknown_scheme_and_missing_sizes():
    with pytest.raises(ValueError, match="unknown init scheme"):
        elman.init(jax.random.key(0), vocab_size=5, hidden_size=3, scheme="xavier")
    with pytest.raises(ValueError, match="vocab_size"):
        elman.init(jax.random.key(0), hidden_size=3)
    with pytest.raises(TypeError):
        elman.init(jax.random.key(0), vocab_size=5, hidden_size=3.0)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_scan_matches_python_loop(params, activation, rng):
    x = rng.randint(0, 9, size=11)
    h0 = jnp.asarray(rng.randn(6))
    logits, h_T = elman.apply(params, x, h0, activation=activation)
    act = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0), "sigmoid": lambda z: 1 / (1 + np.exp(-z))}[activation]
    p = [np.asarray(a) for a in params]
    h = np.asarray(h0)
    for t in range(11):
        h = act(p[0][x[t]] + h @ p[1] + p[2])
        np.testing.assert_allclose(logits[t], h @ p[3] + p[4], rtol=1e-12)
    np.testing.assert_allclose(h_T, h, rtol=1e-12)


def test_token_ids_equal_one_hot_dense_inputs(params, rng):
    x = rng.randint(0, 9, size=7)
    a, ha = elman.apply(params, x)
    b, hb = elman.apply(params, np.eye(9)[x])
    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(ha, hb, rtol=1e-12)


def _inlined(jaxpr):
    """Equations of a jaxpr with jit / custom-derivative calls inlined (scan bodies kept whole)."""
    out = []
    for e in jaxpr.eqns:
        sub = e.params.get("call_jaxpr", e.params.get("jaxpr")) if e.primitive.name != "scan" else None
        if sub is not None:
            out += _inlined(getattr(sub, "jaxpr", sub))
        else:
            out.append(e)
    return out


def test_input_projection_is_hoisted_out_of_the_scan(params):
    tokens = jnp.zeros((25, 3), jnp.int32)  # [T, B]
    eqns = _inlined(jax.make_jaxpr(lambda p, x: elman.apply(p, x)[0])(params, tokens).jaxpr)
    scans = [e for e in eqns if e.primitive.name == "scan"]
    assert len(scans) == 1
    body = [e.primitive.name for e in _inlined(scans[0].params["jaxpr"].jaxpr)]
    assert body.count("dot_general") == 1            # only h_{t-1} @ W_hh runs per step
    assert "gather" not in body                      # the embedding gather runs once, before
    after = [e.primitive.name for e in eqns[eqns.index(scans[0]):]]
    assert "dot_general" in after                    # the readout runs once, after


@pytest.mark.parametrize("masked", [False, True])
def test_backward_loop_does_one_matmul_per_step(params, masked):
    """The weight gradient dL/dW_hh is one matmul after the backward loop (jrnn.elman_scan), not
    an outer product accumulated inside it as the transpose of a plain scan would do."""
    tokens = jnp.zeros((25, 3), jnp.int32)
    mask = jnp.ones((25, 3), bool) if masked else None
    loss = lambda p: jnp.sum(elman.apply(p, tokens, mask=mask)[0] ** 2)
    eqns = _inlined(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    scans = [e for e in eqns if e.primitive.name == "scan"]
    assert len(scans) == 2                           # forward, backward
    for s in scans:
        assert [e.primitive.name for e in _inlined(s.params["jaxpr"].jaxpr)].count("dot_general") == 1
    plain = lambda p: jnp.sum(jax.lax.scan(lambda h, u: elman.step(p, h, u), jnp.zeros((3, 6)),
                                           elman.project(p, tokens))[1] ** 2)
    plain_scans = [e for e in _inlined(jax.make_jaxpr(jax.grad(plain))(params).jaxpr) if e.primitive.name == "scan"]
    assert max([e.primitive.name for e in _inlined(s.params["jaxpr"].jaxpr)].count("dot_general")
               for s in plain_scans) == 2            # what the hoisting removes


def test_batched_entry_point_equals_loop_over_sequences(params, rng):
    x = rng.randint(0, 9, size=(5, 8))  # [B, T]
    h0 = jnp.asarray(rng.randn(5, 6))
    logits, h_T = elman.apply(params, x, h0, time_major=False)
    assert logits.shape == (5, 8, 9) and h_T.shape == (5, 6)
    vm_logits, vm_h = jax.vmap(lambda xi, hi: elman.apply(params, xi, hi))(x, h0)
    for b in range(5):
        one, h1 = elman.apply(params, x[b], h0[b])
        np.testing.assert_allclose(logits[b], one, rtol=1e-12)
        np.testing.assert_allclose(vm_logits[b], one, rtol=1e-12)
        np.testing.assert_allclose(h_T[b], h1, rtol=1e-12)
        np.testing.assert_allclose(vm_h[b], h1, rtol=1e-12)


def test_reverse_equals_flipped_forward(params, rng):
    x = rng.randint(0, 9, size=10)
    fwd, h_f = elman.apply(params, x[::-1].copy())
    rev, h_r = elman.apply(params, x, reverse=True)
    np.testing.assert_allclose(rev, fwd[::-1], rtol=1e-12)
    np.testing.assert_allclose(h_r, h_f, rtol=1e-12)


def test_the_deprecated_apply_batch_warns_and_equals_batch_first_apply(params, rng):
    """0.1's `apply_batch` still works for one release: a DeprecationWarning naming
    `time_major=False`, then the same logits `[B, T, V]` and h_T `[B, H]` as `apply` of batch-first
    inputs, mask `[B, T]` included."""
    x = rng.randint(0, 9, size=(3, 4))  # [B, T]
    mask = np.arange(4)[None, :] < np.array([[4], [2], [3]])
    with pytest.warns(DeprecationWarning, match="time_major=False"):
        old = elman.apply_batch(params, x, mask=mask)
    assert_trees_close(old, elman.apply(params, x, mask=mask, time_major=False), rtol=0.0)


@pytest.mark.parametrize("unroll", [2, pytest.param(5, marks=pytest.mark.slow), pytest.param(16, marks=pytest.mark.slow)])
def test_unroll_and_remat_do_not_change_results(params, rng, unroll):
    x = rng.randint(0, 9, size=13)
    base = elman.apply(params, x)
    assert_trees_close(elman.apply(params, x, unroll=unroll), base, rtol=1e-12)
    loss = lambda p, **kw: jnp.sum(elman.apply(p, x, **kw)[0] ** 2)
    assert_trees_close(jax.grad(lambda p: loss(p, grad=jrnn.Remat()))(params), jax.grad(loss)(params), rtol=1e-12)


def test_many_to_one_uses_the_last_state(params, rng):
    x = rng.randint(0, 9, size=6)
    logits, h_T = elman.apply_last(params, x)
    all_logits, _ = elman.apply(params, x)
    np.testing.assert_allclose(logits, all_logits[-1], rtol=1e-12)


@pytest.mark.parametrize("bad", [[0, 9], [-1, 2]])
def test_out_of_range_token_ids_raise(params, bad):
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 9\)"):
        elman.apply(params, np.array(bad))


def test_empty_sequence_and_bad_shapes_raise(params):
    with pytest.raises(ValueError, match="empty sequence"):
        elman.apply(params, np.zeros((0,), np.int32))
    for scalar in (np.int64(3), 3):       # no time axis: named as such, not as an empty sequence
        with pytest.raises(ValueError, match="got a scalar"):
            elman.apply(params, scalar)
        with pytest.raises(ValueError, match="got a scalar"):
            jrnn.rnn.run(jrnn.cells.ELMAN, params, scalar)
    with pytest.raises(ValueError, match=r"must have shape \(3, 6\) for these inputs"):
        elman.apply(params, np.zeros((4, 3), np.int32), jnp.zeros(6))
    with pytest.raises(ValueError, match="last dim 9"):
        elman.apply(params, np.zeros((4, 5)))
    with pytest.raises(TypeError, match="integer token ids or float"):
        elman.apply(params, np.zeros((4,), bool))
    with pytest.raises(ValueError, match="unknown activation"):
        elman.apply(params, np.zeros((4,), np.int32), activation="gelu")


def test_one_dimensional_float_input_is_refused_not_read_as_steps(params):
    # dense inputs are [T, ..., D]: a 1-D float vector is refused, not read as T = 5 steps
    p = elman.init(jax.random.key(0), input_size=5, hidden_size=4, output_size=3)
    with pytest.raises(ValueError, match=r"at least 2-D"):
        elman.apply(p, np.array([0., 1., 2., 3., 4.], np.float32))
    logits, _ = elman.apply(p, np.array([[0., 1., 2., 3., 4.]], np.float32))   # one step: [1, D]
    assert logits.shape == (1, 3)


def test_h0_given_as_a_list_equals_the_array(params, rng):
    x = rng.randint(0, 9, size=5)
    h0 = rng.randn(6)
    a, ha = elman.apply(params, x, jnp.asarray(h0))
    b, hb = elman.apply(params, x, [float(v) for v in h0])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ha, hb)
    with pytest.raises(TypeError, match="carry of layer 0"):
        elman.apply(params, x, {"h": h0})


def test_padding_never_changes_real_steps_or_final_state(params, rng):
    lengths = [3, 7, 5]
    x = rng.randint(0, 9, size=(7, 3))  # [T, B], right-padded
    mask = np.arange(7)[:, None] < np.array(lengths)[None, :]
    hs, h_T = elman.hidden(params, x, mask=mask)
    for b, n in enumerate(lengths):
        alone, h_alone = elman.hidden(params, x[:n, b])
        np.testing.assert_allclose(hs[:n, b], alone, rtol=1e-12)
        np.testing.assert_allclose(h_T[b], h_alone, rtol=1e-12)
        assert float(jnp.abs(hs[n:, b]).max(initial=0.0)) == 0.0
    with pytest.raises(ValueError, match="mask must have shape"):
        elman.hidden(params, x, mask=mask[:, :2])
