"""Attributions and the gradient by lag: against PyTorch autograd on the same weights (in
float64, step by step, so that every layer's state at every step is a leaf of the graph),
against central finite differences of the float64 oracle, and clear errors.

Tolerances, normwise max|ours - ref| / max|ref|: the engine computes in float32 (unit
roundoff 6e-8) and its gradients pass through the T steps of the backward; against float64
references we measured at most 3e-7 at these sizes, and the bounds (1e-4 against torch,
1e-3 against finite differences, whose own error with eps = 1e-5 in float64 is about
1e-10 / 1e-5 = 1e-5 relative) leave a wide margin, while a wrong gate, a missing path
through the recurrence or a lag off by one step gives errors of order 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlm_engine import InputError, Model, ModelConfig, oracle
from rnnlm_engine.attribution import attributions, singular_values
from rnnlm_engine.config import CELLS

TORCH_TOL = 1e-4
FD_TOL = 1e-3


def make(cell, L=2, E=6, H=6, V=13, seed=0, residual=False, tied=False, scale=0.7):
    config = ModelConfig(cell, V, E, H, L, tied=tied, residual=residual)
    rng = np.random.default_rng(seed)
    sd = {n: rng.uniform(-scale, scale, s).astype(np.float32)
          for n, s in config.parameter_shapes().items()}  # fmt: skip
    return sd, Model.from_state_dict(sd, cell=cell, tied=tied, residual=residual)


def err(got, want):
    return float(np.abs(np.asarray(got) - want).max() / max(np.abs(want).max(), 1e-30))


# ------------------------------------------------------------------- PyTorch autograd


def torch_pass(torch, sd, config, ids, pos, alpha=1.0):
    """log p(ids[pos]) by torch cells in float64, with the embeddings x (pos, E) and every
    layer's state at every step (hs[l][t]) holding their gradients."""
    f64 = torch.float64
    t = {n: torch.tensor(v, dtype=f64) for n, v in sd.items()}
    make_cell = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}
    L, H = config.num_layers, config.hidden_size
    cells = []
    for k in range(L):
        m = make_cell[config.cell](t[f"rnn.weight_ih_l{k}"].shape[1], H).to(f64)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(m, name).copy_(t[f"rnn.{name}_l{k}"])
        cells.append(m)
    x = (t["encoder.weight"][torch.tensor(ids[:pos])] * alpha).detach().requires_grad_(True)
    h = [torch.zeros(1, H, dtype=f64) for _ in range(L)]
    c = [torch.zeros(1, H, dtype=f64) for _ in range(L)]
    hs = [[None] * pos for _ in range(L)]
    for step in range(pos):
        inp = x[step : step + 1]
        for k in range(L):
            if config.cell == "lstm":
                h[k], c[k] = cells[k](inp, (h[k], c[k]))
            else:
                h[k] = cells[k](inp, h[k])
            h[k].retain_grad()
            hs[k][step] = h[k]
            inp = h[k] + inp if config.residual_layers[k] else h[k]
    w = t["encoder.weight"] if config.tied else t["decoder.weight"]
    logp = torch.log_softmax(inp @ w.T + t["decoder.bias"], dim=1)[0, int(ids[pos])]
    logp.backward()
    return logp.item(), x, hs


CASES = [(cell, res, tied) for cell in CELLS for res in (False, True) for tied in (False, True)]


@pytest.mark.parametrize("cell, residual, tied", CASES)
def test_attributions_and_lag_match_pytorch_autograd(cell, residual, tied):
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch)")
    sd, model = make(cell, residual=residual, tied=tied)
    config = model.config
    ids = np.random.default_rng(1).integers(0, 13, 25)
    pos = 17
    ixg = model.attribution(ids, pos)
    want_lp, x, _ = torch_pass(torch, sd, config, ids, pos)
    want = (x * x.grad).sum(1).detach().numpy()
    assert err(ixg.scores, want) < TORCH_TOL
    assert abs(ixg.logprob - want_lp) < TORCH_TOL * abs(want_lp)
    assert ixg.start == 0 and len(ixg.scores) == pos and ixg.delta is None

    steps = 7
    ig = model.attribution(ids, pos, method="integrated_gradients", steps=steps)
    grad = 0
    for j in range(steps):
        grad = grad + torch_pass(torch, sd, config, ids, pos, (j + 0.5) / steps)[1].grad
    emb = torch.tensor(sd["encoder.weight"][ids[:pos]], dtype=torch.float64)
    assert err(ig.scores, (emb * grad / steps).sum(1).numpy()) < TORCH_TOL
    base_lp = torch_pass(torch, sd, config, ids, pos, 0.0)[0]
    assert abs(ig.baseline_logprob - base_lp) < TORCH_TOL * abs(base_lp)

    prof = model.gradient_by_lag(ids, max_lag=6, positions=4)
    assert len(prof.positions) == 4
    want = np.zeros((config.num_layers, 7))
    for p in prof.positions:
        _, _, hs = torch_pass(torch, sd, config, ids, int(p))
        for layer in range(config.num_layers):
            for lag in range(7):
                want[layer, lag] += hs[layer][p - 1 - lag].grad.norm().item()
    assert err(prof.norms, want / 4) < TORCH_TOL


