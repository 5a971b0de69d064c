"""min-char-rnn (seed 003b) in jrnn is the seed's numpy loop step for step.

Teacher forcing: before each iteration, jrnn is given the numpy loop's exact state (parameters,
Adagrad memory, carried h; the data pointer is checked against jrnn's own), runs that one
iteration through `experiments.minchar.train`, and its loss, parameters, Adagrad memory and h
must equal the numpy loop's after that iteration in float64. Comparing free-running loops
instead would measure Adagrad's amplification of rounding noise (lr / sqrt(1e-8) = 1000 per step
on near-zero gradients), not the algorithm.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from experiments import baselines, minchar

# Worst relative errors measured over kafka and tinyshakespeare, keys 0-4, 200 iterations each:
# loss 1.1e-15, parameters 1.5e-13 (see `param_error`), Adagrad memory 1.6e-13, h 3.1e-14.
# Parameters compared as max|a - b| / max|b| reach 8.9e-12 (kafka key 1): Adagrad divides the
# step by sqrt(mem + 1e-8), so where the memory is still ~5e-14 a 5e-15 gradient rounding
# difference becomes 5e-12 in the parameter; RAW_PARAMS_TOL bounds that plain measure too.
TOL = 1e-12
RAW_PARAMS_TOL = 1e-10


def corpus(name):
    text = jrnn.data.load_text(name)
    return jrnn.data.build_vocab(text).encode(text)


def init(key, V):
    return jrnn.elman.init(jax.random.key(key), vocab_size=V, hidden_size=minchar.HIDDEN, scheme="normal",
                           scale=minchar.INIT_SCALE, dtype=jnp.float64)


def from_columns(state, template_opt_state):
    """The numpy loop's column-layout state as jrnn's (params, opt_state, h)."""
    Wxh, Whh, Why, bh, by = state["params"]
    params = jrnn.elman.ElmanParams(w_xh=Wxh.T, w_hh=Whh.T, b_h=bh[:, 0], w_hy=Why.T, b_y=by[:, 0])
    mWxh, mWhh, mWhy, mbh, mby = state["mems"]
    mems = jrnn.elman.ElmanParams(w_xh=mWxh.T, w_hh=mWhh.T, b_h=mbh[:, 0], w_hy=mWhy.T, b_y=mby[:, 0])
    params, mems = (jax.tree.map(jnp.asarray, t) for t in (params, mems))
    return params, optax.tree_utils.tree_set(template_opt_state, sum_of_squares=mems), jnp.asarray(state["h"][:, 0])


def param_error(before, got, want, mems):
    """Worst parameter difference relative to what float64 rounding of one Adagrad step scales with.

    p' = p - lr g / sqrt(mem + eps): rounding of p scales with max|p|, and rounding of the
    gradient g is amplified by lr / sqrt(mem + eps) (up to 1000 where the memory is still ~0),
    so element i is measured against max|p| + lr max|g| / sqrt(mem_i + eps), with g the clipped
    gradient the numpy loop applied.
    """
    worst = 0.0
    for b, g, w, m in zip(*(map(np.asarray, jax.tree.leaves(t)) for t in (before, got, want, mems))):
        amplify = minchar.LEARNING_RATE / np.sqrt(m + 1e-8)
        grad = np.max(np.abs(b - w) / amplify)
        scale = np.maximum(np.max(np.abs(w)) + grad * amplify, np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(g - w) / scale)))
    return worst


def teacher_forced_errors(ids, key, n_iters, *, as_written=False):
    """Worst relative error per quantity over n_iters teacher-forced iterations."""
    V = int(ids.max()) + 1
    params0 = init(key, V)
    trace = []
    baselines.minchar_numpy(params0, ids, n_iters, as_written=as_written, trace=trace)
    ps, resets = minchar.positions(n_iters, len(ids))
    template = minchar.optimizer(as_written).init(params0)
    worst = dict.fromkeys(["loss", "params", "raw params", "mems", "h"], 0.0)
    for n, it in enumerate(trace):
        assert (ps[n], resets[n]) == (it["p"], it["reset"]), n   # same data pointer, same resets
        before, opt_state, h = from_columns(it["before"], template)
        got = {}
        on_call = lambda done, p, s, h, last, losses: got.update(opt_state=s)
        params, losses, h = minchar.train(before, ids, n + 1, opt_state=opt_state, h=h, start=n, on_call=on_call,
                                          as_written=as_written)
        want_params, want_opt_state, want_h = from_columns(it["after"], template)
        mems = optax.tree_utils.tree_get(got["opt_state"], "sum_of_squares")
        want_mems = optax.tree_utils.tree_get(want_opt_state, "sum_of_squares")
        errors = {"loss": abs(float(losses[0]) - it["loss"]) / it["loss"],
                  "params": param_error(before, params, want_params, want_mems),
                  "raw params": jrnn.testing.relative_error(params, want_params),
                  "mems": jrnn.testing.relative_error(mems, want_mems),
                  "h": jrnn.testing.relative_error(h, want_h)}
        worst = {k: max(worst[k], errors[k]) for k in worst}
    return worst, trace


def check_step_for_step(name, key, n_iters, as_written=False, wrap_at=None):
    ids = corpus(name)
    if wrap_at is not None:
        ids = ids[:wrap_at]   # the loop wraps around and resets h inside the run
    worst, trace = teacher_forced_errors(ids, key, n_iters, as_written=as_written)
    assert worst["raw params"] <= RAW_PARAMS_TOL and all(v <= TOL for k, v in worst.items() if k != "raw params"), worst
    assert len(trace) == n_iters and trace[-1]["loss"] < trace[0]["loss"]
    return worst, trace


def test_minchar_is_the_seed_loop_step_for_step(data_dir):
    check_step_for_step("kafka", 0, 60)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kafka", "tinyshakespeare"])
@pytest.mark.parametrize("key", [0, 1, 2, 3, 4])
def test_minchar_is_the_seed_loop_step_for_step_200_iterations(data_dir, name, key):
    check_step_for_step(name, key, 200)


def test_minchar_resets_h_at_wraparound_as_the_seed_loop(data_dir):
    _, trace = check_step_for_step("tinyshakespeare", 5, 45, wrap_at=1000)   # 39 chunks per pass
    assert [n for n, it in enumerate(trace) if it["reset"]] == [0, 39]


def test_minchar_as_written_freezes_b_y_at_exactly_zero_as_the_seed_loop(data_dir):
    """Seed 003b's lossFun never accumulates dby: b_y and its Adagrad memory stay exactly 0,
    step for step with the numpy loop as written, while the other parameters train."""
    _, trace = check_step_for_step("kafka", 6, 40, as_written=True)
    assert all(not np.any(it["after"]["params"][4]) and not np.any(it["after"]["mems"][4]) for it in trace)
    assert np.all(trace[-1]["after"]["params"][2] != trace[0]["before"]["params"][2])   # Why trains


def test_minchar_cli_as_written_saves_b_y_exactly_zero_and_says_so(data_dir, tmp_path):
    minchar.main(["--as-written", "--steps", "100", "--checkpoint-every", "100", "--baseline-steps", "0", "--quiet",
                  "--out", str(tmp_path)])
    assert json.loads((tmp_path / "results.json").read_text())["config"]["as_written"] is True
    V = int(corpus("kafka").max()) + 1
    params = jrnn.elman.init(jax.random.key(0), vocab_size=V, hidden_size=minchar.HIDDEN, scheme="normal",
                             scale=minchar.INIT_SCALE)
    template = {"params": params, "opt_state": minchar.optimizer(True).init(params), "h": jrnn.elman.zeros_carry(params)}
    ckpt_dir = tmp_path / "checkpoints" / "seed_0"
    ck = jrnn.checkpoint.load_latest(ckpt_dir, template, config=minchar.checkpoint_config(0, as_written=True))
    assert ck.step == 100 and np.all(np.asarray(ck.state["params"].b_y) == 0.0)
    assert np.any(np.asarray(ck.state["params"].w_hy) != np.asarray(params.w_hy))
    with pytest.raises(ValueError, match="config"):   # a default-mode run does not resume it
        jrnn.checkpoint.load_latest(ckpt_dir, template, config=minchar.checkpoint_config(0))
