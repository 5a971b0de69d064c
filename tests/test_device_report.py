"""experiments.device_report: the prepared GPU run, proved on the CPU with tiny sizes."""

import json
import sys

import pytest

from experiments import device_report
from experiments.report import device_markdown


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
    md = device_markdown(report)
    assert f"| jax | {env['jax']} |" in md and "stopped at its time limit" in md
    assert md.count("| 16 | 2 | 2 |") == len(deer["rows"]) == 2


@pytest.mark.parametrize("code,printed", [
    # a line, then nothing: stopped at the limit with the line kept
    pytest.param("import time\nprint('measured', flush=True)\ntime.sleep(60)\nprint('never')", "measured\n",
                 marks=pytest.mark.slow),
    # pytest's progress dots end their line only at 100 %: the limit must not wait for it
    ("import sys, time\nsys.stdout.write('..'); sys.stdout.flush()\ntime.sleep(60)", ".."),
])
def test_a_part_that_runs_over_is_stopped_and_its_output_kept(tmp_path, code, printed):
    with open(tmp_path / "log", "w") as log:
        rc, secs, timed_out = device_report._stream([sys.executable, "-c", code], 3, log)
    assert timed_out and rc != 0 and secs < 30
    assert (tmp_path / "log").read_text() == printed


def test_a_character_split_across_two_reads_is_echoed_and_logged_whole(tmp_path, capsys):
    """os.read may end inside a UTF-8 character (µs, tqdm's bars): decoding each chunk on its
    own turned 'é€' into four replacement characters."""
    code = ("import os, time\nb = 'é€'.encode()\nos.write(1, b[:1]); time.sleep(0.5)\n"
            "os.write(1, b[1:4]); time.sleep(0.5)\nos.write(1, b[4:] + b'\\n')")
    with open(tmp_path / "log", "w", encoding="utf-8") as log:
        rc, _, timed_out = device_report._stream([sys.executable, "-c", code], 20, log, "[p] ")
    assert rc == 0 and not timed_out
    assert (tmp_path / "log").read_text(encoding="utf-8") == "é€\n"
    assert "[p] é€\n" in capsys.readouterr().out


@pytest.mark.slow
def test_a_child_that_closes_its_output_but_keeps_running_is_stopped_at_its_limit():
    """The end of its output is not its end: waiting for it without a limit let it run on."""
    code = "import os, time\nos.close(1); os.close(2)\ntime.sleep(60)"
    rc, secs, timed_out = device_report._stream([sys.executable, "-c", code], 2)
    assert timed_out and rc != 0 and secs < 30


def test_a_long_line_without_a_newline_is_read_in_linear_time(capsys):
    """The unfinished line was re-joined at every 64 KiB read: 100 MB without a newline took
    over 30 s (quadratic); its pieces are now joined once, at its end."""
    n = 48 * 2 ** 20
    code = f"import os\nfor _ in range({n // 65536}): os.write(1, b'x' * 65536)"
    rc, secs, timed_out = device_report._stream([sys.executable, "-c", code], 60)
    assert rc == 0 and not timed_out and secs < 10
    assert capsys.readouterr().out == "x" * n + "\n"


@pytest.mark.slow
def test_what_a_part_printed_before_its_kill_is_kept(tmp_path, monkeypatch):
    """The output still in the pipe when the limit strikes is read after the kill (the clock is
    stepped past the limit before the first read, so nothing was read before it)."""
    import time as real_time
    calls = []

    def perf_counter():     # t0 at the first call; at the second, the child has printed: the limit is past
        calls.append(1)
        if len(calls) == 2:
            real_time.sleep(3)
        return real_time.perf_counter() + (0 if len(calls) == 1 else 1e6)

    monkeypatch.setattr(device_report, "time", type("T", (), {"perf_counter": staticmethod(perf_counter)}))
    code = "import time\nprint('measured', flush=True)\ntime.sleep(60)"
    with open(tmp_path / "log", "w") as log:
        rc, _, timed_out = device_report._stream([sys.executable, "-c", code], 30, log)
    assert timed_out and rc != 0
    assert (tmp_path / "log").read_text() == "measured\n"


