"""Params checked at the boundary: against the model's sizes (`jrnn.model.check_params`) and, in
`jrnn.rnn.run/stack/bidirectional`, against the cell's own init; the `Model` constructor; int64
ids that JAX would wrap while x64 is off. Small shapes: these are checks, not trainings."""

import pickle
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import cells, elman, lm, rnn
from jrnn.model import Model

D, H, V, T, B = 5, 4, 6, 3, 2
TRANSPOSED = r"transposed\? \(PyTorch stores weight_ih as \[G\*H, D\]"


def _dense(cell="lstm", layers=1):
    model = jrnn.model.make(cells.get(cell), input_size=D, hidden_size=H, output_size=V, layers=layers)
    return model, model.init(jax.random.key(0))


def _with_layer0(p, **fields):
    return p._replace(layers=(p.layers[0]._replace(**fields), *p.layers[1:]))


def _entry_points(model, p, x):
    """Every Model entry point that takes params, each called with `p`."""
    y = np.zeros(x.shape[:-1], np.int32)
    return {"apply": lambda: model.apply(p, x), "apply_last": lambda: model.apply_last(p, x),
            "hidden": lambda: model.hidden(p, x), "loss": lambda: model.loss(p, x, y),
            "loss_tbptt": lambda: model.loss(p, x, y, grad=jrnn.TBPTT(1, 2)), "loss_remat": lambda: model.loss(p, x, y, grad=jrnn.Remat()),
            "step": lambda: model.step(p, None, x[0]), "zeros": lambda: model.zeros(p, (B,)),
            "check_params": lambda: jrnn.model.check_params(model, p)}


def test_an_untransposed_pytorch_weight_is_named_with_both_shapes_by_every_entry_point():
    # before: w_i [4H, D] gave "dense inputs need last dim 16 (input_size)", blaming the inputs,
    # and w_h [4H, H] a broadcasting TypeError from inside the scan
    model, p = _dense()
    x = np.zeros((T, B, D), np.float32)
    w_i, w_h = p.layers[0].w_i, p.layers[0].w_h
    for bad, msg in [(_with_layer0(p, w_i=w_i.T), r"^layers\[0\]\.w_i has shape \(16, 5\), the model needs \(5, 16\): "),
                     (_with_layer0(p, w_h=w_h.T), r"^layers\[0\]\.w_h has shape \(16, 4\), the model needs \(4, 16\): ")]:
        for name, call in _entry_points(model, bad, x).items():
            with pytest.raises(ValueError, match=msg + TRANSPOSED):
                call()
    # under jit the check runs while tracing, with the same message
    with pytest.raises(ValueError, match=r"layers\[0\]\.w_h has shape \(16, 4\)"):
        jax.jit(lambda p, x: model.apply(p, x)[0])(_with_layer0(p, w_h=w_h.T), x)


def test_a_wrong_size_leaf_of_any_layer_or_the_readout_is_named():
    model, p = _dense("gru", layers=2)
    x = np.zeros((T, B, D), np.float32)
    l1 = p.layers[1]
    with pytest.raises(ValueError, match=r"^layers\[1\]\.b_h has shape \(6,\), the model needs \(12,\)$"):
        model.apply(p._replace(layers=(p.layers[0], l1._replace(b_h=l1.b_h[:6]))), x)
    with pytest.raises(ValueError, match=r"^layers\[1\]\.w_i has shape \(5, 12\), the model needs \(4, 12\)$"):
        model.apply(p._replace(layers=(p.layers[0], cells.GRU.init(jax.random.key(1), D, H))), x)
    with pytest.raises(ValueError, match=r"^readout b_y has shape \(3,\), the model needs \(6,\) \(\[V\]\)$"):
        model.apply(p._replace(b_y=p.b_y[:3]), x)   # before: a broadcasting TypeError in the readout


