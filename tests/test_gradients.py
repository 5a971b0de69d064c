"""jax.grad of the scan forward equals the hand-written float64 BPTT reference (jrnn.bptt)."""

import itertools
import jax
import jrnn
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jrnn import bptt, elman, losses
from jrnn.testing import assert_trees_close, check_gradients, relative_error

RTOL = 1e-10


def make_problem(seed, T, D, H, V, dense=False, activation="tanh"):
    rng = np.random.RandomState(seed)
    params = elman.init(jax.random.key(seed), input_size=D, hidden_size=H, output_size=V,
                        scheme="normal", scale=1.5 / np.sqrt(H), dtype=jnp.float64)
    if activation == "relu":  # keep relu units away from the kink so both sides agree
        params = params._replace(b_h=params.b_h + 0.1)
    inputs = rng.randn(T, D) if dense else rng.randint(0, D, size=T)
    targets = rng.randint(0, V, size=T)
    h0 = 0.5 * rng.randn(H)
    return params, inputs, targets, jnp.asarray(h0)


SIZES = [(3, 4, 5), (11, 16, 7), (65, 32, 65)]


def slow_unless(fast, cases):
    """`cases` as pytest params; those for which `fast(case)` is false run in the full suite only
    (marked slow), so the default suite keeps a covering subset of every grid."""
    return [pytest.param(*c, marks=() if fast(*c) else pytest.mark.slow) for c in cases]


@pytest.mark.parametrize("T,sizes,activation,dense", slow_unless(
    # default: tanh at T = 1, 2, 13, dense and not (the activations and larger sizes are in the
    # many-to-one grid's default cases)
    lambda T, sizes, activation, dense: activation == "tanh" and sizes == SIZES[0] and (T == 13 or not dense),
    list(itertools.product([1, 2, 13], SIZES, ["tanh", "sigmoid", "relu"], [False, True]))))
def test_grad_matches_bptt_reference_many_to_many(T, sizes, activation, dense):
    params, x, y, h0 = make_problem(T * 7 + sizes[1], T, *sizes, dense=dense, activation=activation)

    def loss(p, h0):
        logits, _ = elman.apply(p, x, h0, activation=activation)
        return losses.softmax_cross_entropy(logits, y, reduction="sum")

    value, (g, gh0) = jax.value_and_grad(loss, argnums=(0, 1))(params, h0)
    ref_loss, ref, ref_dh0 = bptt.many_to_many(params, x, y, h0, activation=activation)
    np.testing.assert_allclose(float(value), ref_loss, rtol=RTOL)
    assert_trees_close(g, elman.ElmanParams(**ref), rtol=RTOL, what="dL/dparams")
    assert_trees_close(gh0, ref_dh0, rtol=RTOL, what="dL/dh0")


@pytest.mark.parametrize("T,sizes,activation", slow_unless(
    lambda T, sizes, activation: (T == 13 or activation == "tanh") and not (T == 1 and sizes != SIZES[0]),
    list(itertools.product([1, 2, 13], SIZES, ["tanh", "sigmoid", "relu"]))))
def test_grad_matches_bptt_reference_many_to_one(T, sizes, activation):
    params, x, y, h0 = make_problem(T + 100 * sizes[0], T, *sizes, activation=activation)

    def loss(p, h0):
        logits, _ = elman.apply_last(p, x, h0, activation=activation)
        return losses.softmax_cross_entropy(logits, y[-1])

    g, gh0 = jax.grad(loss, argnums=(0, 1))(params, h0)
    _, ref, ref_dh0 = bptt.many_to_one(params, x, y[-1], h0, activation=activation)
    assert_trees_close(g, elman.ElmanParams(**ref), rtol=RTOL)
    assert_trees_close(gh0, ref_dh0, rtol=RTOL)


# (T, k1, k2): all but the last two reach the window code (k1 < T or k2 < T); those two take
# the one-window shortcut of full BPTT (k1 >= T and k2 >= T). Ragged last blocks, k2 > T, k1 = k2,
# windows that reach step 0 and windows that stop short of it are all among them.
TBPTT_CASES = [(2, 1, 1), (5, 1, 1), (5, 1, 6), (5, 2, 3), (5, 4, 10), (9, 2, 5), (12, 4, 4), (13, 4, 4),
               (13, 12, 12), (13, 3, 20), (25, 1, 6), (25, 2, 3), (25, 3, 3), (25, 4, 10), (25, 5, 5),
               (25, 7, 25), (25, 24, 30), (1, 1, 1), (25, 25, 25)]


