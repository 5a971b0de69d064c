"""Hand-written backpropagation through time for the Elman RNN: the float64 numpy oracle.

This module imports numpy only and shares no code with the JAX path, so that
`jax.grad(scan forward) == bptt.*` is a real check. It is written the way the source notebooks derive it,
with column vectors and `W @ h` (the JAX path stores the transposes, `h @ W`):

    z_t = W_xh x_t + W_hh h_{t-1} + b_h        h_t = act(z_t)
    y_t = W_hy h_t + b_y                       p_t = softmax(y_t)
    L   = sum_t -log p_t[target_t]

    dy_t     = p_t - onehot(target_t)                 # softmax + cross-entropy
    dh_t     = W_hy^T dy_t + dh_next                  # readout + the future
    dz_t     = act'(h_t) * dh_t                       # e.g. (1 - h_t^2) for tanh
    dW_xh   += dz_t x_t^T ;  dW_hh += dz_t h_{t-1}^T ;  db_h += dz_t
    dh_next  = W_hh^T dz_t                            # into h_{t-1}; at t = 0 this is dL/dh0

Bugs of the seeds that this reference fixes (and that tests would catch):

* 000: the recurrent back-propagation `d_h = Whh @ temp` must be `Whh.T @ temp`.
* 001: `np.zeros_like((hidden_size, 1))` makes a 2-vector, not a zero state; tanh' is applied to
  the already-activated state (`tanh(h, derivative=True)` = 1 - tanh(h)^2, but it needs
  1 - h^2); `dW` is overwritten at each step instead of accumulated; `dV` pairs dh_raw with
  h[t] where it needs h[t-1]; `dhb` is a typo for `dbh`; the cross-entropy takes the mean of
  log p over all classes (`+ epsilon * y`) instead of -log p[target]; and
  `backward_propagation` is called with its arguments out of order.
* 002: inside the truncated loop it applies tanh' at h[k] where dz_{k-1} needs h[k-1]
  (its gradient misses finite differences by ~1e-2; `truncated` below matches them).
* 003b (min-char-rnn): its `lossFun` never accumulates `dby += dy`, so the readout bias b_y keeps
  its initial 0 for ever. Karpathy's published min-char-rnn, this reference (`db_y += dy_t`) and
  `experiments.minchar` train b_y; `python -m experiments.minchar --as-written` runs the notebook as
  written (b_y's gradient zeroed, b_y exactly 0).

All functions take Elman parameters as any object with attributes `w_xh [D, H]`,
`w_hh [H, H]`, `b_h [H]`, `w_hy [H, V]`, `b_y [V]` (e.g. `jrnn.ElmanParams`), and return
gradients as a dict with the same names and shapes, plus dL/dh0.
"""

from __future__ import annotations

import numpy as np

__all__ = [   # the public API, documented in the API reference
    "forward",
    "many_to_many",
    "many_to_one",
    "truncated",
    "cell_truncated",
    "lstm_many_to_many",
    "gru_many_to_many",
]


def _act(name):
    """Activation and its derivative written in terms of the *output* h = act(z)."""
    if name == "tanh":
        return np.tanh, lambda h: 1.0 - h * h
    if name == "sigmoid":
        return (lambda z: 1.0 / (1.0 + np.exp(-z))), (lambda h: h * (1.0 - h))
    if name == "relu":
        return (lambda z: np.maximum(z, 0.0)), (lambda h: (h > 0).astype(h.dtype))
    raise ValueError(f"unknown activation {name!r}")


def _columns(params):
    """Seed-style float64 matrices: Wxh [H, D], Whh [H, H], bh [H], Why [V, H], by [V]."""
    f = lambda a: np.asarray(a, dtype=np.float64)
    return f(params.w_xh).T, f(params.w_hh).T, f(params.b_h), f(params.w_hy).T, f(params.b_y)


def _one_hot_inputs(inputs, D):
    x = np.asarray(inputs)
    if np.issubdtype(x.dtype, np.integer):
        return np.eye(D)[x]  # [T, D]
    return x.astype(np.float64)


