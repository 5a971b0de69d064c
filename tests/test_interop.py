"""jrnn.interop: PyTorch's nn.RNN / LSTM / GRU weights in and out, proven against torch's own
forward and autograd (float32 to 1e-6, float64 gradients to 1e-10), at small sizes."""

import ast
import inspect
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jrnn   # noqa: E402
from jrnn import cells, elman, interop, lm, model as model_lib   # noqa: E402
from jrnn.rnn import Cell, Directions   # noqa: E402

T, B, D, H, V = 5, 3, 4, 6, 7
KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


def torch_module(kind, layers=1, bidirectional=False, dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    if kind.startswith("rnn"):
        kw["nonlinearity"] = kind[4:]
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind.split("_")[0]]
    return cls(D, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype, **kw).eval()


def torch_h0(kind, module, batch=(B,), dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = module.num_layers * (2 if module.bidirectional else 1)
    h = torch.randn((n, *batch, H), generator=g, dtype=dtype)
    return (h, torch.randn((n, *batch, H), generator=g, dtype=dtype)) if kind == "lstm" else h


def inputs(dtype=torch.float32, shape=(T, B, D), seed=2):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_params(model, seed=0):
    """Params of `model.init`'s shapes and dtypes, drawn by numpy (init itself runs op by op, slowly)."""
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.randn(*s.shape) / 2, s.dtype),
                        jax.eval_shape(model.init, jax.random.key(0)))


def jx(t):
    return jnp.asarray(t.detach().numpy())


def assert_close(ours, theirs, tol=1e-6):
    theirs = [theirs] if torch.is_tensor(theirs) else list(theirs)
    ours = [ours] if torch.is_tensor(ours) or hasattr(ours, "shape") else list(ours)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        a = a.detach().numpy() if torch.is_tensor(a) else np.asarray(a)
        b = b.detach().numpy()
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ---- forward: outputs and final carries ---------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_hidden_equals_torch_outputs_and_final_carry_from_a_nonzero_h0(kind, layers, bidirectional):
    m = torch_module(kind, layers, bidirectional)
    model, params = interop.from_torch(m)
    assert (model.input_size, model.hidden_size, model.layers, model.bidirectional) == (D, H, layers, bidirectional)
    x, h0 = inputs(), torch_h0(kind, m)
    with torch.no_grad():
        out, h_n = m(x, h0)
    hs, carry = model.hidden(params, jx(x), interop.carry_from_torch(model, h0))
    assert hs.dtype == jnp.float32
    assert_close(hs, out)
    assert_close(interop.carry_to_torch(model, carry), h_n)


def test_carry_from_torch_orders_rows_as_torch_does_layer_then_direction():
    m = torch_module("lstm", layers=2, bidirectional=True)
    model, _ = interop.from_torch(m)
    h = torch.arange(4.0)[:, None, None].expand(4, B, H).contiguous()
    carry = interop.carry_from_torch(model, (h, -h))
    assert isinstance(carry, tuple) and len(carry) == 2 and all(isinstance(c, Directions) for c in carry)
    assert [float(d.h[0, 0]) for c in carry for d in c] == [0.0, 1.0, 2.0, 3.0]
    assert [float(d.c[0, 0]) for c in carry for d in c] == [0.0, -1.0, -2.0, -3.0]
    assert isinstance(carry[0].forward, cells.LSTMState)
    h_n, c_n = interop.carry_to_torch(model, carry)
    assert torch.equal(h_n, h) and torch.equal(c_n, -h)


def test_batch_first_module_equals_the_model_on_transposed_inputs():
    m = torch_module("gru", layers=2, bidirectional=True, batch_first=True)
    model, params = interop.from_torch(m)
    x = inputs(shape=(B, T, D))
    with torch.no_grad():
        out, h_n = m(x)
    hs, carry = model.hidden(params, jx(x.transpose(0, 1)))
    assert_close(hs, out.transpose(0, 1))
    assert_close(interop.carry_to_torch(model, carry), h_n)   # h_n is [layers * dirs, B, H] either way


