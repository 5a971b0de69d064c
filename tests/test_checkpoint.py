"""Checkpoints: exact round trips, checks on load, crash safety, bitwise resume, NaN stops."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import checkpoint, elman, optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_state(seed=0, H=16):
    params = elman.init(jax.random.key(seed), vocab_size=7, hidden_size=H)
    opt = optim.karpathy_adagrad(0.1)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt.init(params), params)
    return {"params": params, "opt_state": opt_state, "key": jax.random.key_data(jax.random.key(seed)),
            "h": jnp.arange(H, dtype=jnp.float32)}


def bits_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) and np.asarray(x).dtype == np.asarray(y).dtype
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_round_trip_is_bitwise(tmp_path):
    state = make_state()
    path = checkpoint.save(tmp_path, state, step=12, config={"lr": 0.1}, vocab="abcdefg", cursor={"pos": 300})
    ck = checkpoint.load(path, make_state(1), config={"lr": 0.1}, vocab="abcdefg")
    assert bits_equal(ck.state, state) and ck.step == 12 and ck.cursor == {"pos": 300}
    key = jax.random.wrap_key_data(ck.state["key"])
    assert np.array_equal(jax.random.normal(key, (3,)), jax.random.normal(jax.random.key(0), (3,)))


def test_keeps_the_last_n(tmp_path):
    for step in range(5):
        checkpoint.save(tmp_path, make_state(), step=step, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt_0000000003.npz", "ckpt_0000000004.npz"]


def test_mismatches_are_refused(tmp_path):
    path = checkpoint.save(tmp_path, make_state(), step=1, config={"lr": 0.1}, vocab="abc")
    with pytest.raises(ValueError, match="config"):
        checkpoint.load(path, make_state(), config={"lr": 0.2})
    with pytest.raises(ValueError, match="vocabulary"):
        checkpoint.load(path, make_state(), vocab="abd")
    with pytest.raises(ValueError, match="template wants"):
        checkpoint.load(path, make_state(H=8))
    with pytest.raises(ValueError, match="another structure"):
        checkpoint.load(path, {"params": make_state()["params"]})
    with pytest.raises(ValueError, match=r"\['key'\] is uint32\[2\], template wants prng_key\(threefry2x32\)\[2\]"):
        checkpoint.load(path, {**make_state(), "key": jax.random.key(0)})     # raw key data saved, typed key wanted


def test_format_version_is_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 99)
    path = checkpoint.save(tmp_path, make_state(), step=1)
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 1)
    with pytest.raises(ValueError, match="format version 99"):
        checkpoint.load(path, make_state())


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_file_is_a_clear_error_and_the_previous_one_loads(tmp_path, damage):
    good = make_state(0)
    checkpoint.save(tmp_path, good, step=1)
    newest = checkpoint.save(tmp_path, make_state(1), step=2)
    raw = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(raw[: len(raw) // 2])
    else:
        i = raw.index(np.asarray(make_state(1)["params"].w_hh).tobytes()[:16]) + 8
        newest.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:])
    with pytest.raises(checkpoint.CheckpointDamagedError, match=f"this checkpoint file is damaged: {newest}, "):
        checkpoint.load(newest, make_state())
    with pytest.warns(checkpoint.SkippedCheckpointWarning, match=f"damaged: {newest}.*loaded .*ckpt_0000000001"):
        ck = checkpoint.load_latest(tmp_path, make_state())
    assert ck.step == 1 and bits_equal(ck.state, good)


WRITER = """
import sys, jax, jax.numpy as jnp
from jrnn import checkpoint
state = {"w": jnp.ones((512, 512)), "step": jnp.zeros(())}
print("ready", flush=True)
for step in range(1, 100000):
    state = {"w": state["w"] + 1, "step": jnp.asarray(float(step))}
    checkpoint.save(sys.argv[1], state, step=step, keep=2)
