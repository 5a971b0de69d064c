"""Parallel-in-time DEER / quasi-DEER: same states and exact gradients as the sequential scan."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import bptt, cells, elman, losses, parallel
from jrnn.testing import assert_trees_close


def G(method):
    """0.1's method= name as the strategy value it stands for."""
    return None if method in ("sequential", "auto") else jrnn.Parallel(method)


def problem(T=400, B=2, H=8, V=11, scale=None, seed=0):
    params = elman.init(jax.random.key(seed), vocab_size=V, hidden_size=H, dtype=jnp.float64)
    if scale is not None:
        params = params._replace(w_hh=params.w_hh * scale)
    rng = np.random.RandomState(seed)
    return params, rng.randint(0, V, (T, B)), rng.randint(0, V, (T, B))


def test_deer_states_equal_the_sequential_scan():
    params, x, _ = problem()
    us, h0 = elman.project(params, x), jnp.asarray(np.random.RandomState(1).randn(2, 8) * 0.3)
    hs, info = parallel.evaluate(elman.step, params, us, h0, method="deer")
    seq, _ = elman.hidden(params, x, h0)
    assert not bool(info.fell_back) and int(info.iterations) < 20
    np.testing.assert_allclose(hs, seq, atol=1e-9)


@pytest.mark.parametrize("method,scale", [("deer", None), ("quasi_deer", 0.3)])
@pytest.mark.slow
def test_gradients_equal_sequential_and_the_bptt_reference(method, scale):
    params, x, y = problem(T=300, B=1, scale=scale)
    x, y = x[:, 0], y[:, 0]
    h0 = jnp.asarray(np.random.RandomState(2).randn(8) * 0.3)

    def loss(p, h0, m):
        hs, _ = elman.hidden(p, x, h0, grad=G(m))
        return losses.softmax_cross_entropy(elman.readout(p, hs), y, reduction="sum")

    (g, gh), (gs, ghs) = jax.grad(loss, argnums=(0, 1))(params, h0, method), jax.grad(loss, argnums=(0, 1))(params, h0, "sequential")
    assert_trees_close(g, gs, rtol=1e-8)
    assert_trees_close(gh, ghs, rtol=1e-8)
    _, ref, ref_dh0 = bptt.many_to_many(params, x, y, h0)
    assert_trees_close(g, elman.ElmanParams(**ref), rtol=1e-8)
    assert_trees_close(gh, ref_dh0, rtol=1e-8)
    _, info = parallel.evaluate(elman.step, params, elman.project(params, x), h0, method=method)
    assert not bool(info.fell_back)


def test_no_convergence_falls_back_to_the_exact_scan_and_says_so():
    params, x, _ = problem(T=200)
    us, h0 = elman.project(params, x), jnp.zeros((2, 8))
    hs, info = parallel.evaluate(elman.step, params, us, h0, method="quasi_deer", max_iters=2)
    assert bool(info.fell_back) and float(info.residual) > 1e-10
    np.testing.assert_array_equal(hs, elman.hidden(params, x)[0])


@pytest.mark.slow
def test_deer_works_for_a_gru_and_reverse():
    p = cells.GRU.init(jax.random.key(3), 5, 6, jnp.float64)
    xs = np.random.RandomState(4).randn(120, 3, 5)
    us, h0 = cells.GRU.project(p, xs), jnp.zeros((3, 6))
    hs, info = parallel.evaluate(cells.GRU.step, p, us, h0, method="deer")
    np.testing.assert_allclose(hs, jrnn.rnn.run(cells.GRU, p, xs)[0], atol=1e-9)
    params, x, _ = problem(T=64)
    np.testing.assert_allclose(elman.hidden(params, x, reverse=True, grad=G("deer"))[0],
                               elman.hidden(params, x, reverse=True)[0], atol=1e-9)


def test_bad_parallel_arguments_raise_when_the_strategy_is_built():
    params, x, _ = problem(T=5)
    with pytest.raises(ValueError, match="unknown method"):
        jrnn.Parallel("newton")
    with pytest.raises(ValueError, match="unknown method"):
        jrnn.Parallel("sequential")      # the sequential scan is FullBPTT(), not a parallel method
    for bad, error in ((0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="max_iters"):
            jrnn.Parallel(max_iters=bad)
    for bad in (0.0, -1e-3, float("nan"), float("inf"), 1.0):
        with pytest.raises(ValueError, match="tol"):
            jrnn.Parallel(tol=bad)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="lam"):
            jrnn.Parallel("elk", lam=bad)
    with pytest.raises(TypeError, match="TBPTT truncates a loss"):
        elman.hidden(params, x, grad=jrnn.TBPTT(2, 3))
    with pytest.raises(TypeError, match="an instance"):
        elman.hidden(params, x, grad=jrnn.Parallel)


