"""The benchmark harness does the same work in every implementation (not a timing test)."""

import json
import os
import subprocess
import sys

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
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["precision"] == "float32" and len(saved["rows"]) == len(rows)


def test_data_parallel_rows_match_jrnn_and_skip_batches_that_do_not_split(tmp_path):
    """With 2 CPU devices the bench adds data-parallel rows where B splits evenly (B=2), doing
    the same work as the single-device step, and leaves them out where it does not (B=1)."""
    code = ("import json, sys, jax\n"
            "from experiments import bench\n"
            "assert jax.device_count() == 2, jax.devices()\n"
            f"rows = bench.main(['--configs', '2,8,5,7;1,8,5,7', '--repeats', '1', '--only', 'jrnn', '--quiet', '--out', {str(tmp_path)!r}])\n"
            "print(json.dumps([(r['config'][0], r['impl'], r['loss_initial'], r['loss_after_one_step']) for r in rows]))\n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    dp = [r for r in rows if "data-parallel" in r[1]]
    assert {r[0] for r in dp} == {2} and len(dp) == 2
    ref = next(r for r in rows if r[0] == 2 and r[1] == "jrnn")
    for _, name, l0, l1 in dp:
        assert abs(l0 - ref[2]) <= 1e-6 * ref[2], name
        if l1 is not None:
            assert abs(l1 - ref[3]) <= 1e-6 * ref[3], name