"""


@pytest.mark.slow
def test_sigkill_during_writes_never_leaves_an_unloadable_latest(tmp_path):
    rng = np.random.RandomState(0)
    template = {"w": jnp.zeros((512, 512), jnp.float32), "step": jnp.zeros((), jnp.float32)}
    for trial in range(6):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, cwd=ROOT)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + rng.uniform(0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        for path in checkpoint.list_checkpoints(tmp_path):  # every file under its final name is whole
            ck = checkpoint.load(path, template)
            assert float(ck.state["step"]) == ck.step and float(ck.state["w"][0, 0]) == ck.step + 1
        assert checkpoint.load_latest(tmp_path, template) is not None or trial == 0


def test_bad_step_counter_stops_after_consecutive_nonfinite_steps(tmp_path):
    params = elman.init(jax.random.key(0), vocab_size=5, hidden_size=4)
    opt = optim.sgd(0.1)

    def loss_fn(p, batch, carry):
        x, y, scale = batch
        logits, _ = elman.apply(p, x)
        return jrnn.losses.softmax_cross_entropy(logits, y) * scale, carry

    step = jrnn.make_step(loss_fn, opt, max_consecutive_skips=None)   # the counter below does the counting
    state = opt.init(params)
    counter = jrnn.train.BadStepCounter(limit=3)
    x, y = jnp.array([1, 2, 3]), jnp.array([2, 3, 4])
    with pytest.raises(jrnn.train.NonFiniteError, match="3 consecutive steps"):
        for i, scale in enumerate([1.0, 1.0, jnp.nan, 1.0, jnp.nan, jnp.inf, jnp.nan, 1.0]):
            params, state, m, _ = step(params, state, (x, y, jnp.asarray(scale)), None)
            counter.update(m["skipped"])
            if not int(m["skipped"]):
                checkpoint.save(tmp_path, params, step=i)
    assert counter.step == 7 and counter.total == 4
    ck = checkpoint.load_latest(tmp_path, params)
    assert ck.step == 3 and bits_equal(ck.state, params)  # last good state == current params


def _minchar(out, *args):
    cmd = [sys.executable, "-m", "experiments.minchar", "--baseline-steps", "0", "--quiet",
           "--checkpoint-every", "200", "--out", str(out), *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_resume_in_a_new_process_is_bitwise_identical(data_dir, tmp_path):
    straight = _minchar(tmp_path / "a", "--steps", "400")
    _minchar(tmp_path / "b", "--steps", "200")
    resumed = _minchar(tmp_path / "b", "--steps", "400", "--resume")
    assert straight["runs"][0]["losses"] == resumed["runs"][0]["losses"]
    from experiments import minchar
    text = jrnn.data.load_text("kafka")
    vocab = jrnn.data.build_vocab(text)
    p0 = elman.init(jax.random.key(0), vocab_size=vocab.size, hidden_size=minchar.HIDDEN)
    template = {"params": p0, "opt_state": minchar.OPTIMIZER.init(p0), "h": elman.zeros_carry(p0)}
    load = lambda run, step: checkpoint.load(tmp_path / run / "checkpoints" / "seed_0" / f"ckpt_{step:010d}.npz", template)
    a, b = load("a", 400), load("b", 400)
    assert bits_equal(a.state, b.state)

    # negative controls: resuming without the optimizer state or the carried h changes the bits
    mid, ids = load("b", 200).state, vocab.encode(text)
    fresh_opt, _, _ = minchar.train(mid["params"], ids, 400, opt_state=None, h=mid["h"], start=200)
    zero_h, _, _ = minchar.train(mid["params"], ids, 400, opt_state=mid["opt_state"], h=None, start=200)
    exact, _, _ = minchar.train(mid["params"], ids, 400, opt_state=mid["opt_state"], h=mid["h"], start=200)
    assert bits_equal(exact, a.state["params"])
    assert not bits_equal(fresh_opt, a.state["params"]) and not bits_equal(zero_h, a.state["params"])


@pytest.mark.slow
def test_same_command_same_losses_bit_for_bit(data_dir, tmp_path):
    one = _minchar(tmp_path / "one", "--steps", "200")
    two = _minchar(tmp_path / "two", "--steps", "200")
    assert one["runs"][0]["losses"] == two["runs"][0]["losses"]


@pytest.mark.slow
def test_charlm_full_resume_continues_bit_for_bit(data_dir, tmp_path):
    def run(out, *args):
        cmd = [sys.executable, "-m", "experiments.charlm", "--full", "--chars", "30000", "--hidden", "16", "--batch", "4",
               "--seq-len", "16", "--sample-len", "5", "--checkpoint-every", "10", "--quiet", "--out", str(out), *args]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return json.loads((out / "results.json").read_text())

    straight = run(tmp_path / "a", "--epochs", "2")
    run(tmp_path / "b", "--epochs", "1")
    resumed = run(tmp_path / "b", "--epochs", "2", "--resume")
    assert [h["val_nats"] for h in straight["history"]] == [h["val_nats"] for h in resumed["history"]]
    assert straight["sample"] == resumed["sample"]


def test_load_of_a_folder_or_a_missing_file_says_so(tmp_path):
    checkpoint.save(tmp_path, make_state(), step=1)
    with pytest.raises(ValueError, match="is a folder, not a checkpoint file") as e:
        checkpoint.load(tmp_path, make_state())
    assert "corrupted" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="no checkpoint file at"):
        checkpoint.load(tmp_path / "ckpt_0000000099.npz", make_state())


# ---- runs: a folder's checkpoints belong to one run ------------------------------------------

def test_saving_an_earlier_step_never_deletes_the_file_just_written(tmp_path):
    for step in range(500, 1600, 100):
        checkpoint.save(tmp_path, make_state(0), step=step, keep=3)
    path = checkpoint.save(tmp_path, make_state(1), step=100, keep=3)
    assert path.exists()                                    # was deleted by the name-ordered prune
    ck = checkpoint.load_latest(tmp_path, make_state())
    assert ck.path == path and ck.step == 100 and bits_equal(ck.state, make_state(1))   # newest write
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "ckpt_0000000100.npz", "ckpt_0000001400.npz", "ckpt_0000001500.npz"]


def test_a_new_run_refuses_a_folder_of_another_runs_checkpoints_unless_told_to_overwrite(tmp_path):
    a = checkpoint.start_run(tmp_path)
    for step in (500, 1000):
        checkpoint.save(tmp_path, make_state(0), step=step, run_id=a)
    with pytest.raises(checkpoint.RunConflictError, match="--resume.*--overwrite"):
        checkpoint.start_run(tmp_path)
    assert len(checkpoint.list_checkpoints(tmp_path)) == 2 and checkpoint.run_of(tmp_path) == a
    b = checkpoint.start_run(tmp_path, overwrite=True)
    assert b != a and checkpoint.run_of(tmp_path) == b and checkpoint.list_checkpoints(tmp_path) == []
    checkpoint.save(tmp_path, make_state(1), step=100, run_id=b)
    ck = checkpoint.load_latest(tmp_path, make_state())
    assert ck.step == 100 and ck.run_id == b


def test_load_latest_and_pruning_see_only_the_folders_run(tmp_path):
    a = checkpoint.start_run(tmp_path / "a")
    foreign = checkpoint.save(tmp_path / "a", make_state(0), step=1500, run_id=a)
    b = checkpoint.start_run(tmp_path)
    (tmp_path / foreign.name).write_bytes(foreign.read_bytes())   # another run's file in b's folder
    for step in (100, 200, 300, 400):
        checkpoint.save(tmp_path, make_state(1), step=step, keep=2, run_id=b)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["ckpt_0000000300.npz", "ckpt_0000000400.npz", "ckpt_0000001500.npz"]  # a's kept
    ck = checkpoint.load_latest(tmp_path, make_state())
    assert ck.step == 400 and ck.run_id == b                      # not a's step 1500
    assert checkpoint.load_latest(tmp_path, make_state(), run_id=a).step == 1500
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path, run_id=b)] == names[:2]


def test_save_refuses_a_folder_another_run_has_claimed(tmp_path):
    a = checkpoint.start_run(tmp_path)
    b = checkpoint.start_run(tmp_path)          # a has written nothing yet: b may claim the folder
    checkpoint.save(tmp_path, make_state(), step=10, run_id=b)
    with pytest.raises(checkpoint.RunConflictError, match=f"belongs to run {b}"):
        checkpoint.save(tmp_path, make_state(), step=20, run_id=a)
    with pytest.raises(checkpoint.RunConflictError, match="call start_run first"):
        checkpoint.save(tmp_path / "unclaimed", make_state(), step=20, run_id=a)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt_0000000010.npz"]


def test_checkpoints_without_a_run_file_cannot_be_resumed_as_a_run(tmp_path):
    checkpoint.save(tmp_path, make_state(), step=1)             # no run id: an older jrnn's folder
    with pytest.raises(checkpoint.RunConflictError, match="cannot tell which run"):
        checkpoint.run_of(tmp_path)
    assert checkpoint.run_of(tmp_path / "empty") is None


# ---- the experiments' --resume / --overwrite -------------------------------------------------

@pytest.fixture
def no_training(monkeypatch):
    from experiments import common

    def progress(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(common, "progress", progress)


def test_minchar_fresh_run_refuses_another_runs_checkpoints_before_training(data_dir, tmp_path, no_training):
    from experiments import minchar
    old = checkpoint.save(tmp_path / "checkpoints" / "seed_0", make_state(), step=500)
    args = ["--steps", "100", "--checkpoint-every", "100", "--baseline-steps", "0", "--quiet", "--out", str(tmp_path)]
    with pytest.raises(checkpoint.RunConflictError, match="--resume.*--overwrite"):
        minchar.main(args)
    assert old.exists()
    with pytest.raises(ValueError, match="choose one"):
        minchar.main([*args, "--resume", "--overwrite"])
    with pytest.raises(AssertionError, match="training started"):
        minchar.main([*args, "--overwrite"])
    assert not old.exists() and checkpoint.run_of(tmp_path / "checkpoints" / "seed_0") is not None


def test_minchar_resume_with_fewer_steps_than_the_checkpoint_is_refused(data_dir, tmp_path):
    from experiments import minchar
    args = ["--baseline-steps", "0", "--quiet", "--checkpoint-every", "100", "--out", str(tmp_path)]
    minchar.main([*args, "--steps", "200"])
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(ValueError, match=r"--steps 100 is fewer than the 200 iterations"):
        minchar.main([*args, "--steps", "100", "--resume"])
    assert (tmp_path / "results.json").read_bytes() == before     # nothing written
    m = minchar.main([*args, "--steps", "200", "--resume"])       # same length: the run as it is
    r = json.loads((tmp_path / "results.json").read_text())
    assert len(r["runs"][0]["losses"]) == 200 and m["median_final_smooth_loss"] == json.loads(before)[
        "metrics"]["median_final_smooth_loss"]


@pytest.mark.slow
def test_charlm_full_resume_with_fewer_epochs_than_the_checkpoint_is_refused(data_dir, tmp_path):
    from experiments import charlm
    # 170 chars: 153 to train (7 calls of 10 steps of 1 stream x 2 chars), 17 to validate
    args = ["--full", "--chars", "170", "--batch", "1", "--seq-len", "2", "--hidden", "4", "--sample-len", "2",
            "--checkpoint-every", "10", "--quiet", "--out", str(tmp_path)]
    charlm.main([*args, "--epochs", "2"])
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(ValueError, match=r"--epochs 1 \(70 steps\) ends before step 140 .* --epochs >= 2"):
        charlm.main([*args, "--epochs", "1", "--resume"])
    assert (tmp_path / "results.json").read_bytes() == before
    with pytest.raises(SystemExit, match="^2$"):   # a fresh run into the same folder: its results.json
        charlm.main([*args, "--epochs", "1"])
    assert (tmp_path / "results.json").read_bytes() == before
    (tmp_path / "results.json").unlink()
    (tmp_path / "validation_loss.png").unlink()
    with pytest.raises(checkpoint.RunConflictError):           # and its checkpoints, with those gone
        charlm.main([*args, "--epochs", "1"])


@pytest.mark.parametrize("step, error", [(-1, ValueError), (10**10, ValueError), (1.5, TypeError),
                                         (True, TypeError), (np.float64(3.0), TypeError)])
def test_a_step_that_no_file_name_could_list_is_refused_before_writing(tmp_path, step, error):
    # ckpt_-000000001.npz or an 11-digit name would be written and never listed, loaded nor pruned
    run = checkpoint.start_run(tmp_path)
    with pytest.raises(error, match="step"):
        checkpoint.save(tmp_path, make_state(), step=step, run_id=run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_numpy_integer_steps_are_accepted(tmp_path):
    path = checkpoint.save(tmp_path, make_state(), step=np.int64(40), keep=np.int32(2))
    assert path.name == "ckpt_0000000040.npz" and checkpoint.load(path, make_state()).step == 40


@pytest.mark.parametrize("keep", [1.5, True, 0])
def test_a_bad_keep_is_refused_before_writing(tmp_path, keep):
    with pytest.raises((TypeError, ValueError), match="keep"):
        checkpoint.save(tmp_path, make_state(), step=1, keep=keep)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_a_state_holding_nan_or_inf_is_never_saved_and_the_last_good_one_stays(tmp_path, bad):
    run = checkpoint.start_run(tmp_path)
    good = make_state()
    checkpoint.save(tmp_path, good, step=10, run_id=run)
    broken = {**good, "h": good["h"].at[3].set(bad)}
    with pytest.raises(ValueError, match=r"NaN/inf in \['h'\]"):
        checkpoint.save(tmp_path, broken, step=20, run_id=run)
    ck = checkpoint.load_latest(tmp_path, make_state())
    assert ck.step == 10 and bits_equal(ck.state, good)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt_0000000010.npz"]


def test_charlm_resume_reads_the_process_count_of_the_folders_run_not_of_the_newest_file(tmp_path):
    from experiments import charlm
    other, mine = tmp_path / "other", tmp_path / "mine"
    stale = checkpoint.save(other, make_state(), step=500, config={"processes": 2})   # another run, 2 processes
    run = checkpoint.start_run(mine)
    checkpoint.save(mine, make_state(), step=100, config={"processes": 1}, run_id=run)
    os.replace(stale, mine / stale.name)     # left behind (e.g. an --overwrite killed mid-delete)
    assert charlm._checkpoint_processes(mine) == 1          # the run --resume continues
    (mine / "run.json").unlink()                            # no owner: find_resume refuses, not this
    assert charlm._checkpoint_processes(mine) is None
    assert charlm._checkpoint_processes(tmp_path / "missing") is None


def test_a_resume_at_another_precision_is_refused(data_dir, tmp_path):
    # results.json records one --precision for the whole run: the part before the checkpoint must
    # have trained at it too
    from experiments import minchar
    args = ["--baseline-steps", "0", "--quiet", "--checkpoint-every", "100", "--out", str(tmp_path)]
    minchar.main([*args, "--steps", "100"])
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(ValueError, match="--precision float32 in the checkpoint's run, --precision bfloat16 now"):
        minchar.main([*args, "--steps", "200", "--resume", "--precision", "bfloat16"])
    assert (tmp_path / "results.json").read_bytes() == before


@pytest.mark.slow
def test_charlm_full_resume_at_another_precision_is_refused(data_dir, tmp_path):
    from experiments import charlm
    args = ["--full", "--chars", "170", "--batch", "1", "--seq-len", "2", "--hidden", "4", "--sample-len", "2",
            "--checkpoint-every", "10", "--quiet", "--out", str(tmp_path)]
    charlm.main([*args, "--epochs", "1", "--precision", "tensorfloat32"])
    with pytest.raises(ValueError, match="--precision tensorfloat32 in the checkpoint's run, --precision float32 now"):
        charlm.main([*args, "--epochs", "2", "--resume"])
    charlm.main([*args, "--epochs", "2", "--resume", "--precision", "tensorfloat32"])   # the same: continues


NO_X64 = r"""
import tempfile
import jax, jax.numpy as jnp, numpy as np
from jrnn import checkpoint
assert not jax.config.jax_enable_x64
state = {"cursor": np.int64(2**40 + 7), "scale": np.float64(0.1), "w": jnp.arange(3.0)}
ck = checkpoint.load(checkpoint.save(tempfile.mkdtemp(), state, step=1), state)
assert ck.state["cursor"].dtype == np.int64 and int(ck.state["cursor"]) == 2**40 + 7, ck.state["cursor"]
assert ck.state["scale"].dtype == np.float64 and float(ck.state["scale"]) == 0.1
assert isinstance(ck.state["w"], jax.Array) and ck.state["w"].dtype == jnp.float32
print("ok")
"""


def test_numpy_64_bit_leaves_round_trip_exactly_without_x64():
    # load passed every leaf through jnp.asarray: without x64 int64 2**40 + 7 came back as int32 7,
    # float64 0.1 as float32, though the template had asked for (and been checked against) 64 bits
    env = {**os.environ, "JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", NO_X64], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stderr[-2000:]


# ---- hardening round 3: dtypes, damage, headers, model kinds, resumes with other flags --------

import io           # noqa: E402  (this section's own imports)
import struct       # noqa: E402
import warnings     # noqa: E402
import zipfile      # noqa: E402

import ml_dtypes    # noqa: E402
import optax        # noqa: E402


def same_leaves(a, b):
    """Bit for bit (NaN payloads and -0.0 included), same dtype, same kind of leaf, same structure."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb or len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if type(x) is not type(y):
            return False
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            if jax.random.key_impl(x) != jax.random.key_impl(y):
                return False
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2,
                                   ml_dtypes.int4])
