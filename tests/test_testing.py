"""jrnn.testing must fail on NaN/inf anywhere and refuse arguments that make a check vacuous."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jrnn.testing import assert_trees_close, check_gradients, relative_error

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("actual, expected", [
    ([NAN], [1.0]), ([1.0], [NAN]), ([NAN], [NAN]), ([INF], [1.0]), ([1.0], [INF]), ([INF], [INF]),
    ([1.0, NAN], [1.0, 2.0]),
])
def test_nonfinite_values_fail_every_tolerance(actual, expected):
    assert math.isnan(relative_error(jnp.array(actual), jnp.array(expected)))
    with pytest.raises(AssertionError, match="NaN/inf"):
        assert_trees_close(jnp.array(actual), jnp.array(expected), rtol=1e-6)


def test_nan_in_a_later_leaf_is_not_hidden_by_an_earlier_error():
    a = {"a": jnp.array([1.0]), "b": jnp.array([NAN])}
    b = {"a": jnp.array([2.0]), "b": jnp.array([1.0])}
    with pytest.raises(AssertionError, match=r"NaN/inf in actual \[.b.\]$"):
        assert_trees_close(a, b, rtol=10.0)


def test_close_finite_trees_still_pass():
    a, b = {"w": np.array([1.0, 2.0])}, {"w": np.array([1.0, 2.0 + 1e-12])}
    assert assert_trees_close(a, b, rtol=1e-10) <= 1e-12


@pytest.mark.parametrize("rtol, exc", [(-1e-6, ValueError), (NAN, ValueError), (INF, ValueError),
                                       (True, TypeError), ("1e-6", TypeError), (None, TypeError)])
def test_bad_rtol_raises(rtol, exc):
    with pytest.raises(exc, match="rtol"):
        assert_trees_close(jnp.ones(2), jnp.ones(2), rtol=rtol)
    with pytest.raises(exc, match="rtol"):
        check_gradients(lambda p: jnp.sum(p ** 2), jnp.ones(2), rtol=rtol)


def test_check_gradients_fails_on_a_nan_valued_function():
    with pytest.raises(AssertionError, match="NaN/inf"):
        check_gradients(lambda p: jnp.sum(p) * jnp.nan, jnp.ones(3))


def test_check_gradients_fails_on_a_nan_gradient():
    # finite value, NaN gradient: sqrt'(0) is inf, times 0 is NaN
    with pytest.raises(AssertionError, match="NaN/inf"):
        check_gradients(lambda p: jnp.sum(jnp.sqrt(p) * 0.0 + p), jnp.zeros(3))


def test_check_gradients_fails_on_a_wrong_gradient():
    f = lambda p: jnp.sum(p ** 3)
    wrong = lambda p: f(p) + jnp.sum(jnp.sin(p) - jax_stop(jnp.sin(p)))  # value right, gradient off
    assert check_gradients(f, jnp.array([0.3, -1.2, 2.0])) < 1e-6
    with pytest.raises(AssertionError, match="relative error"):
        check_gradients(wrong, jnp.array([0.3, -1.2, 2.0]))


def jax_stop(x):
    import jax
    return jax.lax.stop_gradient(x)


@pytest.mark.parametrize("kw, exc", [
    ({"directions": 0}, ValueError), ({"directions": -3}, ValueError), ({"directions": True}, TypeError),
    ({"directions": 2.0}, TypeError), ({"eps": 0.0}, ValueError), ({"eps": -1e-6}, ValueError),
    ({"eps": NAN}, ValueError), ({"eps": INF}, ValueError), ({"eps": True}, TypeError),
])
def test_check_gradients_refuses_vacuous_arguments(kw, exc):
    with pytest.raises(exc):
        check_gradients(lambda p: jnp.sum(p ** 2), jnp.ones(2), **kw)


def test_check_gradients_accepts_numpy_integer_directions():
    assert check_gradients(lambda p: jnp.sum(p ** 2), jnp.ones(2), directions=np.int64(2)) < 1e-6


@pytest.mark.parametrize("actual, expected", [
    ({"a": jnp.ones(2)}, {"b": jnp.ones(2)}),                                   # other names
    ({"a": None, "b": jnp.ones(2)}, {"a": jnp.ones(2), "b": None}),             # None elsewhere
    ({"w": jnp.ones(2), "b": jnp.zeros(2)}, {"w_": jnp.ones(2), "b": jnp.zeros(2)}),
])
def test_trees_with_other_leaves_are_refused_not_paired_by_position(actual, expected):
    # relative_error returned 0.0 for each: the leaves were zipped in flattening order
    with pytest.raises(ValueError, match="other leaves"):
        relative_error(actual, expected)
    with pytest.raises(ValueError, match="other leaves"):
        assert_trees_close(actual, expected, rtol=1e-6)


def test_a_tuple_and_a_list_of_the_same_leaves_still_compare():
    assert relative_error((jnp.ones(2), jnp.zeros(1)), [jnp.ones(2), jnp.zeros(1)]) == 0.0


def test_complex_leaves_compare_their_imaginary_parts():
    # a cast to float64 dropped them: 1+1j against 1+0j gave 0.0
    assert relative_error(jnp.array([1 + 1j]), jnp.array([1 + 0j])) == pytest.approx(1.0)
    with pytest.raises(AssertionError, match="relative error"):
        assert_trees_close(jnp.array([1 + 1j]), jnp.array([1 + 0j]), rtol=1e-6)


@pytest.mark.parametrize("params", [{}, jnp.ones(0), {"w": jnp.ones((0, 3))}])
def test_check_gradients_refuses_params_with_nothing_to_check(params):
    # returned 0.0: a check that compared nothing passed
    with pytest.raises(ValueError, match="no values"):
        check_gradients(lambda p: sum(jnp.sum(x) for x in __import__("jax").tree.leaves(p)) + 1.0, params)


def test_a_namedtuple_compares_with_a_tuple_but_not_with_a_dict_that_flattens_in_another_order():
    from jrnn import cells
    p = cells.GRUParams(jnp.ones(2), jnp.zeros(2), jnp.ones(2), jnp.ones(2))
    assert relative_error(p, tuple(p)) == 0.0 == relative_error(p, list(p))
    # a dict flattens by sorted key (b_h, b_i, w_h, w_i), the NamedTuple by field (w_i, w_h, ...):
    # zipped, w_i met b_h and the error was 0.0 though p.w_h != 1
    with pytest.raises(ValueError, match="other leaves"):
        relative_error(p, dict(zip(p._fields, p)))
    assert relative_error(p, cells.GRUParams(**dict(zip(p._fields, p)))) == 0.0
