"""Recurrent cells behind one interface, so every wrapper (stacks, directions, masks, models)
works with every cell. One module per cell: `jrnn.cells.lstm`, `jrnn.cells.gru`,
`jrnn.cells.elman`, each with its math, params type, init and its own whole-sequence loop.

A `Cell` is a NamedTuple of pure functions:

    init(key, input_size, hidden_size, dtype) -> params
    project(params, xs) -> us          # input projection of all T steps at once, before the scan
                                       # (token ids [T, ...] are a row gather, features a matmul)
    step(params, carry, u_t) -> (carry, h_t)   # one scan step
    zeros(params, batch_shape) -> carry

Gate layouts follow PyTorch so weights copy over by transposition:
  LSTM: columns [i | f | g | o] of w_i [D, 4H], w_h [H, 4H]; one bias b = b_ih + b_hh.
      i, f, o = sigmoid(.), g = tanh(.);  c' = f*c + i*g;  h' = o*tanh(c')
  GRU: columns [r | z | n] of w_i [D, 3H], w_h [H, 3H]; biases b_i, b_h kept apart because
      n = tanh(x W_in + b_in + r * (h W_hn + b_hn));  h' = (1 - z)*n + z*h
  Elman: (w_xh, w_hh, b_h), h' = act(x W_xh + h W_hh + b_h).

A custom cell is any `Cell(init, project, step, zeros)` with these shapes (give it a `name`, and
its params type as `params` for clear errors): pass it to `jrnn.model.make` or `jrnn.lm.model`
and every feature (masks, stacks, directions, TBPTT, remat, dropout, sampling) works with it.
"""

from __future__ import annotations

from jrnn.cells import common, elman, gru, lstm
from jrnn.cells.common import sigmoid
from jrnn.cells.elman import ElmanCellParams
from jrnn.cells.gru import GRU_LINEARIZATION, GRUParams
from jrnn.cells.lstm import LSTM_LINEARIZATION, LSTMParams, LSTMState
from jrnn.rnn import Cell

__all__ = [   # the public API, documented in the API reference
    "LSTM",
    "GRU",
    "ELMAN",
    "LSTMParams",
    "LSTMState",
    "GRUParams",
    "ElmanCellParams",
    "get",
    "sigmoid",
]

LSTM = lstm.LSTM
"""The LSTM cell (`jrnn.cells.lstm`): params `LSTMParams`, carry `LSTMState(h, c)` of [..., H] each,
output h [..., H]; forget-gate bias 1; its `scan` hoists the weight gradient (`jrnn.hoisted`)."""

GRU = gru.GRU
"""The GRU cell (`jrnn.cells.gru`, PyTorch's formulation): params `GRUParams`, carry and output
h [..., H]; its `scan` hoists the weight gradient (`jrnn.hoisted`)."""

ELMAN = elman.ELMAN
"""The tanh Elman cell (`jrnn.cells.elman`): params `ElmanCellParams` (or the flat `ElmanParams`),
carry and output h [..., H] (`jrnn.cells.elman.cell(activation)` for relu or sigmoid)."""

CELLS = {"elman": ELMAN, "lstm": LSTM, "gru": GRU}
"""The built-in cells by name."""


def get(cell) -> Cell:
    """A Cell from its name ("elman", "lstm", "gru") or a Cell itself."""
    if isinstance(cell, Cell):
        return cell
    if not isinstance(cell, str):   # an unhashable one would otherwise fail in the dict lookup
        raise TypeError(f"cell must be a name, one of {tuple(CELLS)}, or a jrnn.rnn.Cell, got {type(cell).__name__}")
    try:
        return CELLS[cell]
    except KeyError:
        raise ValueError(f"unknown cell {cell!r}; choose one of {tuple(CELLS)} or pass a jrnn.cells.Cell") from None
