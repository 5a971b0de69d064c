"""Start N processes of an experiment on this machine, as one jax.distributed run.

    python -m experiments.launch -n 2 -- charlm --full --epochs 1

runs `python -m experiments.charlm --full --epochs 1 --coordinator 127.0.0.1:<free port>
--num-processes 2 --process-id <i>` for i = 0..N-1, each with its own CPU devices
(--cpu-devices, default: this machine's cores shared out), prints their output prefixed with
`[i]`, and exits with the first failure's code after stopping the others (SIGTERM, then
SIGKILL), so a dead process never leaves the rest waiting. For several machines use the
cluster's launcher (SLURM's srun, mpirun) instead: the experiments read the tasks from it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time


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
                i, c = failed[0]
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


def _count(text: str) -> int:
    """-n, --cpu-devices: a positive integer (argparse names the flag and exits 2 otherwise)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _port(text: str) -> int:
    """--port: a TCP port, 1..65535."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in [1, 65535], got {v}")
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--num-processes", type=_count, required=True, help="processes to start")
    ap.add_argument("--cpu-devices", type=_count, default=None, help="CPU devices per process (default: cores / N)")
    ap.add_argument("--port", type=_port, default=None, help="coordinator port (default: a free one)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- <experiment> [its flags]")
    a = ap.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("name an experiment after --, e.g. -- charlm --full")
    if any(f in command for f in ("--coordinator", "--num-processes", "--process-id")):
        ap.error("the launcher sets --coordinator, --num-processes and --process-id itself")
    name = command[0].removeprefix("experiments.")
    if not name.isidentifier() or importlib.util.find_spec(f"experiments.{name}") is None:
        ap.error(f"no experiment {command[0]!r}: name one of experiments/, e.g. -- charlm --full")
    return launch(a.num_processes, name, command[1:], a.cpu_devices, a.port)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children on the way out
    sys.exit(main())
