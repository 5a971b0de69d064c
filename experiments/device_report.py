"""One prepared device run: everything a GPU session should measure, in one command.

    PYTHONPATH=. python -m experiments.device_report [--out runs/device_report]

Within 12 minutes on one H100, printing as it goes, it runs seven parts, each in its own process
with its own time limit (so one slow part cannot eat the window; a part that runs over is
stopped and the report says so, keeping what it measured):

  env         GPU, driver, jax, jaxlib, CUDA, flax, torch, optax, numpy, python
  tests       pytest on the GPU-relevant files (hoisted LSTM/GRU recurrences, DEER/ELK), not slow ones
  bench       `experiments.bench --gpu-quick` (Elman) at (1, 100, 25, 80) and (64, 512, 256, 65):
              jrnn default / best, Flax, PyTorch
  bench_lstm  the LSTM: jrnn default / best against cuDNN's nn.LSTM at four configs
  bench_gru   the GRU: the same against cuDNN's nn.GRU
  deer        DEER, quasi-DEER, ELK and quasi-ELK against the sequential scan,
              T in {16k, 65k}, H in {8, 32, 64}, B in {1, 16} (T=65k, H=8, B=1 first, then
              cheapest first): times, Newton iterations, fallbacks
  charlm      `experiments.charlm --full` for 3 epochs: validation per epoch and wall time; then
              `charlm --recipe shakespeare-char` with the GPU config (SHAKESPEARE_GPU: a bigger
              model, 3 minutes of training, target <= 1.47 nats/char against nanoGPT's 1.4697)

It needs no pip: the python that has jax (CUDA), flax, optax, torch, tqdm, matplotlib, pytest and
hypothesis, run from the repo root with PYTHONPATH=. (the corpus from $JRNN_DATA_DIR or --data).
It writes 8 files at most, at most one folder deep, under --out: report.md (the tables),
report.json (everything), tests.log, deer.json, {bench,bench_lstm,bench_gru,charlm}/results.json
(the plots are dropped: the device machine returns 8 files, and report.md holds every table).
It refuses an --out that holds any of those files already (another report, or an experiment's
runs: `--out runs` would replace runs/bench/results.json) unless --overwrite.
`--smoke` runs the same code paths on a CPU with tiny sizes (about two minutes on an idle 2-core
CPU; its limits are generous for a loaded one); the test suite runs it (slow) and its parts in
one process (default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from experiments import common
from experiments.report import DEER_ROW_HEADER, DEVICE_BENCH_CELLS, DEVICE_PARTS, deer_row, device_markdown

ROOT = Path(__file__).resolve().parent.parent

# hyperparameters: each part's limit in seconds on the device (sum + process starts < 8 min).
# On a GPU compiling dominates each part, so each bench part measures a few configs and the DEER
# part one or two (the measurements behind these limits: docs/benchmarks.md).
PARTS = DEVICE_PARTS          # the order they run in (the report's tables follow it)
LIMIT_S = {"env": 15, "tests": 80, "bench": 80, "bench_lstm": 95, "bench_gru": 95, "deer": 70, "charlm": 45 + 225}
SMOKE_LIMIT_S = {name: 180 for name in PARTS}   # a loaded CPU
BENCH_SOFT_S = 70          # each bench part starts no new measurement after this (its own budget)
DEER_SOFT_S = 55
BENCH_CELLS = DEVICE_BENCH_CELLS
# Elman: the full GPU selection (jrnn default / best, Flax, PyTorch) on the two headline configs;
# LSTM / GRU: jrnn against cuDNN (`nn.LSTM` / `nn.GRU`) on four, Flax left out to fit the window
BENCH_CONFIGS = {"elman": "1,100,25,80;64,512,256,65",
                 "lstm": "1,100,25,80;64,512,256,65;8,256,8192,65;64,384,1024,65",
                 "gru": "1,100,25,80;64,512,256,65;8,256,8192,65;64,384,1024,65"}
BENCH_ONLY = {"elman": None, "lstm": "jrnn,torch", "gru": "jrnn,torch"}
GPU_TESTS = ["tests/test_hoisted.py", "tests/test_parallel_in_time.py"]
SMOKE_TESTS = ["tests/test_unroll.py::test_default_unroll_is_1_on_cpu_8_on_gpu_and_never_more_than_t"]
DEER_CONFIGS = [(T, H, B) for T in (16384, 65536) for H in (8, 32, 64) for B in (1, 16)]
SMOKE_DEER_CONFIGS = [(64, 4, 2)]
CHARLM_EPOCHS = 3
SMOKE_CHARLM = ["--chars", "12000", "--hidden", "8", "--batch", "2", "--seq-len", "16", "--sample-len", "10"]
# the shakespeare-char recipe on one GPU: 3 minutes of training (plus compiling and the evaluations,
# inside the charlm part's extra 225 s); unmeasured until a device is lent
SHAKESPEARE_GPU = ["--cell", "lstm", "--layers", "2", "--hidden", "1024", "--batch", "128", "--seq-len", "128",
                   "--dropout", "0.25", "--lr", "2e-3", "--max-minutes", "3", "--eval-minutes", "0.5",
                   "--checkpoint-minutes", "0", "--target", "1.47", "--precision", "tensorfloat32"]
SMOKE_SHAKESPEARE = ["--chars", "12000", "--layers", "2", "--hidden", "8", "--batch", "2", "--seq-len", "16",
                     "--steps", "20", "--max-minutes", "0", "--eval-minutes", "0.0001", "--checkpoint-minutes", "0",
                     "--sample-len", "10"]
SMOKE_BENCH_CONFIGS = "2,8,5,7"
# what a run writes under --out (at most 8 files, at most one folder deep)
WRITES = ("report.md", "report.json", "tests.log", "deer.json", *(f"{d}/results.json" for d in (*BENCH_CELLS, "charlm")))


# ---- the parts (each runs in its own process: `--part NAME`) ------------------------------------

def part_env(out: Path, smoke: bool) -> dict:
    import jax
    import jaxlib
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "jax": jax.__version__, "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
           "devices": [str(d.device_kind) for d in jax.devices()]}
    try:
        env["platform_version"] = jax.devices()[0].client.platform_version   # e.g. the CUDA version
    except Exception as e:  # noqa: BLE001 - a missing attribute must not stop the report
        env["platform_version"] = f"unknown ({type(e).__name__})"
    for mod in ("flax", "optax", "torch", "numpy"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = "not installed"
    try:
        import torch
        env["torch_cuda"] = torch.version.cuda
        env["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        env["nvidia_smi"] = f"unavailable ({type(e).__name__})"
    for k, v in env.items():
        print(f"{k}: {v}", flush=True)
    return env


def part_bench(out: Path, smoke: bool, name: str = "bench") -> dict:
    """One bench part (a key of BENCH_CELLS): its cell's GPU selection, into out/<name>."""
    from experiments import bench
    folder, cell = out / name, BENCH_CELLS[name]
    argv = ["--gpu-quick", "--cell", cell, "--time-budget", str(BENCH_SOFT_S), "--quiet", "--out", str(folder),
            "--configs", SMOKE_BENCH_CONFIGS if smoke else BENCH_CONFIGS[cell]]
    argv += ["--only", BENCH_ONLY[cell]] if BENCH_ONLY[cell] else []
    started = time.time()
    bench.main(argv)
    _drop_plots(folder, started)
    return json.loads((folder / "results.json").read_text())


