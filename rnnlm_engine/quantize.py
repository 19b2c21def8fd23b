"""int8 weights with one float32 scale per row: the arithmetic of int8 models
(rnnlm_engine/quantized.py) and the checks of their tensors (model files, the model).

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


# ---------------------------------------------------------------------- int8 models' tensors
# (what a model file, a QuantizedModel and the writer of either check)


def int8_names(config) -> list[str]:
    """The parameters an int8 model stores as int8 rows: its matrices (2-D); the biases
    (1-D) stay float32."""
    return [name for name, shape in config.parameter_shapes().items() if len(shape) == 2]


def minus_128(q: np.ndarray) -> tuple[int, ...] | None:
    """The index of a -128 in int8 rows q (outside the symmetric range), or None."""
    if q.size == 0 or int(q.min()) >= -QMAX:
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmin(q)), q.shape))


def scale_problem(s: np.ndarray, rows: int) -> str | None:
    """What is wrong with an int8 matrix's scales (float32 (rows,), each positive and
    finite), or None."""
    if s.dtype != np.float32 or s.shape != (rows,):
        return f"float32 of shape ({rows},) needed; got {s.dtype} {s.shape}"
    bad = np.flatnonzero(~(np.isfinite(s) & (s > 0)))
    if bad.size:
        return f"scale {s[bad[0]]} at row {bad[0]}; every scale is positive and finite"
    return None