def test_bfloat16_float16_and_float8_states_round_trip_bit_exact(tmp_path, dtype):
    # a bfloat16 leaf was written as numpy's opaque '|V2' and never loaded ("is |V2[5], template wants bfloat16[5]")
    if dtype == ml_dtypes.int4:
        values = np.arange(-8, 8)
    else:
        info = ml_dtypes.finfo(dtype)
        values = np.array([0.0, -0.0, 1.0, -2.5, float(info.max), float(info.min), float(info.smallest_subnormal)])
    state = {"jax": jnp.asarray(values, dtype), "numpy": np.asarray(values, dtype)[::-1],
             "scalar": np.asarray(values, dtype)[2], "f32": jnp.arange(3.0)}
    ck = checkpoint.load(checkpoint.save(tmp_path, state, step=1), jax.tree.map(jnp.zeros_like, state) | {
        "numpy": np.zeros(len(values), dtype), "scalar": np.asarray(values, dtype)[0]})
    assert same_leaves(ck.state, state)


def test_a_bfloat16_checkpoint_written_as_opaque_void_by_an_older_jrnn_loads(tmp_path):
    # before the raw-bits storage np.savez wrote bfloat16 as '|V2': the same bits, so they still load
    w = jnp.asarray([1.0, -0.0, 3.5], jnp.bfloat16)
    path = checkpoint.save(tmp_path, {"w": w}, step=1)
    with zipfile.ZipFile(path) as z:
        header = json.loads(np.load(z.open("header.npy")).tobytes())
    np.savez(path, header=np.frombuffer(json.dumps(header).encode(), np.uint8), leaf_0=np.asarray(w))
    with zipfile.ZipFile(path) as z:
        assert np.load(z.open("leaf_0.npy")).dtype == np.dtype("V2")   # as the older jrnn wrote it
    assert same_leaves(checkpoint.load(path, {"w": w}).state, {"w": w})


