"""Gradients that explain a model: token attributions and the gradient by lag.

Both run the model's own kernels: the forward pass that keeps every layer's states, then
the backward through time of training (``Model._layer_backward``) from the gradient of one
log-probability, with the weight-gradient products skipped.

``attribution(model, text, position)``: how much each earlier token contributed to
log p(token at position | tokens before it):
- ``input_x_gradient``: x_i . d log p / d x_i, the dot product of token i's embedding
  (the layer-0 input) with the gradient on it;
- ``integrated_gradients`` (Sundararajan et al. 2017): x_i . the mean of that gradient
  along the straight path from a zero-embedding baseline to the text's embeddings, at the
  midpoints alpha = (j - 1/2) / steps, j = 1..steps, all steps in one batched pass. The
  scores then sum, up to the midpoint rule's error, to log p(text) - log p(baseline):
  ``Attribution.delta`` says how far they miss.
With ``window=W`` only the W tokens before the position are attributed: the state before
them (the model's own, over the text before) is held fixed, the baseline too.

``gradient_by_lag(model, text, max_lag)``: the mean over the text's positions t of
|| d log p(x_t) / d h_{t-1-k} ||, the norm of the gradient on layer l's hidden state k steps
before the state that predicts x_t (lag 0), for k = 0..max_lag: how far back the trained
model listens, and whether its gradients vanish or explode. ``singular_values(model)``:
the largest singular value of each layer's recurrent matrix (and of each gate's block),
Pascanu, Mikolov and Bengio (2013)'s condition: below 1 / (the nonlinearity's largest
slope) the gradients of a tanh RNN must vanish.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .inspection import GATES, _count, _token_ids
from .state import Saved as _Saved
from .state import State

METHODS = ("input_x_gradient", "integrated_gradients")
# windows of this many columns go through one forward and backward pass (memory: about
# T * B * 12 H floats of saved states and activations)
_MAX_COLUMNS = 256


@dataclass
class Attribution:
    """The contributions of tokens[start:position] to log p(tokens[position])."""

    tokens: np.ndarray  # (T,) the text's ids
    position: int
    start: int  # the first token attributed (0, or position - window)
    scores: np.ndarray  # (position - start,) float64, one per attributed token
    logprob: float  # log p(tokens[position] | tokens before)
    method: str
    steps: int  # integrated gradients' steps (1 for input x gradient)
    baseline_logprob: float | None = None  # integrated gradients: log p at the baseline

    @property
    def delta(self) -> float | None:
        """Integrated gradients' completeness error: sum(scores) - (logprob - baseline)."""
        if self.baseline_logprob is None:
            return None
        return float(np.sum(self.scores) - (self.logprob - self.baseline_logprob))


@dataclass
class LagProfile:
    """gradient_by_lag's answer: norms[l, k] is the mean over positions of the gradient
    norm on layer l's state at lag k; positions: the predicted positions t averaged."""

    norms: np.ndarray  # (L, max_lag + 1) float64
    positions: np.ndarray  # (P,) int64
    singular_values: dict  # singular_values(model)

    def reach(self, fraction: float = 0.01) -> list[int]:
        """Per layer, the largest lag whose mean norm is at least `fraction` of the
        largest: how far back the layer listens, by that measure."""
        out = []
        for row in self.norms:
            top = row.max()
            out.append(int(np.flatnonzero(row >= fraction * top).max()) if top > 0 else 0)
        return out


