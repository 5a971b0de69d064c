"""Training across processes (jax.distributed, gloo on CPU) equals one process over as many
devices; a process that dies stops the others with a clear error instead of a hang."""

import pytest
import os
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# argv: out.npz  [process_id num_processes port [die_at_step]]; without a process id: one process
SCRIPT = r"""
import functools, os, signal, sys
out = sys.argv[1]
import jax, numpy as np
if len(sys.argv) > 2:
    pid, n, port = map(int, sys.argv[2:5])
    jax.distributed.initialize(f"127.0.0.1:{port}", n, pid, initialization_timeout=60, heartbeat_timeout_seconds=10)
jax.config.update("jax_enable_x64", True)  # float64, so only the summation order could differ
import jax.numpy as jnp
import jrnn
die_at = int(sys.argv[5]) if len(sys.argv) > 5 else -1
assert jax.device_count() == 2, jax.devices()
T, B, V, H = 5, 4, 11, 8
rng = np.random.RandomState(0)
batches = [(rng.randint(0, V, (T, B)), rng.randint(0, V, (T, B))) for _ in range(4)]   # global batches
mesh = jrnn.distributed.batch_mesh(B)
rows = jrnn.distributed.process_rows(mesh, B)   # this process's share: all rows with one process
results = {}


def lm(cell):
    # init, loss, zeros of a one-layer LM of `cell` (the jrnn.lm.model value when it exists)
    if hasattr(jrnn.lm, "model"):
        m = jrnn.lm.model(cell, vocab_size=V, hidden_size=H)
        return (lambda k: m.init(k, dtype=jnp.float64)), m.loss, m.zeros
    return (lambda k: jrnn.lm.init(k, cell=cell, vocab_size=V, hidden_size=H, dtype=jnp.float64),
            functools.partial(jrnn.lm.sequence_loss, cell=cell), functools.partial(jrnn.lm.zeros, cell=cell))


for cell in ("elman", "lstm"):   # Elman: one step per call; LSTM: K=2 steps per call (charlm --full)
    init, loss, zeros = lm(cell)
    params = init(jax.random.key(0))
    opt = jrnn.optim.adam(1e-2, clip_norm=1.0)
    loss_fn = lambda p, b, c, loss=loss: loss(p, b[0], b[1], c)
    step = jrnn.distributed.make_data_parallel_step(loss_fn, opt, mesh=mesh, multi_step=cell == "lstm")
    calls = ([(x[:, rows], y[:, rows]) for x, y in batches] if cell == "elman" else
             [tuple(np.stack([b[k][:, rows] for b in batches[i:i + 2]]) for k in (0, 1)) for i in (0, 2)])
    if jax.process_count() > 1 and cell == "elman":   # replicas that differ are refused on every process
        bad = jax.tree.map(lambda a: a + jax.process_index(), params)
        try:
            step(bad, opt.init(bad), calls[0])
        except ValueError as e:
            assert "equal on every process" in str(e), e
        else:
            raise AssertionError("params that differ across processes were accepted")
    p, s, c, losses = params, opt.init(params), zeros(params, (len(rows),)), []
    for i, batch in enumerate(calls):
        if i == die_at and jax.process_index() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            p, s, m, c = step(p, s, batch, c)
        except jrnn.distributed.ProcessGroupError as e:
            print("ProcessGroupError:", e, flush=True)
            os._exit(3)
        if jax.process_count() > 1:
            assert isinstance(m["loss"], np.ndarray)   # host values, the same on every process
        losses.extend(np.atleast_1d(m["loss"]))
    results[cell] = (losses, jrnn.distributed.to_host((p, c)))
    results[cell + "_init"] = (losses, params)
if jax.process_count() > 1:   # every process got the same metrics and the same final params
    from jax.experimental import multihost_utils
    multihost_utils.assert_equal({k: (np.asarray(l), jax.tree.leaves(t)) for k, (l, t) in results.items()})
if jax.process_index() == 0:
    np.savez(out, **{f"{cell}_losses": l for cell, (l, _) in results.items()},
             **{f"{cell}_{i}": a for cell, (_, t) in results.items() for i, a in enumerate(jax.tree.leaves(t))})
print("done", flush=True)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, devices):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p, timeout=300):  # generous: the 2-core test machine may be shared
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


@pytest.mark.slow
def test_two_processes_train_like_one_process_over_two_devices_and_a_killed_one_stops_the_other(tmp_path):
    port, kill_port = _free_port(), _free_port()
    single = _start([tmp_path / "single.npz"], devices=2)
    workers = [_start([tmp_path / "dist.npz", i, 2, port], devices=1) for i in range(2)]
    doomed = [_start([tmp_path / "killed.npz", i, 2, kill_port, 1], devices=1) for i in range(2)]
    t0 = time.monotonic()
    try:
        for p in [single, *workers]:
            rc, out = _finish(p)
            assert rc == 0, out[-3000:]
        rc1, _ = _finish(doomed[1])
        rc0, out0 = _finish(doomed[0])
    finally:
        for p in [single, *workers, *doomed]:
            if p.poll() is None:
                p.kill()
    print(f"{time.monotonic() - t0:.1f} s")

    a, b = np.load(tmp_path / "single.npz"), np.load(tmp_path / "dist.npz")
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 4
    for k in a.files:
        # float64; the same per-device sums, all-reduced by gloo instead of in one process
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-14, err_msg=k)
    assert a["lstm_losses"].shape == (4,) and a["elman_losses"].shape == (4,)
    assert np.abs(a["lstm_0"] - a["lstm_init_0"]).max() > 1e-3   # it trained

    assert rc1 == -9
    assert rc0 == 3 and "another process died" in out0, out0[-3000:]   # an error, not a hang