@pytest.mark.parametrize("dtype", [jnp.bfloat16, ml_dtypes.float8_e5m2, jnp.float16])
def test_a_nan_or_inf_in_a_bfloat16_or_float8_leaf_is_never_saved(tmp_path, dtype):
    # the finite check used np.issubdtype(dtype, np.inexact), which says False for bfloat16: NaN was saved
    for bad in (np.nan, np.inf, -np.inf):
        x = jnp.asarray([1.0, bad], dtype)
        with pytest.raises(ValueError, match=r"NaN/inf in \['x'\]"):
            checkpoint.save(tmp_path, {"x": x}, step=1)
    assert checkpoint.list_checkpoints(tmp_path) == []


def small_state(seed=0):
    return {"w": np.arange(6, dtype=np.float32) + seed, "b": np.int32(seed), "key": np.asarray([seed, 7], np.uint32)}


ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06")


def _zip_records(raw: bytes):
    """(offset, signature) of every local header, central directory entry and end record."""
    found = []
    for sig in ZIP_SIGNATURES:
        i = raw.find(sig)
        while i >= 0:
            found.append((i, sig))
            i = raw.find(sig, i + 1)
    return sorted(found)


def _patch_members(raw: bytes, *, flag=0, method=None) -> bytes:
    """Set general-purpose flag bits / the compression method in every local header and central entry."""
    b = bytearray(raw)
    for i, sig in _zip_records(raw):
        if sig == ZIP_SIGNATURES[2]:
            continue
        flags_at, method_at = (i + 6, i + 8) if sig == ZIP_SIGNATURES[0] else (i + 8, i + 10)
        b[flags_at:flags_at + 2] = struct.pack("<H", struct.unpack_from("<H", b, flags_at)[0] | flag)
        if method is not None:
            b[method_at:method_at + 2] = struct.pack("<H", method)
    return bytes(b)