def attribution(
    model,
    text_or_ids,
    position: int,
    method: str = "input_x_gradient",
    steps: int = 20,
    window: int | None = None,
) -> Attribution:
    """The contribution of each token before `position` (an index into the text's tokens,
    1 <= position < len) to log p(token at position); see the module docstring."""
    model = model._batch_model()
    ids = _token_ids(model, text_or_ids)
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    T = len(ids)
    if isinstance(position, bool) or not isinstance(position, int | np.integer):
        raise InputError(f"position must be an integer; got {position!r}")
    if not 1 <= position < T:
        raise InputError(
            f"position {position} is out of range: the text has {T} tokens and position 0 "
            f"has no history, so it must be in [1, {T - 1}]"
        )
    steps = _count(steps, "steps", 10_000, minimum=1) if method != "input_x_gradient" else 1
    start = 0 if window is None else max(0, position - _count(window, "window", None, 1))
    state = _states_after(model, ids, [start])  # the state before the window, B = 1
    inputs = ids[start:position]
    if method == "input_x_gradient":
        alphas = np.ones(1)
    else:
        # the midpoints, then the baseline (0) and the text itself (1) for the completeness
        alphas = np.concatenate([(np.arange(steps) + 0.5) / steps, [0.0, 1.0]])
    logp, grads, emb = _input_gradients(model, inputs, state, int(ids[position]), alphas)
    if method == "input_x_gradient":
        return Attribution(
            ids, position, start, np.sum(emb * grads[:, 0], axis=1), float(logp[0]), method, 1
        )
    mean_grad = grads[:, :steps].mean(axis=1)  # (n, E)
    return Attribution(
        ids, position, start, np.sum(emb * mean_grad, axis=1), float(logp[-1]), method, steps,
        float(logp[-2]),
    )  # fmt: skip


def attributions(model, ids: np.ndarray, window: int, states: State | None = None) -> list:
    """Input x gradient for every position 1..T-1 of ids over its `window` tokens before
    it: a list of T arrays (the first empty), batched many positions per pass. states:
    optionally the states after each token, (L, T, H) h and c (a trace's), to spare the
    forward over the text."""
    model = model._batch_model()
    ids = np.asarray(ids, np.int64)
    T = len(ids)
    out: list[np.ndarray] = [np.zeros(0)] * T
    window = _count(window, "window", None, 1)
    if states is None:
        states = _states_after(model, ids, list(range(1, T + 1)))  # [:, t]: after token t
    # the first positions have fewer tokens before them than the window: one by one
    for p in range(1, min(window, T)):
        st = _columns(states, [p - window])
        _, g, emb = _input_gradients(model, ids[:p], st, int(ids[p]), np.ones(1))
        out[p] = np.sum(emb * g[:, 0], axis=1)
    full = np.arange(window, T)
    for b0 in range(0, len(full), _MAX_COLUMNS):
        ps = full[b0 : b0 + _MAX_COLUMNS]
        cols = ps[None, :] + np.arange(-window, 0)[:, None]  # (W, B) token indices
        st = _on(model, _columns(states, list(ps - window)))
        _, dx, _ = _backward(model, ids[cols], st, ids[ps], None)
        emb = _embeddings(model, ids[cols])
        scores = np.sum(emb * dx, axis=2)  # (W, B)
        for j, p in enumerate(ps):
            out[p] = scores[:, j]
    return out


def gradient_by_lag(model, text_or_ids, max_lag: int = 50, positions: int = 500) -> LagProfile:
    """The mean gradient norm on each layer's state by lag (see the module docstring),
    over up to `positions` positions of the text spread evenly from max_lag + 1 on."""
    model = model._batch_model()
    ids = _token_ids(model, text_or_ids)
    max_lag = _count(max_lag, "max_lag", None, minimum=0)
    positions = _count(positions, "positions", None, minimum=1)
    T, W = len(ids), max_lag + 1
    if T < W + 1:
        raise InputError(
            f"the text has {T} tokens: gradient_by_lag with max_lag={max_lag} needs at "
            f"least {W + 1} (a lower max_lag or a longer text)"
        )
    ps = np.unique(np.linspace(W, T - 1, min(positions, T - W)).round().astype(np.int64))
    states = _states_after(model, ids, list(ps - W))  # before each window, (L, P, H)
    L = model.config.num_layers
    total = np.zeros((L, W))
    for b0 in range(0, len(ps), _MAX_COLUMNS):
        p = ps[b0 : b0 + _MAX_COLUMNS]
        cols = p[None, :] + np.arange(-W, 0)[:, None]  # (W, B): inputs t-1-max_lag .. t-1
        st = State(*(None if a is None else a[:, b0 : b0 + len(p)] for a in states))
        douts: list = []
        _backward(model, ids[cols], _on(model, st), ids[p], douts)
        for layer, dh in enumerate(_state_gradients(model, douts, st)):
            total[layer] += np.linalg.norm(dh, axis=2).sum(axis=1)[::-1]  # index = lag
    return LagProfile(total / len(ps), ps, singular_values(model))