def test_bad_deprecated_method_arguments_still_raise():
    params, x, _ = problem(T=5)
    with pytest.raises(ValueError, match="unknown method"):
        elman.hidden(params, x, method="newton")
    with pytest.raises(ValueError, match="unknown method"):
        jrnn.rnn.run(cells.GRU, cells.GRU.init(jax.random.key(0), 3, 4), np.ones((5, 2, 3)), method="sequental")
    with pytest.raises(ValueError, match="remat"):
        elman.hidden(params, x, remat=True, method="elk")
    with pytest.raises(TypeError, match="not both"):
        elman.hidden(params, x, grad=jrnn.Parallel(), method="elk")
    us, h0 = elman.project(params, x), jnp.zeros((2, 8))
    for bad, error in ((0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="max_iters"):
            parallel.evaluate(elman.step, params, us, h0, max_iters=bad)
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tol"):
            parallel.evaluate(elman.step, params, us, h0, tol=bad)
    with pytest.raises(ValueError, match="unknown method"):
        parallel.evaluate(elman.step, params, us, h0, method="sequential")


@pytest.mark.parametrize("method", ["sequential", "auto", "deer", "elk"])
def test_deprecated_method_keyword_warns_and_gives_the_strategy_values_numbers(method):
    params, x, _ = problem(T=6)
    want = elman.hidden(params, x, grad=G(method))[0]
    with pytest.warns(DeprecationWarning, match="method= is deprecated"):
        got = elman.hidden(params, x, method=method)[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_trained_charlm_gives_the_same_validation_loss_with_deer(data_dir, tmp_path):
    from experiments import charlm
    text = jrnn.data.load_text("tinyshakespeare")[:20001]
    vocab = jrnn.data.build_vocab(jrnn.data.load_text("tinyshakespeare"))
    ids = vocab.encode(text)
    xs, ys = jrnn.data.chunks(ids[:10001], 25)
    params = elman.init(jax.random.key(0), vocab_size=vocab.size, hidden_size=64, scheme="uniform_fan_in")
    opt = jrnn.optim.sgd(1e-3)
    params, _, _, _ = charlm.SEED_EPOCH(params, opt.init(params), (xs, ys))   # trained sequentially
    val_x, val_y = jrnn.data.streams(ids[10000:], 16, 250)                     # [N, T, B]
    val_x, val_y = val_x[0], val_y[0]                                             # 16 streams of 250

    def val_loss(method):
        hs, _ = elman.hidden(params, val_x, grad=G(method))
        return float(losses.softmax_cross_entropy(elman.readout(params, hs), val_y))

    _, info = parallel.evaluate(elman.step, params, elman.project(params, val_x), jnp.zeros((16, 64), jnp.float32))
    assert not bool(info.fell_back)
    seq, deer = val_loss("sequential"), val_loss("deer")
    assert abs(seq - deer) <= 1e-5 and seq < np.log(vocab.size)


@pytest.mark.parametrize("method", ["deer", "quasi_deer"])
@pytest.mark.slow
def test_lstm_tuple_carry_states_and_gradients_equal_the_sequential_scan(method):
    """The LSTM's (h, c) carry is solved as one [.., 2H] state; outputs, final carry and the
    gradients (params, inputs, initial carry) equal the sequential scan's."""
    p = cells.LSTM.init(jax.random.key(5), 4, 6, jnp.float64)
    rng = np.random.RandomState(6)
    xs = jnp.asarray(rng.randn(150, 2, 4))
    c0 = cells.LSTMState(jnp.asarray(0.3 * rng.randn(2, 6)), jnp.asarray(0.3 * rng.randn(2, 6)))
    w = jnp.asarray(rng.randn(150, 2, 6))
    solve = lambda p, xs, c0: parallel.solve(cells.LSTM.step, p, cells.LSTM.project(p, xs), c0, method=method,
                                             max_iters=200)
    hs, final, info = solve(p, xs, c0)
    seq, seq_final = jrnn.rnn.run(cells.LSTM, p, xs, c0)
    assert not bool(info.fell_back)
    np.testing.assert_allclose(hs, seq, atol=1e-9)
    assert_trees_close(final, seq_final, rtol=1e-8)

    def loss(p, xs, c0, par):
        hs, (h, c) = (solve(p, xs, c0)[:2] if par
                      else jrnn.rnn.run(cells.LSTM, p, xs, c0))
        return jnp.sum(jnp.sin(hs) * w) + jnp.sum(c ** 2)

    g = jax.grad(loss, argnums=(0, 1, 2))(p, xs, c0, True)
    ref = jax.grad(loss, argnums=(0, 1, 2))(p, xs, c0, False)
    assert_trees_close(g, ref, rtol=1e-8)


def test_carries_with_different_leading_shapes_are_refused():
    p = cells.LSTM.init(jax.random.key(0), 3, 4, jnp.float64)
    # rnn.run checks the carry against the cell's zeros before dispatching (jrnn.parallel's own
    # "leading shape" check stays for direct callers of parallel.solve)
    with pytest.raises(ValueError, match=r"carry of the lstm cell must have shape \(2, 4\)"):
        jrnn.rnn.run(cells.LSTM, p, np.ones((5, 2, 3)), cells.LSTMState(jnp.zeros((2, 4)), jnp.zeros((3, 4))),
                     grad=jrnn.Parallel("deer"))


def _dot_precisions(fn, *args):
    """The precision attribute of every dot product in fn's lowered (StableHLO) program."""
    text = jax.jit(fn).lower(*args).as_text()
    dots = [line for line in text.splitlines() if "stablehlo.dot" in line]
    return [line.split("precision = ")[1].split("]")[0] + "]" if "precision = " in line else "none"
            for line in dots]


@pytest.mark.parametrize("outer", ["tensorfloat32", "bfloat16"])
@pytest.mark.parametrize("method", ["deer", "quasi_deer", "elk", "quasi_elk"])
def test_every_dot_of_the_parallel_solve_lowers_at_full_precision(outer, method):
    """On GPUs JAX's default float32 matmul is TF32, too coarse for the Newton solve: whatever
    the caller's precision, every dot product of the solve, the cell's own and the backward
    pass's included, lowers with HIGHEST."""
    p = cells.GRU.init(jax.random.key(0), 3, 4, jnp.float32)
    us = cells.GRU.project(p, jnp.ones((16, 2, 3), jnp.float32))
    h0 = jnp.zeros((2, 4), jnp.float32)
    w = jnp.linspace(0.0, 1.0, 16 * 2 * 4, dtype=jnp.float32).reshape(16, 2, 4)
    forward = lambda p, us, h0: parallel.evaluate(cells.GRU.step, p, us, h0, method=method)[0]
    loss = lambda p, us, h0: jnp.sum(forward(p, us, h0) * w)   # elementwise: no dot of its own
    with jax.default_matmul_precision(outer):
        fwd = _dot_precisions(forward, p, us, h0)
        bwd = _dot_precisions(jax.grad(loss, argnums=(0, 1, 2)), p, us, h0)
        plain = _dot_precisions(lambda p, h: cells.GRU.step(p, h, us[0])[0], p, h0)
    assert plain and set(plain) != {"[HIGHEST, HIGHEST]"}      # the context does change other dots
    assert len(fwd) >= 3 and len(bwd) >= 5
    assert set(fwd) == set(bwd) == {"[HIGHEST, HIGHEST]"}, (set(fwd), set(bwd))


@pytest.mark.parametrize("method,reverse", [("deer", False), ("quasi_elk", True)])
@pytest.mark.slow
def test_masked_parallel_methods_equal_the_masked_sequential_scan(method, reverse):
    """A frozen carry across padding is just another step function: rnn.run(method=...) with a
    mask gives the masked scan's states, final carries and gradients, length-aware reverse too."""
    p = cells.GRU.init(jax.random.key(7), 3, 4, jnp.float64)
    p = p._replace(w_h=0.5 * p.w_h)            # contracting: quasi-ELK converges quickly
    rng = np.random.RandomState(8)
    xs, w = jnp.asarray(rng.randn(40, 3, 3)), jnp.asarray(rng.randn(40, 3, 4))
    mask = np.arange(40)[:, None] < np.array([40, 25, 1])[None, :]     # right-padded lengths

    def loss(p, xs, m):
        hs, h = jrnn.rnn.run(cells.GRU, p, xs, mask=mask, reverse=reverse, grad=G(m))
        return jnp.sum(jnp.sin(hs) * w) + jnp.sum(h ** 2), (hs, h)

    (_, (hs, h)), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, xs, method)
    (_, (hs_s, h_s)), g_s = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, xs, "sequential")
    np.testing.assert_allclose(hs, hs_s, atol=1e-9)
    np.testing.assert_allclose(h, h_s, atol=1e-9)
    assert not np.any(np.asarray(hs)[~mask])                            # padding outputs are zero
    assert_trees_close(g, g_s, rtol=1e-8)


