"""Runnable experiments: `python -m experiments.<name> --help`."""

import os
import sys


def one_cpu_device_per_core():
    """Ask XLA for one CPU device per core, so work split over devices runs on every core.

    XLA reads the flag once, when jax starts: call this before the first `import jax`. A process
    that imported jax already (the test suite), or whose XLA_FLAGS set a device count, keeps
    what it has. It does not change GPU devices.
    """
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={os.cpu_count() or 1}").strip()
