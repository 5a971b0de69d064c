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


MODEL = elman.model(vocab_size=11, hidden_size=8)   # the seeds' Elman LM as a jrnn.Model


def test_same_key_same_sample_other_key_other_sample(params):
    a, _ = jrnn.generate(MODEL, params, jax.random.key(1), [1, 2], 50)
    b, _ = jrnn.generate(MODEL, params, jax.random.key(1), [1, 2], 50)
    c, _ = jrnn.generate(MODEL, params, jax.random.key(2), [1, 2], 50)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (50,) and int(a.min()) >= 0 and int(a.max()) < 11


def test_low_temperature_is_greedy_decoding(params):
    toks, _ = jrnn.generate(MODEL, params, jax.random.key(3), [4], 20, temperature=1e-4)
    h, x = jnp.zeros(8), 4
    for t in range(20):
        _, h = elman.apply(params, np.array([x]), h)
        x = int(jnp.argmax(elman.readout(params, h)))
        assert int(toks[t]) == x


def test_sample_continues_from_the_prime_state(params):
    _, h_prime = elman.apply(params, np.array([1, 2, 3]))
    a, _ = jrnn.generate(MODEL, params, jax.random.key(5), [1, 2, 3], 10)
    b, _ = jrnn.generate(MODEL, params, jax.random.key(5), [3], 10, carry=(elman.hidden(params, np.array([1, 2]))[1],))
    assert np.array_equal(a, b)
    assert h_prime.shape == (8,)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_raises(params, temperature):
    with pytest.raises(ValueError, match="temperature"):
        jrnn.generate(MODEL, params, jax.random.key(0), [1], 5, temperature=temperature)


@pytest.mark.parametrize("prime,n,match", [([], 5, "non-empty"), ([11], 5, "token ids"), ([1], 0, "n must be >= 1")])
def test_bad_prime_or_length_raises(params, prime, n, match):
    with pytest.raises(ValueError, match=match):
        jrnn.generate(MODEL, params, jax.random.key(0), np.array(prime, np.int32), n)


@pytest.mark.parametrize("cell", [pytest.param("lstm", marks=pytest.mark.slow),
                                  pytest.param("gru", marks=pytest.mark.slow), "elman"])
def test_one_generate_for_every_cell_is_deterministic_valid_and_follows_the_model(cell):
    model = jrnn.lm.model(cell, vocab_size=9, hidden_size=8, layers=2)
    params = model.init(jax.random.key(0))
    a, _ = jrnn.generate(model, params, jax.random.key(1), [1, 2], 30)
    b, _ = jrnn.generate(model, params, jax.random.key(1), [1, 2], 30)
    assert np.array_equal(a, b) and a.shape == (30,) and int(a.min()) >= 0 and int(a.max()) < 9
    greedy, _ = jrnn.generate(model, params, jax.random.key(2), [3], 5, temperature=1e-4)
    seq = [3]
    for _ in range(5):
        logits, _ = model.apply(params, np.array(seq))
        seq.append(int(jnp.argmax(logits[-1])))
    assert list(np.asarray(greedy)) == seq[1:]
    with pytest.raises(ValueError, match="token ids"):
        jrnn.generate(model, params, jax.random.key(0), [9], 5)


def _greedy(model, params, prime, n):
    seq = list(prime)
    for _ in range(n):
        logits, _ = model.apply(params, np.array(seq))
        seq.append(int(jnp.argmax(logits[-1])))
    return seq[len(prime):]


@pytest.mark.parametrize("temperature", [pytest.param(1e-40, marks=pytest.mark.slow), pytest.param(1e-300, marks=pytest.mark.slow),
                                         pytest.param(5e-324, marks=pytest.mark.slow)])
def test_temperature_that_overflows_the_logits_is_greedy_decoding(temperature):
    # logits / 1e-40 overflow float32 (and 1e-300, 5e-324 round to 0 in float32): the old code
    # sampled from inf/NaN logits; now that limit is the argmax, exactly
    model = jrnn.lm.model("gru", vocab_size=9, hidden_size=8)
    params = model.init(jax.random.key(0), jnp.float32)
    toks, _ = jrnn.generate(model, params, jax.random.key(4), [2], 12, temperature=temperature)
    assert list(np.asarray(toks)) == _greedy(model, params, [2], 12)


@pytest.mark.parametrize("temperature", [np.float32(0.8), np.float64(1.5), np.int64(2)])
def test_numpy_scalar_temperature_is_accepted_and_equals_the_python_number(params, temperature):
    a, _ = jrnn.generate(MODEL, params, jax.random.key(6), [1], 20, temperature=temperature)
    b, _ = jrnn.generate(MODEL, params, jax.random.key(6), [1], 20, temperature=float(temperature))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("temperature", [True, "1.0", None])