@pytest.mark.skipif(not hasattr(jrnn, "TBPTT"), reason="time_major= arrives with the 0.2 core API")
def test_batch_first_module_equals_the_model_with_time_major_false():
    m = torch_module("lstm", layers=2, batch_first=True)
    model, params = interop.from_torch(m)
    x = inputs(shape=(B, T, D))
    with torch.no_grad():
        out, _ = m(x)
    assert_close(model.hidden(params, jx(x), time_major=False)[0], out)


def test_a_weight_normed_module_converts_its_computed_weights():
    m = torch_module("gru", layers=2)
    m = torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l1")
    assert "weight_hh_l1" not in dict(m.named_parameters())   # parametrized: only g and v are parameters
    model, params = interop.from_torch(m)
    x = inputs()
    with torch.no_grad():
        out, _ = m(x)
    assert_close(model.hidden(params, jx(x))[0], out)


def test_unbatched_sequence_and_h0_convert():
    m = torch_module("lstm", layers=2)
    model, params = interop.from_torch(m)
    x, h0 = inputs(shape=(T, D)), torch_h0("lstm", m, batch=())
    with torch.no_grad():
        out, h_n = m(x, h0)
    hs, carry = model.hidden(params, jx(x), interop.carry_from_torch(model, h0))
    assert_close(hs, out)
    assert_close(interop.carry_to_torch(model, carry), h_n)


def test_readout_linear_becomes_w_hy_and_apply_equals_linear_of_torch_outputs():
    m = torch_module("lstm", layers=1, bidirectional=True)
    torch.manual_seed(3)
    linear = torch.nn.Linear(2 * H, V)
    model, params = interop.from_torch(m, linear)
    assert model.output_size == V and params.w_hy.shape == (2 * H, V)
    np.testing.assert_array_equal(np.asarray(params.w_hy), linear.weight.detach().numpy().T)
    np.testing.assert_array_equal(np.asarray(params.b_y), linear.bias.detach().numpy())
    x = inputs()
    with torch.no_grad():
        logits = linear(m(x)[0])
    assert_close(model.apply(params, jx(x))[0], logits)
    back_m, back_linear = interop.to_torch(model, params)
    assert torch.equal(back_linear.weight, linear.weight) and torch.equal(back_linear.bias, linear.bias)


def test_without_a_readout_the_readout_is_the_identity_so_apply_gives_the_states():
    m = torch_module("gru", layers=2, bidirectional=True)
    model, params = interop.from_torch(m)
    assert model.output_size == 2 * H
    np.testing.assert_array_equal(np.asarray(params.w_hy), np.eye(2 * H, dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(params.b_y), np.zeros(2 * H, np.float32))
    x = inputs()
    logits, _ = model.apply(params, jx(x))
    hs, _ = model.hidden(params, jx(x))
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(hs))


def test_bias_false_converts_with_zero_biases():
    for kind in KINDS:
        m = torch_module(kind, layers=2, bias=False)
        model, params = interop.from_torch(m)
        biases = [q for p in params.layers for name, q in p._asdict().items() if name.startswith("b")]
        assert biases and all(not np.any(np.asarray(b)) for b in biases)
        x = inputs()
        with torch.no_grad():
            out, _ = m(x)
        assert_close(model.hidden(params, jx(x))[0], out)


def test_elman_and_lstm_hold_the_sum_of_torchs_two_biases_gru_both():
    for kind in KINDS:
        m = torch_module(kind)
        _, params = interop.from_torch(m)
        p = params.layers[0]
        b_ih, b_hh = m.bias_ih_l0.detach().numpy(), m.bias_hh_l0.detach().numpy()
        if kind == "gru":
            np.testing.assert_array_equal(np.asarray(p.b_i), b_ih)
            np.testing.assert_array_equal(np.asarray(p.b_h), b_hh)
        else:
            np.testing.assert_array_equal(np.asarray(p.b if kind == "lstm" else p.b_h), b_ih + b_hh)
        w_i = p.w_xh if kind.startswith("rnn") else p.w_i
        np.testing.assert_array_equal(np.asarray(w_i), m.weight_ih_l0.detach().numpy().T)


