"""Recurrent cells behind one interface, so every wrapper (stacks, directions, masks, models)
works with every cell. One module per cell: `jrnn.cells.lstm`, `jrnn.cells.gru`,
`jrnn.cells.elman`, each with its math, params type, init and its own whole-sequence loop; and
the cells whose state Jacobian is structured, for parallel-in-time training (`jrnn.Parallel`):
`jrnn.cells.paragru` and `jrnn.cells.paralstm` (elementwise recurrence, ParaRNN's ParaGRU and
ParaLSTM) and `jrnn.cells.mingru` (linear in h: one associative scan).

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
  ParaGRU: the GRU with vectors u_h [3H] for w_h (u_r * h, not h W_hr): diagonal Jacobian.
  ParaLSTM: columns [f | g | o], i = 1 - f, peepholes p [2H], elementwise recurrence u_h [3H].
  minGRU: columns [z | h~] of w_i [D, 2H]; h' = (1 - z)*h + z*h~, no recurrent weights.

A custom cell is any `Cell(init, project, step, zeros)` with these shapes (give it a `name`, and
its params type as `params` for clear errors): pass it to `jrnn.model.make` or `jrnn.lm.model`
and every feature (masks, stacks, directions, TBPTT, remat, dropout, sampling) works with it.
"""

from __future__ import annotations

from jrnn.cells import common, elman, gru, lstm, mingru, paragru, paralstm
from jrnn.cells.common import sigmoid
from jrnn.cells.elman import ElmanCellParams
from jrnn.cells.gru import GRU_LINEARIZATION, GRUParams
from jrnn.cells.lstm import LSTM_LINEARIZATION, LSTMParams, LSTMState
from jrnn.cells.mingru import MinGRUParams
from jrnn.cells.paragru import ParaGRUParams
from jrnn.cells.paralstm import ParaLSTMParams, ParaLSTMState
from jrnn.rnn import Cell

__all__ = [   # the public API, documented in the API reference
    "LSTM",
    "GRU",
    "ELMAN",
    "LSTMParams",
    "LSTMState",
    "GRUParams",
    "ElmanCellParams",
    "PARAGRU",
    "PARALSTM",
    "MINGRU",
    "ParaGRUParams",
    "ParaLSTMParams",
    "ParaLSTMState",
    "MinGRUParams",
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

PARAGRU = paragru.PARAGRU
"""The ParaGRU cell (`jrnn.cells.paragru`): the GRU with elementwise recurrence, params
`ParaGRUParams`, carry and output h [..., H]; diagonal state Jacobian (`jacobian=1`)."""

PARALSTM = paralstm.PARALSTM
"""The ParaLSTM cell (`jrnn.cells.paralstm`): a coupled-input-forget-gate LSTM with peepholes and
elementwise recurrence, params `ParaLSTMParams`, carry `ParaLSTMState(h, c)` of [..., H] each,
output h [..., H]; 2 x 2 block-diagonal state Jacobian with diagonal blocks (`jacobian=2`)."""

MINGRU = mingru.MINGRU
"""The minGRU cell (`jrnn.cells.mingru`): linear in h, params `MinGRUParams`, carry and output h
[..., H]; its `scan` is one associative scan (`jacobian=1`)."""

CELLS = {"elman": ELMAN, "lstm": LSTM, "gru": GRU, "paragru": PARAGRU, "paralstm": PARALSTM, "mingru": MINGRU}
"""The built-in cells by name."""


def get(cell) -> Cell:
    """A Cell from its name ("elman", "lstm", "gru", "paragru", "paralstm", "mingru") or a Cell itself."""
    if isinstance(cell, Cell):
        return cell
    if not isinstance(cell, str):   # an unhashable one would otherwise fail in the dict lookup
        raise TypeError(f"cell must be a name, one of {tuple(CELLS)}, or a jrnn.rnn.Cell, got {type(cell).__name__}")
    try:
        return CELLS[cell]
    except KeyError:
        raise ValueError(f"unknown cell {cell!r}; choose one of {tuple(CELLS)} or pass a jrnn.cells.Cell") from None