def test_non_number_temperature_is_a_type_error(params, temperature):
    with pytest.raises(TypeError, match="temperature"):
        jrnn.generate(MODEL, params, jax.random.key(0), [1], 5, temperature=temperature)


def test_params_of_another_cell_name_both_cells():
    lstm = jrnn.lm.model("lstm", vocab_size=9, hidden_size=8)
    gru_params = jrnn.lm.model("gru", vocab_size=9, hidden_size=8).init(jax.random.key(0))
    with pytest.raises(TypeError, match="GRUParams.*'lstm'.*LSTMParams"):
        jrnn.generate(lstm, gru_params, jax.random.key(0), [1], 5)
    with pytest.raises(TypeError, match="GRUParams.*'lstm'.*LSTMParams"):
        lstm.apply(gru_params, np.array([1, 2]))


def test_carry_given_as_a_list_is_converted(params):
    h = elman.hidden(params, np.array([1, 2]))[1]
    a, _ = jrnn.generate(MODEL, params, jax.random.key(5), [3], 10, carry=(h,))
    b, _ = jrnn.generate(MODEL, params, jax.random.key(5), [3], 10, carry=[[float(v) for v in h]])
    assert np.array_equal(a, b)
    with pytest.raises(TypeError, match="carry"):
        jrnn.generate(MODEL, params, jax.random.key(5), [3], 10, carry={"h": h})


@pytest.mark.parametrize("temperature", [np.array(0.7), jnp.asarray(0.7), jnp.asarray(0.7, jnp.float32), np.array(2)])
def test_a_concrete_0d_array_temperature_equals_the_python_number(params, temperature):
    # before: "temperature must be a number, got ArrayImpl" (or ndarray) for a scalar array
    a, _ = jrnn.generate(MODEL, params, jax.random.key(6), [1], 20, temperature=temperature)
    b, _ = jrnn.generate(MODEL, params, jax.random.key(6), [1], 20, temperature=float(temperature))
    assert np.array_equal(a, b)


def test_a_temperature_array_of_another_shape_or_traced_is_a_type_error_naming_it(params):
    with pytest.raises(TypeError, match=r"^temperature must be a real number, got ArrayImpl Array\(\[0\.7\], dtype=float\d+\)$"):
        jrnn.generate(MODEL, params, jax.random.key(0), [1], 5, temperature=jnp.asarray([0.7]))
    with pytest.raises(TypeError, match=r"^temperature must be a real number, got ndarray array\(True\)$"):
        jrnn.generate(MODEL, params, jax.random.key(0), [1], 5, temperature=np.array(True))
    with pytest.raises(TypeError, match=r"^temperature must be a concrete number, got a traced value"):
        jax.jit(lambda t: jrnn.generate(MODEL, params, jax.random.key(0), [1], 5, temperature=t)[0])(0.7)
    with pytest.raises(ValueError, match=r"^temperature must be finite and > 0, got -1\.0$"):
        jrnn.generate(MODEL, params, jax.random.key(0), [1], 5, temperature=jnp.asarray(-1.0))


@pytest.mark.parametrize("key", [0, np.uint32(3), jax.random.split(jax.random.key(0)), jax.random.PRNGKey(0)[None]])
def test_a_key_that_is_not_one_prng_key_is_a_type_error_naming_it(params, key):
    # before: JAX's "invalid PRNG key data" or "split accepts a single key" from inside the jit
    with pytest.raises(TypeError, match=r"^key must be one PRNG key \(jax\.random\.key\(seed\)"):
        jrnn.generate(MODEL, params, key, [1], 5)


@pytest.mark.parametrize("prime,match", [([-1], "token ids must lie in"), ([1.0], "non-empty 1-D array of token ids"),
                                         ([[1, 2]], "non-empty 1-D array"), (np.int64(2), "non-empty 1-D array"),
                                         (np.array([2 ** 32 + 1], np.int64), "token ids must lie in")])
def test_odd_primes_are_value_errors_naming_the_prime_or_its_ids(params, prime, match):
    with pytest.raises(ValueError, match=match):
        jrnn.generate(MODEL, params, jax.random.key(0), prime, 5)


def test_a_vocabulary_of_one_samples_its_only_token():
    model = jrnn.lm.model("gru", vocab_size=1, hidden_size=1)
    toks, _ = jrnn.generate(model, model.init(jax.random.key(0)), jax.random.key(1), [0], 4)
    assert list(np.asarray(toks)) == [0, 0, 0, 0]
