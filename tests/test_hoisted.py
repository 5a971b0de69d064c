"""jrnn.hoisted (the LSTM's and GRU's recurrence with the weight gradient hoisted out of the
backward loop) equals a plain lax.scan of the cell's step in value and in every derivative JAX
offers: reverse, forward, second order, under vmap, with masks and in reverse direction."""

import itertools
from typing import NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jrnn import batch_split, cells, hoisted, projection, rnn
from jrnn.testing import assert_trees_close

RTOL = 1e-10
GATED = ["lstm", "gru"]


def plain(cell):
    """The same cell without its own scan: `rnn.run` then scans its step (`rnn.masked` for masks)."""
    return cell._replace(scan=None)


def problem(name, seed=3, T=9, B=3, D=4, H=5):
    rng = np.random.RandomState(seed)
    cell = cells.get(name)
    p = cell.init(jax.random.key(seed), D, H, jnp.float64)
    p = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(rng.randn(*a.shape)), p)   # nonzero biases too
    xs = jnp.asarray(rng.randn(T, B, D))
    mask = jnp.asarray(np.arange(T)[:, None] < rng.randint(1, T + 1, size=B)[None, :])
    carry = jax.tree.map(lambda z: jnp.asarray(0.3 * rng.randn(*z.shape)), cell.zeros(p, (B,)))
    return cell, p, xs, mask, carry


def loss_of(cell, mask, reverse, weights):
    def loss(p, xs, carry):
        hs, final = rnn.run(cell, p, xs, carry, mask=mask, reverse=reverse)
        # every output carries gradient: the states (through a nonlinearity) and the final carry
        return jnp.sum(jnp.sin(hs) * weights) + sum(jnp.sum(c ** 3) for c in jax.tree.leaves(final))
    return loss


def slow_unless(fast, cases):
    """The cases for which `fast(case)` is false run in the full suite only (marked slow)."""
    return [pytest.param(*c, marks=() if fast(*c) else pytest.mark.slow) for c in cases]


# the default suite runs the masked case in both directions for each cell (the GRU's masked
# reverse, length-aware, included); the full suite the whole grid
@pytest.mark.parametrize("name,masked,reverse", slow_unless(
    lambda name, masked, reverse: masked,
    list(itertools.product(GATED, [False, True], [False, True]))))
def test_values_and_gradients_equal_the_plain_scan(name, masked, reverse):
    cell, p, xs, mask, carry = problem(name)
    mask = mask if masked else None
    assert cell.scan is not None
    for a, b in zip(jax.tree.leaves(rnn.run(cell, p, xs, carry, mask=mask, reverse=reverse)),
                    jax.tree.leaves(rnn.run(plain(cell), p, xs, carry, mask=mask, reverse=reverse))):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    weights = jnp.asarray(np.random.RandomState(1).randn(*xs.shape[:2], 5))
    g = jax.grad(loss_of(cell, mask, reverse, weights), argnums=(0, 1, 2))(p, xs, carry)
    ref = jax.grad(loss_of(plain(cell), mask, reverse, weights), argnums=(0, 1, 2))(p, xs, carry)
    assert_trees_close(g, ref, rtol=RTOL, what="d loss / (params, inputs, carry)")


