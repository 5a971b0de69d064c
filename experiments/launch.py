"""Start N processes of an experiment on this machine, as one jax.distributed run.

    python -m experiments.launch -n 2 -- charlm --full --epochs 1

runs `python -m experiments.charlm --full --epochs 1 --coordinator 127.0.0.1:<free port>
--num-processes 2 --process-id <i>` for i = 0..N-1, each with its own CPU devices
(--cpu-devices, default: this machine's cores shared out), prints their output prefixed with
`[i]`, and exits with the first failure's code after stopping the others (SIGTERM, then
SIGKILL), so a dead process never leaves the rest waiting. For several machines use the
cluster's launcher (SLURM's srun, mpirun) instead: the experiments read the tasks from it.

Before starting anything it refuses what would fail or destroy: an experiment that does not
run as several processes (only those with `--coordinator`: charlm), a --port already in use,
and an --out (the experiment's; default runs/<experiment>) that holds an earlier run's
results.json, which this run would replace: pass --overwrite (before --; the launcher passes it
on as the experiment's --overwrite) to replace it, or another --out (the experiment's own
--overwrite or --resume count as asking to replace it too). Each process then checks its --out
in full (`common.earlier_run`: its plots too) before it joins the others.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# flags the launcher gives every process itself
OWNED = ("--coordinator", "--num-processes", "--process-id")
# -n and --cpu-devices: processes on this one machine (each a Python process with its own JAX
# runtime), and host devices XLA creates per process
MAX_PROCESSES = max(64, os.cpu_count() or 1)
MAX_CPU_DEVICES = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pump(i: int, stream, lock):
    for line in stream:
        with lock:
            sys.stdout.write(f"[{i}] {line}" if line.endswith("\n") else f"[{i}] {line}\n")
            sys.stdout.flush()


def _stop(procs, grace: float = 5.0):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        if p.poll() is None:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def launch(n: int, experiment: str, args: list[str], cpu_devices: int | None = None, port: int | None = None) -> int:
    """Run the processes; return 0 if all succeed, else the first failure's exit code."""
    port = port or free_port()
    cpu_devices = cpu_devices or max(1, (os.cpu_count() or 1) // n)
    env = dict(os.environ)
    # each process its own CPU devices (XLA reads this once, at start-up); replaces a device count set earlier
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={cpu_devices}"])
    env["PYTHONUNBUFFERED"] = "1"
    lock = threading.Lock()
    procs, pumps = [], []
    try:
        for i in range(n):
            cmd = [sys.executable, "-m", f"experiments.{experiment}", *args, "--coordinator", f"127.0.0.1:{port}",
                   "--num-processes", str(n), "--process-id", str(i)]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            with lock:
                print(f"[launch] process {i}: pid {procs[-1].pid}", file=sys.stderr, flush=True)
            pumps.append(threading.Thread(target=_pump, args=(i, procs[-1].stdout, lock), daemon=True))
            pumps[-1].start()
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                # a process killed by a signal is the cause; the others' errors (a peer's closed
                # connection) follow from it and may be seen in the same poll
                i, c = min(failed, key=lambda f: (f[1] >= 0, f[0]))
                how = f"was killed by signal {-c}" if c < 0 else f"exited with code {c}"
                with lock:
                    print(f"[launch] process {i} {how}; stopping the others", file=sys.stderr, flush=True)
                _stop(procs)
                return 128 - c if c < 0 else c
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.1)
    except BaseException:
        _stop(procs)
        raise
    finally:
        for t in pumps:
            t.join(timeout=2)


def _count(limit: int, why: str):
    """-n, --cpu-devices: an integer in [1, limit] (argparse names the flag and exits 2 otherwise)."""
    def count(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
        if v > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit} ({why}), got {v}")
        return v
    return count


def _port(text: str) -> int:
    """--port: a TCP port, 1..65535."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in [1, 65535], got {v}")
    with socket.socket() as s:   # the coordinator binds it on all interfaces: a port in use fails every process
        try:
            s.bind(("", v))
        except OSError as e:
            raise argparse.ArgumentTypeError(f"port {v} cannot be used here ({e.strerror or e}): pass "
                                             "another, or leave --port out for a free one") from None
    return v


def distributed_experiments() -> list[str]:
    """The experiments that run as several processes: those whose parser takes --coordinator
    (common.distributed_flags)."""
    here = Path(__file__).resolve()
    return sorted(f.stem for f in here.parent.glob("*.py")
                  if f != here and re.search(r"^\s+common\.distributed_flags\(", f.read_text(encoding="utf-8"), re.M))


def _owned(arg: str) -> bool:
    """`arg` is (an abbreviation of) a flag the launcher sets, alone or as --flag=value."""
    name = arg.split("=", 1)[0]
    return name.startswith("--") and len(name) > 2 and any(f.startswith(name) for f in OWNED)


class _Silent(argparse.ArgumentParser):
    """A parser whose errors raise (ValueError) instead of printing usage and exiting."""
    def error(self, message):
        raise ValueError(message)


def experiment_out(name: str, args: list[str]) -> tuple[Path | None, bool]:
    """(the experiment's --out folder, whether the flags ask to replace or continue the run there).
    None: the flags do not parse here (the experiment's own parser then says why, before any work)."""
    p = _Silent(add_help=False)
    p.add_argument("--out", default=str(Path("runs") / name))   # common.parser's default
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--resume", action="store_true")
    try:
        known, _ = p.parse_known_args(args)
    except (argparse.ArgumentError, ValueError):
        return None, False
    return Path(known.out), known.overwrite or known.resume


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--num-processes", type=_count(MAX_PROCESSES, "processes on this one machine; for more "
                                                         "use the cluster's launcher"), required=True,
                    help="processes to start")
    ap.add_argument("--cpu-devices", type=_count(MAX_CPU_DEVICES, "host devices XLA creates per process"),
                    default=None, help="CPU devices per process (default: cores / N)")
    ap.add_argument("--port", type=_port, default=None, help="coordinator port (default: a free one)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the run in the experiment's --out (passed on as the experiment's --overwrite)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- <experiment> [its flags]")
    a = ap.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("name an experiment after --, e.g. -- charlm --full")
    if any(_owned(arg) for arg in command[1:]):
        ap.error("the launcher sets --coordinator, --num-processes and --process-id itself")
    name = command[0].removeprefix("experiments.")
    if not name.isidentifier() or importlib.util.find_spec(f"experiments.{name}") is None:
        ap.error(f"no experiment {command[0]!r}: name one of experiments/, e.g. -- charlm --full")
    several = distributed_experiments()
    if name not in several:
        ap.error(f"experiments.{name} does not run as several processes (it takes no --coordinator); "
                 f"these do: {', '.join(several)}")
    out, replaces = experiment_out(name, command[1:])
    if out is not None and out.exists() and not out.is_dir():
        ap.error(f"--out {out} (the experiment's) exists and is not a folder")
    if out is not None and (out / "results.json").exists() and not (a.overwrite or replaces):
        ap.error(f"--out {out} (the experiment's) holds results.json of an earlier run, which this run would "
                 "replace: pass --overwrite before -- to replace it, or another --out")
    # the experiment refuses the folder itself unless told: the launcher's --overwrite is its --overwrite
    forward = ["--overwrite"] if a.overwrite and not replaces else []
    return launch(a.num_processes, name, command[1:] + forward, a.cpu_devices, a.port)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children on the way out
    sys.exit(main())
