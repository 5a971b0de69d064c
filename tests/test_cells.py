"""LSTM/GRU/Elman cells behind one interface: PyTorch equivalence, stacks, directions, masks,
dropout and a bfloat16 compute dtype."""

import ast
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import cells, lm, optim, rnn
from jrnn.testing import assert_trees_close, check_gradients

CELL_NAMES = ["elman", "lstm", "gru"]


def _init(name, D=5, H=6, seed=0, dtype=jnp.float64):
    return cells.get(name).init(jax.random.key(seed), D, H, dtype)


def _h(carry):
    return carry.h if isinstance(carry, cells.LSTMState) else carry


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_matches_pytorch_with_the_same_weights(name):
    torch = pytest.importorskip("torch")
    T, B, D, H = 7, 3, 5, 6
    rng = np.random.RandomState(0)
    x = rng.randn(T, B, D).astype(np.float32)
    mod = (torch.nn.LSTM if name == "lstm" else torch.nn.GRU)(D, H)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.tensor(rng.uniform(-0.5, 0.5, tuple(p.shape)).astype(np.float32)))
    w_i, w_h = mod.weight_ih_l0.detach().numpy().T, mod.weight_hh_l0.detach().numpy().T
    b_i, b_h = mod.bias_ih_l0.detach().numpy(), mod.bias_hh_l0.detach().numpy()
    params = cells.LSTMParams(w_i, w_h, b_i + b_h) if name == "lstm" else cells.GRUParams(w_i, w_h, b_i, b_h)
    params = jax.tree.map(jnp.asarray, params)
    hs, carry = rnn.run(cells.get(name), params, x)
    ref, ref_state = mod(torch.tensor(x))
    np.testing.assert_allclose(hs, ref.detach().numpy(), atol=1e-5)
    ref_h = ref_state[0] if name == "lstm" else ref_state
    np.testing.assert_allclose(_h(carry), ref_h.detach().numpy()[0], atol=1e-5)
    if name == "lstm":
        np.testing.assert_allclose(carry.c, ref_state[1].detach().numpy()[0], atol=1e-5)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_reverse_equals_flipping_inputs_and_outputs(name):
    params = _init(name)
    x = np.random.RandomState(1).randn(9, 2, 5)
    fwd, cf = rnn.run(cells.get(name), params, x[::-1].copy())
    rev, cr = rnn.run(cells.get(name), params, x, reverse=True)
    np.testing.assert_allclose(rev, fwd[::-1], rtol=1e-12)
    assert_trees_close(cr, cf, rtol=1e-12)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_two_layer_stack_equals_two_single_layers_composed(name):
    c = cells.get(name)
    p1, p2 = _init(name, 5, 6, 0), _init(name, 6, 6, 1)
    x = np.random.RandomState(2).randint(0, 5, (8, 3))
    top, (c1, c2) = rnn.stack(c, (p1, p2), x)
    h1, d1 = rnn.run(c, p1, x)
    h2, d2 = rnn.run(c, p2, h1)
    np.testing.assert_allclose(top, h2, rtol=1e-12)
    assert_trees_close((c1, c2), (d1, d2), rtol=1e-12)


