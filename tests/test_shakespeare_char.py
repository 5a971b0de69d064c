"""charlm --recipe shakespeare-char (experiments/shakespeare.py): nanoGPT's split, a validation
that scores every character, training from the training slice alone, and a run that resumes."""

import json

import jax
import numpy as np
import pytest

import jrnn
from experiments import charlm, shakespeare


def test_split_is_nanogpts_90_10_by_characters_with_the_whole_texts_vocabulary(data_dir):
    """nanoGPT's prepare.py: 65 chars, train = data[:int(n * 0.9)] (1,003,854 chars), val = the
    rest (111,540); the first validation char is text[1003854]."""
    text = jrnn.data.load_text("tinyshakespeare")
    vocab, train_ids, val_ids = shakespeare.split(text)
    assert vocab.size == 65 and len(text) == 1_115_394
    assert (len(train_ids), len(val_ids)) == (1_003_854, 111_540)
    assert vocab.decode(val_ids[:1]) == text[1_003_854]
    assert vocab.decode(train_ids) + vocab.decode(val_ids) == text


def test_training_streams_are_cut_from_the_training_ids_alone():
    """By construction: every stream of every epoch is a contiguous run of the ids it is given
    (the training slice), so no validation char can reach a training batch."""
    train_ids = np.arange(1, 1000, dtype=np.int32) % 60
    for epoch in range(3):
        xs, ys = shakespeare.train_streams(train_ids, 4, 8, epoch, seed=0)
        streams_x = xs.transpose(2, 0, 1).reshape(4, -1)          # [B, N*T]
        streams_y = ys.transpose(2, 0, 1).reshape(4, -1)
        for sx, sy in zip(streams_x, streams_y):
            start = [i for i in range(len(train_ids) - len(sx)) if np.array_equal(train_ids[i:i + len(sx)], sx)]
            assert start and np.array_equal(train_ids[start[0] + 1:start[0] + 1 + len(sy)], sy)


def _tiny():
    model = jrnn.lm.model("gru", vocab_size=7, hidden_size=4, layers=2)
    return model, model.init(jax.random.key(0))


def test_validation_scores_every_prediction_of_the_split_once():
    """The stateful validation (streams, carry threaded over chunks) with one stream equals the
    loss of the whole split read in one pass; the nanoGPT-style number equals the mean over its
    256-char blocks (the last one short), each from a zero carry; padding is never counted."""
    model, params = _tiny()
    val = np.random.default_rng(0).integers(0, 7, 301).astype(np.int32)      # 300 predictions
    whole, _ = model.loss(params, val[:-1, None], val[1:, None])
    assert shakespeare.evaluate(model, params, val, streams=1, chunk=64) == pytest.approx(float(whole), rel=1e-5)
    sums = [float(model.loss(params, val[s:s + 256, None][:len(val) - 1 - s], val[s + 1:s + 257, None],
                             reduction="sum")[0]) for s in (0, 256)]
    assert shakespeare.evaluate_blocks(model, params, val, block=256, group=2) == pytest.approx(sum(sums) / 300,
                                                                                                  rel=1e-5)
    x, y, m = shakespeare.columns(val, 64)
    assert x.shape == (64, 5) and m.sum() == 300 and np.array_equal(x.T.reshape(-1)[:300], val[:-1])


def _run(out, *extra):
    return ["--chars", "20000", "--cell", "gru", "--layers", "2", "--hidden", "8", "--batch", "1", "--seq-len", "16",
            "--steps", "40", "--max-minutes", "0", "--eval-minutes", "0.0001", "--checkpoint-minutes", "0.0001",
            "--sample-len", "20", "--quiet", "--out", str(out), *extra]


@pytest.mark.slow   # trains twice (a kill and a resume): the split and validation tests are the default case
def test_recipe_smoke_writes_results_plot_best_checkpoint_and_resumes_the_same_curve(data_dir, tmp_path, monkeypatch):
    """charlm --recipe shakespeare-char, a few steps of a tiny model: results.json (config, best
    validation and when, parameters, device), the plot, the best params; a run killed after its
    second checkpoint and resumed ends where the uninterrupted run ends, on the same curve."""
    metrics = charlm.main(["--recipe", "shakespeare-char", *_run(tmp_path / "whole")])
    res = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert res["experiment"] == "shakespeare-char" and res["config"]["recipe"] == "shakespeare-char"
    m = res["metrics"]
    assert m["steps"] == 40 and m["parameters"] == metrics["parameters"] > 0 and m["device"]
    assert m["best_val_nats"] == min(r["val_nats"] for r in res["history"]) < np.log(65)
    assert m["best_at_step"] in [r["step"] for r in res["history"]] and m["nanogpt_val_nats"] == 1.4697
    assert res["config"]["train_chars"] == 18_000 and res["config"]["val_chars"] == 2_000
    assert len(res["sample"]) == 21 and (tmp_path / "whole" / "train_validation_loss.png").is_file()
    best = jrnn.checkpoint.load_latest(tmp_path / "whole" / "best", {"params": _params_like(res)})
    assert best.step == m["best_at_step"]

    saves, real_save = [], jrnn.checkpoint.save

    def killed_after_two(directory, state, **kw):
        path = real_save(directory, state, **kw)
        if directory.name == "checkpoints":
            saves.append(kw["step"])
            if len(saves) == 2:
                raise KeyboardInterrupt
        return path

    monkeypatch.setattr(jrnn.checkpoint, "save", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        shakespeare.main(_run(tmp_path / "cut"))
    monkeypatch.setattr(jrnn.checkpoint, "save", real_save)
    shakespeare.main(_run(tmp_path / "cut", "--resume"))
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert cut["metrics"]["steps"] == 40
    assert [p[1:] for p in cut["curve"]] == [p[1:] for p in res["curve"]]        # steps and train losses
    assert [r["step"] for r in cut["history"]] == [r["step"] for r in res["history"]]
    np.testing.assert_allclose([r["val_nats"] for r in cut["history"]], [r["val_nats"] for r in res["history"]],
                               rtol=1e-6)


def _params_like(res):
    c = res["config"]
    model = jrnn.lm.model(c["cell"], vocab_size=c["vocab_size"], hidden_size=c["hidden"], layers=c["layers"])
    return model.init(jax.random.key(0))


@pytest.mark.parametrize("flags,match", [
    (["--max-minutes", "0"], "needs a budget"),
    (["--k2", "4"], "--k1/--k2"),
    (["--dropout", "1"], "--dropout"),
    (["--batch", "4096"], "cannot fill one call"),
])
def test_bad_flags_are_refused_before_training(data_dir, tmp_path, flags, match):
    with pytest.raises(ValueError, match=match):
        shakespeare.main(["--chars", "20000", "--out", str(tmp_path), *flags])
