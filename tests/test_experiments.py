"""Each experiment runs through its real entry point for a few steps (min-char-rnn step for step
against the seed's numpy loop is in test_minchar.py)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import jrnn
from experiments import baselines, binary_addition, charlm, common, many_to_many, memory, minchar, sentiment, sequences

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def outputs(out):
    """results.json and the plot it names (one PNG, named for what it shows, never loss.png by default)."""
    r = json.loads((out / "results.json").read_text())
    assert r["plot"].endswith(".png") and (out / r["plot"]).stat().st_size > 1000
    assert [p.name for p in out.glob("*.png")] == [r["plot"]]
    assert r["environment"]["backend"] == jax.default_backend() and r["wall_time_s"] > 0
    return r


def printed(capsys, out):
    """The closing lines every experiment prints: `plot: <path>` and `results: <path>` (the
    files results.json names and `outputs` checks)."""
    r = json.loads((out / "results.json").read_text())
    lines = capsys.readouterr().out.splitlines()
    assert f"plot: {out / r['plot']}" in lines and f"results: {out / 'results.json'}" in lines, lines[-5:]


def test_minchar_resets_state_at_wraparound():
    ps, resets = minchar.positions(8, 80)  # 80 chars: chunks at 0, 25, 50, then wrap (50+26 > 80? no: 76 <= 80)
    assert list(ps) == [0, 25, 50, 0, 25, 50, 0, 25] and list(resets) == [True, False, False, True, False, False, True, False]


def test_minchar_smoke(data_dir, tmp_path, capsys):
    m = minchar.main(["--steps", "200", "--baseline-steps", "0", "--quiet", "--out", str(tmp_path)])
    r = outputs(tmp_path)
    printed(capsys, tmp_path)
    # the first loss is the seed lossFun's on the same initial weights and chunk (float32 vs
    # float64: 5e-8 here; the chunk one character later differs by 3e-6)
    text = jrnn.data.load_text("kafka")
    vocab = jrnn.data.build_vocab(text)
    ids = vocab.encode(text)
    p = jrnn.elman.init(jax.random.key(0), vocab_size=vocab.size, hidden_size=minchar.HIDDEN, scheme="normal",
                        scale=minchar.INIT_SCALE)
    Wxh, Whh, Why = (np.asarray(a, np.float64).T for a in (p.w_xh, p.w_hh, p.w_hy))
    bh, by = (np.asarray(a, np.float64)[:, None] for a in (p.b_h, p.b_y))
    first = baselines.minchar_loss_fun(ids[:25], ids[1:26], np.zeros((minchar.HIDDEN, 1)), Wxh, Whh, Why, bh, by)[0]
    assert r["runs"][0]["first_loss"] == pytest.approx(first, rel=5e-7)
    # smooth loss: from -ln(1/V) * 25 (109.55 for kafka's V), then 0.999 / 0.001
    start = -np.log(1.0 / vocab.size) * minchar.SEQ_LEN
    assert r["runs"][0]["smooth_loss"]["0"] == pytest.approx(0.999 * start + 0.001 * r["runs"][0]["first_loss"], rel=1e-7)
    assert r["plot"] == "smooth_loss.png"
    assert {k: r["config"][k] for k in ("hidden", "seq_len", "lr", "clip", "init_scale", "steps", "seeds")} == \
        {"hidden": 100, "seq_len": 25, "lr": 0.1, "clip": 5.0, "init_scale": 0.01, "steps": 200, "seeds": [0]}
    assert m["median_final_smooth_loss"] < r["runs"][0]["smooth_loss"]["0"]
    assert len(r["samples"]) == 1 and len(r["samples"][0]["text"]) == minchar.SAMPLE_LEN


@pytest.mark.slow   # sentiment's entry point also runs in test_cli (flags) and test_experiments' --help
def test_sentiment_smoke(tmp_path, capsys):
    m = sentiment.main(["--epochs", "50", "--seeds", "2", "--baseline-epochs", "0", "--quiet", "--out", str(tmp_path)])
    r = outputs(tmp_path)
    printed(capsys, tmp_path)
    c = r["config"]
    assert (c["epochs"], c["seeds"], c["hidden"], c["lr"], c["baseline_epochs"]) == (50, [0, 1], 64, 0.02, 0)
    assert max(m["final_train_loss"]) < np.log(2) and len(r["metrics"]["test_accuracy"]) == 2


@pytest.mark.slow
def test_sentiment_bidirectional_smoke(tmp_path):
    m = sentiment.main(["--epochs", "50", "--seeds", "2", "--bidirectional", "--quiet", "--out", str(tmp_path)])
    r = outputs(tmp_path)
    assert r["config"]["bidirectional"] is True and "speedup_vs_numpy" not in m   # no one-way numpy baseline
    assert max(m["final_train_loss"]) < np.log(2)
    assert isinstance(sentiment.init(sentiment.make_model("elman", 5, True), jax.random.key(0)).layers[0],
                      jrnn.model.Directions)


@pytest.mark.slow
def test_sentiment_seeds_split_over_two_devices_train_as_on_one():
    """The seed axis sharded over 2 CPU devices (3 seeds padded to 4 runs) gives the same
    losses as all seeds on one device."""
    code = ("import jax, numpy as np\n"
            "from experiments import sentiment\n"
            "assert jax.device_count() == 2, jax.devices()\n"
            "_, a, _ = sentiment.train([0, 1, 2], 20)\n"
            "_, b, _ = sentiment.train([0, 1, 2], 20, devices=1)\n"
            "assert a.shape == b.shape == (3, 20), a.shape\n"
            "print(float(np.max(np.abs(a - b))), float(a[:, -1].max()))\n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    diff, last = map(float, r.stdout.split())
    assert diff < 1e-6 and last < np.log(2)


def test_sentiment_vocabulary_is_sorted_and_covers_the_test_set():
    vocab = sentiment.vocabulary()
    assert vocab == sorted(vocab) and len(vocab) == 18
    assert {w for s in sentiment.TEST for w in s.split()} <= set(vocab)
    assert len(sentiment.TRAIN) == 58 and len(sentiment.TEST) == 20


def test_charlm_seed_mode_smoke(data_dir, tmp_path, capsys):
    m = charlm.main(["--epochs", "1", "--chars", "2000", "--sample-len", "50", "--quiet", "--out", str(tmp_path)])
    r = outputs(tmp_path)
    printed(capsys, tmp_path)
    # the default recipe's settings, not --full's argparse defaults (hidden 512, Adam 2e-3, batch 64, ...)
    c = r["config"]
    assert (c["mode"], c["hidden"], c["seq_len"], c["optimizer"], c["lr"], c["batch"], c["tbptt_k"], c["cell"]) == \
        ("recipe", 128, 25, "sgd", 1e-3, 1, 5, "elman")
    assert c["train_chars"] == 1975 and c["corpus_chars"] == 2000 and c["epochs"] == 1 and c["seeds"] == [0]
    V = c["vocab_size"]
    assert m["parameters"] == V * 128 + 128 * 128 + 128 + 128 * V + V       # the model that ran has H = 128
    assert not {"layers", "max_minutes", "checkpoint_every"} & set(c)
    assert m["cost_after"][0] < m["cost_before"][0]
    assert m["cost_before"][0] == pytest.approx(np.log(65), abs=0.1)   # uniform init: ~ln V
    assert len(r["sample"]) == 51


def test_charlm_full_mode_smoke(data_dir, tmp_path, capsys):
    m = charlm.main(["--full", "--epochs", "2", "--chars", "40000", "--hidden", "32", "--batch", "8",
                     "--seq-len", "16", "--sample-len", "20", "--quiet", "--out", str(tmp_path)])
    r = outputs(tmp_path)
    printed(capsys, tmp_path)
    c = r["config"]
    assert (c["mode"], c["hidden"], c["batch"], c["seq_len"], c["optimizer"], c["lr"], c["cell"]) == \
        ("full", 32, 8, 16, "adam", 2e-3, "elman")
    assert c["train_chars"] == 40000 - 4000 and c["epochs"] == 2 and "seeds" not in c
    assert (c["k1"], c["k2"]) == (0, 0)   # full BPTT; the README's cells table tells TBPTT runs apart by these
    assert m["parameters"] == 65 * 32 + 32 * 32 + 32 + 32 * 65 + 65
    h = r["history"]
    assert h[-1]["val_nats"] < h[0]["val_nats"] < np.log(65)
    assert m["val_bits"] == pytest.approx(m["val_nats"] / np.log(2))


@pytest.mark.slow
def test_charlm_full_streams_split_over_two_devices_train_as_on_one(data_dir, tmp_path):
    """--full on 2 CPU devices (streams split, LSTM (h, c) carries sharded) gives the validation
    losses and sample of 1 device, up to float32 summation order."""
    def run(devices):
        out = tmp_path / str(devices)
        cmd = [sys.executable, "-m", "experiments.charlm", "--full", "--cell", "lstm", "--epochs", "2", "--chars", "20000",
               "--hidden", "16", "--batch", "4", "--seq-len", "16", "--sample-len", "5", "--quiet", "--out", str(out)]
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout, json.loads((out / "results.json").read_text())

    (log2, two), (log1, one) = run(2), run(1)
    assert "split over 2 devices" in log2 and "split over" not in log1
    np.testing.assert_allclose([h["val_nats"] for h in two["history"]], [h["val_nats"] for h in one["history"]], rtol=1e-5)


@pytest.mark.slow
def test_charlm_full_mode_takes_any_cell_and_depth(data_dir, tmp_path):
    m = charlm.main(["--full", "--cell", "gru", "--layers", "2", "--epochs", "1", "--chars", "30000", "--hidden", "16",
                     "--batch", "4", "--seq-len", "16", "--sample-len", "10", "--quiet", "--out", str(tmp_path)])
    r = outputs(tmp_path)
    # layer 0: w_i [65, 48] + w_h [16, 48] + 2 biases [48]; layer 1: [16, 48] twice + 2 biases; readout
    assert r["config"]["cell"] == "gru" and m["parameters"] == (65 * 48 + 16 * 48 + 96) + (2 * 16 * 48 + 96) + (16 * 65 + 65)
    assert m["val_nats"] < np.log(65)


@pytest.mark.slow
def test_charlm_full_mode_trains_a_structured_cell_in_parallel_in_time_as_sequentially(data_dir, tmp_path):
    """--parallel deer (issue 30): the same run as the sequential scan's, up to the solve's tolerance."""
    args = ["--full", "--cell", "paragru", "--epochs", "1", "--chars", "20000", "--hidden", "16", "--batch", "4",
            "--seq-len", "32", "--sample-len", "10", "--quiet"]
    seq = charlm.main(args + ["--out", str(tmp_path / "seq")])
    par = charlm.main(args + ["--parallel", "deer", "--out", str(tmp_path / "par")])
    assert outputs(tmp_path / "par")["config"]["parallel"] == "deer"
    np.testing.assert_allclose(par["val_nats"], seq["val_nats"], rtol=1e-4)
    with pytest.raises(ValueError, match="--parallel and --k1"):
        charlm.main(args + ["--parallel", "deer", "--k1", "4", "--out", str(tmp_path / "both")])


def test_binary_addition_seed_recipe_adds_every_pair_after_3000_steps(tmp_path, capsys):
    """Measured on seeds 0-7: all 16,384 sums right first at iterations 1300-2100 (seed 0: 1900),
    so 3,000 of iamtrask's 10,000 iterations must reach 100 % (at 300 they are at 0-0.4 %)."""
    m = binary_addition.main(["--steps", "3000", "--seeds", "1", "--recipe", "iamtrask", "--quiet", "--out", str(tmp_path)])
    r = outputs(tmp_path)
    printed(capsys, tmp_path)
    c = r["config"]
    assert (c["recipe"], c["steps"], c["lr"], c["hidden"], c["seeds"]) == ("iamtrask", 3000, 0.1, 16, [0])
    assert not any(k.startswith("batched") for k in c)      # the batched recipe did not run
    acc = r["curves"]["seed 0"][1]
    assert len(acc) == 30 and acc[0] < 0.01
    assert m["final_exhaustive_accuracy"] == [1.0] and m["seeds_at_100pct"] == 1
    assert m["first_iteration_at_100pct"][0] <= 3000 and acc[m["first_iteration_at_100pct"][0] // 100 - 1] == 1.0


@pytest.mark.slow
def test_binary_addition_seed_recipe_adds_every_pair_in_5_of_5_seeds(tmp_path):
    """The seed's configuration (10,000 iterations): every seed adds all 16,384 pairs."""
    m = binary_addition.main(["--seeds", "5", "--recipe", "iamtrask", "--quiet", "--out", str(tmp_path)])
    assert m["seeds_at_100pct"] == 5 and m["final_exhaustive_accuracy"] == [1.0] * 5


def test_binary_addition_encoding_is_exact():
    x, y = binary_addition.encode(np.array([5, 127]), np.array([3, 127]))
    assert x.shape == (8, 2, 2) and y.shape == (8, 2, 1)
    decode = lambda bits: (bits[:, :, 0] * (2 ** np.arange(8))[:, None]).sum(0)
    np.testing.assert_array_equal(decode(y), [8, 254])
    np.testing.assert_array_equal(decode(x[..., :1]), [5, 127])
    assert binary_addition.ALL_X.shape == (8, 16384, 2)


@pytest.mark.slow
def test_sequences_smoke(tmp_path, capsys):
    m = sequences.main(["--steps", "200", "--quiet", "--out", str(tmp_path)])
    r = outputs(tmp_path)
    printed(capsys, tmp_path)
    assert r["config"]["steps"] == 200 and r["config"]["inits"] == ["default", "uniform01"]
    assert r["runs"][0]["curve_steps"][-1] == 200 and r["runs"][0]["curve_steps"][0] == 1
    assert len(r["runs"]) == 30
    curves = [run["curve"] for run in r["runs"] if run["init"] == "default"]
    assert all(c[-1] < c[0] for c in curves)
    assert set(m["solved_of_5"]) == {"default", "uniform01"}


@pytest.mark.slow
def test_many_to_many_smoke(tmp_path, capsys):
    m = many_to_many.main(["--steps", "100", "--quiet", "--out", str(tmp_path)])
    r = outputs(tmp_path)
    printed(capsys, tmp_path)
    assert (r["config"]["steps"], r["config"]["hidden"], r["config"]["batch"]) == (100, 32, 32)
    assert m["final_loss"] < m["first_loss"]
    assert m["grad_vs_bptt_rel_error_start"] < 1e-10 and m["grad_vs_bptt_rel_error_end"] < 1e-10


@pytest.mark.slow
def test_memory_smoke(tmp_path, capsys):
    rows = memory.main(["--lengths", "64", "16", "--out", str(tmp_path)])
    r = outputs(tmp_path)
    assert r["plot"] == "memory.png" and r["config"]["lengths"] == [16, 64] and r["config"]["timed_T"] == 64
    assert [row["T"] for row in rows] == [16, 64] and rows[1]["plain"] > rows[0]["plain"]
    out = capsys.readouterr()
    assert "memory" in out.err                                                           # the progress bar
    lines = out.out.splitlines()
    assert f"plot: {tmp_path / 'memory.png'}" in lines and f"results: {tmp_path / 'results.json'}" in lines


def test_charlm_rejects_full_only_flags_in_the_default_recipe(tmp_path):
    with pytest.raises(ValueError, match="--hidden, --lr: only with --full \\(the default recipe fixes H=128"):
        charlm.main(["--hidden", "256", "--lr", "0.01", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--seeds: default recipe only"):
        charlm.main(["--full", "--seeds", "2", "--out", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()


def test_charlm_help_shows_the_newline_prime_readably():
    p = _run(["experiments.charlm", "--help"])
    assert "(default: '\\n', a newline)" in p.stdout and "(default: )" not in p.stdout


def _run(args, **env):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


@pytest.mark.parametrize("name", ["minchar", "charlm"] + [pytest.param(n, marks=pytest.mark.slow) for n in
                                  ["sentiment", "binary_addition", "sequences", "many_to_many", "memory"]])
def test_help_explains_every_flag(name):
    p = _run([f"experiments.{name}", "--help"])
    assert p.returncode == 0 and "--seed" in p.stdout and "--out" in p.stdout


def test_missing_corpus_offline_is_one_clear_line(tmp_path):
    p = _run(["experiments.minchar", "--steps", "10"], JRNN_DATA_DIR=str(tmp_path), XDG_CACHE_HOME=str(tmp_path),
             JRNN_OFFLINE="1")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "JRNN_DATA_DIR" in p.stderr and "kafka.txt" in p.stderr and "https://" in p.stderr


def test_bad_arguments_fail_before_training(tmp_path):
    p = _run(["experiments.charlm", "--epochs", "0", "--out", str(tmp_path)])
    assert p.returncode == 2 and "argument --epochs: must be a positive integer, got 0" in p.stderr

def test_prime_outside_the_vocabulary_fails_before_training(data_dir, tmp_path):
    p = _run(["experiments.charlm", "--prime", "\u00e9", "--out", str(tmp_path)])
    assert p.returncode == 2 and "not in the vocabulary" in p.stderr and not (tmp_path / "results.json").exists()


# ---- the plots a person reads ------------------------------------------------------------------

def _drawn(fig):
    """(axes, close): the figure drawn, so tick labels and extents are final."""
    import matplotlib.pyplot as plt   # after the figure: the plotting code chose the Agg backend
    fig.canvas.draw()
    return fig.axes[0], lambda: plt.close(fig)


def test_curves_of_few_whole_number_points_mark_each_point_and_tick_whole_numbers():
    """charlm's recipe mode plots a cost per epoch (0 and 1): the axis read 0.0, 0.2, ... 1.0 of an
    epoch, and a line alone hid that there are two measurements."""
    fig = common.curves_figure({"seed 0": (np.arange(2), [4.18, 3.98])}, xlabel="epoch", ylabel="cost", title="t")
    ax, close = _drawn(fig)
    try:
        assert ax.get_lines()[0].get_marker() == "o"
        lo, hi = ax.get_xlim()
        assert [t for t in ax.get_xticks() if lo <= t <= hi] == [0, 1]
        assert ax.get_yscale() == "linear" and ax.get_legend() is None   # one curve, nothing to tell apart
    finally:
        close()


def test_curves_spanning_decades_get_a_log_axis_in_plain_numbers_and_a_legend_beside_the_axes():
    xs = np.arange(100)
    ys = 20 * np.exp(-xs / 15)                                   # 20 down to 0.03: three decades
    fig = common.curves_figure({"seed 0": (xs, ys), "seed 1": (xs, 2 * ys)}, xlabel="step", ylabel="loss, nats",
                               title="t", refs={"chance: ln 2": np.log(2)})
    ax, close = _drawn(fig)
    try:
        assert ax.get_yscale() == "log" and ax.get_ylabel() == "loss, nats (log scale)"
        labels = {t.get_text() for t in ax.get_yticklabels()}
        assert {"0.1", "1", "10"} <= labels and not any("10^" in t or "$" in t for t in labels)
        assert ax.get_lines()[0].get_marker() in ("None", None, "")            # 100 points: a line
        ref = ax.get_lines()[-1]
        assert tuple(ref.get_ydata()) == (np.log(2),) * 2 and ref.get_linestyle() == "--"
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == ["seed 0", "seed 1", "chance: ln 2"]
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())   # never over a curve
    finally:
        close()


def test_plot_curves_needs_a_filename_and_a_curve(tmp_path):
    """No default name: the bench's speed-ups were saved as loss.png."""
    kw = dict(xlabel="x", ylabel="y", title="t")
    with pytest.raises(TypeError, match="filename"):
        common.plot_curves(tmp_path, {"a": ([0, 1], [1, 2])}, **kw)
    with pytest.raises(ValueError, match="curves is empty"):
        common.plot_curves(tmp_path, {}, filename="a.png", **kw)
    assert not list(tmp_path.iterdir())


def test_print_saved_says_where_the_plot_and_results_are_or_why_there_is_no_plot(tmp_path, capsys):
    common.print_saved(tmp_path, tmp_path / "accuracy.png")
    common.print_saved(tmp_path, None, "the batched recipe alone has no curve")
    assert capsys.readouterr().out.splitlines() == [
        f"plot: {tmp_path / 'accuracy.png'}", f"results: {tmp_path / 'results.json'}",
        "plot: none (the batched recipe alone has no curve)", f"results: {tmp_path / 'results.json'}"]


# ---- one model factory, one cached step (experiments.common) -----------------------------------

def test_common_init_draws_the_notebooks_elman_params_with_a_scheme_and_other_networks_their_own():
    """The notebooks' Elman network gets the very numbers jrnn.elman.init draws with its scheme
    (charlm's command 1 reproduces its notebook from them); a gated, stacked or bidirectional
    network, or no scheme, gets the model's own init."""
    key = jax.random.key(3)
    elman = common.model("elman", vocab=7, hidden=5)
    got = common.init(elman, key, scheme="normal", scale=0.01)
    want = jrnn.elman.init(key, vocab_size=7, hidden_size=5, scheme="normal", scale=0.01)
    assert isinstance(got, jrnn.ElmanParams) and all(np.array_equal(a, b) for a, b in zip(got, want))
    clf = common.model("elman", inputs=4, hidden=3, outputs=2, activation="sigmoid")
    got = common.init(clf, key, scheme="uniform", scale=1.0)
    want = jrnn.elman.init(key, input_size=4, hidden_size=3, output_size=2, scheme="uniform", scale=1.0)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    for net in (common.model("lstm", vocab=7, hidden=5), common.model("elman", vocab=7, hidden=5, layers=2),
                common.model("elman", inputs=7, hidden=5, outputs=2, bidirectional=True)):
        got = common.init(net, key, scheme="normal")
        assert isinstance(got, jrnn.Params)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(net.init(key))))
    assert isinstance(common.init(elman, key), jrnn.Params)           # no scheme: the model's own


def test_common_model_names_the_missing_sizes_and_a_misplaced_activation():
    with pytest.raises(ValueError, match="give vocab= .* or both inputs= and outputs="):
        common.model("elman", inputs=3, hidden=2)
    with pytest.raises(ValueError, match="activation= sets the Elman cell's nonlinearity; the lstm cell"):
        common.model("lstm", vocab=3, hidden=2, activation="sigmoid")


def test_common_multi_step_is_made_once_per_loss_network_optimizer_and_keywords(monkeypatch):
    made = []
    real = jrnn.make_multi_step
    monkeypatch.setattr(jrnn, "make_multi_step", lambda *a, **kw: made.append(kw) or real(*a, **kw))
    common.multi_step.cache_clear()
    net, opt = common.model("elman", vocab=5, hidden=3), jrnn.optim.sgd(0.1)
    loss = sequences.loss_fn
    step = common.multi_step(loss, net, opt, precision="float32")
    assert common.multi_step(loss, common.model("elman", vocab=5, hidden=3), opt, precision="float32") is step
    assert common.multi_step(loss, net, opt, precision="bfloat16") is not step
    assert common.multi_step(loss, common.model("gru", vocab=5, hidden=3), opt, precision="float32") is not step
    assert made == [{"precision": "float32"}, {"precision": "bfloat16"}, {"precision": "float32"}]
    with pytest.raises(TypeError, match="must be hashable .* pass a Model or a cell name as net"):
        common.multi_step(loss, [net], opt)


def test_sequences_compiles_one_step_per_optimizer_and_network_not_one_per_run(monkeypatch):
    """sequences made a new jitted step for each of its 30 runs, each compiled anew; a run of
    the other init (same task, same optimizer) now reuses the first one's step."""
    made = []
    real = jrnn.make_multi_step
    monkeypatch.setattr(jrnn, "make_multi_step", lambda *a, **kw: made.append(1) or real(*a, **kw))
    common.multi_step.cache_clear()
    runs = [sequences.train("constant_0", "sgd", init, 4, 0) for init in sequences.INITS]
    assert len(made) == 1 and [r["init"] for r in runs] == list(sequences.INITS)
