"""Jitted generation from any language model (`jrnn.model.Model` with D = V), as min-char-rnn's
`sample`, with jax.random: one `generate` for every cell and depth."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import checks, model as model_lib

__all__ = [   # the public API, documented in the API reference
    "generate",
]


@functools.partial(jax.jit, static_argnames=("model", "n"))
def _generate(model, params, key, prime, carry, temperature, *, n):
    logits, carry = model_lib.apply(model, params, prime, carry)       # read the prime

    def body(state, k):
        carry, last = state
        scaled = last / temperature
        # temperature -> 0 is greedy decoding; where logits / temperature overflow (a tiny
        # temperature), the limit itself is taken: the argmax
        tok = jnp.where(jnp.all(jnp.isfinite(scaled)), jax.random.categorical(k, scaled), jnp.argmax(last))
        carry, logits = model_lib.step(model, params, carry, tok)      # x_{t+1} ~ p(. | h_t) fed back
        return (carry, logits), tok

    (carry, _), toks = jax.lax.scan(body, (carry, logits[-1]), jax.random.split(key, n))
    return toks, carry


def _temperature(temperature) -> float:
    """A positive finite number as a Python float (`jrnn.checks.real`'s rule: Python and numpy
    numbers, concrete 0-d arrays of a real dtype); a TypeError or ValueError naming it otherwise."""
    if isinstance(temperature, jax.core.Tracer):   # checks.real refuses it too; this names the fix
        raise TypeError("temperature must be a concrete number, got a traced value: generate compiles its own "
                        "sampling loop, call it outside jax.jit")
    return checks.real("temperature", temperature, minimum=0, strict=True)


def generate(model, params, key, prime, n: int, *, temperature: float = 1.0, carry=None):
    """Sample n token ids after reading `prime`.

    Args:
      model: a `jrnn.model.Model` whose input and output vocabularies agree (e.g.
        `jrnn.lm.model(...)`, `jrnn.elman.model(vocab_size=...)`).
      params: its params (for the Elman model, the seeds' `ElmanParams` too).
      key: one PRNG key (`jax.random.key(seed)` or a legacy `PRNGKey`); the same key gives
        the same sample.
      prime: token ids `[P]`, P >= 1 (min-char-rnn primes with one char).
      n: number of tokens to generate.
      temperature: logits are divided by it (< 1 sharper, > 1 flatter); a positive finite
        number (numpy scalars and concrete 0-d arrays too). As it goes to 0 sampling becomes
        greedy; a temperature so small that logits / temperature is not finite in the params'
        dtype is greedy decoding (argmax) exactly.
      carry: the model's carry before the prime (zeros if None; see `jrnn.model.zeros`).

    Returns:
      (ids `[n]` int32, final carry).
    """
    n = checks.integer("n", n)
    key = checks.prng_key("key", key)
    temperature = _temperature(temperature)
    model_lib.check_causal(model, "generate (sampling feeds each token back)")
    layers = model_lib.layer_params(model, params)
    if model.input_size != model.output_size:
        raise ValueError(f"sampling feeds outputs back as inputs: needs input_size == output_size, got "
                         f"{model.input_size} != {model.output_size}")
    prime = np.asarray(prime)
    if prime.ndim != 1 or prime.size == 0 or not np.issubdtype(prime.dtype, np.integer):
        raise ValueError(f"prime must be a non-empty 1-D array of token ids, got shape {prime.shape}, dtype {prime.dtype}")
    model_lib.rnn.check_input_array(model.input_size, prime)
    carry = model_lib.carries(model, layers, (), carry)
    temp = jnp.asarray(temperature, jnp.result_type(params.w_hy))
    return _generate(model, params, key, jnp.asarray(prime, jnp.int32), carry, temp, n=int(n))
