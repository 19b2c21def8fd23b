"""Every CPU kernel against its float64 oracle twin, on inputs drawn by Hypothesis.

Hypothesis draws the shapes (including 1 and odd sizes), the scales (small, ordinary, and
large enough to saturate the gates or make outlier logits) and a seed; the arrays come
from a seeded NumPy generator. Each kernel gets float32 inputs; the oracle gets the same
values in float64. Outputs are filled with NaN before each call, so an element a kernel
fails to write shows up as NaN and fails the comparison.

Error measure: normwise relative error, max|got - want| / max|want| over a whole tensor
(element-wise relative error is meaningless for values near 0, such as log-probs of
near-certain tokens or gradients that cancel).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from kernel_cases import (
    CELLS,
    FWD_FLOOR,
    FWD_TOL,
    cell_case,
    cell_inputs,
    check_grads,
    f32,
    oracle_cell,
    oracle_forward,
    rel_err,
)

import rnnlm_engine.kernels.cpu as kc
from rnnlm_engine import oracle

# the cell tolerances (FWD_TOL, GRAD_TOL, GRAD_FLOOR) and their reasons: kernel_cases.py
SOFTMAX_TOL = 1e-5  # one row: exp error 2e-7 relative plus a sum of V <= 300 terms


def poisoned(shape) -> np.ndarray:
    return np.full(shape, np.nan, np.float32)


# ---------------------------------------------------------------------------- embedding


@given(
    V=st.integers(1, 300),
    E=st.integers(1, 64),
    N=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_embedding_forward_and_backward(V, E, N, seed):
    rng = np.random.default_rng(seed)
    weight = f32(rng, (V, E))
    ids = rng.integers(0, V, N)  # repeats are likely: the scatter-add must sum them
    out = poisoned((N, E))
    kc.embedding_forward(weight, ids, out)
    np.testing.assert_array_equal(out, oracle.embedding_forward(weight, ids))  # a copy: exact

    dout = f32(rng, (N, E))
    dweight = np.zeros((V, E), np.float32)
    kc.embedding_backward(ids, dout, dweight)
    want = oracle.embedding_backward(ids, dout.astype(np.float64), V)
    # a sum of at most N float32 terms per element: its error is bounded by N u times the
    # sum of the terms' magnitudes, not the (possibly cancelling) sum itself
    magnitude = oracle.embedding_backward(ids, np.abs(dout).astype(np.float64), V)
    assert rel_err(dweight, want, floor=float(magnitude.max())) < 1e-5


# ---------------------------------------------------------------------------- cells


def run_cell_kernels(cell, inp, dhs, dcT):
    """Forward then backward through the CPU kernels, with NaN-poisoned outputs."""
    T, B, G = inp["xproj"].shape
    H = inp["h0"].shape[1]
    hs = poisoned((T, B, H))
    cs = poisoned((T, B, H)) if cell == "lstm" else None
    width = kc.ACTS_PER_HIDDEN[cell] * H
    acts = poisoned((T, B, width)) if width else None
    kc.CELL_FORWARD[cell](
        inp["xproj"], inp["w_hh"], inp["b_hh"], inp["h0"], inp["c0"], hs, cs, acts
    )
    dxproj, dw_hh, db_hh = poisoned((T, B, G)), poisoned((G, H)), poisoned(G)
    dh0 = poisoned((B, H))
    dc0 = poisoned((B, H)) if cell == "lstm" else None
    kc.CELL_BACKWARD[cell](
        inp["w_hh"], inp["h0"], inp["c0"], hs, cs, acts, dhs, dcT, dxproj, dw_hh, db_hh, dh0, dc0
    )
    return hs, cs, (dxproj, dw_hh, db_hh, dh0, dc0)


@pytest.mark.parametrize("cell", CELLS)
@given(
    T=st.integers(1, 40),
    B=st.integers(1, 16),
    H=st.integers(1, 64),
    w_scale=st.sampled_from([0.5, 1.0, 2.0]),
    x_scale=st.sampled_from([0.3, 1.0, 8.0]),  # 8: most gates saturate
    seed=st.integers(0, 2**32 - 1),
)
@example(T=1, B=1, H=1, w_scale=1.0, x_scale=1.0, seed=0)
@example(T=40, B=16, H=64, w_scale=2.0, x_scale=8.0, seed=1)
@example(T=1, B=1, H=1, w_scale=0.5, x_scale=8.0, seed=3653235)  # every |h| ~ 2e-7
def test_cell_forward_backward(cell, T, B, H, w_scale, x_scale, seed):
    inp, dhs, dcT = cell_case(np.random.default_rng(seed), cell, T, B, H, w_scale, x_scale)
    hs, cs, grads = run_cell_kernels(cell, inp, dhs, dcT)
    want_hs, want_cs, want = oracle_cell(cell, inp, dhs, dcT)
    assert rel_err(hs, want_hs, FWD_FLOOR) < FWD_TOL
    if cell == "lstm":
        assert rel_err(cs, want_cs, FWD_FLOOR) < FWD_TOL
    check_grads(grads, want, dhs)  # judged against GRAD_FLOOR of |dhs|: see check_grads


@pytest.mark.parametrize("cell", CELLS)
def test_cell_saturated_gates_stay_finite(cell):
    """Pre-activations of +-1e4 saturate every gate: outputs exact +-1/0, no inf or NaN."""
    rng = np.random.default_rng(7)
    inp = cell_inputs(rng, cell, 5, 3, 8, 1.0, 1.0)
    inp["xproj"] = np.where(rng.random(inp["xproj"].shape) < 0.5, -1e4, 1e4).astype(np.float32)
    hs, cs, grads = run_cell_kernels(cell, inp, f32(rng, (5, 3, 8)), None)
    want_hs, _, _ = oracle_forward(cell, inp)
    assert rel_err(hs, want_hs, FWD_FLOOR) < FWD_TOL
    for g in grads:
        assert g is None or np.all(np.isfinite(g))


# ---------------------------------------------------------------------------- softmax


def outlier_logits(rng, N, V, scale, n_outliers):
    """Random logits with a few large outliers per row: a realistic peaked distribution
    (uniform random logits make every probability ~1/V and hide errors)."""
    logits = rng.standard_normal((N, V)) * scale
    for n in range(N):
        cols = rng.integers(0, V, n_outliers)
        logits[n, cols] += rng.uniform(5, 40, n_outliers) * rng.choice([-1, 1], n_outliers)
    return logits.astype(np.float32)


softmax_shapes = dict(
    N=st.integers(1, 64),
    V=st.integers(2, 300),
    scale=st.sampled_from([0.1, 1.0, 10.0, 50.0]),
    n_outliers=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
    # the kernels accept any shift in [row max, row max + 40]: test both ends and between
    slack=st.sampled_from([0.0, 17.0, 40.0]),
)


def shifted(logits, bias, slack):
    """A shift per row: the exact max of logits + bias (from the row_max kernel) + slack."""
    exact = poisoned(logits.shape[0])
    kc.row_max(logits, bias, exact)
    want = oracle.row_max(logits.astype(np.float64), bias)
    np.testing.assert_array_equal(exact, (logits + bias).max(axis=1))  # float32 sums: exact
    assert np.allclose(exact, want, rtol=1e-6, atol=1e-6)
    return (exact + np.float32(slack)).astype(np.float32)


@given(
    N=st.integers(1, 64),
    V=st.integers(2, 300),
    spread=st.sampled_from([0.0, 39.0, 80.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_row_shift_is_within_contract(N, V, spread, seed):
    rng = np.random.default_rng(seed)
    logits = outlier_logits(rng, N, V, 3.0, 2)
    bias = rng.uniform(-spread / 2, spread / 2, V).astype(np.float32)
    out = poisoned(N)
    kc.row_shift(logits, bias, out)
    true_max = (logits.astype(np.float64) + bias).max(axis=1)
    assert np.all(out >= true_max - 1e-5 * np.abs(true_max).max())
    assert np.all(out <= true_max + kc.SHIFT_SLACK + 1e-3)


@given(**softmax_shapes)
@example(N=1, V=2, scale=50.0, n_outliers=3, seed=0, slack=40.0)
def test_log_softmax(N, V, scale, n_outliers, seed, slack):
    rng = np.random.default_rng(seed)
    logits = outlier_logits(rng, N, V, scale, n_outliers)
    bias = f32(rng, V, scale)
    out = poisoned((N, V))
    kc.log_softmax(logits, bias, shifted(logits, bias, slack), out)
    want = oracle.log_softmax(logits.astype(np.float64), bias.astype(np.float64))
    # per element: |error| <= a few ulps of |logit - shift| plus the log-sum's rounding
    assert rel_err(out, want) < SOFTMAX_TOL


def nll_tolerance(logits, bias):
    # absolute: nll is a difference of two logits-sized numbers, so its error scales with
    # the logits' magnitude, not with nll itself (which may be ~0 for a certain target)
    return SOFTMAX_TOL * max(1.0, float(np.max(np.abs(logits)) + np.max(np.abs(bias))))


@given(**softmax_shapes)
def test_xent_forward(N, V, scale, n_outliers, seed, slack):
    rng = np.random.default_rng(seed)
    logits = outlier_logits(rng, N, V, scale, n_outliers)
    bias = f32(rng, V, scale)
    targets = rng.integers(0, V, N)
    nll = poisoned(N)
    kc.xent_forward(logits, bias, targets, shifted(logits, bias, slack), nll)
    want = oracle.xent_forward(logits.astype(np.float64), bias.astype(np.float64), targets)
    assert np.max(np.abs(nll - want)) < nll_tolerance(logits, bias)


def check_prediction_stats(logits, bias, targets, K, got):
    """got = (logp, entropy, rank, top_ids, top_vals) of a prediction_stats kernel against
    the oracle; the rank and the top ids exactly against the float32 sums logits + bias
    that the kernels compare (exact: a comparison adds no rounding)."""
    logp, entropy, rank, top_ids, top_vals = got
    want = oracle.prediction_stats(logits.astype(np.float64), bias.astype(np.float64), targets, K)
    tol = nll_tolerance(logits, bias)  # a difference of logit-sized numbers (see there)
    assert np.max(np.abs(logp - want[0])) < tol
    # entropy = log s - sum p (x - m): the same absolute error as the log-normaliser
    assert np.max(np.abs(entropy - want[1])) < tol
    z = logits + bias
    rows = np.arange(len(targets))
    np.testing.assert_array_equal(rank, 1 + np.sum(z > z[rows, targets][:, None], axis=1))
    np.testing.assert_array_equal(top_ids, np.argsort(-z, axis=1, kind="stable")[:, :K])
    if K:
        assert np.max(np.abs(top_vals - want[4])) < tol


@given(**softmax_shapes, K=st.integers(0, 6))
@example(N=2, V=2100, scale=1.0, n_outliers=0, seed=3, slack=0.0, K=6)  # two sum chunks
def test_prediction_stats(N, V, scale, n_outliers, seed, slack, K):
    rng = np.random.default_rng(seed)
    logits = outlier_logits(rng, N, V, scale, n_outliers)
    bias = f32(rng, V, scale)
    if seed % 3 == 0:  # ties: repeated values, where the lower id must come first
        logits = np.round(logits).astype(np.float32)
        bias = np.zeros(V, np.float32)
    targets = rng.integers(0, V, N)
    K = min(K, V)
    out = poisoned(N), poisoned(N), np.full(N, -7), np.full((N, K), -7), poisoned((N, K))
    kc.prediction_stats(logits, bias, shifted(logits, bias, slack), targets, *out)
    check_prediction_stats(logits, bias, targets, K, out)


@given(**softmax_shapes, scale_factor=st.sampled_from([1.0, 1 / 7, 1e-3]))
@example(N=1, V=2, scale=0.1, n_outliers=1, seed=114, slack=0.0, scale_factor=1.0)
def test_xent_forward_backward(N, V, scale, n_outliers, seed, slack, scale_factor):
    rng = np.random.default_rng(seed)
    logits = outlier_logits(rng, N, V, scale, n_outliers)
    bias = f32(rng, V, scale)
    targets = rng.integers(0, V, N)
    nll, dbias = poisoned(N), poisoned(V)
    shift = shifted(logits, bias, slack)
    grad = logits.copy()  # overwritten in place with the gradient
    kc.xent_forward_backward(grad, bias, targets, shift, scale_factor, nll, dbias)
    l64, b64 = logits.astype(np.float64), bias.astype(np.float64)
    want_nll, want, want_dbias = oracle.xent_forward_backward(l64, b64, targets, scale_factor)
    assert np.max(np.abs(nll - want_nll)) < nll_tolerance(logits, bias)
    # softmax - onehot: each element is a probability, off by a few ulps of 1 at most (a
    # target of probability 1 - 1e-13 is exactly 1 in float32), so errors are judged
    # against the gradient's natural size, scale_factor, when the gradient is smaller
    assert rel_err(grad, want, floor=scale_factor) < SOFTMAX_TOL
    # the bias gradient sums N such elements per column
    assert rel_err(dbias, want_dbias, floor=scale_factor) < SOFTMAX_TOL * max(1, N) ** 0.5


def scratch():
    """A work(name, shape) function as the model's workspace gives: NaN-filled arrays."""
    arrays = {}

    def work(name, shape):
        if name not in arrays or arrays[name].shape != shape:
            arrays[name] = poisoned(shape)
        return arrays[name]

    return work


