"""The jitted training steps refuse out-of-range ids, and no NaN/inf reaches params or checkpoints."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn import elman, optim

V, H = 8, 10


def lm_loss(params, batch, h):
    x, y = batch
    return elman.sequence_loss(params, x, y, h, grad=jrnn.TBPTT(x.shape[0], x.shape[0]), reduction="sum")


@pytest.fixture
def params():
    return elman.init(jax.random.key(1), vocab_size=V, hidden_size=H, scheme="normal", scale=0.1)


def _batch():
    ids = np.arange(26) % V
    return jnp.asarray(ids[:-1]), jnp.asarray(ids[1:])


BAD = {"token -1": (0, 3, -1, r"token ids must lie in \[0, 8\), got min -1, max 7"),
       "token V": (0, 0, V, r"token ids must lie in \[0, 8\), got min 0, max 8"),
       "label V": (1, 5, V, r"labels must lie in \[0, 8\), got min 0, max 8"),
       "label -2": (1, 5, -2, r"labels must lie in \[0, 8\), got min -2, max 7")}


def _corrupt(batch, which, where, value):
    batch = list(batch)
    batch[which] = batch[which].at[where].set(value)
    return tuple(batch)


def test_make_step_names_out_of_range_ids(params, backend_compiles):
    opt = optim.sgd(0.1)
    step = jrnn.make_step(lm_loss, opt)
    state, h0, good = opt.init(params), jnp.zeros(H), _batch()
    bad = [(_corrupt(good, which, where, value), msg) for which, where, value, msg in BAD.values()]
    step(params, state, good, h0)
    backend_compiles.clear()
    for batch, msg in bad:
        with pytest.raises(ValueError, match=msg):
            step(params, state, batch, h0)
    # a good batch after the refused ones trains as usual, without recompiling
    _, _, m, _ = step(params, state, good, h0)
    assert int(m["skipped"]) == 0 and np.isfinite(float(m["loss"]))
    assert backend_compiles == [], "refused batches or the good one after them recompiled the step"


@pytest.mark.parametrize("case", ["token -1", "label V"])
def test_make_multi_step_names_out_of_range_ids(params, case):
    opt = optim.adam(1e-2)
    multi = jrnn.make_multi_step(lm_loss, opt)
    x, y = _batch()
    good = (jnp.stack([x, x, x]), jnp.stack([y, y, y]))
    which, where, value, msg = BAD[case]
    bad = list(good)
    bad[which] = bad[which].at[2, where].set(value)   # only the last of the K batches is bad
    with pytest.raises(ValueError, match=msg):
        multi(params, opt.init(params), tuple(bad), jnp.zeros(H))
    _, _, m, _ = multi(params, opt.init(params), good, jnp.zeros(H))
    assert m["skipped"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("multi_step", [False, True])
def test_data_parallel_step_names_out_of_range_ids(params, multi_step):
    opt = optim.sgd(0.1)
    step = jrnn.distributed.make_data_parallel_step(lm_loss, opt, multi_step=multi_step)
    x, y = _batch()
    x, y = jnp.stack([x, x], 1), jnp.stack([y, y], 1)          # [T, B=2]
    x = x.at[4, 1].set(-1)
    batch = (x[None], y[None]) if multi_step else (x, y)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 8\), got min -1"):
        step(params, opt.init(params), batch, jnp.zeros((2, H)))


@pytest.mark.parametrize("cell", [pytest.param("lstm", marks=pytest.mark.slow), "gru"])
def test_every_cell_checks_ids_in_the_step(cell):
    model = jrnn.lm.model(cell, vocab_size=V, hidden_size=H)
    p = model.init(jax.random.key(0))
    opt = optim.sgd(0.1)

    def loss(params, batch, carry):
        return model.loss(params, batch[0], batch[1], carry)

    step = jrnn.make_step(loss, opt)
    x, y = _batch()
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 8\), got min -1"):
        step(p, opt.init(p), (x.at[0].set(-1)[:, None], y[:, None]), None)


def test_check_ids_false_keeps_the_unchecked_step_where_id_minus_one_is_a_nan_row_the_guard_skips(params):
    opt = optim.sgd(0.1)
    step = jrnn.make_step(lm_loss, opt, check_ids=False)
    with pytest.warns(RuntimeWarning, match="training step 1 was skipped"):   # the guard's, not the id check's
        _, _, m, _ = step(params, opt.init(params), _corrupt(_batch(), 0, 3, -1), jnp.zeros(H))
    assert int(m["skipped"]) == 1        # no error raised; id -1 reads a NaN row, not row V-1


def test_plain_jit_of_a_model_still_works_with_traced_ids(params):
    # the range checks are dropped outside a checkify-ed step: no "not functionalized" error
    x, y = _batch()
    loss = jax.jit(lambda p, x, y: elman.sequence_loss(p, x, y)[0])(params, x, y)
    remat = jax.jit(lambda p, x, y: elman.sequence_loss(p, x, y, grad=jrnn.Remat())[0])(params, x, y)
    np.testing.assert_allclose(loss, remat, rtol=1e-6)


@pytest.mark.slow
def test_steps_called_inside_the_callers_scan_and_vmap_train_as_the_plain_step(params):
    # experiments.sentiment calls a multi-step inside lax.scan under vmap: the checked step's
    # error flags are traced values there, so it must run the plain step, not fail to read them
    opt = optim.sgd(0.1)
    batch = _batch()
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), batch)
    for make, b in ((jrnn.make_step, batch), (jrnn.make_multi_step, stacked)):
        checked, plain = make(lm_loss, opt), make(lm_loss, opt, check_ids=False)

        def twice(step):
            def body(state, _):
                p, s = state
                p, s, m, _ = step(p, s, b, jnp.zeros(H))
                return (p, s), m["loss"]
            return lambda: jax.lax.scan(body, (params, opt.init(params)), None, length=2)

        (p_c, _), l_c = jax.jit(twice(checked))()
        (p_p, _), l_p = twice(plain)()
        np.testing.assert_array_equal(l_c, l_p)
        jrnn.testing.assert_trees_close(p_c, p_p, rtol=0.0)
        vmapped = jax.vmap(lambda p: checked(p, opt.init(p), b, jnp.zeros(H))[2]["loss"])
        out = vmapped(jax.tree.map(lambda a: jnp.stack([a, a]), params))   # two copies of the first call
        np.testing.assert_allclose(out, np.broadcast_to(l_p[0], out.shape), rtol=1e-6)


# ---- item 6: overflowing updates, learning rates, checkpoints ----------------------------------

@pytest.mark.parametrize("opt", [optax.chain(optax.adam(1.0), optax.scale(1e38), optax.scale(1e3)),
                                 optax.chain(optax.sgd(1e38), optax.scale(1e3)),
                                 optax.chain(optax.scale(1e38), optax.scale(1e38))],
                         ids=["adam*1e41", "sgd*1e41", "scale(1e38)^2"])
def test_guard_skips_a_step_whose_update_overflows(params, opt):
    # float32 params: the loss and gradients are finite, the update is not
    state = opt.init(params)
    step = jrnn.make_step(lm_loss, opt)
    with pytest.warns(RuntimeWarning, match="was skipped"):
        new, new_state, m, _ = step(params, state, _batch(), jnp.zeros(H))
    assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
    assert int(m["skipped"]) == 1
    for a, b in zip(jax.tree.leaves((new, new_state)), jax.tree.leaves((params, state))):
        np.testing.assert_array_equal(a, b)


def test_guard_skips_a_step_whose_optimizer_state_overflows(params):
    # Adagrad's accumulator at the float32 maximum: adding g^2 ~ 1e31 overflows it, while the
    # loss, the gradients, their norm and the update (g / sqrt(inf) = 0) all stay finite
    opt = optax.adagrad(0.1, initial_accumulator_value=float(np.finfo(np.float32).max))

    def big_loss(p, batch, h):
        loss, h = lm_loss(p, batch, h)
        return loss * 1e16, h

    step = jrnn.make_step(big_loss, opt)
    state = opt.init(params)
    with pytest.warns(RuntimeWarning, match="was skipped"):
        new, new_state, m, _ = step(params, state, _batch(), jnp.zeros(H))
    assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
    assert int(m["skipped"]) == 1
    for a, b in zip(jax.tree.leaves((new, new_state)), jax.tree.leaves((params, state))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [optim.sgd, optim.karpathy_adagrad, optim.adam, optim.rprop, optim.seed_rprop])
@pytest.mark.parametrize("lr", [1e39, 3.5e38, 1e-46])
def test_learning_rates_float32_cannot_hold_are_refused(make, lr):
    with pytest.raises(ValueError, match="float32"):
        make(lr)


def test_largest_float32_learning_rate_is_accepted():
    assert optim.check_learning_rate(1e38) == 1e38
    assert optim.check_learning_rate(np.float32(1e-45)) > 0


def test_checkpoint_refuses_a_nonfinite_state(tmp_path, params):
    good = {"params": params, "step_size": jnp.float32(1.0)}
    first = jrnn.checkpoint.save(tmp_path / "ck", good, step=10)
    before = first.read_bytes()
    for bad_value in (jnp.nan, jnp.inf, -jnp.inf):
        bad = {"params": params._replace(b_y=params.b_y.at[2].set(bad_value)), "step_size": jnp.float32(1.0)}
        with pytest.raises(ValueError, match=r"NaN/inf in \['params'\]\.b_y"):
            jrnn.checkpoint.save(tmp_path / "ck", bad, step=20)
    assert jrnn.checkpoint.list_checkpoints(tmp_path / "ck") == [first]
    assert first.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [first.name]   # no temp file either
    with pytest.raises(ValueError, match="NaN/inf"):
        jrnn.checkpoint.save(tmp_path / "new", {"x": jnp.array([1.0, jnp.nan])}, step=1)
    assert not (tmp_path / "new").exists()


CHARLM_TINY = ["--full", "--chars", "3000", "--hidden", "16", "--batch", "4", "--seq-len", "8", "--epochs", "1",
               "--checkpoint-every", "10", "--sample-len", "5", "--quiet"]


def test_charlm_refuses_an_overflowing_learning_rate_before_training(tmp_path):
    from experiments import charlm
    with pytest.raises(ValueError, match="float32"):
        charlm.main(CHARLM_TINY + ["--lr", "1e39", "--out", str(tmp_path / "run")])
    run = tmp_path / "run"                     # nothing trained, nothing saved
    assert not (run / "results.json").exists() and not jrnn.checkpoint.list_checkpoints(run / "checkpoints")


def test_charlm_records_skipped_steps_and_saves_only_finite_checkpoints(tmp_path, data_dir):
    from experiments import charlm
    charlm.main(CHARLM_TINY + ["--out", str(tmp_path / "run")])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metrics"]["skipped_steps"] == 0
    ckpts = jrnn.checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert ckpts
    with np.load(ckpts[-1]) as z:
        assert all(np.all(np.isfinite(z[k])) for k in z.files if k.startswith("leaf_") and z[k].dtype.kind == "f")


@pytest.mark.parametrize("cell", ["elman", "lstm"])
def test_an_id_out_of_range_under_plain_jit_projects_to_nan_not_to_another_row(cell):
    """jnp.take alone reads id -1 as row V-1: a finite, wrong input that no guard can see."""
    model = jrnn.lm.model(cell, vocab_size=V, hidden_size=H)
    layer = model.init(jax.random.key(0)).layers[0]
    project = jax.jit(lambda ids: model.cell.project(layer, ids))
    u = np.asarray(project(jnp.asarray([[0], [-1], [V], [V - 1]])))
    assert np.isnan(u[1]).all() and np.isnan(u[2]).all()
    assert np.isfinite(u[0]).all() and np.isfinite(u[3]).all()


# ---- the guard never fails silently forever: max_consecutive_skips -----------------------------

N_SKIPS = jrnn.train.DEFAULT_MAX_CONSECUTIVE_SKIPS


def _optax_ce_case():
    """Two classes, labels 1..2: optax's cross-entropy checks no range, so label 2 gives a NaN
    loss on every call (jrnn's check_ids cannot see it)."""
    p = elman.init(jax.random.key(0), vocab_size=2, hidden_size=4)

    def loss(params, batch, carry):
        logits, _ = elman.apply(params, batch[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean(), carry

    x = jnp.asarray([0, 1, 1, 0, 1])
    return p, loss, (x, x + 1)


def _scaled_loss(p, batch, h):
    """lm_loss times batch[2]: a NaN scale makes one batch non-finite."""
    x, y, scale = batch
    loss, h = lm_loss(p, (x, y), h)
    return loss * scale, h


def _record_skips(calls):
    """Run `calls` (a list of thunks) until one raises NonFiniteError: (the 1-based call that
    raised or None, the error, the RuntimeWarnings given after each call)."""
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, call in enumerate(calls, 1):
            try:
                call()
            except jrnn.train.NonFiniteError as e:
                seen.append(sum(issubclass(w.category, RuntimeWarning) for w in caught))
                return i, e, seen
            seen.append(sum(issubclass(w.category, RuntimeWarning) for w in caught))
    return None, None, seen


@pytest.mark.parametrize("make", ["step", "data_parallel"])
def test_guard_raises_after_n_skipped_steps_of_an_optax_loss_with_labels_out_of_range(make):
    p, loss, batch = _optax_ce_case()
    opt = optim.sgd(0.1)
    if make == "step":
        step = jrnn.make_step(loss, opt)
    else:
        step = jrnn.distributed.make_data_parallel_step(loss, opt, mesh=jrnn.distributed.batch_mesh(1), batch_axis=0)
    state = opt.init(p)
    raised_at, err, warned = _record_skips([lambda: step(p, state, batch)] * (3 * N_SKIPS))
    assert raised_at == N_SKIPS
    assert warned == [1] * N_SKIPS                 # one warning, at the first skipped call, none after
    msg = str(err)
    assert f"{N_SKIPS} consecutive steps were skipped" in msg
    for cause in ("labels out of range", "optax.softmax_cross_entropy_with_integer_labels", "learning rate too large",
                  "still those of the last good step", "max_consecutive_skips"):
        assert cause in msg, cause
    new_p, new_state, m, _ = err.state                 # what the call returned: the last good state
    assert int(m["skipped"]) == 1 and np.isnan(float(m["loss"]))
    jrnn.testing.assert_trees_close(new_p, p, rtol=0.0)
    jrnn.testing.assert_trees_close(new_state, state, rtol=0.0)
    # the count starts over after the error: a caller that handles it gets N more steps
    raised_again, _, warned = _record_skips([lambda: step(p, state, batch)] * (3 * N_SKIPS))
    assert raised_again == N_SKIPS and warned == [0] * N_SKIPS


def test_first_skipped_step_warns_naming_the_causes_and_the_limit():
    p, loss, batch = _optax_ce_case()
    opt = optim.sgd(0.1)
    step = jrnn.make_step(loss, opt, max_consecutive_skips=4)
    with pytest.warns(RuntimeWarning, match=r"make_step: training step 1 was skipped.*labels out of range.*"
                                            r"learning rate too large.*After 4 consecutive skipped steps"):
        step(p, opt.init(p), batch)


def test_max_consecutive_skips_none_trains_on_without_raising_or_warning():
    p, loss, batch = _optax_ce_case()
    opt = optim.sgd(0.1)
    step = jrnn.make_step(loss, opt, max_consecutive_skips=None)
    state = opt.init(p)
    raised_at, _, warned = _record_skips([lambda: step(p, state, batch)] * (3 * N_SKIPS))
    assert raised_at is None and warned == [0] * (3 * N_SKIPS)
    _, _, m, _ = step(p, state, batch)
    assert int(m["skipped"]) == 1                      # still skipped and reported, only not counted


def test_a_transient_nonfinite_batch_resets_the_count_of_skipped_steps(params):
    opt = optim.sgd(0.1)
    step = jrnn.make_step(_scaled_loss, opt, max_consecutive_skips=3)
    state, h = opt.init(params), jnp.zeros(H)
    x, y = _batch()
    good, bad = (x, y, jnp.asarray(1.0)), (x, y, jnp.asarray(jnp.nan))
    # two bad batches in a row, then a good one, again and again: never 3 in a row
    pattern = [bad, bad, good] * 4 + [bad, bad, bad]
    raised_at, err, warned = _record_skips([lambda b=b: step(params, state, b, h) for b in pattern])
    assert raised_at == len(pattern) and "3 consecutive" in str(err) and warned[0] == 1 and warned[-1] == 1


def test_multi_step_counts_its_inner_steps_toward_max_consecutive_skips():
    p, loss, (x, y) = _optax_ce_case()
    opt = optim.sgd(0.1)
    state = opt.init(p)
    K = 4
    bad = (jnp.stack([x] * K), jnp.stack([y] * K))
    multi = jrnn.make_multi_step(loss, opt)
    raised_at, err, warned = _record_skips([lambda: multi(p, state, bad, None)] * N_SKIPS)
    assert raised_at == -(-N_SKIPS // K)                      # 10 inner steps: during the 3rd call of 4
    assert f"{N_SKIPS} consecutive steps were skipped (the last at step {N_SKIPS})" in str(err)
    assert warned[0] == 1 and warned[-1] == 1
    # a run broken by a good inner step starts over; a run may span calls
    good_y = jnp.stack([x, x, x, x])
    mixed = (bad[0], good_y.at[3].set(y))                     # steps 1-3 finite, the 4th skipped
    multi = jrnn.make_multi_step(loss, opt, max_consecutive_skips=5)
    with pytest.warns(RuntimeWarning, match="training step 4 was skipped"):
        _, _, m, _ = multi(p, state, mixed, None)
    assert m["skipped"].tolist() == [0, 0, 0, 1]
    multi(p, state, mixed, None)                              # runs of 1: no error
    with pytest.raises(jrnn.train.NonFiniteError, match="the last at step 12"):
        multi(p, state, bad, None)                            # 1 + 4 = 5 in a row, at inner step 12


def test_a_step_called_inside_the_callers_jit_cannot_count_and_does_not_fail():
    p, loss, batch = _optax_ce_case()
    opt = optim.sgd(0.1)
    step = jrnn.make_step(loss, opt, check_ids=False, max_consecutive_skips=1)
    outer = jax.jit(lambda p, s: step(p, s, batch)[2]["skipped"])
    assert [int(outer(p, opt.init(p))) for _ in range(3)] == [1, 1, 1]   # traced metrics: nothing to count


@pytest.mark.parametrize("make", [jrnn.make_step, jrnn.make_multi_step, jrnn.distributed.make_data_parallel_step])
@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError),
                                        ("10", TypeError)])
def test_max_consecutive_skips_must_be_a_positive_integer_or_none(make, bad, error):
    with pytest.raises(error, match="max_consecutive_skips must be"):
        make(lm_loss, optim.sgd(0.1), max_consecutive_skips=bad)


def test_bad_step_counter_names_the_causes_and_its_own_limit():
    counter = jrnn.train.BadStepCounter(limit=2)
    counter.update(np.array([0, 1, 0]))
    with pytest.raises(jrnn.train.NonFiniteError, match=r"2 consecutive.*labels out of range.*BadStepCounter's limit"):
        counter.update(np.array([1, 1, 0]))
    assert (counter.step, counter.total) == (5, 3)


def test_minchar_max_bad_steps_is_the_one_limit_not_the_steps_own():
    """minchar counts skipped steps with its BadStepCounter (--max-bad-steps, saved in
    checkpoints); its steps are built with max_consecutive_skips=None, so a limit above the
    steps' default of 10 is the one that stops the run, with one error and no warning."""
    from experiments import minchar
    V = 8
    params = minchar.init(minchar.make_model("elman", V), jax.random.key(0))
    params = params._replace(b_y=params.b_y.at[0].set(jnp.nan))   # every step non-finite
    ids = np.arange(minchar.SEQ_LEN * 4 + 1) % V
    bad = jrnn.train.BadStepCounter(25)
    with pytest.raises(jrnn.train.NonFiniteError, match=r"25 consecutive steps.*BadStepCounter's limit"):
        minchar.train(params, ids, minchar.CALL_ITERS, bad=bad)
    assert bad.step == 25 and bad.total == 25


@pytest.mark.parametrize("multi", [False, True], ids=["step", "multi_step"])
def test_a_skipped_step_keeps_the_carry_and_a_carry_given_wider_than_returned_stays_wide(multi):
    """The guard freezes the carry with jrnn.rnn.freeze (the loops' one masking rule); a float32
    carry that loss_fn returns as bfloat16 comes back float32 on good and skipped steps alike, as
    a `jnp.where` gave it, so the K-step's scan keeps one carry type."""
    def loss(p, x, c):
        h = jnp.tanh(c + p["w"] * x)
        return jnp.sum(h ** 2), h.astype(jnp.bfloat16)

    p, opt, c0 = {"w": jnp.float32(0.5)}, optim.sgd(0.1), jnp.full((2,), 0.25, jnp.float32)
    xs = jnp.asarray([[1.0, 2.0], [jnp.nan, 1.0]], jnp.float32)          # the second batch is skipped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                  # the first skip's warning
        if multi:
            _, _, m, c = jrnn.make_multi_step(loss, opt)(p, opt.init(p), xs, c0)
            assert m["skipped"].tolist() == [0, 1]
            want = jnp.tanh(c0 + 0.5 * xs[0]).astype(jnp.bfloat16).astype(jnp.float32)
        else:
            step = jrnn.make_step(loss, opt)
            _, _, m, c = step(p, opt.init(p), xs[1], c0)
            assert int(m["skipped"]) == 1
            want = c0
    assert c.dtype == jnp.float32
    np.testing.assert_array_equal(c, want)


# ---- what the guard and the id checks cost: nothing that a plain jit or the good path pays for ----

def test_a_plain_jit_of_a_jrnn_loss_has_no_error_effect(params):
    """The id checks are added only while a jrnn step traces its checkified program. A
    `checkify.debug_check` left in a plain jit's program gave it an ErrorEffect, and a jitted
    function with an effect leaves JAX's C++ dispatch for a Python path on every call (the step
    built with check_ids=False measured slower than the checked one)."""
    x, y = _batch()
    jaxpr = jax.make_jaxpr(lambda p: lm_loss(p, (x, y), jnp.zeros(H))[0])(params)
    assert jaxpr.effects == set()


def test_id_checks_hold_after_the_same_loss_was_traced_under_a_plain_jit(params):
    """The checks are a tracing context, not a cached trace: a loss traced first without them
    (the user's own jit) still raises inside a step built afterwards."""
    x, y = _batch()
    jax.jit(lambda p, x, y: lm_loss(p, (x, y), jnp.zeros(H))[0])(params, x, y)
    opt = optim.sgd(0.1)
    step = jrnn.make_step(lm_loss, opt)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 8\), got min -1"):
        step(params, opt.init(params), (x.at[2].set(-1), y), jnp.zeros(H))


@pytest.mark.parametrize("make", [jrnn.make_step, jrnn.make_multi_step])
def test_guard_keeps_the_state_with_a_select_not_a_conditional_that_copies_it(params, make):
    """The guard keeps or replaces params and optimizer state with a select per leaf: a
    `lax.cond` made XLA's CPU backend copy every kept leaf into the conditional's own buffers on
    each step. The skipped step still returns the old state exactly (the tests above)."""
    opt = optim.sgd(0.1)
    x, y = _batch()
    batch = (x, y) if make is jrnn.make_step else (x[None], y[None])
    text = make(lm_loss, opt).lower(params, opt.init(params), batch, jnp.zeros(H)).as_text()
    assert "stablehlo.case" not in text and "stablehlo.if" not in text
