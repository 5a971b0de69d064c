"""jrnn: purely functional recurrent neural networks in JAX.

Parameters are plain pytrees (NamedTuples of arrays); every model is a pair of pure functions
(`init`, `apply`/`step`); the forward pass is one `jax.lax.scan`; gradients are proven equal to a
hand-written float64 BPTT reference (`jrnn.bptt`).

Shape letters, used in every docstring and comment of the package:

    T  time steps          B  batch (sequences)      D  input features
    H  hidden units        V  vocabulary / classes   K  chunks (stacked batches)

One layout rule: sequences are time-major, `[T, B, ...]` (what `lax.scan` iterates over, and
PyTorch's `nn.RNN` default); every entry point that takes sequences also takes `time_major=False`
for batch-first `[B, T, ...]` data and then returns batch-first sequences.

Gradient strategies are values passed as `grad=`: `FullBPTT()` (the default), `Remat()`,
`TBPTT(k1, k2)` and `Parallel(method, tol=, max_iters=, lam=)`.
"""

from jrnn import (bptt, cells, checkpoint, data, distributed, elman, initializers, interop, lm, losses, model, optim,
                  parallel, rnn, sample, tbptt, testing, train)
from jrnn import crossovers  # noqa: F401  (the measured table jrnn.Auto reads)
from jrnn.elman import ElmanParams
from jrnn.model import Model, Params
from jrnn.parallel import Auto, Parallel
from jrnn.rnn import FullBPTT, Remat
from jrnn.tbptt import TBPTT
from jrnn.sample import generate
from jrnn.train import make_step, make_multi_step

__all__ = [
    "Auto",
    "ElmanParams",
    "FullBPTT",
    "Parallel",
    "Remat",
    "TBPTT",
    "bptt",
    "cells",
    "checkpoint",
    "data",
    "distributed",
    "elman",
    "generate",
    "initializers",
    "interop",
    "lm",
    "losses",
    "make_multi_step",
    "make_step",
    "model",
    "Model",
    "Params",
    "optim",
    "parallel",
    "rnn",
    "sample",
    "tbptt",
    "testing",
    "train",
]

__version__ = "0.1.0"
