"""A language model from any cell: token ids -> stacked cells -> linear readout.

`jrnn.elman` is the single-layer Elman LM of the seeds; this module is the general one
(LSTM, GRU, Elman; any depth; dropout between layers; a compute dtype separate from the
parameter dtype, as Flax's `dtype` / `param_dtype`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jrnn import cells, elman, losses, rnn


class LMParams(NamedTuple):
    """Stacked cells and readout."""
    layers: tuple    # one cell params pytree per layer; layer 0 reads token ids
    w_hy: jax.Array  # [H, V]
    b_y: jax.Array   # [V]


def init(key, *, cell: str = "lstm", vocab_size: int, hidden_size: int, layers: int = 1,
         dtype=jnp.float32) -> LMParams:
    """Parameters of a `layers`-deep `cell` LM (layer 0's input matrix doubles as embedding)."""
    c = cells.get(cell)
    V = elman._positive_int("vocab_size", vocab_size)
    H = elman._positive_int("hidden_size", hidden_size)
    L = elman._positive_int("layers", layers)
    keys = jax.random.split(key, L + 1)
    stack = tuple(c.init(keys[i], V if i == 0 else H, H, dtype) for i in range(L))
    w_hy = jax.nn.initializers.glorot_uniform()(keys[-1], (H, V), dtype)
    return LMParams(stack, w_hy, jnp.zeros((V,), dtype))


def param_count(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def apply(params: LMParams, tokens, carries=None, *, cell: str = "lstm", mask=None, dropout: float = 0.0,
          key=None, compute_dtype=None, unroll: int | None = None):
    """Logits `[T, ..., V]` and the carries of every layer.

    compute_dtype: e.g. jnp.bfloat16 runs the cells and readout in that dtype while the
    parameters (and so the optimizer) stay in their own dtype; logits come back as float32.
    """
    c = cells.get(cell)
    elman.check_input_array(params.layers[0][0].shape[0], tokens)  # layer 0's w_i / w_xh: [V, G*H]
    p = params if compute_dtype is None else jax.tree.map(lambda a: a.astype(compute_dtype), params)
    hs, carries = rnn.stack(c, p.layers, tokens, carries, mask=mask, dropout=dropout, key=key, unroll=unroll)
    logits = hs @ p.w_hy + p.b_y.reshape((1,) * (hs.ndim - 1) + p.b_y.shape)
    return logits.astype(jnp.float32) if compute_dtype is not None else logits, carries


def sequence_loss(params: LMParams, tokens, targets, carries=None, *, cell: str = "lstm", mask=None,
                  reduction: str = "mean", **kw):
    """Cross-entropy of next-token prediction: (loss, carries)."""
    logits, carries = apply(params, tokens, carries, cell=cell, mask=mask, **kw)
    return losses.softmax_cross_entropy(logits, targets, mask=mask, reduction=reduction), carries


def zeros(params: LMParams, batch_shape=(), *, cell: str = "lstm") -> tuple:
    """Zero carries of every layer, `[*batch_shape, H]` each."""
    c = cells.get(cell)
    return tuple(c.zeros(p, batch_shape) for p in params.layers)
