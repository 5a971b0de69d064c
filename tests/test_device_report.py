"""experiments.device_report: the prepared GPU run, proved on the CPU with tiny sizes."""

import json
import sys

import pytest

from experiments import device_report


def test_parts_in_one_process_and_the_report_tables(tmp_path, monkeypatch):
    """The env and deer parts (in this process, smallest sizes) give the report's rows;
    deer.json is written as rows come; the markdown holds the environment and every row."""
    from experiments import bench
    env = device_report.part_env(tmp_path, True)
    assert env["jax"] and env["backend"] == "cpu" and "torch" in env
    assert {"deer", "quasi_deer"} <= set(bench.parallel_methods())
    monkeypatch.setattr(device_report, "SMOKE_DEER_CONFIGS", [(16, 2, 2)])
    monkeypatch.setattr(bench, "parallel_methods", lambda: ["quasi_deer"])   # the cheapest solve
    deer = device_report.part_deer(tmp_path, True)
    assert [r["method"] for r in deer["rows"]] == ["sequential", "quasi_deer"] and deer["not_measured"] == []
    for r in deer["rows"]:
        if r["method"] != "sequential":
            assert r["iterations"] >= 1 and r["fell_back"] is False and r["residual"] < 1e-4
    assert json.loads((tmp_path / "deer.json").read_text())["rows"] == json.loads(json.dumps(deer["rows"]))
    report = {"parts": {"env": {"rc": 0, "seconds": 1.0, "timed_out": False, "result": env},
                        "deer": {"rc": -9, "seconds": 2.0, "timed_out": True, "result": deer}}}
    md = device_report.markdown(report)
    assert f"| jax | {env['jax']} |" in md and "stopped at its time limit" in md
    assert md.count("| 16 | 2 | 2 |") == len(deer["rows"]) == 2


@pytest.mark.slow
def test_a_part_that_runs_over_is_stopped_and_its_output_kept(tmp_path):
    code = "import time\nprint('measured', flush=True)\ntime.sleep(60)\nprint('never')"
    with open(tmp_path / "log", "w") as log:
        rc, secs, timed_out = device_report._stream([sys.executable, "-c", code], 3, log)
    assert timed_out and rc != 0 and secs < 30
    assert (tmp_path / "log").read_text() == "measured\n"


def test_a_part_that_prints_without_a_newline_is_still_stopped_at_its_limit(tmp_path):
    """pytest's progress dots end their line only at 100 %: the limit must not wait for it."""
    code = "import sys, time\nsys.stdout.write('..'); sys.stdout.flush()\ntime.sleep(60)"
    with open(tmp_path / "log", "w") as log:
        rc, secs, timed_out = device_report._stream([sys.executable, "-c", code], 3, log)
    assert timed_out and rc != 0 and secs < 30
    assert (tmp_path / "log").read_text() == ".."


def test_bad_arguments_and_an_existing_report_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--parts"):
        device_report.main(["--parts", "env,nonsense", "--out", str(tmp_path)])
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(ValueError, match="--overwrite"):
        device_report.main(["--parts", "env", "--out", str(tmp_path)])
    assert (tmp_path / "report.json").read_text() == "{}"


@pytest.mark.slow
def test_smoke_run_writes_the_whole_report(tmp_path, data_dir):
    """`--smoke` runs every part in its own process as on a GPU: no part times out or fails,
    at most 8 files at most one folder deep, every table filled."""
    out = tmp_path / "r"
    report = device_report.main(["--smoke", "--out", str(out)])
    for name, part in report["parts"].items():
        assert part["rc"] == 0 and not part["timed_out"], name
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 2 for p in files), files
    assert report["parts"]["tests"]["summary"].startswith("1 passed")
    for name, cell in device_report.BENCH_CELLS.items():
        bench_rows = report["parts"][name]["result"]["rows"]
        peers = ["flax", "torch"] if cell == "elman" else ["torch"]     # LSTM / GRU: against cuDNN's
        assert [r["impl"].split()[0] for r in bench_rows] == ["jrnn", "jrnn", *peers], name
        assert {r["cell"] for r in bench_rows} == {cell}
    assert report["parts"]["charlm"]["result"]["history"][0]["val_nats"] > 0
    md = (out / "report.md").read_text()
    assert all(f"## bench --gpu-quick --cell {c} " in md for c in ("elman", "lstm", "gru"))
    assert "## charlm --full" in md and "quasi_elk" in md


def test_gpu_limits_fit_the_8_minute_window():
    assert set(device_report.LIMIT_S) == set(device_report.PARTS)
    assert sum(device_report.LIMIT_S.values()) <= 8 * 60
    assert device_report.BENCH_SOFT_S < device_report.LIMIT_S["bench"]
    assert device_report.DEER_SOFT_S < device_report.LIMIT_S["deer"]
    assert len(device_report.DEER_CONFIGS) == 12 and {c[0] for c in device_report.DEER_CONFIGS} == {16384, 65536}
    assert set(device_report.BENCH_CONFIGS) == set(device_report.BENCH_ONLY) == set(device_report.BENCH_CELLS.values())