# --------------------------------------------------------- finite differences (oracle)


def oracle_logp(sd, config, ids, pos, state=None):
    lp, _ = oracle.model_forward(sd, config, np.asarray(ids)[:pos, None], state)
    return lp[-1, 0, ids[pos]]


@settings(max_examples=8, deadline=None)
@given(
    cell=st.sampled_from(CELLS),
    L=st.integers(1, 2),
    E=st.sampled_from([1, 3, 5]),
    H=st.sampled_from([1, 4, 7]),
    T=st.integers(2, 40),
    seed=st.integers(0, 2**16),
)
def test_input_x_gradient_is_the_derivative_of_scaling_each_token(cell, L, E, H, T, seed):
    """Score i = d/de log p(x_pos) with token i's embedding scaled by (1 + e): distinct
    tokens (V > T), untied, so scaling a row of the table scales one input."""
    V = T + 3
    sd, model = make(cell, L, E, H, V, seed, scale=0.5)
    rng = np.random.default_rng(seed)
    ids = rng.permutation(V)[:T]
    pos = T - 1
    got = model.attribution(ids, pos).scores
    eps = 1e-5
    sd64 = {n: np.asarray(v, np.float64) for n, v in sd.items()}
    want = np.empty(pos)
    for i in range(pos):
        vals = []
        for sign in (1, -1):
            p = dict(sd64)
            p["encoder.weight"] = sd64["encoder.weight"].copy()
            p["encoder.weight"][ids[i]] *= 1 + sign * eps
            vals.append(oracle_logp(p, model.config, ids, pos))
        want[i] = (vals[0] - vals[1]) / (2 * eps)
    assert err(got, want) < FD_TOL or np.abs(got - want).max() < 1e-6


@settings(max_examples=8, deadline=None)
@given(
    cell=st.sampled_from(CELLS),
    L=st.integers(1, 2),
    H=st.sampled_from([1, 3, 6]),
    lag=st.integers(1, 30),
    seed=st.integers(0, 2**16),
)
def test_the_top_layers_gradient_by_lag_is_a_derivative_of_the_oracle(cell, L, H, lag, seed):
    """The top layer's state k >= 1 steps back is the initial state of the window after
    it: d log p / d h by central differences on that state, unit by unit. One position."""
    V = 11
    sd, model = make(cell, L, 4, H, V, seed, scale=0.6)
    ids = np.random.default_rng(seed).integers(0, V, lag + 2)
    prof = model.gradient_by_lag(ids, max_lag=lag, positions=1)
    p = int(prof.positions[0])
    assert p == len(ids) - 1
    config = model.config
    _, (h, c) = oracle.model_forward(sd, config, ids[: p - lag, None])  # after h_{p-1-lag}
    eps = 1e-5
    grad = np.empty(H)
    for u in range(H):
        vals = []
        for sign in (1, -1):
            hp = h.copy()
            hp[L - 1, 0, u] += sign * eps
            lp, _ = oracle.model_forward(sd, config, ids[p - lag : p, None], (hp, c))
            vals.append(lp[-1, 0, ids[p]])
        grad[u] = (vals[0] - vals[1]) / (2 * eps)
    want = np.linalg.norm(grad)
    assert abs(prof.norms[L - 1, lag] - want) <= FD_TOL * want + 1e-9


# ------------------------------------------------------------------------ the rest


def test_integrated_gradients_add_up_to_the_change_in_log_probability():
    """Completeness: sum of scores = log p(text) - log p(baseline), up to the midpoint
    rule's error, which falls as the steps grow."""
    _, model = make("lstm", seed=3)
    ids = np.random.default_rng(2).integers(0, 13, 30)
    deltas = [abs(model.attribution(ids, 29, "integrated_gradients", s).delta) for s in (2, 64)]
    a = model.attribution(ids, 29, "integrated_gradients", 64)
    assert deltas[1] < 1e-2 * abs(a.logprob - a.baseline_logprob)
    assert deltas[1] < deltas[0]


def test_a_window_attributes_the_last_tokens_from_the_state_before_them():
    _, model = make("gru", seed=4)
    ids = np.random.default_rng(3).integers(0, 13, 40)
    whole = model.attribution(ids, 30)
    part = model.attribution(ids, 30, window=8)
    assert part.start == 22 and len(part.scores) == 8
    # the same forward (the state before the window is the model's own): the same log p
    assert abs(part.logprob - whole.logprob) < 1e-5
    # with the window's state held fixed, the window's scores are those of the whole text
    assert err(part.scores, whole.scores[22:]) < 1e-4
    batched = attributions(model, ids, window=8)
    assert len(batched) == 40 and len(batched[0]) == 0 and len(batched[3]) == 3
    for p in (1, 3, 8, 30, 39):
        single = model.attribution(ids, p, window=8)
        assert np.abs(batched[p] - single.scores).max() < 1e-6 * max(1, np.abs(single.scores).max())


