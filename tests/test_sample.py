"""Sampling: deterministic per key, valid ids, temperature semantics, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import elman


@pytest.fixture
def params():
    return elman.init(jax.random.key(0), vocab_size=11, hidden_size=8, scheme="normal", scale=0.5)


def test_same_key_same_sample_other_key_other_sample(params):
    a, _ = jrnn.generate(params, jax.random.key(1), [1, 2], 50)
    b, _ = jrnn.generate(params, jax.random.key(1), [1, 2], 50)
    c, _ = jrnn.generate(params, jax.random.key(2), [1, 2], 50)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (50,) and int(a.min()) >= 0 and int(a.max()) < 11


def test_low_temperature_is_greedy_decoding(params):
    toks, _ = jrnn.generate(params, jax.random.key(3), [4], 20, temperature=1e-4)
    h, x = jnp.zeros(8), 4
    for t in range(20):
        _, h = elman.apply(params, np.array([x]), h)
        x = int(jnp.argmax(elman.readout(params, h)))
        assert int(toks[t]) == x


def test_sample_continues_from_the_prime_state(params):
    _, h_prime = elman.apply(params, np.array([1, 2, 3]))
    a, _ = jrnn.generate(params, jax.random.key(5), [1, 2, 3], 10)
    b, _ = jrnn.generate(params, jax.random.key(5), [3], 10, h0=elman.hidden(params, np.array([1, 2]))[1])
    assert np.array_equal(a, b)
    assert h_prime.shape == (8,)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_raises(params, temperature):
    with pytest.raises(ValueError, match="temperature"):
        jrnn.generate(params, jax.random.key(0), [1], 5, temperature=temperature)


@pytest.mark.parametrize("prime,n,match", [([], 5, "non-empty"), ([11], 5, "token ids"), ([1], 0, "positive")])
def test_bad_prime_or_length_raises(params, prime, n, match):
    with pytest.raises(ValueError, match=match):
        jrnn.generate(params, jax.random.key(0), np.array(prime, np.int32), n)


@pytest.mark.parametrize("cell", ["lstm", "gru", "elman"])
def test_generate_lm_is_deterministic_valid_and_follows_the_model(cell):
    params = jrnn.lm.init(jax.random.key(0), cell=cell, vocab_size=9, hidden_size=8, layers=2)
    a, _ = jrnn.sample.generate_lm(params, jax.random.key(1), [1, 2], 30, cell=cell)
    b, _ = jrnn.sample.generate_lm(params, jax.random.key(1), [1, 2], 30, cell=cell)
    assert np.array_equal(a, b) and a.shape == (30,) and int(a.min()) >= 0 and int(a.max()) < 9
    greedy, _ = jrnn.sample.generate_lm(params, jax.random.key(2), [3], 5, cell=cell, temperature=1e-4)
    seq = [3]
    for _ in range(5):
        logits, _ = jrnn.lm.apply(params, np.array(seq), cell=cell)
        seq.append(int(jnp.argmax(logits[-1])))
    assert list(np.asarray(greedy)) == seq[1:]
    with pytest.raises(ValueError, match="token ids"):
        jrnn.sample.generate_lm(params, jax.random.key(0), [9], 5, cell=cell)