@given(
    N=st.integers(1, 90),
    V=st.integers(2, 300),
    H=st.integers(1, 64),
    scale=st.sampled_from([0.1, 1.0, 10.0]),
    jump=st.sampled_from([0.0, 30.0, 61.0, 150.0]),
    max_rows=st.sampled_from([1, 7, 32, 2048]),
    block_floats=st.sampled_from([1, 50, 777, 1 << 20]),
    min_rows=st.sampled_from([1, 64]),
    seed=st.integers(0, 2**32 - 1),
)
@example(N=70, V=20, H=3, scale=0.1, jump=150.0, max_rows=32, block_floats=160, min_rows=64, seed=1)
def test_decode_xent(N, V, H, scale, jump, max_rows, block_floats, min_rows, seed):
    """The blocked scoring decoder against the oracle: blocks of positions and of
    vocabulary rows down to one, the row-major path for few positions, and a vocabulary
    row far above the rest (`jump` nats, at a random place: in a later block it forces
    the rescaling or, past RESCALE_LIMIT, the recomputation of a block)."""
    rng = np.random.default_rng(seed)
    top = rng.uniform(-1, 1, (N, H)).astype(np.float32)  # cell outputs lie in [-1, 1]
    w_dec = f32(rng, (V, H), scale)
    bias = f32(rng, V, scale)
    bias[rng.integers(0, V)] += np.float32(jump)
    targets = rng.integers(0, V, N)
    nll = poisoned(N)
    kc.decode_xent(
        top, w_dec, bias, targets, nll, scratch(),
        max_rows=max_rows, block_floats=block_floats, min_rows=min_rows,
    )  # fmt: skip
    logits = top.astype(np.float64) @ w_dec.astype(np.float64).T
    want = oracle.xent_forward(logits, bias.astype(np.float64), targets)
    assert np.all(np.isfinite(nll))
    # the product in float32 adds ~sqrt(H) u |logit| to each logit; see nll_tolerance
    assert np.max(np.abs(nll - want)) < nll_tolerance(logits, bias)