def _softmax(y):
    e = np.exp(y - y.max())  # shift for stability; softmax is shift-invariant
    return e / e.sum()


def _nll(y, target):
    """-log softmax(y)[target] via log-sum-exp, finite even where p underflows to 0."""
    m = y.max()
    return m + np.log(np.sum(np.exp(y - m))) - y[target]


def forward(params, inputs, h0=None, activation="tanh"):
    """Forward pass. Returns (xs [T, D], hs [T+1, H] with hs[0] = h0, logits ys [T, V])."""
    Wxh, Whh, bh, Why, by = _columns(params)
    act, _ = _act(activation)
    xs = _one_hot_inputs(inputs, Wxh.shape[1])
    T, H = len(xs), Whh.shape[0]
    hs = np.zeros((T + 1, H))
    hs[0] = np.zeros(H) if h0 is None else np.asarray(h0, np.float64)
    ys = np.zeros((T, Why.shape[0]))
    for t in range(T):
        hs[t + 1] = act(Wxh @ xs[t] + Whh @ hs[t] + bh)
        ys[t] = Why @ hs[t + 1] + by
    return xs, hs, ys


def _forward_loss(params, inputs, targets, h0, activation):
    """Forward pass and L = sum_t -log p_t[target_t]: (xs, hs, ps, loss)."""
    xs, hs, ys = forward(params, inputs, h0, activation)
    loss = sum(_nll(y, target) for y, target in zip(ys, targets))
    return xs, hs, [_softmax(y) for y in ys], loss


def _grads_dict(dWxh, dWhh, dbh, dWhy, dby):
    # back to the library's row-vector layout
    return {"w_xh": dWxh.T, "w_hh": dWhh.T, "b_h": dbh, "w_hy": dWhy.T, "b_y": dby}


def many_to_many(params, inputs, targets, h0=None, activation="tanh"):
    """Full BPTT of L = sum_t CE(p_t, target_t).

    Returns (loss, grads dict, dL/dh0 [H]).
    """
    Wxh, Whh, bh, Why, by = _columns(params)
    _, dact = _act(activation)
    xs, hs, ps, loss = _forward_loss(params, inputs, targets, h0, activation)
    T = len(xs)
    dWxh, dWhh, dbh, dWhy, dby = (np.zeros_like(a) for a in (Wxh, Whh, bh, Why, by))
    dh_next = np.zeros_like(bh)
    for t in reversed(range(T)):
        h, h_prev = hs[t + 1], hs[t]
        dy = ps[t].copy()
        dy[targets[t]] -= 1                     # backprop into y: p - onehot
        dWhy += np.outer(dy, h)
        dby += dy
        dh = Why.T @ dy + dh_next               # backprop into h: readout + the future
        dz = dact(h) * dh                       # backprop through the nonlinearity at h_t
        dbh += dz
        dWxh += np.outer(dz, xs[t])
        dWhh += np.outer(dz, h_prev)            # pairs dz_t with h_{t-1} (notebook 001 used h_t)
        dh_next = Whh.T @ dz                    # Whh transposed (notebook 000 forgot the .T)
    return loss, _grads_dict(dWxh, dWhh, dbh, dWhy, dby), dh_next


def many_to_one(params, inputs, target, h0=None, activation="tanh"):
    """BPTT of L = CE(softmax(W_hy h_T + b_y), target), the last state only (the sentiment classifier, notebook 000).

    Returns (loss, grads dict, dL/dh0 [H]).
    """
    Wxh, Whh, bh, Why, by = _columns(params)
    _, dact = _act(activation)
    xs, hs, _ = forward(params, inputs, h0, activation)
    T = len(xs)
    y = Why @ hs[T] + by
    loss, p = _nll(y, target), _softmax(y)
    dy = p.copy()
    dy[target] -= 1
    dWhy, dby = np.outer(dy, hs[T]), dy
    dWxh, dWhh, dbh = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(bh)
    dh = Why.T @ dy                              # only the last state sees the loss
    for t in reversed(range(T)):
        dz = dact(hs[t + 1]) * dh
        dbh += dz
        dWxh += np.outer(dz, xs[t])
        dWhh += np.outer(dz, hs[t])
        dh = Whh.T @ dz
    return loss, _grads_dict(dWxh, dWhh, dbh, dWhy, dby), dh


