"""Initialisers and cell inits refuse what they cannot build (sizes, dtypes, scales) with an
error naming the argument, and build every float dtype, half precision included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrnn import cells, elman, initializers, lm

KEY = jax.random.key(0)


@pytest.mark.parametrize("dtype", [jnp.float16, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])
def test_every_cell_and_scheme_inits_in_half_precision(dtype):
    """The orthogonal recurrent init's QR has no float16/bfloat16 kernel (a NotImplementedError
    from jaxlib's LAPACK): it is drawn in float32 and rounded."""
    for name, cell in cells.CELLS.items():
        p = cell.init(KEY, 3, 4, dtype)
        assert {a.dtype for a in jax.tree.leaves(p)} == {jnp.dtype(dtype)}, name
        if cell.jacobian is not None:   # elementwise recurrence: no recurrent matrix to be orthogonal
            continue
        w_h = np.asarray(jax.tree.leaves(p)[1][:, :4] if name != "elman" else p.w_hh, np.float32)
        np.testing.assert_allclose(w_h.T @ w_h, np.eye(4), atol=0.05)          # orthogonal, rounded
    for scheme in initializers.SCHEMES:
        p = elman.init(KEY, vocab_size=5, hidden_size=4, scheme=scheme, dtype=dtype)
        assert {a.dtype for a in jax.tree.leaves(p)} == {jnp.dtype(dtype)}, scheme
    assert lm.model("lstm", vocab_size=5, hidden_size=4).init(KEY, dtype).w_hy.dtype == dtype


def test_float32_and_float64_draws_are_unchanged_by_the_half_precision_path():
    for dtype in (jnp.float32, jnp.float64):
        np.testing.assert_array_equal(initializers.orthogonal(KEY, (4, 4), dtype),
                                      jax.nn.initializers.orthogonal()(KEY, (4, 4), dtype))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_gated_cell_inits_refuse_bad_sizes_by_name(name):
    """Sizes 0 raised ZeroDivisionError (Glorot's fan), negatives an MLIR error, and True
    built a 1-input cell."""
    init = cells.get(name).init
    for D, H, error, match in ((0, 4, ValueError, "input_size must be >= 1"), (3, 0, ValueError, "hidden_size must be >= 1"),
                               (-1, 4, ValueError, "input_size"), (3, -2, ValueError, "hidden_size"),
                               (True, 4, TypeError, "input_size must be an integer"),
                               (3, True, TypeError, "hidden_size must be an integer"), (3.0, 4, TypeError, "input_size"),
                               ("3", 4, TypeError, "input_size")):
        with pytest.raises(error, match=match):
            init(KEY, D, H)
    p = init(KEY, np.int64(3), np.int32(4))
    assert p.w_i.shape[0] == 3 and p.w_h.shape[0] == 4


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64, "not a dtype"])
def test_inits_refuse_non_float_dtypes_by_name(dtype):
    for build in (lambda: cells.LSTM.init(KEY, 3, 4, dtype), lambda: cells.ELMAN.init(KEY, 3, 4, dtype),
                  lambda: lm.model("gru", vocab_size=5, hidden_size=4).init(KEY, dtype),
                  lambda: initializers.uniform01(KEY, (2,), dtype=dtype)):
        with pytest.raises(TypeError, match="dtype must be a float dtype"):
            build()


def test_initializers_refuse_scales_fans_shapes_and_schemes_that_gave_nan_or_silently_nothing():
    """fan_in 0 or -4 gave NaN weights, scale NaN/inf NaN/inf weights, a negative scale a
    flipped U(scale, -scale), True a scale of 1; bias() of an unknown scheme returned zeros."""
    with pytest.raises(ValueError, match="fan_in must be >= 1"):
        initializers.uniform_fan_in(KEY, (2,), fan_in=0)
    with pytest.raises(TypeError, match="fan_in must be an integer"):
        initializers.uniform_fan_in(KEY, (2,), fan_in=True)
    for f in (initializers.normal, initializers.uniform):
        for bad in (float("nan"), float("inf"), -1.0):
            with pytest.raises(ValueError, match="scale must be finite and >= 0"):
                f(KEY, (2,), scale=bad)
        assert not np.any(np.asarray(f(KEY, (2,), scale=0.0)))   # scale 0: all-zero weights, allowed
        with pytest.raises(TypeError, match="scale must be a real number"):
            f(KEY, (2,), scale=True)
    with pytest.raises(ValueError, match="shape entries must be >= 0"):
        initializers.uniform01(KEY, (-1, 3))
    with pytest.raises(ValueError, match="unknown init scheme"):
        initializers.bias("bogus", KEY, (3,), dtype=jnp.float32)
    with pytest.raises(ValueError, match="scale must be finite"):
        elman.init(KEY, vocab_size=5, hidden_size=4, scheme="normal", scale=float("nan"))
    assert initializers.normal(KEY, np.int64(3), scale=np.float32(0.5)).shape == (3,)
    assert initializers.uniform(KEY, (0, 3), scale=1).shape == (0, 3)
