"""Jitted training steps, the seeds' optimizer chains, carried state and the NaN guard."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn import elman, optim
from jrnn.testing import assert_trees_close


def lm_loss(params, batch, h):
    x, y = batch
    return elman.sequence_loss(params, x, y, h, grad=jrnn.TBPTT(x.shape[0], x.shape[0]), reduction="sum")


@pytest.fixture
def setup():
    params = elman.init(jax.random.key(1), vocab_size=8, hidden_size=10, scheme="normal", scale=0.1,
                        dtype=jnp.float64)
    rng = np.random.RandomState(0)
    text = rng.randint(0, 8, size=200)
    return params, text


def test_step_compiles_once_across_batches(setup, backend_compiles):
    params, text = setup
    opt = optim.karpathy_adagrad(0.1)
    step = jrnn.make_step(lm_loss, opt)
    state, h = opt.init(params), jnp.zeros(10)
    batch = lambda i: (jnp.asarray(text[i * 25:(i + 1) * 25]), jnp.asarray(text[i * 25 + 1:(i + 1) * 25 + 1]))
    params, state, metrics, h = step(params, state, batch(0), h)
    assert backend_compiles, "the first call compiles"
    backend_compiles.clear()
    for i in range(1, 5):
        params, state, metrics, h = step(params, state, batch(i), h)
    assert backend_compiles == [], f"{len(backend_compiles)} recompilation(s) after the first batch"


def test_karpathy_adagrad_matches_min_char_rnn_update(setup):
    params, text = setup
    opt = optim.karpathy_adagrad(0.1)
    step = jrnn.make_step(lm_loss, opt)
    state, h = opt.init(params), jnp.zeros(10)
    # numpy re-implementation of min-char-rnn's update (seed 003b), gradients from jrnn.bptt
    p = {k: np.asarray(v).copy() for k, v in params._asdict().items()}
    mem = {k: np.zeros_like(v) for k, v in p.items()}
    hprev = np.zeros(10)
    for i in range(3):
        xi, yi = text[25 * i:25 * i + 25], text[25 * i + 1:25 * i + 26]
        loss, grads, _ = jrnn.bptt.many_to_many(elman.ElmanParams(**p), xi, yi, hprev)
        hprev = jrnn.bptt.forward(elman.ElmanParams(**p), xi, hprev)[1][-1]
        for k in p:
            d = np.clip(grads[k], -5, 5)             # np.clip(dparam, -5, 5, out=dparam)
            mem[k] += d * d                          # mem += dparam * dparam
            p[k] += -0.1 * d / np.sqrt(mem[k] + 1e-8)  # adagrad update
        params, state, metrics, h = step(params, state, (jnp.asarray(xi), jnp.asarray(yi)), h)
        np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-12)
    assert_trees_close(params, elman.ElmanParams(**p), rtol=1e-10)
    np.testing.assert_allclose(h, hprev, rtol=1e-10)


def test_carried_state_equals_one_long_forward(setup):
    params, text = setup
    x = text[:100]
    _, h_full = elman.apply(params, x)
    h = None
    for c in range(4):
        _, h = elman.apply(params, x[25 * c:25 * (c + 1)], h)
    np.testing.assert_allclose(h, h_full, rtol=1e-12)


def test_nonfinite_step_never_changes_params(setup):
    params, text = setup
    opt = optim.sgd(0.1)

    def loss_fn(p, batch, h):
        x, y, scale = batch
        loss, h = lm_loss(p, (x, y), h)
        return loss * scale, h

    step = jrnn.make_step(loss_fn, opt)
    state, h = opt.init(params), jnp.zeros(10)
    x, y = jnp.asarray(text[:25]), jnp.asarray(text[1:26])
    for bad in (jnp.nan, jnp.inf):
        with warnings.catch_warnings():   # the first skipped step's RuntimeWarning (tests/test_guard.py)
            warnings.simplefilter("ignore", RuntimeWarning)
            new, new_state, m, new_h = step(params, state, (x, y, jnp.asarray(bad)), h)
        assert int(m["skipped"]) == 1
        assert all(np.array_equal(a, b) for a, b in zip(new, params))
        np.testing.assert_array_equal(new_h, h)
    new, _, m, _ = step(params, state, (x, y, jnp.asarray(1.0)), h)
    assert int(m["skipped"]) == 0 and not np.array_equal(new.w_hh, params.w_hh)


def test_multi_step_equals_repeated_single_steps(setup):
    params, text = setup
    opt = optim.adam(1e-2, clip_norm=1.0)
    xs = jnp.asarray(text[:100].reshape(4, 25))
    ys = jnp.asarray(text[1:101].reshape(4, 25))
    step, multi = jrnn.make_step(lm_loss, opt), jrnn.make_multi_step(lm_loss, opt)
    p1, s1, h1 = params, opt.init(params), jnp.zeros(10)
    losses_1 = []
    for k in range(4):
        p1, s1, m, h1 = step(p1, s1, (xs[k], ys[k]), h1)
        losses_1.append(float(m["loss"]))
    p2, s2, m2, h2 = multi(params, opt.init(params), (xs, ys), jnp.zeros(10))
    np.testing.assert_allclose(m2["loss"], losses_1, rtol=1e-12)
    assert_trees_close(p2, p1, rtol=1e-12)
    np.testing.assert_allclose(h2, h1, rtol=1e-12)


@pytest.mark.parametrize("data_parallel", [False, True])
def test_multi_step_without_a_first_carry_names_the_carry_instead_of_a_scan_error(setup, data_parallel):
    """lm_loss returns h_T for h = None: the K-step cannot thread None into an array."""
    params, text = setup
    opt = optim.sgd(0.1)
    make = jrnn.distributed.make_data_parallel_step if data_parallel else jrnn.make_multi_step
    step = make(lm_loss, opt, multi_step=True) if data_parallel else make(lm_loss, opt)
    xs = jnp.asarray(text[:100].reshape(4, 25, 1))
    with pytest.raises(ValueError, match=r"threads the carry through its K steps.*PyTreeDef\(None\)"):
        step(params, opt.init(params), (xs, xs), None)
    _, _, m, _ = step(params, opt.init(params), (xs, xs), jnp.zeros((1, 10)))   # with one: trains
    assert m["loss"].shape == (4,) and np.all(np.isfinite(m["loss"]))


@pytest.mark.parametrize("leaf", [np.int64(3), np.arange(5)], ids=["numpy scalar", "1-D"])
def test_data_parallel_step_refuses_a_batch_leaf_without_its_batch_axis(setup, leaf):
    params, _ = setup
    opt = optim.sgd(0.1)
    step = jrnn.distributed.make_data_parallel_step(lm_loss, opt)
    with pytest.raises(ValueError, match="has no batch axis 1 to split"):
        step(params, opt.init(params), (leaf, leaf), None)


def test_seed_rprop_follows_the_seed_rule():
    g1, g2 = jnp.array([1.0, -2.0, 0.5]), jnp.array([3.0, 1.0, -1.0])
    opt = optim.seed_rprop(0.01)
    state = opt.init(g1)
    u1, state = opt.update(g1, state)
    np.testing.assert_allclose(u1, -0.01 * np.array([1.2, 0.5, 1.2]) * g1)  # prev grad starts at ones
    u2, state = opt.update(g2, state)
    np.testing.assert_allclose(u2, -0.01 * np.array([1.44, 0.25, 0.6]) * g2)


@pytest.mark.parametrize("make", [optim.sgd, optim.karpathy_adagrad, optim.adam, optim.rprop, optim.seed_rprop])
@pytest.mark.parametrize("lr", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_learning_rates_raise(make, lr):
    with pytest.raises(ValueError, match="learning rate"):
        make(lr)


@pytest.mark.parametrize("opt", [optim.sgd(0.05), optim.karpathy_adagrad(0.1), optim.rprop(1e-2)] + [
    pytest.param(o, marks=pytest.mark.slow) for o in [optim.adam(1e-2), optim.seed_rprop(0.01),
                                                      optim.with_clipping(optax.sgd(0.05), clip_value=1.0, clip_norm=5.0)]])
def test_every_optimizer_lowers_the_loss(setup, opt):
    params, text = setup
    x, y = jnp.asarray(text[:25]), jnp.asarray(text[1:26])
    step = jrnn.make_step(lm_loss, opt)
    state = opt.init(params)
    first = None
    for _ in range(30):
        params, state, m, _ = step(params, state, (x, y), jnp.zeros(10))
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.8 * first
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in params)


# ---- training precision ------------------------------------------------------------------------

def _dot_precisions(lowered) -> list:
    """The precision of every dot product in a lowered program (StableHLO text)."""
    import re
    text = lowered.as_text()
    found = re.findall(r"stablehlo\.dot_general[^\n]*?precision = \[(\w+), (\w+)\]", text)
    assert len(found) == text.count("stablehlo.dot_general") > 0
    return found


def _f32_setup():
    params = elman.init(jax.random.key(0), vocab_size=7, hidden_size=5)           # float32
    x = jnp.asarray(np.random.RandomState(0).randint(0, 7, (6, 2)), jnp.int32)

    def loss(p, batch, carry):
        logits, _ = elman.apply(p, batch[0])
        return jrnn.losses.softmax_cross_entropy(logits, batch[1]), carry
    return params, x, loss


@pytest.mark.parametrize("precision, expected", [("float32", "HIGHEST"), ("tensorfloat32", "HIGH"),
                                                 ("bfloat16", "DEFAULT"), (None, "DEFAULT")])
def test_step_precision_reaches_every_dot_forward_and_backward(precision, expected):
    """The lowered step (forward, backward through the scan, readout, update) asks every dot
    product for the requested precision; the default is full float32."""
    params, x, loss = _f32_setup()
    opt = optim.adam(1e-3)
    for build in (jrnn.make_step, jrnn.make_multi_step):
        batch = (x, x) if build is jrnn.make_step else (x[None], x[None])
        step = build(loss, opt, precision=precision)
        assert set(_dot_precisions(step.lower(params, opt.init(params), batch))) == {(expected, expected)}
    default = jrnn.make_step(loss, opt).lower(params, opt.init(params), (x, x))
    assert set(_dot_precisions(default)) == {("HIGHEST", "HIGHEST")}


def test_step_precision_overrides_a_surrounding_jax_default_and_none_inherits_it():
    params, x, loss = _f32_setup()
    opt = optim.sgd(0.1)
    with jax.default_matmul_precision("tensorfloat32"):
        full = jrnn.make_step(loss, opt, precision="float32").lower(params, opt.init(params), (x, x))
        inherit = jrnn.make_step(loss, opt, precision=None).lower(params, opt.init(params), (x, x))
    assert set(_dot_precisions(full)) == {("HIGHEST", "HIGHEST")}
    assert set(_dot_precisions(inherit)) == {("HIGH", "HIGH")}


def test_data_parallel_step_takes_precision_and_bad_precisions_are_refused():
    params, x, loss = _f32_setup()
    opt = optim.sgd(0.1)
    mesh = jrnn.distributed.batch_mesh(2, jax.devices()[:1])
    step = jrnn.distributed.make_data_parallel_step(loss, opt, mesh=mesh, batch_axis=1, precision="float32")
    p1, _, m1, _ = step(params, opt.init(params), (x, x))
    p2, _, m2, _ = jrnn.make_step(loss, opt, precision=None)(params, opt.init(params), (x, x))
    assert_trees_close(p1, p2, rtol=1e-6)          # a CPU computes float32 either way
    for bad in ("highest", "fp32", 32, "FLOAT32"):
        for build in (jrnn.make_step, jrnn.make_multi_step):
            with pytest.raises(ValueError, match="precision"):
                build(loss, opt, precision=bad)
        with pytest.raises(ValueError, match="precision"):
            jrnn.distributed.make_data_parallel_step(loss, opt, mesh=mesh, precision=bad)


@pytest.mark.parametrize("make", ["step", "multi_step", "data_parallel"])
def test_int64_ids_that_jax_would_wrap_to_int32_are_refused_before_the_step(make):
    """With jax_enable_x64 off, JAX narrows int64 inputs to int32 by wrapping: id 2**32 + 1 would
    arrive as 1, in range, and train on row 1. The steps refuse it on the host first; int64 ids
    that fit still train."""
    with jax.enable_x64(False):
        params = elman.init(jax.random.key(1), vocab_size=8, hidden_size=10, scheme="normal", scale=0.1)
        opt = optim.sgd(0.1)
        build = {"step": jrnn.make_step, "multi_step": jrnn.make_multi_step,
                 "data_parallel": jrnn.distributed.make_data_parallel_step}[make]
        step = build(lm_loss, opt)
        shape = (2, 5, 1) if make == "multi_step" else (5, 1)
        good = np.ones(shape, np.int64)
        bad = good.copy()
        bad.flat[3] = 2 ** 32 + 1
        h = jnp.zeros((1, 10), jnp.float32)
        with pytest.raises(ValueError, match=r"int64 values 1\.\.4294967297 do not fit int32"):
            step(params, opt.init(params), (bad, good), h)
        _, _, m, _ = step(params, opt.init(params), (good, good), h)
        assert np.all(np.isfinite(m["loss"])) and not np.any(m["skipped"])


# ---- the steps take every carry the model takes ------------------------------------------------

def test_steps_take_a_list_or_plain_tuple_carry_as_the_model_does():
    """`model.loss` takes a list carry, or an LSTM layer's plain (h, c); it returns its own
    tuple of LSTMState, which the guard's select and the K-step's scan must accept."""
    model = jrnn.model.make(jrnn.cells.get("lstm"), input_size=5, hidden_size=3, output_size=5)
    p = model.init(jax.random.key(2), jnp.float64)
    rng = np.random.RandomState(4)
    x, y = rng.randint(0, 5, (6, 2)), rng.randint(0, 5, (6, 2))                  # [T=6, B=2]
    (zero,) = model.zeros(p, (2,))
    c0 = (zero._replace(h=zero.h + 0.25, c=zero.c - 0.5),)                     # h and c told apart

    def loss(params, batch, carry):
        x, y, scale = batch
        loss, carry = model.loss(params, x, y, carry)
        return loss * scale, carry

    opt = optim.sgd(0.1)
    step, multi = jrnn.make_step(loss, opt), jrnn.make_multi_step(loss, opt)
    expected_carry = jax.jit(lambda p, c: model.loss(p, x, y, c)[1])(p, c0)
    trained = []
    one = jnp.ones(())
    nan = one * np.nan                  # not weakly typed: the same program as `one`
    for given in ([c0[0]], (tuple(c0[0]),)):
        with warnings.catch_warnings():   # the skipped steps' RuntimeWarning (tests/test_guard.py)
            warnings.simplefilter("ignore", RuntimeWarning)
            for run, stacked in ((step, lambda b: b), (multi, lambda b: jax.tree.map(lambda a: a[None], b))):
                new_p, _, _, new_c = run(p, opt.init(p), stacked((x, y, one)), given)
                _, _, m, kept = run(p, opt.init(p), stacked((x, y, nan)), given)
                for c, want in ((new_c, expected_carry), (kept, c0)):   # a skipped step keeps the given carry
                    assert jax.tree.structure(c) == jax.tree.structure(c0)   # the model's canonical carry
                    assert_trees_close(c, want, rtol=1e-12)
                trained.append(new_p)
                assert np.asarray(m["skipped"]).tolist() in (1, [1])
    assert not np.allclose(trained[0].layers[0].w_h, p.layers[0].w_h)
    for other in trained[1:]:   # one step from c0, whichever form and step took it
        assert_trees_close(other, trained[0], rtol=1e-12)


def test_guard_names_a_loss_that_returns_another_carry_than_it_takes():
    params = elman.init(jax.random.key(1), vocab_size=8, hidden_size=10)
    opt = optim.sgd(0.1)
    x = jnp.arange(5) % 8

    def drops_the_carry(p, batch, carry):
        return lm_loss(p, batch, None)[0], (carry, carry)          # two leaves for one

    with pytest.raises(ValueError, match="must return a carry with the same leaves and shapes as it takes"):
        jrnn.make_step(drops_the_carry, opt)(params, opt.init(params), (x, x), jnp.zeros(10))


@pytest.mark.parametrize("make", [jrnn.make_step, jrnn.make_multi_step, jrnn.distributed.make_data_parallel_step])
def test_step_builders_name_a_loss_fn_that_is_not_callable_and_an_optimizer_passed_uncalled(make):
    """`optax.sgd` passed without its learning rate built a step whose first call failed inside the
    trace ("'function' object has no attribute 'update'"); a loss_fn of 42, "Expected a callable value"."""
    loss = lambda p, b, c: (jnp.sum(p * b), c)
    with pytest.raises(TypeError, match=r"^loss_fn must be a function \(params, batch, carry\) -> \(loss, new_carry\)"):
        make(42, optim.sgd(0.1))
    with pytest.raises(TypeError, match=r"^optimizer must be an optax GradientTransformation.*got function sgd: "
                                        r"call it first, e.g. sgd\(learning_rate\)"):
        make(loss, optax.sgd)
    with pytest.raises(TypeError, match=r"^optimizer must be an optax GradientTransformation.*got str$"):
        make(loss, "sgd")


def test_a_loss_fn_that_returns_no_carry_or_a_non_scalar_loss_is_named_on_the_first_call():
    p, opt = jnp.ones(3), optim.sgd(0.1)
    x = jnp.arange(3.0)
    with pytest.raises(TypeError, match=r"^loss_fn must return a pair \(loss, new_carry\), got an array of shape "
                                        r"\(\); a loss without a carry returns \(loss, None\)"):
        jrnn.make_step(lambda p, b, c: jnp.sum(p * b), opt)(p, opt.init(p), x)
    with pytest.raises(TypeError, match=r"^loss_fn must return a scalar loss, got shape \(3,\)"):
        jrnn.make_step(lambda p, b, c: (p * b, c), opt)(p, opt.init(p), x)
    _, _, m, _ = jrnn.make_step(lambda p, b, c: (jnp.sum(p * b), c), opt)(p, opt.init(p), x)
    assert float(m["loss"]) == 3.0