def test_real_torch_tensors_are_refused_naming_the_leaf_and_the_conversion():
    torch = pytest.importorskip("torch")
    model, p = _dense()
    as_torch = jax.tree.map(lambda a: torch.tensor(np.asarray(a)), p)
    fix = r"convert it first, e.g. jnp.asarray\(t.detach\(\).cpu\(\).numpy\(\)\)"
    for name, call in _entry_points(model, as_torch, np.zeros((T, B, D), np.float32)).items():
        with pytest.raises(TypeError, match=r"^layers\[0\]\.w_i is a torch\.Tensor, not a jax or numpy array: " + fix):
            call()   # before: "Cannot interpret 'torch.float32' as a data type"
    with pytest.raises(TypeError, match=r"^params\.w_i is a torch\.Tensor.*" + fix):
        rnn.run(cells.LSTM, as_torch.layers[0], np.zeros((T, D), np.float32))
    # converted as the message says (and transposed from PyTorch's layout), they run
    t = torch.nn.LSTM(D, H)
    conv = lambda w: jnp.asarray(w.detach().cpu().numpy())
    layer = cells.LSTMParams(conv(t.weight_ih_l0).T, conv(t.weight_hh_l0).T, conv(t.bias_ih_l0 + t.bias_hh_l0))
    assert model.apply(p._replace(layers=(layer,)), np.zeros((T, B, D), np.float32))[0].shape == (T, B, V)


def test_a_missing_or_extra_leaf_or_a_container_of_no_type_is_named():
    model, p = _dense()
    x = np.zeros((T, B, D), np.float32)
    with pytest.raises(TypeError, match=r"^layers\[0\]\.b is None; the cell needs an array there"):
        model.apply(_with_layer0(p, b=None), x)   # before: AttributeError 'NoneType' ... 'reshape'
    with pytest.raises(TypeError, match=r"^b_y\[0\] must be a jax or numpy array, got float"):
        model.apply(p._replace(b_y=[0.0] * V), x)   # before: AttributeError 'list' ... 'reshape'
    with pytest.raises(TypeError, match=r"layer 0 are dict, .*'lstm', which takes LSTMParams: build them as such, "
                                        r"e.g. LSTMParams\(\*\*layer\)"):
        model.apply(p._replace(layers=(p.layers[0]._asdict(),)), x)
    with pytest.raises(TypeError, match=r"^params are dict, but the lstm cell's init makes LSTMParams .*: missing "
                                        r"params\.w_i, params\.w_h, params\.b; unexpected params\['b'\]"):
        rnn.run(cells.LSTM, p.layers[0]._asdict(), x)
    with pytest.raises(TypeError, match=r"^params are GRUParams, but the lstm cell's init makes LSTMParams .*missing "
                                        r"params\.b; unexpected params\.b_h, params\.b_i$"):
        rnn.run(cells.LSTM, cells.GRU.init(jax.random.key(0), D, H), x)
    # a custom cell: its init's own pytree is the reference
    leaky = cells.Cell(init=lambda k, D, H, dtype=jnp.float32: {"w": jax.random.normal(k, (D, H), dtype)},
                       project=lambda p, xs: jnp.asarray(xs) @ p["w"],
                       step=lambda p, h, u: (0.5 * h + 0.5 * jnp.tanh(u),) * 2,
                       zeros=lambda p, batch_shape=(): jnp.zeros((*batch_shape, p["w"].shape[1]), p["w"].dtype),
                       name="leaky")
    lp = leaky.init(jax.random.key(0), D, H)
    with pytest.raises(TypeError, match=r"^params are dict, but the leaky cell's init makes dict .*: unexpected "
                                        r"params\['v'\]$"):
        rnn.run(leaky, {**lp, "v": lp["w"]}, x)
    # one matrix agrees with itself whichever way round: the inputs are measured against it
    with pytest.raises(ValueError, match=r"^dense inputs need last dim 4 \(input_size\), got shape \(3, 2, 5\)$"):
        rnn.run(leaky, {"w": lp["w"].T}, x)   # before: a dot_general TypeError
    with pytest.raises(ValueError, match=r"^params\['w'\] has shape \(5, 4, 1\), the leaky cell needs a 2-D array "
                                         r"there$"):
        rnn.run(leaky, {"w": lp["w"][..., None]}, x)
    with pytest.raises(ValueError, match=r"^layers\[0\]\.b has shape \(1, 16\), the lstm cell needs a 1-D array"):
        model.apply(_with_layer0(p, b=p.layers[0].b[None]), x)   # before: blamed the carry, (3, 2, 4)
    assert rnn.run(leaky, lp, x)[0].shape == (T, B, H)