@pytest.mark.slow
def test_elk_step_is_the_least_squares_levenberg_marquardt_step():
    """The parallel Kalman filter + RTS smoother returns argmin_x sum_t |x_t - F_t x_{t-1} - c_t|^2
    + lam |x_t - y_t|^2 (a dense least-squares solve), full and diagonal, per-sequence lam."""
    rng = np.random.RandomState(0)
    T, B, H = 7, 2, 3
    F, c, y, lam = 1.5 * rng.randn(T, B, H, H), rng.randn(T, B, H), rng.randn(T, B, H), np.array([0.3, 2.0])
    for diagonal in (False, True):
        Fs = np.stack([np.diag(np.diag(f)) for f in F.reshape(-1, H, H)]).reshape(F.shape) if diagonal else F
        want = np.zeros((T, B, H))
        for b in range(B):   # rows: x_t - F_t x_{t-1} = c_t, then sqrt(lam) x_t = sqrt(lam) y_t
            M = np.zeros((2 * T * H, T * H))
            for t in range(T):
                M[t * H:(t + 1) * H, t * H:(t + 1) * H] = np.eye(H)
                if t:
                    M[t * H:(t + 1) * H, (t - 1) * H:t * H] = -Fs[t, b]
                M[(T + t) * H:(T + t + 1) * H, t * H:(t + 1) * H] = np.sqrt(lam[b]) * np.eye(H)
            rhs = np.concatenate([c[:, b].ravel(), np.sqrt(lam[b]) * y[:, b].ravel()])
            want[:, b] = np.linalg.lstsq(M, rhs, rcond=None)[0].reshape(T, H)
        arg = np.diagonal(F, axis1=-2, axis2=-1) if diagonal else F
        got = parallel._smooth(jnp.asarray(arg), jnp.asarray(c), jnp.asarray(y), jnp.asarray(lam), diagonal=diagonal)
        np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.slow   # the default suite checks ELK's gradients in the masked test (quasi_elk)
