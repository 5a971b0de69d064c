"""One model value for every cell: the feature grid (masks, TBPTT windows, remat, reverse,
stacks) against the float64 numpy BPTT oracle (jrnn.bptt), and the model's contracts
(hashable/static, clear errors for params of another cell, TBPTT argument rules)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import bptt, cells, elman, lm, tbptt
from jrnn.testing import assert_trees_close

RTOL = 1e-10
CELL_NAMES = ["elman", "lstm", "gru"]
D, H, V = 6, 5, 6


def _problem(name, T, seed=0):
    """A float64 one-layer LM of `name` with nonzero biases, inputs, targets and a carry."""
    rng = np.random.RandomState(seed)
    model = lm.model(name, vocab_size=V, hidden_size=H)
    p = model.init(jax.random.key(seed), jnp.float64)
    p = jax.tree.map(lambda a: a + 0.3 * jnp.asarray(rng.randn(*a.shape)), p)
    x, y = rng.randint(0, V, T), rng.randint(0, V, T)
    h0 = 0.5 * rng.randn(H)
    carry = (cells.LSTMState(jnp.asarray(h0), jnp.asarray(0.5 * rng.randn(H))),) if name == "lstm" else (jnp.asarray(h0),)
    return model, p, x, y, carry


def _oracle(name, p, x, y, carry, *, k1, k2, mask=None):
    c0 = tuple(np.asarray(a) for a in jax.tree.leaves(carry[0]))
    return bptt.cell_truncated(name, p.layers[0], p.w_hy, p.b_y, x, y, c0, k1=k1, k2=k2, mask=mask)


def _compare(name, model, p, g, gc, ref, dc0):
    names = bptt.CELLS[name][0]
    assert_trees_close(tuple(getattr(g.layers[0], k) for k in names), tuple(ref[k] for k in names), rtol=RTOL)
    assert_trees_close((g.w_hy, g.b_y), (ref["w_hy"], ref["b_y"]), rtol=RTOL)
    assert_trees_close(tuple(jax.tree.leaves(gc[0])), dc0, rtol=RTOL)


MASKS = {"none": None, "left": np.r_[np.zeros(3), np.ones(8)], "right": np.r_[np.ones(7), np.zeros(4)],
         "holes": np.r_[1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1]}


# the default suite runs one k1 < k2 < T window per cell (every mask each); the full suite runs
# every window, k1 = k2 and k1 = k2 = T included, for every cell
TBPTT_FAST = {(1, 3, "elman"), (2, 5, "gru"), (4, 10, "lstm")}


@pytest.mark.parametrize("k1,k2,name", [
    pytest.param(k1, k2, name, marks=() if (k1, k2, name) in TBPTT_FAST else pytest.mark.slow)
    for k1, k2 in [(11, 11), (1, 3), (2, 5), (3, 3), (4, 10)] for name in CELL_NAMES])
def test_grad_equals_numpy_tbptt_for_every_cell_window_and_mask(name, k1, k2):
    model, p, x, y, carry = _problem(name, 11, seed=k1 + 7 * k2)
    # one compile per window layout; the mask is an argument (all ones = no padding)
    loss = lambda p, c, m: model.loss(p, x, y, c, grad=jrnn.TBPTT(k1, k2), mask=m, reduction="sum")[0]
    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    for mask in MASKS.values():
        value, (g, gc) = f(p, carry, np.ones(11) if mask is None else mask)
        ref_loss, ref, dc0 = _oracle(name, p, x, y, carry, k1=k1, k2=k2, mask=mask)
        np.testing.assert_allclose(float(value), ref_loss, rtol=RTOL)
        _compare(name, model, p, g, gc, ref, dc0)


@pytest.mark.parametrize("name", ["elman", pytest.param("lstm", marks=pytest.mark.slow),
                                  pytest.param("gru", marks=pytest.mark.slow)])
def test_remat_loss_equals_the_oracle_for_every_cell(name):
    model, p, x, y, carry = _problem(name, 11, seed=3)
    loss = lambda p, c, m: model.loss(p, x, y, c, mask=m, grad=jrnn.Remat(), reduction="sum")[0]
    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    for mask in (None, MASKS["right"], MASKS["holes"]):
        value, (g, gc) = f(p, carry, np.ones(11) if mask is None else mask)
        ref_loss, ref, dc0 = _oracle(name, p, x, y, carry, k1=11, k2=11, mask=mask)
        np.testing.assert_allclose(float(value), ref_loss, rtol=RTOL)
        _compare(name, model, p, g, gc, ref, dc0)


def test_elman_oracle_of_the_seeds_agrees_with_the_cell_oracle():
    # bptt.truncated (column layout, the seeds' derivation) and bptt.cell_truncated share no code
    model, p, x, y, carry = _problem("elman", 11, seed=5)
    flat = elman.ElmanParams(*p.layers[0], p.w_hy, p.b_y)
    for mask in MASKS.values():
        a = bptt.truncated(flat, x, y, carry[0], k1=2, k2=5, mask=mask)
        b = _oracle("elman", p, x, y, carry, k1=2, k2=5, mask=mask)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
        assert_trees_close(a[1], b[1], rtol=1e-12)
        assert_trees_close(a[2], b[2][0], rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", CELL_NAMES)
def test_batched_masked_tbptt_equals_the_sum_over_sequences(name):
    model, p, _, _, _ = _problem(name, 1, seed=2)
    rng = np.random.RandomState(4)
    x, y = rng.randint(0, V, (9, 3)), rng.randint(0, V, (9, 3))
    mask = np.arange(9)[:, None] < np.array([9, 4, 6])[None]
    g = jax.grad(lambda p: model.loss(p, x, y, grad=jrnn.TBPTT(2, 4), mask=mask, reduction="sum")[0])(p)
    parts = [_oracle(name, p, x[:, b], y[:, b], model.zeros(p), k1=2, k2=4, mask=mask[:, b])[1] for b in range(3)]
    total = {k: sum(q[k] for q in parts) for k in parts[0]}
    names = bptt.CELLS[name][0]
    assert_trees_close(tuple(getattr(g.layers[0], k) for k in names), tuple(total[k] for k in names), rtol=RTOL)


@pytest.mark.slow
def test_masked_tbptt_matches_the_untruncated_masked_loss_and_state():
    # issue 13.3: tbptt ignored the mask in the recurrence (left padding: 22.2777 vs 22.2524)
    rng = np.random.RandomState(0)
    params = elman.init(jax.random.key(0), vocab_size=9, hidden_size=8, scheme="normal", scale=0.5, dtype=jnp.float64)
    x, y = rng.randint(0, 9, (12, 3)), rng.randint(0, 9, (12, 3))
    left = np.arange(12)[:, None] >= np.array([0, 5, 9])[None]
    right = np.arange(12)[:, None] < np.array([12, 7, 3])[None]
    for mask in (left, right):
        full, h_full = elman.sequence_loss(params, x, y, mask=mask)
        for k1, k2 in [(12, 12), (2, 5), (4, 30)]:
            loss, h_T = elman.sequence_loss(params, x, y, mask=mask, grad=jrnn.TBPTT(k1, k2))
            np.testing.assert_allclose(float(loss), float(full), rtol=1e-12)
            np.testing.assert_allclose(h_T, h_full, rtol=1e-12)
    # the right-padded final state is each sequence's own last real state
    _, h_T = elman.sequence_loss(params, x, y, mask=right, grad=jrnn.TBPTT(2, 3))
    np.testing.assert_allclose(h_T[1], elman.hidden(params, x[:7, 1])[1], rtol=1e-12)


@pytest.mark.parametrize("k", [np.int64(2), pytest.param(np.int32(2), marks=pytest.mark.slow)])
def test_tbptt_accepts_numpy_integers(k):
    model, p, x, y, _ = _problem("gru", 8)
    a = model.loss(p, x, y, grad=jrnn.TBPTT(k, k))[0]
    b = model.loss(p, x, y, grad=jrnn.TBPTT(2, 2))[0]
    assert float(a) == float(b)


@pytest.mark.parametrize("T", [20, 28, 3])
def test_tbptt_argument_rules_hold_for_every_length(T):
    model, p, _, _, _ = _problem("elman", 1)
    x, y = np.zeros(T, np.int32), np.zeros(T, np.int32)
    with pytest.raises(ValueError, match="1 <= k1 <= k2"):
        model.loss(p, x, y, grad=jrnn.TBPTT(30, 25))        # k2 < k1, refused before the k >= T shortcut
    with pytest.raises(TypeError, match="k1 must be an int"):
        model.loss(p, x, y, grad=jrnn.TBPTT(True, 3))
    with pytest.raises(TypeError, match="k2 must be an int"):
        model.loss(p, x, y, grad=jrnn.TBPTT(1, 2.0))
    with pytest.raises(ValueError, match="1 <= k1"):
        model.loss(p, x, y, grad=jrnn.TBPTT(0, 3))


@pytest.mark.parametrize("k1,k2", [(1, 2), (40, 40)])
def test_tbptt_refuses_targets_shorter_or_longer_than_inputs(k1, k2):
    model, p, _, _, _ = _problem("lstm", 1)
    x = np.zeros((10, 2), np.int32)
    for bad in (np.zeros((9, 2), np.int32), np.zeros((11, 2), np.int32), np.zeros((10, 3), np.int32)):
        with pytest.raises(ValueError, match="targets must have the inputs' shape"):
            model.loss(p, x, bad, grad=jrnn.TBPTT(k1, k2))
        with pytest.raises(ValueError, match="targets must have the inputs' shape"):
            elman.sequence_loss(elman.init(jax.random.key(0), vocab_size=V, hidden_size=3), x, bad, grad=jrnn.TBPTT(k1, k2))


@pytest.mark.slow
def test_model_is_a_hashable_static_value_and_jit_vmap_grad_work():
    a = lm.model("lstm", vocab_size=7, hidden_size=4, layers=2)
    b = lm.model("lstm", vocab_size=7, hidden_size=4, layers=2)
    assert a == b and hash(a) == hash(b) and a != lm.model("gru", vocab_size=7, hidden_size=4, layers=2)
    assert elman.model(vocab_size=7, hidden_size=4) == elman.model(vocab_size=7, hidden_size=4)
    p = a.init(jax.random.key(0), jnp.float64)
    x = np.random.RandomState(0).randint(0, 7, (5, 3))
    f = jax.jit(lambda m, p, x: m.loss(p, x, x)[0], static_argnums=0)
    np.testing.assert_allclose(f(a, p, x), a.loss(p, x, x)[0], rtol=1e-12)
    per_seq = jax.vmap(lambda xb: a.loss(p, xb, xb, reduction="sum")[0], in_axes=1)(x)
    np.testing.assert_allclose(jnp.sum(per_seq), a.loss(p, x, x, reduction="sum")[0], rtol=1e-12)
    g = jax.grad(lambda p: f(a, p, x))(p)
    assert jax.tree.structure(g) == jax.tree.structure(p)


def test_the_seeds_elman_params_are_one_instance_of_the_model():
    params = elman.init(jax.random.key(1), vocab_size=7, hidden_size=5, scheme="uniform_fan_in", dtype=jnp.float64)
    model = elman.model(vocab_size=7, hidden_size=5)
    x = np.random.RandomState(1).randint(0, 7, (6, 2))
    logits, (h,) = model.apply(params, x)
    ref, h_ref = elman.apply(params, x)
    np.testing.assert_array_equal(logits, ref)
    np.testing.assert_array_equal(h, h_ref)
    # the same weights as generic Params give the same model
    same = jrnn.Params((cells.ElmanCellParams(params.w_xh, params.w_hh, params.b_h),), params.w_hy, params.b_y)
    np.testing.assert_array_equal(model.apply(same, x)[0], ref)


@pytest.mark.parametrize("given,want", [("lstm", "gru"), ("gru", "elman"), ("elman", "lstm")])
def test_params_of_another_cell_are_refused_naming_both(given, want):
    params = lm.model(given, vocab_size=5, hidden_size=4).init(jax.random.key(0))
    model = lm.model(want, vocab_size=5, hidden_size=4)
    x = np.zeros(3, np.int32)
    for call in (lambda: model.apply(params, x), lambda: model.loss(params, x, x, grad=jrnn.TBPTT(1, 2)),
                 lambda: model.loss(params, x, x, grad=jrnn.Remat()), lambda: jrnn.generate(model, params, jax.random.key(0), [1], 2)):
        with pytest.raises(TypeError, match=f"{type(params.layers[0]).__name__}.*'{want}'"):
            call()


def test_wrong_depth_or_size_and_bad_carries_are_clear_errors():
    model = lm.model("lstm", vocab_size=5, hidden_size=4, layers=2)
    p = model.init(jax.random.key(0))
    x = np.zeros((3, 2), np.int32)
    with pytest.raises(ValueError, match="params have 2 layers, the model has 1"):
        lm.model("lstm", vocab_size=5, hidden_size=4, layers=1).apply(p, x)
    # the first leaf whose shape the model's sizes do not give is named (it was the readout's)
    with pytest.raises(ValueError, match=r"^layers\[0\]\.w_i has shape \(5, 16\), the model needs \(5, 12\)$"):
        lm.model("lstm", vocab_size=5, hidden_size=3, layers=2).apply(p, x)
    with pytest.raises(TypeError, match="one carry per layer"):
        model.apply(p, x, model.zeros(p, (2,))[0])
    with pytest.raises(ValueError, match=r"must have shape \(2, 4\)"):
        model.apply(p, x, model.zeros(p, (3,)))
    # lists are converted: an LSTM layer's carry as [h, c] lists
    z = model.zeros(p, (2,))
    listed = [[np.asarray(a).tolist() for a in c] for c in z]
    np.testing.assert_array_equal(model.apply(p, x, listed)[0], model.apply(p, x, z)[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", CELL_NAMES)
def test_stacked_reverse_and_many_to_one_for_every_cell(name):
    model = lm.model(name, vocab_size=7, hidden_size=4, layers=2)
    p = model.init(jax.random.key(0), jnp.float64)
    x = np.random.RandomState(2).randint(0, 7, (6, 3))
    mask = np.arange(6)[:, None] < np.array([6, 2, 4])[None]
    logits, _ = model.apply(p, x, mask=mask)
    last, _ = model.apply_last(p, x, mask=mask)
    for b, n in enumerate([6, 2, 4]):
        alone, _ = model.apply(p, x[:n, b])
        np.testing.assert_allclose(logits[:n, b], alone, rtol=1e-12)
        np.testing.assert_allclose(last[b], alone[-1], rtol=1e-12)
        rev, _ = model.apply(p, x[:n, b], reverse=True)
        np.testing.assert_allclose(model.apply(p, x, mask=mask, reverse=True)[0][:n, b], rev, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_multi_step_and_data_parallel_step_train_every_cell_like_single_steps(name):
    model = lm.model(name, vocab_size=7, hidden_size=4)
    p = model.init(jax.random.key(0), jnp.float64)
    rng = np.random.RandomState(3)
    xs, ys = rng.randint(0, 7, (2, 6, 2)), rng.randint(0, 7, (2, 6, 2))
    loss = lambda p, batch, carry: model.loss(p, batch[0], batch[1], carry, grad=jrnn.TBPTT(2, 3))
    opt = jrnn.optim.adam(1e-2)
    step = jrnn.make_step(loss, opt)
    a, s, c = p, opt.init(p), model.zeros(p, (2,))
    for k in range(2):
        a, s, _, c = step(a, s, (xs[k], ys[k]), c)
    b, _, _, cb = jrnn.make_multi_step(loss, opt)(p, opt.init(p), (xs, ys), model.zeros(p, (2,)))
    assert_trees_close(b, a, rtol=1e-12)
    assert_trees_close(cb, c, rtol=1e-12)
    mesh = jrnn.distributed.batch_mesh(2, jax.devices()[:1])
    d, _, _, _ = jrnn.distributed.make_data_parallel_step(loss, opt, mesh=mesh)(p, opt.init(p), (xs[0], ys[0]), model.zeros(p, (2,)))
    a1, _, _, _ = step(p, opt.init(p), (xs[0], ys[0]), model.zeros(p, (2,)))
    assert_trees_close(d, a1, rtol=1e-12)


def test_checkpoint_round_trip_of_a_gated_model(tmp_path):
    model = lm.model("lstm", vocab_size=5, hidden_size=3, layers=2)
    p = model.init(jax.random.key(0))
    state = {"params": p, "h": model.zeros(p, (2,))}
    jrnn.checkpoint.save(tmp_path, state, step=10)
    back = jrnn.checkpoint.load_latest(tmp_path, state).state
    assert_trees_close(back, state, rtol=0)
    assert isinstance(back["params"].layers[0], cells.LSTMParams)


def test_windows_never_reach_before_the_chunk():
    times, in_block = tbptt.windows(7, 3, 5)
    assert times.shape == (5, 3) and bool((times[:, in_block.any(0)] <= 6).all())
    # losses of block b are only its own steps; padding before step 0 has no loss
    assert in_block.sum() == 7


def test_a_compute_dtype_that_is_not_a_float_dtype_is_a_type_error_before_tracing():
    """compute_dtype=jnp.int32 (or a string that names no float dtype) is refused on every loss
    path (was a scan carry-type error deep in JAX); a float dtype's name is taken."""
    model = lm.model("gru", vocab_size=5, hidden_size=4, layers=2)
    p = model.init(jax.random.key(0))
    x = np.zeros((3, 2), np.int32)
    for dt in (jnp.int32, "int8", "nope"):
        for kw in ({}, {"grad": jrnn.Remat()}, {"grad": jrnn.TBPTT(1, 2)}):
            with pytest.raises(TypeError, match="compute_dtype must be a float dtype"):
                model.loss(p, x, x, compute_dtype=dt, **kw)
    assert jrnn.model._compute(p, p.layers, "bfloat16")[0].w_hy.dtype == jnp.bfloat16