@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize("reverse", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_padding_never_changes_real_steps_and_reverse_is_length_aware(name, reverse):
    c = cells.get(name)
    params = _init(name)
    lengths = [4, 9, 1]
    x = np.random.RandomState(3).randn(9, 3, 5)
    mask = np.arange(9)[:, None] < np.array(lengths)[None]
    hs, carry = rnn.run(c, params, x, mask=mask, reverse=reverse)
    for b, n in enumerate(lengths):
        alone, final = rnn.run(c, params, x[:n, b], reverse=reverse)
        np.testing.assert_allclose(hs[:n, b], alone, rtol=1e-12)
        assert_trees_close(jax.tree.map(lambda a: a[b], carry), final, rtol=1e-12)
        assert float(jnp.abs(hs[n:, b]).max(initial=0.0)) == 0.0


@pytest.mark.parametrize("name", [n if n == "lstm" else pytest.param(n, marks=pytest.mark.slow) for n in CELL_NAMES])
def test_gradients_stay_finite_with_nan_in_the_padding(name):
    c = cells.get(name)
    params = _init(name)
    x = np.random.RandomState(4).randn(6, 2, 5)
    mask = np.arange(6)[:, None] < np.array([6, 3])[None]
    x[3:, 1] = np.nan
    g = jax.grad(lambda p: jnp.sum(rnn.run(c, p, x, mask=mask)[0] ** 2))(params)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.slow
def test_autodiff_matches_finite_differences(name):
    params = _init(name, 4, 5)
    x = np.random.RandomState(5).randn(6, 4)
    h0 = cells.get(name).zeros(params)
    f = lambda p: jnp.sum(jnp.sin(rnn.run(cells.get(name), p, x, h0)[0]))
    check_gradients(f, params, rtol=1e-6)


def test_bidirectional_concat_and_sum():
    c = cells.LSTM
    pf, pb = _init("lstm", 5, 6, 0), _init("lstm", 5, 6, 1)
    x = np.random.RandomState(6).randn(7, 2, 5)
    both, _ = rnn.bidirectional(c, pf, pb, x)
    total, _ = rnn.bidirectional(c, pf, pb, x, merge="sum")
    hf, _ = rnn.run(c, pf, x)
    hb, _ = rnn.run(c, pb, x, reverse=True)
    np.testing.assert_allclose(both, jnp.concatenate([hf, hb], -1), rtol=1e-12)
    np.testing.assert_allclose(total, hf + hb, rtol=1e-12)


@pytest.mark.slow
def test_dropout_is_keyed_and_off_at_eval():
    model = lm.model("gru", vocab_size=9, hidden_size=8, layers=3)
    params = model.init(jax.random.key(0))
    x = np.random.RandomState(7).randint(0, 9, (5, 2))
    a, _ = model.apply(params, x, dropout=0.5, key=jax.random.key(1))
    b, _ = model.apply(params, x, dropout=0.5, key=jax.random.key(1))
    d, _ = model.apply(params, x, dropout=0.5, key=jax.random.key(2))
    e1, _ = model.apply(params, x)
    e2, _ = model.apply(params, x)
    assert np.array_equal(a, b) and not np.array_equal(a, d) and np.array_equal(e1, e2)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        model.apply(params, x, dropout=0.5)


@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.slow
def test_bfloat16_compute_still_lowers_the_loss(name):
    model = lm.model(name, vocab_size=12, hidden_size=16, layers=2)
    params = model.init(jax.random.key(0))
    rng = np.random.RandomState(8)
    x = rng.randint(0, 12, (20, 4))
    y = (x + 1) % 12  # learnable: next id is the current id + 1
    opt = optim.adam(1e-2)

    def loss_fn(p, batch, carry):
        return model.loss(p, batch[0], batch[1], compute_dtype=jnp.bfloat16)[0], carry

    step = jrnn.make_step(loss_fn, opt)
    state = opt.init(params)
    first = None
    for _ in range(40):
        params, state, m, _ = step(params, state, (x, y))
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.7 * first
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))  # params stay float32


def test_unknown_cell_and_custom_cell():
    with pytest.raises(ValueError, match="unknown cell"):
        cells.get("transformer")
    # a custom cell: a leaky integrator h' = 0.5 h + 0.5 tanh(u)
    leaky = cells.Cell(init=lambda k, D, H, dtype=jnp.float32: {"w": jax.random.normal(k, (D, H), dtype)},
                       project=lambda p, xs: jnp.asarray(xs) @ p["w"],
                       step=lambda p, h, u: (0.5 * h + 0.5 * jnp.tanh(u),) * 2,
                       zeros=lambda p, batch_shape=(): jnp.zeros((*batch_shape, p["w"].shape[1])))
    p = leaky.init(jax.random.key(0), 3, 4)
    hs, h = rnn.run(leaky, p, np.ones((5, 3)))
    assert hs.shape == (5, 4) and np.allclose(hs[-1], h)