def _good_then_damaged(folder, damage):
    """A run with a good checkpoint at step 1 and, at step 2, `damage(bytes)` of a newer one."""
    run = checkpoint.start_run(folder)
    checkpoint.save(folder, small_state(0), step=1, run_id=run)
    path = checkpoint.save(folder, small_state(1), step=2, run_id=run)
    path.write_bytes(damage(path.read_bytes()))
    return run, path


@pytest.mark.parametrize("damage, reason", [
    (lambda raw: _patch_members(raw, flag=0x1), "flagged as encrypted"),
    (lambda raw: _patch_members(raw, method=99), "compression method 99"),
    (lambda raw: _patch_members(raw, method=zipfile.ZIP_DEFLATED), "compression method 8"),
    (lambda raw: _patch_members(raw, flag=0x40), "strong encryption"),   # local header flag bit 6
])
def test_an_encrypted_or_compressed_member_is_damage_and_never_blocks_load_latest_or_save(tmp_path, damage, reason):
    # zipfile raised RuntimeError (password required) / NotImplementedError (compression method)
    # through load, load_latest and save(), which reads the headers of the files already there
    run, path = _good_then_damaged(tmp_path, damage)
    with pytest.raises(checkpoint.CheckpointDamagedError, match=f"damaged: {path}, .*{reason}"):
        checkpoint.load(path, small_state())
    with pytest.warns(checkpoint.SkippedCheckpointWarning, match=f"{path}.*{reason}"):
        ck = checkpoint.load_latest(tmp_path, small_state())
    assert ck.step == 1 and same_leaves(ck.state, small_state(0))
    newer = checkpoint.save(tmp_path, small_state(3), step=3, run_id=run)
    with pytest.warns(checkpoint.SkippedCheckpointWarning, match=f"{path}.*{reason}.*loaded {newer}"):
        assert checkpoint.load_latest(tmp_path, small_state()).path == newer


def test_random_damage_to_a_checkpoint_never_raises_anything_but_the_documented_error(tmp_path, monkeypatch):
    # 200 seeded byte flips (anywhere, and in the zip's own records) and truncations of the newest
    # checkpoint: load returns it intact or raises CheckpointDamagedError, load_latest returns one
    # of the good states, save keeps working. Before: RuntimeError/NotImplementedError/... escaped.
    monkeypatch.setattr(os, "fsync", lambda fd: None)   # durability is not what this test is about
    rng = np.random.default_rng(0)
    run, path = _good_then_damaged(tmp_path, lambda raw: raw)
    raw = path.read_bytes()
    records = _zip_records(raw)
    good = {1: small_state(0), 2: small_state(1)}
    outcomes = {"loaded": 0, "damaged": 0}
    for trial in range(200):
        b = bytearray(raw)
        if trial % 4 == 0:
            b = b[: int(rng.integers(len(raw)))]
        elif trial % 4 == 1:
            b[int(rng.integers(len(raw)))] ^= int(rng.integers(1, 256))
        else:                                   # a field of a local header, central entry or end record
            at, _ = records[int(rng.integers(len(records)))]
            b[min(len(b) - 1, at + int(rng.integers(4, 46)))] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(b))
        try:
            ck = checkpoint.load(path, small_state())
            assert ck.step == 2 and same_leaves(ck.state, good[2])
            outcomes["loaded"] += 1
        except checkpoint.CheckpointDamagedError:
            outcomes["damaged"] += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", checkpoint.SkippedCheckpointWarning)
            ck = checkpoint.load_latest(tmp_path, small_state())
        assert ck.step in good and same_leaves(ck.state, good[ck.step])
        checkpoint.save(tmp_path, small_state(3), step=3, run_id=run, keep=10).unlink()
    assert outcomes["damaged"] > 100 and outcomes["loaded"] > 0, outcomes   # some bytes (timestamps) are harmless