@pytest.mark.parametrize("name", slow_unless(lambda name: name == "lstm", [(n,) for n in GATED]))
def test_token_ids_and_unbatched_inputs_equal_the_plain_scan(name):
    cell = cells.get(name)
    p = cell.init(jax.random.key(0), 7, 4, jnp.float64)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 7, size=(6,)))       # [T]: one sequence of ids
    f = lambda c, p: jnp.sum(rnn.run(c, p, ids)[0] ** 2)
    assert_trees_close(jax.grad(f, argnums=1)(cell, p), jax.grad(f, argnums=1)(plain(cell), p), rtol=RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", GATED)
def test_forward_mode_and_second_order_equal_the_plain_scan(name):
    cell, p, xs, mask, carry = problem(name, T=5, B=2, H=3)
    weights = jnp.asarray(np.random.RandomState(2).randn(5, 2, 3))
    f, ref = loss_of(cell, mask, False, weights), loss_of(plain(cell), mask, False, weights)
    tangent = jax.tree.map(lambda a: jnp.full_like(a, 0.1), p)
    assert_trees_close(jax.jvp(lambda p: f(p, xs, carry), (p,), (tangent,)),
                       jax.jvp(lambda p: ref(p, xs, carry), (p,), (tangent,)), rtol=RTOL, what="jvp")
    hvp = lambda g: jax.jvp(jax.grad(lambda p: g(p, xs, carry)), (p,), (tangent,))[1]
    assert_trees_close(hvp(f), hvp(ref), rtol=1e-9, what="Hessian-vector product")


@pytest.mark.slow
@pytest.mark.parametrize("name", GATED)
def test_check_grads_to_second_order_in_both_modes(name):
    cell, p, xs, mask, carry = problem(name, T=4, B=2, H=3)
    check_grads(lambda p, xs, carry: rnn.run(cell, p, xs, carry, mask=mask)[0], (p, xs, carry),
                order=2, modes=("fwd", "rev"))


@pytest.mark.slow
@pytest.mark.parametrize("name", GATED)
def test_vmap_over_parameters_equals_a_loop(name):
    cell, _, xs, mask, carry = problem(name)
    ps = [problem(name, seed=s)[1] for s in range(3)]
    grad = jax.grad(lambda p: jnp.sum(rnn.run(cell, p, xs, carry, mask=mask)[0] ** 2))
    batched = jax.vmap(grad)(jax.tree.map(lambda *a: jnp.stack(a), *ps))
    for i, p in enumerate(ps):
        assert_trees_close(jax.tree.map(lambda a: a[i], batched), grad(p), rtol=1e-12)


@pytest.mark.parametrize("name", slow_unless(lambda name: name == "gru", [(n,) for n in GATED]))
def test_padding_with_nan_never_reaches_the_gradient(name):
    cell, p, xs, mask, carry = problem(name)
    xs = jnp.where(mask[..., None], xs, jnp.nan)
    g = jax.grad(lambda p: jnp.sum(rnn.run(cell, p, xs, carry, mask=mask)[0] ** 2))(p)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


@pytest.mark.slow
@pytest.mark.parametrize("name", GATED)
def test_float32_agrees_with_the_float64_reference(name):
    cell, p, xs, mask, carry = problem(name, T=30, B=4, H=16, D=8)
    f = lambda c, p, xs, carry: jnp.sum(jnp.tanh(rnn.run(c, p, xs, carry, mask=mask)[0]))
    g64 = jax.grad(f, argnums=1)(plain(cell), p, xs, carry)
    to32 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)
    g32 = jax.grad(f, argnums=1)(cell, to32(p), to32(xs), to32(carry))
    assert_trees_close(g32, g64, rtol=1e-4, what="float32 hoisted vs float64 plain")


@pytest.mark.parametrize("name", [pytest.param("elman", marks=pytest.mark.slow), "lstm", "gru"])
def test_run_takes_a_carry_as_a_tuple_and_refuses_a_wrong_one_before_tracing(name):
    """A carry given as a tuple/list (an LSTM's `LSTMState(h, c)` as `(h, c)`) is the same carry
    on the cell's own scan and on the plain one; a carry of another structure or shape is a
    TypeError/ValueError naming the carry (was an AttributeError, a `@` TypeError or a scan-type
    error deep in JAX, on the plain path)."""
    cell, p, xs, mask, carry = problem(name, T=3, B=2)
    want = rnn.run(cell, p, xs, carry, mask=mask)
    given = list(carry) if isinstance(carry, tuple) else None
    for c in (cell, plain(cell)):
        if given is not None:
            assert_trees_close(rnn.run(c, p, xs, given, mask=mask), want, rtol=1e-13)
            assert_trees_close(rnn.run(c, p, xs, tuple(given), mask=mask), want, rtol=1e-13)
        else:
            with pytest.raises(TypeError, match=f"carry of the {name} cell must look like"):
                rnn.run(c, p, xs, (carry,), mask=mask)
            assert_trees_close(rnn.run(c, p, xs, np.asarray(carry).tolist(), mask=mask), want, rtol=1e-13)
        with pytest.raises(ValueError, match=rf"carry of the {name} cell must have shape \(2, 5\)"):
            rnn.run(c, p, xs, jax.tree.map(lambda a: a[:1], carry), mask=mask)
        with pytest.raises(ValueError, match=rf"must have shape \(2, 5\) .*got \(2, 6\)"):
            rnn.run(c, p, xs, jax.tree.map(lambda a: jnp.zeros((2, 6)), carry), mask=mask)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) for n in ["lstm", "elman", "gru"]])
