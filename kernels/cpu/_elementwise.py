"""Element-wise and row kernels of the CPU backend: the embedding, column sums, the
softmax family (log-softmax, cross-entropy and its gradient, the scoring pass's blocks,
prediction statistics) and the optimizers' updates. The CUDA twins are in
kernels/cuda/_elementwise.py. Conventions: _math.py."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._math import _exp

# ---------------------------------------------------------------------------- embedding


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def embedding_forward(weight, ids, out):
    """weight (V, E), ids (N,) int64 -> out (N, E) = weight[ids]."""
    for n in range(ids.shape[0]):
        out[n, :] = weight[ids[n], :]


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def embedding_backward(ids, dout, dweight):
    """ids (N,), dout (N, E): dweight (V, E) += dout scattered to rows ids (repeats add up)."""
    for n in range(ids.shape[0]):
        dweight[ids[n], :] += dout[n, :]


# ---------------------------------------------------------------------------- row sums


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def column_sums(a, out):
    """out (G,) = the sum over the rows of a (N, G), accumulated in float64: a bias
    gradient over T*B rows (numpy's float32 sum along axis 0 adds one row after another,
    and was off by a median of 26 ulps for N=20,000; bench/sum_precision.py)."""
    N, G = a.shape
    acc = np.zeros(G, np.float64)
    for n in range(N):
        for g in range(G):
            acc[g] += np.float64(a[n, g])
    for g in range(G):
        out[g] = acc[g]


# ---------------------------------------------------------------------------- softmax
# Serial loops over rows: see "Threads" in this module's docstring.
# shift (N,) is the value each row's exponents are taken relative to: any value with
# max(row + bias) <= shift[n] <= max(row + bias) + 40, so that exp() never overflows and
# the sum, at least exp(-40), keeps full float32 precision (the terms that _exp clamps at
# exp(-87) add at most V e^-87, under 1e-17 of it). The result does not depend on the
# choice; see row_shift in __init__.py for how the CPU backend picks it cheaply.
# Sums over the vocabulary and over the rows end in float64 (bench/sum_precision.py; the
# figures in bench/RESULTS.md): with float32 sums, log-normalisers over V=100,000 were off
# by up to 6.7x the float32 rounding of the result (64x in decode_xent), and the bias
# gradient over 20,000 rows by up to 1,100 u of its terms' magnitude. A sum of exps runs
# in float32 within chunks of 1024 terms (LLVM vectorizes it into 16 partial sums, two
# 8-lane vectors, of 64 terms each), then in float64 across chunks: as fast as the
# float32 sum (a float64 one, converting each exp, took 2.2x as long) and within the
# float32 rounding of the result.
# The bias gradient likewise: float32 within 16 rows, float64 across them.
# The decoder bias is added here, on the fly, instead of in a separate pass over the
# (N, V) logits (a 28 MB array for N=700, V=10000: one pass costs milliseconds).


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _sum_exp(row, bias, m, store):
    """sum_j exp(row[j] + bias[j] - m) over row, bias (V,), as a float64 (see above);
    bias None: no bias; with store (a literal), row[j] becomes its exp too."""
    V = row.shape[0]
    chunk = 1024  # a constant trip count: a variable one made the loop 8% slower
    full = V - V % chunk
    s = 0.0
    for j0 in range(0, full, chunk):
        c = np.float32(0.0)
        for j in range(j0, j0 + chunk):
            e = _exp((row[j] if bias is None else row[j] + bias[j]) - m)
            if store:
                row[j] = e
            c += e
        s += np.float64(c)
    c = np.float32(0.0)
    for j in range(full, V):
        e = _exp((row[j] if bias is None else row[j] + bias[j]) - m)
        if store:
            row[j] = e
        c += e
    return s + np.float64(c)


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _at(row, bias, j):
    return row[j] if bias is None else row[j] + bias[j]


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _max8(row, bias, m):
    """max(m, max over j of row[j] + bias[j]) for row, bias (V,) (bias None: no bias),
    with eight independent running maxima.

    LLVM does not vectorize a float max reduction from Numba (no function-level no-NaN
    attribute), so a plain loop runs one element at a time: 4.3 ms per 7M elements; the
    eight interleaved chains let the SLP vectorizer use one vector max: 2.0 ms (10000
    elements: 1.7 us instead of 6).
    """
    V = row.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = m
    J = V - V % 8
    for j in range(0, J, 8):
        v0, v1 = _at(row, bias, j), _at(row, bias, j + 1)
        v2, v3 = _at(row, bias, j + 2), _at(row, bias, j + 3)
        v4, v5 = _at(row, bias, j + 4), _at(row, bias, j + 5)
        v6, v7 = _at(row, bias, j + 6), _at(row, bias, j + 7)
        m0 = v0 if v0 > m0 else m0
        m1 = v1 if v1 > m1 else m1
        m2 = v2 if v2 > m2 else m2
        m3 = v3 if v3 > m3 else m3
        m4 = v4 if v4 > m4 else m4
        m5 = v5 if v5 > m5 else m5
        m6 = v6 if v6 > m6 else m6
        m7 = v7 if v7 > m7 else m7
    m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for j in range(J, V):
        m = max(m, _at(row, bias, j))
    return m


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def row_max(logits, bias, out):
    """out (N,) = max over each row of logits (N, V) + bias (V,) (see _max8)."""
    for n in range(logits.shape[0]):
        out[n] = _max8(logits[n], bias, np.float32(-3.0e38))


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def log_softmax(logits, bias, shift, out):
    """logits (N, V), bias (V,) -> out (N, V) = log softmax(logits + bias) per row.

    out must not overlap logits.
    """
    N, V = logits.shape
    for n in range(N):
        m = shift[n]
        s = _sum_exp(logits[n], bias, m, False)  # exp(x - max): never overflows
        lse = np.float64(m) + np.log(s)
        for j in range(V):
            out[n, j] = np.float32(np.float64(logits[n, j] + bias[j]) - lse)


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def xent_forward(logits, bias, targets, shift, nll):
    """nll (N,) = -log softmax(logits + bias)[n, targets[n]]; targets (N,) int64."""
    N, V = logits.shape
    for n in range(N):
        m = shift[n]
        s = _sum_exp(logits[n], bias, m, False)
        t = targets[n]
        nll[n] = np.float64(m) + np.log(s) - np.float64(logits[n, t] + bias[t])


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def prediction_stats(logits, bias, shift, targets, logp, entropy, rank, top_ids, top_vals):
    """What a prediction says of each row of logits (N, V) + bias (V,) (inspection):
    logp (N,) = log softmax[targets[n]]; entropy (N,) in nats; rank (N,) int64 = 1 + the
    number of tokens strictly likelier than the target; top_ids, top_vals (N, K): the K
    likeliest tokens and their log-probabilities, best first (ties: the lower id first).

    One pass for the sums (entropy = log s - sum e (x - m) / s with e = exp(x - m), both
    sums float32 within chunks and float64 across them, as _sum_exp) and the count, one
    compare-only pass for the top K: the full (N, V) log-probabilities are never written.
    """
    N, V = logits.shape
    K = top_ids.shape[1]
    chunk = 1024
    full = V - V % chunk
    for n in range(N):
        row = logits[n]
        m = shift[n]
        t = targets[n]
        xt = row[t] + bias[t]
        s = 0.0
        s1 = 0.0
        above = 0
        for j0 in range(0, V, chunk):
            j1 = j0 + chunk if j0 < full else V
            c = np.float32(0.0)
            # in float64: the terms e (x - m) share the shift's offset (up to SHIFT_SLACK
            # above the max), and a float32 sum of them lost 1e-5 of the entropy to it
            c1 = 0.0
            for j in range(j0, j1):
                x = row[j] + bias[j]
                d = x - m
                e = _exp(d)
                c += e
                c1 += np.float64(e) * np.float64(d)
                above += 1 if x > xt else 0
            s += np.float64(c)
            s1 += c1
        lse = np.float64(m) + np.log(s)
        logp[n] = np.float64(xt) - lse
        entropy[n] = np.log(s) - s1 / s
        rank[n] = 1 + above
        if K == 0:
            continue
        for i in range(K):
            top_vals[n, i] = -np.inf
            top_ids[n, i] = -1
        low = np.float32(-np.inf)  # the K-th best so far
        for j in range(V):
            x = row[j] + bias[j]
            if x > low:  # strictly: an equal later id stays behind (ties: lower id first)
                i = K - 1
                while i > 0 and x > top_vals[n, i - 1]:
                    top_vals[n, i] = top_vals[n, i - 1]
                    top_ids[n, i] = top_ids[n, i - 1]
                    i -= 1
                top_vals[n, i] = x
                top_ids[n, i] = j
                low = top_vals[n, K - 1]
        for i in range(K):
            top_vals[n, i] = np.float32(np.float64(top_vals[n, i]) - lse)


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def xent_forward_backward(logits, bias, targets, shift, scale, nll, dbias):
    """nll (N,) as xent_forward; then, in place, logits (N, V) becomes the gradient of
    scale * sum(nll) with respect to the logits, scale * (softmax - onehot(target)), and
    dbias (V,) its column sums (the gradient of the bias), summed in float64 (in float32
    within groups of 16 rows).

    In place rather than into a second argument: Numba lets LLVM assume that the array
    arguments of a prange body do not alias, and passing one array twice gave wrong
    results (measured); one array cannot alias itself.
    """
    N, V = logits.shape
    acc = np.zeros(V, np.float64)  # dbias
    # the softmax part of up to 16 rows, summed in float32, then added to acc: a float64
    # addition per element made the kernel 14% slower at V=100,000 (acc outgrows L2)
    part = np.zeros(V, np.float32)
    for n in range(N):
        m = shift[n]
        t = targets[n]
        target_logit = logits[n, t] + bias[t]
        s = _sum_exp(logits[n], bias, m, True)  # the row becomes its exps
        nll[n] = np.float64(m) + np.log(s) - np.float64(target_logit)
        k = np.float32(scale / s)
        for j in range(V):
            g = logits[n, j] * k
            logits[n, j] = g
            part[j] += g
        logits[n, t] -= np.float32(scale)
        acc[t] -= scale
        if n % 16 == 15 or n == N - 1:
            for j in range(V):
                acc[j] += np.float64(part[j])
                part[j] = 0.0
    for j in range(V):
        dbias[j] = acc[j]


# Scoring in vocabulary blocks (see decode_xent in __init__.py): logits_t (Vb, N) holds
# the logits of vocabulary rows v0 : v0 + Vb for all N positions, transposed, so that the
# per-position running max and sum are updated by loops over contiguous positions (plain
# vector loads, no reductions) while the block is still in cache. m (N,) is each
# position's running max of logit + bias, s (N,) its sum of exp(logit + bias - m), in
# float64 (as s_before; the other arrays are float32). The block's terms are summed in
# float32 into part (N,), which goes into s every 64 vocabulary rows: float64 in the
# sweep itself made the whole scoring pass 16% slower (V=10,000, N=700).
# A block's terms are taken relative to the max of the blocks before it (the first block
# sets it), so one pass reads each logit once; a position whose block max exceeds that
# by more than RESCALE_LIMIT (exp would lose range: V e^60 still fits in float32) is
# summed again relative to its new max, from the sum saved before the block.
RESCALE_LIMIT = 60.0


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def xent_block(logits_t, bias, v0, targets, m, s, target_logit, block_max, s_before, part):
    Vb, N = logits_t.shape
    ninf = np.float32(-np.inf)
    if v0 == 0:
        for n in range(N):
            m[n] = ninf
            s[n] = 0.0
        for v in range(Vb):
            bv = bias[v]
            for n in range(N):
                x = logits_t[v, n] + bv
                m[n] = x if x > m[n] else m[n]
    for n in range(N):
        block_max[n] = ninf
        s_before[n] = s[n]
        part[n] = 0.0
    # four vocabulary rows per sweep: a quarter of the loads and stores of part and block_max
    # (2.0 ms against 2.3 ms per 7M logits)
    V4 = Vb - Vb % 4
    for v in range(0, V4, 4):
        r0, r1, r2, r3 = logits_t[v], logits_t[v + 1], logits_t[v + 2], logits_t[v + 3]
        b0, b1, b2, b3 = bias[v0 + v], bias[v0 + v + 1], bias[v0 + v + 2], bias[v0 + v + 3]
        for n in range(N):
            mn = m[n]
            x0, x1, x2, x3 = r0[n] + b0, r1[n] + b1, r2[n] + b2, r3[n] + b3
            part[n] += (_exp(x0 - mn) + _exp(x1 - mn)) + (_exp(x2 - mn) + _exp(x3 - mn))
            x01 = x0 if x0 > x1 else x1
            x23 = x2 if x2 > x3 else x3
            x = x01 if x01 > x23 else x23
            block_max[n] = x if x > block_max[n] else block_max[n]
        if v % 64 == 60:  # 16 sweeps summed in float32: into the float64 sums
            for n in range(N):
                s[n] += np.float64(part[n])
                part[n] = 0.0
    for v in range(V4, Vb):
        bv = bias[v0 + v]
        for n in range(N):
            x = logits_t[v, n] + bv
            part[n] += _exp(x - m[n])
            block_max[n] = x if x > block_max[n] else block_max[n]
    limit = np.float32(RESCALE_LIMIT)
    for n in range(N):
        s[n] += np.float64(part[n])
        bm = block_max[n]
        # the rescaling factors are float64 exps (libm, one per position and block at
        # most): a float32 _exp's 2e-7 would enter the sum once per rescaling
        if bm > m[n] + limit:  # rare: redo this position's block relative to its new max
            acc = 0.0
            for v in range(Vb):
                acc += np.float64(_exp(logits_t[v, n] + bias[v0 + v] - bm))
            s[n] = s_before[n] * np.exp(np.float64(m[n]) - np.float64(bm)) + acc
            m[n] = bm
        elif bm > m[n]:
            s[n] *= np.exp(np.float64(m[n]) - np.float64(bm))
            m[n] = bm
        t = targets[n] - v0
        if t >= 0 and t < Vb:
            target_logit[n] = logits_t[t, n] + bias[targets[n]]


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def xent_finish(m, s, target_logit, nll):
    """nll (N,) = m + log(s) - target_logit: the end of the blocked scoring pass."""
    for n in range(nll.shape[0]):
        nll[n] = np.float64(m[n]) + np.log(s[n]) - np.float64(target_logit[n])


# ---------------------------------------------------------------------------- optimizer
# Flat (1-D, contiguous) views of parameters and gradients.


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def sum_of_squares(x):
    """sum(x**2) of a flat float32 array, accumulated in float64."""
    s = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        s += v * v
    return s


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def scale_inplace(x, factor):
    f = np.float32(factor)
    for i in range(x.shape[0]):
        x[i] *= f


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def sgd_update(param, grad, lr):
    """param -= lr * grad."""
    a = np.float32(lr)
    for i in range(param.shape[0]):
        param[i] -= a * grad[i]


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def sgd_update_rows(param, rows, grad, lr):
    """param[rows[n]] -= lr * grad[n] for a gradient that is zero outside the unique rows
    (an embedding's): the same arithmetic, row for row, as sgd_update on the dense one."""
    a = np.float32(lr)
    for n in range(rows.shape[0]):
        r = rows[n]
        for j in range(param.shape[1]):
            param[r, j] -= a * grad[n, j]


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def adam_update(param, grad, m, v, lr, beta1, beta2, eps, step):
    """One torch.optim.Adam step (step counts from 1), updating param, m and v in place."""
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    # 1 - beta in float64 first: float32(1) - float32(0.999) is off by 1.3e-5 relative
    a1 = np.float32(1.0 - beta1)
    a2 = np.float32(1.0 - beta2)
    c1 = 1.0 - beta1**step
    c2 = 1.0 - beta2**step
    step_size = np.float32(lr / c1)
    inv_sqrt_c2 = np.float32(1.0 / np.sqrt(c2))
    e = np.float32(eps)
    for i in range(param.shape[0]):
        g = grad[i]
        mi = b1 * m[i] + a1 * g
        vi = b2 * v[i] + a2 * g * g
        m[i] = mi
        v[i] = vi
        param[i] -= step_size * mi / (np.sqrt(vi) * inv_sqrt_c2 + e)