def test_a_transposed_mask_over_features_is_a_value_error_naming_the_mask():
    """mask [B, T] for features [T, B, D]: a ValueError naming the mask's shape on every path
    (was a broadcasting error inside the padding's `where` on apply / the plain loss)."""
    model = jrnn.model.make(cells.GRU, input_size=3, hidden_size=4, output_size=2)
    p = model.init(jax.random.key(0))
    x, y, mask = np.zeros((5, 4, 3), np.float32), np.zeros((5, 4), np.int32), np.ones((4, 5))
    for call in (lambda: model.apply(p, x, mask=mask), lambda: model.apply_last(p, x, mask=mask),
                 lambda: model.loss(p, x, y, mask=mask), lambda: model.loss(p, x, y, mask=mask, grad=jrnn.Remat())):
        with pytest.raises(ValueError, match=r"mask must have shape \(5, 4\) \(\[T, \.\.\.\]\), got \(4, 5\)"):
            call()


def test_a_mask_of_other_values_than_0_1_is_refused_on_every_path_before_the_forward():
    """A mask holding 0.5, NaN or -1 is a ValueError from apply, apply_last, rnn.run and every
    loss (the plain loss refused it after the forward pass; apply, rnn.run, the remat loss and
    TBPTT read 0.5 and NaN as real steps silently); float 0/1 masks are taken."""
    model = lm.model("gru", vocab_size=5, hidden_size=4, layers=2)
    p = model.init(jax.random.key(0))
    x = np.zeros((3, 2), np.int32)
    for bad in (0.5, np.nan, -1.0):
        mask = np.array([[1.0, bad]] * 3)
        for call in (lambda: model.apply(p, x, mask=mask), lambda: model.apply_last(p, x, mask=mask),
                     lambda: jrnn.rnn.run(cells.GRU, p.layers[0], x, mask=mask),
                     lambda: model.loss(p, x, x, mask=mask, grad=jrnn.Remat()),
                     lambda: model.loss(p, x, x, mask=mask, grad=jrnn.TBPTT(1, 2))):
            with pytest.raises(ValueError, match="mask must hold only 0/1"):
                call()
    ok = np.array([[1.0, 0.0]] * 3)
    np.testing.assert_array_equal(model.apply(p, x, mask=ok)[0], model.apply(p, x, mask=ok.astype(bool))[0])