def test_a_part_cut_short_reports_only_what_it_wrote_not_the_last_runs_files(tmp_path, monkeypatch):
    """After --overwrite the folder still holds the last run's bench_lstm/results.json and
    deer.json: a part stopped before writing its own must not pass those off as its rows."""
    import os
    old = {"config": {}, "rows": [{"impl": "from the last run"}]}
    for rel in ("bench_lstm/results.json", "deer.json", ".env.json"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(old))
        os.utime(tmp_path / rel, (1e9, 1e9))           # written long before this part started
    monkeypatch.setattr(device_report, "_stream", lambda cmd, limit, log=None, prefix="": (-9, 1.0, True))
    for name in ("bench_lstm", "deer", "env"):
        assert "result" not in device_report.run_part(name, tmp_path, smoke=True), name

    def writes_rows(cmd, limit, log=None, prefix=""):    # a part that measured one row, then ran over
        (tmp_path / "bench_lstm" / "results.json").write_text(json.dumps({"config": {}, "rows": [{"impl": "now"}]}))
        return -9, 1.0, True
    monkeypatch.setattr(device_report, "_stream", writes_rows)
    assert device_report.run_part("bench_lstm", tmp_path, smoke=True)["result"]["rows"] == [{"impl": "now"}]


def test_markdown_of_an_older_or_partial_report(tmp_path):
    """A part of an older PARTS list goes last (PARTS.index raised ValueError); a part with no
    result, a bench with no rows or config, and cells holding `|` or line breaks (nvidia-smi
    prints a line per GPU) keep the tables whole."""
    def part(**kw):
        return {"rc": 0, "seconds": 1.0, "timed_out": False, **kw}
    md = device_markdown({"parts": {
        "bench_old": part(), "charlm": part(), "env": part(result={"nvidia_smi": "H100, 550\nH100, 550"}),
        "tests": part(summary="E   assert a | b"), "bench_gru": part(result={"rows": []})}})
    import re
    tables = [t.splitlines() for t in md.split("\n\n") if t.startswith("| ")]
    env_rows, part_rows = tables[0][2:], tables[1][2:]
    assert [r.split(" | ")[0][2:] for r in part_rows] == ["env", "tests", "bench_gru", "charlm", "bench_old"]
    assert "| nvidia_smi | H100, 550; H100, 550 |" in env_rows and "| tests | 1 | 0 | E   assert a \\| b |" in part_rows
    cells = [len(re.findall(r"(?<!\\)\|", r)) - 1 for r in env_rows + part_rows]   # unescaped bars
    assert cells == [2] * len(env_rows) + [4] * len(part_rows)
    assert "best peer / best jrnn: none measured" in md


