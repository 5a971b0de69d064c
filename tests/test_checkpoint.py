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
    with pytest.raises(TypeError, match="key_data"):
        checkpoint.save(tmp_path, {"key": jax.random.key(0)}, step=2)


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
    with pytest.raises(ValueError, match="truncated or corrupted|checksum"):
        checkpoint.load(newest, make_state())
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
    with pytest.raises(ValueError, match="written with config"):
        minchar.main([*args, "--steps", "200", "--resume", "--precision", "bfloat16"])
    assert (tmp_path / "results.json").read_bytes() == before


@pytest.mark.slow
def test_charlm_full_resume_at_another_precision_is_refused(data_dir, tmp_path):
    from experiments import charlm
    args = ["--full", "--chars", "170", "--batch", "1", "--seq-len", "2", "--hidden", "4", "--sample-len", "2",
            "--checkpoint-every", "10", "--quiet", "--out", str(tmp_path)]
    charlm.main([*args, "--epochs", "1", "--precision", "tensorfloat32"])
    with pytest.raises(ValueError, match="written with config"):
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
