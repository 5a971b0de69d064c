"""jrnn.checks: integer arguments (the one check behind sizes, counts, steps), PRNG keys, params leaves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrnn import checks


@pytest.mark.parametrize("value", [3, np.int32(3), np.int64(3), np.uint8(3)])
def test_python_and_numpy_integers_come_back_as_python_ints(value):
    out = checks.integer("seq_len", value)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [True, False, np.True_, 3.0, np.float32(3), "3", None, np.array([3])])
def test_bools_floats_strings_and_arrays_are_a_type_error_naming_the_argument(value):
    with pytest.raises(TypeError, match=r"^seq_len must be an integer, got "):
        checks.integer("seq_len", value)


def test_the_minimum_is_a_value_error_naming_the_argument_and_none_means_unbounded():
    with pytest.raises(ValueError, match=r"^seq_len must be >= 1, got 0$"):
        checks.integer("seq_len", 0)
    with pytest.raises(ValueError, match=r"^pad_id must be >= 0, got -1$"):
        checks.integer("pad_id", np.int64(-1), minimum=0)
    assert checks.integer("step", 0, minimum=0) == 0
    assert checks.integer("k1", -5, minimum=None) == -5


def test_prng_key_takes_one_typed_or_legacy_key_and_names_the_argument_otherwise():
    for key in (jax.random.key(0), jax.random.PRNGKey(0)):
        assert checks.prng_key("key", key) is key
    for bad in (0, np.uint32(3), jax.random.split(jax.random.key(0)), np.zeros(2, np.int32), None):
        with pytest.raises(TypeError, match=r"^seed_key must be one PRNG key"):
            checks.prng_key("seed_key", bad)


def test_array_leaves_names_a_none_list_or_foreign_leaf_and_a_mix_of_float_dtypes():
    class Foreign:   # anything with __array__ that is not a jax or numpy array (a torch tensor, say)
        def __array__(self, dtype=None, copy=None):
            return np.zeros(2)

    ok = {"w": np.zeros((2, 3), np.float32), "b": jnp.zeros(3, jnp.float32), "n": np.int32(1)}
    assert [checks.leaf_name("p", path) for path, _ in checks.array_leaves(ok, "p")] == ["p['b']", "p['n']", "p['w']"]
    for tree, match in [({"w": None}, r"^p\['w'\] is None"), ({"w": [1.0]}, r"^p\['w'\]\[0\] must be a jax or numpy array, got float$"),
                        ({"w": Foreign()}, r"^p\['w'\] is a .*Foreign, not a jax or numpy array: convert it first"),
                        ({"a": np.zeros(2, np.float32), "b": jnp.zeros(2, jnp.bfloat16)},
                         r"^p mix float dtypes: p\['a'\] is float32, p\['b'\] is bfloat16; ")]:
        with pytest.raises(TypeError, match=match):
            checks.array_leaves(tree, "p")