def test_get_refuses_a_name_that_is_not_a_string_with_an_error_naming_the_choices():
    """`cells.get(["lstm"])` raised JAX-free Python's "unhashable type: 'list'" from the registry's
    dict lookup, naming neither the argument nor the choices."""
    with pytest.raises(TypeError, match=r"cell must be a name, one of \('elman', 'lstm', 'gru', 'paragru', "
                                        r"'paralstm', 'mingru'\).*got list"):
        cells.get(["lstm"])
    with pytest.raises(TypeError, match="cell must be a name.*got int"):
        cells.get(3)


# every name `jrnn.cells.X` gave in 0.1 (tests, experiments and docs use these)
CELLS_NAMES_0_1 = ["LSTM", "GRU", "ELMAN", "LSTMParams", "LSTMState", "GRUParams", "ElmanCellParams", "get",
                   "sigmoid", "CELLS", "Cell", "LSTM_LINEARIZATION", "GRU_LINEARIZATION"]


def test_the_cells_package_keeps_every_name_and_each_cell_lives_in_its_own_module():
    missing = [n for n in CELLS_NAMES_0_1 if not hasattr(cells, n)]
    assert missing == []
    assert (cells.LSTM, cells.GRU, cells.ELMAN) == (cells.lstm.LSTM, cells.gru.GRU, cells.elman.ELMAN)
    assert cells.CELLS == {"elman": cells.ELMAN, "lstm": cells.LSTM, "gru": cells.GRU, "paragru": cells.PARAGRU,
                           "paralstm": cells.PARALSTM, "mingru": cells.MINGRU}
    assert cells.Cell is rnn.Cell and cells.ELMAN is jrnn.elman.cell("tanh")
    for name, cell in cells.CELLS.items():   # the cell's functions are its module's
        assert {f.__module__ for f in (cell.init, cell.project, cell.zeros)} == {f"jrnn.cells.{name}"}


def _jrnn_imports(path):
    """The jrnn modules a source file imports (`from jrnn import x`, `from jrnn.x import y`, `import jrnn.x`)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jrnn":
            if node.module == "jrnn":
                out |= {f"jrnn.{a.name}" for a in node.names}
            else:
                out.add(node.module)
                out |= {f"{node.module}.{a.name}" for a in node.names}   # a submodule, if it is one
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "jrnn"}
    return out


def test_the_cells_sit_below_the_model_layer_and_the_flat_elman_api():
    """No module of jrnn.cells imports jrnn.model or jrnn.elman (the flat API above the model), not
    even through the modules it imports: the layering runs cells -> model -> elman, never back."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(jrnn.__file__)))

    def source(mod):
        base = os.path.join(root, *mod.split("."))
        for p in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.exists(p):
                return p
        return None   # a name imported from a module, not a module

    seen, todo, edges = set(), ["jrnn.cells", *(f"jrnn.cells.{n}" for n in ("lstm", "gru", "elman", "common",
                                                                           "paragru", "paralstm", "mingru"))], {}
    while todo:
        mod = todo.pop()
        if mod in seen or source(mod) is None:
            continue
        seen.add(mod)
        edges[mod] = {m for m in _jrnn_imports(source(mod)) if source(m) is not None}
        todo += sorted(edges[mod])
    above = {"jrnn.model", "jrnn.elman", "jrnn.lm", "jrnn.tbptt", "jrnn.train", "jrnn.sample", "jrnn.distributed"}
    assert seen & above == set(), {m: sorted(e & above) for m, e in edges.items() if e & above}


def test_the_elman_cells_init_draws_the_flat_inits_default_numbers():
    """`jrnn.cells.elman.init` (the `ELMAN` cell's, `jrnn.elman.cell_init`) draws the recurrence of
    `jrnn.elman.init(scheme="default")` from the same keys: a model and the seeds' API agree."""
    key = jax.random.key(3)
    cell_p = cells.ELMAN.init(key, 5, 4, jnp.float64)
    flat = jrnn.elman.init(key, input_size=5, hidden_size=4, output_size=2, dtype=jnp.float64)
    assert type(cell_p) is cells.ElmanCellParams and jrnn.elman.cell_init is cells.elman.init
    assert_trees_close(tuple(cell_p), (flat.w_xh, flat.w_hh, flat.b_h), rtol=0.0)
