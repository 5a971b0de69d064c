"""Training-step benchmark: jrnn vs Flax linen vs PyTorch on the same work.

The work, for each config (B, H, T, V): token embedding (gather), tanh Elman recurrence,
per-step output projection, mean softmax cross-entropy, backward, one Adagrad update
(accumulator from 0, eps 1e-8) after elementwise clipping at 5. Every implementation starts
from the same weights (jrnn's init copied over): Flax `nn.RNN(nn.SimpleCell)` and PyTorch
`nn.RNN` need an input matrix after their embedding, set to the identity so the function is
the same (and frozen); that extra [B*T, H] x [H, H] product is part of their API's cost. PyTorch runs
min-char-rnn's Adagrad with in-place tensor ops (torch.optim.Adagrad puts eps outside the
square root, a different update).

jrnn's rows: its default step; K steps per jit call (`make_multi_step`); and, where there is
more than one device, `make_data_parallel_step` with the batch's rows split over the most
devices that divide B (`jrnn.train.batch_mesh`). On a CPU the bench asks XLA for one device per
core before jax starts: XLA runs a scan's per-step matmuls of this size on one core, so two
devices, each scanning half the batch, keep both cores busy. Flax and PyTorch run with their
defaults on the same cores (XLA's and PyTorch's intra-op threads).

Reported per implementation: compile/warm-up seconds (first call), then the median over
repeats of microseconds per training step (forward+backward+update) and per forward alone,
and per timestep; the ratio is the best peer's time over jrnn's best, measured in this run.

Requires the `bench` extra (flax, torch): `pip install -e '.[bench]'` (`pip install
torch==2.13.0` takes a CPU build).
"""

from __future__ import annotations

from experiments import one_cpu_device_per_core

one_cpu_device_per_core()  # the data-parallel rows split the batch over the CPU's cores

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from experiments import common

# hyperparameters
LR, CLIP, EPS = 0.1, 5.0, 1e-8
CPU_CONFIGS = [(1, 100, 25, 80), (32, 256, 128, 65), (1, 64, 1024, 65), (16, 128, 1024, 65), (64, 256, 1024, 65)]
GPU_CONFIGS = [(1, 100, 25, 80), (64, 512, 256, 65), (256, 1024, 512, 256), (8, 256, 8192, 65),
               (64, 384, 1024, 65), (1024, 1024, 512, 65)]
# float32 matmul precision, as jax names it: "float32" is true float32 everywhere (the default
# here, so every implementation does the same arithmetic); "tensorfloat32" lets NVIDIA tensor
# cores round inputs to TF32; "default" keeps each library's own default, which on a recent
# NVIDIA GPU is TF32 for JAX and Flax but float32 matmuls for PyTorch. CPUs compute float32.
PRECISIONS = ("float32", "tensorfloat32", "default")
MULTI_K = 20          # steps per call for the jrnn multi-step variant
MIN_REPEAT_S = 0.2    # each timed repeat runs enough steps to last at least this long


def make_batch(B, T, V, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, V, (B, T + 1)).astype(np.int32)
    return ids[:, :-1], ids[:, 1:]


def timed(fn, repeats, warm_up=True):
    """Median seconds per call of fn() over repeats (fn must block until its result is ready).

    Each repeat runs enough calls to last MIN_REPEAT_S; when one call already does, the
    calibration call is the first repeat. `warm_up=False` when fn has been called already.
    """
    if warm_up:
        fn()
    n, times = 1, []
    while True:  # calibrate the number of calls per repeat
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= MIN_REPEAT_S or n >= 1000:
            break
        n *= 2
    if n == 1:
        times.append(dt)
    while len(times) < repeats:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


# ---- jrnn -------------------------------------------------------------------------------------

