"""The cells with structured state Jacobians (issue 30): ParaGRU and ParaLSTM (elementwise
recurrence) and minGRU (linear in h, one associative scan).

Gradients against the float64 numpy oracle (`jrnn.bptt.cell_truncated`), the declared Jacobian
structure checked against `jax.jacfwd` of the step, minGRU's associative scan against the plain
scan of its step, and every feature (stacks, directions, reverse under masks, Remat, TBPTT,
dropout, Parallel, generate, a training step, a checkpoint) once per cell, at small sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jrnn
from jrnn import bptt, cells, checkpoint, lm, rnn
from jrnn.testing import assert_trees_close

RTOL = 1e-10
NAMES = ["paragru", "paralstm", "mingru"]
D, H, V = 6, 5, 6
MASKS = {"none": None, "right": np.r_[np.ones(7), np.zeros(4)], "holes": np.r_[1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1]}


def _noisy(tree, rng, scale=0.3):
    """`tree` plus Gaussian noise: nonzero peepholes and biases, so every term has a gradient."""
    return jax.tree.map(lambda a: a + scale * jnp.asarray(rng.randn(*a.shape), a.dtype), tree)


def _problem(name, T, seed=0, layers=1):
    """A float64 LM of `name` with noisy params, token inputs and targets `[T]`, a nonzero carry."""
    rng = np.random.RandomState(seed)
    model = lm.model(name, vocab_size=V, hidden_size=H, layers=layers)
    p = _noisy(model.init(jax.random.key(seed), jnp.float64), rng)
    x, y = rng.randint(0, V, T), rng.randint(0, V, T)
    carry = _noisy(model.zeros(p), rng, 0.5)
    return model, p, x, y, carry


def _cell_problem(name, seed=0, batch=()):
    """One cell's noisy float64 params (D -> H), a nonzero carry `[*batch, H]` and one step's input."""
    rng = np.random.RandomState(seed)
    cell = cells.get(name)
    p = _noisy(cell.init(jax.random.key(seed), D, H, jnp.float64), rng)
    carry = _noisy(cell.zeros(p, batch), rng, 0.5)
    u = cell.project(p, jnp.asarray(rng.randn(1, *batch, D)))[0]
    return cell, p, carry, u


# ---- gradients against the numpy oracle ---------------------------------------------------------

def _check_against_the_oracle(name, grad, k1, k2, seed):
    """value_and_grad of `model.loss(..., grad=grad)` (params and initial carry) equals
    `bptt.cell_truncated(name, ..., k1=k1, k2=k2)` to RTOL for every mask of MASKS."""
    model, p, x, y, carry = _problem(name, 11, seed=seed)
    names = bptt.CELLS[name][0]
    # one compile; the mask is an argument (all ones = no padding)
    loss = lambda p, c, m: model.loss(p, x, y, c, grad=grad, mask=m, reduction="sum")[0]
    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    c0 = tuple(np.asarray(a) for a in jax.tree.leaves(carry[0]))
    for mask in MASKS.values():
        value, (g, gc) = f(p, carry, np.ones(11) if mask is None else mask)
        ref_loss, ref, dc0 = bptt.cell_truncated(name, p.layers[0], p.w_hy, p.b_y, x, y, c0, k1=k1, k2=k2, mask=mask)
        np.testing.assert_allclose(float(value), ref_loss, rtol=RTOL)
        assert_trees_close(tuple(getattr(g.layers[0], k) for k in names), tuple(ref[k] for k in names), rtol=RTOL)
        assert_trees_close((g.w_hy, g.b_y), (ref["w_hy"], ref["b_y"]), rtol=RTOL)
        assert_trees_close(tuple(jax.tree.leaves(gc[0])), dc0, rtol=RTOL)


@pytest.mark.parametrize("name", NAMES)
def test_full_bptt_gradient_equals_the_numpy_oracle_with_holes_in_the_mask(name):
    _check_against_the_oracle(name, None, 11, 11, seed=len(name))


@pytest.mark.parametrize("name", NAMES)
def test_tbptt_gradient_equals_the_numpy_oracle_with_holes_in_the_mask(name):
    _check_against_the_oracle(name, jrnn.TBPTT(2, 5), 2, 5, seed=len(name) + 1)


# the Remat loss runs `step` where FullBPTT runs minGRU's associative scan: that cell by default
@pytest.mark.parametrize("name", [n if n == "mingru" else pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_remat_gradient_equals_the_numpy_oracle_with_holes_in_the_mask(name):
    _check_against_the_oracle(name, jrnn.Remat(), 11, 11, seed=len(name) + 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k1,k2", [(1, 3), (3, 3), (4, 10), (1, 11)])
def test_every_tbptt_window_equals_the_numpy_oracle(name, k1, k2):
    model, p, x, y, carry = _problem(name, 11, seed=k1 + 7 * k2)
    f = jax.jit(jax.grad(lambda p, m: model.loss(p, x, y, carry, grad=jrnn.TBPTT(k1, k2), mask=m,
                                                 reduction="sum")[0]))
    for mask in MASKS.values():
        g = f(p, np.ones(11) if mask is None else mask)
        c0 = tuple(np.asarray(a) for a in jax.tree.leaves(carry[0]))
        ref = bptt.cell_truncated(name, p.layers[0], p.w_hy, p.b_y, x, y, c0, k1=k1, k2=k2, mask=mask)[1]
        names = bptt.CELLS[name][0]
        assert_trees_close(tuple(getattr(g.layers[0], k) for k in names), tuple(ref[k] for k in names), rtol=RTOL)


@pytest.mark.parametrize("name", NAMES)
def test_the_oracle_gradient_equals_central_differences_of_the_oracle_loss(name):
    # the oracle checked on its own, in numpy only: its backward step against its forward
    _, p, x, y, carry = _problem(name, 6, seed=11)
    c0 = tuple(np.asarray(a) for a in jax.tree.leaves(carry[0]))
    layer = {k: np.asarray(getattr(p.layers[0], k)) for k in bptt.CELLS[name][0]}
    mask = np.r_[1, 0, 1, 1, 0, 1]

    def loss(params):
        cell = type("P", (), params)
        return bptt.cell_truncated(name, cell, p.w_hy, p.b_y, x, y, c0, k1=6, k2=6, mask=mask)[0]

    _, grads, _ = bptt.cell_truncated(name, type("P", (), layer), p.w_hy, p.b_y, x, y, c0, k1=6, k2=6, mask=mask)
    eps = 1e-6
    for k, w in layer.items():
        numeric = np.zeros_like(w)
        for i in np.ndindex(w.shape):
            up, down = dict(layer), dict(layer)
            up[k], down[k] = w.copy(), w.copy()
            up[k][i] += eps
            down[k][i] -= eps
            numeric[i] = (loss(up) - loss(down)) / (2 * eps)
        np.testing.assert_allclose(grads[k], numeric, rtol=1e-6, atol=1e-8, err_msg=k)


# ---- the declared Jacobian structure is true ----------------------------------------------------

def _carry_jacobian(cell, p, carry, u):
    """d carry_t / d carry_{t-1} of one step `[n, n]` over the flat carry (its leaves' [H] concatenated)."""
    flat, unravel = ravel_pytree(carry)
    return jax.jacfwd(lambda c: ravel_pytree(cell.step(p, unravel(c), u)[0])[0])(flat)


def _off_structure(J, k):
    """J's entries off the declared structure: k parts of H, nonzero only between the same unit."""
    units = np.arange(J.shape[0]) % (J.shape[0] // k)
    return np.asarray(J)[units[:, None] != units[None, :]]


@pytest.mark.parametrize("name,k", [("paragru", 1), ("paralstm", 2), ("mingru", 1)])
def test_the_declared_jacobian_structure_is_true(name, k):
    cell, p, carry, u = _cell_problem(name, seed=3)
    assert cell.jacobian == k
    J = _carry_jacobian(cell, p, carry, u)
    assert J.shape == (k * H, k * H)
    assert np.all(_off_structure(J, k) == 0.0)
    # the declared blocks are really there: every unit's k x k block is nonzero
    blocks = np.asarray(J).reshape(k, H, k, H)[:, np.arange(H), :, np.arange(H)]   # [H, k, k]
    assert np.all(np.abs(blocks).sum(axis=(1, 2)) > 0)
    if k == 2:   # h and c couple both ways: all four diagonal blocks are used
        assert np.all(np.abs(blocks) > 0)


def test_the_structure_check_catches_a_dense_cell():
    # the check has power: the dense GRU's Jacobian has entries off the diagonal
    cell, p, carry, u = _cell_problem("gru", seed=3)
    assert np.abs(_off_structure(_carry_jacobian(cell, p, carry, u), 1)).max() > 1e-3


# ---- minGRU: one associative scan, equal to the plain scan of its step ---------------------------

def _plain_scan(cell, p, us, h, mask, reverse):
    """`lax.scan` of `step` with rnn.run's masking: carry frozen and output 0 where the mask is 0."""
    def body(c, um):
        u, m = um
        new, out = cell.step(p, c, u)
        return jnp.where(m[..., None], new, c), jnp.where(m[..., None], out, 0.0)
    c, hs = jax.lax.scan(body, h, (us, mask), reverse=reverse)
    return hs, c


@pytest.mark.parametrize("reverse", [False, True])
def test_mingru_associative_scan_equals_the_plain_scan_of_its_step_with_masks(reverse):
    cell, p, h0, _ = _cell_problem("mingru", seed=5, batch=(3,))
    rng = np.random.RandomState(5)
    us = cell.project(p, jnp.asarray(rng.randn(9, 3, D)))
    w = jnp.asarray(rng.randn(9, 3, H))

    def both(run):
        """(hs, final carry) and the gradient of a function of both w.r.t. the inputs and h0."""
        f = lambda us, h, m: jnp.sum(w * run(us, h, m)[0]) + jnp.sum(jnp.sin(run(us, h, m)[1]))
        return jax.jit(lambda us, h, m: (run(us, h, m), jax.grad(f, (0, 1))(us, h, m)))

    assoc = both(lambda us, h, m: cell.scan(p, us, h, mask=m, reverse=reverse))
    plain = both(lambda us, h, m: _plain_scan(cell, p, us, h, m, reverse))
    right = np.arange(9)[:, None] < np.array([9, 4, 6])[None]
    for mask in (np.ones((9, 3), bool), right, rng.rand(9, 3) > 0.4):
        assert_trees_close(assoc(us, h0, mask), plain(us, h0, mask), rtol=1e-12)
    hs, _ = cell.scan(p, us, h0, reverse=reverse)   # no mask: every step real
    assert_trees_close(hs, plain(us, h0, np.ones((9, 3), bool))[0][0], rtol=1e-12)


def test_mingru_scan_is_one_associative_scan_with_no_sequential_loop():
    cell, p, h0, _ = _cell_problem("mingru", batch=(2,))
    us = jnp.zeros((16, 2, 2 * H))
    text = str(jax.make_jaxpr(lambda us: cell.scan(p, us, h0, mask=jnp.ones((16, 2), bool), reverse=True))(us))
    assert "scan[" not in text and "while[" not in text


# ---- every feature, once per cell --------------------------------------------------------------

# minGRU masks in its own scan by default; the others run rnn's masked step (their length-aware
# reverse is checked by the bidirectional test below)
@pytest.mark.parametrize("name", [n if n == "mingru" else pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
@pytest.mark.parametrize("reverse", [False, True])
def test_padding_never_changes_real_steps_and_reverse_is_length_aware(name, reverse):
    cell, lengths = cells.get(name), [4, 8, 1]
    p = _cell_problem(name)[1]
    x = np.random.RandomState(3).randn(8, 3, D)
    mask = np.arange(8)[:, None] < np.array(lengths)[None]
    hs, carry = rnn.run(cell, p, x, mask=mask, reverse=reverse)
    for b, n in enumerate(lengths):
        alone, final = rnn.run(cell, p, x[:n, b], reverse=reverse)
        np.testing.assert_allclose(hs[:n, b], alone, rtol=1e-12)
        assert_trees_close(jax.tree.map(lambda a: a[b], carry), final, rtol=1e-12)
        assert float(jnp.abs(hs[n:, b]).max(initial=0.0)) == 0.0
    if not reverse:   # reverse without a mask is the forward pass over the flipped sequence
        fwd, cf = rnn.run(cell, p, x[::-1].copy())
        rev, cr = rnn.run(cell, p, x, reverse=True)
        np.testing.assert_allclose(rev, fwd[::-1], rtol=1e-12)
        assert_trees_close(cr, cf, rtol=1e-12)


@pytest.mark.parametrize("name", [n if n == "paragru" else pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_two_layer_stack_and_bidirectional_equal_their_single_layers(name):
    cell = cells.get(name)
    p1, p2 = _cell_problem(name, seed=1)[1], cell.init(jax.random.key(2), H, H, jnp.float64)
    x = np.random.RandomState(2).randint(0, D, (8, 3))
    mask = np.arange(8)[:, None] < np.array([8, 5, 2])[None]
    top, (c1, c2) = rnn.stack(cell, (p1, p2), x, mask=mask)
    h1, d1 = rnn.run(cell, p1, x, mask=mask)
    h2, d2 = rnn.run(cell, p2, h1, mask=mask)
    np.testing.assert_allclose(top, h2, rtol=1e-12)
    assert_trees_close((c1, c2), (d1, d2), rtol=1e-12)
    pb = _cell_problem(name, seed=4)[1]
    both, _ = rnn.bidirectional(cell, p1, pb, x, mask=mask)
    np.testing.assert_allclose(both[..., :H], h1, rtol=1e-12)
    for b, n in enumerate([8, 5, 2]):   # the backward half: each sequence read from its own end
        back, _ = rnn.run(cell, pb, x[:n, b][::-1].copy())
        np.testing.assert_allclose(both[:n, b, H:], back[::-1], rtol=1e-12)


def test_padding_nan_features_leave_the_mingru_scan_gradient_finite():
    cell, p = cells.MINGRU, _cell_problem("mingru")[1]
    x = np.random.RandomState(4).randn(6, 2, D)
    mask = np.arange(6)[:, None] < np.array([6, 3])[None]
    x[3:, 1] = np.nan
    g = jax.jit(jax.grad(lambda p: jnp.sum(rnn.run(cell, p, x, mask=mask)[0] ** 2)))(p)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


# by default the 2 x 2 block cell only (the costliest solver compile); the others in the full suite
@pytest.mark.parametrize("name", [n if n == "mingru" else pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_parallel_states_and_gradients_equal_the_sequential_scan_with_masks(name):
    model, p, _, _, _ = _problem(name, 1, seed=6)
    rng = np.random.RandomState(6)
    x, y = rng.randint(0, V, (8, 2)), rng.randint(0, V, (8, 2))
    mask = np.r_[1, 1, 0, 1, 1, 1, 0, 0][:, None] * (np.arange(8)[:, None] < np.array([8, 5])[None])
    f = lambda grad: jax.value_and_grad(lambda p: model.loss(p, x, y, grad=grad, mask=mask)[0])(p)
    assert_trees_close(f(jrnn.Parallel("deer")), f(None), rtol=1e-8)


@pytest.mark.parametrize("name", [n if n == "paralstm" else pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_dropout_is_keyed_and_the_same_under_every_strategy(name):
    model, p, x, y, _ = _problem(name, 8, seed=7, layers=2)
    key = jax.random.key(1)
    loss = lambda grad, key=key, rate=0.5: float(model.loss(p, x, y, grad=grad, dropout=rate, key=key)[0])
    plain = loss(None)
    assert plain == loss(None) and plain != loss(None, jax.random.key(2)) and plain != loss(None, None, 0.0)
    np.testing.assert_allclose(loss(jrnn.Remat()), plain, rtol=1e-12)
    np.testing.assert_allclose(loss(jrnn.TBPTT(8, 8)), plain, rtol=1e-12)


@pytest.mark.parametrize("name", [n if n == "mingru" else pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_generate_reads_the_prime_and_feeds_back_what_it_samples(name):
    model, p, _, _, _ = _problem(name, 1, seed=8, layers=2)
    prime = np.array([1, 4, 2])
    ids, carry = jrnn.generate(model, p, jax.random.key(0), prime, 5)
    again, _ = jrnn.generate(model, p, jax.random.key(0), prime, 5)
    assert ids.shape == (5,) and np.array_equal(ids, again) and int(ids.min()) >= 0 and int(ids.max()) < V
    # the step-by-step sampler and the whole-sequence loop (minGRU's associative scan) agree
    _, want = model.hidden(p, np.r_[prime, np.asarray(ids)])
    assert_trees_close(carry, want, rtol=1e-12)


@pytest.mark.parametrize("name", [n if n == "paragru" else pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_one_training_step_is_the_sgd_update_of_the_loss_gradient(name):
    model, p, _, _, _ = _problem(name, 1, seed=9)
    rng = np.random.RandomState(9)
    x, y = rng.randint(0, V, (8, 2)), rng.randint(0, V, (8, 2))
    opt = optax.sgd(0.1)
    step = jrnn.make_step(lambda p, batch, c: model.loss(p, *batch, c), opt)
    new, _, metrics, carry = step(p, opt.init(p), (x, y), model.zeros(p, (2,)))
    (value, final), g = jax.value_and_grad(lambda p: model.loss(p, x, y), has_aux=True)(p)
    np.testing.assert_allclose(float(metrics["loss"]), float(value), rtol=1e-12)
    assert_trees_close(new, jax.tree.map(lambda a, d: a - 0.1 * d, p, g), rtol=1e-12)
    assert type(new.layers[0]) is cells.get(name).params
    assert_trees_close(carry, final, rtol=1e-12)


@pytest.mark.parametrize("name", [n if n == "paralstm" else pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_a_checkpoint_round_trip_gives_back_the_params_and_carry(name, tmp_path):
    model, p, _, _, carry = _problem(name, 1, seed=10)
    run = checkpoint.start_run(tmp_path)
    path = checkpoint.save(tmp_path, {"params": p, "carry": carry}, step=3, run_id=run)
    template = {"params": model.init(jax.random.key(0), jnp.float64), "carry": model.zeros(p)}
    back = checkpoint.load(path, template).state
    assert jax.tree.structure(back) == jax.tree.structure({"params": p, "carry": carry})
    jax.tree.map(np.testing.assert_array_equal, back, {"params": p, "carry": carry})


# ---- registry, inits and errors -----------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_each_cell_is_registered_by_name_and_inits_in_every_float_dtype(name):
    cell = cells.get(name)
    assert cells.CELLS[name] is cell and cell.name == name
    assert cell is getattr(cells, name.upper())
    for dtype in (jnp.float16, jnp.bfloat16, jnp.float32):
        p = cell.init(jax.random.key(0), 3, 4, dtype)
        assert {a.dtype for a in jax.tree.leaves(p)} == {jnp.dtype(dtype)}
        assert jax.tree.leaves(cell.zeros(p, (2,)))[0].shape == (2, 4)
    if name != "mingru":   # diagonal recurrent weights drawn in [-1, 1], nonzero
        u = np.asarray(cell.init(jax.random.key(0), 3, 16).u_h)
        assert u.shape == (48,) and np.all(np.abs(u) <= 1.0) and np.all(u != 0.0)


def test_params_of_another_cell_are_refused_naming_the_cell():
    x = np.zeros((4, 3))
    with pytest.raises(TypeError, match="paragru cell"):
        rnn.run(cells.PARAGRU, cells.GRU.init(jax.random.key(0), 3, 5), x)
    p = cells.PARALSTM.init(jax.random.key(0), 3, 5)
    with pytest.raises(ValueError, match=r"params\.p has shape \(15,\).*needs \(10,\)"):
        rnn.run(cells.PARALSTM, p._replace(p=jnp.zeros(15, jnp.float32)), x)
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        cells.MINGRU.init(jax.random.key(0), 3, 0)
