"""Word-level sentiment classifier: many-to-one tanh RNN, per-sentence SGD.

The recipe of the sentiment notebook (source notebook 000) with its gradient fixed (its backward pass used Whh where Whh.T belongs):
58 training / 20 test sentences, sorted vocabulary, H=64, weights randn/1000, SGD lr 2e-2 with
elementwise clip +-1, one update per sentence, 1000 epochs, reshuffled every epoch. Several
random seeds train at once under `jax.vmap`; the notebook's numpy loop (fixed) is timed in the same
command.

The runs are independent, so on a CPU each core gets its own XLA device and the vmapped seeds
are split across them (`--devices`); `--devices 1` keeps everything on one. --cell lstm|gru
runs the same recipe with a gated cell (its own init instead of randn/1000); --bidirectional
reads each sentence both ways (the class from the forward state at the last word and the
backward state at the first; the cell's own init).
"""

from __future__ import annotations

import functools

from experiments import one_cpu_device_per_core

one_cpu_device_per_core()

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from experiments import baselines, common

# hyperparameters (the sentiment notebook's)
HIDDEN = 64
INIT_SCALE = 1e-3     # randn / 1000
LEARNING_RATE = 2e-2
CLIP = 1.0            # elementwise, as the seed's np.clip(d, -1, 1)
EPOCHS_PER_CALL = 50  # epochs per jitted call (progress-bar granularity)

TRAIN = {
    "good": True, "bad": False, "happy": True, "sad": False, "not good": False, "not bad": True,
    "not happy": False, "not sad": True, "very good": True, "very bad": False, "very happy": True,
    "very sad": False, "i am happy": True, "this is good": True, "i am bad": False,
    "this is bad": False, "i am sad": False, "this is sad": False, "i am not happy": False,
    "this is not good": False, "i am not bad": True, "this is not sad": True,
    "i am very happy": True, "this is very good": True, "i am very bad": False,
    "this is very sad": False, "this is very happy": True, "i am good not bad": True,
    "this is good not bad": True, "i am bad not good": False, "i am good and happy": True,
    "this is not good and not happy": False, "i am not at all good": False,
    "i am not at all bad": True, "i am not at all happy": False, "this is not at all sad": True,
    "this is not at all happy": False, "i am good right now": True, "i am bad right now": False,
    "this is bad right now": False, "i am sad right now": False, "i was good earlier": True,
    "i was happy earlier": True, "i was bad earlier": False, "i was sad earlier": False,
    "i am very bad right now": False, "this is very good right now": True,
    "this is very sad right now": False, "this was bad earlier": False,
    "this was very good earlier": True, "this was very bad earlier": False,
    "this was very happy earlier": True, "this was very sad earlier": False,
    "i was good and not bad earlier": True, "i was not good and not happy earlier": False,
    "i am not at all bad or sad right now": True, "i am not at all good or happy right now": False,
    "this was not happy and not good earlier": False,
}
TEST = {
    "this is happy": True, "i am good": True, "this is not happy": False, "i am not good": False,
    "this is not bad": True, "i am not sad": True, "i am very good": True, "this is very bad": False,
    "i am very sad": False, "this is bad not good": False, "this is good and happy": True,
    "i am not good and not happy": False, "i am not at all sad": True,
    "this is not at all good": False, "this is not at all bad": True, "this is good right now": True,
    "this is sad right now": False, "this is very bad right now": False,
    "this was good earlier": True, "i was not happy and not good earlier": False,
}


def vocabulary():
    """Sorted word list of the training sentences (the seed's list(set(...)) was hash-ordered)."""
    return sorted({w for s in TRAIN for w in s.split(" ")})


def encode(sentences: dict, vocab: list, T: int):
    """Right-padded ids [N, T], mask [N, T] and labels [N]."""
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.zeros((len(sentences), T), np.int32)
    mask = np.zeros((len(sentences), T), bool)
    for n, s in enumerate(sentences):
        words = [index[w] for w in s.split(" ")]
        ids[n, :len(words)], mask[n, :len(words)] = words, True
    return ids, mask, np.array([int(v) for v in sentences.values()], np.int32)


T_MAX = max(len(s.split(" ")) for s in list(TRAIN) + list(TEST))  # 9 words


def make_model(cell, vocab_size, bidirectional=False):
    """The seed's many-to-one network (two classes) with any cell, one or both directions."""
    return common.model(cell, inputs=vocab_size, hidden=HIDDEN, outputs=2, bidirectional=bidirectional)


