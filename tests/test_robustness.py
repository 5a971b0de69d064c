"""Fuzzing, recompilation, ragged batches and long-sequence memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jrnn
from jrnn import data, elman, optim
from jrnn.testing import assert_trees_close

FUZZ = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(T=st.integers(1, 12), B=st.integers(1, 4), D=st.integers(1, 9), H=st.integers(1, 12),
       V=st.integers(2, 9), dense=st.booleans(), activation=st.sampled_from(["tanh", "relu", "sigmoid"]),
       dtype=st.sampled_from([jnp.float32, jnp.float64]), seed=st.integers(0, 2**16))
@pytest.mark.slow
def test_forward_loss_and_grad_are_finite_for_finite_inputs(T, B, D, H, V, dense, activation, dtype, seed):
    rng = np.random.RandomState(seed)
    params = elman.init(jax.random.key(seed), input_size=D, hidden_size=H, output_size=V, dtype=dtype)
    x = rng.randn(T, B, D).astype(dtype) if dense else rng.randint(0, D, (T, B))
    y = rng.randint(0, V, (T, B))
    loss_fn = lambda p: elman.sequence_loss(p, x, y, activation=activation)[0]
    loss, g = jax.value_and_grad(loss_fn)(params)
    assert np.isfinite(float(loss)) and all(bool(jnp.all(jnp.isfinite(a))) for a in g)
    assert all(a.dtype == dtype for a in g)
    logits, h = elman.apply(params, x, activation=activation)
    assert logits.shape == (T, B, V) and h.shape == (B, H)


@FUZZ
@given(V=st.integers(2, 30), H=st.integers(1, 16), n=st.integers(1, 40), P=st.integers(1, 5),
       temperature=st.floats(1e-3, 100.0), scale=st.floats(0.0, 50.0), seed=st.integers(0, 2**16))
@pytest.mark.slow
def test_sampling_always_returns_valid_ids(V, H, n, P, temperature, scale, seed):
    params = elman.init(jax.random.key(seed), vocab_size=V, hidden_size=H, scheme="normal", scale=scale)
    prime = np.random.RandomState(seed).randint(0, V, P)
    toks, (h,) = jrnn.generate(elman.model_of(params), params, jax.random.key(seed), prime, n, temperature=temperature)
    toks = np.asarray(toks)
    assert toks.shape == (n,) and toks.min() >= 0 and toks.max() < V and bool(jnp.all(jnp.isfinite(h)))


@FUZZ
@given(T=st.integers(1, 10), V=st.integers(1, 6), bad=st.integers(-50, 50), seed=st.integers(0, 99))
def test_only_documented_errors_for_bad_token_ids(T, V, bad, seed):
    params = elman.init(jax.random.key(seed), vocab_size=V, hidden_size=3)
    x = np.random.RandomState(seed).randint(0, V, T)
    x[0] = bad
    if 0 <= bad < V:
        elman.apply(params, x)
    else:
        with pytest.raises(ValueError, match="token ids must lie in"):
            elman.apply(params, x)


def test_one_compiled_step_serves_batches_of_any_real_length(backend_compiles):
    params = elman.init(jax.random.key(0), vocab_size=6, hidden_size=5)
    opt = optim.adam(1e-2)

    def loss_fn(p, batch, carry):
        x, y, mask = batch  # [T, B]
        return elman.sequence_loss(p, x, y, mask=mask)[0], carry

    step = jrnn.make_step(loss_fn, opt)
    state = opt.init(params)
    rng = np.random.RandomState(0)
    for i, real in enumerate([3, 17, 9, 30, 1, 25]):
        seqs = [rng.randint(0, 6, rng.randint(1, real + 1)) for _ in range(4)]
        ids, mask = data.pad(seqs, length=data.bucket_length(32))
        params, state, m, _ = step(params, state, (ids[:-1], ids[1:], mask[1:]), None)
        assert np.isfinite(float(m["loss"]))
        if i == 0:
            assert backend_compiles, "the first call compiles"
            backend_compiles.clear()
    assert backend_compiles == [], f"{len(backend_compiles)} recompilation(s) for other real lengths"


def test_padded_batch_equals_each_sequence_alone():
    params = elman.init(jax.random.key(1), vocab_size=7, hidden_size=6, dtype=jnp.float64)
    seqs = [np.array([1, 2, 3]), np.array([4, 5, 6, 0, 1, 2]), np.array([3])]
    ids, mask = data.pad(seqs, bucket=4, time_major=False)
    assert ids.shape == (3, 8)
    logits, h = elman.apply(params, ids, mask=mask, time_major=False)
    for b, s in enumerate(seqs):
        one, h1 = elman.apply(params, s)
        np.testing.assert_allclose(logits[b, :len(s)], one, rtol=1e-12)
        np.testing.assert_allclose(h[b], h1, rtol=1e-12)


def test_ragged_batch_without_mask_is_a_clear_error():
    params = elman.init(jax.random.key(0), vocab_size=5, hidden_size=3)
    with pytest.raises(ValueError, match="different lengths.*jrnn.data.pad"):
        elman.apply(params, [[1, 2, 3], [1, 2]], time_major=False)
    with pytest.raises(ValueError, match="different lengths.*jrnn.data.pad"):
        elman.apply(params, [[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match="shorter than the longest"):
        data.pad([[1, 2, 3]], length=2)


@pytest.mark.slow
def test_remat_loss_equals_plain_loss_and_gradient():
    params = elman.init(jax.random.key(2), vocab_size=9, hidden_size=7, dtype=jnp.float64)
    rng = np.random.RandomState(3)
    x, y = rng.randint(0, 9, (37, 2)), rng.randint(0, 9, (37, 2))
    mask = np.arange(37)[:, None] < np.array([37, 20])[None]
    f = lambda p, r: elman.sequence_loss(p, x, y, mask=mask, grad=jrnn.Remat() if r else None)[0]
    np.testing.assert_allclose(f(params, True), f(params, False), rtol=1e-13)
    assert_trees_close(jax.grad(f)(params, True), jax.grad(f)(params, False), rtol=1e-12)
    rev = lambda p, r: jnp.sum(elman.hidden(p, x, reverse=True, grad=jrnn.Remat() if r else None)[0] ** 2)
    assert_trees_close(jax.grad(rev)(params, True), jax.grad(rev)(params, False), rtol=1e-12)


@pytest.mark.slow
def test_remat_memory_grows_sublinearly():
    """Compiled temp memory of loss + grad, T=4000, B=8, H=256, V=65 (the issue's config)."""
    params = elman.init(jax.random.key(0), vocab_size=65, hidden_size=256)

    def temp_bytes(T, remat):
        x = jnp.zeros((T, 8), jnp.int32)
        grad = jax.jit(jax.grad(lambda p: elman.sequence_loss(p, x, x, grad=jrnn.Remat() if remat else None)[0]))
        return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

    plain, remat = temp_bytes(4000, False), temp_bytes(4000, True)
    assert remat * 10 < plain
    assert temp_bytes(16000, True) < 2.5 * remat  # 4x longer, far less than 4x the memory
