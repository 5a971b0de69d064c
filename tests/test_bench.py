"""The benchmark harness does the same work in every implementation (not a timing test), and
survives a short window: rows saved as measured, a time budget, the GPU selection."""

import json
import os
import subprocess
import sys

import pytest

from experiments import bench
from jrnn.testing import assert_trees_close


def _peers():
    pytest.importorskip("flax")
    pytest.importorskip("torch")


def k_single_steps(cell, cfg, k):
    """jrnn's params and loss after k single steps on the bench's batch (the reference)."""
    B, H, T, V = cfg
    x, y = bench.make_batch(B, T, V)
    one = bench.jrnn_impl(bench.init_params(cell, V, H), x, y, cell=cell)
    for _ in range(k):
        one["train"]()
    return one["params"](), one["loss"]()


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
def test_every_implementation_matches_jrnn_after_training(tmp_path, cell):
    """Same initial loss everywhere; after one call, single-step rows equal jrnn's one step and
    multi-step rows equal K single steps (loss and, for jrnn, every parameter)."""
    _peers()
    cfg = (2, 8, 5, 7)
    tmp_path = tmp_path / "bench"
    rows = bench.main(["--cell", cell, "--quick", "--configs", ",".join(map(str, cfg)), "--repeats", "1", "--quiet",
                       "--out", str(tmp_path)])
    assert {r["impl"].split()[0] for r in rows} == {"jrnn", "flax", "torch"}
    ref = next(r for r in rows if r["impl"] == "jrnn")
    _, after_k = k_single_steps(cell, cfg, bench.MULTI_K)
    assert after_k < ref["loss_after_one_step"] < ref["loss_initial"]
    for r in rows:
        assert abs(r["loss_initial"] - ref["loss_initial"]) <= 1e-5 * ref["loss_initial"], r["impl"]
        want = ref["loss_after_one_step"] if r["steps_per_call"] == 1 else after_k
        assert abs(r["loss_after_first_call"] - want) <= 1e-4 * want, r["impl"]
    assert any(r["steps_per_call"] == bench.MULTI_K for r in rows)
    out = tmp_path if cell == "elman" else tmp_path.parent / f"bench_{cell}"   # beside the Elman bench
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["precision"] == "float32" and saved["config"]["cell"] == cell
    assert len(saved["rows"]) == len(rows) and saved["complete"] is True


def test_multi_step_call_leaves_the_params_of_k_single_steps():
    cfg = (2, 8, 5, 7)
    B, H, T, V = cfg
    x, y = bench.make_batch(B, T, V)
    multi = bench.jrnn_impl(bench.init_params("elman", V, H), x, y, multi=True)
    multi["train"]()
    params, _ = k_single_steps("elman", cfg, bench.MULTI_K)
    assert_trees_close(multi["params"](), params, rtol=1e-5)


