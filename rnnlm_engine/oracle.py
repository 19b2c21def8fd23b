"""The float64 NumPy reference of every computation: the specification the kernels are held to.

Written to be obviously right, never to be fast: one time step at a time, one formula per
line, float64 throughout. Imported by tests and benchmarks only. Function names match the
kernels in ``kernels/cpu`` (which write into preallocated float32 arrays instead of
returning new ones).

Letters: T time, B batch, E embedding, H hidden, G gate rows, V vocabulary, L layers, N rows
(N = T * B). PyTorch's gate orders: lstm [i, f, g, o]; gru [r, z, n].
"""

from __future__ import annotations

import numpy as np

from .config import ModelConfig


def normwise_error(got, want, floor: float = 0.0) -> float:
    """max|got - want| / max(max|want|, floor), in float64: the error measure of every test
    and benchmark. Elementwise relative error is meaningless near 0 (log-probs of certain
    tokens, gradients that cancel); floor keeps an all-but-zero tensor (the gradient through
    saturated gates, say) from turning float32 noise into a 100% error. NaN in got gives NaN,
    which fails every comparison with a tolerance."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shape {got.shape} != {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    scale = max(float(np.max(np.abs(want))), floor)
    return diff / scale if scale > 0 else diff


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------- embedding


def embedding_forward(weight, ids):
    """weight (V, E), ids (N,) -> (N, E): row ids[n] of weight."""
    return np.asarray(weight, np.float64)[ids]


def embedding_backward(ids, dout, vocab_size):
    """ids (N,), dout (N, E) -> dweight (V, E): dout rows summed into the rows they came from."""
    dweight = np.zeros((vocab_size, dout.shape[1]))
    for n, token in enumerate(ids):
        dweight[token] += dout[n]
    return dweight


# ---------------------------------------------------------------------------- cells
# Every cell: xproj (T, B, G) holds x W_ih^T + b_ih for each step; the cell adds
# W_hh h + b_hh. The forward returns hs (T, B, H), the final (h, c) and a cache for the
# backward; c is None for rnn and gru.


def rnn_forward(xproj, w_hh, b_hh, h0, c0=None):
    hs, h = [], h0
    for t in range(xproj.shape[0]):
        h = np.tanh(xproj[t] + h @ w_hh.T + b_hh)
        hs.append(h)
    hs = np.stack(hs)
    return hs, h, None, {"h0": h0, "hs": hs}


def gru_forward(xproj, w_hh, b_hh, h0, c0=None):
    H = h0.shape[1]
    hs, h, cache = [], h0, []
    for t in range(xproj.shape[0]):
        xr, xz, xn = xproj[t, :, :H], xproj[t, :, H : 2 * H], xproj[t, :, 2 * H :]
        hproj = h @ w_hh.T + b_hh
        hr, hz, hn = hproj[:, :H], hproj[:, H : 2 * H], hproj[:, 2 * H :]
        r = sigmoid(xr + hr)
        z = sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        cache.append((h, r, z, n, hn))
        h = (1.0 - z) * n + z * h
        hs.append(h)
    return np.stack(hs), h, None, {"steps": cache}


def lstm_forward(xproj, w_hh, b_hh, h0, c0):
    H = h0.shape[1]
    hs, h, c, cache = [], h0, c0, []
    for t in range(xproj.shape[0]):
        gates = xproj[t] + h @ w_hh.T + b_hh
        i = sigmoid(gates[:, :H])
        f = sigmoid(gates[:, H : 2 * H])
        g = np.tanh(gates[:, 2 * H : 3 * H])
        o = sigmoid(gates[:, 3 * H :])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        cache.append((h, c, i, f, g, o, c_new))
        h, c = h_new, c_new
        hs.append(h)
    return np.stack(hs), h, c, {"steps": cache}


def rnn_backward(cache, dhs, dcT, w_hh):
    """dhs (T, B, H): gradient on every output h_t (the final state's included).

    Returns dxproj (T, B, G), dw_hh (G, H), db_hh (G,), dh0 (B, H), dc0 (None).
    """
    hs, h0 = cache["hs"], cache["h0"]
    dxproj = np.zeros(hs.shape)
    dw_hh, db_hh = np.zeros(w_hh.shape), np.zeros(w_hh.shape[0])
    dh_next = np.zeros(h0.shape)
    for t in reversed(range(hs.shape[0])):
        h_prev = hs[t - 1] if t > 0 else h0
        dh = dhs[t] + dh_next
        dpre = dh * (1.0 - hs[t] ** 2)
        dxproj[t] = dpre
        dw_hh += dpre.T @ h_prev
        db_hh += dpre.sum(axis=0)
        dh_next = dpre @ w_hh
    return dxproj, dw_hh, db_hh, dh_next, None


def gru_backward(cache, dhs, dcT, w_hh):
    steps = cache["steps"]
    T, (B, H) = len(steps), steps[0][0].shape
    dxproj = np.zeros((T, B, 3 * H))
    dw_hh, db_hh = np.zeros(w_hh.shape), np.zeros(w_hh.shape[0])
    dh_next = np.zeros((B, H))
    for t in reversed(range(T)):
        h_prev, r, z, n, hn = steps[t]
        dh = dhs[t] + dh_next
        dz = dh * (h_prev - n)
        dn = dh * (1.0 - z)
        dn_pre = dn * (1.0 - n**2)
        dr = dn_pre * hn
        dr_pre = dr * r * (1.0 - r)
        dz_pre = dz * z * (1.0 - z)
        dxproj[t] = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
        dhproj = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
        dw_hh += dhproj.T @ h_prev
        db_hh += dhproj.sum(axis=0)
        dh_next = dh * z + dhproj @ w_hh
    return dxproj, dw_hh, db_hh, dh_next, None


def lstm_backward(cache, dhs, dcT, w_hh):
    steps = cache["steps"]
    T, (B, H) = len(steps), steps[0][0].shape
    dxproj = np.zeros((T, B, 4 * H))
    dw_hh, db_hh = np.zeros(w_hh.shape), np.zeros(w_hh.shape[0])
    dh_next = np.zeros((B, H))
    dc_next = np.zeros((B, H)) if dcT is None else np.array(dcT, np.float64)
    for t in reversed(range(T)):
        h_prev, c_prev, i, f, g, o, c = steps[t]
        dh = dhs[t] + dh_next
        tc = np.tanh(c)
        do = dh * tc
        dc = dc_next + dh * o * (1.0 - tc**2)
        di = dc * g
        df = dc * c_prev
        dg = dc * i
        dgates = np.concatenate(
            [di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g**2), do * o * (1.0 - o)],
            axis=1,
        )
        dxproj[t] = dgates
        dw_hh += dgates.T @ h_prev
        db_hh += dgates.sum(axis=0)
        dh_next = dgates @ w_hh
        dc_next = dc * f
    return dxproj, dw_hh, db_hh, dh_next, dc_next


CELL_FORWARD = {"rnn": rnn_forward, "gru": gru_forward, "lstm": lstm_forward}
CELL_BACKWARD = {"rnn": rnn_backward, "gru": gru_backward, "lstm": lstm_backward}


# ---------------------------------------------------------------------------- softmax
# bias (V,) is the decoder bias, added to every row (the kernels fuse that addition).


def dequantize_rows(q, scale):
    """int8 rows q (R, C) with one scale per row (R,) -> the float64 weights q * scale."""
    return np.asarray(q, np.float64) * np.asarray(scale, np.float64)[:, None]


def log_softmax(logits, bias=0.0):
    """logits (N, V) -> (N, V) log-probabilities of softmax(logits + bias)."""
    z = logits + bias
    shifted = z - z.max(axis=1, keepdims=True)  # exp() would overflow otherwise
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def xent_forward(logits, bias, targets):
    """logits (N, V), bias (V,), targets (N,) -> nll (N,) = -log softmax(...)[n, targets[n]]."""
    return -log_softmax(logits, bias)[np.arange(len(targets)), targets]


def prediction_stats(logits, bias, targets, k):
    """Per row of logits (N, V) + bias: (log p(targets) (N,), entropy (N,) nats, rank (N,)
    = 1 + the count of strictly likelier tokens, the top k ids (N, k) best first with ties
    the lower id first, and their log-probabilities (N, k))."""
    lp = log_softmax(logits, bias)
    rows = np.arange(len(targets))
    target = lp[rows, targets]
    top = np.argsort(-lp, axis=1, kind="stable")[:, :k]
    return (
        target,
        -np.sum(np.exp(lp) * lp, axis=1),
        1 + np.sum(lp > target[:, None], axis=1),
        top,
        np.take_along_axis(lp, top, axis=1),
    )


def row_max(logits, bias):
    """(N,) = max over each row of logits + bias."""
    return (logits + bias).max(axis=1)


def xent_forward_backward(logits, bias, targets, scale):
    """(nll, dlogits, dbias): xent_forward, xent_backward, and dlogits' column sums."""
    d = xent_backward(logits, bias, targets, scale)
    return xent_forward(logits, bias, targets), d, d.sum(axis=0)


def xent_backward(logits, bias, targets, scale):
    """Gradient of scale * sum(nll) with respect to logits: scale * (softmax - onehot).
    The bias's gradient is its column sum."""
    d = np.exp(log_softmax(logits, bias))
    d[np.arange(len(targets)), targets] -= 1.0
    return scale * d


# ---------------------------------------------------------------------------- optimizer


def global_norm(grads):
    """The L2 norm of all gradient arrays taken together."""
    return float(np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads)))