def init(model, key):
    """The seed's randn/1000 for its Elman network; a gated or bidirectional model's own init."""
    return common.init(model, key, scheme="normal", scale=INIT_SCALE)


def loss_fn(model, params, batch, carry):
    """Cross-entropy of the class read from the last real step of one padded sentence."""
    x, mask, label = batch
    logits, _ = model.apply_last(params, x, mask=mask)
    return jrnn.losses.softmax_cross_entropy(logits, label), carry


OPTIMIZER = jrnn.optim.sgd(LEARNING_RATE, clip_value=CLIP)


@functools.partial(jax.jit, static_argnames=("model", "n_epochs"))
def train_epochs(model, params, opt_state, key, data, *, n_epochs):
    """n_epochs of per-sentence SGD, reshuffled each epoch. Returns mean train loss per epoch."""
    def epoch(state, k):
        params, opt_state = state
        perm = jax.random.permutation(k, data[0].shape[0])
        step = common.multi_step(loss_fn, model, OPTIMIZER)
        params, opt_state, m, _ = step(params, opt_state, jax.tree.map(lambda a: a[perm], data))
        return (params, opt_state), jnp.mean(m["loss"])

    (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, n_epochs))
    return params, opt_state, losses


@functools.partial(jax.jit, static_argnames=("model", "n_epochs"))
def train_seeds(model, params, opt_state, keys, data, *, n_epochs):
    """All seeds at once, one compiled program: params/opt_state/keys carry a leading [S] axis."""
    return jax.vmap(lambda p, s, k: train_epochs(model, p, s, k, data, n_epochs=n_epochs))(params, opt_state, keys)


