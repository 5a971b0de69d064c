"""A language model from any cell: token ids -> stacked cells -> linear readout.

`model(cell, vocab_size=..., hidden_size=..., layers=...)` is a `jrnn.model.Model` with
D = V = vocab_size; everything else (init, apply, losses with masks, TBPTT and remat, carries,
sampling through `jrnn.generate`) is the model's. Layer 0's input matrix doubles as the
embedding (token ids gather its rows).

Examples:
  >>> gru = jrnn.lm.model("gru", vocab_size=65, hidden_size=256, layers=2)
  >>> params = gru.init(jax.random.key(0))
  >>> loss, carry = gru.loss(params, x, y, gru.zeros(params, (B,)), compute_dtype=jnp.bfloat16)
"""

from __future__ import annotations

from jrnn import cells, checks, model as model_lib
from jrnn.model import Params as LMParams, param_count  # noqa: F401  (re-exported)

__all__ = [   # the public API, documented in the API reference
    "model",
]


def model(cell="lstm", *, vocab_size: int, hidden_size: int, layers: int = 1,
          bidirectional: bool = False) -> model_lib.Model:
    """A `layers`-deep language model of `cell` ("elman", "lstm", "gru" or a `jrnn.rnn.Cell`).

    `bidirectional=True` is refused: a language model predicts token t+1 from tokens <= t, and
    a backward direction would read token t+1 itself (the loss would fall by copying, and
    sampling needs a per-step model). A bidirectional tagger over a vocabulary is
    `jrnn.model.make(cells.get(cell), ..., bidirectional=True)`.
    """
    if checks.boolean("bidirectional", bidirectional):
        raise ValueError("a language model cannot be bidirectional: it predicts token t+1 from tokens <= t, "
                         "and the backward direction would read token t+1 itself; for tagging (one label per "
                         "token) use jrnn.model.make(jrnn.cells.get(cell), ..., bidirectional=True)")
    return model_lib.make(cells.get(cell), input_size=vocab_size, hidden_size=hidden_size,
                          output_size=vocab_size, layers=layers)