def clip_scale(norm, max_norm):
    """The factor PyTorch's clip_grad_norm_ multiplies every gradient by."""
    return min(1.0, max_norm / (norm + 1e-6))


def sgd_update(param, grad, lr):
    return param - lr * grad


def sgd_update_rows(param, rows, grad, lr):
    """sgd_update of a gradient that is grad (n, E) at the unique rows and zero elsewhere."""
    out = param.copy()
    out[rows] -= lr * grad
    return out


def adam_update(param, grad, m, v, lr, beta1=0.9, beta2=0.999, eps=1e-8, step=1):
    """One step of Adam as torch.optim.Adam (step counts from 1). Returns (param, m, v)."""
    m = beta1 * m + (1.0 - beta1) * grad
    v = beta2 * v + (1.0 - beta2) * grad * grad
    m_hat = m / (1.0 - beta1**step)
    v_hat = v / (1.0 - beta2**step)
    return param - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def sum_of_squares(x):
    return float(np.sum(np.asarray(x, np.float64) ** 2))


def scale_inplace(x, factor):
    """The kernel scales in place; the oracle returns the scaled copy."""
    return np.asarray(x, np.float64) * factor


# ---------------------------------------------------------------------------- whole model


# ---------------------------------------------------------------------------- adaptive softmax
# PyTorch's nn.AdaptiveLogSoftmaxWithLoss (Grave et al. 2017): the head scores the shortlist
# (ids below cutoffs[0]) and one logit per tail cluster; cluster i scores its ids through
# a projection (no bias) and a linear map (no bias); log p(w) of a tail word is the head's
# log-probability of its cluster plus the cluster's log-probability of w.