def test_wider_float_features_run_in_the_params_dtype(name):
    """Float64 features (numpy's default, kept under x64) into float32 params, and float32 into
    bfloat16 params, run in the params' dtype, equal to features cast by hand, on the cell's own
    scan and the plain one (was a scan carry-type error)."""
    cell, p, xs, mask, _ = problem(name, T=3, B=2)
    for dt, wide in ((jnp.float32, jnp.float64), (jnp.bfloat16, jnp.float32)):
        q = jax.tree.map(lambda a: a.astype(dt), p)
        for c in (cell, plain(cell)):
            hs, final = rnn.run(c, q, xs.astype(wide), mask=mask)
            assert hs.dtype == dt and all(a.dtype == dt for a in jax.tree.leaves(final))
            assert_trees_close((hs, final), rnn.run(c, q, xs.astype(dt), mask=mask), rtol=0)


@pytest.mark.parametrize("name", ["elman", "lstm", pytest.param("gru", marks=pytest.mark.slow)])
def test_a_narrower_carry_runs_in_the_params_dtype(name):
    """A bfloat16 (or integer) carry into float32 params equals the same carry cast to float32
    by hand, on the cell's own scan and the plain one (was a scan carry-type error)."""
    cell, p, xs, mask, carry = problem(name, T=3, B=2)
    p, xs = jax.tree.map(lambda a: a.astype(jnp.float32), (p, xs))
    narrow = jax.tree.map(lambda a: a.astype(jnp.bfloat16), carry)
    for c in (cell, plain(cell)):
        want = rnn.run(c, p, xs, jax.tree.map(lambda a: a.astype(jnp.float32), narrow), mask=mask)
        assert_trees_close(rnn.run(c, p, xs, narrow, mask=mask), want, rtol=0)
        assert rnn.run(c, p, xs, jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.int32), carry))[0].dtype == jnp.float32


def one_device_mesh():
    """A mesh of one device: `batch_split` takes its shard_map path (B divides), as with many."""
    return jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])


@pytest.mark.parametrize("name", ["gru", "elman"])
def test_batch_split_merges_each_devices_rows_in_a_shard_map_with_the_same_gradient(name):
    """Under `jrnn.batch_split.batch_split` (a data-parallel step) the weight gradient's rows merge per
    device, inside a shard_map, else over all T*B rows: same numbers either way."""
    cell, p, xs, mask, carry = problem(name)
    T, B = xs.shape[:2]
    weights = jnp.asarray(np.random.RandomState(1).randn(T, B, 5))
    grad_fn = lambda: jax.grad(loss_of(cell, mask, False, weights))   # a new function: traced anew
    assert "shard_map" not in str(jax.make_jaxpr(grad_fn())(p, xs, carry))
    merged = jax.jit(grad_fn())(p, xs, carry)
    with batch_split.batch_split(one_device_mesh()):
        assert "shard_map" in str(jax.make_jaxpr(grad_fn())(p, xs, carry))
        split = jax.jit(grad_fn())(p, xs, carry)
    assert_trees_close(split, merged, rtol=RTOL, what="d loss / params, rows merged per device vs over all")


@pytest.mark.parametrize("batch", [(), pytest.param((2, 3), marks=pytest.mark.slow)])
def test_batch_split_gives_the_plain_scans_lstm_derivatives_for_any_batch_rank(batch):
    """The LSTM (whose tangent now reads `A * (dh W + du + da)`) under `jrnn.batch_split.batch_split`, with
    unbatched [T, D] and two batch dims [T, B1, B2, D] (each device's rows merged in a
    shard_map): reverse mode, forward mode and vmap over a batch dim equal the plain scan's."""
    cell, p, _, _, _ = problem("lstm", T=4, H=3)
    rng = np.random.RandomState(5)
    xs = jnp.asarray(rng.randn(4, *batch, 4))
    carry = jax.tree.map(lambda z: jnp.asarray(0.3 * rng.randn(*z.shape)), cell.zeros(p, batch))
    mask = jnp.asarray(rng.rand(4, *batch) < 0.7) if batch else None
    f = lambda c: lambda p, xs, carry: jnp.sum(jnp.sin(rnn.run(c, p, xs, carry, mask=mask, reverse=True)[0]))
    tangent = jax.tree.map(lambda a: jnp.full_like(a, 0.1), p)
    want_g = jax.grad(f(plain(cell)), argnums=(0, 1, 2))(p, xs, carry)
    want_t = jax.jvp(lambda p: f(plain(cell))(p, xs, carry), (p,), (tangent,))
    with batch_split.batch_split(one_device_mesh()):
        g = jax.jit(jax.grad(f(cell), argnums=(0, 1, 2)))(p, xs, carry)
        t = jax.jvp(lambda p: f(cell)(p, xs, carry), (p,), (tangent,))
    assert_trees_close(g, want_g, rtol=RTOL, what="grad under batch_split")
    assert_trees_close(t, want_t, rtol=RTOL, what="jvp under batch_split")
    if batch:
        per = lambda c: jax.vmap(jax.grad(lambda p, x, h: jnp.sum(jnp.sin(rnn.run(c, p, x, h)[0]))),
                                 in_axes=(None, 1, 0))(p, xs, carry)
        want = per(plain(cell))
        with batch_split.batch_split(one_device_mesh()):
            assert_trees_close(per(cell), want, rtol=RTOL, what="vmap of grad under batch_split")


