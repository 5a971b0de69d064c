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
single, parallel = jrnn.make_step(loss_fn, opt), jrnn.train.make_data_parallel_step(loss_fn, opt)
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
multi, multi_parallel = jrnn.make_multi_step(loss_fn, opt), jrnn.train.make_data_parallel_step(loss_fn, opt, multi_step=True)
c0 = model.zeros(params, (8,))   # a scan needs the carry's structure from the start
(pm1, _, m1, cm1), (pm2, _, m2, cm2) = (f(params, opt.init(params), stacked, c0) for f in (multi, multi_parallel))
assert len(jax.tree.leaves(pm2)[0].sharding.device_set) == 4
np.testing.assert_allclose(m1["loss"], l1, rtol=1e-12)   # the multi-step runs the same 3 steps
np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=LOSS_RTOL, atol=0)
for a, b in zip(jax.tree.leaves((pm2, cm2)), jax.tree.leaves((pm1, cm1))):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=0)

# batch_mesh: the most devices that split B evenly
assert [jrnn.train.batch_mesh(b).size for b in (12, 6, 9, 7, 1)] == [4, 3, 3, 1, 1]
for bad in (0, -2, 2.0):
    try:
        jrnn.train.batch_mesh(bad)
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
mesh = jrnn.train.batch_mesh(np.int64(8))          # a numpy integer is a batch size
assert mesh.size == 4
assert jrnn.train.process_rows(mesh, np.int32(8)).tolist() == list(range(8))
def refused(f, says, error=ValueError):
    try:
        f()
    except error as e:
        assert says in str(e), e
    else:
        raise AssertionError("accepted")
refused(lambda: jrnn.train.batch_mesh(True), "batch_size must be an integer", TypeError)  # was a batch of 1
refused(lambda: jrnn.train.batch_mesh(4, devices=[]), "devices is empty")  # was "max() arg is an empty sequence"
for bad in (4.0, True):                                               # 4.0 gave float row indices
    refused(lambda: jrnn.train.process_rows(mesh, bad), "batch_size must be an integer", TypeError)
for bad in (0, -4):
    refused(lambda: jrnn.train.process_rows(mesh, bad), "batch_size must be >= 1")
refused(lambda: jrnn.train.process_rows(mesh, 6), "not divisible by the mesh's 4 devices")
print("ok")
"""


def test_batch_mesh_and_process_rows_take_numpy_integers_and_refuse_bools_floats_and_uneven_batches():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", MESH_ARGS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stderr[-3000:]