@pytest.mark.parametrize("method", ["quasi_elk", "elk"])
def test_elk_states_and_gradients_equal_the_sequential_scan(method):
    params, x, y = problem(T=64, B=1, H=4, scale=0.5)
    x, y = x[:, 0], y[:, 0]
    h0 = jnp.asarray(np.random.RandomState(2).randn(4) * 0.3)

    def loss(p, h0, m):
        hs, _ = elman.hidden(p, x, h0, grad=G(m))
        return losses.softmax_cross_entropy(elman.readout(p, hs), y, reduction="sum"), hs

    (_, hs), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, h0, method)
    (_, hs_s), g_s = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, h0, "sequential")
    np.testing.assert_allclose(hs, hs_s, atol=1e-9)
    assert_trees_close(g, g_s, rtol=1e-8)
    _, info = parallel.evaluate(elman.step, params, elman.project(params, x), h0, method=method)
    assert not bool(info.fell_back) and float(info.residual) <= 1e-10


@pytest.mark.slow
def test_elk_converges_where_deer_overflows():
    """An Elman network with recurrent spectral radius 1.5 in float32 (T=500): DEER's linear
    solve multiplies Jacobians of norm ~1.5 over hundreds of steps, overflows, and falls back
    after its 50 iterations; ELK's smoother keeps every step bounded and converges."""
    params = elman.init(jax.random.key(0), vocab_size=11, hidden_size=4, dtype=jnp.float32)
    params = params._replace(w_hh=params.w_hh * 1.5)          # orthogonal * 1.5: radius 1.5
    x = np.random.RandomState(0).randint(0, 11, (500, 1))
    us, h0 = elman.project(params, x), jnp.zeros((1, 4), jnp.float32)
    seq = elman.hidden(params, x)[0]
    _, deer = parallel.evaluate(elman.step, params, us, h0, method="deer")
    hs, elk = parallel.evaluate(elman.step, params, us, h0, method="elk")
    assert bool(deer.fell_back) and int(deer.iterations) == 50 and not np.isfinite(float(deer.residual))
    assert not bool(elk.fell_back) and int(elk.iterations) < 50 and float(elk.residual) <= 1e-5
    np.testing.assert_allclose(hs, seq, atol=1e-4)