@pytest.mark.slow
def test_data_parallel_rows_match_jrnn_and_skip_batches_that_do_not_split(tmp_path):
    """With 2 CPU devices the bench adds data-parallel rows where B splits evenly (B=2), doing
    the same work as the single-device step (after one step, and after K steps per call), and
    leaves them out where it does not (B=1). Runs jrnn only: needs neither Flax nor PyTorch."""
    code = ("import json, sys, jax\n"
            "from experiments import bench\n"
            "assert jax.device_count() == 2, jax.devices()\n"
            f"rows = bench.main(['--configs', '2,8,5,7;1,8,5,7', '--repeats', '1', '--quick', '--only', 'jrnn', "
            f"'--quiet', '--out', {str(tmp_path)!r}])\n"
            "print(json.dumps([(r['config'][0], r['impl'], r['steps_per_call'], r['loss_initial'], "
            "r['loss_after_first_call']) for r in rows]))\n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    dp = [r for r in rows if "data-parallel" in r[1]]
    assert {r[0] for r in dp} == {2} and len(dp) == 2
    ref = next(r for r in rows if r[0] == 2 and r[1] == "jrnn")
    multi = next(r for r in rows if r[0] == 2 and r[2] > 1 and "data-parallel" not in r[1])
    _, after_k = k_single_steps("elman", (2, 8, 5, 7), bench.MULTI_K)
    assert abs(multi[4] - after_k) <= 1e-5 * after_k
    for _, name, k, l0, l1 in dp:
        assert abs(l0 - ref[3]) <= 1e-6 * ref[3], name
        assert abs(l1 - (ref[4] if k == 1 else after_k)) <= 1e-5 * l1, name


@pytest.mark.slow
def test_rows_reach_results_json_as_they_are_measured(tmp_path, monkeypatch, capsys):
    saves, complete = [], []
    real = bench.common.save_results

    def spy(out, name, config, metrics, wall, **extra):
        saves.append(len(extra["rows"]))
        complete.append(extra["complete"])
        return real(out, name, config, metrics, wall, **extra)

    monkeypatch.setattr(bench.common, "save_results", spy)
    rows = bench.main(["--configs", "2,8,5,7;1,8,4,7", "--repeats", "1", "--quick", "--only", "jrnn", "--quiet",
                       "--out", str(tmp_path)])
    assert len(rows) == 4 and saves[:2] == [1, 2] and saves[-1] == 4 and 3 in saves
    assert complete[-1] is True and not any(complete[:-1])   # a run killed mid-way is not "complete"
    out = capsys.readouterr().out
    assert out.count("| 2, 8, 5, 7 | jrnn") == 2 and out.count("| 1, 8, 4, 7 | jrnn") == 2
    saved = json.loads((tmp_path / "results.json").read_text())
    assert all(r["compile_s"] > 0 and r["train_us"] > 0 for r in saved["rows"])


@pytest.mark.slow
def test_time_budget_stops_cleanly_and_keeps_what_was_measured(tmp_path):
    class AfterOneMeasurement(bench.Budget):
        def __init__(self):
            super().__init__(1.0)
            self.calls = 0

        def spent(self):
            self.calls += 1
            return self.calls > 1

    cfg = (2, 8, 5, 7)
    impls = bench.implementations(True, selection="all")
    rows, _ = bench.run_config(cfg, {k: v for k, v in impls.items() if k.startswith("jrnn")}, 1,
                               budget=AfterOneMeasurement())
    assert [r["impl"] for r in rows] == ["jrnn"]
    rows = bench.main(["--configs", "2,8,5,7;1,8,4,7", "--only", "jrnn", "--time-budget", "1e-9", "--quiet",
                       "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert rows == [] and saved["complete"] is False and saved["not_measured"] == [[2, 8, 5, 7], [1, 8, 4, 7]]
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(SystemExit):          # argparse: "argument --time-budget: ...", exit 2
            bench.main(["--time-budget", bad, "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--only"):            # --overwrite: past the earlier run in tmp_path
        bench.main(["--only", "nonsense", "--overwrite", "--out", str(tmp_path)])


@pytest.mark.slow
def test_gpu_selection_has_the_six_configs_and_four_implementations(tmp_path):
    assert len(bench.GPU_CONFIGS) == len(set(bench.GPU_CONFIGS)) == 6
    assert {(1, 100, 25, 80), (64, 512, 256, 65), (256, 1024, 512, 256), (8, 256, 8192, 65),
            (1024, 1024, 512, 65)} <= set(bench.GPU_CONFIGS)
    names = list(bench.implementations(True, selection="gpu"))
    assert names == ["jrnn", f"jrnn best: multi-step (K={bench.MULTI_K})", "flax",
                     f"flax best: multi-step (K={bench.MULTI_K})", "torch", "torch.compile"]
    rows = bench.main(["--gpu-quick", "--configs", "2,8,5,7", "--only", "jrnn", "--quiet", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["impl"] for r in rows] == names[:2] and all(r["forward_us"] is None for r in rows)
    assert saved["config"]["gpu_quick"] and saved["config"]["time_budget_s"] == bench.GPU_QUICK_BUDGET_S


# ---- what the bench tells a reader: speedup.png, and the plot: / results: lines ------------------

def _fake_run_config(ratios):
    """run_config measuring nothing: one jrnn row and (where the ratio is not None) one peer row
    per config, the peer's time `ratio` times jrnn's, so the bench's ratio is `ratio`."""
    def run_config(cfg, impls, repeats, **kw):
        ratio = ratios[tuple(cfg)]
        row = lambda impl, us: {"config": list(cfg), "cell": "elman", "impl": impl, "compile_s": 1.0,
                                "forward_compile_s": 1.0, "train_us": us, "forward_us": None,
                                "train_us_per_timestep": us / cfg[2], "steps_per_call": 1, "loss_initial": 1.0,
                                "loss_after_first_call": 0.9, "loss_after_one_step": 0.9}
        rows = [row("jrnn", 100.0)] + ([] if ratio is None else [row("flax", 100.0 * ratio)])
        for r in rows:
            kw["on_row"](r)
        return rows, bench.ratios_of(rows)
    return run_config


def test_bench_prints_plot_and_results_and_saves_speedup_png_with_each_config_named(tmp_path, monkeypatch, capsys):
    """The bench's plot was loss.png, "config index" on the x axis, no plot: line. Now: speedup.png,
    named in results.json and printed with results.json's path (timing itself faked: fast)."""
    ratios = {(1, 100, 25, 80): 4.5, (32, 256, 128, 65): 0.3, (1, 64, 1024, 65): None}
    monkeypatch.setattr(bench, "run_config", _fake_run_config(ratios))
    monkeypatch.setattr(bench, "versions", lambda: {"jax": "x"})
    drawn = {}
    real = bench.common.plot_ratios

    def spy(out, labels, series, **kw):
        drawn.update(labels=labels, series=series, **kw)
        return real(out, labels, series, **kw)

    monkeypatch.setattr(bench.common, "plot_ratios", spy)
    bench.main(["--configs", "1,100,25,80;32,256,128,65;1,64,1024,65", "--quiet", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert f"plot: {tmp_path / 'speedup.png'}" in lines and f"results: {tmp_path / 'results.json'}" in lines
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["plot"] == "speedup.png" and saved["complete"] is True
    assert [p.name for p in tmp_path.glob("*.png")] == ["speedup.png"]
    assert (tmp_path / "speedup.png").stat().st_size > 5000
    assert drawn["labels"] == ["B=1 H=100\nT=25 V=80", "B=32 H=256\nT=128 V=65", "B=1 H=64\nT=1024 V=65"]
    assert drawn["series"] == {bench.DEFAULT_SERIES: [4.5, 0.3, "no peer measured"],
                               bench.BEST_PEER_SERIES: [4.5, 0.3, "no peer measured"]}
    assert saved["metrics"]["jrnn_speedup_default_vs_default"]["1,100,25,80"] == 4.5
    assert drawn["filename"] == "speedup.png" and "speed-up" in drawn["ylabel"]
    assert "vs Flax: speed-up" in drawn["title"]                      # the peers this run measured


def test_speedup_series_says_why_a_config_has_no_ratio():
    rows = [{"config": [1, 2, 3, 4], "impl": "jrnn"}, {"config": [5, 6, 7, 8], "impl": "flax"}]
    configs = [(1, 2, 3, 4), (5, 6, 7, 8), (9, 9, 9, 9), (2, 2, 2, 2)]
    ratios = {"1,2,3,4": None, "5,6,7,8": None, "2,2,2,2": 2.5}
    assert bench.speedup_series(configs, rows, ratios) == {
        bench.BEST_PEER_SERIES: ["no peer measured", "no jrnn row", "not measured", 2.5]}


def test_deer_run_prints_plot_and_results_and_names_each_config(tmp_path, capsys):
    """--deer printed neither line and plotted train speed-ups against "config index"; a budget
    spent at once measures nothing, and the plot still names every config (as not measured)."""
    out = tmp_path / "deer"
    rows = bench.main(["--deer", "--time-budget", "1e-9", "--quiet", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert rows == []
    assert f"plot: {out / 'deer_speedup.png'}" in lines and f"results: {out / 'results.json'}" in lines
    saved = json.loads((out / "results.json").read_text())
    assert saved["plot"] == "deer_speedup.png" and (out / "deer_speedup.png").stat().st_size > 5000


def test_deer_plot_has_a_series_per_method_and_says_which_configs_were_skipped(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(bench.common, "plot_ratios", lambda out, labels, series, **kw: drawn.update(
        labels=labels, series=series, **kw) or out / kw["filename"])
    rows = [{"T": 8, "H": 2, "B": 1, "method": "sequential"},
            {"T": 8, "H": 2, "B": 1, "method": "deer", "train_speedup": 0.5},
            {"T": 8, "H": 2, "B": 1, "method": "elk", "train_speedup": 2.0},
            {"T": 16, "H": 2, "B": 1, "method": "sequential"},
            {"T": 16, "H": 2, "B": 1, "method": "deer", "skipped": "Jacobians > 1 GiB"}]
    bench.plot_deer(tmp_path, [(8, 2, 1), (16, 2, 1)], rows, {"backend": "cpu", "device": "cpu"})
    assert drawn["labels"] == ["T=8 H=2\nB=1", "T=16 H=2\nB=1"]
    assert drawn["series"] == {"deer": [0.5, "skipped: > 1 GiB"], "elk": [2.0, None]}


def test_ratio_plot_names_configs_on_a_log_speedup_axis_with_a_dashed_1x_line_and_a_legend_per_series():
    labels = [bench.config_label(c) for c in [(1, 100, 25, 80), (32, 256, 128, 65), (1, 64, 1024, 65)]]
    series = {bench.BEST_PEER_SERIES: [4.5, 0.3, None], "jrnn default ÷ peer default": [1.0, 20.0, "no peer measured"]}
    fig = bench.common.ratios_figure(labels, series, title="t")
    import matplotlib.pyplot as plt   # after the figure: ratios_figure chose the Agg backend
    try:
        (ax,) = fig.axes
        fig.canvas.draw()
        assert [t.get_text() for t in ax.get_xticklabels()] == labels
        assert ax.get_yscale() == "log" and ax.get_ylabel().startswith("speed-up, ×")
        lo, hi = ax.get_ylim()
        assert lo < 0.3 and hi > 20.0                                  # every bar and its label inside
        assert all(t.get_text().endswith("×") for t in ax.get_yticklabels() if t.get_text())
        assert any(tuple(l.get_ydata()) == (1.0, 1.0) and l.get_linestyle() == "--" for l in ax.get_lines())
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == [*series, "1×: as fast"]
        assert len({tuple(h.get_facecolor()) for h in legend.legend_handles[:2]}) == 2   # one colour per series
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())          # never over a bar
        texts = [t.get_text() for t in ax.texts]
        assert {"4.5×", "0.3×", "20×", "1×", "not measured", "no peer measured"} <= set(texts)
    finally:
        plt.close(fig)
    for bad, match in [(([], series), "labels is empty"), ((labels, {}), "series is empty"),
                       ((labels, {"a": [1.0]}), "'a' has 1 values for 3 labels")]:
        with pytest.raises(ValueError, match=match):
            bench.common.ratios_figure(*bad, title="t")


# ---- the two ratios: default/default and best/best, never one side's best over the other's default --

def test_ratios_are_default_over_default_and_best_over_best():
    """A peer's default step is compared with jrnn's default step only, and jrnn's fastest row
    with the fastest peer row: jrnn's K-step is not divided into the peers' default step."""
    rows = [{"impl": "jrnn", "train_us": 300.0}, {"impl": "jrnn multi-step (K=20)", "train_us": 100.0},
            {"impl": "flax", "train_us": 240.0}, {"impl": "flax multi-step (K=20)", "train_us": 150.0},
            {"impl": "torch", "train_us": 600.0}, {"impl": "torch.compile", "train_us": 400.0}]
    assert bench.ratios_of(rows) == {"default/default": 240.0 / 300.0, "best/best": 150.0 / 100.0}
    assert bench.ratios_of(rows[:2]) == {"default/default": None, "best/best": None}
    assert bench.ratios_of([r for r in rows if r["impl"] != "flax"])["default/default"] == 600.0 / 300.0


def test_every_jax_technique_of_jrnns_best_path_is_given_to_flax():
    """Each jrnn row beyond its default step (K steps per call; data-parallel where there are
    several devices) has a Flax row with the same technique; PyTorch gets torch.compile."""
    for selection in ("all", "gpu"):
        names = list(bench.implementations(True, selection=selection))
        techniques = lambda lib: {n.split(" ", 1)[1].split(": ", 1)[-1] for n in names
                                  if n.startswith(lib + " ")}
        assert techniques("jrnn") == techniques("flax"), selection
        assert {"jrnn", "flax", "torch", "torch.compile"} <= set(names)


def test_bench_prints_both_ratios_named(capsys):
    """The bench's ratio line names each ratio; the README/docs table names both in its header."""
    line = bench.report.bench_ratio_row((1, 100, 25, 80), {"default/default": 1.04, "best/best": 1.62})
    assert "default/default: 1.04x" in line and "best/best: 1.62x" in line
    r = {"rows": [{"config": [1, 100, 25, 80], "impl": "jrnn", "train_us": 300.0},
                  {"config": [1, 100, 25, 80], "impl": "flax", "train_us": 312.0}],
         "metrics": {"jrnn_speedup_default_vs_default": {"1,100,25,80": 1.04},
                     "jrnn_speedup_vs_best_peer": {"1,100,25,80": 1.62}}}
    header, _, row = bench.report.bench_table(r)
    assert "default/default" in header and "best/best" in header and "best peer / best jrnn" not in header
    assert row == "| 1, 100, 25, 80 | 300 | 312 | **1.04x** | **1.62x** |"