def singular_values(model) -> dict:
    """{layer: {"all": s, gate: s, ...}}: the largest singular value of rnn.weight_hh_l{k}
    and of each gate's (H, H) block of it (lstm i f g o; gru r z n)."""
    model = model._batch_model()
    k, c = model._k, model.config
    H = c.hidden_size
    out = {}
    for layer in range(c.num_layers):
        w = np.asarray(k.to_host(model._params[f"rnn.weight_hh_l{layer}"]), np.float64)
        row = {"all": float(np.linalg.norm(w, 2))}
        for g, name in enumerate(GATES[c.cell]):
            row[name] = float(np.linalg.norm(w[g * H : (g + 1) * H], 2))
        out[layer] = row
    return out


# ---------------------------------------------------------------------------- internals


def _embeddings(model, ids: np.ndarray) -> np.ndarray:
    """The embeddings of ids (any shape) as float64 (..., E), on the host."""
    table = model._k.to_host(model._params["encoder.weight"])
    return np.asarray(table[ids], np.float64)


def _input_gradients(model, inputs, state: State, target: int, alphas: np.ndarray):
    """One text (inputs (n,)) in len(alphas) columns, column j's embeddings scaled by
    alphas[j] -> (log p(target) per column (A,), the gradient on each column's
    embeddings (n, A, E) float64, the unscaled embeddings (n, E) float64)."""
    A = len(alphas)
    cols = np.repeat(np.asarray(inputs, np.int64)[:, None], A, axis=1)
    st = State(*(None if a is None else np.repeat(a, A, axis=1) for a in state))
    emb = _embeddings(model, inputs)
    scaled = (emb[:, None, :] * alphas[None, :, None]).astype(np.float32)
    logp, dx, _ = _backward(model, cols, _on(model, st), np.full(A, target), None, scaled)
    return logp, dx, emb


def _backward(model, cols, state: State, targets, douts, emb=None):
    """Forward over cols (T, B) from state (on the backend), then the backward from
    sum_b log p(targets[b] | column b) after the last step. emb: (T, B, E) float32 inputs
    in place of the ids' embeddings. Returns (log p (B,), the gradient on the layer-0
    inputs (T, B, E) float64, the _Saved), and appends to douts (if a list) each layer's
    output gradient (T, B, H) and the layer's (dxproj, acts) bottom layer last."""
    k, c = model._k, model.config
    T, B = cols.shape
    cols = np.ascontiguousarray(cols, np.int64)
    saved = _Saved()
    x = None if emb is None else k.to_device(np.ascontiguousarray(emb.reshape(T * B, -1)))
    top, _ = model._forward_layers(cols, state, saved, emb=x)
    logp, dtop_last = _target_gradient(model, k.to_host(top)[(T - 1) * B :], targets)
    dtop = np.zeros((T * B, c.hidden_size), np.float32)
    dtop[(T - 1) * B :] = dtop_last
    dx = k.to_device(dtop)
    residual = c.residual_layers
    for layer in reversed(range(c.num_layers)):
        dout = dx
        if douts is not None:
            douts.append(np.array(k.to_host(dout), np.float64).reshape(T, B, -1))
        dx = model._layer_backward(layer, dout, state, saved, None)
        if douts is not None:  # the cell's pre-activation gradients, now in xprojs
            acts = saved.acts[layer]
            douts.append((
                np.array(k.to_host(saved.xprojs[layer]), np.float64).reshape(T, B, -1),
                None if acts is None else np.array(k.to_host(acts), np.float64),
            ))  # fmt: skip
        if residual[layer]:
            k.add(dx, dout, out=dx)
    return logp, np.array(k.to_host(dx), np.float64).reshape(T, B, -1), saved


