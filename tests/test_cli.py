"""Every user error of every experiment's command line: one message naming the flag, exit code 2,
before any training. Argument errors happen at parse time, so these tests train nothing."""

import argparse
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

import jrnn
from experiments import (bench, binary_addition, charlm, common, device_report, many_to_many, memory, minchar,
                         sentiment, sequences, shakespeare)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = {"sentiment": sentiment, "binary_addition": binary_addition, "many_to_many": many_to_many,
               "minchar": minchar, "charlm": charlm, "sequences": sequences, "memory": memory, "bench": bench,
               "device_report": device_report, "shakespeare": shakespeare}
BAD = {
    common.positive_int: ["0", "-5", "2.5", "x", ""],
    common.non_negative_int: ["-1", "1.5", "x"],
    common.positive_float: ["0", "-1", "nan", "inf", "-inf", "x"],
    common.non_negative_float: ["-1", "nan", "inf", "x"],
    common.finite_float: ["nan", "inf", "x"],
    common.seed: ["-5", str(2**32), "1.5", "x"],
}


class _Parsed(Exception):
    pass


def parser_of(module, monkeypatch):
    """The parser `module.main` builds, captured at its parse_args call (nothing after it runs)."""
    seen = {}

    def capture(self, args=None, namespace=None):
        seen["parser"] = self
        raise _Parsed

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(_Parsed):
            module.main([])
    return seen["parser"]