def test_params_of_mixed_float_dtypes_or_integer_params_are_refused_naming_the_leaves():
    model, p = _dense()
    x = np.zeros((T, B, D), np.float32)
    with pytest.raises(TypeError, match=r"^params mix float dtypes: layers\[0\]\.w_i is float32, layers\[0\]\.w_h is "
                                        r"bfloat16; .*a\.astype\(jnp\.float32\)"):
        model.apply(_with_layer0(p, w_h=p.layers[0].w_h.astype(jnp.bfloat16)), x)   # before: a scan carry-type error
    with pytest.raises(TypeError, match=r"^params mix float dtypes: layers\[0\]\.w_i is float32, b_y is float64"):
        model.apply(p._replace(b_y=p.b_y.astype(jnp.float64)), x)   # before: a float64 readout, cast back
    with pytest.raises(TypeError, match=r"^layers\[0\]\.w_i has dtype int32; the lstm cell's params are floating"):
        model.apply(jax.tree.map(lambda a: a.astype(jnp.int32), p), x)   # before: a scan carry-type error
    with pytest.raises(TypeError, match=r"^params mix float dtypes: params\.w_i is float32, params\.b is float16"):
        rnn.run(cells.LSTM, p.layers[0]._replace(b=p.layers[0].b.astype(jnp.float16)), x)
    # one low-precision dtype throughout is fine: the logits come back in it
    for dt in (jnp.bfloat16, jnp.float16):
        logits, _ = model.apply(jax.tree.map(lambda a: a.astype(dt), p), x)
        assert logits.dtype == dt


def test_float64_numpy_params_and_carries_run_without_warnings_while_x64_is_off():
    # JAX reads them as float32; jnp.zeros(..., float64) in the cells' zero carry and
    # jnp.result_type(float64) in rnn.float_inputs warned (errors under pytest)
    with jax.enable_x64(False), warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("elman", "lstm", "gru"):
            model = lm.model(name, vocab_size=V, hidden_size=H)
            p = jax.tree.map(lambda a: np.asarray(a, np.float64), model.init(jax.random.key(0)))
            assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(model.zeros(p, (B,))))
        logits, _ = model.apply(p, np.array([1, 2, 3]))
        assert logits.dtype == jnp.float32
        x = np.zeros((T, B, D), np.float32)
        hs, _ = rnn.run(cells.GRU, cells.GRU.init(jax.random.key(0), D, H), x, np.zeros((B, H)))
        assert hs.dtype == jnp.float32


