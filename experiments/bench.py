"""Training-step benchmark: jrnn vs Flax linen vs PyTorch on the same work.

The work, for each config (B, H, T, V) and cell (`--cell elman|lstm|gru`): token ids into the
recurrence, per-step output projection, mean softmax cross-entropy, backward, one Adagrad update
(accumulator from 0, eps 1e-8) after elementwise clipping at 5. Every implementation starts
from the same weights (jrnn's init copied over) and the bench records each one's loss before
and after its first call, so any difference in the work shows. Elman: Flax
`nn.RNN(nn.SimpleCell)` and PyTorch `nn.RNN` need an input matrix after their embedding, set to
the identity so the function is the same (and frozen). LSTM / GRU: jrnn's `jrnn.lm` gathers
rows of its [V, G*H] input matrix; Flax `nn.RNN(nn.OptimizedLSTMCell / nn.GRUCell)` and PyTorch
`nn.LSTM` / `nn.GRU` (cuDNN on a GPU) read one-hot tokens through the same matrix. The LSTM's
second PyTorch bias is frozen at 0 (jrnn and Flax have one); the GRU's b_hr, b_hz stay 0
everywhere (Flax's GRUCell has none). Those extra products are part of their API's cost.
PyTorch runs min-char-rnn's Adagrad with in-place tensor ops (torch.optim.Adagrad puts eps
outside the square root, a different update).

Two ratios per config, each library's train time per step over jrnn's (above 1: jrnn faster):

- default/default: each library's plain jitted step as its docs show it. jrnn: `jrnn.make_step`
  with its defaults (NaN/inf guard and id checks on, `unroll` chosen by backend, full float32
  matmuls); Flax: `jax.jit` of grad + optax update; PyTorch: its eager step.
- best/best: each library's fastest row, every technique of jrnn's best path given to the JAX
  peer too: K steps per jit call in one `lax.scan` (`jrnn.make_multi_step`; Flax's same step
  scanned K times) and, where there is more than one device, the batch's rows split over the same
  mesh (`jrnn.distributed.make_data_parallel_step` over `jrnn.distributed.batch_mesh`, the most
  devices that divide B; Flax's arrays sharded with `jax.sharding` over that mesh, params
  replicated). PyTorch gets `torch.compile` (inductor); where it cannot compile (no C++ compiler
  on a CPU, no Triton on a GPU) the bench prints why and results.json lists it under
  "unavailable".

Without `--quick`, jrnn also runs explicit unroll 1 / 4 / 8. On a CPU the bench asks XLA for one
device per core before jax starts: XLA runs a scan's per-step matmuls of this size on one core,
so two devices, each scanning half the batch, keep both cores busy; Flax's data-parallel rows use
the same devices, and Flax and PyTorch's default rows run with their defaults on the same cores.

Each row is printed when measured and results.json is rewritten after every row, so a run cut
short keeps what it measured; `--time-budget S` starts no new measurement after S seconds.
`--gpu-quick` measures the six GPU configs for jrnn's default step and best path, Flax's
default step and the same best path, PyTorch and `torch.compile`, with 2 short repeats and no
forward timing, within a 225 s budget.

Reported per implementation: compile seconds (the first training call, apart from the timing),
then the median over repeats of microseconds per training step (forward+backward+update) and
per forward alone, and per timestep; then both ratios, measured in this run.

The plot, speedup.png (deer_speedup.png with --deer), has one group of bars per config, named
on its axis, and one bar per ratio (default/default and best/best), on a log axis from a
dashed 1x line; the run ends by printing `plot:` and `results:` with their paths.

Requires the `bench` extra (flax, torch): `pip install -e '.[bench]'` (`pip install
torch==2.13.0` takes a CPU build). `--only jrnn` needs neither.
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
from experiments import common, report

# hyperparameters
LR, CLIP, EPS = 0.1, 5.0, 1e-8
CPU_CONFIGS = [(1, 100, 25, 80), (32, 256, 128, 65), (1, 64, 1024, 65), (16, 128, 1024, 65), (64, 256, 1024, 65)]
# the six GPU configs, most telling first
GPU_CONFIGS = [(1, 100, 25, 80), (64, 512, 256, 65), (8, 256, 8192, 65), (256, 1024, 512, 256),
               (64, 384, 1024, 65), (1024, 1024, 512, 65)]
GPU_QUICK_REPEAT_S = 0.1  # and times repeats of at least this long (MIN_REPEAT_S otherwise)
GPU_QUICK_BUDGET_S = 225   # --gpu-quick stops starting measurements after this (a 4-minute window)
CELLS = ("elman", "lstm", "gru")
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


def timed(fn, repeats, warm_up=True, min_repeat_s=None):
    """Median seconds per call of fn() over repeats (fn must block until its result is ready).

    Each repeat runs enough calls to last MIN_REPEAT_S; when one call already does, the
    calibration call is the first repeat. `warm_up=False` when fn has been called already.
    """
    min_repeat_s = MIN_REPEAT_S if min_repeat_s is None else min_repeat_s
    if warm_up:
        fn()
    n, times = 1, []
    while True:  # calibrate the number of calls per repeat
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_repeat_s or n >= 1000:
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


# ---- the model of each cell ------------------------------------------------------------------

def init_params(cell, V, H):
    """jrnn's weights, which every implementation copies: the seeds' Elman LM (flat ElmanParams,
    jrnn.elman's default scheme), or a one-layer LSTM/GRU LM whose layer-0 input matrix [V, G*H]
    is read by row gather."""
    return common.init(common.model(cell, vocab=V, hidden=H), jax.random.key(0), scheme="default")


def jrnn_loss(cell, unroll):
    """`loss_fn(params, (x [B, T], y [B, T]), carry)` of the bench's work, time-major inside."""
    def logits(p, xb):
        if cell == "gru":  # b_hr, b_hz stay 0: Flax's GRUCell has no such biases
            layer = p.layers[0]
            H = layer.w_h.shape[0]
            b_h = jnp.concatenate([jax.lax.stop_gradient(layer.b_h[:2 * H]), layer.b_h[2 * H:]])
            p = p._replace(layers=(layer._replace(b_h=b_h),))
        H, V = p.w_hy.shape
        return common.model(cell, vocab=V, hidden=H).apply(p, xb.T, unroll=unroll)[0]      # [T, B, V]

    def loss_fn(p, batch, carry):
        xb, yb = batch
        return jrnn.losses.softmax_cross_entropy(logits(p, xb), yb.T), carry
    return loss_fn


# ---- jrnn -------------------------------------------------------------------------------------

def jrnn_impl(params, x, y, *, cell="elman", unroll=None, multi=False, data_parallel=False, precision="float32"):
    """jrnn's step (`unroll=None`: the library's default, 8 on a GPU, 1 on a CPU), K steps per
    call (`multi`), or split over devices (`data_parallel`, None when B does not split)."""
    loss_fn = jrnn_loss(cell, unroll)
    opt = jrnn.optim.karpathy_adagrad(LR, clip_value=CLIP, eps=EPS)
    fwd = jax.jit(jrnn.train.with_precision(lambda p, xb, yb: loss_fn(p, (xb, yb), None)[0], precision))
    x, y = jnp.asarray(x), jnp.asarray(y)
    if data_parallel:  # rows of the batch split over the devices (one per core on a CPU)
        mesh = jrnn.distributed.batch_mesh(len(x))
        if mesh.size == 1:
            return None    # nothing to split (B = 1): the row is left out
        step = jrnn.distributed.make_data_parallel_step(loss_fn, opt, mesh=mesh, batch_axis=0, multi_step=multi,
                                                  precision=precision)
        x, y = jax.device_put((x, y), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
        params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    else:
        step = (jrnn.make_multi_step if multi else jrnn.make_step)(loss_fn, opt, precision=precision)
    batches = (jnp.broadcast_to(x, (MULTI_K,) + x.shape), jnp.broadcast_to(y, (MULTI_K,) + y.shape)) if multi else (x, y)
    state = {"p": params, "s": opt.init(params)}

    def train():
        state["p"], state["s"], m, _ = step(state["p"], state["s"], batches)
        jax.block_until_ready(state["p"])

    return {"train": train, "forward": lambda: jax.block_until_ready(fwd(state["p"], x, y)),
            "loss": lambda: float(fwd(state["p"], x, y)), "params": lambda: state["p"],
            "steps_per_call": MULTI_K if multi else 1, "devices": mesh.size if data_parallel else 1}


# ---- Flax linen -------------------------------------------------------------------------------

def _flax_weights(cell, params, fp):
    """Fill Flax's parameter tree `fp` (from its init) with jrnn's weights."""
    H = params.w_hy.shape[0]
    rnn = next(k for k in fp if k not in ("Dense_0", "Embed_0"))   # SimpleCell_0, OptimizedLSTMCell_0, ...
    fp["Dense_0"] = {"kernel": params.w_hy, "bias": params.b_y}
    if cell == "elman":
        fp["Embed_0"] = {"embedding": params.w_xh}
        fp[rnn] = {"i": {"kernel": jnp.eye(H, dtype=params.w_hh.dtype), "bias": params.b_h},
                   "h": {"kernel": params.w_hh}}
        return fp
    layer = params.layers[0]
    cols = lambda w, k: w[..., k * H:(k + 1) * H]
    if cell == "lstm":   # jrnn's gate columns [i | f | g | o]; one bias, on Flax's hidden kernels
        fp[rnn] = {**{f"i{g}": {"kernel": cols(layer.w_i, k)} for k, g in enumerate("ifgo")},
                   **{f"h{g}": {"kernel": cols(layer.w_h, k), "bias": cols(layer.b, k)} for k, g in enumerate("ifgo")}}
    else:                # [r | z | n]; Flax has input biases and b_hn only
        fp[rnn] = {**{f"i{g}": {"kernel": cols(layer.w_i, k), "bias": cols(layer.b_i, k)} for k, g in enumerate("rzn")},
                   "hr": {"kernel": cols(layer.w_h, 0)}, "hz": {"kernel": cols(layer.w_h, 1)},
                   "hn": {"kernel": cols(layer.w_h, 2), "bias": cols(layer.b_h, 2)}}
    return fp


def flax_impl(params, x, y, cell="elman", multi=False, data_parallel=False):
    """Flax `nn.RNN` of `SimpleCell` (token embedding, identity input kernel), or of
    `OptimizedLSTMCell` / `GRUCell` reading one-hot tokens (input kernels = jrnn's [V, G*H]).

    Its plain jitted step as Flax's docs show it; with `multi`, the same step K times inside one
    jitted `lax.scan` (what `jrnn.make_multi_step` does); with `data_parallel`, the batch's rows
    sharded with `jax.sharding` over the mesh jrnn's data-parallel step uses
    (`jrnn.distributed.batch_mesh`), params replicated (None when B does not split)."""
    import flax.linen as nn
    import optax

    V, H = params.w_hy.shape[1], params.w_hy.shape[0]
    dtype = params.w_hy.dtype

    class LM(nn.Module):
        @nn.compact
        def __call__(self, tokens):                                          # [B, T]
            if cell == "elman":
                hs = nn.RNN(nn.SimpleCell(features=H))(nn.Embed(V, H)(tokens))
            else:
                make = nn.OptimizedLSTMCell if cell == "lstm" else nn.GRUCell
                hs = nn.RNN(make(features=H, param_dtype=dtype))(jax.nn.one_hot(tokens, V, dtype=dtype))
            return nn.Dense(V, param_dtype=dtype)(hs)

    model = LM()
    x, y = jnp.asarray(x), jnp.asarray(y)
    fp = {"params": _flax_weights(cell, params, dict(model.init(jax.random.key(0), x)["params"]))}
    opt = optax.chain(optax.clip(CLIP), optax.adagrad(LR, initial_accumulator_value=0.0, eps=EPS))
    loss = lambda p, xb, yb: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

    def update(p, s, xb, yb):
        g = jax.grad(loss)(p, xb, yb)
        if cell == "elman":  # the identity input kernel stands in for jrnn's absent matrix: never trained
            g["params"]["SimpleCell_0"]["i"]["kernel"] = jnp.zeros_like(g["params"]["SimpleCell_0"]["i"]["kernel"])
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    if multi:
        @jax.jit
        def step(p, s, xs, ys):
            (p, s), _ = jax.lax.scan(lambda c, b: (update(*c, *b), None), (p, s), (xs, ys))
            return p, s
    else:
        step = jax.jit(update)

    fwd = jax.jit(loss)
    state = {"p": fp, "s": opt.init(fp)}
    mesh = None
    if data_parallel:
        mesh = jrnn.distributed.batch_mesh(len(x))
        if mesh.size == 1:
            return None
        rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        x, y = jax.device_put((x, y), rows)
        state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    xs, ys = (jnp.broadcast_to(x, (MULTI_K,) + x.shape), jnp.broadcast_to(y, (MULTI_K,) + y.shape)) if multi else (x, y)
    if data_parallel and multi:  # [K, B, T]: the rows of every batch split
        xs, ys = jax.device_put((xs, ys), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data")))

    def train():
        state["p"], state["s"] = step(state["p"], state["s"], xs, ys)
        jax.block_until_ready(state["p"])

    return {"train": train, "forward": lambda: jax.block_until_ready(fwd(state["p"], x, y)),
            "loss": lambda: float(fwd(state["p"], x, y)), "steps_per_call": MULTI_K if multi else 1,
            "devices": 1 if mesh is None else mesh.size}


# ---- PyTorch ----------------------------------------------------------------------------------

def torch_impl(params, x, y, precision="float32", cell="elman", compiled=False):
    """PyTorch `nn.RNN` (embedding, identity input matrix), `nn.LSTM` / `nn.GRU` reading one-hot
    tokens (cuDNN on a GPU), min-char-rnn's clip + Adagrad in place. With `compiled`, the
    training step through `torch.compile` (its default inductor backend), what a PyTorch user
    reaches for to speed a step up; where it fails to compile the row says why
    (`{"unavailable": reason}`)."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if precision != "default":  # the same float32 matmul precision as jrnn and Flax (GPU only)
        torch.set_float32_matmul_precision("highest" if precision == "float32" else "high")
        torch.backends.cudnn.allow_tf32 = precision == "tensorfloat32"
    V, H = params.w_hy.shape[1], params.w_hy.shape[0]
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32, device=dev)
    xb, yb = torch.tensor(x, dtype=torch.long, device=dev), torch.tensor(y, dtype=torch.long, device=dev)
    out = torch.nn.Linear(H, V).to(dev)
    frozen_grad_rows = None
    if cell == "elman":
        emb = torch.nn.Embedding(V, H).to(dev)
        rnn = torch.nn.RNN(H, H, nonlinearity="tanh", batch_first=True).to(dev)
        w_ih, b_ih, w_hh, b_hh = torch.eye(H, device=dev), t(params.b_h), t(params.w_hh).T, torch.zeros(H, device=dev)
        with torch.no_grad():
            emb.weight.copy_(t(params.w_xh))
        inputs = lambda: emb(xb)
        trained = [emb.weight]
        frozen = ("weight_ih_l0", "bias_hh_l0")   # the identity, and the second bias (jrnn has one)
    else:
        layer = params.layers[0]
        rnn = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(V, H, batch_first=True).to(dev)
        w_ih, w_hh = t(layer.w_i).T, t(layer.w_h).T
        if cell == "lstm":
            b_ih, b_hh, frozen = t(layer.b), torch.zeros(4 * H, device=dev), ("bias_hh_l0",)
        else:
            b_ih, b_hh, frozen = t(layer.b_i), t(layer.b_h), ()
            frozen_grad_rows = slice(0, 2 * H)      # b_hr, b_hz stay 0 (Flax's GRUCell has none)
        onehot = torch.nn.functional.one_hot(xb, V).float()
        inputs = lambda: onehot
        trained = []
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(w_ih)
        rnn.bias_ih_l0.copy_(b_ih)
        rnn.weight_hh_l0.copy_(w_hh)
        rnn.bias_hh_l0.copy_(b_hh)
        out.weight.copy_(t(params.w_hy).T)
        out.bias.copy_(t(params.b_y))
    for name in frozen:
        getattr(rnn, name).requires_grad_(False)
    ps = trained + [p for p in (*rnn.parameters(), *out.parameters()) if p.requires_grad]
    mem = [torch.zeros_like(p) for p in ps]
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def loss():
        hs, _ = rnn(inputs())
        return torch.nn.functional.cross_entropy(out(hs).reshape(-1, V), yb.reshape(-1))

    def update():
        for p in ps:
            p.grad = None
        loss().backward()
        if frozen_grad_rows is not None:
            rnn.bias_hh_l0.grad[frozen_grad_rows] = 0.0
        with torch.no_grad():
            for p, m in zip(ps, mem):          # min-char-rnn's clip + Adagrad, in place
                g = p.grad.clamp_(-CLIP, CLIP)
                m.addcmul_(g, g)
                p.addcdiv_(g, (m + EPS).sqrt_(), value=-LR)

    if compiled:
        update = torch.compile(update)

    def train():
        update()
        sync()

    def forward():
        with torch.no_grad():
            loss()
        sync()

    def value():
        with torch.no_grad():
            return float(loss())

    if compiled:   # compiled here, on a copy of the state: a failure leaves the row out, saying why
        saved = [t.detach().clone() for t in (*ps, *mem)]
        t0 = time.perf_counter()
        try:
            train()
        except Exception as e:                 # inductor needs a C++ compiler on a CPU, Triton on a GPU
            return {"unavailable": f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        with torch.no_grad():
            for t, v in zip((*ps, *mem), saved):
                t.copy_(v)
        return {"train": train, "forward": forward, "loss": value, "steps_per_call": 1,
                "compile_s": time.perf_counter() - t0}
    return {"train": train, "forward": forward, "loss": value, "steps_per_call": 1}


# ---- parallel-in-time (DEER) ------------------------------------------------------------------

DEER_CPU = [(T, H, B) for T in (1000, 16000) for H in (8, 32) for B in (1, 16)]
DEER_GPU = [(T, H, B) for T in (1000, 16000, 65536) for H in (8, 32, 128, 256) for B in (1, 16, 64)]
DEER_MAX_JACOBIAN_BYTES = 2**30   # skip configs whose [T, B, H, H] Jacobians exceed 1 GiB


def parallel_methods():
    """The parallel-in-time methods `jrnn.parallel.solve` offers."""
    return list(jrnn.parallel.PARALLEL_METHODS)


def deer_rows(configs, repeats, *, methods=None, budget=None, on_row=None):
    """Forward and forward+backward time of an Elman layer by sequential scan and each
    parallel-in-time method of `jrnn.parallel.solve`, with Newton iterations and fallbacks.
    Stops before a config once `budget` (a `Budget`) is spent."""
    methods = parallel_methods() if methods is None else methods
    cell = jrnn.cells.get("elman")
    rows = []
    for T, H, B in configs:
        if budget is not None and budget.spent():
            break
        params = common.init(common.model("elman", inputs=H, hidden=H, outputs=1), jax.random.key(0), scheme="default")
        xs = jnp.asarray(np.random.RandomState(0).randn(T, B, H).astype(np.float32))
        h0 = jnp.zeros((B, H), jnp.float32)
        jac_bytes = T * B * H * H * 4
        base = None
        for method in ("sequential", *methods):
            if method != "sequential" and jac_bytes > DEER_MAX_JACOBIAN_BYTES:
                row = {"T": T, "H": H, "B": B, "method": method, "skipped": "Jacobians > 1 GiB"}
            else:
                if method == "sequential":
                    hidden = lambda p, x: (jrnn.rnn.run(cell, p, x, h0)[0], None)
                else:
                    hidden = lambda p, x, m=method: jrnn.parallel.evaluate(cell.step, p, cell.project(p, x), h0, method=m)
                fwd = jax.jit(hidden)
                grad = jax.jit(jax.grad(lambda p, x: jnp.sum(hidden(p, x)[0] ** 2)))
                t0 = time.perf_counter()
                _, info = jax.block_until_ready(fwd(params, xs))
                jax.block_until_ready(grad(params, xs))
                compile_s = time.perf_counter() - t0
                f_s = timed(lambda: jax.block_until_ready(fwd(params, xs)), repeats, warm_up=False)
                g_s = timed(lambda: jax.block_until_ready(grad(params, xs)), repeats, warm_up=False)
                row = {"T": T, "H": H, "B": B, "method": method, "compile_s": compile_s,
                       "forward_ms": f_s * 1e3, "train_ms": g_s * 1e3}
                if method == "sequential":
                    base = (f_s, g_s)
                else:
                    row.update(iterations=int(info.iterations), fell_back=bool(info.fell_back),
                               residual=float(info.residual), forward_speedup=base[0] / f_s,
                               train_speedup=base[1] / g_s)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


# ---- plots ------------------------------------------------------------------------------------

# the series of speedup.png this bench computes, per config (`ratios_of`; results.json's
# jrnn_speedup_default_vs_default and jrnn_speedup_vs_best_peer): each library's plain step, and
# each one's fastest row, the peers given the techniques of jrnn's best path
DEFAULT_SERIES = "default/default: fastest peer default step ÷ jrnn default step (above 1×: jrnn faster)"
BEST_PEER_SERIES = "best/best: fastest peer ÷ fastest jrnn, the same techniques (above 1×: jrnn faster)"
PEER_NAMES = {"flax": "Flax", "torch": "PyTorch"}


def config_label(cfg):
    """A config as the plot's axis names it: "B=1 H=100\nT=25 V=80"."""
    B, H, T, V = cfg
    return f"B={B} H={H}\nT={T} V={V}"


def _series(configs, rows, ratios):
    values = []
    for cfg in configs:
        ratio = ratios.get(",".join(map(str, cfg)))
        mine = [r for r in rows if tuple(r["config"]) == tuple(cfg)]
        if ratio is not None:
            values.append(ratio)
        elif not mine:
            values.append("not measured")
        elif all(r["impl"].startswith("jrnn") for r in mine):
            values.append("no peer measured")
        else:
            values.append("no jrnn row")
    return values


def speedup_series(configs, rows, ratios, defaults=None):
    """{BEST_PEER_SERIES: one value per config} (and DEFAULT_SERIES first, given `defaults`): the
    ratios this run measured (`{"B,H,T,V": ratio}`), or why there is none."""
    out = {} if defaults is None else {DEFAULT_SERIES: _series(configs, rows, defaults)}
    out[BEST_PEER_SERIES] = _series(configs, rows, ratios)
    return out


def _where(env):
    """The device in words: "NVIDIA H100 80GB HBM3 (gpu)", or "cpu" alone where that is all it says."""
    return env["backend"] if env["device"].lower() == env["backend"] else f"{env['device']} ({env['backend']})"


def plot_speedups(out, configs, series, *, cell, precision, env, peers=("flax", "torch"), filename="speedup.png"):
    """speedup.png: one group of bars per config (named on the axis), one bar per named series of
    ratios (`{name: value per config}`, see `common.plot_ratios`), from a dashed 1× line; the
    title names the `peers` (implementation names) the run measured."""
    against = " and ".join(PEER_NAMES.get(p, p) for p in peers) or "no peer"
    title = (f"jrnn training step ({cell} LM) vs {against}: speed-up\n"
             f"{_where(env)}, {precision} matmuls, median time per step")
    return common.plot_ratios(out, [config_label(c) for c in configs], series, title=title, filename=filename,
                              xlabel="configuration: B batch, H hidden, T timesteps, V vocabulary",
                              ylabel="speed-up, ×")


def plot_deer(out, configs, rows, env, filename="deer_speedup.png"):
    """deer_speedup.png: per (T, H, B), each parallel method's sequential / parallel time of
    forward + backward (skipped and unmeasured configs say so on the axis)."""
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "sequential"] or parallel_methods()
    by_key = {(r["T"], r["H"], r["B"], r["method"]): r for r in rows}
    series = {}
    for m in methods:
        values = []
        for T, H, B in configs:
            r = by_key.get((T, H, B, m))
            values.append(None if r is None else "skipped: > 1 GiB" if "skipped" in r else r["train_speedup"])
        series[m] = values
    title = (f"Elman layer, forward + backward: parallel-in-time methods vs the sequential scan\n"
             f"{_where(env)}, median time per call; above 1×: the method is faster")
    return common.plot_ratios(out, [f"T={T} H={H}\nB={B}" for T, H, B in configs], series, title=title,
                              filename=filename, xlabel="configuration: T timesteps, H hidden, B batch",
                              ylabel="scan time ÷ method time, ×")


# ---- driver -----------------------------------------------------------------------------------

class Budget:
    """Wall-clock allowance: `spent()` once `seconds` have passed since it was made (never if None)."""

    def __init__(self, seconds=None):
        self.seconds, self.t0 = seconds, time.perf_counter()

    def elapsed(self):
        return time.perf_counter() - self.t0

    def spent(self):
        return self.seconds is not None and self.elapsed() >= self.seconds


# the rows of each library's plain step as its docs show it: the default/default ratio's
DEFAULT_IMPLS = ("jrnn", "flax", "torch")


def implementations(quick, precision="float32", cell="elman", selection="all"):
    """name -> make(params, x, y) -> impl dict (or None to leave the row out).

    Each library's default step (`DEFAULT_IMPLS`) and the techniques jrnn's best path uses, given
    to the JAX peer too: K steps per call in one `lax.scan` and, where there are several devices,
    the batch's rows split over the same mesh; PyTorch gets `torch.compile`.
    selection "gpu": jrnn's default step, jrnn's best path (K steps per call, split over the
    devices where there are several), Flax and Flax's same best path, PyTorch and
    `torch.compile`: the GPU selection of `--gpu-quick`.
    """
    prec = None if precision == "default" else precision
    j = lambda **kw: (lambda p, x, y: jrnn_impl(p, x, y, cell=cell, precision=prec, **kw))
    f = lambda **kw: (lambda p, x, y: flax_impl(p, x, y, cell=cell, **kw))
    several = jax.device_count() > 1
    impls = {}
    for lib, make in (("jrnn", j), ("flax", f)):     # the same techniques for both JAX libraries
        impls[lib] = make()
        if selection == "gpu":
            if several:
                impls[f"{lib} best: data-parallel multi-step (K={MULTI_K})"] = make(multi=True, data_parallel=True)
            else:
                impls[f"{lib} best: multi-step (K={MULTI_K})"] = make(multi=True)
            continue
        impls[f"{lib} multi-step (K={MULTI_K})"] = make(multi=True)
        if several:
            impls[f"{lib} data-parallel"] = make(data_parallel=True)
            impls[f"{lib} data-parallel multi-step (K={MULTI_K})"] = make(data_parallel=True, multi=True)
        if lib == "jrnn" and not quick:
            for u in (1, 4, 8):
                impls[f"jrnn unroll={u}"] = j(unroll=u)
    impls["torch"] = lambda p, x, y: torch_impl(p, x, y, precision, cell=cell)
    impls["torch.compile"] = lambda p, x, y: torch_impl(p, x, y, precision, cell=cell, compiled=True)
    return impls


def ratios_of(rows):
    """{"default/default": fastest peer default step ÷ jrnn's default step, "best/best": fastest
    peer row ÷ fastest jrnn row} in train time per step (above 1: jrnn faster); None where a side
    has no row. Both sides' best rows use the same techniques (see `implementations`)."""
    time = lambda names: min((r["train_us"] for r in rows if r["impl"] in names), default=None)
    mine = [r["train_us"] for r in rows if r["impl"].startswith("jrnn")]
    peers = [r["train_us"] for r in rows if not r["impl"].startswith("jrnn")]
    jd, pd = time(("jrnn",)), time(DEFAULT_IMPLS[1:])
    return {"default/default": pd / jd if jd and pd else None,
            "best/best": min(peers) / min(mine) if peers and mine else None}


def run_config(cfg, impls, repeats, *, cell="elman", forward=True, budget=None, on_row=None, min_repeat_s=None,
               on_skip=None):
    """Measure every implementation on one (B, H, T, V); returns (rows, `ratios_of(rows)`).
    Stops before an implementation once `budget` is spent (the rows so far are kept); an
    implementation that cannot run here (torch.compile without its compiler) is left out and
    `on_skip(name, why)` told."""
    B, H, T, V = cfg
    params = init_params(cell, V, H)
    x, y = make_batch(B, T, V)
    rows = []
    for name, make in impls.items():
        if budget is not None and budget.spent():
            break
        impl = make(params, x, y)
        if impl is None:
            continue
        if "unavailable" in impl:
            if on_skip is not None:
                on_skip(name, impl["unavailable"])
            continue
        t0 = time.perf_counter()
        loss0 = impl["loss"]()                            # compiles the forward
        fwd_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        impl["train"]()                                   # first call: compile / warm-up
        compile_s = time.perf_counter() - t0 + impl.get("compile_s", 0.0)   # torch.compile's, done when made
        loss1 = impl["loss"]()                            # after one call: steps_per_call steps
        k = impl["steps_per_call"]
        step_s = timed(impl["train"], repeats, False, min_repeat_s) / k        # compiled and run above
        fwd_s = timed(impl["forward"], repeats, False, min_repeat_s) if forward else None
        if impl.get("devices", 1) > 1:
            name = f"{name} ({impl['devices']} devices)"
        rows.append({"config": list(cfg), "cell": cell, "impl": name, "compile_s": compile_s,
                     "forward_compile_s": fwd_compile, "train_us": step_s * 1e6,
                     "forward_us": None if fwd_s is None else fwd_s * 1e6,
                     "train_us_per_timestep": step_s * 1e6 / T, "steps_per_call": k,
                     "loss_initial": loss0, "loss_after_first_call": loss1,
                     "loss_after_one_step": loss1 if k == 1 else None})
        if on_row is not None:
            on_row(rows[-1])
    return rows, ratios_of(rows)


def versions():
    v = {"jax": jax.__version__, "jaxlib": __import__("jaxlib").__version__}
    for mod in ("flax", "torch", "optax"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return v


def config_list(text):
    """--configs: "B,H,T,V;B,H,T,V" -> [(B, H, T, V), ...] of positive integers."""
    try:
        configs = [tuple(int(v) for v in c.split(",")) for c in text.split(";")]
    except ValueError:
        configs = None
    if not configs or any(len(c) != 4 or min(c) < 1 for c in configs):
        raise argparse.ArgumentTypeError(f"takes B,H,T,V groups of 4 positive integers separated by ';', got {text!r}")
    return configs


def out_folder(args):
    """Where the run writes: --out, but beside the default runs/bench (which holds the Elman bench)
    runs/bench_deer for --deer and runs/bench_<cell> for --cell lstm or gru."""
    if args.out.name == "bench" and args.deer:
        return args.out.parent / "bench_deer"
    if args.out.name == "bench" and args.cell != "elman":
        return args.out.parent / f"bench_{args.cell}"
    return args.out


def main(argv=None):
    ap = common.parser("bench", __doc__, plots=("speedup.png", "deer_speedup.png"), folder=out_folder)
    ap.add_argument("--cell", choices=CELLS, default="elman", help="recurrent cell of the benchmarked LM")
    ap.add_argument("--quick", action="store_true", help="CPU configs, fewer repeats (about 3 minutes on 2 cores)")
    ap.add_argument("--gpu-quick", action="store_true",
                    help="the six GPU configs for jrnn default, jrnn best, Flax, PyTorch; 2 repeats, no forward "
                         f"timing, --time-budget {GPU_QUICK_BUDGET_S} unless given (sized for 4 minutes on one H100)")
    ap.add_argument("--configs", type=config_list, default=None, help="semicolon-separated B,H,T,V list overriding the defaults")
    ap.add_argument("--repeats", type=common.positive_int, default=5, help="timed repeats per measurement (median reported)")
    ap.add_argument("--only", default=None, help="comma-separated implementation names to run (default: all)")
    ap.add_argument("--precision", choices=PRECISIONS, default="float32",
                    help="float32 matmul precision for every implementation (GPU only: CPUs compute float32)")
    ap.add_argument("--time-budget", type=common.positive_float, default=None,
                    help="seconds: start no new measurement after this; what was measured is kept")
    ap.add_argument("--deer", action="store_true", help="benchmark parallel-in-time DEER / quasi-DEER against the sequential scan")
    args = ap.parse_args(argv)
    if args.only is not None and not args.only.strip(", "):
        # `--only "$IMPLS"` with the variable unset would otherwise run every implementation
        raise ValueError(f"--only names no implementation, got {args.only!r}; e.g. --only jrnn,torch (leave it out "
                         "for all)")
    if args.deer and (args.only or args.configs or args.cell != "elman" or args.gpu_quick):
        raise ValueError("--deer runs its own configurations and methods: drop --only / --configs / --cell / --gpu-quick")
    configs = args.configs
    budget = Budget(GPU_QUICK_BUDGET_S if args.gpu_quick and args.time_budget is None else args.time_budget)
    if args.deer:
        out = out_folder(args)
        try:   # checked before measuring, as --out itself was
            common.out_dir(out)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"--out (--deer writes to {out}): {e}") from None
        configs = DEER_GPU if jax.default_backend() == "gpu" else DEER_CPU
        print(report.DEER_ROW_HEADER, flush=True)
        with common.Timer() as t:
            rows = deer_rows(configs, 3 if args.quick else args.repeats, budget=budget,
                             on_row=lambda r: print(report.deer_row(r), flush=True))
        measured = {(r["T"], r["H"], r["B"]) for r in rows}
        not_measured = [list(c) for c in configs if tuple(c) not in measured]
        plot = plot_deer(out, configs, rows, common.environment())
        common.save_results(out, "bench_deer", {"configs": configs, "quick": args.quick,
                                                "time_budget_s": budget.seconds},
                            {}, t.s, rows=rows, not_measured=not_measured, complete=not not_measured,
                            plot=plot.name)
        common.print_saved(out, plot)
        return rows
    if args.cell != "elman" and args.out.name == "bench":   # the default folder holds the Elman bench
        cell_out = out_folder(args)
        try:
            args.out = common.out_dir(cell_out)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"--out (--cell {args.cell} writes to {cell_out}): {e}") from None
    if configs is None:
        configs = GPU_CONFIGS if (args.gpu_quick or jax.default_backend() == "gpu") else CPU_CONFIGS
    repeats = 2 if args.gpu_quick else 3 if args.quick else args.repeats
    impls = implementations(args.quick, args.precision, args.cell, "gpu" if args.gpu_quick else "all")
    if args.only:
        names = [n.strip() for n in args.only.split(",")]
        chosen = lambda k, n: k.split()[0] == n or k == n
        unknown = [n for n in names if not any(chosen(k, n) for k in impls)]
        if unknown:
            raise ValueError(f"--only: unknown implementation(s) {unknown}; choose from {sorted(impls)} "
                             f"(or a first word: {sorted({k.split()[0] for k in impls})})")
        impls = {k: v for k, v in impls.items() if any(chosen(k, n) for n in names)}
    vs = versions()
    env = common.environment()
    print(f"{env['backend']} / {env['device']} / {env['cpus']} CPUs; " + ", ".join(f"{k} {v}" for k, v in vs.items())
          + f"; cell {args.cell}; matmul precision {args.precision}", flush=True)
    print(report.BENCH_ROW_HEADER, flush=True)
    all_rows, ratios, defaults, skipped = [], {}, {}, []
    config = {"configs": configs, "repeats": repeats, "quick": args.quick, "gpu_quick": args.gpu_quick,
              "cell": args.cell, "precision": args.precision, "time_budget_s": budget.seconds}
    unavailable = {}

    def save(done, final=False, plot=None):
        # complete only once the run has ended with nothing skipped: a run killed mid-way says so
        common.save_results(args.out, "bench", config, {"jrnn_speedup_default_vs_default": defaults,
                                                        "jrnn_speedup_vs_best_peer": ratios},
                            budget.elapsed(), rows=all_rows + done, versions=vs, not_measured=skipped,
                            complete=final and not skipped, plot=plot, unavailable=unavailable)

    def skip(name, why):
        unavailable[name] = why
        print(f"| {', '.join(map(str, cfg))} | {name}: not measured: {why} | | | | | |", flush=True)

    bar = common.progress(len(configs), "bench", args.quiet)
    for cfg in configs:
        if budget.spent():
            skipped.append(list(cfg))
            continue
        partial = []   # this config's rows so far: each reaches results.json when measured
        with jax.default_matmul_precision(None if args.precision == "default" else args.precision):  # read when jit traces
            rows, both = run_config(cfg, impls, repeats, cell=args.cell, forward=not args.gpu_quick, budget=budget,
                                    min_repeat_s=GPU_QUICK_REPEAT_S if args.gpu_quick else None, on_skip=skip,
                                    on_row=lambda r: (partial.append(r), print(report.bench_row(r), flush=True),
                                                      save(partial)))
        all_rows += rows
        key = ",".join(map(str, cfg))
        defaults[key], ratios[key] = both["default/default"], both["best/best"]
        if len(rows) < len(impls) - len(unavailable) and budget.spent():
            skipped.append(list(cfg))
        save([])
        if any(v is not None for v in both.values()):
            print(report.bench_ratio_row(cfg, both), flush=True)
        bar.update(1)
    bar.close()
    peers = [n for n in dict.fromkeys(r["impl"].split()[0].split(".")[0] for r in all_rows) if n != "jrnn"]
    plot = plot_speedups(args.out, configs, speedup_series(configs, all_rows, ratios, defaults), cell=args.cell,
                         precision=args.precision, env=env, peers=peers)
    save([], final=True, plot=plot.name)
    if skipped:
        print(f"time budget of {budget.seconds:.0f} s spent: not (fully) measured: {skipped}", flush=True)
    common.print_saved(args.out, plot)
    return all_rows


run = common.cli(main)

if __name__ == "__main__":
    run()