def jrnn_impl(params, x, y, *, unroll=1, multi=False, data_parallel=False):
    def loss_fn(p, batch, carry):
        xb, yb = batch
        logits, _ = jrnn.elman.apply(p, xb.T, unroll=unroll)                 # time-major [T, B, V]
        return jrnn.losses.softmax_cross_entropy(logits, yb.T), carry

    opt = jrnn.optim.karpathy_adagrad(LR, clip_value=CLIP, eps=EPS)
    fwd = jax.jit(lambda p, xb, yb: loss_fn(p, (xb, yb), None)[0])
    x, y = jnp.asarray(x), jnp.asarray(y)
    if data_parallel:  # rows of the batch split over the devices (one per core on a CPU)
        mesh = jrnn.train.batch_mesh(len(x))
        if mesh.size == 1:
            return None    # nothing to split (B = 1): the row is left out
        step = jrnn.train.make_data_parallel_step(loss_fn, opt, mesh=mesh, batch_axis=0, multi_step=multi)
        x, y = jax.device_put((x, y), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
        params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    else:
        step = (jrnn.make_multi_step if multi else jrnn.make_step)(loss_fn, opt)
    batches = (jnp.broadcast_to(x, (MULTI_K,) + x.shape), jnp.broadcast_to(y, (MULTI_K,) + y.shape)) if multi else (x, y)
    state = {"p": params, "s": opt.init(params)}

    def train():
        state["p"], state["s"], m, _ = step(state["p"], state["s"], batches)
        jax.block_until_ready(state["p"])

    return {"train": train, "forward": lambda: jax.block_until_ready(fwd(state["p"], x, y)),
            "loss": lambda: float(fwd(state["p"], x, y)), "steps_per_call": MULTI_K if multi else 1,
            "devices": mesh.size if data_parallel else 1}


# ---- Flax linen -------------------------------------------------------------------------------

def flax_impl(params, x, y):
    import flax.linen as nn
    import optax

    V, H = params.w_hy.shape[1], params.w_hh.shape[0]

    class LM(nn.Module):
        @nn.compact
        def __call__(self, tokens):                                          # [B, T]
            e = nn.Embed(V, H)(tokens)
            hs = nn.RNN(nn.SimpleCell(features=H))(e)
            return nn.Dense(V)(hs)

    model = LM()
    fp = {"params": {"Embed_0": {"embedding": params.w_xh},
                     "SimpleCell_0": {"i": {"kernel": jnp.eye(H, dtype=params.w_hh.dtype), "bias": params.b_h},
                                      "h": {"kernel": params.w_hh}},
                     "Dense_0": {"kernel": params.w_hy, "bias": params.b_y}}}
    opt = optax.chain(optax.clip(CLIP), optax.adagrad(LR, initial_accumulator_value=0.0, eps=EPS))
    loss = lambda p, xb, yb: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

    @jax.jit
    def step(p, s, xb, yb):
        g = jax.grad(loss)(p, xb, yb)
        # the identity input kernel stands in for jrnn's absent matrix: computed, never trained
        g["params"]["SimpleCell_0"]["i"]["kernel"] = jnp.zeros_like(g["params"]["SimpleCell_0"]["i"]["kernel"])
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    fwd = jax.jit(loss)
    x, y = jnp.asarray(x), jnp.asarray(y)
    state = {"p": fp, "s": opt.init(fp)}

    def train():
        state["p"], state["s"] = step(state["p"], state["s"], x, y)
        jax.block_until_ready(state["p"])

    return {"train": train, "forward": lambda: jax.block_until_ready(fwd(state["p"], x, y)),
            "loss": lambda: float(fwd(state["p"], x, y)), "steps_per_call": 1}


# ---- PyTorch ----------------------------------------------------------------------------------

def torch_impl(params, x, y, precision="float32"):
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if precision != "default":  # the same float32 matmul precision as jrnn and Flax (GPU only)
        torch.set_float32_matmul_precision("highest" if precision == "float32" else "high")
        torch.backends.cudnn.allow_tf32 = precision == "tensorfloat32"
    V, H = params.w_hy.shape[1], params.w_hh.shape[0]
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32, device=dev)
    emb = torch.nn.Embedding(V, H).to(dev)
    rnn = torch.nn.RNN(H, H, nonlinearity="tanh", batch_first=True).to(dev)
    out = torch.nn.Linear(H, V).to(dev)
    with torch.no_grad():
        emb.weight.copy_(t(params.w_xh))
        rnn.weight_ih_l0.copy_(torch.eye(H, device=dev))
        rnn.bias_ih_l0.copy_(t(params.b_h))
        rnn.weight_hh_l0.copy_(t(params.w_hh).T)
        rnn.bias_hh_l0.zero_()
        out.weight.copy_(t(params.w_hy).T)
        out.bias.copy_(t(params.b_y))
    rnn.weight_ih_l0.requires_grad_(False)  # the identity: computed, never trained
    rnn.bias_hh_l0.requires_grad_(False)    # zero: jrnn has one hidden bias, torch two
    ps = [p for p in (*emb.parameters(), *rnn.parameters(), *out.parameters()) if p.requires_grad]
    mem = [torch.zeros_like(p) for p in ps]
    xb, yb = torch.tensor(x, dtype=torch.long, device=dev), torch.tensor(y, dtype=torch.long, device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def loss():
        hs, _ = rnn(emb(xb))
        return torch.nn.functional.cross_entropy(out(hs).reshape(-1, V), yb.reshape(-1))

    def train():
        for p in ps:
            p.grad = None
        loss().backward()
        with torch.no_grad():
            for p, m in zip(ps, mem):          # min-char-rnn's clip + Adagrad, in place
                g = p.grad.clamp_(-CLIP, CLIP)
                m.addcmul_(g, g)
                p.addcdiv_(g, (m + EPS).sqrt_(), value=-LR)
        sync()

    def forward():
        with torch.no_grad():
            loss()
        sync()

    def value():
        with torch.no_grad():
            return float(loss())

    return {"train": train, "forward": forward, "loss": value, "steps_per_call": 1}


# ---- parallel-in-time (DEER) ------------------------------------------------------------------

DEER_CPU = [(T, H, B) for T in (1000, 16000) for H in (8, 32) for B in (1, 16)]
DEER_GPU = [(T, H, B) for T in (1000, 16000, 65536) for H in (8, 32, 128, 256) for B in (1, 16, 64)]
DEER_MAX_JACOBIAN_BYTES = 2**30   # skip configs whose [T, B, H, H] Jacobians exceed 1 GiB


def deer_rows(configs, repeats):
    """Forward and forward+backward time of an Elman layer by sequential scan, DEER, quasi-DEER."""
    rows = []
    for T, H, B in configs:
        params = jrnn.elman.init(jax.random.key(0), input_size=H, hidden_size=H, output_size=1)
        xs = jnp.asarray(np.random.RandomState(0).randn(T, B, H).astype(np.float32))
        jac_bytes = T * B * H * H * 4
        base = None
        for method in ("sequential", "deer", "quasi_deer"):
            if method != "sequential" and jac_bytes > DEER_MAX_JACOBIAN_BYTES:
                rows.append({"T": T, "H": H, "B": B, "method": method, "skipped": "Jacobians > 1 GiB"})
                continue
            fwd = jax.jit(lambda p, x, m=method: jrnn.elman.hidden(p, x, method=m)[0])
            grad = jax.jit(jax.grad(lambda p, x, m=method: jnp.sum(jrnn.elman.hidden(p, x, method=m)[0] ** 2)))
            f_s = timed(lambda: jax.block_until_ready(fwd(params, xs)), repeats)
            g_s = timed(lambda: jax.block_until_ready(grad(params, xs)), repeats)
            row = {"T": T, "H": H, "B": B, "method": method, "forward_ms": f_s * 1e3, "train_ms": g_s * 1e3}
            if method != "sequential":
                _, info = jrnn.parallel.evaluate(jrnn.elman.step, params, jrnn.elman.project(params, xs),
                                                 jnp.zeros((B, H)), method=method)
                row.update(iterations=int(info.iterations), fell_back=bool(info.fell_back),
                           forward_speedup=base[0] / f_s, train_speedup=base[1] / g_s)
            else:
                base = (f_s, g_s)
            rows.append(row)
    return rows


def print_deer(rows):
    print("| T | H | B | method | fwd ms | fwd+bwd ms | vs sequential (fwd, fwd+bwd) | Newton iters |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['T']} | {r['H']} | {r['B']} | {r['method']} | skipped: {r['skipped']} | | | |")
            continue
        ratio = "" if r["method"] == "sequential" else f"{r['forward_speedup']:.2f}x, {r['train_speedup']:.2f}x"
        it = "" if r["method"] == "sequential" else f"{r['iterations']}{' (fell back)' if r['fell_back'] else ''}"
        print(f"| {r['T']} | {r['H']} | {r['B']} | {r['method']} | {r['forward_ms']:.1f} | {r['train_ms']:.1f} | {ratio} | {it} |")


# ---- driver -----------------------------------------------------------------------------------

def implementations(quick, precision="float32"):
    impls = {"jrnn": lambda p, x, y: jrnn_impl(p, x, y),
             f"jrnn multi-step (K={MULTI_K})": lambda p, x, y: jrnn_impl(p, x, y, multi=True)}
    if jax.device_count() > 1:
        impls["jrnn data-parallel"] = lambda p, x, y: jrnn_impl(p, x, y, data_parallel=True)
        impls[f"jrnn data-parallel multi-step (K={MULTI_K})"] = lambda p, x, y: jrnn_impl(p, x, y, data_parallel=True, multi=True)
    if not quick:
        impls["jrnn unroll=4"] = lambda p, x, y: jrnn_impl(p, x, y, unroll=4)
    if jax.default_backend() == "gpu":  # an H100 report: unroll 8 gave 2-3.4x over 1 at small B*H
        impls[f"jrnn multi-step (K={MULTI_K}) unroll=8"] = lambda p, x, y: jrnn_impl(p, x, y, unroll=8, multi=True)
    impls["flax"] = flax_impl
    impls["torch"] = lambda p, x, y: torch_impl(p, x, y, precision)
    return impls


def run_config(cfg, impls, repeats):
    B, H, T, V = cfg
    params = jrnn.elman.init(jax.random.key(0), vocab_size=V, hidden_size=H)
    x, y = make_batch(B, T, V)
    rows = []
    for name, make in impls.items():
        impl = make(params, x, y)
        if impl is None:
            continue
        loss0 = impl["loss"]()
        t0 = time.perf_counter()
        impl["train"]()                                   # first call: compile / warm-up
        warm = time.perf_counter() - t0
        loss1 = impl["loss"]()                            # also compiles forward for trained params
        loss1 = loss1 if impl["steps_per_call"] == 1 else None
        k = impl["steps_per_call"]
        step_s = timed(impl["train"], repeats, warm_up=False) / k     # compiled and run above
        fwd_s = timed(impl["forward"], repeats, warm_up=False)        # compiled by "loss" above
        if impl.get("devices", 1) > 1:
            name = f"{name} ({impl['devices']} devices)"
        rows.append({"config": list(cfg), "impl": name, "compile_s": warm, "train_us": step_s * 1e6,
                     "forward_us": fwd_s * 1e6, "train_us_per_timestep": step_s * 1e6 / T,
                     "loss_initial": loss0, "loss_after_one_step": loss1})
    ours = [r["train_us"] for r in rows if r["impl"].startswith("jrnn")]
    peers = [r["train_us"] for r in rows if not r["impl"].startswith("jrnn")]
    for r in rows:
        r["ratio_best_peer_over_this"] = min(peers) / r["train_us"] if peers else None
    return rows, (min(peers) / min(ours) if peers and ours else None)


def config_list(text):
    """--configs: "B,H,T,V;B,H,T,V" -> [(B, H, T, V), ...] of positive integers."""
    try:
        configs = [tuple(int(v) for v in c.split(",")) for c in text.split(";")]
    except ValueError:
        configs = None
    if not configs or any(len(c) != 4 or min(c) < 1 for c in configs):
        raise argparse.ArgumentTypeError(f"takes B,H,T,V groups of 4 positive integers separated by ';', got {text!r}")
    return configs


def main(argv=None):
    ap = common.parser("bench", __doc__)
    ap.add_argument("--quick", action="store_true", help="CPU configs, fewer repeats (about 3 minutes on 2 cores)")
    ap.add_argument("--configs", type=config_list, default=None, help="semicolon-separated B,H,T,V list overriding the defaults")
    ap.add_argument("--repeats", type=common.positive_int, default=5, help="timed repeats per measurement (median reported)")
    ap.add_argument("--only", default=None, help="comma-separated implementation names to run (default: all)")
    ap.add_argument("--precision", choices=PRECISIONS, default="float32",
                    help="float32 matmul precision for every implementation (GPU only: CPUs compute float32)")
    ap.add_argument("--deer", action="store_true", help="benchmark parallel-in-time DEER / quasi-DEER against the sequential scan")
    args = ap.parse_args(argv)
    if args.deer and (args.only or args.configs):
        raise ValueError("--deer runs its own configurations and methods: drop --only / --configs")
    if args.deer:
        configs = DEER_GPU if jax.default_backend() == "gpu" else DEER_CPU
        with common.Timer() as t:
            rows = deer_rows(configs, 3 if args.quick else args.repeats)
        print_deer(rows)
        out = args.out.parent / "bench_deer" if args.out.name == "bench" else args.out
        common.save_results(out, "bench_deer", {"configs": configs}, {}, t.s, rows=rows)
        done = [r for r in rows if r["method"] == "deer" and "skipped" not in r]
        common.plot_curves(out, {"deer fwd+bwd speedup": (np.arange(len(done)), [r["train_speedup"] for r in done])},
                           xlabel="config index", ylabel="speedup vs sequential", title="DEER vs sequential scan")
        return rows
    if args.configs:
        configs = args.configs
    else:
        configs = GPU_CONFIGS if jax.default_backend() == "gpu" else CPU_CONFIGS
    repeats = 3 if args.quick else args.repeats
    impls = implementations(args.quick, args.precision)
    if args.only:
        names = [n.strip() for n in args.only.split(",")]
        chosen = lambda k, n: k.split()[0] == n or k == n
        unknown = [n for n in names if not any(chosen(k, n) for k in impls)]
        if unknown:
            raise ValueError(f"--only: unknown implementation(s) {unknown}; choose from {sorted(impls)} "
                             f"(or a first word: {sorted({k.split()[0] for k in impls})})")
        impls = {k: v for k, v in impls.items() if any(chosen(k, n) for n in names)}
    all_rows, ratios = [], {}
    bar = common.progress(len(configs), "bench", args.quiet)
    with common.Timer() as t:
        for cfg in configs:
            with jax.default_matmul_precision(args.precision):   # read when jit traces
                rows, ratio = run_config(cfg, impls, repeats)
            all_rows += rows
            ratios[",".join(map(str, cfg))] = ratio
            bar.update(1)
    bar.close()
    env = common.environment()
    versions = {"jax": jax.__version__}
    for mod in ("flax", "torch", "optax"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    print(f"\n{env['backend']} / {env['device']} / {env['cpus']} CPUs; " + ", ".join(f"{k} {v}" for k, v in versions.items())
          + f"; matmul precision {args.precision}")
    print("| B, H, T, V | impl | compile s | train µs/step | fwd µs/step | train µs/timestep | best peer / this |")
    print("|---|---|---|---|---|---|---|")
    for r in all_rows:
        ratio = r["ratio_best_peer_over_this"]
        print(f"| {', '.join(map(str, r['config']))} | {r['impl']} | {r['compile_s']:.2f} | {r['train_us']:.0f} | "
              f"{r['forward_us']:.0f} | {r['train_us_per_timestep']:.2f} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    common.save_results(args.out, "bench", {"configs": configs, "repeats": repeats, "quick": args.quick,
                                            "precision": args.precision},
                        {"jrnn_speedup_vs_best_peer": ratios}, t.s, rows=all_rows, versions=versions)
    labels = list(ratios)
    common.plot_curves(args.out, {"best peer / jrnn": (np.arange(len(labels)), [ratios[k] or 0 for k in labels])},
                       xlabel="config index", ylabel="speedup", title="jrnn train-step speedup vs best peer")
    return all_rows


run = common.cli(main)

if __name__ == "__main__":
    run()