def test_tbptt_cases_reach_the_window_code():
    shortcut = [(T, k1, k2) for T, k1, k2 in TBPTT_CASES if k1 >= T and k2 >= T]   # tbptt.sequence_loss's test
    assert shortcut == [(1, 1, 1), (25, 25, 25)] and len(TBPTT_CASES) - len(shortcut) == 17


# default suite: k1 < k2 = T (tests/test_model.py runs further windows per cell); the full suite
# runs every case, the k1 = k2 ragged blocks and the whole-sequence shortcut included
TBPTT_FAST = {(25, 7, 25)}


@pytest.mark.parametrize("T,k1,k2", slow_unless(lambda *c: c in TBPTT_FAST, TBPTT_CASES))
def test_truncated_grad_matches_tbptt_reference(T, k1, k2):
    params, x, y, h0 = make_problem(T + k1 + 10 * k2, T, 11, 16, 11)

    def loss(p, h0):
        return elman.sequence_loss(p, x, y, h0, grad=jrnn.TBPTT(k1, k2), reduction="sum")[0]

    value, (g, gh0) = jax.value_and_grad(loss, argnums=(0, 1))(params, h0)
    ref_loss, ref, ref_dh0 = bptt.truncated(params, x, y, h0, k1=k1, k2=k2)
    np.testing.assert_allclose(float(value), ref_loss, rtol=RTOL)
    assert_trees_close(g, elman.ElmanParams(**ref), rtol=RTOL)
    assert_trees_close(gh0, ref_dh0, rtol=RTOL)


def tbptt_surrogate(params, x, y, h0, k1, k2, detached):
    """The loss whose gradient TBPTT(k1, k2) is, written independently of jrnn.bptt.

    Blocks of k1 steps; block b's losses run forward from the state just before its k2-step window,
    which is `h0` itself when the window reaches step 0 and otherwise `detached[first]` (h_{first-1}
    of the forward at the point of differentiation, held constant). Float64 numpy, column layout.
    """
    Wxh, Whh, bh, Why, by = (np.asarray(a, np.float64).T for a in params)
    xs = np.eye(Wxh.shape[1])[np.asarray(x)]
    T, total = len(xs), 0.0
    for start in range(0, T, k1):
        end = min(start + k1, T) - 1
        first = max(end - k2 + 1, 0)
        h = np.asarray(h0, np.float64) if first == 0 else detached[first]
        for t in range(first, end + 1):
            h = np.tanh(Wxh @ xs[t] + Whh @ h + bh)
            if t >= start:
                logits = Why @ h + by
                total += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[y[t]]
    return total


@pytest.mark.parametrize("T,k1,k2", [(25, 1, 6), (25, 4, 10), (13, 5, 5), (13, 3, 20), (9, 2, 5)])
def test_truncated_reference_matches_finite_differences_of_the_tbptt_surrogate(T, k1, k2):
    """TBPTT's gradient is not the full loss's, so its oracle is the truncated loss itself: the sum
    of each block's losses through its window from the detached state before it. Central
    differences of that function along random directions in every leaf (and h0) must equal
    <bptt.truncated's gradient, direction>. With seed 002's bug in `truncated` the error is ~1."""
    params, x, y, h0 = make_problem(3 * T + k1 + k2, T, 11, 16, 11)
    _, hs, _ = bptt.forward(params, x, h0)   # hs[t] = h_{t-1}: the states to hold fixed
    loss, grads, dh0 = bptt.truncated(params, x, y, h0, k1=k1, k2=k2)
    surrogate = lambda p, h: tbptt_surrogate(p, x, y, h, k1, k2, hs)
    assert surrogate(params, h0) == pytest.approx(loss, rel=1e-13)   # the value is the full loss
    rng, eps, worst = np.random.RandomState(T), 1e-4, 0.0
    leaves = [(name, np.asarray(getattr(params, name))) for name in elman.ElmanParams._fields] + [("h0", np.asarray(h0))]
    reference = {**grads, "h0": dh0}
    for name, value in leaves:
        for _ in range(3):
            v = rng.randn(*value.shape)
            shifted = lambda s: (params._replace(**{name: value + s * eps * v}), h0) if name != "h0" else (params, h0 + s * eps * v)
            f = lambda s: surrogate(*shifted(s))
            fd = (8 * (f(1) - f(-1)) - (f(2) - f(-2))) / (12 * eps)   # fourth-order central difference
            ad = float(np.sum(reference[name] * v))
            worst = max(worst, abs(fd - ad) / max(abs(ad), 1e-3))
    assert worst < 1e-8, worst   # measured worst over these cases: 5.4e-10
    if k2 < T:   # and the full loss's gradient is a different thing: its FD would not agree
        _, full, _ = bptt.many_to_many(params, x, y, h0)
        assert relative_error(grads["w_hh"], full["w_hh"]) > 1e-3


