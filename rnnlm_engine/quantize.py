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
BLOCK_ELEMENTS = 1 << 18  # elements of a matrix per pass (row_blocks)


def quantize_rows(w: np.ndarray, name: str = "weight") -> tuple[np.ndarray, np.ndarray]:
    """(q (R, C) int8, scale (R,) float32) of a finite 2-D float array w (R, C)."""
    w = np.asarray(w)
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        raise ParameterError(f"{name}: int8 rows need a 2-D float array; got {w.dtype} {w.shape}")
    q = np.empty(w.shape, np.int8)
    scale = np.empty(w.shape[0], np.float32)
    for rows in row_blocks(w.shape):  # float64 temporaries of a block at a time
        block = w[rows].astype(np.float64)
        if not np.all(np.isfinite(block)):
            raise ParameterError(f"{name} contains NaN or infinity: it cannot be quantized")
        q[rows], scale[rows] = _quantize_block(block)
    return q, scale


def _quantize_block(w64: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    peak = np.abs(w64).max(axis=1, initial=0.0)
    scale = np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32)
    # a row of subnormals whose scale would round to 0 takes the smallest subnormal: its
    # weights are then exact multiples of the scale (|q| < 127 there)
    scale = np.maximum(scale, np.finfo(np.float32).smallest_subnormal)
    # a subnormal scale rounded down (it has few bits) would put the peak at 128 or more
    # steps, and the clip would cut it: the next float32 up holds it (a normal scale is
    # within 2^-24 of peak / 127, so its peak always rounds to 127)
    low = peak / scale.astype(np.float64) >= QMAX + 0.5
    scale[low] = np.nextafter(scale[low], np.float32(np.inf))
    # divide by the float32 scale that is stored, so that q * scale is what rounds
    q = np.rint(w64 / scale.astype(np.float64)[:, None])
    return np.clip(q, -QMAX, QMAX).astype(np.int8), scale


def row_blocks(shape: tuple[int, int]):
    """Slices of the rows of a (R, C) matrix, about BLOCK_ELEMENTS elements each: passes
    over a block at a time bound their temporaries (a whole matrix's float64 or int32
    copies would take 2-8x its float32 bytes)."""
    rows, cols = shape
    step = max(1, BLOCK_ELEMENTS // max(cols, 1))
    for r0 in range(0, rows, step):
        yield slice(r0, min(rows, r0 + step))


def row_abs_sums(q: np.ndarray) -> np.ndarray:
    """sum |q| over each row of int8 rows q without -128, as int64 (R,)."""
    out = np.empty(q.shape[0], np.int64)
    for rows in row_blocks(q.shape):
        out[rows] = np.abs(q[rows]).sum(axis=1, dtype=np.int64)  # |q| <= 127: int8 holds it
    return out


def row_abs_max(q: np.ndarray) -> np.ndarray:
    """max |q| of each row of int8 rows q without -128 (0 for an empty row), int64 (R,)."""
    out = np.empty(q.shape[0], np.int64)
    for rows in row_blocks(q.shape):
        out[rows] = np.abs(q[rows]).max(axis=1, initial=0)
    return out


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
