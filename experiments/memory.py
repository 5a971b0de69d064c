"""Memory of loss + gradient for long sequences, with and without rematerialisation.

Reads XLA's compiled memory analysis (temp buffers of the jitted gradient) for an Elman LM at
B=8, H=256, V=65 over several T; `grad=jrnn.Remat()` keeps sqrt(T) hidden states for the backward pass.
Also times one gradient at T=4000 (else the largest T) for each, to show the recompute cost.
The plot (memory.png) is temp MiB against T for both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jrnn
from experiments import common

# hyperparameters
BATCH, HIDDEN, VOCAB = 8, 256, 65
LENGTHS = (1000, 4000, 16000)


MODEL = common.model("elman", vocab=VOCAB, hidden=HIDDEN)


def tokens(T):
    return jnp.zeros((T, BATCH), jnp.int32)


def grad_fn(params, T, remat):
    """The compiled gradient, tokens [T, B] an argument (as a closed-over constant, XLA spends
    seconds constant-folding the embedding's scatter-add)."""
    grad = jrnn.Remat() if remat else jrnn.FullBPTT()
    loss = lambda p, x: MODEL.loss(p, x, x, grad=grad)[0]
    return jax.jit(jax.grad(loss)).lower(params, tokens(T)).compile()


def main(argv=None):
    ap = common.parser("memory", __doc__, plots=("memory.png",))
    ap.add_argument("--lengths", type=common.positive_int, nargs="+", default=list(LENGTHS), help="sequence lengths T")
    args = ap.parse_args(argv)
    lengths = sorted(set(args.lengths))
    timed_T = 4000 if 4000 in lengths else lengths[-1]
    params = common.init(MODEL, jax.random.key(args.seed), scheme="default")
    rows = []
    bar = common.progress(2 * len(lengths), "memory (compile per T)", args.quiet)
    with common.Timer() as t:
        for T in lengths:
            row = {"T": T}
            for remat in (False, True):
                compiled = grad_fn(params, T, remat)
                row["remat" if remat else "plain"] = compiled.memory_analysis().temp_size_in_bytes / 2**20
                if T == timed_T:
                    x = tokens(T)
                    jax.block_until_ready(compiled(params, x))
                    with common.Timer() as tg:
                        jax.block_until_ready(compiled(params, x))
                    row[("remat" if remat else "plain") + "_grad_s"] = tg.s
                bar.update(1)
                bar.set_postfix(T=T, MiB=f"{row['remat' if remat else 'plain']:.1f}")
            rows.append(row)
    bar.close()
    print(f"temp memory of loss + grad, B={BATCH}, H={HIDDEN}, V={VOCAB} ({jax.default_backend()}):")
    print("| T | plain MiB | remat MiB | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['T']} | {r['plain']:.1f} | {r['remat']:.1f} | {r['plain'] / r['remat']:.0f}x |")
    r4 = next(r for r in rows if r["T"] == timed_T)
    print(f"T={timed_T} gradient time: plain {r4['plain_grad_s']:.3f} s, remat {r4['remat_grad_s']:.3f} s")
    # log-log: the plain scan's line has slope 1, remat's about 1/2 (it keeps sqrt(T) states)
    names = {"plain": "plain scan (keeps all T states)", "remat": "grad=jrnn.Remat() (keeps about sqrt(T) states)"}
    plot = common.plot_panels(args.out, {f"Elman LM, B={BATCH}, H={HIDDEN}, V={VOCAB}": {
                                  names[k]: (lengths, [r[k] for r in rows]) for k in ("plain", "remat")}},
                              xlabel="sequence length T, timesteps (log scale)",
                              ylabel="XLA temp buffers, MiB (log scale)", logx=True, logy=True, xticks=lengths,
                              style=lambda label: {"marker": "o"},
                              title=f"memory of loss + gradient vs sequence length ({jax.default_backend()})",
                              filename="memory.png")
    config = {"batch": BATCH, "hidden": HIDDEN, "vocab": VOCAB, "lengths": lengths, "timed_T": timed_T,
              "seed": args.seed}
    common.save_results(args.out, "memory", config, {"rows": rows}, t.s, plot=plot.name)
    common.print_saved(args.out, plot)
    return rows


run = common.cli(main)

if __name__ == "__main__":
    run()
