"""The float64 oracle's gradients against central finite differences of its own forward pass.

The oracle is the specification every kernel is held to, so its backward passes are checked
here against nothing but its forward passes: the whole model's loss (every parameter, all
three cells, 1-3 layers, tied and untied, nonzero initial state), each cell's backward
through time (including a gradient on the final cell state), the softmax cross-entropy and
the embedding scatter-add. The optimizer formulas are checked on hand-made numbers and
against torch.optim when torch is installed.

Tolerance. Central differences (f(x + eps) - f(x - eps)) / (2 eps) carry a truncation error
of O(eps^2 f''') ~ 1e-12 and a rounding error of O(u |f| / eps) with u = 1.1e-16, about
1e-10 for |f| ~ 1 at eps = 1e-6. So each gradient tensor must match within
    max|numeric - analytic| <= RTOL * max|analytic| + ATOL,   RTOL = 1e-6, ATOL = 1e-8
(ATOL covers the rounding error with a 10-100x margin for tensors whose gradient is small).
A wrong backward formula (a dropped term, a swapped gate, a transposed matrix) is off by
O(max|analytic|), six orders of magnitude above this; ``test_gradcheck_rejects_*`` shows
that an error of 1e-4 relative in a single element is caught.
"""

from __future__ import annotations

import numpy as np
import pytest

from rnnlm_engine import ModelConfig, oracle
from rnnlm_engine.config import CELLS, GATES

EPS = 1e-6
RTOL = 1e-6
ATOL = 1e-8
# tensors with at most this many elements are checked in full; larger ones on a random
# subset (plus the element with the largest gradient)
FULL_CHECK = 64
SUBSET = 20


# ---------------------------------------------------------------------------- helpers


def numeric_grad(f, x: np.ndarray, index: tuple) -> float:
    """Central difference of the scalar f() with respect to x[index] (x is changed in place
    and restored)."""
    old = x[index]
    x[index] = old + EPS
    f_plus = f()
    x[index] = old - EPS
    f_minus = f()
    x[index] = old
    return (f_plus - f_minus) / (2.0 * EPS)


def indices_to_check(shape: tuple, analytic: np.ndarray, rng: np.random.Generator) -> list:
    all_idx = list(np.ndindex(*shape))
    if len(all_idx) <= FULL_CHECK:
        return all_idx
    picks = rng.choice(len(all_idx), size=SUBSET, replace=False)
    chosen = [all_idx[i] for i in picks]
    chosen.append(np.unravel_index(int(np.argmax(np.abs(analytic))), shape))
    return chosen


def check_grad(name: str, f, x: np.ndarray, analytic: np.ndarray, rng: np.random.Generator):
    """Assert that analytic (shape of x) is the gradient of f() with respect to x."""
    analytic = np.asarray(analytic, np.float64)
    assert analytic.shape == x.shape, f"{name}: gradient shape {analytic.shape} != {x.shape}"
    idx = indices_to_check(x.shape, analytic, rng)
    numeric = np.array([numeric_grad(f, x, i) for i in idx])
    expected = np.array([analytic[i] for i in idx])
    err = np.abs(numeric - expected)
    bound = RTOL * np.abs(analytic).max() + ATOL
    worst = int(np.argmax(err))
    assert err[worst] <= bound, (
        f"{name}{idx[worst]}: analytic {expected[worst]:.12g}, finite difference "
        f"{numeric[worst]:.12g} (error {err[worst]:.3g} > bound {bound:.3g})"
    )


def random_params(config: ModelConfig, rng: np.random.Generator, scale: float) -> dict:
    """Float64 parameters, uniform in +-scale (recurrent matrices +-scale/sqrt(H), as
    PyTorch initialises them, so that the recurrence stays well-conditioned)."""
    H = config.hidden_size
    params = {}
    for name, shape in config.parameter_shapes().items():
        bound = scale / np.sqrt(H) if "weight_hh" in name else scale
        params[name] = rng.uniform(-bound, bound, shape)
    return params


def random_state(config: ModelConfig, batch: int, rng: np.random.Generator):
    shape = (config.num_layers, batch, config.hidden_size)
    h0 = rng.uniform(-0.9, 0.9, shape)
    c0 = rng.uniform(-2.0, 2.0, shape) if config.cell == "lstm" else None
    return h0, c0