def truncated(params, inputs, targets, h0=None, *, k1, k2, activation="tanh", mask=None):
    """Williams & Peng TBPTT(k1, k2) gradient of L = sum_t CE(p_t, target_t) over one chunk.

    The chunk is cut into blocks of k1 steps. The losses of a block ending at step e are
    back-propagated through the k2 hidden states h_e, ..., h_{e-k2+1} and no further (into h0
    only if that window reaches step 0). Gradients of all blocks are summed (one update per
    chunk). The truncated-BPTT notebook (002) is k1 = 1, k2 = k + 1: the loss at t reaches at most k + 1 states.
    min-char-rnn is k1 = k2 = T, i.e. `many_to_many`.

    mask: optional `[T]` of 0/1. A padded step leaves the state as it was (h_t = h_{t-1}) and
    has no loss; the gradient passes through it unchanged, and it still counts as one of
    the k2 steps of a window.

    Returns (loss, grads dict, dL/dh0 [H]).
    """
    if not (1 <= k1 <= k2):
        raise ValueError(f"TBPTT needs 1 <= k1 <= k2, got k1={k1}, k2={k2}")
    Wxh, Whh, bh, Why, by = _columns(params)
    act, dact = _act(activation)
    xs = _one_hot_inputs(inputs, Wxh.shape[1])
    T = len(xs)
    m = np.ones(T, bool) if mask is None else np.asarray(mask).astype(bool)
    hs = np.zeros((T + 1, len(bh)))
    hs[0] = 0.0 if h0 is None else np.asarray(h0, np.float64)
    for t in range(T):
        hs[t + 1] = act(Wxh @ xs[t] + Whh @ hs[t] + bh) if m[t] else hs[t]
    ys = [Why @ hs[t + 1] + by for t in range(T)]
    loss = sum(_nll(ys[t], targets[t]) for t in range(T) if m[t])
    dWxh, dWhh, dbh, dWhy, dby = (np.zeros_like(a) for a in (Wxh, Whh, bh, Why, by))
    dh0 = np.zeros_like(bh)
    for t in reversed(range(T)):
        if not m[t]:
            continue                             # padding has no loss
        end = min((t // k1 + 1) * k1, T) - 1     # last step of t's block
        first = max(end - k2 + 1, 0)             # oldest step the block may reach
        dy = _softmax(ys[t])
        dy[targets[t]] -= 1
        dWhy += np.outer(dy, hs[t + 1])
        dby += dy
        dh = Why.T @ dy                          # into h_t
        for k in reversed(range(first, t + 1)):  # hs[k + 1] is h_k, hs[k] is h_{k-1}
            if m[k]:                             # a padded step passes dh through unchanged
                dz = dact(hs[k + 1]) * dh        # act' at h_k, the state step k made (notebook 002: the next one)
                dbh += dz
                dWxh += np.outer(dz, xs[k])
                dWhh += np.outer(dz, hs[k])
                dh = Whh.T @ dz                  # into h_{k-1}
        if first == 0:
            dh0 += dh                            # the window reached the initial state
    return loss, _grads_dict(dWxh, dWhh, dbh, dWhy, dby), dh0


# ---- gated cells ------------------------------------------------------------------------------
# Same conventions, for a language model of one LSTM or GRU layer and a linear readout. Weights
# are taken in the library's row layout (w_i [D, G*H], w_h [H, G*H], gates in PyTorch order) and
# used as such: z = x @ w_i + h @ w_h + b, so the backward reads dW_i += x^T dz.

def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


def _lstm_fwd(P, carry, x):
    w_i, w_h, b = P["w_i"], P["w_h"], P["b"]
    h, c = carry
    H = w_h.shape[0]
    z = x @ w_i + h @ w_h + b
    i, f, g, o = _sigmoid(z[:H]), _sigmoid(z[H:2 * H]), np.tanh(z[2 * H:3 * H]), _sigmoid(z[3 * H:])
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    return (h_new, c_new), (x, h, c, i, f, g, o, c_new)


def _lstm_bwd(P, cache, dcarry, grads):
    x, h, c, i, f, g, o, c_new = cache
    dh, dc_next = dcarry
    tc = np.tanh(c_new)
    do = dh * tc
    dc = dh * o * (1 - tc * tc) + dc_next
    di, dg, df = dc * g, dc * i, dc * c
    dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)])
    grads["w_i"] += np.outer(x, dz)
    grads["w_h"] += np.outer(h, dz)
    grads["b"] += dz
    return P["w_h"] @ dz, dc * f