def test_truncation_to_full_window_equals_full_bptt():
    params, x, y, h0 = make_problem(3, 9, 5, 6, 5)
    _, full, dh_full = bptt.many_to_many(params, x, y, h0)
    _, trunc, dh_trunc = bptt.truncated(params, x, y, h0, k1=9, k2=9)
    assert_trees_close(trunc, full, rtol=1e-12)
    assert_trees_close(dh_trunc, dh_full, rtol=1e-12)


def test_truncation_changes_the_gradient():
    params, x, y, h0 = make_problem(4, 25, 11, 16, 11)
    _, full, _ = bptt.many_to_many(params, x, y, h0)
    _, trunc, _ = bptt.truncated(params, x, y, h0, k1=1, k2=6)
    assert relative_error(trunc["w_hh"], full["w_hh"]) > 1e-3
    assert relative_error(trunc["w_hy"], full["w_hy"]) < 1e-12  # readout is never truncated


def _seed002_buggy_backprop(params, x, y, k):
    """Seed 002's loop verbatim in shape: tanh' at h[k] where dz_{k-1} needs h[k-1]."""
    Wxh, Whh, bh, Why, by = (np.asarray(a).T for a in params)
    xs, hs, logits = bptt.forward(params, x)
    ps = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    dW = np.zeros_like(Whh)
    for t in reversed(range(len(x))):
        dz = (Why.T @ (ps[t] - np.eye(len(by))[y[t]])) * (1 - hs[t + 1] ** 2)
        for j in reversed(range(max(0, t - k), t + 1)):
            dW += np.outer(dz, hs[j])
            dz = (Whh.T @ dz) * (1 - hs[j + 1] ** 2)  # the bug: h_j, not h_{j-1}
    return dW.T


@pytest.mark.slow
def test_seed002_bug_is_caught_and_fixed_reference_agrees_with_finite_differences():
    params, x, y, _ = make_problem(5, 25, 11, 16, 11)
    h0 = jnp.zeros(16)

    def loss(p):
        return elman.sequence_loss(p, x, y, h0, grad=jrnn.TBPTT(1, 6), reduction="sum")[0]

    g = jax.grad(loss)(params)
    assert relative_error(_seed002_buggy_backprop(params, x, y, 5), g.w_hh) > 1e-3
    _, ref, _ = bptt.truncated(params, x, y, h0, k1=1, k2=6)
    assert relative_error(ref["w_hh"], g.w_hh) < RTOL
    # and finite differences of the full loss agree with the untruncated reference
    full_loss = lambda p: losses.softmax_cross_entropy(elman.apply(p, x, h0)[0], y, reduction="sum")
    check_gradients(full_loss, params, rtol=1e-6)


@pytest.mark.slow
def test_check_grads_on_the_scan_forward():
    params, x, y, h0 = make_problem(6, 6, 5, 4, 5, dense=True)
    fwd = lambda p, h0, xs: elman.apply(p, xs, h0)[0]
    check_grads(fwd, (params, h0, jnp.asarray(x)), order=2, modes=("rev",))