def _with_header(path, edit):
    """Rewrite `path` with its header replaced by `edit(header)` (a JSON value or raw bytes), arrays kept."""
    with zipfile.ZipFile(path) as z:
        header = json.loads(np.load(z.open("header.npy")).tobytes())
        arrays = {n[:-4]: np.load(z.open(n)) for n in z.namelist() if n != "header.npy"}
    new = edit(header)
    text = new if isinstance(new, bytes) else json.dumps(new).encode()
    np.savez(path, header=np.frombuffer(text, np.uint8), **arrays)


def _set(key, value):
    return lambda h: {**h, key: value}


def _drop(key):
    return lambda h: {k: v for k, v in h.items() if k != key}


def _leaf0(key, value):
    return lambda h: {**h, "leaves": [{**h["leaves"][0], key: value}, *h["leaves"][1:]]}


HEADER_ATTACKS = {
    "missing step": _drop("step"), "missing leaves": _drop("leaves"), "missing config": _drop("config"),
    "missing format_version": _drop("format_version"),
    "step as string": _set("step", "2"), "negative step": _set("step", -1), "huge step": _set("step", 10**30),
    "step as bool": _set("step", True), "step as float": _set("step", 2.0), "step inf": _set("step", 1e400),
    "seq as string": _set("seq", "x"), "run_id as int": _set("run_id", 5), "vocab as string": _set("vocab", "abc"),
    "leaves as object": _set("leaves", {"0": 1}), "leaf as list": _set("leaves", [[1]]),
    "shape as string": _leaf0("shape", "(6,)"), "huge shape": _leaf0("shape", [10**30]),
    "negative shape": _leaf0("shape", [-6]), "shape of another size": _leaf0("shape", [7]),
    "unknown dtype": _leaf0("dtype", "float33"), "object dtype": _leaf0("dtype", "object"),
    "non-canonical dtype": _leaf0("dtype", "<f4"), "dtype as list": _leaf0("dtype", ["float32"]),
    "another dtype": _leaf0("dtype", "float64"), "sha256 missing": _leaf0("sha256", None),
    "sha256 of other bytes": _leaf0("sha256", "0" * 64), "path missing": _leaf0("path", None),
    "header a JSON list": lambda h: [h], "header null": lambda h: None, "header a string": lambda h: "header",
    "header not JSON": lambda h: b"{not json", "header not UTF-8": lambda h: b"\xff\xfe{}",
    "header nested too deep": lambda h: b"[" * 100_000 + b"]" * 100_000,
    "more leaves than members": lambda h: {**h, "leaves": h["leaves"] * 2},
}


@pytest.mark.parametrize("attack", sorted(HEADER_ATTACKS))
def test_an_attacked_header_is_a_clear_error_and_load_latest_skips_it(tmp_path, attack):
    # a header of the wrong shape raised KeyError/TypeError from load, and from sorting in
    # load_latest/save (a string seq or step next to an int one)
    run, path = _good_then_damaged(tmp_path, lambda raw: raw)
    _with_header(path, HEADER_ATTACKS[attack])
    with pytest.raises(checkpoint.CheckpointDamagedError, match=f"damaged: {path}, "):
        checkpoint.load(path, small_state())
    with pytest.warns(checkpoint.SkippedCheckpointWarning, match=str(path)):
        ck = checkpoint.load_latest(tmp_path, small_state())
    assert ck.step == 1 and same_leaves(ck.state, small_state(0))
    checkpoint.save(tmp_path, small_state(3), step=3, run_id=run)


def test_an_unknown_format_version_is_named_and_load_latest_skips_it(tmp_path):
    run, path = _good_then_damaged(tmp_path, lambda raw: raw)
    _with_header(path, _set("format_version", 2))
    with pytest.raises(ValueError, match="format version 2, this jrnn reads version 1"):
        checkpoint.load(path, small_state())
    with pytest.warns(checkpoint.SkippedCheckpointWarning, match="format version 2"):
        assert checkpoint.load_latest(tmp_path, small_state()).step == 1
    checkpoint.save(tmp_path, small_state(3), step=3, run_id=run)


def test_an_array_member_claiming_a_huge_shape_is_damage_not_an_allocation(tmp_path):
    # the .npy header inside the zip sized the array numpy allocated before reading (MemoryError)
    run, path = _good_then_damaged(tmp_path, lambda raw: raw)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    claim = io.BytesIO()
    np.lib.format.write_array_header_1_0(claim, {"descr": "<f4", "fortran_order": False, "shape": (10**13,)})
    members["leaf_0.npy"] = claim.getvalue() + np.arange(6, dtype=np.float32).tobytes()
    with zipfile.ZipFile(path, "w") as z:          # CRCs recomputed: only the header's claim is wrong
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(checkpoint.CheckpointDamagedError, match="leaf_0.npy is not a readable array"):
        checkpoint.load(path, small_state())
    with pytest.warns(checkpoint.SkippedCheckpointWarning):
        assert checkpoint.load_latest(tmp_path, small_state()).step == 1


def test_a_folder_whose_checkpoints_are_all_damaged_raises_the_documented_error(tmp_path):
    run, path = _good_then_damaged(tmp_path, lambda raw: raw[:100])
    (tmp_path / "ckpt_0000000001.npz").write_bytes(b"not a zip")
    with pytest.raises(checkpoint.CheckpointDamagedError,
                       match="no usable checkpoint.*ckpt_0000000001.*ckpt_0000000002"):
        checkpoint.load_latest(tmp_path, small_state())
    assert checkpoint.load(checkpoint.save(tmp_path, small_state(3), step=3, run_id=run), small_state()).step == 3