def _gru_fwd(P, carry, x):
    w_i, w_h, b_i, b_h = P["w_i"], P["w_h"], P["b_i"], P["b_h"]
    (h,) = carry
    H = w_h.shape[0]
    u, a = x @ w_i + b_i, h @ w_h + b_h
    r, z = _sigmoid(u[:H] + a[:H]), _sigmoid(u[H:2 * H] + a[H:2 * H])
    n = np.tanh(u[2 * H:] + r * a[2 * H:])
    return ((1 - z) * n + z * h,), (x, h, r, z, n, a)


def _gru_gates_bwd(cache, dh):
    """The GRU's gate backward, shared by the dense and the elementwise cell: (du = dL/d(x w_i +
    b_i), da = dL/d(recurrent pre-activations a), the direct dh_prev = dh * z)."""
    x, h, r, z, n, a = cache
    H = len(h)
    dn, dz, dh_prev = dh * (1 - z), dh * (h - n), dh * z
    dn_pre = dn * (1 - n * n)
    dr_pre, dz_pre = dn_pre * a[2 * H:] * r * (1 - r), dz * z * (1 - z)
    return np.concatenate([dr_pre, dz_pre, dn_pre]), np.concatenate([dr_pre, dz_pre, dn_pre * r]), dh_prev


def _gru_bwd(P, cache, dcarry, grads):
    x, h = cache[:2]
    du, da, dh_prev = _gru_gates_bwd(cache, dcarry[0])
    grads["w_i"] += np.outer(x, du)
    grads["b_i"] += du
    grads["w_h"] += np.outer(h, da)
    grads["b_h"] += da
    return (dh_prev + P["w_h"] @ da,)


def _elman_fwd(P, carry, x):
    (h,) = carry
    h_new = np.tanh(x @ P["w_xh"] + h @ P["w_hh"] + P["b_h"])
    return (h_new,), (x, h, h_new)


def _elman_bwd(P, cache, dcarry, grads):
    x, h, h_new = cache
    dz = (1 - h_new * h_new) * dcarry[0]
    grads["w_xh"] += np.outer(x, dz)
    grads["w_hh"] += np.outer(h, dz)
    grads["b_h"] += dz
    return (P["w_hh"] @ dz,)


# ---- cells with elementwise recurrence (jrnn.cells.paragru, paralstm, mingru) -------------------
# The recurrent weights are vectors acting per unit (u_h [G*H]: u_g * h, not h @ W_g), so each
# gate's recurrent gradient is a product, not an outer product, and dh_prev a sum over gates.

def _gates_of(v, n):
    """`v` [n*H] split into its n gate blocks of H."""
    return np.split(v, n)


def _paragru_fwd(P, carry, x):
    w_i, u_h, b_i, b_h = P["w_i"], P["u_h"], P["b_i"], P["b_h"]
    (h,) = carry
    H = len(h)
    u, a = x @ w_i + b_i, np.tile(h, 3) * u_h + b_h
    r, z = _sigmoid(u[:H] + a[:H]), _sigmoid(u[H:2 * H] + a[H:2 * H])
    n = np.tanh(u[2 * H:] + r * a[2 * H:])
    return ((1 - z) * n + z * h,), (x, h, r, z, n, a)