def test_bad_arguments_and_an_existing_report_are_refused(tmp_path, capsys):
    for parts, says in [("env,nonsense", "unknown part(s) ['nonsense']"), (" , ", "names no part"),
                        ("", "names no part"), ("env,,tests", "unknown part(s) ['']"),
                        ("env,tests,env", "twice")]:    # it ran twice, the second overwriting the first
        with pytest.raises(SystemExit) as e:
            device_report.main(["--parts", parts, "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "argument --parts:" in err and says in err, (parts, err)
    assert list(tmp_path.iterdir()) == []
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
        impls = [r["impl"].split()[0] for r in bench_rows]
        # jrnn's default and best rows, then each peer's default and best (issue 27: best against best)
        assert impls[:2] == ["jrnn", "jrnn"] and set(peers) <= set(impls[2:]) <= {*peers, "torch.compile"}, (name, impls)
        assert {r["cell"] for r in bench_rows} == {cell}
    assert report["parts"]["charlm"]["result"]["history"][0]["val_nats"] > 0
    md = (out / "report.md").read_text()
    assert all(f"## bench --gpu-quick --cell {c} " in md for c in ("elman", "lstm", "gru"))
    assert "## charlm --full" in md and "quasi_elk" in md


def test_gpu_limits_fit_the_device_window():
    assert set(device_report.LIMIT_S) == set(device_report.PARTS)
    assert sum(device_report.LIMIT_S.values()) <= 12 * 60   # a session's 15 device minutes, less the start
    assert device_report.BENCH_SOFT_S < device_report.LIMIT_S["bench"]
    assert device_report.DEER_SOFT_S < device_report.LIMIT_S["deer"]
    assert len(device_report.DEER_CONFIGS) == 12 and {c[0] for c in device_report.DEER_CONFIGS} == {16384, 65536}
    assert set(device_report.BENCH_CONFIGS) == set(device_report.BENCH_ONLY) == set(device_report.BENCH_CELLS.values())


@pytest.fixture
def no_parts(monkeypatch):
    """Fail loudly if a part starts."""
    monkeypatch.setattr(device_report, "run_part", lambda *a, **k: pytest.fail("a part ran"))


@pytest.mark.parametrize("rel", ["bench/results.json", "charlm/results.json", "deer.json", "tests.log", "report.md"])
def test_an_out_holding_any_file_the_report_writes_is_refused_unless_overwrite(tmp_path, no_parts, rel):
    """Only report.json was looked for: `--out runs` replaced runs/bench/results.json and the
    charlm run's (the README's measurements) and deleted runs/bench/*.png."""
    (tmp_path / rel).parent.mkdir(exist_ok=True)
    (tmp_path / rel).write_text("an earlier run's")
    (tmp_path / "bench").mkdir(exist_ok=True)
    (tmp_path / "bench" / "ratio.png").write_bytes(b"png")
    with pytest.raises(ValueError, match=f"holds {rel} already.*--overwrite"):
        device_report.main(["--parts", "bench", "--out", str(tmp_path)])
    assert (tmp_path / rel).read_text() == "an earlier run's" and (tmp_path / "bench" / "ratio.png").exists()


def test_a_folder_where_the_report_writes_a_file_is_refused_even_with_overwrite(tmp_path, no_parts):
    (tmp_path / "report.json").mkdir()
    with pytest.raises(ValueError, match="holds a folder where the report writes a file: report.json"):
        device_report.main(["--parts", "env", "--out", str(tmp_path), "--overwrite"])


def test_a_part_drops_only_the_plots_it_wrote(tmp_path, monkeypatch):
    """Every *.png of out/<part> was deleted, a plot already there (not this run's) too."""
    import os
    folder = tmp_path / "bench_lstm"
    folder.mkdir()
    (folder / "mine.png").write_bytes(b"png")
    os.utime(folder / "mine.png", (1e9, 1e9))

    def writes(cmd, limit, log=None, prefix=""):     # a part that measured, plotted, and ran over
        (folder / "results.json").write_text(json.dumps({"config": {}, "rows": [{"impl": "now"}]}))
        (folder / "ratio.png").write_bytes(b"png")
        return -9, 1.0, True
    monkeypatch.setattr(device_report, "_stream", writes)
    assert device_report.run_part("bench_lstm", tmp_path, smoke=True)["result"]["rows"] == [{"impl": "now"}]
    assert sorted(p.name for p in folder.iterdir()) == ["mine.png", "results.json"]


@pytest.mark.parametrize("argv, flag", [
    (["--data", ""], "--data"), (["--data", "no such corpus.txt"], "--data"), (["--data", "."], "--data"),
    (["--out", ""], "--out"), (["--seed", "-1"], "--seed"), (["--seed", "nan"], "--seed"),
    (["--parts", "env", "--parts", "nonsense"], "--parts"),
])
def test_hostile_flags_are_argparse_errors_before_any_part(tmp_path, argv, flag, capsys, no_parts):
    # --data that is not there failed in the charlm part, the last one, minutes into a device run
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as e:
        device_report.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}:" in err, err


def test_an_out_and_data_with_spaces_reach_each_part_as_one_argument(tmp_path, monkeypatch):
    out = tmp_path / "device runs" / "first try"
    corpus = tmp_path / "my corpus.txt"
    corpus.write_text("abc")
    cmds = []
    monkeypatch.setattr(device_report, "_stream", lambda cmd, limit, log=None, prefix="": cmds.append(cmd) or (0, 1.0, False))
    report = device_report.main(["--parts", "env,charlm", "--out", str(out), "--data", str(corpus)])
    assert [c[c.index("--out") + 1] for c in cmds] == [str(out)] * 2 and cmds[1][cmds[1].index("--data") + 1] == str(corpus)
    assert (out / "report.json").is_file() and list(report["parts"]) == ["env", "charlm"]
    assert f"'{out}'" in report["command"]                         # quoted: the command can be run again as shown
