"""Data-parallel training over simulated CPU devices equals the single-device step.

In float64 only the order of the gradient sums differs between 1 and 4 shards. Measured worst
elementwise relative differences after 3 Adam steps: losses 1.8e-16, parameters and carries
3.4e-14 (jax 0.10.2, CPU); the bounds below (1e-14, 1e-12) sit a small factor above them."""

import pytest
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)  # float64, so only the sharding can make a difference
import jrnn
assert jax.device_count() == 4, jax.devices()
model = jrnn.lm.model("lstm", vocab_size=11, hidden_size=16, layers=2)
params = model.init(jax.random.key(0), jnp.float64)
opt = jrnn.optim.adam(1e-2, clip_norm=1.0)

def loss_fn(p, batch, carry):
    x, y = batch
    loss, carry = model.loss(p, x, y, carry)
    return loss, carry

rng = np.random.RandomState(0)
batches = [(rng.randint(0, 11, (12, 8)), rng.randint(0, 11, (12, 8))) for _ in range(3)]
single, parallel = jrnn.make_step(loss_fn, opt), jrnn.distributed.make_data_parallel_step(loss_fn, opt)
results = []
for step in (single, parallel):
    p, s, c, losses = params, opt.init(params), None, []
    for b in batches:
        p, s, m, c = step(p, s, b, c)
        losses.append(float(m["loss"]))
    results.append((p, losses, c))
(p1, l1, c1), (p2, l2, c2) = results
leaf = jax.tree.leaves(p2)[0]
assert len(leaf.sharding.device_set) == 4
LOSS_RTOL, RTOL = 1e-14, 1e-12
np.testing.assert_allclose(l2, l1, rtol=LOSS_RTOL, atol=0)
for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=0)
for a, b in zip(jax.tree.leaves(c2), jax.tree.leaves(c1)):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=0)

# K steps per call: batch leaves stacked [K, T, B], split along B
stacked = tuple(np.stack(z) for z in zip(*batches))
multi, multi_parallel = jrnn.make_multi_step(loss_fn, opt), jrnn.distributed.make_data_parallel_step(loss_fn, opt, multi_step=True)
c0 = model.zeros(params, (8,))   # a scan needs the carry's structure from the start
(pm1, _, m1, cm1), (pm2, _, m2, cm2) = (f(params, opt.init(params), stacked, c0) for f in (multi, multi_parallel))
assert len(jax.tree.leaves(pm2)[0].sharding.device_set) == 4
np.testing.assert_allclose(m1["loss"], l1, rtol=1e-12)   # the multi-step runs the same 3 steps
np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=LOSS_RTOL, atol=0)
for a, b in zip(jax.tree.leaves((pm2, cm2)), jax.tree.leaves((pm1, cm1))):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=0)

# batch_mesh: the most devices that split B evenly
assert [jrnn.distributed.batch_mesh(b).size for b in (12, 6, 9, 7, 1)] == [4, 3, 3, 1, 1]
for bad in (0, -2, 2.0):
    try:
        jrnn.distributed.batch_mesh(bad)
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError(f"batch_mesh({bad!r}) accepted")
print("ok", l1)
"""


@pytest.mark.slow
def test_sharded_step_and_multi_step_equal_single_device_steps():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith("ok")


MESH_ARGS = r"""
import numpy as np, jax, jrnn
mesh = jrnn.distributed.batch_mesh(np.int64(8))          # a numpy integer is a batch size
assert mesh.size == 4
assert jrnn.distributed.process_rows(mesh, np.int32(8)).tolist() == list(range(8))
def refused(f, says, error=ValueError):
    try:
        f()
    except error as e:
        assert says in str(e), e
    else:
        raise AssertionError("accepted")
refused(lambda: jrnn.distributed.batch_mesh(True), "batch_size must be an integer", TypeError)  # was a batch of 1
refused(lambda: jrnn.distributed.batch_mesh(4, devices=[]), "devices is empty")  # was "max() arg is an empty sequence"
for bad in (4.0, True):                                               # 4.0 gave float row indices
    refused(lambda: jrnn.distributed.process_rows(mesh, bad), "batch_size must be an integer", TypeError)
for bad in (0, -4):
    refused(lambda: jrnn.distributed.process_rows(mesh, bad), "batch_size must be >= 1")
