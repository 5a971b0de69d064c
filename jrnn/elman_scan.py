"""Deprecated: the Elman cell's hoisted recurrence is `jrnn.cells.elman` now
(`jrnn.cells.elman.recurrence` was `run`, `jrnn.cells.elman.linearization` is `linearization`).
These names still work for one release, with a DeprecationWarning.
"""

from __future__ import annotations

import warnings

from jrnn.cells import elman as elman_cell

__all__ = [   # the public API, documented in the API reference
    "run",
    "linearization",
]

ACTIVATIONS = elman_cell.ACTIVATIONS


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"jrnn.elman_scan.{old} is deprecated; use jrnn.cells.elman.{new} (same arguments)",
                  DeprecationWarning, stacklevel=3)


def run(w_hh, us, h0, *, mask=None, activation: str = "tanh", reverse: bool = False, unroll: int | None = None):
    """Deprecated: `jrnn.cells.elman.recurrence`, (hs `[T, ..., H]`, h_T `[..., H]`) for
    w_hh `[H, H]`, projected inputs us `[T, ..., H]` and h0 `[..., H]`."""
    _deprecated("run", "recurrence")
    return elman_cell.recurrence(w_hh, us, h0, mask=mask, activation=activation, reverse=reverse, unroll=unroll)


def linearization(activation: str):
    """Deprecated: `jrnn.cells.elman.linearization`, the Elman step for `jrnn.hoisted`."""
    _deprecated("linearization", "linearization")
    return elman_cell.linearization(activation)
