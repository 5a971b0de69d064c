"""Any per-step loss through every gradient strategy: MSE, binary cross-entropy and a user's own
function go through full BPTT, TBPTT(k1, k2), Remat and Parallel, with masks, and their
gradients equal the float64 numpy oracle (`jrnn.bptt.cell_truncated(loss=...)`) to 1e-10; the
batch-first layout and `lengths=` give the time-major numbers; wrong targets are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import bptt, cells
from jrnn.testing import assert_trees_close

RTOL = 1e-10
D, H, V, T, B = 3, 4, 2, 7, 2
MASK = np.array([[1, 1], [1, 1], [1, 0], [1, 1], [1, 0], [0, 1], [1, 1]], bool)   # [T, B]: holes


def mse_by_hand(outputs, targets):
    """A user's own per-step loss: one value per step, (outputs [..., V], targets [..., V]) -> [...]."""
    return jnp.mean(jnp.square(outputs - targets), axis=-1)


def _problem(name, loss, seed=0):
    """A float64 one-layer regression/tagging model on real-valued inputs [T, B, D], biases and
    carry nonzero, with targets for `loss`."""
    rng = np.random.RandomState(seed)
    model = jrnn.model.make(cells.get(name), input_size=D, hidden_size=H, output_size=V)
    p = model.init(jax.random.key(seed), jnp.float64)
    p = jax.tree.map(lambda a: a + 0.3 * jnp.asarray(rng.randn(*a.shape)), p)
    x = rng.randn(T, B, D)
    y = rng.rand(T, B, V) if loss == "binary_cross_entropy" else rng.randn(T, B, V)
    carry = model.zeros(p, (B,))
    carry = jax.tree.map(lambda a: a + 0.5 * jnp.asarray(rng.randn(*a.shape)), carry)
    return model, p, x, y, carry


def _oracle(name, loss, p, x, y, carry, mask, k1, k2):
    """The oracle per sequence, summed over the batch: (loss, grads dict, dL/dcarry0 per sequence)."""
    oracle_loss = "mse" if loss is mse_by_hand else loss
    total, grads, dcs = 0.0, None, []
    for b in range(B):
        c0 = tuple(np.asarray(a[b]) for a in jax.tree.leaves(carry[0]))
        value, g, dc = bptt.cell_truncated(name, p.layers[0], p.w_hy, p.b_y, x[:, b], y[:, b], c0, k1=k1, k2=k2,
                                           mask=None if mask is None else mask[:, b], loss=oracle_loss)
        total += value
        grads = g if grads is None else {k: grads[k] + g[k] for k in g}
        dcs.append(dc)
    return total, grads, tuple(np.stack([d[i] for d in dcs]) for i in range(len(dcs[0])))


STRATEGIES = {"full": (None, (T, T)), "tbptt": (jrnn.TBPTT(2, 5), (2, 5)), "remat": (jrnn.Remat(), (T, T)),
              "parallel": (jrnn.Parallel("deer", max_iters=200), (T, T))}
LOSSES = {"mse": "mse", "bce": "binary_cross_entropy", "own": mse_by_hand}
# the default suite: every loss and every strategy at least once, on rotating cells; the full
# suite: every cell for every pair
FAST_CELL = {("mse", "tbptt"): "gru", ("bce", "remat"): "gru", ("own", "full"): "elman"}


@pytest.mark.parametrize("loss_name,strategy,name", [
    pytest.param(l, s, n, marks=() if FAST_CELL.get((l, s)) == n else pytest.mark.slow)
    for l in LOSSES for s in STRATEGIES for n in ("elman", "lstm", "gru")])
def test_any_per_step_loss_has_the_oracles_gradient_under_every_strategy_with_masks(loss_name, strategy, name):
    loss = LOSSES[loss_name]
    grad, (k1, k2) = STRATEGIES[strategy]
    model, p, x, y, carry = _problem(name, loss, seed=len(loss_name) + 3 * len(strategy))
    f = jax.jit(jax.value_and_grad(
        lambda p, c, m: model.loss(p, x, y, c, grad=grad, loss=loss, mask=m, reduction="sum")[0], argnums=(0, 1)))
    rtol = 1e-8 if strategy == "parallel" else RTOL    # the solve stops at its relative tol 1e-10
    for mask in (None, MASK):
        value, (g, gc) = f(p, carry, np.ones((T, B), bool) if mask is None else mask)
        ref_loss, ref, dc0 = _oracle(name, loss, p, x, y, carry, mask, k1, k2)
        np.testing.assert_allclose(float(value), ref_loss, rtol=RTOL)
        names = bptt.CELLS[name][0]
        assert_trees_close(tuple(getattr(g.layers[0], k) for k in names), tuple(ref[k] for k in names), rtol=rtol)
        assert_trees_close((g.w_hy, g.b_y), (ref["w_hy"], ref["b_y"]), rtol=rtol)
        assert_trees_close(tuple(jax.tree.leaves(gc[0])), dc0, rtol=rtol)