def _paragru_bwd(P, cache, dcarry, grads):
    # as _gru_bwd, with a = u_h * [h | h | h] + b_h: du_h += da * [h | h | h], dh_prev += sum_g u_g da_g
    x, h = cache[:2]
    du, da, dh_prev = _gru_gates_bwd(cache, dcarry[0])
    grads["w_i"] += np.outer(x, du)
    grads["b_i"] += du
    grads["u_h"] += da * np.tile(h, 3)
    grads["b_h"] += da
    return (dh_prev + sum(ug * dag for ug, dag in zip(_gates_of(P["u_h"], 3), _gates_of(da, 3))),)


def _paralstm_fwd(P, carry, x):
    #   f = sigmoid(z_f + p_f c),  g = tanh(z_g),  c' = f c + (1 - f) g,
    #   o = sigmoid(z_o + p_o c'),  h' = o tanh(c'),   z = x W_i + b + u_h * [h | h | h]
    w_i, u_h, b, p = P["w_i"], P["u_h"], P["b"], P["p"]
    h, c = carry
    H = len(h)
    z = x @ w_i + b + np.tile(h, 3) * u_h
    f = _sigmoid(z[:H] + p[:H] * c)
    g = np.tanh(z[H:2 * H])
    c_new = f * c + (1 - f) * g
    o = _sigmoid(z[2 * H:] + p[H:] * c_new)
    return (o * np.tanh(c_new), c_new), (x, h, c, f, g, o, c_new)


def _paralstm_bwd(P, cache, dcarry, grads):
    #   do_pre = dh tanh(c') o (1 - o);  dc' = dh o (1 - tanh^2 c') + dc_next + p_o do_pre
    #   df_pre = dc' (c - g) f (1 - f);  dg_pre = dc' (1 - f) (1 - g^2)
    #   dc_prev = dc' f + p_f df_pre;    dh_prev = sum_g u_g dz_g
    x, h, c, f, g, o, c_new = cache
    dh, dc_next = dcarry
    H = len(h)
    p_f, p_o = P["p"][:H], P["p"][H:]
    tc = np.tanh(c_new)
    do_pre = dh * tc * o * (1 - o)
    dc = dh * o * (1 - tc * tc) + dc_next + p_o * do_pre
    df_pre = dc * (c - g) * f * (1 - f)
    dg_pre = dc * (1 - f) * (1 - g * g)
    dz = np.concatenate([df_pre, dg_pre, do_pre])
    grads["w_i"] += np.outer(x, dz)
    grads["b"] += dz
    grads["u_h"] += dz * np.tile(h, 3)
    grads["p"] += np.concatenate([df_pre * c, do_pre * c_new])
    dh_prev = sum(ug * dzg for ug, dzg in zip(_gates_of(P["u_h"], 3), _gates_of(dz, 3)))
    return dh_prev, dc * f + p_f * df_pre


def _mingru_fwd(P, carry, x):
    #   z = sigmoid(u_z),  h~ = u_h,  h' = (1 - z) h + z h~,   u = x W_i + b
    (h,) = carry
    H = len(h)
    u = x @ P["w_i"] + P["b"]
    z, h_tilde = _sigmoid(u[:H]), u[H:]
    return ((1 - z) * h + z * h_tilde,), (x, h, z, h_tilde)


def _mingru_bwd(P, cache, dcarry, grads):
    x, h, z, h_tilde = cache
    (dh,) = dcarry
    du = np.concatenate([dh * (h_tilde - h) * z * (1 - z), dh * z])
    grads["w_i"] += np.outer(x, du)
    grads["b"] += du
    return (dh * (1 - z),)


# row-layout cells for `cell_truncated`: parameter names, forward step, backward step
CELLS = {
    "elman": (("w_xh", "w_hh", "b_h"), _elman_fwd, _elman_bwd),
    "lstm": (("w_i", "w_h", "b"), _lstm_fwd, _lstm_bwd),
    "gru": (("w_i", "w_h", "b_i", "b_h"), _gru_fwd, _gru_bwd),
    "paragru": (("w_i", "u_h", "b_i", "b_h"), _paragru_fwd, _paragru_bwd),
    "paralstm": (("w_i", "u_h", "b", "p"), _paralstm_fwd, _paralstm_bwd),
    "mingru": (("w_i", "b"), _mingru_fwd, _mingru_bwd),
}

