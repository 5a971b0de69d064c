"""The benchmark harness does the same work in every implementation (not a timing test)."""

import pytest

pytest.importorskip("flax")
pytest.importorskip("torch")

from experiments import bench  # noqa: E402


def test_every_implementation_matches_jrnn_after_one_step(tmp_path):
    rows = bench.main(["--configs", "2,8,5,7", "--repeats", "1", "--quiet", "--out", str(tmp_path)])
    ref = next(r for r in rows if r["impl"] == "jrnn")
    for r in rows:
        assert abs(r["loss_initial"] - ref["loss_initial"]) <= 1e-4 * ref["loss_initial"]
        if r["loss_after_one_step"] is not None:
            assert abs(r["loss_after_one_step"] - ref["loss_after_one_step"]) <= 1e-4 * ref["loss_after_one_step"], r["impl"]
    assert ref["loss_after_one_step"] < ref["loss_initial"]
    assert (tmp_path / "results.json").exists()
