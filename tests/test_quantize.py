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
    w = (rng.standard_normal((R, C)) * draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e4]))).astype(
        np.float32
    )
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
    for r in np.flatnonzero(peak > 0):  # the largest magnitude of a row maps to +-127
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