def forward_loss(params, config, inputs, targets, state) -> float:
    """Mean cross-entropy from the oracle's forward pass alone (no backward code involved)."""
    logprobs, _ = oracle.model_forward(params, config, inputs, state)
    picked = np.take_along_axis(logprobs, targets[..., None], axis=2)
    return float(-picked.mean())


# ---------------------------------------------------------------------------- whole model


MODEL_CASES = [
    (cell, layers, tied) for cell in CELLS for layers in (1, 2, 3) for tied in (False, True)
]


@pytest.mark.parametrize(("cell", "layers", "tied"), MODEL_CASES)
def test_model_loss_and_grad_matches_finite_differences(cell, layers, tied):
    seed = CELLS.index(cell) * 100 + layers * 10 + int(tied)
    rng = np.random.default_rng(seed)
    V = int(rng.integers(7, 12))
    H = int(rng.integers(3, 6))
    E = H if tied else int(rng.integers(3, 6))
    T, B = int(rng.integers(3, 5)), 2
    config = ModelConfig(cell, V, E, H, layers, tied)
    params = random_params(config, rng, scale=0.8)
    state = random_state(config, B, rng)
    inputs = rng.integers(0, V, (T, B))
    targets = rng.integers(0, V, (T, B))

    loss, grads, new_state = oracle.model_loss_and_grad(params, config, inputs, targets, state)
    assert set(grads) == set(config.parameter_shapes())
    assert loss == pytest.approx(forward_loss(params, config, inputs, targets, state), rel=1e-12)
    # the returned state is the forward pass's final state
    _, fwd_state = oracle.model_forward(params, config, inputs, state)
    np.testing.assert_array_equal(new_state[0], fwd_state[0])

    def f():
        return forward_loss(params, config, inputs, targets, state)

    for name, x in params.items():
        check_grad(name, f, x, grads[name], rng)


@pytest.mark.parametrize("cell", CELLS)
def test_model_grad_with_saturated_gates(cell):
    """Large input weights push gates into saturation, where derivatives are tiny."""
    rng = np.random.default_rng(7 + CELLS.index(cell))
    config = ModelConfig(cell, vocab_size=9, emb_size=4, hidden_size=3, num_layers=2)
    params = random_params(config, rng, scale=3.0)
    state = random_state(config, 2, rng)
    inputs, targets = rng.integers(0, 9, (4, 2)), rng.integers(0, 9, (4, 2))
    _, grads, _ = oracle.model_loss_and_grad(params, config, inputs, targets, state)

    def f():
        return forward_loss(params, config, inputs, targets, state)

    for name, x in params.items():
        check_grad(name, f, x, grads[name], rng)


def test_gradcheck_rejects_a_slightly_wrong_gradient():
    """The check above can fail: one element off by 1e-4 relative is caught."""
    rng = np.random.default_rng(3)
    config = ModelConfig("lstm", vocab_size=7, emb_size=3, hidden_size=3, num_layers=1)
    params = random_params(config, rng, scale=0.8)
    inputs, targets = rng.integers(0, 7, (3, 2)), rng.integers(0, 7, (3, 2))
    _, grads, _ = oracle.model_loss_and_grad(params, config, inputs, targets)
    name = "rnn.weight_hh_l0"
    wrong = grads[name].copy()
    wrong[0, 0] += 1e-4 * np.abs(wrong).max()

    def f():
        return forward_loss(params, config, inputs, targets, None)

    check_grad(name, f, params[name], grads[name], rng)
    with pytest.raises(AssertionError, match="finite difference"):
        check_grad(name, f, params[name], wrong, rng)