MODEL_KINDS = ["elman adagrad", "lstm x2 adam", "gru adagrad", "bidirectional lstm x2 adam", "keys", "odd leaves"]


def _model_state(kind):
    """A training state of one kind of model and optimizer jrnn has, or with every kind of leaf."""
    if kind == "keys":
        return {"typed": jax.random.key(3), "rbg": jax.random.key(3, impl="rbg"),
                "typed batch": jax.random.split(jax.random.key(4), 3), "raw": jax.random.PRNGKey(5),
                "raw data": jax.random.key_data(jax.random.key(6))}
    if kind == "odd leaves":
        return {"none": None, "empty tuple": (), "empty dict": {}, "int": 7, "big int": 2**40 + 1,
                "float": 0.1, "bool": True, "complex": 1 + 2j, "np.float32": np.float32(1.5),
                "np.int64": np.int64(-2**40), "np.bool_": np.bool_(False), "np array": np.arange(3.0),
                "0-d np array": np.asarray(2.5), "complex64": jnp.asarray([1 + 1j], jnp.complex64),
                "bfloat16": jnp.ones(2, jnp.bfloat16), "int8": jnp.asarray([-3], jnp.int8),
                "empty array": jnp.zeros((0, 3))}
    return _filled(jax.eval_shape(lambda: _model_state_built(kind)))


def _model_state_built(kind):
    key = jax.random.key(1)
    if kind == "elman adagrad":
        p = elman.init(key, vocab_size=5, hidden_size=4)
        return {"params": p, "opt_state": optim.karpathy_adagrad(0.1).init(p), "h": elman.zeros_carry(p)}
    if kind == "bidirectional lstm x2 adam":
        bi = jrnn.model.make(jrnn.cells.LSTM, input_size=3, hidden_size=2, output_size=4, layers=2, bidirectional=True)
        p = bi.init(key)
        return {"params": p, "opt_state": optim.adam(1e-3).init(p), "carry": bi.zeros(p, (2,))}
    model = jrnn.lm.model(kind.split()[0], vocab_size=5, hidden_size=3, layers=2 if "x2" in kind else 1)
    p = model.init(key)
    opt = optax.adam(1e-3) if "adam" in kind else optax.adagrad(0.1)
    return {"params": p, "opt_state": opt.init(p), "h": model.zeros(p, (2,))}


def _filled(shapes, seed=0):
    """Arrays of these shapes and dtypes, random values made on the host (no per-op compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape).astype(s.dtype)
                                              if jnp.issubdtype(s.dtype, jnp.inexact) else
                                              rng.integers(1, 100, s.shape).astype(s.dtype)), shapes)


def _zeroed(x):
    """A leaf of the same kind, dtype and shape as `x`, all zeros (a key: the key of zero key data)."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = jax.random.key_data(x)
        return jax.random.wrap_key_data(jnp.asarray(np.zeros(data.shape, data.dtype)), impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array):
        return jnp.asarray(np.zeros(x.shape, x.dtype))     # numpy: no per-op compile in the test
    if isinstance(x, np.ndarray):
        return np.zeros_like(x)
    return type(x)(0)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_model_kind_and_leaf_kind_round_trips_exactly(tmp_path, kind):
    # typed PRNG keys were refused ("store PRNG keys as jax.random.key_data"); Python and numpy
    # scalars came back as 0-d numpy arrays
    state = _model_state(kind)
    path = checkpoint.save(tmp_path, state, step=1)
    template = jax.tree.map(_zeroed, state)            # the values must come from the file
    ck = checkpoint.load(path, template)
    assert same_leaves(ck.state, state) and not same_leaves(template, state)
    if kind == "keys":   # a typed key resumes the same stream of random numbers
        assert np.array_equal(jax.random.normal(ck.state["rbg"], (3,)), jax.random.normal(state["rbg"], (3,)))


def test_a_key_of_another_implementation_or_kind_is_a_clear_mismatch(tmp_path):
    path = checkpoint.save(tmp_path, {"key": jax.random.key(0)}, step=1)
    with pytest.raises(ValueError,
                       match=r"\['key'\] is prng_key\(threefry2x32\)\[2\], template wants prng_key\(rbg\)\[4\]"):
        checkpoint.load(path, {"key": jax.random.key(0, impl="rbg")})
    with pytest.raises(ValueError, match=r"template wants uint32\[2\]"):
        checkpoint.load(path, {"key": jax.random.key_data(jax.random.key(0))})


@pytest.mark.parametrize("leaf, error, match", [
    (2**70, ValueError, r"\['x'\] is 1180591620717411303424, which no int64 holds"),
    ("text", TypeError, r"\['x'\] is a str of dtype <U4"),
    (np.array([object()]), TypeError, r"\['x'\] is a ndarray of dtype object"),
    (np.array(["2020-01-01"], "datetime64[D]"), TypeError, r"\['x'\] is a ndarray of dtype datetime64"),
])
def test_a_leaf_no_checkpoint_can_hold_exactly_is_refused_before_writing(tmp_path, leaf, error, match):
    # an object array was pickled by np.savez and then never loaded (allow_pickle=False)
    with pytest.raises(error, match=match):
        checkpoint.save(tmp_path, {"x": leaf}, step=1)
    assert checkpoint.list_checkpoints(tmp_path) == []