refused(lambda: jrnn.distributed.process_rows(mesh, 6), "not divisible by the mesh's 4 devices")
# meshes: a "data" axis, no other axis of size > 1 (a 2x2 mesh listed every row twice: [0, 1, 0, 1, 2, 3, 2, 3])
loss = lambda p, b, c: (jax.numpy.mean(b * p), c)
two_d = jax.make_mesh((2, 2), ("data", "model"))
for bad, says, error in ((42, "mesh must be a jax.sharding.Mesh", TypeError),
                         (jax.make_mesh((4,), ("batch",)), "mesh must have an axis named 'data'", ValueError),
                         (two_d, "other axes must have size 1, got {'model': 2}", ValueError)):
    refused(lambda: jrnn.distributed.make_data_parallel_step(loss, jrnn.optim.sgd(0.1), mesh=bad), says, error)
    refused(lambda: jrnn.distributed.process_rows(bad, 8), says, error)
column = jax.make_mesh((4, 1), ("data", "model"))
assert jrnn.distributed.process_rows(column, 8).tolist() == list(range(8))
refused(lambda: jrnn.distributed.batch_mesh(4, devices=5), "devices must be a list of jax devices", TypeError)
refused(lambda: jrnn.distributed.batch_mesh(4, devices=["cpu"]), "devices must be a list of jax devices", TypeError)
assert jrnn.distributed.batch_mesh(4, devices=tuple(jax.devices()[:2])).size == 2
print("ok")
"""


def test_batch_mesh_process_rows_and_the_step_refuse_bad_batches_devices_and_meshes_by_name():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", MESH_ARGS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stderr[-3000:]


# ---- jrnn.distributed: the module above jrnn.train, and the old jrnn.train spellings ----------

import ast
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import jrnn


def _tiny_regression():
    """A linear model's squared error over a time-major [T=4, B=2, D=3] batch: small to compile."""
    params, opt = {"w": jnp.ones((3, 2)) * 0.1}, jrnn.optim.sgd(0.1)
    x = np.random.RandomState(0).randn(4, 2, 3).astype(np.float32)
    return params, opt, (lambda p, b, c: (jnp.mean((b @ p["w"]) ** 2), c)), x


@pytest.mark.parametrize("name", ["make_data_parallel_step", "batch_mesh", "process_rows", "to_host",
                                  "ProcessGroupError"])
def test_each_old_train_spelling_warns_and_is_the_distributed_object(name):
    with pytest.warns(DeprecationWarning, match=rf"jrnn\.train\.{name} moved to jrnn\.distributed\.{name} .*0\.3"):
        old = getattr(jrnn.train, name)
    assert old is getattr(jrnn.distributed, name)


def test_the_old_train_spellings_give_the_same_results_as_the_distributed_ones():
    params, opt, loss, batch = _tiny_regression()
    results = []
    for spelling in ("old", "new"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if spelling == "old" else "error", DeprecationWarning)
            mod = jrnn.train if spelling == "old" else jrnn.distributed
            mesh = mod.batch_mesh(2, jax.devices()[:1])
            step = mod.make_data_parallel_step(loss, opt, mesh=mesh)
            p, _, m, _ = step(params, opt.init(params), batch)
            results.append((mesh.shape, mod.process_rows(mesh, 2), mod.to_host((p, m["loss"]))))
    (shape_old, rows_old, host_old), (shape_new, rows_new, host_new) = results
    assert shape_old == shape_new and rows_old.tolist() == rows_new.tolist() == [0, 1]
    for a, b in zip(jax.tree.leaves(host_old), jax.tree.leaves(host_new)):
        assert isinstance(a, np.ndarray) and np.array_equal(a, b)
    with pytest.warns(DeprecationWarning):
        with pytest.raises(jrnn.train.ProcessGroupError):   # the old name catches what the new one raises
            raise jrnn.distributed.ProcessGroupError("peer gone")


def test_from_import_of_an_old_train_name_warns_and_unknown_names_still_raise_attribute_error():
    with pytest.warns(DeprecationWarning, match=r"jrnn\.distributed\.to_host"):
        from jrnn.train import to_host
    assert to_host is jrnn.distributed.to_host
    with pytest.raises(AttributeError, match=r"module 'jrnn\.train' has no attribute 'no_such_name'"):
        jrnn.train.no_such_name
    assert not set(jrnn.distributed.__all__) & set(jrnn.train.__all__)


def test_train_does_not_import_distributed_which_sits_above_it():
    """Imports only run down: distributed builds on train's steps, never the reverse."""
    def imported(module):
        with open(module.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names |= {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        return names
    assert not any("distributed" in n for n in imported(jrnn.train)), imported(jrnn.train)
    assert "jrnn.train" in imported(jrnn.distributed)