def accuracy(model, params, data):
    x, mask, labels = data
    logits, _ = jax.vmap(lambda xi, mi: model.apply_last(params, xi, mask=mi))(x, mask)
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def seed_sharding(n_seeds, devices=None):
    """(runs after padding to a multiple of the devices used, sharding of the seed axis)."""
    n = max(1, min(len(jax.devices()), n_seeds, devices or n_seeds))
    mesh = jax.make_mesh((n,), ("seeds",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n])
    return -(-n_seeds // n) * n, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds"))


def train(seeds, epochs, quiet=True, devices=None, cell="elman", bidirectional=False):
    """Train one model per seed, all at once under vmap, the seed axis split over `devices`
    devices (default: all). Returns (params, losses [S, E], wall s) for the S seeds asked."""
    vocab = vocabulary()
    model = make_model(cell, len(vocab), bidirectional)
    train_data = encode(TRAIN, vocab, T_MAX)
    n_runs, sharding = seed_sharding(len(seeds), devices)
    # padding runs (extra seeds, so every device gets as many) are trained and dropped
    runs = list(seeds) + [max(seeds) + 1 + i for i in range(n_runs - len(seeds))]
    keys = jnp.stack([jax.random.key(s) for s in runs])
    params = jax.vmap(lambda k: init(model, k))(keys)
    opt_state = jax.vmap(OPTIMIZER.init)(params)
    shuffle_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    params, opt_state, shuffle_keys = jax.device_put((params, opt_state, shuffle_keys), sharding)
    bar = common.progress(epochs, f"sentiment x{len(seeds)} seeds", quiet)
    history = []
    with common.Timer() as t:
        done = 0
        while done < epochs:
            n = min(EPOCHS_PER_CALL, epochs - done)
            ks = jax.vmap(jax.random.fold_in, in_axes=(0, None))(shuffle_keys, done)
            params, opt_state, losses = train_seeds(model, params, opt_state, ks, train_data, n_epochs=n)
            history.append(np.asarray(losses)[:len(seeds)])
            done += n
            bar.update(n)
            bar.set_postfix(loss=f"{float(history[-1][:, -1].mean()):.4f}")
    bar.close()
    params = jax.tree.map(lambda a: a[:len(seeds)], params)
    return params, np.concatenate(history, axis=1), t.s


def main(argv=None):
    ap = common.parser("sentiment", __doc__, epochs=1000, plots=("train_loss.png",))
    ap.add_argument("--seeds", type=common.positive_int, default=5, help="independent runs, trained together under vmap")
    ap.add_argument("--devices", type=common.positive_int, default=None,
                    help="devices to split the seeds over (default: all; on CPU one per core)")
    ap.add_argument("--cell", choices=sorted(jrnn.cells.CELLS), default="elman", help="recurrent cell (seed: elman)")
    ap.add_argument("--bidirectional", action="store_true", help="read each sentence both ways (seed: one way)")
    ap.add_argument("--baseline-epochs", type=common.non_negative_int, default=20, help="epochs of the numpy loop timed for the ratio (0: skip)")
    args = ap.parse_args(argv)
    # padding runs (see train) take seeds past the last one, up to one per device
    common.check_seed_range(args, args.seeds + len(jax.devices()))
    seeds = list(range(args.seed, args.seed + args.seeds))
    params, losses, wall = train(seeds, args.epochs, args.quiet, args.devices, args.cell, args.bidirectional)
    model = make_model(args.cell, len(vocabulary()), args.bidirectional)
    vocab = vocabulary()
    test_data, train_data = encode(TEST, vocab, T_MAX), encode(TRAIN, vocab, T_MAX)
    test_acc = np.asarray(jax.vmap(lambda p: accuracy(model, p, test_data))(params))
    train_acc = np.asarray(jax.vmap(lambda p: accuracy(model, p, train_data))(params))
    metrics = {"test_accuracy": test_acc, "train_accuracy": train_acc,
               "test_perfect_runs": int(np.sum(test_acc == 1.0)), "min_test_accuracy": float(test_acc.min()),
               "final_train_loss": losses[:, -1], "epochs_per_s_all_seeds": args.epochs * len(seeds) / wall}
    if args.baseline_epochs > 0 and args.cell == "elman" and not args.bidirectional:   # the numpy loop is the seed's Elman
        train(seeds, EPOCHS_PER_CALL, devices=args.devices)  # compile the same shapes, then time a steady state
        _, _, wall_jit = train(seeds, args.epochs, devices=args.devices)
        one = init(model, jax.random.key(args.seed))
        sentences = [(x[m].tolist(), int(y)) for x, m, y in zip(*train_data)]
        with common.Timer() as tn:
            baselines.sentiment_numpy(one, sentences, args.baseline_epochs)
        metrics.update(jrnn_epochs_per_s=args.epochs * len(seeds) / wall_jit,
                       numpy_epochs_per_s=args.baseline_epochs / tn.s)
        metrics["speedup_vs_numpy"] = metrics["jrnn_epochs_per_s"] / metrics["numpy_epochs_per_s"]
    n_runs, sharding = seed_sharding(len(seeds), args.devices)
    n_devices = sharding.mesh.devices.size
    config = {"cell": args.cell, "bidirectional": args.bidirectional, "hidden": HIDDEN, "init_scale": INIT_SCALE, "lr": LEARNING_RATE, "clip": CLIP,
              "epochs": args.epochs, "seeds": seeds, "vocab": vocab, "devices": n_devices,
              "runs_trained_incl_padding": n_runs, "baseline_epochs": args.baseline_epochs,
              "epochs_per_call": EPOCHS_PER_CALL}
    xs = np.arange(1, args.epochs + 1)
    model_name = f"{'bidirectional ' if args.bidirectional else ''}{args.cell} RNN, H={HIDDEN}"
    plot = common.plot_curves(args.out, {f"seed {s}": (xs, losses[i]) for i, s in enumerate(seeds)},
                              xlabel="epoch", ylabel="mean train loss, nats per sentence",
                              title=f"sentiment classifier ({model_name}), per-sentence SGD lr {LEARNING_RATE:g}\n"
                                    f"on the {len(TRAIN)} training sentences",
                              refs={"a 50/50 guess: ln 2": np.log(2)}, filename="train_loss.png")
    common.save_results(args.out, "sentiment", config, metrics, wall, plot=plot.name)
    for s, a, b in zip(seeds, test_acc, train_acc):
        print(f"seed {s}: test accuracy {a:.2f} ({int(round(a * 20))}/20), train accuracy {b:.3f}")
    print(f"perfect test accuracy in {metrics['test_perfect_runs']} of {len(seeds)} seeds; min {metrics['min_test_accuracy']:.2f}")
    if "speedup_vs_numpy" in metrics:
        print(f"speed: jrnn {metrics['jrnn_epochs_per_s']:.0f} epochs/s ({len(seeds)} seeds under vmap on {n_devices} "
              f"device(s), counting only the {len(seeds)} asked), "
              f"numpy loop {metrics['numpy_epochs_per_s']:.1f} epochs/s -> {metrics['speedup_vs_numpy']:.1f}x")
    common.print_saved(args.out, plot)
    return metrics


run = common.cli(main)

if __name__ == "__main__":
    run()
