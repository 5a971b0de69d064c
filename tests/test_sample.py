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
