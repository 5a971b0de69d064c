"""What every experiment shares: CLI flags, progress bar, results JSON, loss plot, clean errors.

Nothing in `jrnn/` imports this module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jrnn import data
from jrnn.train import NonFiniteError


def parser(name: str, doc: str, *, steps: int | None = None, epochs: int | None = None) -> argparse.ArgumentParser:
    """An argparse parser with the flags every experiment takes."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=doc,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    if steps is not None:
        p.add_argument("--steps", type=int, default=steps, help="training iterations")
    if epochs is not None:
        p.add_argument("--epochs", type=int, default=epochs, help="passes over the training data")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (first seed when --seeds > 1)")
    p.add_argument("--out", type=Path, default=Path("runs") / name, help="folder for results.json and the plot")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def positive(args, *names):
    """Reject non-positive counts before anything is compiled."""
    for n in names:
        v = getattr(args, n)
        if v is None or v <= 0:
            raise ValueError(f"--{n.replace('_', '-')} must be positive, got {v}")


def progress(total: int, desc: str, quiet: bool = False):
    """A tqdm bar (disabled with --quiet); call .set_postfix(loss=...) to show the running loss."""
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=quiet, dynamic_ncols=True, mininterval=0.5)


def environment() -> dict:
    d = jax.devices()[0]
    return {"jax": jax.__version__, "backend": jax.default_backend(), "device": str(d.device_kind),
            "device_count": jax.device_count(), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count()}


def save_results(out: Path, name: str, config: dict, metrics: dict, wall_s: float, **extra) -> Path:
    """Write `out/results.json`: config, metrics, wall time, jax backend and device."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"experiment": name, "config": _plain(config), "metrics": _plain(metrics),
               "wall_time_s": wall_s, "environment": environment(), **_plain(extra)}
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def plot_curves(out: Path, curves: dict, *, xlabel: str, ylabel: str, title: str,
                filename: str = "loss.png") -> Path:
    """One PNG with a line per curve: curves = {label: (xs, ys)}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (xs, ys) in curves.items():
        ax.plot(np.asarray(xs), np.asarray(ys), label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / filename
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plain(x):
    """Make numpy/jax scalars and arrays JSON-serialisable."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    return x


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.s = time.perf_counter() - self.t0


def cli(main):
    """Run `main(argv)`; a missing corpus or bad argument is one clear line and exit code 2."""
    def run(argv=None):
        try:
            return main(sys.argv[1:] if argv is None else argv)
        except (data.CorpusNotFoundError, ValueError, NonFiniteError) as e:
            if argv is not None:  # called from Python (tests): let the caller see the exception
                raise
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2)
    return run