@pytest.mark.parametrize("kw", [{"grad": jrnn.TBPTT(1, 2)}, pytest.param({"grad": jrnn.Remat()}, marks=pytest.mark.slow)])
def test_a_bfloat16_carry_into_float32_params_works_on_the_per_step_loss_paths(kw):
    """The remat loss and TBPTT step the cells themselves (not through rnn.run): a bfloat16
    carry into float32 params runs as the same carry cast by hand (was a scan carry-type error)."""
    model = lm.model("lstm", vocab_size=5, hidden_size=4)
    p = model.init(jax.random.key(0))
    x = np.array([[0, 1], [2, 3], [4, 0]])
    c = jax.tree.map(lambda a: a + 0.5, model.zeros(p, (2,)))
    narrow = jax.tree.map(lambda a: a.astype(jnp.bfloat16), c)
    got = model.loss(p, x, x, narrow, **kw)
    assert got[0].dtype == jnp.float32
    assert_trees_close(got, model.loss(p, x, x, jax.tree.map(lambda a: a.astype(jnp.float32), narrow), **kw), rtol=0)


@pytest.mark.parametrize("kw", [{}, pytest.param({"grad": jrnn.Remat()}, marks=pytest.mark.slow),
                                pytest.param({"grad": jrnn.TBPTT(2, 2)}, marks=pytest.mark.slow)])
