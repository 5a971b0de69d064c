"""Memory of loss + gradient for long sequences, with and without rematerialisation.

Reads XLA's compiled memory analysis (temp buffers of the jitted gradient) for an Elman LM at
B=8, H=256, V=65 over several T; `remat=True` keeps sqrt(T) hidden states for the backward pass.
Also times one gradient at the largest T for each, to show the recompute cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jrnn
from experiments import common

# hyperparameters
BATCH, HIDDEN, VOCAB = 8, 256, 65
LENGTHS = (1000, 4000, 16000)


def grad_fn(params, T, remat):
    x = jnp.zeros((T, BATCH), jnp.int32)
    return jax.jit(jax.grad(lambda p: jrnn.elman.sequence_loss(p, x, x, remat=remat)[0])).lower(params).compile()


def main(argv=None):
    ap = common.parser("memory", __doc__)
    args = ap.parse_args(argv)
    params = jrnn.elman.init(jax.random.key(args.seed), vocab_size=VOCAB, hidden_size=HIDDEN)
    rows = []
    with common.Timer() as t:
        for T in LENGTHS:
            row = {"T": T}
            for remat in (False, True):
                compiled = grad_fn(params, T, remat)
                row["remat" if remat else "plain"] = compiled.memory_analysis().temp_size_in_bytes / 2**20
                if T == 4000:
                    jax.block_until_ready(compiled(params))
                    with common.Timer() as tg:
                        jax.block_until_ready(compiled(params))
                    row[("remat" if remat else "plain") + "_grad_s"] = tg.s
            rows.append(row)
    print(f"temp memory of loss + grad, B={BATCH}, H={HIDDEN}, V={VOCAB} ({jax.default_backend()}):")
    print("| T | plain MiB | remat MiB | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['T']} | {r['plain']:.1f} | {r['remat']:.1f} | {r['plain'] / r['remat']:.0f}x |")
    r4 = next(r for r in rows if r["T"] == 4000)
    print(f"T=4000 gradient time: plain {r4['plain_grad_s']:.3f} s, remat {r4['remat_grad_s']:.3f} s")
    common.save_results(args.out, "memory", {"batch": BATCH, "hidden": HIDDEN, "vocab": VOCAB}, {"rows": rows}, t.s)
    common.plot_curves(args.out, {k: (LENGTHS, [r[k] for r in rows]) for k in ("plain", "remat")},
                       xlabel="T", ylabel="temp MiB (loss + grad)", title="memory vs sequence length")
    return rows


run = common.cli(main)

if __name__ == "__main__":
    run()
