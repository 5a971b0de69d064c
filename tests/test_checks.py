"""jrnn.checks.integer: the one check behind every integer argument (sizes, counts, steps)."""

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