def _drop_plots(folder: Path, since: float) -> None:
    """The device machine returns 8 files: report.md holds the tables, so the plots this part
    wrote (since `since`, a time.time()) stay behind; a plot already there before is not its to delete."""
    for png in folder.glob("*.png"):
        if png.stat().st_mtime >= since - 1.0:      # a coarse file clock may stamp it a little early
            png.unlink()


def part_deer(out: Path, smoke: bool) -> dict:
    from experiments import bench
    rows, path = [], out / "deer.json"
    budget = bench.Budget(DEER_SOFT_S)
    configs = SMOKE_DEER_CONFIGS if smoke else DEER_CONFIGS
    # the config where DEER falls back under TF32 first (T=65,536, H=8, B=1), then cheapest
    # first, so a short window measures the most configs
    configs = sorted(configs, key=lambda c: (c != (65536, 8, 1), c[0] * c[1] * c[1] * c[2], c))
    methods = bench.parallel_methods()
    print(f"methods: sequential, {', '.join(methods)}", flush=True)
    print(DEER_ROW_HEADER, flush=True)

    def on_row(r):
        rows.append(r)
        print(deer_row(r), flush=True)
        _write_json(path, {"configs": configs, "methods": methods, "rows": rows})

    bench.deer_rows(configs, 2, methods=methods, budget=budget, on_row=on_row)
    result = {"configs": configs, "methods": methods, "rows": rows,
              "not_measured": [list(c) for c in configs if not any((r["T"], r["H"], r["B"]) == c for r in rows)]}
    _write_json(path, result)
    return result


