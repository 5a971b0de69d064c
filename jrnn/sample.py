"""Jitted generation from an Elman language model, as min-char-rnn's `sample`, with jax.random."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import elman, lm


@functools.partial(jax.jit, static_argnames=("n", "activation"))
def _generate(params, key, prime, h0, temperature, *, n, activation):
    _, h = elman.hidden(params, prime, h0, activation=activation)   # read the prime
    logits = elman.readout(params, h)

    def body(carry, k):
        h, logits = carry
        tok = jax.random.categorical(k, logits / temperature)       # sample x_{t+1} ~ p(. | h_t)
        h, _ = elman.step(params, h, elman.project(params, tok[None])[0], activation=activation)
        return (h, elman.readout(params, h)), tok

    (h, _), toks = jax.lax.scan(body, (h, logits), jax.random.split(key, n))
    return toks, h


def generate(params: elman.ElmanParams, key, prime, n: int, *, temperature: float = 1.0,
             h0=None, activation: str = "tanh"):
    """Sample n token ids after reading `prime`.

    Args:
      params: ElmanParams of a language model (D = V).
      key: PRNG key; the same key gives the same sample.
      prime: token ids `[P]`, P >= 1 (min-char-rnn primes with one char).
      n: number of tokens to generate.
      temperature: logits are divided by it (< 1 sharper, > 1 flatter).
      h0: state `[H]` before the prime (zeros if None).

    Returns:
      (ids `[n]` int32, final state `[H]`).
    """
    _check_sampling_args(n, temperature)
    prime = np.asarray(prime)
    if prime.ndim != 1 or prime.size == 0 or not np.issubdtype(prime.dtype, np.integer):
        raise ValueError(f"prime must be a non-empty 1-D array of token ids, got shape {prime.shape}, dtype {prime.dtype}")
    elman.check_inputs(params, prime)
    V = params.w_hy.shape[1]
    if params.w_xh.shape[0] != V:
        raise ValueError(f"sampling feeds outputs back as inputs: needs input_size == output_size, got {params.w_xh.shape[0]} != {V}")
    h0 = elman.zeros_carry(params) if h0 is None else jnp.asarray(h0)
    temp = jnp.asarray(temperature, params.w_hy.dtype)
    return _generate(params, key, jnp.asarray(prime, jnp.int32), h0, temp, n=int(n), activation=activation)


@functools.partial(jax.jit, static_argnames=("n", "cell"))
def _generate_lm(params, key, prime, temperature, *, n, cell):
    logits, carries = lm.apply(params, prime, cell=cell)          # read the prime

    def body(carry, k):
        carries, last = carry
        tok = jax.random.categorical(k, last / temperature)
        logits, carries = lm.apply(params, tok[None], carries, cell=cell)
        return (carries, logits[0]), tok

    (carries, _), toks = jax.lax.scan(body, (carries, logits[-1]), jax.random.split(key, n))
    return toks, carries


def generate_lm(params, key, prime, n: int, *, cell: str = "lstm", temperature: float = 1.0):
    """`generate` for a `jrnn.lm` model of any cell and depth: (ids `[n]`, carries)."""
    _check_sampling_args(n, temperature)
    prime = np.asarray(prime)
    if prime.ndim != 1 or prime.size == 0 or not np.issubdtype(prime.dtype, np.integer):
        raise ValueError(f"prime must be a non-empty 1-D array of token ids, got shape {prime.shape}")
    elman.check_input_array(params.layers[0][0].shape[0], prime)
    temp = jnp.asarray(temperature, params.w_hy.dtype)
    return _generate_lm(params, key, jnp.asarray(prime, jnp.int32), temp, n=int(n), cell=cell)


def _check_sampling_args(n, temperature):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