def _target_gradient(model, top_rows: np.ndarray, targets) -> tuple[np.ndarray, np.ndarray]:
    """For rows of the top layer's output (B, H): (log p(targets) (B,) float64, the
    gradient of log p(target) on each row (B, H) float32), from the output layer."""
    logp, grad = model._output.target_gradient(top_rows, targets)
    return logp, grad.astype(np.float32)


def _state_gradients(model, douts: list, state: State) -> list[np.ndarray]:
    """From _backward's douts, per layer (bottom first) the total gradient on the cell's
    hidden state at each step, (T, B, H) float64: the gradient on the layer's output plus
    what step t + 1 sends back through the recurrence (for gru also through h' = ... + z h)."""
    k, c = model._k, model.config
    H = c.hidden_size
    out = []
    L = c.num_layers
    for i, layer in enumerate(reversed(range(L))):
        dout, (dxproj, acts) = douts[2 * i], douts[2 * i + 1]
        w = np.asarray(k.to_host(model._params[f"rnn.weight_hh_l{layer}"]), np.float64)
        T = dout.shape[0]
        if c.cell == "gru":
            r, z = acts[..., :H], acts[..., H : 2 * H]
            dhproj = dxproj.copy()
            dhproj[..., 2 * H :] *= r  # n = tanh(x_n + r (W_hn h + b_hn))
            rec = dhproj @ w  # (T, B, H): what step t sends to h_{t-1}
            dh = np.empty_like(dout)
            dh[T - 1] = dout[T - 1]
            for t in range(T - 2, -1, -1):
                dh[t] = dout[t] + rec[t + 1] + z[t + 1] * dh[t + 1]
        else:
            dh = dout.copy()
            dh[:-1] += dxproj[1:] @ w
        out.append(dh)
    return out[::-1]


def _states_after(model, ids: np.ndarray, positions) -> State:
    """The model's state after reading ids[:j] for each j in positions (j <= 0: the zero
    state), as host arrays (L, len(positions), H); one chunked pass over the text."""
    c = model.config
    positions = [max(0, int(j)) for j in positions]
    L, H, P = c.num_layers, c.hidden_size, len(positions)
    h = np.zeros((L, P, H), np.float32)
    cc = np.zeros((L, P, H), np.float32) if c.cell == "lstm" else None
    after = np.asarray(positions, np.int64) - 1  # the state after token j - 1 (-1: zeros)
    state, k = model.zero_state(1), model._k
    chunk = 1024
    end = max(positions, default=0)
    for t0 in range(0, end, chunk):
        t1 = min(end, t0 + chunk)
        saved = _Saved()
        _, state = model._forward_layers(np.ascontiguousarray(ids[t0:t1, None]), state, saved)
        cols = np.flatnonzero((after >= t0) & (after < t1))
        if cols.size == 0:
            continue
        steps = after[cols] - t0
        for layer in range(L):  # one copy to the host per layer and chunk
            h[layer, cols] = k.to_host(saved.hs[layer])[steps, 0]
            if cc is not None:
                cc[layer, cols] = k.to_host(saved.cs[layer])[steps, 0]
    return State(h, cc)


def _columns(states: State, js) -> State:
    """Columns of states-after-each-token (L, T, H) host arrays (a trace's, or
    _states_after's over every position) for 'the state after ids[:j]' per j (j <= 0:
    zeros)."""
    idx = np.asarray(js, np.int64) - 1

    def pick(a):
        if a is None:
            return None
        out = a[:, np.maximum(idx, 0)].copy()
        out[:, idx < 0] = 0.0
        return out

    return State(pick(states.h), pick(states.c))


def _on(model, state: State) -> State:
    k = model._k
    return State(*(None if a is None else k.to_device(np.ascontiguousarray(a, np.float32))
                   for a in state))  # fmt: skip