TINY_RTOL = {jnp.float32: 1e-5, jnp.float64: 1e-8}


# default suite: each method once, float32 and float64 alternating; the full suite every pair
# the default suite keeps one case of the property (the float32 DEER case the issue reported)
TINY_FAST = {("deer", jnp.float32)}


@pytest.mark.parametrize("method,dtype", [
    pytest.param(m, d, marks=() if (m, d) in TINY_FAST else pytest.mark.slow)
    for m in parallel.PARALLEL_METHODS for d in (jnp.float32, jnp.float64)])
def test_tiny_states_converge_relative_to_their_scale(method, dtype):
    """Inputs of 1e-7 give states of ~1e-7, below the default tol: an absolute test passed the
    zero initial guess for converged after 0 iterations (outputs 100% off, dL/dW_h exactly 0).
    The relative test iterates, and outputs and gradients match the sequential scan."""
    p = cells.GRU.init(jax.random.key(0), 3, 4, dtype)
    xs = jnp.asarray(1e-7 * np.random.RandomState(0).randn(8, 2, 3), dtype)
    w = jnp.asarray(np.random.RandomState(1).randn(8, 2, 4), dtype)
    loss = lambda p, m: jnp.sum(jrnn.rnn.run(cells.GRU, p, xs, grad=G(m))[0] * w)
    hs_seq = jrnn.rnn.run(cells.GRU, p, xs)[0]
    assert 0 < float(jnp.max(jnp.abs(hs_seq))) < 1e-5
    hs, info = parallel.evaluate(cells.GRU.step, p, cells.GRU.project(p, xs), jnp.zeros((2, 4), dtype), method=method)
    assert int(info.iterations) >= 1 and not bool(info.fell_back), info
    assert_trees_close(hs, hs_seq, rtol=TINY_RTOL[dtype])
    g, g_seq = jax.grad(loss)(p, method), jax.grad(loss)(p, "sequential")
    assert float(jnp.max(jnp.abs(g_seq.w_h))) > 0
    assert_trees_close(g, g_seq, rtol=TINY_RTOL[dtype], what="gradient")


def test_zero_guess_stops_at_iteration_0_only_where_it_is_the_fixed_point():
    """Zero inputs, zero biases, h0 = 0: f(0) = 0 exactly, so the zero guess is the answer."""
    p = cells.GRU.init(jax.random.key(0), 3, 4, jnp.float64)
    us, h0 = jnp.zeros((5, 2, 12)), jnp.zeros((2, 4))
    hs, info = parallel.evaluate(cells.GRU.step, p, us, h0, method="deer")
    assert int(info.iterations) == 0 and float(info.residual) == 0.0 and not np.any(np.asarray(hs))


@pytest.mark.parametrize("method", ["elk", "quasi_elk"])
def test_elk_runs_a_single_step_sequence(method):
    """T = 1: the RTS smoother appended its last gain as E[:1], empty when T = 1 (an
    associative_scan shape error)."""
    p = cells.LSTM.init(jax.random.key(0), 3, 4, jnp.float64)
    xs = jnp.asarray(np.random.RandomState(0).randn(1, 2, 3))
    assert_trees_close(jrnn.rnn.run(cells.LSTM, p, xs, grad=G(method)), jrnn.rnn.run(cells.LSTM, p, xs), rtol=1e-12)


# the default suite keeps one case (the GRU); the scan's masked reverse runs for every cell in test_hoisted
@pytest.mark.parametrize("name,method", [pytest.param("elman", "quasi_elk", marks=pytest.mark.slow),
                                         pytest.param("lstm", "deer", marks=pytest.mark.slow), ("gru", "quasi_elk")])
