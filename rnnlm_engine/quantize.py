"""int8 weights with one float32 scale per row (issue 13's storage, its first step).

Symmetric and round to nearest: a row w becomes q = rint(w / s) in [-127, 127] with
s = max |w| / 127, and stands for q * s. A row of zeros gets s = 1 (q = 0 is exact), and
a row too small for that s (below 127 x the smallest float32 subnormal) the smallest
subnormal, so that every scale is positive and finite: a model file can refuse any other
as damaged.
The quantized model's math is the float32 model's with these dequantized weights
(oracle.dequantize_rows is the reference).
"""

from __future__ import annotations

import numpy as np

from .errors import ParameterError

QMAX = 127  # -128 is never used: the range stays symmetric


def quantize_rows(w: np.ndarray, name: str = "weight") -> tuple[np.ndarray, np.ndarray]:
    """(q (R, C) int8, scale (R,) float32) of a finite 2-D float array w (R, C)."""
    w = np.asarray(w)
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        raise ParameterError(f"{name}: int8 rows need a 2-D float array; got {w.dtype} {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ParameterError(f"{name} contains NaN or infinity: it cannot be quantized")
    w64 = w.astype(np.float64)
    peak = np.abs(w64).max(axis=1, initial=0.0)
    scale = np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32)
    # a row of subnormals whose scale would round to 0 takes the smallest subnormal: its
    # weights are then exact multiples of the scale (|q| < 127 there)
    scale = np.maximum(scale, np.finfo(np.float32).smallest_subnormal)
    # divide by the float32 scale that is stored, so that q * scale is what rounds
    q = np.rint(w64 / scale.astype(np.float64)[:, None])
    return np.clip(q, -QMAX, QMAX).astype(np.int8), scale


def dequantize_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 weights (R, C) that int8 rows q (R, C) with scales (R,) stand for:
    q * scale, one correctly rounded float32 product each (the exact product needs up to
    31 bits: 7 of q's, 24 of the scale's)."""
    return q.astype(np.float32) * scale.astype(np.float32)[:, None]