# ---------------------------------------------------------------------------- cells


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("scale", [0.7, 2.5])
def test_cell_backward_matches_finite_differences(cell, scale):
    """Objective J = sum(hs * dhs) + sum(c_T * dcT): the backward's outputs are its gradients
    with respect to xproj, w_hh, b_hh, h0 and (lstm) c0."""
    rng = np.random.default_rng(int(scale * 10) + CELLS.index(cell))
    T, B, H = 4, 2, 3
    G = GATES[cell] * H
    xproj = rng.uniform(-scale, scale, (T, B, G))
    w_hh = rng.uniform(-scale, scale, (G, H)) / np.sqrt(H)
    b_hh = rng.uniform(-scale, scale, G)
    h0 = rng.uniform(-0.9, 0.9, (B, H))
    c0 = rng.uniform(-2.0, 2.0, (B, H)) if cell == "lstm" else None
    dhs = rng.standard_normal((T, B, H))
    dcT = rng.standard_normal((B, H)) if cell == "lstm" else None
    forward = oracle.CELL_FORWARD[cell]

    def J():
        hs, _, cT, _ = forward(xproj, w_hh, b_hh, h0, c0)
        total = np.sum(hs * dhs)
        if dcT is not None:
            total += np.sum(cT * dcT)
        return float(total)

    hs, hT, cT, cache = forward(xproj, w_hh, b_hh, h0, c0)
    np.testing.assert_array_equal(hT, hs[-1])
    assert (cT is None) == (cell != "lstm")
    dxproj, dw_hh, db_hh, dh0, dc0 = oracle.CELL_BACKWARD[cell](cache, dhs, dcT, w_hh)
    check_grad("xproj", J, xproj, dxproj, rng)
    check_grad("w_hh", J, w_hh, dw_hh, rng)
    check_grad("b_hh", J, b_hh, db_hh, rng)
    check_grad("h0", J, h0, dh0, rng)
    if cell == "lstm":
        check_grad("c0", J, c0, dc0, rng)
    else:
        assert dc0 is None


def test_lstm_backward_without_dcT_equals_zero_dcT():
    rng = np.random.default_rng(11)
    T, B, H = 3, 2, 3
    xproj = rng.standard_normal((T, B, 4 * H))
    w_hh = rng.standard_normal((4 * H, H)) / np.sqrt(H)
    b_hh = rng.standard_normal(4 * H)
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    dhs = rng.standard_normal((T, B, H))
    _, _, _, cache = oracle.lstm_forward(xproj, w_hh, b_hh, h0, c0)
    a = oracle.lstm_backward(cache, dhs, None, w_hh)
    b = oracle.lstm_backward(cache, dhs, np.zeros((B, H)), w_hh)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------- softmax


def test_xent_backward_matches_finite_differences():
    rng = np.random.default_rng(5)
    N, V = 6, 9
    logits = rng.standard_normal((N, V))
    logits[0, 3] += 9.0  # an outlier logit: one token takes nearly all the probability
    logits[1, :] += 500.0  # a large common offset: log_softmax must not overflow
    bias = rng.standard_normal(V)  # the decoder bias, which the softmax adds to every row
    targets = np.array([3, 0, 8, 8, 1, 4])
    scale = 1.0 / N

    def f():
        return float(scale * oracle.xent_forward(logits, bias, targets).sum())

    dlogits = oracle.xent_backward(logits, bias, targets, scale)
    check_grad("logits", f, logits, dlogits, rng)
    # the bias's gradient is the column sum of the logits' gradient
    check_grad("bias", f, bias, dlogits.sum(axis=0), rng)


def test_xent_forward_and_log_softmax_match_the_definition():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0]])
    targets = np.array([2, 1, 0])
    lse = np.array([np.log(np.exp(1.0) + np.exp(2.0) + np.exp(3.0)), np.log(3.0), 1000.0])
    np.testing.assert_allclose(oracle.log_softmax(logits), logits - lse[:, None], rtol=1e-14)
    np.testing.assert_allclose(
        oracle.xent_forward(logits, np.zeros(3), targets),
        [lse[0] - 3.0, np.log(3.0), 0.0],
        atol=1e-14,
    )
    # a bias is added to every row before the softmax
    bias = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(
        oracle.log_softmax(logits, bias), oracle.log_softmax(logits + bias), rtol=1e-14
    )
    np.testing.assert_allclose(
        oracle.xent_forward(logits, bias, targets),
        oracle.xent_forward(logits + bias, np.zeros(3), targets),
        rtol=1e-14,
    )


def test_embedding_backward_matches_finite_differences():
    rng = np.random.default_rng(9)
    V, E = 7, 3
    weight = rng.standard_normal((V, E))
    ids = np.array([2, 5, 2, 0, 2, 6])  # repeats must add up; rows 1, 3 and 4 get nothing
    dout = rng.standard_normal((len(ids), E))

    def f():
        return float(np.sum(oracle.embedding_forward(weight, ids) * dout))

    dweight = oracle.embedding_backward(ids, dout, V)
    check_grad("encoder.weight", f, weight, dweight, rng)
    np.testing.assert_array_equal(dweight[[1, 3, 4]], 0.0)
    np.testing.assert_allclose(dweight[2], dout[0] + dout[2] + dout[4], rtol=1e-15)