def test_masked_reverse_parallel_solve_equals_the_masked_sequential_scan(name, method):
    """Each cell's masked, length-aware reverse pass by a parallel method (the diagonal Kalman
    path for two): states, final carry and gradients equal the sequential scan's (a cheap
    default case per cell; the slow suite has the long ones)."""
    cell = cells.get(name)
    p = cell.init(jax.random.key(1), 3, 4, jnp.float64)
    rng = np.random.RandomState(2)
    xs, w = jnp.asarray(rng.randn(6, 3, 3)), jnp.asarray(rng.randn(6, 3, 4))
    mask = np.arange(6)[:, None] < np.array([6, 3, 1])[None, :]

    def loss(p, xs, m):
        hs, c = jrnn.rnn.run(cell, p, xs, mask=mask, reverse=True, grad=G(m))
        return jnp.sum(jnp.sin(hs) * w) + sum(jnp.sum(a ** 2) for a in jax.tree.leaves(c)), (hs, c)

    got = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, xs, method)
    ref = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, xs, "sequential")
    assert_trees_close(got, ref, rtol=1e-8)


@pytest.mark.slow   # 12 s of compiles: the full suite runs it
@pytest.mark.parametrize("dtype", [jnp.bfloat16, pytest.param(jnp.float16, marks=pytest.mark.slow)])
def test_half_precision_carries_converge_instead_of_always_falling_back(dtype):
    """Iterated in half precision the residual stalls at ~1 eps, above the default 1e-5: every
    call ran max_iters and fell back. Carries are iterated in float32 now (default tol 1 eps of
    the half dtype): converged, within a couple of eps of the half-precision scan."""
    p = jax.tree.map(lambda a: a.astype(dtype), cells.LSTM.init(jax.random.key(1), 3, 4))
    xs = jnp.asarray(np.random.RandomState(0).randn(8, 2, 3), dtype)
    us, c0 = cells.LSTM.project(p, xs), cells.LSTM.zeros(p, (2,))
    seq = jrnn.rnn.run(cells.LSTM, p, xs)[0]
    eps = float(jnp.finfo(dtype).eps)
    assert parallel.default_tol(dtype) == eps
    hs, info = parallel.evaluate(cells.LSTM.step, p, us, c0, method="deer")
    assert hs.dtype == dtype and not bool(info.fell_back) and int(info.iterations) < 50, info
    assert_trees_close(hs, seq, rtol=4 * eps)
    g = jax.grad(lambda p: jnp.sum(jrnn.rnn.run(cells.LSTM, p, xs, grad=G("deer"))[0].astype(jnp.float32)))(p)
    assert all(a.dtype == dtype and np.all(np.isfinite(np.asarray(a, np.float32))) for a in jax.tree.leaves(g))


def test_solve_refuses_bad_tol_lam_reverse_max_iters_and_inputs_before_any_work():
    p = cells.GRU.init(jax.random.key(0), 3, 4, jnp.float64)
    us, h0 = cells.GRU.project(p, np.random.RandomState(0).randn(5, 2, 3)), jnp.zeros((2, 4))
    ev = lambda **kw: parallel.evaluate(cells.GRU.step, p, kw.pop("us", us), kw.pop("h0", h0), method="elk", **kw)
    # a relative tol >= 1 passed the zero guess for converged (iterations 0, fell_back False)
    for bad in (1, 2.0, np.float64(1.0)):
        with pytest.raises(ValueError, match=r"tol .* must lie in \(0, 1\)"):
            ev(tol=bad)
    for name in ("tol", "lam"):                       # True was read as 1
        for bad in (True, np.bool_(False), "1e-5", None if name == "lam" else [1e-5]):
            with pytest.raises(TypeError, match=f"{name} must be a real number"):
                ev(**{name: bad})
    with pytest.raises(ValueError, match="lam must be a positive finite number in the iteration's dtype"):
        p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p)                       # inf in float32
        parallel.evaluate(cells.GRU.step, p32, us.astype(jnp.float32), h0.astype(jnp.float32), method="elk", lam=1e300)
    with pytest.raises(TypeError, match="reverse must be a bool"):     # "no" is truthy
        ev(reverse="no")
    with pytest.raises(ValueError, match="max_iters must be <= 2147483647"):
        ev(max_iters=2 ** 40)
    with pytest.raises(ValueError, match="empty sequence"):
        ev(us=us[:0])
    with pytest.raises(TypeError, match="xs must be an array"):
        ev(us=np.asarray(us).tolist())
    with pytest.raises(TypeError, match="carry0 must be a float array"):
        ev(h0=jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"step\(params, carry0, xs\[0\]\) fails"):
        ev(h0=jnp.zeros((3, 4)))
    # numpy and 0-d array numbers are numbers; a float32 carry into a float64 step is widened
    # (the while loop's carry changed type: a JAX TypeError)
    for kw in (dict(tol=np.float32(1e-6), lam=np.int64(2)), dict(tol=np.array(1e-6)), dict(h0=jnp.zeros((2, 4), jnp.float32))):
        hs, info = ev(**kw)
        assert hs.dtype == jnp.float64 and int(info.iterations) >= 1
    assert not bool(info.fell_back)


