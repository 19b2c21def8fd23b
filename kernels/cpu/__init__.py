"""The CPU backend: Numba kernels around numpy's BLAS, float32 throughout.

Every function writes into preallocated arrays whose shapes the caller has checked; none
validates its input (``rnnlm_engine.model`` does, before any kernel runs).
"""

import numpy as np

from ._jit import (
    adam_update,
    embedding_backward,
    embedding_forward,
    log_softmax,
    row_max,
    scale_inplace,
    sgd_update,
    sum_of_squares,
    xent_forward,
    xent_forward_backward,
)
from .cells import (
    ACTS_PER_HIDDEN,
    CELL_BACKWARD,
    CELL_FORWARD,
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
)

NAME = "cpu"

# Arrays of this backend are numpy arrays; matrix products go to numpy's BLAS.
empty = np.empty
zeros = np.zeros
matmul = np.matmul


def to_device(array):
    """A float32 (or int64) C-contiguous numpy array: the CPU's "device" is host memory."""
    return np.ascontiguousarray(array)


def to_host(array):
    return array


def column_sums(a):
    """(N, G) -> (G,): the sum over rows (a bias gradient)."""
    return np.sum(a, axis=0)


# The largest spread of the bias for which rowmax(logits) + max(bias) may serve as the
# softmax shift: it then exceeds the true max(row + bias) by at most the spread.
SHIFT_SLACK = 40.0


def row_shift(logits, bias, out):
    """out (N,): a softmax shift for each row of logits + bias (see _jit.py, softmax).

    numpy's SIMD row max of the logits alone (0.85 ms for 700 x 10000) plus max(bias) is
    an upper bound within max(bias) - min(bias) of the true max; Numba's exact max of
    logits + bias takes 2.0 ms (LLVM does not vectorize float max reductions from Numba),
    so the exact one runs only when the bias spread is too wide for the bound.
    """
    b_max = float(bias.max())
    if b_max - float(bias.min()) <= SHIFT_SLACK:
        np.max(logits, axis=1, out=out)
        out += np.float32(b_max)
    else:
        row_max(logits, bias, out)


def forward_layout(w_hh):
    """w_hh (G, H) in the memory order the cell forward runs fastest with: Fortran order,
    so the per-step product h @ w_hh.T reads a C-contiguous (H, G) matrix (measured for
    B=20, H=200, G=800: 52-68 us against 84-99 us through the transposed C array)."""
    return np.asfortranarray(w_hh)


__all__ = [
    "ACTS_PER_HIDDEN",
    "CELL_BACKWARD",
    "CELL_FORWARD",
    "NAME",
    "adam_update",
    "embedding_backward",
    "embedding_forward",
    "column_sums",
    "empty",
    "forward_layout",
    "gru_backward",
    "gru_forward",
    "log_softmax",
    "lstm_backward",
    "lstm_forward",
    "matmul",
    "rnn_backward",
    "rnn_forward",
    "row_max",
    "row_shift",
    "scale_inplace",
    "sgd_update",
    "sum_of_squares",
    "to_device",
    "to_host",
    "xent_forward",
    "xent_forward_backward",
    "zeros",
]