def part_charlm(out: Path, smoke: bool, data=None) -> dict:
    from experiments import charlm
    argv = ["--full", "--epochs", "1" if smoke else str(CHARLM_EPOCHS), "--quiet", "--out", str(out / "charlm")]
    argv += SMOKE_CHARLM if smoke else []
    argv += ["--data", data] if data else []
    t0, started = time.perf_counter(), time.time()
    charlm.main(argv)
    result = json.loads((out / "charlm" / "results.json").read_text())
    result["process_wall_s"] = time.perf_counter() - t0
    _drop_plots(out / "charlm", started)
    # nanoGPT's shakespeare_char baseline: its results go into this part's (the 8 files stay 8)
    folder = out / "charlm" / "shakespeare_char"
    argv = ["--recipe", "shakespeare-char", "--quiet", "--overwrite", "--out", str(folder),
            *(SMOKE_SHAKESPEARE if smoke else SHAKESPEARE_GPU), *(["--data", data] if data else [])]
    t0 = time.perf_counter()
    charlm.main(argv)
    result["shakespeare_char"] = json.loads((folder / "results.json").read_text())
    result["shakespeare_char"]["process_wall_s"] = time.perf_counter() - t0
    shutil.rmtree(folder)   # its plot, checkpoints and best params: the report returns 8 files, one folder deep
    return result


# ---- the driver --------------------------------------------------------------------------------

def _write_json(path: Path, payload) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(common._plain(payload), indent=2, sort_keys=True))
    os.replace(tmp, path)


def _stream(cmd, limit_s, log=None, prefix=""):
    """Run cmd, echoing its output as it comes; kill it after limit_s. Returns (rc, seconds, timed_out).

    Reads whatever bytes are there rather than whole lines: pytest's progress dots end their
    line only at 100 %, and a blocking readline would hold the limit back until then."""
    import codecs
    import selectors
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
               PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline, timed_out, pending = t0 + limit_s, False, []      # pending: the unfinished line's pieces
    decoder = codecs.getincrementaldecoder("utf-8")("replace")   # a character may straddle two reads
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)

    def emit(text):
        if log is not None:
            log.write(text)
            log.flush()
        if "\n" not in text:       # no line ends here: keep the piece (a long line stays linear)
            pending.append(text)
            return
        *lines, rest = ("".join(pending) + text).split("\n")
        pending[:] = [rest]
        for line in lines:
            print(prefix + line, flush=True)

    def read(timeout) -> bool:
        """Echo what is there within timeout; False at the end of the output."""
        if not sel.select(timeout=timeout):
            return True
        chunk = os.read(proc.stdout.fileno(), 65536)
        if chunk:
            emit(decoder.decode(chunk))
        return bool(chunk)

    still_open = True
    while still_open:
        left = deadline - time.perf_counter()
        if left <= 0:
            timed_out = True
            proc.kill()
            break
        still_open = read(min(left, 1.0))
    if timed_out:   # what it printed before the kill is still in the pipe (bounded: a child's child may hold it)
        drain_until = time.perf_counter() + 2.0
        while still_open and time.perf_counter() < drain_until:
            still_open = read(0.1)
    emit(decoder.decode(b"", final=True))
    last = "".join(pending)
    if last:                   # its last line, without a newline
        print(prefix + last, flush=True)
    sel.close()
    try:            # its output closed is not its end: the limit holds until it exits
        rc = proc.wait(timeout=max(deadline - time.perf_counter(), 0) if not timed_out else None)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        rc = proc.wait()
    proc.stdout.close()
    return rc, time.perf_counter() - t0, timed_out