def test_batch_split_is_undone_on_exceptions_and_nests_and_the_data_parallel_step_traces_under_it(monkeypatch):
    """The ContextVar is reset however the block ends (nested blocks too), and
    `make_data_parallel_step` traces its step under it while `make_step` does not."""
    import jrnn
    outer, inner = one_device_mesh(), jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    assert batch_split.split_mesh() is None
    with pytest.raises(KeyError):
        with batch_split.batch_split(outer):
            with batch_split.batch_split(inner):
                assert batch_split.split_mesh() is inner
            assert batch_split.split_mesh() is outer
            raise KeyError("inside")
    assert batch_split.split_mesh() is None
    seen = []
    affine = hoisted._affine
    monkeypatch.setattr(hoisted, "_affine", lambda *a: seen.append(batch_split.split_mesh()) or affine(*a))
    model = jrnn.lm.model("lstm", vocab_size=5, hidden_size=3)
    p, opt = model.init(jax.random.key(0)), jrnn.optim.sgd(0.1)
    loss = lambda p, batch, carry: model.loss(p, batch[0], batch[1], carry)
    ids = np.random.RandomState(0).randint(0, 5, (4, 2))
    mesh = jrnn.distributed.batch_mesh(2, jax.devices()[:1])
    jrnn.distributed.make_data_parallel_step(loss, opt, mesh=mesh)(p, opt.init(p), (ids, ids))
    assert seen == [mesh] and batch_split.split_mesh() is None
    jrnn.make_step(loss, opt)(p, opt.init(p), (ids, ids))
    assert seen == [mesh, None]