def test_check_gradients_rejects_a_wrong_gradient():
    @jax.custom_vjp
    def wrong_square(x):
        return jnp.sum(x ** 2)

    wrong_square.defvjp(lambda x: (wrong_square(x), x), lambda x, g: (g * 2.2 * x,))
    x = jnp.arange(1.0, 4.0)
    check_gradients(lambda p: jnp.sum(p ** 2), x)
    with pytest.raises(AssertionError, match="relative error"):
        check_gradients(wrong_square, x)


@pytest.mark.slow
def test_vmap_grad_equals_loop_of_grads():
    params, _, _, _ = make_problem(7, 1, 7, 8, 7)
    rng = np.random.RandomState(1)
    xs, ys = rng.randint(0, 7, (4, 9)), rng.randint(0, 7, (4, 9))

    def loss(p, x, y):
        return losses.softmax_cross_entropy(elman.apply(p, x)[0], y, reduction="sum")

    batched = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, xs, ys)
    for b in range(4):
        one = jax.grad(loss)(params, xs[b], ys[b])
        assert_trees_close(jax.tree.map(lambda a: a[b], batched), one, rtol=1e-12)


@pytest.mark.slow
def test_batched_tbptt_equals_sum_over_sequences():
    params, _, _, _ = make_problem(8, 1, 7, 8, 7)
    rng = np.random.RandomState(2)
    xs, ys = rng.randint(0, 7, (12, 3)), rng.randint(0, 7, (12, 3))  # [T, B]
    loss = lambda p: elman.sequence_loss(p, xs, ys, grad=jrnn.TBPTT(2, 4), reduction="sum")[0]
    g = jax.grad(loss)(params)
    parts = [bptt.truncated(params, xs[:, b], ys[:, b], k1=2, k2=4)[1] for b in range(3)]
    total = {k: sum(p[k] for p in parts) for k in parts[0]}
    assert_trees_close(g, elman.ElmanParams(**total), rtol=RTOL)


@pytest.mark.parametrize("T", [1, pytest.param(9, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("dense", [False, True])
def test_gated_cell_grads_match_bptt_reference(T, name, dense):
    from jrnn import cells, rnn
    rng = np.random.RandomState(T)
    D, H, V = 6, 5, 7
    cell = cells.get(name)
    p = cell.init(jax.random.key(T), D, H, jnp.float64)
    p = jax.tree.map(lambda a: a + 0.3 * jnp.asarray(rng.randn(*a.shape)), p)  # nonzero biases too
    w_hy, b_y = jnp.asarray(rng.randn(H, V)), jnp.asarray(rng.randn(V))
    x = rng.randn(T, D) if dense else rng.randint(0, D, T)
    y = rng.randint(0, V, T)
    h0 = jnp.asarray(0.5 * rng.randn(H))
    carry0 = cells.LSTMState(h0, jnp.asarray(0.5 * rng.randn(H))) if name == "lstm" else h0

    def loss(p, w_hy, b_y, carry0):
        hs, _ = rnn.run(cell, p, x, carry0)
        return losses.softmax_cross_entropy(hs @ w_hy + b_y[None], y, reduction="sum")

    value, (gp, gw, gb, gc) = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(p, w_hy, b_y, carry0)
    if name == "lstm":
        ref_loss, ref, dh0, dc0 = bptt.lstm_many_to_many(p, w_hy, b_y, x, y, carry0.h, carry0.c)
        assert_trees_close((gc.h, gc.c), (dh0, dc0), rtol=RTOL)
        assert_trees_close(gp, cells.LSTMParams(ref["w_i"], ref["w_h"], ref["b"]), rtol=RTOL)
    else:
        ref_loss, ref, dh0 = bptt.gru_many_to_many(p, w_hy, b_y, x, y, carry0)
        assert_trees_close(gc, dh0, rtol=RTOL)
        assert_trees_close(gp, cells.GRUParams(ref["w_i"], ref["w_h"], ref["b_i"], ref["b_h"]), rtol=RTOL)
    np.testing.assert_allclose(float(value), ref_loss, rtol=RTOL)
    assert_trees_close((gw, gb), (ref["w_hy"], ref["b_y"]), rtol=RTOL)
