"""The seeds' numpy training loops (bugs fixed), for timing and equivalence against jrnn.

These are the baselines the experiments measure themselves against in the same command; they
follow the seeds' code shape (column vectors, one-hot inputs, Python loops over time).
"""

from __future__ import annotations

import numpy as np


def minchar_loss_fun(inputs, targets, hprev, Wxh, Whh, Why, bh, by, *, as_written=False):
    """min-char-rnn's lossFun (source notebook 003), unchanged in substance.

    Karpathy's published lossFun accumulates `dby += dy`; the notebook as written leaves that line
    out, so its dby is 0 and by never moves. `as_written=True` leaves it out too.
    """
    vocab_size = Wxh.shape[1]
    xs, hs, ys, ps = {}, {}, {}, {}
    hs[-1] = np.copy(hprev)
    loss = 0.0
    for t in range(len(inputs)):
        xs[t] = np.zeros((vocab_size, 1))
        xs[t][inputs[t]] = 1
        hs[t] = np.tanh(Wxh @ xs[t] + Whh @ hs[t - 1] + bh)
        ys[t] = Why @ hs[t] + by
        ps[t] = np.exp(ys[t]) / np.sum(np.exp(ys[t]))
        loss += -np.log(ps[t][targets[t], 0])
    dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
    dbh, dby = np.zeros_like(bh), np.zeros_like(by)
    dhnext = np.zeros_like(hs[0])
    for t in reversed(range(len(inputs))):
        dy = np.copy(ps[t])
        dy[targets[t]] -= 1
        dWhy += dy @ hs[t].T
        if not as_written:
            dby += dy
        dh = Why.T @ dy + dhnext
        dhraw = (1 - hs[t] * hs[t]) * dh
        dbh += dhraw
        dWxh += dhraw @ xs[t].T
        dWhh += dhraw @ hs[t - 1].T
        dhnext = Whh.T @ dhraw
    for dparam in [dWxh, dWhh, dWhy, dbh, dby]:
        np.clip(dparam, -5, 5, out=dparam)
    return loss, dWxh, dWhh, dWhy, dbh, dby, hs[len(inputs) - 1]


def minchar_numpy(params, ids, n_iters, *, seq_length=25, learning_rate=0.1, as_written=False, trace=None):
    """min-char-rnn's training loop from jrnn-layout initial params; returns per-iteration losses.

    `as_written=True`: the notebook's lossFun as written (dby never accumulated, by stays 0).
    `trace`: a list to which each iteration appends its exact state, in the seed's column layout:
    {"p": data pointer, "reset": hprev zeroed here, "before": state, "loss", "after": state},
    a state being {"params": [Wxh, Whh, Why, bh, by], "mems": [mWxh, ...], "h": hprev} (copies).
    """
    Wxh, Whh, Why = (np.array(params.w_xh, np.float64).T, np.array(params.w_hh, np.float64).T,
                     np.array(params.w_hy, np.float64).T)
    bh, by = np.array(params.b_h, np.float64)[:, None], np.array(params.b_y, np.float64)[:, None]
    mWxh, mWhh, mWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
    mbh, mby = np.zeros_like(bh), np.zeros_like(by)
    losses = []
    n, p = 0, 0
    snapshot = lambda: {"params": [np.copy(a) for a in (Wxh, Whh, Why, bh, by)],
                        "mems": [np.copy(a) for a in (mWxh, mWhh, mWhy, mbh, mby)], "h": np.copy(hprev)}
    while n < n_iters:
        reset = p + seq_length + 1 > len(ids) or n == 0
        if reset:
            hprev = np.zeros((Whh.shape[0], 1))
            p = 0
        if trace is not None:
            trace.append({"p": p, "reset": reset, "before": snapshot()})
        inputs = ids[p:p + seq_length]
        targets = ids[p + 1:p + seq_length + 1]
        loss, dWxh, dWhh, dWhy, dbh, dby, hprev = minchar_loss_fun(inputs, targets, hprev, Wxh, Whh, Why, bh, by,
                                                                    as_written=as_written)
        losses.append(loss)
        for param, dparam, mem in zip([Wxh, Whh, Why, bh, by], [dWxh, dWhh, dWhy, dbh, dby],
                                      [mWxh, mWhh, mWhy, mbh, mby]):
            mem += dparam * dparam
            param += -learning_rate * dparam / np.sqrt(mem + 1e-8)
        if trace is not None:
            trace[-1].update(loss=loss, after=snapshot())
        p += seq_length
        n += 1
    return np.array(losses)


def sentiment_numpy(params, sentences, n_epochs, *, lr=2e-2, clip=1.0, seed=0):
    """Seed 000's per-sentence SGD loop with its bug fixed (Whh.T); returns train losses per epoch.

    `sentences` is a list of (token ids, label).
    """
    Wxh, Whh, Why = (np.array(params.w_xh, np.float64).T, np.array(params.w_hh, np.float64).T,
                     np.array(params.w_hy, np.float64).T)
    bh, by = np.array(params.b_h, np.float64)[:, None], np.array(params.b_y, np.float64)[:, None]
    D = Wxh.shape[1]
    rng = np.random.RandomState(seed)
    history = []
    for _ in range(n_epochs):
        total = 0.0
        for i in rng.permutation(len(sentences)):
            ids, target = sentences[i]
            xs = [np.eye(D)[j][:, None] for j in ids]
            hs = {0: np.zeros((Whh.shape[0], 1))}
            h = hs[0]
            for t, x in enumerate(xs):
                h = np.tanh(Wxh @ x + Whh @ h + bh)
                hs[t + 1] = h
            y = Why @ h + by
            probs = np.exp(y - y.max()) / np.sum(np.exp(y - y.max()))
            total -= np.log(probs[target, 0])
            d_y = probs
            d_y[target] -= 1
            d_Why, d_by = d_y @ hs[len(xs)].T, d_y
            d_Whh, d_Wxh, d_bh = np.zeros_like(Whh), np.zeros_like(Wxh), np.zeros_like(bh)
            d_h = Why.T @ d_y
            for t in reversed(range(len(xs))):
                temp = (1 - hs[t + 1] ** 2) * d_h
                d_bh += temp
                d_Whh += temp @ hs[t].T
                d_Wxh += temp @ xs[t].T
                d_h = Whh.T @ temp                       # the seed had Whh @ temp
            for d in [d_Wxh, d_Whh, d_Why, d_bh, d_by]:
                np.clip(d, -clip, clip, out=d)
            Whh -= lr * d_Whh
            Wxh -= lr * d_Wxh
            Why -= lr * d_Why
            bh -= lr * d_bh
            by -= lr * d_by
        history.append(total / len(sentences))
    return history