def _scan_carry_shapes(jaxpr):
    """The carry shapes of every scan in a closed jaxpr, nested ones included."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            k, n = eqn.params["num_consts"], eqn.params["num_carry"]
            shapes.append([v.aval.shape for v in eqn.invars[k:k + n]])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            shapes += _scan_carry_shapes(sub)
    return shapes


def test_the_lstms_forward_loop_writes_its_coefficients_over_its_inputs_and_the_gru_stacks_its_own():
    """Under differentiation the LSTM's per-step coefficients (shaped like u_t, [B, 4H]) go over
    us in place, a [T, B, 4H] loop carry; the GRU's (r, z, n, h W_n: [B, H] each) are stacked;
    a plain forward pass carries no buffer. Values and gradients: the tests above."""
    for name, over_us in (("lstm", True), ("gru", False)):
        cell, p, xs, mask, carry = problem(name)
        T, B, G = xs.shape[0], xs.shape[1], p.w_h.shape[1]
        fwd = lambda p: jnp.sum(rnn.run(cell, p, xs, carry, mask=mask)[0])
        carried = lambda f: [s for c in _scan_carry_shapes(jax.make_jaxpr(f)(p).jaxpr) for s in c]
        assert ((T, B, G) in carried(jax.grad(fwd))) == over_us, name
        assert (T, B, G) not in carried(fwd), name


@pytest.mark.parametrize("D,T,B", [(5, 4, 3), (40, 4, 3)])
def test_project_adds_the_bias_to_the_table_or_to_the_rows_with_the_same_values_and_gradients(D, T, B):
    """`jrnn.projection.project` adds b to the [D, N] table when D < T*B, else to the gathered rows:
    both equal onehot(ids) @ w + b, and so do their gradients (float64)."""
    rng = np.random.RandomState(0)
    w, b = jnp.asarray(rng.randn(D, 6)), jnp.asarray(rng.randn(6))
    ids = jnp.asarray(rng.randint(0, D, (T, B)))
    weights = jnp.asarray(rng.randn(T, B, 6))
    f = lambda w, b: jnp.sum(jnp.sin(projection.project(w, b, ids)) * weights)
    ref = lambda w, b: jnp.sum(jnp.sin(jax.nn.one_hot(ids, D, dtype=w.dtype) @ w + b[None, None]) * weights)
    np.testing.assert_allclose(projection.project(w, b, ids), jax.nn.one_hot(ids, D, dtype=w.dtype) @ w + b[None, None],
                               rtol=1e-14)
    assert_trees_close(jax.grad(f, argnums=(0, 1))(w, b), jax.grad(ref, argnums=(0, 1))(w, b), rtol=1e-12,
                       what="d / (w, b)")


class _Coefficients(NamedTuple):
    A: jax.Array
    f: jax.Array
    kc: jax.Array


def _lstm_with_saved(pack, unpack):
    """The LSTM's linearization with its saved (A [..., 4H], f, kc) repacked by the user's cell."""
    lin = cells.LSTM_LINEARIZATION

    def forward(w, b, c, u):
        new, saved = lin.forward(w, b, c, u)
        return new, pack(*saved)
    return lin._replace(forward=forward, coefficients=lambda saved, prev, new: (unpack(saved), None))


@pytest.mark.parametrize("pack,unpack", [
    (_Coefficients, lambda s: (s.A, s.f, s.kc)),                                   # a NamedTuple
    (lambda A, f, kc: ((A, f), kc), lambda s: (*s[0], s[1])),                      # a nested tuple
    (lambda A, f, kc: {"A": A, "f": f, "kc": kc}, lambda s: (s["A"], s["f"], s["kc"])),   # a dict
], ids=["namedtuple", "nested", "dict"])
def test_a_user_linearizations_saved_pytree_reaches_its_coefficients_as_it_returned_it(pack, unpack):
    """Whatever pytree `forward` saves (its first leaf shaped like u_t or not) comes back to
    `coefficients` with its own structure, and the gradient equals the LSTM's own (float64)."""
    rng = np.random.RandomState(0)
    T, B, H = 5, 3, 4
    w, us = jnp.asarray(0.5 * rng.randn(H, 4 * H)), jnp.asarray(rng.randn(T, B, 4 * H))
    c0 = cells.LSTMState(jnp.asarray(rng.randn(B, H)), jnp.asarray(rng.randn(B, H)))

    def loss(lin, w, us):
        hs, final = hoisted.run(lin, w, None, us, c0, reverse=True)
        return jnp.sum(jnp.sin(hs)) + jnp.sum(final.c ** 3)
    g = jax.grad(loss, argnums=(1, 2))(_lstm_with_saved(pack, unpack), w, us)
    assert_trees_close(g, jax.grad(loss, argnums=(1, 2))(cells.LSTM_LINEARIZATION, w, us), rtol=1e-12)


def test_take_rows_gives_nan_rows_for_every_id_outside_the_table_under_jit_wide_and_narrow_ids():
    """An id outside [0, V) is a NaN row under `jax.jit` (where jrnn's id checks cannot raise),
    however far out: int64 ids 2**32 + 1 or -2**40 must not wrap into the table when the gather
    narrows its indices to int32, and int8 ids with -1 against a 200-row table (V does not fit int8)."""
    w = jnp.arange(400.0).reshape(200, 2)
    take = jax.jit(projection.take_rows)
    ids = np.array([1, 2 ** 32 + 1, 2 ** 40, -2 ** 40, 2 ** 31, -1, 200, 199], np.int64)
    rows = np.asarray(take(jnp.asarray(ids), w))
    np.testing.assert_array_equal(np.isnan(rows).all(-1), [False, True, True, True, True, True, True, False])
    np.testing.assert_array_equal(rows[[0, 7]], np.asarray(w)[[1, 199]])
    narrow = np.asarray(take(jnp.asarray(np.array([[3], [-1], [127]], np.int8)), w))
    assert narrow.shape == (3, 1, 2)
    np.testing.assert_array_equal(np.isnan(narrow[:, 0]).all(-1), [False, True, False])
    np.testing.assert_array_equal(narrow[[0, 2], 0], np.asarray(w)[[3, 127]])


def test_the_names_that_moved_out_of_hoisted_stay_importable_from_it():
    """The input projection moved to `jrnn.projection` and the data-parallel context to
    `jrnn.batch_split`; code written against `jrnn.hoisted.<name>` (the model's readout, the
    data-parallel step) gets the same objects."""
    assert (hoisted.project, hoisted.take_rows, hoisted.merged) == (projection.project, projection.take_rows,
                                                                    projection.merged)
    assert (hoisted.batch_split, hoisted.per_device) == (batch_split.batch_split, batch_split.per_device)
