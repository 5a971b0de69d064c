"""experiments.launch: charlm --full as 2 processes trains as 1 process over 2 devices, only
process 0 writes, a resume needs the same process count, and a killed process stops the run."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from experiments import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = ["--full", "--chars", "20000", "--hidden", "16", "--batch", "4", "--seq-len", "16", "--sample-len", "20",
        "--quiet"]


def _env(devices=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _run(args, devices=None, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_env(devices), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("argv", [["-n", "0", "--", "charlm"], ["-n", "2"], ["-n", "2", "--", "charlm", "--process-id", "1"]])
def test_launcher_refuses_bad_arguments_before_starting_anything(argv):
    with pytest.raises(SystemExit) as e:
        launch.main(argv)
    assert e.value.code == 2


@pytest.mark.slow
def test_charlm_full_on_two_processes_equals_one_process_and_resumes_only_with_two(data_dir, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    p = _run(["experiments.launch", "-n", "2", "--", "charlm", *FULL, "--epochs", "1", "--checkpoint-every", "10",
              "--out", str(two)])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "[0] epoch 1" in p.stdout and "[1] epoch" not in p.stdout   # process 0 speaks for the run
    q = _run(["experiments.charlm", *FULL, "--epochs", "1", "--out", str(one)], devices=2)
    assert q.returncode == 0, q.stderr[-3000:]
    r2, r1 = (json.loads((d / "results.json").read_text()) for d in (two, one))
    assert r2["config"]["processes"] == 2 and r1["config"]["processes"] == 1
    # float32: the same per-device work, all-reduced by gloo between processes instead of in one
    assert abs(r2["metrics"]["val_nats"] - r1["metrics"]["val_nats"]) < 1e-5, (r2["metrics"], r1["metrics"])
    assert len(list((two / "checkpoints").glob("ckpt_*.npz"))) == 3

    s = _run(["experiments.charlm", *FULL, "--epochs", "2", "--resume", "--out", str(two)], devices=2)
    assert s.returncode == 2 and "written by a run of 2 process(es), this run has 1" in s.stderr, s.stderr[-2000:]


@pytest.mark.slow
def test_killing_one_process_stops_the_launched_run_with_an_error(data_dir, tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "experiments.launch", "-n", "2", "--", "charlm", *FULL,
                          "--epochs", "50", "--out", str(tmp_path)], cwd=ROOT, env=_env(), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, pids = [], {}
    try:
        for line in p.stdout:   # wait until both processes train (gloo connected), then kill process 1
            lines.append(line)
            if m := re.match(r"\[launch\] process (\d): pid (\d+)", line):
                pids[int(m[1])] = int(m[2])
            if line.startswith("[1] [Gloo] Rank 1 is connected"):
                time.sleep(1)
                os.kill(pids[1], signal.SIGKILL)
                t_kill = time.monotonic()
                break
        out = p.communicate(timeout=120)[0]
        elapsed = time.monotonic() - t_kill
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0, "".join(lines) + out
    assert "[launch] process 1 was killed by signal 9; stopping the others" in out
    assert elapsed < 30, elapsed   # bounded: the launcher stops the others at once
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("argv", [["--port", "99999", "--", "charlm"], ["--port", "0", "--", "charlm"],
                                  ["--port", "-1", "--", "charlm"], ["-n", "-2", "--", "charlm"],
                                  ["-n", "two", "--", "charlm"], ["-n", "2", "--cpu-devices", "0", "--", "charlm"],
                                  ["-n", "2", "--", "nonsense"], ["-n", "2", "--", "--full"],
                                  ["-n", "2", "--", "charlm.py"], ["-n", "2", "--", "../x"]])
def test_launcher_refuses_a_bad_port_count_or_experiment_naming_the_flag(argv, capsys):
    # --port 99999 used to reach every process as a coordinator address that cannot exist
    with pytest.raises(SystemExit) as e:
        launch.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert ("--port" in err if "--port" in argv else "experiment" in err if argv[-1] in ("nonsense", "--full", "charlm.py", "../x")
            else "--cpu-devices" in err if "--cpu-devices" in argv else "-n" in err), err
