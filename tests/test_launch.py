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


@pytest.fixture
def no_launch(monkeypatch):
    """Fail loudly if the launcher gets as far as starting processes; else record what it would start."""
    calls = []

    def launched(*a):
        calls.append(a)
        return 0
    monkeypatch.setattr(launch, "launch", launched)
    return calls


@pytest.mark.parametrize("argv, flag", [
    (["-n", str(10**6), "--", "charlm"], "-n"), (["-n", "nan", "--", "charlm"], "-n"), (["-n", "", "--", "charlm"], "-n"),
    (["-n", " ", "--", "charlm"], "-n"), (["-n", "1e3", "--", "charlm"], "-n"),
    (["-n", "2", "--cpu-devices", str(10**9), "--", "charlm"], "--cpu-devices"),
    (["-n", "2", "--cpu-devices", "-1", "--", "charlm"], "--cpu-devices"),
    (["-n", "2", "--port", "", "--", "charlm"], "--port"), (["-n", "2", "--port", "nan", "--", "charlm"], "--port"),
])
def test_launcher_refuses_hostile_numbers_naming_the_flag_before_starting_anything(argv, flag, capsys, no_launch):
    # -n 1000000 started a million Python processes, --cpu-devices 10**9 asked XLA for a billion devices in each
    with pytest.raises(SystemExit) as e:
        launch.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}" in err, err
    assert no_launch == []


def test_launcher_refuses_a_port_in_use(capsys, no_launch):
    # every process's coordinator then failed to bind, after starting JAX
    import socket
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        with pytest.raises(SystemExit) as e:
            launch.main(["-n", "2", "--port", str(s.getsockname()[1]), "--", "charlm"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --port:" in err and "cannot be used here" in err
    assert no_launch == []


def test_launcher_refuses_an_experiment_that_cannot_run_as_several_processes(capsys, no_launch):
    # each process started JAX, then died of "unrecognized arguments: --coordinator ..."
    with pytest.raises(SystemExit) as e:
        launch.main(["-n", "2", "--", "sequences", "--steps", "10"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "experiments.sequences does not run as several processes" in err and "charlm" in err
    assert launch.distributed_experiments() == ["charlm"] and no_launch == []


@pytest.mark.parametrize("flag", ["--coordinator=127.0.0.1:1234", "--num-processes=3", "--process-id=0", "--num", "--proc"])
def test_launcher_refuses_its_own_flags_in_any_spelling(flag, capsys, no_launch):
    with pytest.raises(SystemExit) as e:
        launch.main(["-n", "2", "--", "charlm", "--full", flag])
    assert e.value.code == 2 and "the launcher sets --coordinator" in capsys.readouterr().err
    assert no_launch == []


def test_a_second_launch_into_the_same_folder_is_refused_unless_asked_to_replace(tmp_path, capsys, no_launch,
                                                                                 monkeypatch):
    """charlm's second run into an --out replaced the first run's results.json without a word."""
    out = tmp_path / "my runs" / "two procs"
    out.mkdir(parents=True)
    (out / "results.json").write_text("the first run's")
    for argv in (["--out", str(out)], [f"--out={out}"], ["--ou", str(out)]):
        with pytest.raises(SystemExit) as e:
            launch.main(["-n", "2", "--", "charlm", "--full", *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "holds results.json of an earlier run" in err and "--overwrite" in err, err
    assert no_launch == [] and (out / "results.json").read_text() == "the first run's"
    assert launch.main(["-n", "2", "--overwrite", "--", "charlm", "--full", "--out", str(out)]) == 0
    assert launch.main(["-n", "2", "--", "charlm", "--full", "--resume", "--out", str(out)]) == 0
    # the path one argument; the launcher's --overwrite passed on (the experiment refuses the folder without it)
    assert no_launch[0] == (2, "charlm", ["--full", "--out", str(out), "--overwrite"], None, None)
    assert no_launch[1] == (2, "charlm", ["--full", "--resume", "--out", str(out)], None, None)
    monkeypatch.chdir(tmp_path)                       # the experiment's default --out: runs/charlm
    (tmp_path / "runs" / "charlm").mkdir(parents=True)
    (tmp_path / "runs" / "charlm" / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        launch.main(["-n", "2", "--", "charlm", "--full"])
    assert "--out runs/charlm (the experiment's) holds results.json" in capsys.readouterr().err
    (tmp_path / "a file").write_text("mine")
    with pytest.raises(SystemExit):
        launch.main(["-n", "2", "--", "charlm", "--full", "--out", "a file"])
    assert "exists and is not a folder" in capsys.readouterr().err and len(no_launch) == 2
