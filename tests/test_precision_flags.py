"""--precision of the training experiments reaches jrnn's step (`precision=`) and results.json."""

import json

import pytest

import jrnn
from experiments import bench, charlm, common, minchar


def test_precision_flag_parses_to_the_step_argument():
    ap = common.parser("x", "doc")
    common.add_precision(ap)
    assert common.step_precision(ap.parse_args([])) == "float32"                  # the library's default
    assert common.step_precision(ap.parse_args(["--precision", "default"])) is None
    assert common.step_precision(ap.parse_args(["--precision", "tensorfloat32"])) == "tensorfloat32"
    with pytest.raises(SystemExit):
        ap.parse_args(["--precision", "fp16"])
    assert set(common.PRECISION_CHOICES) - {"default"} == set(jrnn.train.PRECISIONS) >= set(bench.PRECISIONS) - {"default"}


def _spy(monkeypatch, module, name, seen):
    real = getattr(module, name)

    def wrapper(*a, **kw):
        seen.append(kw.get("precision", "float32"))
        return real(*a, **kw)
    monkeypatch.setattr(module, name, wrapper)


def test_minchar_precision_reaches_the_step(data_dir, tmp_path, monkeypatch):
    seen = []
    _spy(monkeypatch, jrnn, "make_multi_step", seen)
    common.multi_step.cache_clear()
    try:
        minchar.main(["--steps", "100", "--baseline-steps", "0", "--precision", "tensorfloat32", "--quiet",
                      "--out", str(tmp_path)])
    finally:
        common.multi_step.cache_clear()
    assert seen == ["tensorfloat32"]
    assert json.loads((tmp_path / "results.json").read_text())["config"]["precision"] == "tensorfloat32"
    step = minchar.multi_step(False, "bfloat16")
    assert step is not minchar.multi_step(False, "float32") and minchar.multi_step(False, "float32") is minchar.multi_step()


def test_charlm_precision_reaches_the_step(data_dir, tmp_path, monkeypatch):
    seen = []
    _spy(monkeypatch, jrnn, "make_multi_step", seen)
    _spy(monkeypatch, jrnn.distributed, "make_data_parallel_step", seen)
    charlm.main(["--full", "--epochs", "1", "--chars", "20000", "--hidden", "8", "--batch", "2", "--seq-len", "16",
                 "--precision", "default", "--sample-len", "5", "--quiet", "--out", str(tmp_path)])
    assert seen and set(seen) == {None}
    assert json.loads((tmp_path / "results.json").read_text())["config"]["precision"] == "default"
    assert charlm.seed_epoch("float32") is charlm.seed_epoch() and charlm.seed_epoch(None) is not charlm.seed_epoch()
