"""A language model from any cell: token ids -> stacked cells -> linear readout.

`model(cell, vocab_size=..., hidden_size=..., layers=...)` is a `jrnn.model.Model` with
D = V = vocab_size; everything else (init, apply, losses with masks, TBPTT and remat, carries,
sampling through `jrnn.generate`) is the model's. Layer 0's input matrix doubles as the
embedding (token ids gather its rows).

Example:
  >>> gru = jrnn.lm.model("gru", vocab_size=65, hidden_size=256, layers=2)
  >>> params = gru.init(jax.random.key(0))
  >>> loss, carry = gru.loss(params, x, y, gru.zeros(params, (B,)), compute_dtype=jnp.bfloat16)
"""

from __future__ import annotations

from jrnn import cells, model as model_lib
from jrnn.model import Params as LMParams, param_count  # noqa: F401  (re-exported)


def model(cell="lstm", *, vocab_size: int, hidden_size: int, layers: int = 1) -> model_lib.Model:
    """A `layers`-deep language model of `cell` ("elman", "lstm", "gru" or a `jrnn.rnn.Cell`)."""
    return model_lib.make(cells.get(cell), input_size=vocab_size, hidden_size=hidden_size,
                          output_size=vocab_size, layers=layers)
