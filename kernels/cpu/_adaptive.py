"""The adaptive softmax's log-probabilities for a few rows (streams), in one call.

PyTorch's nn.AdaptiveLogSoftmaxWithLoss: a head over the shortlist (ids below S) and one
logit per tail cluster; cluster i maps a projection P_i (u_i, H) of the row through O_i
(w_i, u_i); log p(tail word) = the head's log p of its cluster + the cluster's log p of
the word. For many rows the batch kernels and BLAS do this (output.AdaptiveSoftmax); for
one to a few rows their Python and their BLAS calls cost more than the arithmetic
(WikiText-2, 2 x 200: 224 us a row against about 60 here), and a stream that asks for
one token's log-probability, or samples, needs the head and at most one cluster: ``want``
says which clusters to compute.

The head and the maps come transposed ((H, S + n) and (u_i, w_i)): a product then runs
along the rows of the matrix, with vector loads over many outputs at once, which for a
map of 12 or 50 inputs is far faster than one short dot product per output.
"""

import numpy as np
from numba import njit, prange

from ._stream import _dot, _log_softmax_row

# columns of a transposed product per parallel task: a block of outputs that stays in the
# L1 cache while the matrix's rows stream past it
_COLS = 1024


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def _product_t(x, wt, out):
    """out (N, C) = x (N, K) @ wt (K, C), blocks of columns in parallel."""
    N = x.shape[0]
    K, C = wt.shape
    blocks = (C + _COLS - 1) // _COLS
    for b in prange(blocks):
        c0 = b * _COLS
        c1 = min(C, c0 + _COLS)
        for n in range(N):
            o = out[n, c0:c1]
            o[:] = 0.0
            for k in range(K):
                xv = x[n, k]
                w = wt[k, c0:c1]
                for c in range(c1 - c0):
                    o[c] += xv * w[c]


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def adaptive_log_probs(top, head_t, head_b, projs, outs_t, want, head, out):
    """The adaptive softmax's log-probabilities of the rows of top (N, H).

    head_t (H, S + n) the head's matrix transposed, head_b (S + n,) its bias (zeros when
    it has none); projs: a tuple of the n projections P_i (u_i, H); outs_t: a tuple of the
    n maps transposed, O_i^T (u_i, w_i); want (n,) uint8: the clusters to compute.
    Writes head (N, S + n): the head's log-probabilities (the shortlist's, then each
    cluster's); out (N, V): log p of the shortlist's ids and of every wanted cluster's
    (the other columns are left as they were).
    """
    N = top.shape[0]
    n_clusters = len(outs_t)
    S = head.shape[1] - n_clusters
    _product_t(top, head_t, head)
    for r in range(N):
        row = head[r]
        for j in range(row.shape[0]):
            row[j] += head_b[j]
        _log_softmax_row(row, row)  # element by element: in place is safe
        out[r, :S] = row[:S]
    low = S
    for i in range(n_clusters):
        ot = outs_t[i]
        w = ot.shape[1]
        if want[i]:
            p = projs[i]
            u = p.shape[0]
            # contiguous arrays of their own: a product into a strided view of out (its
            # layout unknown to LLVM) ran one element at a time, 9x slower
            proj = np.empty((N, u), np.float32)
            logits = np.empty((N, w), np.float32)
            for r in range(N):
                for j in range(u):
                    proj[r, j] = _dot(p[j], top[r])
            _product_t(proj, ot, logits)
            for r in range(N):
                _log_softmax_row(logits[r], logits[r])
                lp = head[r, S + i]
                orow = out[r]
                src = logits[r]
                for v in range(w):
                    orow[low + v] = src[v] + lp
        low += w