def _adaptive_head(p, top):
    head = top @ p["decoder.head.weight"].T
    if "decoder.head.bias" in p:
        head = head + p["decoder.head.bias"]
    return head


def _clusters(config):
    """(low, high) of each tail cluster's ids."""
    bounds = [*config.cutoffs, config.vocab_size]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def adaptive_log_probs(p, config, top):
    """top (N, H) -> (N, V) log-probabilities (PyTorch's log_prob)."""
    head_lp = log_softmax(_adaptive_head(p, top))
    shortlist = config.cutoffs[0]
    out = [head_lp[:, :shortlist]]
    for i in range(len(config.cutoffs)):
        proj = top @ p[f"decoder.tail.{i}.0.weight"].T
        cluster_lp = log_softmax(proj @ p[f"decoder.tail.{i}.1.weight"].T)
        out.append(cluster_lp + head_lp[:, shortlist + i : shortlist + i + 1])
    return np.concatenate(out, axis=1)


def adaptive_backward(p, config, top, targets, scale):
    """(nll (N,), gradients of scale * sum(nll) on the decoder.* parameters, on top (N, H)).
    Each tail cluster is computed for the rows whose targets fall in it, as PyTorch does."""
    N = top.shape[0]
    shortlist = config.cutoffs[0]
    head = _adaptive_head(p, top)
    gather = targets.copy()  # the head's target: the word, or its cluster's logit
    nll = np.zeros(N)
    grads = {}
    dtop = np.zeros_like(top)
    for i, (low, high) in enumerate(_clusters(config)):
        rows = np.flatnonzero((targets >= low) & (targets < high))
        gather[rows] = shortlist + i
        w0, w1 = p[f"decoder.tail.{i}.0.weight"], p[f"decoder.tail.{i}.1.weight"]
        proj = top[rows] @ w0.T
        out = proj @ w1.T
        rel = targets[rows] - low
        nll[rows] = xent_forward(out, 0.0, rel)
        dout = xent_backward(out, 0.0, rel, scale)
        grads[f"decoder.tail.{i}.1.weight"] = dout.T @ proj
        dproj = dout @ w1
        grads[f"decoder.tail.{i}.0.weight"] = dproj.T @ top[rows]
        dtop[rows] += dproj @ w0
    nll += xent_forward(head, 0.0, gather)
    dhead = xent_backward(head, 0.0, gather, scale)
    grads["decoder.head.weight"] = dhead.T @ top
    if "decoder.head.bias" in p:
        grads["decoder.head.bias"] = dhead.sum(axis=0)
    dtop += dhead @ p["decoder.head.weight"]
    return nll, grads, dtop


def _params64(params):
    return {k: np.asarray(v, np.float64) for k, v in params.items()}


def _decoder_weight(p, config):
    return p["encoder.weight"] if config.tied else p["decoder.weight"]


def zero_state(config: ModelConfig, batch: int):
    shape = (config.num_layers, batch, config.hidden_size)
    return np.zeros(shape), (np.zeros(shape) if config.cell == "lstm" else None)