@pytest.fixture
def no_training(monkeypatch):
    """Fail loudly if an experiment gets as far as its progress bar (every one opens it to train)."""
    def progress(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(common, "progress", progress)


def numeric_flags(p):
    return [(a.option_strings[-1], a.type) for a in p._actions if a.option_strings and a.type in BAD]


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_numeric_flag_of_every_experiment_is_validated(name, monkeypatch, tmp_path, capsys, no_training):
    p = parser_of(EXPERIMENTS[name], monkeypatch)
    for a in p._actions:   # a plain int/float type would let 0, -5, nan through
        assert a.type not in (int, float), f"{name} {a.option_strings}: use a validating type from common"
    flags = numeric_flags(p)
    assert "--seed" in dict(flags)
    out = tmp_path / "out"
    for flag, kind in flags:
        for bad in BAD[kind]:
            with pytest.raises(SystemExit) as e:
                EXPERIMENTS[name].main([f"{flag}={bad}", "--out", str(out)])
            err = capsys.readouterr().err
            assert e.value.code == 2, (name, flag, bad)
            assert f"argument {flag}:" in err, (name, flag, bad, err)
    assert not (out / "results.json").exists()


def test_the_flag_lists_cover_what_the_issue_names(monkeypatch):
    flags = {name: dict(numeric_flags(parser_of(m, monkeypatch))) for name, m in EXPERIMENTS.items()}
    assert flags["charlm"]["--temperature"] is common.positive_float
    assert flags["charlm"]["--chars"] is common.positive_int
    assert flags["charlm"]["--max-minutes"] is common.non_negative_float
    assert flags["minchar"]["--checkpoint-every"] is common.non_negative_int
    assert flags["sentiment"]["--devices"] is common.positive_int
    assert flags["bench"]["--repeats"] is common.positive_int
    assert all(f["--seed"] is common.seed for f in flags.values())


def test_validators_accept_good_values():
    assert common.positive_int("3") == 3 and common.non_negative_int("0") == 0
    assert common.positive_float("1e-3") == 1e-3 and common.non_negative_float("0") == 0.0
    assert common.seed("0") == 0 and common.seed(str(2**32 - 1)) == 2**32 - 1
    assert bench.config_list("1,2,3,4;5,6,7,8") == [(1, 2, 3, 4), (5, 6, 7, 8)]
    with pytest.raises(argparse.ArgumentTypeError, match="groups of 4"):
        bench.config_list("1,2,x,4")


def test_out_that_is_a_file_or_below_a_file_is_refused_at_parse_time(tmp_path, capsys, no_training):
    f = tmp_path / "file"
    f.write_text("mine")
    for out, says in [(f, "exists and is not a folder"), (f / "sub", "cannot create folder")]:
        with pytest.raises(SystemExit) as e:
            sequences.main(["--steps", "10", "--out", str(out)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "argument --out:" in err and says in err
    assert f.read_text() == "mine"
    (tmp_path / "d" / "results.json").mkdir(parents=True)
    with pytest.raises(SystemExit):
        sequences.main(["--out", str(tmp_path / "d")])
    assert "results.json is a folder" in capsys.readouterr().err


def test_out_where_no_file_can_be_written_is_refused_at_parse_time(tmp_path, monkeypatch, capsys, no_training):
    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(common.tempfile, "mkstemp", read_only)
    with pytest.raises(SystemExit) as e:
        many_to_many.main(["--out", str(tmp_path / "ro")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --out: cannot write in" in err and "Permission denied" in err


def test_bench_deer_checks_the_folder_it_writes_before_measuring(tmp_path, monkeypatch):
    (tmp_path / "bench_deer").write_text("a file")
    monkeypatch.setattr(bench, "deer_rows", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(ValueError, match="--out .*bench_deer.*not a folder"):
        bench.main(["--deer", "--out", str(tmp_path / "bench")])


@pytest.mark.parametrize("module,argv,flag", [
    (bench, ["--only", "nonsense"], "--only"),
    (bench, ["--deer", "--only", "jrnn"], "--deer"),
    (minchar, ["--checkpoint-every", "150"], "--checkpoint-every"),
    (minchar, ["--seed", str(2**32 - 1), "--seeds", "2"], "--seed"),
    (binary_addition, ["--steps", "150"], "--steps"),
    (many_to_many, ["--steps", "75"], "--steps"),
    (many_to_many, ["--seed", str(2**32 - 1)], "--seed"),
    (charlm, ["--hidden", "64"], "--hidden"),
    (charlm, ["--resume"], "--resume"),
    (charlm, ["--max-minutes", "5"], "--max-minutes"),
    (charlm, ["--full", "--seeds", "2"], "--seeds"),
])
def test_cross_flag_errors_name_the_flag_before_training(module, argv, flag, tmp_path, no_training):
    with pytest.raises(ValueError, match=flag):
        module.main([*argv, "--out", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("argv,flag", [
    (["--full", "--chars", "5000"], "--chars"),        # was ZeroDivisionError after loading
    (["--full", "--chars", "150", "--batch", "1", "--seq-len", "1"], "--chars"),  # too little to validate on
    (["--chars", "20"], "--chars"),
    (["--chars", "99999999"], "--chars"),
    (["--prime", ""], "--prime"),
    (["--prime", "\u00e9"], "--prime"),
])
def test_charlm_text_size_and_prime_are_checked_before_training(argv, flag, data_dir, tmp_path, no_training):
    with pytest.raises(ValueError, match=flag):
        charlm.main([*argv, "--out", str(tmp_path)])


def test_charlm_full_text_check_is_exact():
    """One call of 10 steps of B x T chars plus one, and 16 + 1 validation chars, is enough."""
    import numpy as np
    args = argparse.Namespace(batch=4, seq_len=16)
    train, val = charlm.full_mode_split(np.arange(712), args)     # 641 train chars, 71 validation
    assert len(train) == 4 * 16 * charlm.FULL_CALL_STEPS + 1 and len(val) == 71
    assert len(jrnn.data.streams(train, 4, 16)[0]) == charlm.FULL_CALL_STEPS
    with pytest.raises(ValueError, match="--chars 711"):
        charlm.full_mode_split(np.arange(711), args)                   # 640 train chars


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("argv,says", [
    (["experiments.charlm", "--temperature", "nan"], "argument --temperature: must be a finite number"),
    (["experiments.minchar", "--seed", "-5"], "argument --seed: must be an integer in [0, 2**32 - 1], got -5"),
    (["experiments.bench", "--only", "nonsense"], "error: --only: unknown implementation(s) ['nonsense']"),
])
def test_the_command_line_says_one_line_and_exits_2(argv, says, tmp_path):
    p = _cli(*argv, "--out", str(tmp_path / "out"))
    assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert [line for line in p.stderr.splitlines() if "error" in line] == [p.stderr.splitlines()[-1]]
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("out", ["", "   "])
def test_an_empty_out_is_refused_not_read_as_the_current_folder(out, capsys, no_training):
    # Path("") is ".": results.json and loss.png went into whatever folder the run started in
    with pytest.raises(SystemExit) as e:
        sequences.main(["--steps", "10", "--out", out])
    assert e.value.code == 2 and "argument --out: must name a folder" in capsys.readouterr().err


def test_a_checkpoint_folder_that_is_a_file_is_refused_before_any_seed_trains(data_dir, tmp_path, no_training):
    # seed 1's folder was first created when seed 1 started, after seed 0 had trained in full
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "seed_1").write_text("a file")
    with pytest.raises(ValueError, match=r"--out: checkpoints cannot be written: .*seed_1 exists and is not a folder"):
        minchar.main(["--seeds", "2", "--steps", "100", "--checkpoint-every", "100", "--baseline-steps", "0",
                      "--quiet", "--out", str(tmp_path)])
    assert (tmp_path / "checkpoints" / "seed_1").read_text() == "a file"


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:99999", "127.0.0.1:0", ":1234", "host:", "a b:12",
                                     "127.0.0.1:x"])
def test_a_coordinator_that_is_not_host_port_is_refused_at_parse_time(address, capsys, no_training):
    # it reached jax.distributed.initialize, which waits its whole timeout for it
    with pytest.raises(SystemExit) as e:
        charlm.main(["--full", "--coordinator", address, "--num-processes", "2", "--process-id", "0"])
    assert e.value.code == 2 and "argument --coordinator: must be host:port" in capsys.readouterr().err


def test_good_coordinators_parse():
    assert [common.coordinator(a) for a in ("127.0.0.1:1234", "node-7.cluster:65535", "[::1]:80")] == [
        "127.0.0.1:1234", "node-7.cluster:65535", "[::1]:80"]


def test_a_resume_that_must_start_fresh_into_other_checkpoints_is_refused_before_any_seed_trains(
        data_dir, tmp_path, no_training):
    # seed_1's run.json names a run that saved nothing, beside another run's checkpoint (an
    # --overwrite killed between claiming and deleting): --resume finds nothing of its run, so
    # seed 1 starts fresh; its start_run refused the folder only after seed 0 had trained in full
    d = tmp_path / "checkpoints" / "seed_1"
    jrnn.checkpoint.save(d, {"w": jnp.ones(2)}, step=100)
    (d / "run.json").write_text('{"run_id": "a-run-that-saved-nothing"}')
    with pytest.raises(jrnn.checkpoint.RunConflictError, match="seed_1 holds 1 checkpoint"):
        minchar.main(["--seeds", "2", "--steps", "100", "--checkpoint-every", "100", "--baseline-steps", "0",
                      "--quiet", "--resume", "--out", str(tmp_path)])
    assert [p.name for p in jrnn.checkpoint.list_checkpoints(d)] == ["ckpt_0000000100.npz"]


@pytest.mark.parametrize("bad", ["0", "-1", "x", "2.5", str(10**10), "100001"])
def test_charlm_sample_len_is_bounded_at_parse_time(bad, tmp_path, capsys, no_training):
    # --sample-len 10**10 trained in full, then overflowed the jitted sampler before results.json
    with pytest.raises(SystemExit) as e:
        charlm.main(["--sample-len", bad, "--out", str(tmp_path)])
    assert e.value.code == 2 and "argument --sample-len:" in capsys.readouterr().err
    assert common.at_most(charlm.MAX_SAMPLE_LEN, "why")(str(charlm.MAX_SAMPLE_LEN)) == 100_000


def test_results_are_written_whatever_sits_at_results_json_tmp(tmp_path):
    # the fixed temp name results.json.tmp, if a folder, failed the run after training
    (tmp_path / "results.json.tmp").mkdir()
    path = common.save_results(tmp_path, "x", {"a": 1}, {"m": 2.0}, 1.0)
    assert path.name == "results.json" and __import__("json").loads(path.read_text())["metrics"] == {"m": 2.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.json.tmp"]


def _in(folder, *args):
    return subprocess.run([sys.executable, "-m", *args], cwd=folder, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT})


def test_report_with_no_flags_on_a_machine_without_the_runs_changes_nothing(tmp_path):
    """`python -m experiments.report` replaced every table with "not yet regenerated" and exited 0;
    a malformed results file stopped it with an AttributeError traceback."""
    readme = tmp_path / "README.md"
    readme.write_bytes(b"# t\r\n<!-- report:begin bench -->\nmeasured 1.234\n<!-- report:end bench -->\n"
                       b"<!-- report:begin bench_lstm -->\nmeasured 5.678\n<!-- report:end bench_lstm -->\n")
    before = readme.read_bytes()
    p = _in(tmp_path, "experiments.report")
    assert p.returncode == 0 and readme.read_bytes() == before, p.stdout + p.stderr
    assert "kept as it is: bench\n" in p.stdout and "0 table(s) with new text, 2 kept" in p.stdout
    (tmp_path / "runs" / "bench").mkdir(parents=True)
    (tmp_path / "runs" / "bench" / "results.json").write_text("[]")
    p = _in(tmp_path, "experiments.report")
    assert p.returncode == 0 and readme.read_bytes() == before and "Traceback" not in p.stderr, p.stderr
    assert f"skipped {os.path.join('runs', 'bench', 'results.json')} holds a list" in p.stdout
    p = _in(tmp_path, "experiments.report", "--check")
    assert p.returncode == 1 and "nothing checked" in p.stdout


@pytest.mark.parametrize("argv, says", [
    (["experiments.report", "--readme", "nothere.md"], "argument --readme: no file nothere.md"),
    (["experiments.report", "--only", ""], "argument --only: names no table"),
    (["experiments.launch", "-n", "2", "--", "sequences"], "does not run as several processes"),
    (["experiments.launch", "-n", "99999", "--", "charlm"], "argument -n/--num-processes: must be at most"),
])
def test_report_and_launch_refuse_bad_flags_with_one_error_line_and_exit_2(tmp_path, argv, says):
    p = _in(tmp_path, *argv)
    assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == []      # nothing written, no runs/ folder made


# ---- a second run into the same --out never destroys the first --------------------------------

# the files each experiment writes in --out beside results.json (a plot): each alone marks an earlier run
PLOTS = {"sentiment": ["train_loss.png"], "binary_addition": ["accuracy.png"], "many_to_many": ["train_loss.png"],
         "minchar": ["smooth_loss.png"], "charlm": ["cost.png", "validation_loss.png"],
         "sequences": ["loss_by_task.png"], "memory": ["memory.png"], "bench": ["speedup.png", "deer_speedup.png"]}
FIRST_RUN = b"the first run's bytes \x00\xff"


def _earlier_run(folder, name="results.json"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(FIRST_RUN)
    return folder / name


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_a_second_run_into_an_out_holding_results_or_a_plot_exits_2_before_any_work(name, tmp_path, monkeypatch,
                                                                                    capsys, no_training):
    """Run twice into one --out, every experiment replaced the first run's results.json and plot
    without a word (here the second run would have trained: no_training fails it)."""
    for i, f in enumerate(["results.json", *PLOTS[name]]):
        first = _earlier_run(tmp_path / str(i), f)
        with pytest.raises(SystemExit) as e:
            EXPERIMENTS[name].main(["--out", str(first.parent)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert (f"error: --out {first.parent} holds {f} of an earlier run, which this run would replace: "
                f"pass --overwrite to replace that run, or --out to write elsewhere\n") in err, err
        assert first.read_bytes() == FIRST_RUN and sorted(p.name for p in first.parent.iterdir()) == [f]


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_overwrite_lets_a_run_replace_the_one_in_out(name, tmp_path, monkeypatch):
    p = parser_of(EXPERIMENTS[name], monkeypatch)
    first = _earlier_run(tmp_path)
    for f in PLOTS[name]:
        _earlier_run(tmp_path, f)
    args = p.parse_args(["--overwrite", "--out", str(tmp_path)])       # parsing only: nothing runs
    assert args.overwrite is True and args.out == tmp_path and first.read_bytes() == FIRST_RUN
    assert p.parse_args(["--out", str(tmp_path / "fresh")]).overwrite is False   # created, empty: just works


def test_every_plot_an_experiment_writes_marks_an_earlier_run(monkeypatch):
    """The plots the parser checks are every .png name in the experiment's source (a new plot
    left out of `plots=` would be replaced without a word)."""
    import pathlib
    import re
    for name in PLOTS:
        source = pathlib.Path(EXPERIMENTS[name].__file__).read_text(encoding="utf-8")
        written = set(re.findall(r"[\"'](\w+\.png)[\"']", source))
        assert written and written == set(parser_of(EXPERIMENTS[name], monkeypatch).plots) == set(PLOTS[name]), name


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_has_one_overwrite_flag_with_one_meaning(name, monkeypatch):
    p = parser_of(EXPERIMENTS[name], monkeypatch)
    flags = [a for a in p._actions if "--overwrite" in a.option_strings]
    assert len(flags) == 1 and flags[0].help.startswith("replace the run in --out"), name


def test_an_out_with_other_files_or_an_empty_one_just_works(tmp_path, monkeypatch):
    p = parser_of(sequences, monkeypatch)
    for f in ("notes.txt", "photo.png", "results.json.bak", "checkpoints"):
        (tmp_path / f).write_text("mine")
    assert p.parse_args(["--out", str(tmp_path)]).out == tmp_path
    assert p.parse_args(["--out", str(tmp_path / "new" / "deeper")]).out.is_dir()


def test_a_dangling_symlink_at_results_json_is_an_earlier_run_too(tmp_path, monkeypatch, capsys):
    p = parser_of(memory, monkeypatch)
    (tmp_path / "results.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(SystemExit):
        p.parse_args(["--out", str(tmp_path)])
    assert "holds results.json of an earlier run" in capsys.readouterr().err
    assert (tmp_path / "results.json").is_symlink()


def test_a_plot_name_that_is_a_folder_is_refused_even_with_overwrite(tmp_path, monkeypatch, capsys):
    p = parser_of(many_to_many, monkeypatch)
    (tmp_path / "train_loss.png").mkdir()
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--overwrite", "--out", str(tmp_path)])
    assert e.value.code == 2 and "train_loss.png is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("name, ckpt", [("minchar", "checkpoints/seed_0"), ("charlm", "checkpoints")])
def test_resume_continues_the_run_in_out_only_where_it_has_checkpoints(name, ckpt, tmp_path, monkeypatch, capsys):
    """--resume with no checkpoints to continue starts over, so it too would replace results.json."""
    p = parser_of(EXPERIMENTS[name], monkeypatch)
    first = _earlier_run(tmp_path)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--resume", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and (f"--resume: --out {tmp_path} holds results.json of an earlier run but no checkpoints "
                                  f"under {tmp_path / 'checkpoints'} to continue, so this run would start over") in err
    jrnn.checkpoint.save(tmp_path / ckpt, {"w": jnp.ones(2)}, step=100)
    assert p.parse_args(["--resume", "--out", str(tmp_path)]).resume is True
    with pytest.raises(SystemExit):                              # without --resume: the fix names it
        p.parse_args(["--out", str(tmp_path)])
    assert "pass --overwrite to replace that run, --resume to continue it, or --out" in capsys.readouterr().err
    assert first.read_bytes() == FIRST_RUN


def test_charlm_overwrite_replaces_a_default_recipe_run_too(tmp_path, monkeypatch):
    # --overwrite was a --full-only flag: "--overwrite: only with --full"
    _earlier_run(tmp_path, "cost.png")

    def load_text(*a, **k):            # called once every flag has been checked
        raise _Parsed
    monkeypatch.setattr(charlm.jrnn.data, "load_text", load_text)
    with pytest.raises(_Parsed):
        charlm.main(["--overwrite", "--out", str(tmp_path)])


@pytest.mark.parametrize("flags, writes", [(["--cell", "lstm"], "bench_lstm"), (["--cell", "gru"], "bench_gru"),
                                           (["--deer"], "bench_deer"), ([], "bench")])
def test_bench_checks_the_folder_it_writes_beside_runs_bench(flags, writes, tmp_path, monkeypatch, capsys):
    p = parser_of(bench, monkeypatch)
    others = {"bench", "bench_lstm", "bench_gru", "bench_deer"} - {writes}
    for other in others:                                         # another bench's run: not this one's to replace
        _earlier_run(tmp_path / other)
    assert p.parse_args([*flags, "--out", str(tmp_path / "bench")])
    first = _earlier_run(tmp_path / writes)
    with pytest.raises(SystemExit) as e:
        p.parse_args([*flags, "--out", str(tmp_path / "bench")])
    err = capsys.readouterr().err
    where = f"--out {first.parent}" if writes == "bench" else f"{first.parent} (where this run writes)"
    assert e.value.code == 2 and f"{where} holds results.json of an earlier run" in err, err
    assert p.parse_args([*flags, "--overwrite", "--out", str(tmp_path / "bench")]).overwrite


def test_the_command_line_refuses_a_second_run_in_one_line(tmp_path):
    first = _earlier_run(tmp_path / "out")
    p = _cli("experiments.sequences", "--steps", "10", "--out", str(first.parent))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr == (f"python -m experiments.sequences: error: --out {first.parent} holds results.json of an "
                        "earlier run, which this run would replace: pass --overwrite to replace that run, or --out "
                        "to write elsewhere\n")
    assert first.read_bytes() == FIRST_RUN
