"""Strict test environment: float64 for the gradient proofs, rank promotion raises, warnings
are errors (pyproject), as Equinox's conftest does."""

import atexit
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
# Many tests compile the same program again (same sizes, a new closure): a persistent compilation
# cache for this session compiles each once (the default suite, same selection, 2-core CPU: 285
# and 308 s in two runs without it, 256 s in one run with it).
# It lives in a fresh folder, removed at exit, so no run reads another's executables.
_XLA_CACHE = tempfile.mkdtemp(prefix="jrnn-tests-xla-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture
def rng():
    return np.random.RandomState(0)


@pytest.fixture
def data_dir(monkeypatch):
    """$JRNN_DATA_DIR for tests that need a real corpus (CI sets it to ../shared/data)."""
    d = os.environ.get("JRNN_DATA_DIR") or SHARED_DATA
    if not os.path.isfile(os.path.join(d, "tinyshakespeare.txt")):
        pytest.skip("no corpus: set JRNN_DATA_DIR to a folder with tinyshakespeare.txt and kafka.txt")
    monkeypatch.setenv("JRNN_DATA_DIR", os.path.abspath(d))
    return os.path.abspath(d)


@pytest.fixture
def backend_compiles():
    """A list that collects one entry per XLA backend compile while the test runs.

    Counting compiles says "no recompilation" directly; a jitted function's `_cache_size()` can
    read 0 after a long test session (seen in the full suite) even though it was just called."""
    from jax._src import dispatch   # the event name only: jax.monitoring is the public hook
    seen = []

    def listener(event, duration_secs, **kw):
        if event == dispatch.BACKEND_COMPILE_EVENT:
            seen.append(duration_secs)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listener)