def test_decode_xent_recomputes_a_block_far_above_the_running_max():
    """First vocabulary block at 0, a later one 100 nats higher for every position (past
    RESCALE_LIMIT): the sums must be redone relative to the new max, not overflow."""
    N, V, H = 80, 12, 2
    top = np.ones((N, H), np.float32)
    w_dec = np.zeros((V, H), np.float32)
    w_dec[9] = 50.0  # logit 100 for every position
    bias = np.zeros(V, np.float32)
    targets = np.arange(N) % V
    nll = poisoned(N)
    assert 100.0 > kc._elementwise.RESCALE_LIMIT
    kc.decode_xent(top, w_dec, bias, targets, nll, scratch(), block_floats=4 * N, min_rows=1)
    want = oracle.xent_forward(top.astype(np.float64) @ w_dec.T.astype(np.float64), bias, targets)
    np.testing.assert_allclose(nll, want, rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------- long sums
# Sums over a large vocabulary or over many rows end in float64 (bench/sum_precision.py).
# The cases make the terms equal, so that a float32 running sum rounds every addition the
# same way and its error grows with the count instead of averaging out. With the former
# float32 sums: the log-normaliser of V=100,000 off by 4.6e-5 nats (48 ulps), 9.3e-4 in
# decode_xent; the decoder bias over 20,000 rows off by 1.9e-4 of its terms' magnitude;
# column_sums (numpy's float32 sum over axis 0) by up to 2e-4 relative.

LONG_SOFTMAX_KERNELS = [
    "log_softmax", "stream softmax", "xent_forward", "xent_forward_backward", "decode_xent",
]  # fmt: skip


@pytest.mark.parametrize("kernel", LONG_SOFTMAX_KERNELS)
def test_log_normaliser_of_a_large_vocabulary_is_summed_in_float64(kernel):
    N, V = 64, 100_000
    logits = np.full((N, V), -0.1, np.float32)
    logits[:, 0] = 0.0  # the row max: the other V - 1 terms are all exp(-0.1)
    bias = np.zeros(V, np.float32)
    targets = np.arange(N) * 997 % V
    shift = shifted(logits, bias, 0.0)
    l64 = logits.astype(np.float64)
    if kernel in ("log_softmax", "stream softmax"):
        got = poisoned((N, V))
        if kernel == "log_softmax":
            kc.log_softmax(logits, bias, shift, got)
        else:  # the streaming step's row softmax (stream_step's last stage)
            kc._stream._log_softmax_serial(logits, got)
        want = oracle.log_softmax(l64)
    else:
        got = poisoned(N)
        if kernel == "xent_forward":
            kc.xent_forward(logits, bias, targets, shift, got)
        elif kernel == "xent_forward_backward":
            kc.xent_forward_backward(logits.copy(), bias, targets, shift, 1 / N, got, poisoned(V))
        else:  # the logits as the product of ones (N, 1) with them (V, 1): exact
            w_dec = np.ascontiguousarray(logits[0][:, None])
            kc.decode_xent(np.ones((N, 1), np.float32), w_dec, bias, targets, got, scratch())
        want = oracle.xent_forward(l64, 0.0, targets)
    # The log-normaliser is 11.4 (a float32 ulp: 9.5e-7). Left: the rounding of the result
    # (half an ulp), the exp's error (under 2e-7 relative, here the same for every term)
    # and the float32 sums within chunks of 1024 terms (~1e-7): under 2e-6.
    assert np.max(np.abs(got - want)) < 2e-6


def test_bias_gradient_over_many_rows_is_summed_in_float64():
    N = 20_000
    logits = np.tile(np.array([0.0, -0.1, -0.2, -3.0, 1.5], np.float32), (N, 1))
    bias = np.zeros(5, np.float32)
    targets = np.arange(N) % 3  # columns 0-2 cancel partly; 3 and 4 are sums of p alone
    dbias = poisoned(5)
    shift = shifted(logits, bias, 0.0)
    kc.xent_forward_backward(logits.copy(), bias, targets, shift, 1 / N, poisoned(N), dbias)
    l64 = logits.astype(np.float64)
    _, want, want_dbias = oracle.xent_forward_backward(l64, 0.0, targets, 1 / N)
    magnitude = np.abs(want).sum(axis=0)
    # every term is a float32 product (half an ulp) of an exp (2e-7), the same in every row,
    # so these errors add up to under 3e-7 of the magnitude; the kernel's float32 sums of
    # 16 rows add under 7.5 u (4.5e-7) and its float64 sum and rounding half an ulp more.
    # Measured: 1.4e-7 at most (the float32 sum over all rows: 1.9e-4).
    assert np.max(np.abs(dbias - want_dbias) / magnitude) < 1e-6


def test_column_sums_are_summed_in_float64():
    N = 20_000
    a = np.tile(np.array([0.1, -0.3, 1 / 3, 1.0, 7e-5], np.float32), (N, 1))
    a[1::2, 3] = -1.0  # a column that cancels to 0 exactly
    # every partial sum of a column is exact in float64 (24-bit terms, all equal in
    # magnitude, fewer than 2^15 of them: 39 bits of 53), so the result must be the
    # float32 rounding of the exact sum
    want = a.astype(np.float64).sum(axis=0).astype(np.float32)
    np.testing.assert_array_equal(kc.column_sums(a), want)


# ---------------------------------------------------------------------------- optimizer


@given(n=st.integers(1, 5000), seed=st.integers(0, 2**32 - 1))
def test_sum_of_squares_and_scale(n, seed):
    rng = np.random.default_rng(seed)
    x = f32(rng, n, 3.0)
    got = kc.sum_of_squares(x)
    want = oracle.sum_of_squares(x)
    assert abs(got - want) <= 1e-12 * max(want, 1.0)  # float64 accumulation of exact squares
    y = x.copy()
    kc.scale_inplace(y, 0.37)
    np.testing.assert_allclose(y, oracle.scale_inplace(x, 0.37), rtol=1e-6)  # one rounding


@given(
    n=st.integers(1, 5000),
    lr=st.sampled_from([1e-3, 0.1, 20.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_sgd_update(n, lr, seed):
    rng = np.random.default_rng(seed)
    p, g = f32(rng, n), f32(rng, n)
    got = p.copy()
    kc.sgd_update(got, g, lr)
    want = oracle.sgd_update(p.astype(np.float64), g.astype(np.float64), lr)
    # p - lr g in float32: two roundings of terms of size max(|p|, lr |g|)
    assert np.max(np.abs(got - want)) <= 4e-7 * max(1.0, np.max(np.abs(want)), lr * np.abs(g).max())


@given(
    V=st.integers(1, 300),
    E=st.integers(1, 40),
    lr=st.sampled_from([1e-3, 0.1, 20.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_sgd_update_rows(V, E, lr, seed):
    rng = np.random.default_rng(seed)
    p = f32(rng, (V, E))
    rows = np.unique(rng.integers(0, V, size=rng.integers(1, V + 1)))
    g = f32(rng, (len(rows), E))
    got = p.copy()
    kc.sgd_update_rows(got, rows, g, lr)
    want = oracle.sgd_update_rows(p.astype(np.float64), rows, g.astype(np.float64), lr)
    # as test_sgd_update: two roundings per element
    assert np.max(np.abs(got - want)) <= 4e-7 * max(1.0, np.max(np.abs(want)), lr * np.abs(g).max())
    # and bit for bit the dense update of the same gradient (zeros elsewhere): training
    # with a row-sparse embedding gradient takes the same steps as with the dense one
    dense = np.zeros_like(p)
    dense[rows] = g
    same = p.copy()
    kc.sgd_update(same.reshape(-1), dense.reshape(-1), lr)
    np.testing.assert_array_equal(got, same)


@given(
    n=st.integers(1, 3000),
    steps=st.integers(1, 5),
    lr=st.sampled_from([1e-3, 2e-3, 0.1]),
    seed=st.integers(0, 2**32 - 1),
)
def test_adam_update(n, steps, lr, seed):
    rng = np.random.default_rng(seed)
    p = f32(rng, n)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    p64, m64, v64 = p.astype(np.float64), np.zeros(n), np.zeros(n)
    for step in range(1, steps + 1):
        g = f32(rng, n, 10.0 ** rng.integers(-4, 2))  # gradients of very different sizes
        kc.adam_update(p, g, m, v, lr, 0.9, 0.999, 1e-8, step)
        p64, m64, v64 = oracle.adam_update(
            p64, g.astype(np.float64), m64, v64, lr, 0.9, 0.999, 1e-8, step
        )
    # each step moves p by about lr (Adam's step is bounded by lr); float32 rounding of the
    # ratio m / sqrt(v) costs a few ulps of that step, plus the rounding of p itself
    assert np.max(np.abs(p - p64)) <= steps * lr * 1e-5 + 1e-6 * np.max(np.abs(p64))
    assert rel_err(m, m64) < 1e-5
    assert rel_err(v, v64) < 1e-5


def test_every_kernel_file_is_cached_under_the_stamp_of_the_whole_folder(tmp_path, monkeypatch):
    """Numba's cache of a kernel is keyed on the stamp its locator gives: for the CPU
    kernels, a hash of every file of kernels/cpu, so that a helper changed in one file
    (inlined by kernels of another) recompiles them all (kernels/cpu/_cache.py)."""
    import shutil

    from rnnlm_engine.kernels.cpu import _adaptive, _cache, _cells, _elementwise, _stream

    kernels = [
        _stream.stream_step,
        _adaptive.adaptive_log_probs,
        _cells.lstm_step_forward,
        _elementwise.log_softmax,
    ]
    for kernel in kernels:
        locator = kernel._cache._impl._locator
        assert isinstance(locator, _cache._FolderStamp), kernel
        assert locator.get_source_stamp() == _cache.folder_stamp()
    # a copy of the folder has the same stamp; a change to one helper file changes it
    copy = tmp_path / "cpu"
    shutil.copytree(_cache._FOLDER, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_cache, "_FOLDER", copy)
    same = _cache.folder_stamp()
    (copy / "_math.py").write_text((copy / "_math.py").read_text() + "\n# changed\n")
    assert _cache.folder_stamp() != same
    monkeypatch.undo()
    assert same == _cache.folder_stamp()