def run_part(name, out: Path, smoke: bool, data=None) -> dict:
    limit = (SMOKE_LIMIT_S if smoke else LIMIT_S)[name]
    print(f"\n==== {name} (limit {limit} s)", flush=True)
    if name == "tests":
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
               *(SMOKE_TESTS if smoke else GPU_TESTS)]
        with open(out / "tests.log", "w") as log:
            rc, secs, timed_out = _stream(cmd, limit, log, "[tests] ")
        tail = (out / "tests.log").read_text().strip().splitlines()
        return {"rc": rc, "seconds": secs, "timed_out": timed_out, "summary": tail[-1] if tail else "",
                "files": SMOKE_TESTS if smoke else GPU_TESTS}
    cmd = [sys.executable, "-m", "experiments.device_report", "--part", name, "--out", str(out)]
    cmd += ["--smoke"] if smoke else []
    cmd += ["--data", data] if data else []
    started = time.time()
    rc, secs, timed_out = _stream(cmd, limit, prefix=f"[{name}] ")
    result = {"rc": rc, "seconds": secs, "timed_out": timed_out}

    def written(path: Path) -> bool:    # by this part: an --overwrite'n folder holds the last run's files
        return path.exists() and path.stat().st_mtime >= started - 1.0

    part_file = out / f".{name}.json"
    if written(part_file):
        result["result"] = json.loads(part_file.read_text())
        part_file.unlink()
    elif name in BENCH_CELLS and written(out / name / "results.json"):   # cut short: its rows so far
        result["result"] = json.loads((out / name / "results.json").read_text())
        _drop_plots(out / name, started)
    elif name == "deer" and written(out / "deer.json"):
        result["result"] = json.loads((out / "deer.json").read_text())
    return result


def part_list(text: str) -> list[str]:
    """--parts: comma-separated names of PARTS, each once (argparse names the flag otherwise)."""
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise argparse.ArgumentTypeError(f"names no part ({text!r}); choose from {', '.join(PARTS)}")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {unknown} in {text!r}; choose from {', '.join(PARTS)}")
    if len(set(parts)) < len(parts):     # a second run would overwrite the first's row and files
        raise argparse.ArgumentTypeError(f"names a part twice ({text!r}): each runs once")
    return parts


def data_file(text: str) -> str:
    """--data: a file that is there now (the charlm part, last, would fail on it minutes later)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name a file, got {text!r}; leave --data out to use $JRNN_DATA_DIR")
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no file {text}")
    return os.path.abspath(text)      # the parts run from the repo root


def main(argv=None):
    ap = common.parser("device_report", __doc__, own_check=True)   # WRITES, refused below
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on any backend (the test suite's run)")
    ap.add_argument("--parts", type=part_list, default=",".join(PARTS),
                    help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--part", choices=PARTS, default=None, help=argparse.SUPPRESS)   # a part's own process
    ap.add_argument("--data", type=data_file, default=None,
                    help="path to tinyshakespeare.txt (else $JRNN_DATA_DIR or download)")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()       # the parts run from the repo root
    parts = args.parts
    if args.part is not None:   # inside a part's own process
        if args.part in BENCH_CELLS:
            result = part_bench(args.out, args.smoke, args.part)
        elif args.part == "charlm":
            result = part_charlm(args.out, args.smoke, args.data)
        else:
            result = {"env": part_env, "deer": part_deer}[args.part](args.out, args.smoke)
        _write_json(args.out / f".{args.part}.json", result)
        return result
    there = [rel for rel in WRITES if os.path.lexists(args.out / rel)]
    folders = [rel for rel in there if (args.out / rel).is_dir()]
    if folders:
        raise ValueError(f"--out {args.out} holds a folder where the report writes a file: {', '.join(folders)}")
    if there and not args.overwrite:   # another report's, or an experiment's run (--out runs: runs/bench/...)
        raise ValueError(f"--out {args.out} holds {', '.join(there)} already, which this run would replace: "
                         "pass --overwrite to replace them, or another --out")
    report = {"smoke": args.smoke, "parts": {},
              "command": "python -m experiments.device_report " + shlex.join(sys.argv[1:] if argv is None else argv)}
    t0 = time.perf_counter()
    for name in parts:
        report["parts"][name] = run_part(name, args.out, args.smoke, args.data)
        report["wall_s"] = time.perf_counter() - t0
        _write_json(args.out / "report.json", report)      # what is measured is kept, part by part
        (args.out / "report.md").write_text(device_markdown(report))
    print("\n" + device_markdown(report), flush=True)
    print(f"report: {args.out / 'report.md'} ({report['wall_s']:.0f} s)")
    return report


run = common.cli(main)

if __name__ == "__main__":
    run()