def test_nested_lists_of_ids_and_targets_give_the_numpy_arrays_loss(kw):
    """rnn.check_input_array reads a nested list as numpy does; the loss paths did not (batch_shape
    and the loss's gather raised JAX's "Cannot determine dtype of [[...]]")."""
    lm_ = lm.model("lstm", vocab_size=7, hidden_size=4, layers=2)
    p = lm_.init(jax.random.key(0), jnp.float64)
    rng = np.random.RandomState(0)
    ids, y = rng.randint(0, 7, (5, 3)), rng.randint(0, 7, (5, 3))
    want = lm_.loss(p, ids, y, **kw)
    assert_trees_close(lm_.loss(p, ids.tolist(), y.tolist(), **kw), want, rtol=0)
    assert_trees_close(lm_.hidden(p, ids[:, 0].tolist()), lm_.hidden(p, ids[:, 0]), rtol=0)
    with pytest.raises(ValueError, match="targets must have the inputs' shape"):
        lm_.loss(p, ids.tolist(), y[:-1].tolist(), **kw)


def test_reverse_and_remat_take_bools_only_like_bidirectional():
    """reverse="False" ran the layers backwards (a truthy string) and remat=1 passed; now a
    TypeError naming the argument on every entry point, as `bidirectional` gets. numpy bools
    are bools."""
    model = lm.model("gru", vocab_size=5, hidden_size=3, layers=2)
    p = model.init(jax.random.key(0))
    ids = np.random.RandomState(0).randint(0, 5, (4, 2))
    layer = jrnn.model.layer_params(model, p)[0]
    for bad in ("False", 1, 0, None):
        for name, call in [("reverse", lambda v: model.hidden(p, ids, reverse=v)),
                           ("reverse", lambda v: jrnn.rnn.run(cells.GRU, layer, ids, reverse=v)),
                           ("reverse", lambda v: jrnn.rnn.stack(cells.GRU, (layer,), ids, reverse=v)),
                           ("remat", lambda v: model.loss(p, ids, ids, remat=v)),
                           ("remat", lambda v: jrnn.rnn.run(cells.GRU, layer, ids, remat=v))]:
            if bad is None and name == "remat":
                continue   # the deprecated keyword's None is "not given"
            with pytest.raises(TypeError, match=f"{name} must be a bool, got {type(bad).__name__}"):
                call(bad)
    assert_trees_close(model.hidden(p, ids, reverse=np.True_), model.hidden(p, ids, reverse=True), rtol=0)
    with pytest.warns(DeprecationWarning, match="remat= is deprecated"):
        old = model.loss(p, ids, ids, remat=np.False_)
    assert_trees_close(old, model.loss(p, ids, ids), rtol=0)