def test_run_stack_and_bidirectional_check_params_against_the_cells_own_init():
    x = np.zeros((T, B, D), np.float32)
    k = jax.random.key(0)
    p = cells.LSTM.init(k, D, H)
    with pytest.raises(ValueError, match=r"^params\.w_i has shape \(16, 5\), the lstm cell with input_size 5 \(the "
                                         r"inputs' features\) and hidden_size 4 \(read off the params\) needs \(5, 16\): "
                                         + TRANSPOSED):
        rnn.run(cells.LSTM, p._replace(w_i=p.w_i.T), x)
    with pytest.raises(ValueError, match=r"^params\.w_h has shape \(16, 4\), .* needs \(4, 16\): " + TRANSPOSED):
        rnn.run(cells.LSTM, p._replace(w_h=p.w_h.T), x)   # before: a broadcasting TypeError
    # both in PyTorch's layout: the bias still tells H, the inputs D
    with pytest.raises(ValueError, match=r"^params\.w_i has shape \(16, 5\), .*" + TRANSPOSED):
        rnn.run(cells.LSTM, p._replace(w_i=p.w_i.T, w_h=p.w_h.T), x)
    with pytest.raises(ValueError, match=r"^params\.b has shape \(8,\), .* needs \(16,\)$"):
        rnn.run(cells.LSTM, p._replace(b=p.b[:8]), x)
    # right params, wrong inputs: the inputs are blamed, as before
    with pytest.raises(ValueError, match=r"dense inputs need last dim 5 \(input_size\), got shape \(3, 2, 7\)"):
        rnn.run(cells.LSTM, p, np.zeros((T, B, 7), np.float32))
    # stack: each layer named, and layer l > 0 must read what layer l - 1 outputs
    g = lambda d, h=H: cells.GRU.init(k, d, h)
    with pytest.raises(ValueError, match=r"^layer_params\[1\]\.w_h has shape \(12, 4\), .*" + TRANSPOSED):
        rnn.stack(cells.GRU, (g(D), g(H)._replace(w_h=g(H).w_h.T)), x)
    with pytest.raises(ValueError, match=r"^layer_params\[1\] read 7 features \(their input_size\), but layer 0 "
                                         r"outputs 4 \(its hidden_size\)$"):
        rnn.stack(cells.GRU, (g(D), g(7)), x)
    pair = lambda d: rnn.Directions(g(d), g(d))
    with pytest.raises(ValueError, match=r"layer_params\[1\] read 4 features .* outputs 8 \(2H: bidirectional\)"):
        rnn.stack(cells.GRU, (pair(D), pair(H)), x, bidirectional=True)
    with pytest.raises(TypeError, match=r"^layer_params\[0\] must be a \(forward, backward\) pair"):
        rnn.stack(cells.GRU, (g(D),), x, bidirectional=True)
    assert rnn.stack(cells.GRU, (pair(D), pair(2 * H)), x, bidirectional=True)[0].shape == (T, B, 2 * H)
    with pytest.raises(ValueError, match=r"^params_bwd have input_size 5 and hidden_size 3, params_fwd 5 and 4: "
                                         r"both directions need the same sizes$"):
        rnn.bidirectional(cells.GRU, g(D), g(D, 3), x)   # before: states of 4 + 3 units concatenated
    with pytest.raises(TypeError, match=r"^carry must be a \(forward, backward\) pair of carries"):
        rnn.bidirectional(cells.GRU, g(D), g(D), x, carry=np.zeros((B, H)))
    # what runs still runs: the seeds' flat ElmanParams (readout ignored), sizes of 1
    ep = elman.init(k, vocab_size=V, hidden_size=H)
    assert rnn.run(cells.ELMAN, ep, np.array([1, 2]))[0].shape == (2, H)
    with pytest.raises(ValueError, match=r"^params\.w_hh has shape \(3, 4\), the elman cell .* needs \(4, 4\)$"):
        rnn.run(cells.ELMAN, ep._replace(w_hh=ep.w_hh[:3]), np.array([1, 2]))
    assert rnn.run(cells.LSTM, cells.LSTM.init(k, 1, 1), np.ones((T, 1), np.float32))[0].shape == (T, 1)
    with pytest.raises(TypeError, match=r"^cell must be a jrnn\.rnn\.Cell .*jrnn\.cells\.get\('lstm'\)\), got str$"):
        rnn.run("lstm", p, x)


@pytest.mark.parametrize("call", ["run", "stack", "bidirectional", "step"])
def test_int64_ids_that_jax_would_wrap_to_int32_are_refused_by_run_stack_bidirectional_and_step(call):
    # before: jnp.asarray came first, so id 2**32 + 1 ran as token 1 (x64 off)
    model = lm.model("lstm", vocab_size=V, hidden_size=H)
    with jax.enable_x64(False):
        p = model.init(jax.random.key(0))
        layer = p.layers[0]
        f = {"run": lambda x: rnn.run(cells.LSTM, layer, x), "stack": lambda x: rnn.stack(cells.LSTM, p.layers, x),
             "bidirectional": lambda x: rnn.bidirectional(cells.LSTM, layer, layer, x),
             "step": lambda x: model.step(p, model.zeros(p, (2,)), x[0])}[call]
        with pytest.raises(ValueError, match=r"int64 values 1\.\.4294967297 do not fit int32"):
            f(np.array([[2 ** 32 + 1, 1]], np.int64))
        assert np.asarray(jax.tree.leaves(f(np.array([[5, 1]], np.int64)))[0]).size


def test_model_step_checks_its_carry_and_takes_none_for_zeros():
    model = lm.model("gru", vocab_size=V, hidden_size=H, layers=2)
    p = model.init(jax.random.key(0))
    x = np.array([1, 2])
    with pytest.raises(ValueError, match=r"^carry of layer 0 must have shape \(2, 4\) for these inputs, got \(3, 4\)$"):
        model.step(p, model.zeros(p, (3,)), x)   # before: a broadcasting TypeError inside the cell
    with pytest.raises(TypeError, match="one carry per layer"):
        model.step(p, model.zeros(p, (2,))[0], x)
    a, logits = model.step(p, None, x)
    b, same = model.step(p, model.zeros(p, (2,)), x)
    np.testing.assert_array_equal(logits, same)
    assert logits.shape == (2, V)


