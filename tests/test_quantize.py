"""int8 rows with a scale per row (issue 13, first step): quantize_rows against its
definition, and dequantize_rows against the oracle, on rows drawn by hypothesis (sizes 1
and odd, rows of zeros, a row with one huge value)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rnnlm_engine import oracle
from rnnlm_engine.errors import ParameterError
from rnnlm_engine.quantize import QMAX, dequantize_rows, quantize_rows


@st.composite
def weights(draw):
    R, C = draw(st.integers(1, 9)), draw(st.integers(1, 33))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # 1e-43: rows of subnormals (about 70 steps of the smallest), scales subnormal too
    size = draw(st.sampled_from([1e-43, 1e-30, 1e-3, 1.0, 1e4]))
    w = (rng.standard_normal((R, C)) * size).astype(np.float32)
    if draw(st.booleans()):  # a row of zeros
        w[draw(st.integers(0, R - 1))] = 0.0
    if draw(st.booleans()):  # one huge value in a row of small ones
        w[draw(st.integers(0, R - 1)), draw(st.integers(0, C - 1))] = 3e38
    return w


@given(w=weights())
def test_quantize_rows_is_symmetric_round_to_nearest(w):
    q, scale = quantize_rows(w)
    assert q.dtype == np.int8 and q.shape == w.shape
    assert scale.dtype == np.float32 and scale.shape == (w.shape[0],)
    assert np.all(np.isfinite(scale)) and np.all(scale > 0)  # a file may refuse any other
    assert np.abs(q.astype(np.int32)).max() <= QMAX
    peak = np.abs(w.astype(np.float64)).max(axis=1)
    # the largest magnitude of a row maps to +-127, where the scale is a normal float32
    # (a subnormal one has too few bits: the row's values are few multiples of it)
    for r in np.flatnonzero((peak > 0) & (scale >= np.finfo(np.float32).tiny)):
        assert np.abs(q[r].astype(np.int32)).max() == QMAX
    assert np.all(scale[peak == 0] == 1.0) and not np.any(q[peak == 0])
    # round to nearest: every weight within half a step (and a float32 rounding of the
    # scale, relative 6e-8) of what its int8 stands for
    deq = oracle.dequantize_rows(q, scale)
    step = scale.astype(np.float64)[:, None]
    assert np.all(np.abs(w - deq) <= 0.5 * step * (1 + 1e-6) + 1e-45)


@given(w=weights())
def test_dequantize_rows_is_the_oracles_to_the_bit(w):
    q, scale = quantize_rows(w)
    got = dequantize_rows(q, scale)
    assert got.dtype == np.float32
    # the exact product (at most 7 + 24 bits, exact in the oracle's float64) rounded
    # once to float32: what one float32 multiplication gives
    want = oracle.dequantize_rows(q, scale).astype(np.float32)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "w, message",
    [
        (np.array([[1.0, np.nan]], np.float32), "NaN or infinity"),
        (np.array([[np.inf]], np.float32), "NaN or infinity"),
        (np.zeros(3, np.float32), "2-D float array"),
        (np.zeros((2, 2), np.int32), "2-D float array"),
    ],
)
def test_what_cannot_be_quantized_is_one_clear_error(w, message):
    with pytest.raises(ParameterError, match=message):
        quantize_rows(w, "rnn.weight_hh_l0")


def test_a_row_of_subnormals_gets_a_positive_scale():
    """max |w| / 127 would round to 0: the scale is the smallest subnormal, and the row's
    weights (multiples of it) come back exactly."""
    tiny = np.finfo(np.float32).smallest_subnormal
    w = np.array([[3 * tiny, -tiny, 0.0], [1.0, 0.5, -2.0]], np.float32)
    q, scale = quantize_rows(w)
    assert scale[0] == tiny and scale[1] == np.float32(2.0 / 127)
    np.testing.assert_array_equal(dequantize_rows(q, scale)[0], w[0])


def test_a_subnormal_scale_rounded_down_is_raised_so_the_peak_is_not_clipped():
    """max |w| / 127 of 150 subnormal steps rounds to 1 step, where 127 steps would cut the
    peak to 127: the scale goes up to 2 steps, and every weight rounds to nearest."""
    tiny = np.finfo(np.float32).smallest_subnormal
    for steps in (128, 150, 190, 254, 255):
        w = np.array([[steps * tiny, -50 * tiny, 0.0]], np.float32)
        q, scale = quantize_rows(w)
        deq = oracle.dequantize_rows(q, scale)
        assert np.all(np.abs(w - deq) <= 0.5 * scale.astype(np.float64)[:, None]), steps
        assert np.abs(q.astype(np.int32)).max() <= QMAX


def test_quantize_rows_in_blocks_equals_one_pass(monkeypatch):
    """The blocks of rows (bounding the temporaries) change nothing: a block of 5
    elements, so rows go one or two at a time, against the whole matrix in one."""
    from rnnlm_engine import quantize

    w = np.random.default_rng(3).standard_normal((37, 3)).astype(np.float32)
    whole = quantize_rows(w)
    monkeypatch.setattr(quantize, "BLOCK_ELEMENTS", 5)
    assert len(list(quantize.row_blocks(w.shape))) == 37
    blocked = quantize_rows(w)
    np.testing.assert_array_equal(blocked[0], whole[0])
    np.testing.assert_array_equal(blocked[1], whole[1])
    q = whole[0]
    np.testing.assert_array_equal(quantize.row_abs_sums(q), np.abs(q.astype(np.int64)).sum(1))
    np.testing.assert_array_equal(quantize.row_abs_max(q), np.abs(q.astype(np.int64)).max(1))