# ---- structured Jacobians: exact Newton in O(T * H) ------------------------------------------

class DiagParams(NamedTuple):
    w: jax.Array   # [D, H]
    u: jax.Array   # [H], elementwise recurrence
    b: jax.Array   # [H]


class PairParams(NamedTuple):
    w: jax.Array   # [D, 2H]: forget and candidate
    u: jax.Array   # [2H], elementwise recurrence
    p: jax.Array   # [H], peephole of the forget gate on c


def _bc(v, like):
    """A per-unit vector [H] broadcast to a state's shape [..., H] (rank promotion is an error here)."""
    return jnp.broadcast_to(v, like.shape)


def _diag_cell():
    """h_t = tanh(x W + u * h + b): d h_t / d h_{t-1} is diagonal."""
    init = lambda key, D, H, dtype=jnp.float32: DiagParams(*(0.7 * jax.random.normal(k, s, dtype) for k, s in
                                                            zip(jax.random.split(key, 3), [(D, H), (H,), (H,)])))
    return jrnn.rnn.Cell(init, lambda p, xs: xs @ p.w, lambda p, h, u: (jnp.tanh(u + _bc(p.u, h) * h + _bc(p.b, h)),) * 2,
                         lambda p, batch=(): jnp.zeros(batch + p.u.shape, p.u.dtype), name="diag", jacobian=1)


def _pair_step(p, carry, u):
    """A CIFG-style cell with elementwise recurrence: carry (h, c), a 2 x 2 block per unit."""
    h, c = carry
    H = h.shape[-1]
    f = jax.nn.sigmoid(u[..., :H] + _bc(p.u[:H], h) * h + _bc(p.p, c) * c)
    c = f * c + (1 - f) * jnp.tanh(u[..., H:] + _bc(p.u[H:], h) * h)
    h = jnp.tanh(c) * 0.9
    return (h, c), h


def _pair_cell():
    init = lambda key, D, H, dtype=jnp.float32: PairParams(*(0.7 * jax.random.normal(k, s, dtype) for k, s in
                                                             zip(jax.random.split(key, 3), [(D, 2 * H), (2 * H,), (H,)])))
    zeros = lambda p, batch=(): (jnp.zeros(batch + p.p.shape, p.p.dtype),) * 2
    return jrnn.rnn.Cell(init, lambda p, xs: xs @ p.w, _pair_step, zeros, name="pair", jacobian=2)


@pytest.mark.parametrize("make", [_diag_cell, pytest.param(_pair_cell, marks=pytest.mark.slow)],
                         ids=["diagonal", "2x2 blocks"])
@pytest.mark.parametrize("method", ["deer", pytest.param("quasi_deer", marks=pytest.mark.slow),
                                    pytest.param("elk", marks=pytest.mark.slow),
                                    pytest.param("quasi_elk", marks=pytest.mark.slow)])
def test_a_structured_cells_parallel_states_and_gradients_equal_the_scan_to_1e8_in_x64(make, method):
    cell = make()
    p = cell.init(jax.random.key(0), 3, 5, jnp.float64)
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(9, 2, 3))
    mask = np.ones((9, 2), bool)
    mask[6:, 1] = False
    mask[2, 0] = False
    c0 = jax.tree.map(lambda a: a + 0.3, cell.zeros(p, (2,)))

    def loss(p, x, c0, grad):
        hs, c = jrnn.rnn.run(cell, p, x, c0, mask=mask, grad=grad)
        return jnp.sum(jnp.sin(hs)) + sum(jnp.sum(a ** 2) for a in jax.tree.leaves(c)), hs

    (v, hs), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(p, x, c0, jrnn.Parallel(method, max_iters=200))
    (v0, hs0), g0 = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(p, x, c0, None)
    np.testing.assert_allclose(hs, hs0, rtol=1e-8, atol=1e-12)
    assert_trees_close(g, g0, rtol=1e-8)