# how many [H] arrays a cell's carry holds (its first is h, read out); 1 unless listed
CARRY_PARTS = {"lstm": 2, "paralstm": 2}


def _step_loss(loss, y, target):
    """One step's loss of logits y `[V]` and its gradient dL/dy, written out per loss:
    cross_entropy (target an id): p - onehot; mse (target `[V]`): mean_v (y - t)^2, 2 (y - t) / V;
    binary_cross_entropy (target `[V]` in [0, 1]): mean_v softplus(y) - t y, (sigmoid(y) - t) / V."""
    if loss == "cross_entropy":
        dy = _softmax(y)
        dy[target] -= 1
        return _nll(y, target), dy
    t, V = np.asarray(target, np.float64), y.shape[0]
    if loss == "mse":
        return np.mean((y - t) ** 2), 2.0 * (y - t) / V
    if loss == "binary_cross_entropy":
        return np.mean(np.logaddexp(0.0, y) - t * y), (_sigmoid(y) - t) / V
    raise ValueError(f"unknown loss {loss!r}")


def cell_truncated(name, cell, w_hy, b_y, inputs, targets, carry0=None, *, k1, k2, mask=None,
                   loss="cross_entropy"):
    """TBPTT(k1, k2) of L = sum_t loss(h_t W_hy + b_y, target_t) through one layer of
    `name` ("elman" (tanh), "lstm", "gru", "paragru", "paralstm", "mingru"), with an optional
    0/1 mask `[T]`; the rules of `truncated` (k1 = k2 = T is full BPTT). Each cell's backward
    step is written out in `_lstm_bwd`, `_gru_bwd`, `_elman_bwd`, `_paragru_bwd`,
    `_paralstm_bwd`, `_mingru_bwd`; this loop owns time, masks and windows. `loss`:
    "cross_entropy" (softmax, targets ids `[T]`), "mse" or "binary_cross_entropy" (targets
    `[T, V]`), each per step as `_step_loss` writes it.

    cell: an object with the cell's parameter attributes (e.g. jrnn.cells.LSTMParams).
    carry0: tuple of the initial carry's arrays ((h0, c0) for the LSTM and the ParaLSTM, (h0,)
      otherwise).

    Returns (loss, grads dict {cell names..., w_hy, b_y}, dL/dcarry0 tuple).
    """
    if not (1 <= k1 <= k2):
        raise ValueError(f"TBPTT needs 1 <= k1 <= k2, got k1={k1}, k2={k2}")
    names, fwd, bwd = CELLS[name]
    P = {k: np.asarray(getattr(cell, k), np.float64) for k in names}
    w_hy, b_y = _f64(w_hy, b_y)
    H = w_hy.shape[0]
    xs = _one_hot_inputs(inputs, P[names[0]].shape[0])
    T = len(xs)
    m = np.ones(T, bool) if mask is None else np.asarray(mask).astype(bool)
    n_carry = CARRY_PARTS.get(name, 1)
    carries = [tuple(np.zeros(H) for _ in range(n_carry)) if carry0 is None
               else tuple(np.asarray(c, np.float64) for c in carry0)]
    caches = []
    for t in range(T):
        if m[t]:
            new, cache = fwd(P, carries[-1], xs[t])
        else:                                    # padding: the carry is frozen
            new, cache = carries[-1], None
        carries.append(new)
        caches.append(cache)
    ys = [carries[t + 1][0] @ w_hy + b_y for t in range(T)]
    total = sum(_step_loss(loss, ys[t], targets[t])[0] for t in range(T) if m[t])
    grads = {k: np.zeros_like(v) for k, v in P.items()}
    grads["w_hy"], grads["b_y"] = np.zeros_like(w_hy), np.zeros_like(b_y)
    dcarry0 = [np.zeros(H) for _ in range(n_carry)]
    for t in reversed(range(T)):
        if not m[t]:
            continue
        end = min((t // k1 + 1) * k1, T) - 1
        first = max(end - k2 + 1, 0)
        dy = _step_loss(loss, ys[t], targets[t])[1]
        grads["w_hy"] += np.outer(carries[t + 1][0], dy)
        grads["b_y"] += dy
        d = (w_hy @ dy,) + tuple(np.zeros(H) for _ in range(n_carry - 1))   # into carry_t
        for k in reversed(range(first, t + 1)):
            if m[k]:                             # padding passes the carry's gradient through
                d = bwd(P, caches[k], d, grads)
        if first == 0:
            dcarry0 = [a + b for a, b in zip(dcarry0, d)]
    return total, grads, tuple(dcarry0)


def lstm_many_to_many(cell, w_hy, b_y, inputs, targets, h0=None, c0=None, *, mask=None):
    """BPTT of L = sum_t CE(softmax(h_t W_hy + b_y), target_t) through one LSTM layer.

        i, f, o = sigmoid(z_i, z_f, z_o), g = tanh(z_g)       z = x W_i + h_{t-1} W_h + b
        c_t = f c_{t-1} + i g,  h_t = o tanh(c_t)

        dh_t  = dy_t W_hy^T + dh_next
        do    = dh_t tanh(c_t);   dc_t = dh_t o (1 - tanh^2 c_t) + dc_next
        di    = dc_t g;  dg = dc_t i;  df = dc_t c_{t-1};  dc_next = dc_t f
        dz    = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)]
        dW_i += x_t^T dz;  dW_h += h_{t-1}^T dz;  db += dz;  dh_next = dz W_h^T

    Shapes: `inputs` [T, D] (or [T, B, D]), `targets` int [T] (or [T, B]), h0 and c0 [H] (or
    [B, H]), `w_hy` [H, V], `b_y` [V]; `mask` 0/1 [T] (or [T, B]).

    Returns (loss, grads dict {w_i, w_h, b, w_hy, b_y}, dL/dh0, dL/dc0), every gradient shaped
    like its parameter, in float64.
    """
    H = np.shape(w_hy)[0]
    carry0 = (np.zeros(H) if h0 is None else h0, np.zeros(H) if c0 is None else c0)
    T = len(np.asarray(inputs))
    loss, grads, (dh0, dc0) = cell_truncated("lstm", cell, w_hy, b_y, inputs, targets, carry0, k1=T, k2=T, mask=mask)
    return loss, grads, dh0, dc0


def gru_many_to_many(cell, w_hy, b_y, inputs, targets, h0=None, *, mask=None):
    """BPTT of L = sum_t CE(softmax(h_t W_hy + b_y), target_t) through one GRU layer.

        u = x W_i + b_i,  a = h_{t-1} W_h + b_h            (columns [r | z | n])
        r = sigmoid(u_r + a_r),  z = sigmoid(u_z + a_z),  n = tanh(u_n + r a_n)
        h_t = (1 - z) n + z h_{t-1}

        dn = dh (1 - z);  dz = dh (h_{t-1} - n);  dh_prev = dh z
        dn_pre = dn (1 - n^2);  dr = dn_pre a_n;  da_n = dn_pre r
        du = [dr r(1-r), dz z(1-z), dn_pre];  da = [dr r(1-r), dz z(1-z), da_n]
        dW_i += x^T du;  db_i += du;  dW_h += h_{t-1}^T da;  db_h += da;  dh_prev += da W_h^T

    Shapes: `inputs` [T, D] (or [T, B, D]), `targets` int [T] (or [T, B]), h0 [H] (or [B, H]),
    `w_hy` [H, V], `b_y` [V]; `mask` 0/1 [T] (or [T, B]).

    Returns (loss, grads dict {w_i, w_h, b_i, b_h, w_hy, b_y}, dL/dh0), every gradient shaped
    like its parameter, in float64.
    """
    T = len(np.asarray(inputs))
    loss, grads, (dh0,) = cell_truncated("gru", cell, w_hy, b_y, inputs, targets,
                                         None if h0 is None else (h0,), k1=T, k2=T, mask=mask)
    return loss, grads, dh0