def test_stack_refuses_a_carry_count_other_than_its_layer_count():
    # before: zip dropped the layers past the carries given: one carry for two layers
    # returned layer 0's states as the top layer's
    model = lm.model("lstm", vocab_size=V, hidden_size=H, layers=2)
    p = model.init(jax.random.key(0))
    x = np.zeros((T, 1), np.int32)
    c = model.zeros(p, (1,))
    with pytest.raises(ValueError, match=r"^carries must be a tuple with one carry per layer \(2\), or None for zeros, "
                                         r"got tuple of 1$"):
        rnn.stack(cells.LSTM, p.layers, x, carries=c[:1])
    with pytest.raises(ValueError, match=r"got tuple of 3$"):
        rnn.stack(cells.LSTM, p.layers, x, carries=c + c[:1])
    with pytest.raises(ValueError, match=r"got LSTMState$"):   # one layer's (h, c) is not two carries
        rnn.stack(cells.LSTM, p.layers, x, carries=c[0])
    with pytest.raises(TypeError, match=r"^layer_params must be a tuple with one cell params per layer"):
        rnn.stack(cells.LSTM, (), x)
    hs, finals = rnn.stack(cells.LSTM, p.layers, x, carries=list(c))
    np.testing.assert_array_equal(hs, model.hidden(p, x)[0])


@pytest.mark.parametrize("args,error,match", [
    ((cells.LSTM, 4, 4, 2, 0), ValueError, r"^layers must be >= 1, got 0$"),
    ((cells.LSTM, 4, 0, 2), ValueError, r"^hidden_size must be >= 1, got 0$"),
    ((cells.LSTM, 0, 4, 2), ValueError, r"^input_size must be >= 1, got 0$"),
    ((cells.LSTM, 4, 4, -1), ValueError, r"^output_size must be >= 1, got -1$"),
    ((cells.LSTM, 4, 4, 2, True), TypeError, r"^layers must be an integer, got bool True$"),
    ((cells.LSTM, 4, 4, 2, 2.5), TypeError, r"^layers must be an integer, got float 2\.5$"),
    ((cells.LSTM, 4.0, 4, 2), TypeError, r"^input_size must be an integer"),
    ((cells.LSTM, 4, 4, 2, 1, "yes"), TypeError, r"^bidirectional must be a bool, got str$"),
    (("lstm", 4, 4, 2), TypeError, r"^cell must be a jrnn\.rnn\.Cell"),
])
def test_the_model_constructor_validates_its_fields(args, error, match):
    # before: Model(lstm, 4, 4, 2, 0) trained a readout with no recurrence, Model(lstm, 4, 0, 2)
    # raised ZeroDivisionError in init, and layers=True / 2.5 were taken
    with pytest.raises(error, match=match):
        Model(*args)


def test_the_model_constructor_keeps_a_hashable_static_picklable_namedtuple():
    m = Model(cells.GRU, np.int64(4), np.int32(3), np.uint8(4), np.int64(2), np.bool_(False))
    assert all(type(v) is int for v in m[1:5]) and type(m.bidirectional) is bool
    assert m == jrnn.model.make(cells.GRU, input_size=4, hidden_size=3, output_size=4, layers=2)
    assert hash(m) == hash(Model(cells.GRU, 4, 3, 4, 2)) and m._fields[0] == "cell"
    assert pickle.loads(pickle.dumps(m)) == m and m._replace(layers=1).layers == 1
    with pytest.raises(ValueError, match=r"^layers must be >= 1, got 0$"):
        m._replace(layers=0)
    with pytest.raises(TypeError, match=r"^hidden_size must be an integer"):
        Model._make((cells.GRU, 4, "3", 4))
    p = m.init(jax.random.key(0))
    f = jax.jit(lambda model, p, x: model.apply(p, x)[0], static_argnums=0)
    assert f(m, p, np.array([1, 2])).shape == (2, 4)