# ---------------------------------------------------------------------------- optimizer


def test_global_norm_and_clip_scale_hand_made():
    grads = [np.array([3.0, 4.0]), np.array([[12.0]])]
    assert oracle.global_norm(grads) == 13.0  # sqrt(9 + 16 + 144)
    assert oracle.global_norm([np.zeros(3, np.float32)]) == 0.0
    # PyTorch's clip_grad_norm_: factor max_norm / (norm + 1e-6), never above 1
    assert oracle.clip_scale(13.0, 6.5) == 6.5 / (13.0 + 1e-6)
    assert oracle.clip_scale(1.0, 5.0) == 1.0
    assert oracle.clip_scale(0.0, 5.0) == 1.0


def test_sgd_update_hand_made():
    param = np.array([1.0, -2.0, 0.0])
    grad = np.array([0.5, 0.25, -4.0])
    np.testing.assert_allclose(oracle.sgd_update(param, grad, 0.1), [0.95, -2.025, 0.4])


def test_adam_update_hand_made():
    # step 1: m = (1 - b1) g, v = (1 - b2) g^2; bias correction gives m_hat = g, v_hat = g^2,
    # so the update is lr * g / (|g| + eps)
    param = np.array([1.0, -1.0, 0.5])
    grad = np.array([0.2, -3.0, 0.0])
    new, m, v = oracle.adam_update(param, grad, np.zeros(3), np.zeros(3), step=1, lr=0.01)
    np.testing.assert_allclose(m, 0.1 * grad, rtol=1e-15)
    np.testing.assert_allclose(v, 0.001 * grad**2, rtol=1e-15)
    expected = param - 0.01 * grad / (np.abs(grad) + 1e-8)
    np.testing.assert_allclose(new, expected, rtol=1e-12)
    # step 2 with the same gradient: m_hat = g and v_hat = g^2 again
    new2, m2, v2 = oracle.adam_update(new, grad, m, v, step=2, lr=0.01)
    np.testing.assert_allclose(new2, new - 0.01 * grad / (np.abs(grad) + 1e-8), rtol=1e-12)


def test_optimizer_formulas_match_torch():
    torch = pytest.importorskip(
        "torch", reason="torch not installed: comparing with torch.optim needs it"
    )
    rng = np.random.default_rng(13)
    shapes = [(4, 3), (5,)]
    grads_per_step = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]
    lr, beta1, beta2, eps = 0.003, 0.8, 0.99, 1e-6

    # Adam: several steps with changing gradients
    start = [rng.standard_normal(s) for s in shapes]
    tparams = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in start]
    opt = torch.optim.Adam(tparams, lr=lr, betas=(beta1, beta2), eps=eps)
    ours = [p.copy() for p in start]
    ms = [np.zeros(s) for s in shapes]
    vs = [np.zeros(s) for s in shapes]
    for step, grads in enumerate(grads_per_step, start=1):
        for tp, g in zip(tparams, grads, strict=True):
            tp.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        for k, g in enumerate(grads):
            ours[k], ms[k], vs[k] = oracle.adam_update(
                ours[k], g, ms[k], vs[k], lr, beta1, beta2, eps, step
            )
    for tp, p in zip(tparams, ours, strict=True):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)

    # SGD
    tparams = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in start]
    opt = torch.optim.SGD(tparams, lr=lr)
    ours = [p.copy() for p in start]
    for grads in grads_per_step:
        for tp, g in zip(tparams, grads, strict=True):
            tp.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        ours = [oracle.sgd_update(p, g, lr) for p, g in zip(ours, grads, strict=True)]
    for tp, p in zip(tparams, ours, strict=True):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)

    # global norm and clipping, both when clipping bites and when it does not
    grads = grads_per_step[0]
    norm = oracle.global_norm(grads)
    for max_norm in (0.5 * norm, 2.0 * norm):
        tparams = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
        for tp, g in zip(tparams, grads, strict=True):
            tp.grad = torch.tensor(g, dtype=torch.float64)
        total = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
        assert float(total) == pytest.approx(norm, rel=1e-14)
        factor = oracle.clip_scale(norm, max_norm)
        for tp, g in zip(tparams, grads, strict=True):
            np.testing.assert_allclose(g * factor, tp.grad.numpy(), rtol=1e-14)
