"""jrnn: purely functional recurrent neural networks in JAX.

Parameters are plain pytrees (NamedTuples of arrays); every model is a pair of pure functions
(`init`, `apply`/`step`); the forward pass is one `jax.lax.scan`; gradients are proven equal to a
hand-written float64 BPTT reference (`jrnn.bptt`).

Shape letters, used in every docstring and comment of the package:

    T  time steps          B  batch (sequences)      D  input features
    H  hidden units        V  vocabulary / classes   K  chunks (stacked batches)

Time-major `[T, B, ...]` is the internal layout (it is what `lax.scan` iterates over);
`*_batch` entry points take batch-major `[B, T, ...]` as users usually hold data.
"""

from jrnn import bptt, cells, checkpoint, data, distributed, elman, initializers, lm, losses, model, optim, parallel, rnn, sample, tbptt, testing, train
from jrnn.elman import ElmanParams
from jrnn.model import Model, Params
from jrnn.sample import generate
from jrnn.train import make_step, make_multi_step

__all__ = [
    "ElmanParams",
    "bptt",
    "cells",
    "checkpoint",
    "data",
    "distributed",
    "elman",
    "generate",
    "initializers",
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