def _run_layers(p, config, ids, state, masks=None):
    """masks: None, or L + 1 dropout masks: masks[k] (T, B, width) multiplies the input of
    layer k (the embeddings for k = 0), masks[L] the top layer's output before the decoder."""
    T, B = ids.shape
    h0s, c0s = zero_state(config, B) if state is None else state
    x = embedding_forward(p["encoder.weight"], ids.reshape(-1)).reshape(T, B, -1)
    layer_inputs, caches, h_final, c_final = [], [], [], []
    residual = config.residual_layers
    for k in range(config.num_layers):
        if masks is not None:
            x = x * masks[k]
        layer_inputs.append(x)
        xproj = x @ p[f"rnn.weight_ih_l{k}"].T + p[f"rnn.bias_ih_l{k}"]
        c0 = None if c0s is None else c0s[k]
        hs, h, c, cache = CELL_FORWARD[config.cell](
            xproj, p[f"rnn.weight_hh_l{k}"], p[f"rnn.bias_hh_l{k}"], h0s[k], c0
        )
        caches.append(cache)
        h_final.append(h)
        c_final.append(c)
        x = hs + x if residual[k] else hs  # a residual layer's output adds its input
    if masks is not None:
        x = x * masks[config.num_layers]
    top = x.reshape(T * B, -1)
    logits = None if config.adaptive else top @ _decoder_weight(p, config).T
    new_state = (np.stack(h_final), None if c0s is None else np.stack(c_final))
    return logits, new_state, (layer_inputs, caches, x)


def model_forward(params, config: ModelConfig, ids, state=None):
    """ids (T, B) -> (logprobs (T, B, V), (h (L, B, H), c (L, B, H) or None))."""
    p = _params64(params)
    logits, new_state, (_, _, top) = _run_layers(p, config, np.asarray(ids), state)
    T, B = ids.shape
    if config.adaptive:
        return adaptive_log_probs(p, config, top.reshape(T * B, -1)).reshape(T, B, -1), new_state
    return log_softmax(logits, p["decoder.bias"]).reshape(T, B, -1), new_state


def model_loss_and_grad(params, config: ModelConfig, inputs, targets, state=None, masks=None):
    """Mean next-token cross-entropy (nats) over all T * B positions, its gradients, new state.

    The initial state is treated as a constant (truncated BPTT). For tied models the
    encoder's gradient holds both uses of the shared matrix. masks: dropout masks as in
    _run_layers (inverted dropout: 0 or 1 / (1 - p) per element), or None.
    """
    p = _params64(params)
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    T, B = inputs.shape
    masks = None if masks is None else [np.asarray(m, np.float64) for m in masks]
    logits, new_state, (layer_inputs, caches, top) = _run_layers(p, config, inputs, state, masks)
    flat_targets = targets.reshape(-1)
    grads = {name: np.zeros(shape) for name, shape in config.parameter_shapes().items()}
    if config.adaptive:
        nll, dec_grads, dtop = adaptive_backward(
            p, config, top.reshape(T * B, -1), flat_targets, 1.0 / (T * B)
        )
        loss = float(nll.mean())
        for name, g in dec_grads.items():
            grads[name] += g
        dx = dtop.reshape(T, B, -1)
    else:
        loss = float(xent_forward(logits, p["decoder.bias"], flat_targets).mean())
        dlogits = xent_backward(logits, p["decoder.bias"], flat_targets, 1.0 / (T * B))
        w_dec = _decoder_weight(p, config)
        dec_name = "encoder.weight" if config.tied else "decoder.weight"
        grads[dec_name] += dlogits.T @ top.reshape(T * B, -1)
        grads["decoder.bias"] += dlogits.sum(axis=0)
        dx = (dlogits @ w_dec).reshape(T, B, -1)
    if masks is not None:
        dx = dx * masks[config.num_layers]
    residual = config.residual_layers
    for k in reversed(range(config.num_layers)):
        dout = dx  # d loss / d (layer k's output): its cell's h, and its input if residual
        dxproj, dw_hh, db_hh, _, _ = CELL_BACKWARD[config.cell](
            caches[k], dout, None, p[f"rnn.weight_hh_l{k}"]
        )
        x = layer_inputs[k]
        grads[f"rnn.weight_hh_l{k}"] += dw_hh
        grads[f"rnn.bias_hh_l{k}"] += db_hh
        grads[f"rnn.weight_ih_l{k}"] += dxproj.reshape(T * B, -1).T @ x.reshape(T * B, -1)
        grads[f"rnn.bias_ih_l{k}"] += dxproj.sum(axis=(0, 1))
        dx = dxproj @ p[f"rnn.weight_ih_l{k}"]
        if residual[k]:
            dx = dx + dout
        if masks is not None:
            dx = dx * masks[k]
    grads["encoder.weight"] += embedding_backward(
        inputs.reshape(-1), dx.reshape(T * B, -1), config.vocab_size
    )
    return loss, grads, new_state