def test_singular_values_of_a_known_recurrent_matrix():
    sd, _ = make("lstm", L=1, H=4)
    w = np.zeros((16, 4), np.float32)
    for g, s in enumerate((0.5, 2.0, 1.0, 3.0)):
        w[4 * g : 4 * g + 4] = s * np.diag([1.0, 0.25, 0.5, 0.75])
    sd["rnn.weight_hh_l0"] = w
    sv = singular_values(Model.from_state_dict(sd, cell="lstm"))
    assert sv[0]["i"] == pytest.approx(0.5) and sv[0]["o"] == pytest.approx(3.0)
    assert sv[0]["all"] == pytest.approx(np.sqrt(0.25 + 4 + 1 + 9))


def test_reach_is_the_last_lag_above_the_fraction():
    _, model = make("rnn", L=1, seed=5)
    prof = model.gradient_by_lag(np.arange(13).repeat(3), max_lag=10, positions=5)
    prof.norms = np.array([[1.0, 0.5, 0.2, 0.05, 0.02, 0.001, 0, 0, 0, 0, 0]])
    assert prof.reach(0.01) == [4] and prof.reach(0.1) == [2]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.attribution([1, 2, 3], 0), r"position 0 is out of range.*\[1, 2\]"),
        (lambda m: m.attribution([1, 2, 3], 3), "position 3 is out of range"),
        (lambda m: m.attribution([1, 2, 3], 1.5), "position must be an integer"),
        (lambda m: m.attribution([1, 2, 3], 2, method="saliency"), "method must be one of"),
        (lambda m: m.attribution([1, 2, 3], 2, "integrated_gradients", 0), "steps must be"),
        (lambda m: m.attribution([1, 2, 3], 2, window=0), "window must be an integer >= 1"),
        (lambda m: m.attribution([], 1), "nothing to trace"),
        (lambda m: m.attribution([1, 99], 1), "token id 99 at 1 is outside"),
        (lambda m: m.gradient_by_lag([1, 2, 3], max_lag=5), "needs at least 7"),
        (lambda m: m.gradient_by_lag([1, 2, 3], max_lag=-1), "max_lag must be"),
        (lambda m: m.gradient_by_lag([1, 2, 3], 1, positions=0), "positions must be"),
    ],
)
def test_bad_input_is_one_clear_error(call, message):
    _, model = make("lstm")
    with pytest.raises(InputError, match=message):
        call(model)


def test_the_cuda_backend_attributes_what_the_cpu_does():
    """(numba's CUDA simulator in CI: a few tokens of a small model)"""
    import rnnlm_engine.kernels.cuda as kc

    if kc.unavailable_reason() is not None:
        pytest.skip(f"the cuda backend cannot run here: {kc.unavailable_reason()}")
    sd, cpu = make("gru", L=2, E=3, H=4, V=7)
    gpu = Model.from_state_dict(sd, cell="gru", backend="cuda")
    ids = [1, 5, 2, 6, 0]
    with kc.small_launches():
        a = cpu.attribution(ids, 4, "integrated_gradients", 2)
        b = gpu.attribution(ids, 4, "integrated_gradients", 2)
        la, lb = cpu.gradient_by_lag(ids, 2, 2), gpu.gradient_by_lag(ids, 2, 2)
        wa, wb = attributions(cpu, np.array(ids), 2), attributions(gpu, np.array(ids), 2)
    assert err(b.scores, a.scores) < 1e-4
    assert err(lb.norms, la.norms) < 1e-4
    for p in range(1, len(ids)):
        assert err(wb[p], wa[p]) < 1e-4


def test_unknown_tokens_in_a_text_are_one_clear_error():
    from rnnlm_engine import VocabularyError
    from rnnlm_engine.vocab import Vocabulary

    vocab = Vocabulary.build("abcdefghijklm", "char")
    config = ModelConfig("gru", len(vocab), 4, 5, 1)
    rng = np.random.default_rng(0)
    sd = {n: rng.uniform(-0.5, 0.5, s).astype(np.float32)
          for n, s in config.parameter_shapes().items()}  # fmt: skip
    model = Model.from_state_dict(sd, cell="gru", vocab=vocab)
    for call in (lambda: model.attribution("ab\u20acc", 2), lambda: model.trace("ab\u20acc"),
                 lambda: model.gradient_by_lag("ab\u20accdefg", 2)):  # fmt: skip
        with pytest.raises(VocabularyError, match="'\u20ac' at index 2"):
            call()
