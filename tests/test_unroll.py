"""`unroll=None` (every default) picks the loop unroll by backend; an explicit value wins."""

import jax
import jrnn
import jax.numpy as jnp
import numpy as np
import pytest

from jrnn import cells, elman, lm, rnn, tbptt
from jrnn.testing import assert_trees_close

T, B, V, H = 11, 2, 6, 4


@pytest.fixture
def as_gpu(monkeypatch):
    """Make jrnn read "gpu" as the backend (the program still lowers and runs on the CPU)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


def test_default_unroll_is_1_on_cpu_8_on_gpu_and_never_more_than_t(as_gpu, monkeypatch):
    assert rnn.default_unroll() == 8 and rnn.default_unroll(1000) == 8 and rnn.default_unroll(3) == 3
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert rnn.default_unroll() == 1 and rnn.default_unroll(1000) == 1


def test_explicit_unroll_wins_and_bad_values_are_refused(as_gpu):
    assert rnn.resolve_unroll(2, 100) == 2 and rnn.resolve_unroll(np.int64(3), 100) == 3
    assert rnn.resolve_unroll(True, 100) is True and rnn.resolve_unroll(None, 100) == 8
    for bad, error in ((0, ValueError), (-1, ValueError), (2.0, TypeError), ("8", TypeError), (False, TypeError)):
        with pytest.raises(error, match="unroll"):
            rnn.resolve_unroll(bad, 100)
    x = jnp.zeros((T, B), jnp.int32)
    p = elman.init(jax.random.key(0), vocab_size=V, hidden_size=H)
    with pytest.raises(ValueError, match="unroll"):
        elman.apply(p, x, unroll=0)


def _entry_points():
    """(name, f(unroll) -> output) for every public function that takes `unroll`."""
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randint(0, V, (T, B)))
    feats = jnp.asarray(rng.randn(T, B, H))
    p = elman.init(jax.random.key(0), vocab_size=V, hidden_size=H, dtype=jnp.float64)
    lm_model = lm.model("lstm", vocab_size=V, hidden_size=H, layers=2)
    lp = lm_model.init(jax.random.key(1), jnp.float64)
    gp = cells.GRU.init(jax.random.key(2), H, H, jnp.float64)
    h0 = jnp.zeros((B, H))
    return [
        ("rnn.scan", lambda u: rnn.scan(elman.step, p, h0, elman.project(p, x), unroll=u)),
        ("rnn.run", lambda u: rnn.run(cells.GRU, gp, feats, unroll=u)),
        ("rnn.run remat", lambda u: rnn.run(cells.GRU, gp, feats, grad=jrnn.Remat(), unroll=u)),
        ("rnn.stack", lambda u: rnn.stack(cells.LSTM, lp.layers, x, unroll=u)),
        ("rnn.bidirectional", lambda u: rnn.bidirectional(cells.GRU, gp, gp, feats, unroll=u)),
        ("elman.hidden", lambda u: elman.hidden(p, x, unroll=u)),
        ("elman.apply", lambda u: elman.apply(p, x, unroll=u)),
        ("elman.sequence_loss", lambda u: elman.sequence_loss(p, x, x, unroll=u)),
        ("elman.sequence_loss remat", lambda u: elman.sequence_loss(p, x, x, grad=jrnn.Remat(), unroll=u)),
        ("cells.elman.recurrence", lambda u: cells.elman.recurrence(p.w_hh, elman.project(p, x), h0, unroll=u)),
        ("model.apply", lambda u: lm_model.apply(lp, x, unroll=u)),
        ("model.loss remat", lambda u: lm_model.loss(lp, x, x, grad=jrnn.Remat(), unroll=u)),
        ("model.loss tbptt", lambda u: lm_model.loss(lp, x, x, grad=jrnn.TBPTT(2, 5), unroll=u)),
    ]


def _program(f, unroll):
    """The lowered program, its integer scalar constants masked: with the id checks
    (`jrnn.checks`, `checkify.debug_check`) two traces of the same function differ in a few such
    constants (measured: 1 vs 3, 2 vs 4), while the loop bodies an unroll changes do not."""
    import re
    text = jax.jit(lambda: f(unroll)).lower().as_text()
    return re.sub(r"dense<-?\d+> : tensor<i(32|64)>", "dense<N> : tensor<i>", text)


@pytest.mark.parametrize("name", [n for n, _ in _entry_points()])
def test_default_unroll_reaches_the_loop_on_each_backend(name, as_gpu, monkeypatch):
    """Omitting `unroll` lowers to the same program as unroll=8 when the backend is a GPU and
    unroll=1 on the CPU; and the two differ, so the check can fail."""
    f = dict(_entry_points())[name]
    gpu_default, gpu_8, one = _program(f, None), _program(f, 8), _program(f, 1)
    assert gpu_default == gpu_8 != one
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert _program(f, None) == one


# default suite: one entry point of each kind (plain scan, Elman's custom-JVP scan, remat,
# truncation); the full suite runs all of them
UNROLL_RESULTS_FAST = {"rnn.run", "elman.hidden", "elman.sequence_loss remat", "model.loss tbptt"}


@pytest.mark.parametrize("name", [n if n in UNROLL_RESULTS_FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n, _ in _entry_points()])
def test_results_do_not_depend_on_unroll(name, as_gpu):
    """Values and gradients are the same whatever unroll (x64): the default (8 here), 3
    (which does not divide T = 11) and 1."""
    f = dict(_entry_points())[name]

    def both(u):  # one compiled program per unroll: value and gradient
        return jax.jit(lambda: (f(u), jax.grad(lambda s: jnp.sum(jax.tree.leaves(f(u))[0] * s))(1.0)))()

    base = both(1)
    for u in (None, 3):
        assert_trees_close(both(u), base, rtol=1e-12)