def test_the_mean_reduction_is_the_mean_over_real_steps_of_the_per_step_loss():
    model, p, x, y, carry = _problem("gru", "mse", seed=1)
    total = model.loss(p, x, y, carry, loss="mse", mask=MASK, reduction="sum")[0]
    mean = model.loss(p, x, y, carry, loss="mse", mask=MASK)[0]
    per_step = model.loss(p, x, y, carry, loss="mse", mask=MASK, reduction="none")[0]
    np.testing.assert_allclose(mean, total / MASK.sum(), rtol=1e-12)
    assert per_step.shape == (T, B) and float(jnp.sum(jnp.where(MASK, 0.0, per_step))) == 0.0
    np.testing.assert_allclose(jnp.sum(per_step), total, rtol=1e-12)


@pytest.mark.parametrize("grad", [None, jrnn.TBPTT(2, 3), jrnn.Remat()], ids=["full", "tbptt", "remat"])
def test_batch_first_data_and_lengths_give_the_time_major_masked_numbers(grad):
    model, p, x, y, carry = _problem("lstm", "mse", seed=2)
    right = np.arange(T)[:, None] < np.array([T, 4])[None]          # right padding, as lengths say
    f = lambda **kw: jax.value_and_grad(lambda p: model.loss(p, carry=carry, grad=grad, loss="mse", **kw)[0])(p)
    want = f(inputs=x, targets=y, mask=right)
    assert_trees_close(f(inputs=np.swapaxes(x, 0, 1), targets=np.swapaxes(y, 0, 1), mask=right.T, time_major=False),
                       want, rtol=1e-12)
    assert_trees_close(f(inputs=x, targets=y, lengths=np.array([T, 4])), want, rtol=1e-12)
    assert_trees_close(f(inputs=np.swapaxes(x, 0, 1), targets=np.swapaxes(y, 0, 1), lengths=np.array([T, 4]),
                         time_major=False), want, rtol=1e-12)
    assert_trees_close(f(inputs=x, targets=y, mask=right, lengths=np.array([T, 4])), want, rtol=1e-12)


def test_outputs_come_back_in_the_layout_the_inputs_came_in():
    model, p, x, _, carry = _problem("gru", "mse")
    tm, c1 = model.apply(p, x, carry, mask=MASK)
    bf, c2 = model.apply(p, np.swapaxes(x, 0, 1), carry, mask=MASK.T, time_major=False)
    assert bf.shape == (B, T, V)
    assert_trees_close((jnp.swapaxes(bf, 0, 1), c2), (tm, c1), rtol=1e-12)
    last_tm = model.apply_last(p, x, carry, mask=MASK)[0]
    assert_trees_close(model.apply_last(p, np.swapaxes(x, 0, 1), carry, mask=MASK.T, time_major=False)[0], last_tm,
                       rtol=1e-12)
    hs, _ = jrnn.rnn.run(model.cell, p.layers[0], np.swapaxes(x, 0, 1), carry[0], time_major=False)
    assert hs.shape == (B, T, H)


def test_a_mask_or_lengths_in_the_other_layout_is_refused_naming_time_major():
    """A padded batch-first [B, T] array passed as time-major: its mask or lengths cannot agree."""
    model = jrnn.model.make(cells.GRU, input_size=D, hidden_size=H, output_size=2)
    p = model.init(jax.random.key(0))
    x_bf = np.zeros((5, 8, D), np.float32)                         # [B=5, T=8, D], batch-first
    mask_bf = np.ones((5, 8), bool)
    with pytest.raises(ValueError, match="time_major=False"):
        model.apply_last(p, x_bf, mask=mask_bf.T)                  # read as T=5, B=8: the mask is [8, 5]
    with pytest.raises(ValueError, match=r"lengths must have the batch shape \(8,\).*time_major=False"):
        model.apply_last(p, x_bf, lengths=np.full(5, 8))
    with pytest.raises(ValueError, match="mask and lengths disagree"):
        model.apply_last(p, x_bf, mask=mask_bf, lengths=np.full(5, 3), time_major=False)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T = 8\]"):
        model.apply_last(p, x_bf, lengths=np.full(5, 9), time_major=False)
    with pytest.raises(TypeError, match="lengths must be integer"):
        model.apply_last(p, x_bf, lengths=np.full(5, 8.0), time_major=False)
    assert model.apply_last(p, x_bf, lengths=np.full(5, 8), time_major=False)[0].shape == (5, 2)


def test_targets_that_do_not_fit_the_loss_are_refused_before_tracing():
    model, p, x, y, _ = _problem("elman", "mse")
    with pytest.raises(ValueError, match=r"targets must have the inputs' shape \(7, 2, 2\)"):
        model.loss(p, x, y[..., :1], loss="mse")
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        model.loss(p, x, y + 2.0, loss="binary_cross_entropy")
    with pytest.raises(ValueError, match="must return one loss per step"):
        model.loss(p, x, y, loss=lambda o, t: jnp.square(o - t))       # [T, B, V]: not reduced per step
    with pytest.raises(ValueError, match="targets must start with the steps' shape"):
        model.loss(p, x, y[:3], loss=mse_by_hand)
    with pytest.raises(ValueError, match="unknown loss 'huber'"):
        model.loss(p, x, y, loss="huber")
    with pytest.raises(TypeError, match="loss must be a name"):
        model.loss(p, x, y, loss=3)
    with pytest.raises(TypeError, match="labels must be integer class ids"):
        model.loss(p, x, y)                                         # cross-entropy by default: ids