# ---- the round trip -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_to_torch_of_from_torch_reproduces_every_torch_parameter(kind):
    m = torch_module(kind, layers=2, bidirectional=True)
    back, linear = interop.to_torch(*interop.from_torch(m))
    assert type(back) is type(m) and isinstance(linear, torch.nn.Linear)
    assert (back.input_size, back.hidden_size, back.num_layers, back.bidirectional, back.batch_first) == (
        D, H, 2, True, False)
    if kind.startswith("rnn"):
        assert back.nonlinearity == m.nonlinearity
    ours, theirs = dict(back.named_parameters()), dict(m.named_parameters())
    assert ours.keys() == theirs.keys()
    for name, t in theirs.items():
        if kind != "gru" and name.startswith("bias_"):
            # Elman and LSTM keep one bias, the sum: it comes back in bias_ih, bias_hh is 0
            if name.startswith("bias_ih"):
                assert torch.equal(ours[name], t + theirs[name.replace("_ih", "_hh")]), name
            else:
                assert torch.equal(ours[name], torch.zeros_like(t)), name
        else:
            assert torch.equal(ours[name], t), name
        assert ours[name].dtype == t.dtype
    x = inputs()
    with torch.no_grad():
        assert_close(back(x)[0], m(x)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_from_torch_of_to_torch_gives_every_param_back_exactly(kind):
    cell = {"rnn_tanh": cells.get("elman"), "rnn_relu": elman.cell("relu")}.get(kind) or cells.get(kind)
    model = model_lib.make(cell, input_size=D, hidden_size=H, output_size=V, layers=2, bidirectional=True)
    params = random_params(model)
    module, linear = interop.to_torch(model, params, batch_first=True)
    assert module.batch_first
    model2, params2 = interop.from_torch(module, linear)
    assert model2 == model
    assert jax.tree.structure(params2) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_token_id_model_equals_its_torch_module_fed_one_hot_features():
    model = lm.model("gru", vocab_size=V, hidden_size=H, layers=2)
    params = random_params(model)
    module, linear = interop.to_torch(model, params)
    ids = np.random.RandomState(0).randint(0, V, (T, B))
    with torch.no_grad():
        logits = linear(module(torch.nn.functional.one_hot(torch.from_numpy(ids), V).float())[0])
    assert_close(model.apply(params, ids)[0], logits)


# ---- gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_grad_of_summed_outputs_wrt_inputs_and_h0_equals_torch_autograd(kind):
    m = torch_module(kind, layers=2, bidirectional=True, dtype=torch.float64)
    model, params = interop.from_torch(m)
    assert params.w_hy.dtype == jnp.float64   # x64 is on in the test suite
    x, h0 = inputs(torch.float64).requires_grad_(), torch_h0(kind, m, dtype=torch.float64)
    h0s = h0 if kind == "lstm" else (h0,)
    for h in h0s:
        h.requires_grad_()
    out, _ = m(x, h0)
    (out * torch.cos(out)).sum().backward()   # a nonlinear function: every output weighs differently

    def f(x, h0):
        hs, _ = model.hidden(params, x, interop.carry_from_torch(model, h0))
        return jnp.sum(hs * jnp.cos(hs))

    dx, dh0 = jax.jit(jax.grad(f, argnums=(0, 1)))(jx(x), tuple(jx(h) for h in h0s) if kind == "lstm" else jx(h0))
    np.testing.assert_allclose(np.asarray(dx), x.grad.numpy(), rtol=1e-10, atol=1e-10)
    for ours, h in zip(dh0 if kind == "lstm" else (dh0,), h0s):
        np.testing.assert_allclose(np.asarray(ours), h.grad.numpy(), rtol=1e-10, atol=1e-10)


# ---- dtypes --------------------------------------------------------------------------------------

def test_float64_module_gives_float32_params_while_x64_is_off():
    m = torch_module("gru", dtype=torch.float64)
    with jax.enable_x64(False):
        model, params = interop.from_torch(m)
        assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
        x = inputs(torch.float64)
        with torch.no_grad():
            out, _ = m(x)
        np.testing.assert_allclose(np.asarray(model.hidden(params, jx(x))[0]), out.numpy(), atol=1e-6, rtol=1e-5)


def test_bfloat16_module_round_trips_exactly():
    m = torch_module("lstm", layers=2, bidirectional=True, dtype=torch.bfloat16)
    model, params = interop.from_torch(m)
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    back, linear = interop.to_torch(model, params)
    assert linear.weight.dtype == torch.bfloat16
    for name, t in m.named_parameters():
        if name.startswith("weight"):
            assert torch.equal(dict(back.named_parameters())[name], t), name


# ---- refusals ------------------------------------------------------------------------------------

def test_lstm_with_proj_size_is_refused():
    with pytest.raises(ValueError, match=r"module\.proj_size is 2: jrnn's LSTM has no output projection"):
        interop.from_torch(torch.nn.LSTM(D, H, proj_size=2))


@pytest.mark.parametrize("module", [torch.nn.Linear(D, H), torch.nn.LSTMCell(D, H), object(), "lstm"],
                         ids=["Linear", "LSTMCell", "object", "str"])
def test_unknown_module_type_is_refused(module):
    with pytest.raises(TypeError, match=r"module must be a torch\.nn\.RNN, torch\.nn\.LSTM or torch\.nn\.GRU, got "):
        interop.from_torch(module)


def test_non_float_parameter_is_refused_naming_it():
    m = torch_module("gru")
    m.weight_hh_l0 = torch.nn.Parameter(torch.zeros((3 * H, H), dtype=torch.int32), requires_grad=False)
    with pytest.raises(TypeError, match=r"module\.weight_hh_l0 has dtype torch\.int32; jrnn's cells compute in a "
                                        r"real float dtype"):
        interop.from_torch(m)


def test_parameters_of_mixed_dtypes_are_refused_naming_both():
    m = torch_module("rnn_tanh")
    m.bias_hh_l0 = torch.nn.Parameter(m.bias_hh_l0.detach().double())
    with pytest.raises(TypeError, match=r"module\.bias_hh_l0 is torch\.float64 but module\.weight_ih_l0 is "
                                        r"torch\.float32"):
        interop.from_torch(m)


def test_bad_readouts_are_refused():
    m = torch_module("gru", bidirectional=True)
    with pytest.raises(TypeError, match=r"readout must be a torch\.nn\.Linear"):
        interop.from_torch(m, torch.nn.Conv1d(2 * H, V, 1))
    with pytest.raises(ValueError, match=r"readout\.in_features is 6, but the module's outputs have width 12"):
        interop.from_torch(m, torch.nn.Linear(H, V))
    with pytest.raises(TypeError, match=r"readout\.weight is torch\.float64 but the module's parameters are float32"):
        interop.from_torch(m, torch.nn.Linear(2 * H, V, dtype=torch.float64))


def test_to_torch_refuses_cells_torch_has_no_module_for():
    sig = model_lib.make(elman.cell("sigmoid"), input_size=D, hidden_size=H, output_size=V)
    with pytest.raises(TypeError, match=r"to_torch: the model's cell 'elman\(sigmoid\)' has no PyTorch module"):
        interop.to_torch(sig, random_params(sig))
    custom = Cell(*cells.GRU[:4], name="mine", params=cells.GRUParams)
    model = model_lib.make(custom, input_size=D, hidden_size=H, output_size=V)
    with pytest.raises(TypeError, match=r"the model's cell 'mine' has no PyTorch module"):
        interop.to_torch(model, random_params(model))
    with pytest.raises(TypeError, match=r"carry_to_torch: the model's cell 'mine'"):
        interop.carry_to_torch(model, model.zeros(random_params(model), (B,)))
    with pytest.raises(TypeError, match=r"model must be a jrnn\.model\.Model"):
        interop.to_torch("gru", None)


def test_to_torch_checks_params_against_the_model():
    model = model_lib.make(cells.LSTM, input_size=D, hidden_size=H, output_size=V)
    params = random_params(model)
    bad = params._replace(layers=(params.layers[0]._replace(w_i=params.layers[0].w_i.T),))
    with pytest.raises(ValueError, match=r"layers\[0\]\.w_i has shape"):
        interop.to_torch(model, bad)


def test_to_torch_and_carry_to_torch_name_the_missing_torch_import(monkeypatch):
    model = model_lib.make(cells.GRU, input_size=D, hidden_size=H, output_size=V)
    params = random_params(model)
    carry = model.zeros(params, (B,))
    monkeypatch.setitem(sys.modules, "torch", None)   # as if torch were not imported
    with pytest.raises(TypeError, match=r"module must be a torch\.nn\.RNN"):
        interop.from_torch(object())
    with pytest.raises(ImportError, match=r"jrnn\.interop\.to_torch needs PyTorch: `import torch` first"):
        interop.to_torch(model, params)
    with pytest.raises(ImportError, match=r"carry_to_torch needs PyTorch"):
        interop.carry_to_torch(model, carry)


def test_carry_from_torch_refuses_wrong_layouts():
    m = torch_module("lstm", layers=2, bidirectional=True)
    model, _ = interop.from_torch(m)
    h = torch.zeros(4, B, H)
    with pytest.raises(TypeError, match=r"h0 of an LSTM is the pair \(h0, c0\)"):
        interop.carry_from_torch(model, h)
    with pytest.raises(ValueError, match=r"h0\[1\] \(c0\) must be \[layers \* dirs, B, H\] = \[4, B, 6\]"):
        interop.carry_from_torch(model, (h, torch.zeros(2, B, H)))
    with pytest.raises(ValueError, match=r"h0 and c0 must have one shape"):
        interop.carry_from_torch(model, (h, torch.zeros(4, B + 1, H)))
    gru, _ = interop.from_torch(torch_module("gru"))
    with pytest.raises(ValueError, match=r"h0 must be \[layers \* dirs, B, H\] = \[1, B, 6\]"):
        interop.carry_from_torch(gru, torch.zeros(1, B, H + 1))
    with pytest.raises(TypeError, match=r"h0 must be floating"):
        interop.carry_from_torch(gru, np.zeros((1, B, H), np.int32))
    with pytest.raises(TypeError, match=r"carry must be a tuple with one carry per layer \(1\)"):
        interop.carry_to_torch(gru, jnp.zeros((B, H)))


def test_the_seeds_flat_elman_params_go_to_torch_as_rnn_and_linear():
    model = elman.model(input_size=D, hidden_size=H, output_size=V)
    params = elman.init(jax.random.key(0), input_size=D, hidden_size=H, output_size=V, scheme="normal", scale=0.5)
    module, linear = interop.to_torch(model, params)
    assert isinstance(module, torch.nn.RNN) and module.nonlinearity == "tanh"
    x = inputs()
    with torch.no_grad():
        logits = linear(module(x)[0])
    assert_close(model.apply(params, jx(x))[0], logits)


def test_interop_imports_no_torch_so_jrnn_runs_without_it():
    # torch is optional: the module must not import it, at its top or in a function
    tree = ast.parse(inspect.getsource(interop))
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.split(".")[0] == "torch"]
    assert all(isinstance(n, (ast.Import, ast.ImportFrom)) is False for f in ast.walk(tree)
               if isinstance(f, ast.FunctionDef) for n in ast.walk(f))