def test_exact_newton_on_a_diagonal_cell_converges_in_few_iterations_without_dense_jacobians():
    cell = _diag_cell()
    p = cell.init(jax.random.key(2), 3, 16)
    p = p._replace(u=0.5 * jnp.tanh(p.u))     # a contracting recurrence, as trained gated cells are
    us = cell.project(p, jnp.asarray(np.random.RandomState(0).randn(256, 4, 3), jnp.float32))
    h0 = jnp.zeros((4, 16))
    _, _, info = parallel.solve(cell.step, p, us, h0, method="deer", jacobian=1)
    _, _, quasi = parallel.solve(cell.step, p, us, h0, method="deer")     # undeclared: dense Newton
    assert not bool(info.fell_back) and int(info.iterations) <= 8
    assert int(info.iterations) == int(quasi.iterations)                  # the same Newton steps
    jaxpr = str(jax.make_jaxpr(lambda us: parallel.solve(cell.step, p, us, h0, method="deer", jacobian=1)[0])(us))
    dense = str(jax.make_jaxpr(lambda us: parallel.solve(cell.step, p, us, h0, method="deer")[0])(us))
    assert "16,16" not in jaxpr.replace(" ", "") and "16,16" in dense.replace(" ", "")


def test_a_declared_structure_that_does_not_split_the_carry_is_refused():
    cell = _diag_cell()
    p = cell.init(jax.random.key(0), 3, 5)
    us = cell.project(p, jnp.ones((4, 2, 3)))
    with pytest.raises(ValueError, match="2 equal parts"):
        parallel.solve(cell.step, p, us, jnp.zeros((2, 5)), jacobian=2)
    with pytest.raises(TypeError, match="jacobian"):
        jrnn.rnn.check_cell(cell._replace(jacobian=1.5))


# ---- Auto: the measured crossover table ---------------------------------------------------------

TABLE = {"gpu": {"diagonal": [(1, 8, 64), (16, 256, 1024)]}}


def test_auto_picks_parallel_exactly_where_the_table_says_it_wins():
    auto, diag = jrnn.Auto(table=TABLE), _diag_cell()
    P, S = jrnn.Parallel("deer"), jrnn.FullBPTT()
    assert auto.choose(diag, 64, 1, 8, "gpu") == P and auto.choose(diag, 63, 1, 8, "gpu") == S
    assert auto.choose(diag, 512, 2, 8, "gpu") == S            # B = 2: the (16, 256) row, from T = 1,024
    assert auto.choose(diag, 1024, 2, 8, "gpu") == P
    assert auto.choose(diag, 10 ** 6, 32, 8, "gpu") == S        # larger than every measured row
    assert auto.choose(diag, 10 ** 6, 1, 8, "cpu") == S         # no rows for the backend
    assert auto.choose(cells.GRU, 10 ** 6, 1, 8, "gpu") == S    # no rows for dense cells
    for backend, kinds in jrnn.crossovers.CROSSOVERS.items():   # the committed table, row by row
        for kind, rows in kinds.items():
            cell = {"dense": cells.GRU, "diagonal": diag, "blocks": _pair_cell()}[kind]
            for B, H, t_min in rows:
                if t_min is not None:
                    assert jrnn.Auto().choose(cell, t_min, B, H, backend) == P


@pytest.mark.parametrize("backend,parallel_expected", [("gpu", True), ("cpu", False)])
def test_autos_choice_reaches_the_lowered_program_on_each_backend(backend, parallel_expected, monkeypatch):
    """The choice is made at trace time from the backend: the parallel solve is a custom_vjp call
    in the program, the sequential scan is not."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    cell = _diag_cell()
    model = jrnn.model.make(cell, input_size=3, hidden_size=8, output_size=2, layers=2)
    p = model.init(jax.random.key(0))
    x = jnp.ones((64, 1, 3))
    jaxpr = str(jax.make_jaxpr(lambda p: model.loss(p, x, jnp.zeros((64, 1), jnp.int32), grad=jrnn.Auto(table=TABLE))[0])(p))
    assert ("custom_vjp_call" in jaxpr) == parallel_expected


def test_auto_is_hashable_and_checks_its_method():
    assert hash(jrnn.Auto(table=TABLE)) == hash(jrnn.Auto(table=TABLE)) and jrnn.Auto() != jrnn.FullBPTT()
    with pytest.raises(ValueError, match="unknown method"):
        jrnn.Auto("sequential")
