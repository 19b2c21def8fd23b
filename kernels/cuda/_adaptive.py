"""The adaptive softmax's log-probabilities for a few rows (streams): the twin of
kernels/cpu/_adaptive.py (see there for the arguments), composed of this backend's
products and softmax kernels, which on a GPU are what few rows want as well, with one
kernel of its own that adds each row's cluster log-probability."""

from __future__ import annotations

from numba import cuda

from ._arrays import copy, empty, zeros
from ._elementwise import _grid, log_softmax
from ._gemm import gemm


@cuda.jit
def _add_column_k(src, col, dst):
    w = src.shape[1]
    for i in range(cuda.grid(1), src.shape[0] * w, cuda.gridsize(1)):
        r = i // w
        v = i - r * w
        dst[r, v] = src[r, v] + col[r]


def adaptive_log_probs(top, head_t, head_b, projs, outs_t, want, head, out):
    """As the CPU's (device arrays; want a host array)."""
    N = top.shape[0]
    n_clusters = len(outs_t)
    S = head.shape[1] - n_clusters
    if N == 0:
        return
    logits = empty(head.shape)
    gemm(top, head_t, logits)
    log_softmax(logits, head_b, None, head)
    copy(out[:, :S], head[:, :S])
    low = S
    for i in range(n_clusters):
        w = outs_t[i].shape[1]
        if want[i]:
            p = empty((N, projs[i].shape[0]))
            gemm(top, projs[i], p, trans_b=True)
            logits = empty((N, w))
            gemm(p, outs_t[i], logits)
            lp = empty((N, w))
            log_softmax(logits, zeros(w), None, lp)
            _add_column_k[_grid(N * w, None, None)](lp, head[:, S + i], out[:, low : low + w])
        low += w


__all__ = ["adaptive_log_probs"]
