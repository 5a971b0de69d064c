"""Range checks of token ids and labels that also hold inside jrnn's jitted training steps.

Eager calls check concrete ids on the host (`jrnn.rnn.check_input_array`,
`jrnn.losses._check_labels`). Under `jit` the values are unknown while tracing, and JAX's gather
would not fail: `jnp.take` reads id -1 as V-1 and an id >= V as NaN. So a traced id array gets a
`checkify.debug_check` instead: it costs nothing (it is dropped) in a plain `jax.jit`, and is
live inside a `checkify`-ed function, which `jrnn.train.make_step` and friends are by default;
they raise the check's error after the call, naming the range and the offending min/max.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import checkify


def traced_ids_in_range(ids, n: int, what: str) -> None:
    """Under a trace, add a check that every integer in `ids` lies in [0, n); no-op otherwise."""
    if not isinstance(ids, jax.core.Tracer) or ids.size == 0:
        return
    lo, hi = jnp.min(ids), jnp.max(ids)
    checkify.debug_check((lo >= 0) & (hi < n), f"{what} must lie in [0, {n}), got min {{lo}}, max {{hi}}",
                         lo=lo, hi=hi)