@pytest.mark.parametrize("kw, error, match", [
    ({"config": {"lr": np.float32(0.1)}}, TypeError, "config must be JSON data"),
    ({"config": {"lr": float("nan")}}, ValueError, "config must be JSON data.*finite"),
    ({"cursor": {"pos": np.int64(3)}}, TypeError, "cursor must be JSON data"),
    ({"vocab": 5}, TypeError, "vocab must be a sequence of symbols"),
])
def test_config_cursor_and_vocab_that_json_cannot_hold_are_refused_before_writing(tmp_path, kw, error, match):
    with pytest.raises(error, match=match):
        checkpoint.save(tmp_path, small_state(), step=1, **kw)
    assert checkpoint.list_checkpoints(tmp_path) == []


def test_a_config_mismatch_names_each_key_and_both_values(tmp_path):
    path = checkpoint.save(tmp_path, small_state(), step=1, config={"cell": "lstm", "hidden": 4, "extra": 1},
                           vocab="abc")
    with pytest.raises(checkpoint.ConfigMismatchError, match="cell is 'lstm' there, 'gru' here; hidden is 4 there, "
                                                             "8 here; extra is 1 there, \\(absent\\) here") as e:
        checkpoint.load(path, small_state(), config={"cell": "gru", "hidden": 8})
    assert e.value.differences == [("cell", "lstm", "gru"), ("hidden", 4, 8), ("extra", 1, checkpoint.ABSENT)]
    with pytest.raises(checkpoint.ConfigMismatchError, match="3 symbols; the one given has 4, first difference at 1"):
        checkpoint.load(path, small_state(), vocab="axcd")


# ---- the experiments refuse a --resume with other flags, naming the flag and both values ------

def _spy_resume(monkeypatch):
    """Record what the experiment asks find_resume to load, then stop it before training."""
    from experiments import common
    seen, real = [], common.find_resume

    def spy(directory, args, template, **kw):
        seen.append((directory, template, kw))
        return real(directory, args, template, **kw)
    monkeypatch.setattr(common, "find_resume", spy)
    return seen


@pytest.fixture
def host_init(monkeypatch):
    """The experiments' params of the same structure, made on the host: eager init compiles dozens
    of small programs per shape, and only the structure matters to a refused --resume."""
    from experiments import minchar
    real_minchar, real_model = minchar.init, jrnn.model.Model.init
    monkeypatch.setattr(minchar, "init", lambda model, key: _filled(
        jax.eval_shape(lambda k: real_minchar(model, k), key)))
    monkeypatch.setattr(jrnn.model.Model, "init", lambda self, key, dtype=jnp.float32: _filled(
        jax.eval_shape(lambda k: real_model(self, k, dtype), key)))


def _checkpoint_as_the_experiment_would(seen):
    """A checkpoint of the run that `seen` recorded (its template, config and vocabulary)."""
    directory, template, kw = seen[-1]
    checkpoint.save(directory, template, step=100, config=kw["config"], vocab=kw["vocab"],
                    cursor={"losses": [1.0] * 100, "history": [], "skipped": 0}, run_id=checkpoint.run_of(directory))


def test_minchar_resume_with_another_cell_or_corpus_is_refused_naming_the_flag(data_dir, tmp_path, monkeypatch,
                                                                               no_training, host_init):
    from experiments import minchar
    seen = _spy_resume(monkeypatch)
    args = ["--steps", "200", "--checkpoint-every", "100", "--baseline-steps", "0", "--quiet", "--out", str(tmp_path)]
    with pytest.raises(AssertionError, match="training started"):
        minchar.main(args)                                        # an Elman run (the default --cell)
    _checkpoint_as_the_experiment_would(seen)
    with pytest.raises(ValueError, match="--cell elman in the checkpoint's run, --cell lstm now"):
        minchar.main([*args, "--cell", "lstm", "--resume"])
    other = tmp_path / "other.txt"
    other.write_text("a tiny corpus of other letters, " * 4)
    with pytest.raises(ValueError, match=r"another vocabulary \(80 symbols in the checkpoint's run, 17 symbols now\)"
                                         r": resume on the same corpus \(--data\)"):
        minchar.main([*args, "--resume", "--data", str(other)])
    with pytest.raises(AssertionError, match="training started"):   # the same flags: it resumes
        minchar.main([*args, "--resume"])


@pytest.mark.parametrize("flags, named", [
    (["--hidden", "8"], ["--hidden 4 in the checkpoint's run, --hidden 8 now"]),
    (["--layers", "2"], ["--layers 1 in the checkpoint's run, --layers 2 now"]),
    (["--cell", "gru"], ["--cell elman in the checkpoint's run, --cell gru now"]),
    (["--seq-len", "3"], ["--seq-len 2 in the checkpoint's run, --seq-len 3 now"]),
    (["--hidden", "8", "--layers", "2"], ["--layers 1 .* --layers 2 now", "--hidden 4 .* --hidden 8 now"]),
])
def test_charlm_resume_with_another_cell_size_depth_or_seq_len_is_refused_naming_the_flag(
        data_dir, tmp_path, monkeypatch, no_training, host_init, flags, named):
    from experiments import charlm
    seen = _spy_resume(monkeypatch)
    args = ["--full", "--chars", "170", "--batch", "1", "--seq-len", "2", "--hidden", "4", "--epochs", "20",
            "--checkpoint-every", "10", "--quiet", "--out", str(tmp_path)]
    with pytest.raises(AssertionError, match="training started"):
        charlm.main(args)
    _checkpoint_as_the_experiment_would(seen)
    for pattern in named:
        with pytest.raises(ValueError, match=pattern):
            charlm.main([*args, *flags, "--resume"])
    with pytest.raises(AssertionError, match="training started"):   # the same flags: it resumes
        charlm.main([*args, "--resume"])


def test_sentiment_has_no_checkpoints_so_resume_is_an_unknown_flag(capsys):
    from experiments import sentiment
    with pytest.raises(SystemExit) as e:
        sentiment.main(["--resume"])
    assert e.value.code == 2 and "unrecognized arguments: --resume" in capsys.readouterr().err
