"""Every Numba-compiled function of the CPU backend, in one file.

They live together because Numba's cache keys each function on its own file: a helper
changed in another file would leave stale cached callers behind. Nothing here compiles at
import time (no signatures are given); each function compiles on its first call and is
cached on disk for every later process.

Kernels only compute: the public wrappers validate shapes and dtypes before calling them.
All arrays are float32 unless named otherwise; ids and targets are int64.

Threads: numpy's OpenBLAS keeps its worker threads spinning for a while after each
matrix product, so a Numba kernel that runs on several threads right after one competes
with them for the cores. Measured on 2 cores: the scoring pass of an LSTM 2x200 with
V=65 took 22.8 ms with Numba's parallel kernels and 15.6 ms with every Numba kernel on one
thread; training 56 ms against 35 ms. So the kernels of the batched passes run on the
calling thread, BLAS alone uses the cores, and many model calls in many threads run side
by side. The streaming kernels, which use no BLAS, are parallel loops (see "streaming").

Every kernel uses ``error_model="numpy"``: with Numba's default ("python") each division
checks for zero and raises, and that branch stops LLVM from vectorizing the loop (a
sigmoid over 16,000 floats: 43 us with the check, 4.5 us without).

Transcendentals go through ``_exp``, a polynomial exp that LLVM vectorizes (Numba's own
``np.exp`` calls libm one element at a time here: 7M exps took 16.8 ms against 1.5 ms for
``_exp``). Its relative error is under 2e-7 on [-87, 88], and inputs are clamped to that
range, so exp(x) for x < -87 returns exp(-87) ~ 1.6e-38 instead of a smaller number.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

# ---------------------------------------------------------------------------- fast math


@intrinsic
def _bits_as_f32(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (used to build 2**k)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _exp(x):
    # exp(x) = 2**k * exp(r) with k = round(x / ln2), |r| <= ln2 / 2 (Cody-Waite split of
    # ln2 keeps r exact); exp(r) by a degree-7 minimax polynomial (Cephes expf).
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
    r = x - k * np.float32(0.693145751953125)
    r = r - k * np.float32(1.428606765330187045e-06)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * _bits_as_f32((np.int32(k) + 127) << 23)


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + _exp(-x))


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _tanh(x):
    # tanh(|x|) = (1 - e) / (1 + e) with e = exp(-2|x|) <= 1: never overflows; the absolute
    # error near 0 is a float32 rounding of 1 (6e-8), well inside the tolerances used.
    e = _exp(np.float32(-2.0) * abs(x))
    t = (np.float32(1.0) - e) / (np.float32(1.0) + e)
    return t if x >= 0 else -t


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


# ---------------------------------------------------------------------------- cell steps
# One time step of each cell, element-wise, after the caller has computed the recurrent
# product hp = h_prev @ w_hh^T (B, G) with BLAS. xp (B, G) is this step's input projection.
# The loops over batch rows are pranges, yet cells.py runs them on one thread: Numba
# compiles a prange body as a function whose array arguments do not alias, and only then
# does LLVM vectorize a loop that reads and writes this many arrays (LSTM step, B=20,
# H=200, one thread: 96 us as a plain loop, 22 us as a prange body).


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def rnn_step_forward(xp, hp, b_hh, h_out):
    B, H = h_out.shape
    for b in prange(B):
        for j in range(H):
            h_out[b, j] = _tanh(xp[b, j] + hp[b, j] + b_hh[j])


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def rnn_step_backward(dh_out, dh_rec, h, dpre):
    """dpre = (dh_out + dh_rec) * (1 - h^2)."""
    B, H = h.shape
    for b in prange(B):
        for j in range(H):
            hv = h[b, j]
            dpre[b, j] = (dh_out[b, j] + dh_rec[b, j]) * (np.float32(1.0) - hv * hv)


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def gru_step_forward(xp, hp, b_hh, h_prev, h_out, acts):
    """acts (B, 4H) receives [r, z, n, hn] with hn = W_hn h_prev + b_hn (needed backward)."""
    B, H = h_out.shape
    for b in prange(B):
        for j in range(H):
            r = _sigmoid(xp[b, j] + hp[b, j] + b_hh[j])
            z = _sigmoid(xp[b, H + j] + hp[b, H + j] + b_hh[H + j])
            hn = hp[b, 2 * H + j] + b_hh[2 * H + j]
            n = _tanh(xp[b, 2 * H + j] + r * hn)
            h_out[b, j] = (np.float32(1.0) - z) * n + z * h_prev[b, j]
            acts[b, j] = r
            acts[b, H + j] = z
            acts[b, 2 * H + j] = n
            acts[b, 3 * H + j] = hn


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def gru_step_backward(dh_out, dh_rec, dh_carry, h_prev, acts, dxp, dhp):
    """dh = dh_out + dh_rec + dh_carry; writes dxp, dhp (B, 3H) and dh_carry = dh * z.

    dxp is the gradient of the input projection, dhp that of W_hh h + b_hh; they differ in
    the n block, where the recurrent part enters multiplied by r.
    """
    B, H = h_prev.shape
    for b in prange(B):
        for j in range(H):
            r = acts[b, j]
            z = acts[b, H + j]
            n = acts[b, 2 * H + j]
            hn = acts[b, 3 * H + j]
            dh = dh_out[b, j] + dh_rec[b, j] + dh_carry[b, j]
            dn_pre = dh * (np.float32(1.0) - z) * (np.float32(1.0) - n * n)
            dr_pre = dn_pre * hn * r * (np.float32(1.0) - r)
            dz_pre = dh * (h_prev[b, j] - n) * z * (np.float32(1.0) - z)
            dxp[b, j] = dr_pre
            dxp[b, H + j] = dz_pre
            dxp[b, 2 * H + j] = dn_pre
            dhp[b, j] = dr_pre
            dhp[b, H + j] = dz_pre
            dhp[b, 2 * H + j] = dn_pre * r
            dh_carry[b, j] = dh * z


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def lstm_step_forward(xp, hp, b_hh, c_prev, h_out, c_out, acts):
    """acts (B, 4H) receives the activated gates [i, f, g, o]."""
    B, H = h_out.shape
    for b in prange(B):
        for j in range(H):
            i = _sigmoid(xp[b, j] + hp[b, j] + b_hh[j])
            f = _sigmoid(xp[b, H + j] + hp[b, H + j] + b_hh[H + j])
            g = _tanh(xp[b, 2 * H + j] + hp[b, 2 * H + j] + b_hh[2 * H + j])
            o = _sigmoid(xp[b, 3 * H + j] + hp[b, 3 * H + j] + b_hh[3 * H + j])
            c = f * c_prev[b, j] + i * g
            c_out[b, j] = c
            h_out[b, j] = o * _tanh(c)
            acts[b, j] = i
            acts[b, H + j] = f
            acts[b, 2 * H + j] = g
            acts[b, 3 * H + j] = o


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def lstm_step_backward(dh_out, dh_rec, dc, c_prev, c, acts, dgates):
    """dh = dh_out + dh_rec; dc (B, H) holds dc_next on entry and dc_prev on exit."""
    B, H = c.shape
    one = np.float32(1.0)
    for b in prange(B):
        for j in range(H):
            i = acts[b, j]
            f = acts[b, H + j]
            g = acts[b, 2 * H + j]
            o = acts[b, 3 * H + j]
            tc = _tanh(c[b, j])
            dh = dh_out[b, j] + dh_rec[b, j]
            dcv = dc[b, j] + dh * o * (one - tc * tc)
            dgates[b, j] = dcv * g * i * (one - i)
            dgates[b, H + j] = dcv * c_prev[b, j] * f * (one - f)
            dgates[b, 2 * H + j] = dcv * i * (one - g * g)
            dgates[b, 3 * H + j] = dh * tc * o * (one - o)
            dc[b, j] = dcv * f


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


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def row_max(logits, bias, out):
    """out (N,) = max over each row of logits (N, V) + bias (V,), computed with eight
    independent running maxima.

    LLVM does not vectorize a float max reduction from Numba (no function-level no-NaN
    attribute), so a plain loop runs one element at a time: 4.3 ms per 7M elements; the
    eight interleaved chains let the SLP vectorizer use one vector max: 2.0 ms.
    """
    for n in range(logits.shape[0]):
        row = logits[n]
        V = row.shape[0]
        lo = np.float32(-3.0e38)
        m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = lo
        J = V - V % 8
        for j in range(0, J, 8):
            v0 = row[j] + bias[j]
            v1 = row[j + 1] + bias[j + 1]
            v2 = row[j + 2] + bias[j + 2]
            v3 = row[j + 3] + bias[j + 3]
            v4 = row[j + 4] + bias[j + 4]
            v5 = row[j + 5] + bias[j + 5]
            v6 = row[j + 6] + bias[j + 6]
            v7 = row[j + 7] + bias[j + 7]
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
            m = max(m, row[j] + bias[j])
        out[n] = m


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


# ---------------------------------------------------------------------------- streaming
# T time steps for N independent streams (a token each per step), the whole model in one
# call: layer 0's input projection, every layer, then, after the last step only, the
# decoder and the log-softmax, with no Python in between. Matrix-vector products are
# hand-written dots (a row of W against each stream's vector: every weight is read once
# per step whatever N is); the parallel loops run over weight rows. Shapes: ids (T, N)
# int64; table (V, G) layer 0's input projection
# with b_ih0 (or (0, G) to compute it from emb (V, E) and w_ih0 (G, E)); w_ih (L - 1, G, H)
# for layers 1.. ; b_ih, b_hh (L, G); w_hh (L, G, H); w_dec (V, H), b_dec (V,); h_in,
# c_in (L, N, H) read; h_out, c_out (L, N, H) written (never the same arrays: a stream's
# state changes only when the whole step has run); gx, gh (N, G) scratch; logits (N, V)
# scratch; out (N, V) log-probabilities. cell: 0 rnn, 1 gru, 2 lstm. residual (L,) uint8:
# 1 where a layer's output is its cell's h plus its input (ModelConfig.residual_layers).

STREAM_CELLS = {"rnn": 0, "gru": 1, "lstm": 2}


# Below these sizes a streaming step's cell (streams) and decoder (multiply-adds) run on
# the calling thread: a parallel loop's fork and join costs more than it saves.
_SERIAL_BELOW = 4
_SERIAL_PRODUCT_BELOW = 1 << 16


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _dot(w, x):
    acc = np.float32(0.0)
    for k in range(w.shape[0]):
        acc += w[k] * x[k]
    return acc


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def _stream_products(w, x, bias, out):
    """out (N, G) = x (N, K) @ w (G, K)^T + bias (G,), in parallel over the rows of w."""
    G = w.shape[0]
    N = x.shape[0]
    for g in prange(G):
        row = w[g]
        for n in range(N):
            out[n, g] = bias[g] + _dot(row, x[n])


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def _stream_products_serial(w, x, bias, out):
    """_stream_products on the calling thread, for products too small to pay for a fork
    and join of the threads (a character model's decoder, 65 x 256: 1.6 us against
    2.6 us). Each output is the same _dot, so the results are the same to the bit."""
    for g in range(w.shape[0]):
        row = w[g]
        for n in range(x.shape[0]):
            out[n, g] = bias[g] + _dot(row, x[n])


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _cell_row(cell, gx, gh, h_prev, c_prev, h_new, c_new):
    """One stream's cell update: rows (G,) of gx, gh; (H,) of the states."""
    H = h_new.shape[0]
    one = np.float32(1.0)
    for j in range(H):
        if cell == 2:
            i = _sigmoid(gx[j] + gh[j])
            f = _sigmoid(gx[H + j] + gh[H + j])
            g = _tanh(gx[2 * H + j] + gh[2 * H + j])
            o = _sigmoid(gx[3 * H + j] + gh[3 * H + j])
            c = f * c_prev[j] + i * g
            c_new[j] = c
            h_new[j] = o * _tanh(c)
        elif cell == 1:
            r = _sigmoid(gx[j] + gh[j])
            z = _sigmoid(gx[H + j] + gh[H + j])
            nn = _tanh(gx[2 * H + j] + r * gh[2 * H + j])
            h_new[j] = (one - z) * nn + z * h_prev[j]
        else:
            h_new[j] = _tanh(gx[j] + gh[j])


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def _stream_cell(cell, gx, gh, h_prev, c_prev, h_new, c_new):
    for n in prange(h_new.shape[0]):
        _cell_row(cell, gx[n], gh[n], h_prev[n], c_prev[n], h_new[n], c_new[n])


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def _stream_cell_serial(cell, gx, gh, h_prev, c_prev, h_new, c_new):
    """_stream_cell on the calling thread, for one to three streams (a fork and join of
    the threads costs more than the cell: LSTM, H=256, one stream: 1.2 us against 2.7)."""
    for n in range(h_new.shape[0]):
        _cell_row(cell, gx[n], gh[n], h_prev[n], c_prev[n], h_new[n], c_new[n])


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _max(x):
    """max of x (n >= 1,) with eight independent running maxima, which LLVM turns into one
    vector max (one chain runs an element at a time; see row_max): 10000 elements in
    1.7 us instead of 6."""
    n = x.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = x[0]
    J = n - n % 8
    for j in range(0, J, 8):
        v0, v1, v2, v3 = x[j], x[j + 1], x[j + 2], x[j + 3]
        v4, v5, v6, v7 = x[j + 4], x[j + 5], x[j + 6], x[j + 7]
        m0 = v0 if v0 > m0 else m0
        m1 = v1 if v1 > m1 else m1
        m2 = v2 if v2 > m2 else m2
        m3 = v3 if v3 > m3 else m3
        m4 = v4 if v4 > m4 else m4
        m5 = v5 if v5 > m5 else m5
        m6 = v6 if v6 > m6 else m6
        m7 = v7 if v7 > m7 else m7
    m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for j in range(J, n):
        m = max(m, x[j])
    return m


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _log_softmax_row(logits, out):
    """out (V,) = log_softmax(logits (V,))."""
    V = logits.shape[0]
    m = _max(logits)
    s = _sum_exp(logits, None, m, False)
    lse = np.float64(m) + np.log(s)
    for v in range(V):
        out[v] = np.float32(np.float64(logits[v]) - lse)


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def _stream_log_softmax(logits, out):
    for n in prange(logits.shape[0]):
        _log_softmax_row(logits[n], out[n])


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def _stream_products2(w1, x1, b1, out1, w2, x2, b2, out2):
    """Both products of a layer (input and recurrent) in one parallel loop: one fork and
    join of the threads instead of two."""
    G = w1.shape[0]
    N = x1.shape[0]
    for g in prange(G):
        r1 = w1[g]
        r2 = w2[g]
        for n in range(N):
            out1[n, g] = b1[g] + _dot(r1, x1[n])
            out2[n, g] = b2[g] + _dot(r2, x2[n])


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def _log_softmax_serial(logits, out):
    """log_softmax of each row on the calling thread (one or a few streams: a parallel
    loop would cost more in its fork and join than it saves)."""
    for n in range(logits.shape[0]):
        _log_softmax_row(logits[n], out[n])


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def _stream_layers(
    cell, residual, ids, table, emb, w_ih0, w_ih, b_ih, w_hh, b_hh, h_in, c_in, h_out, c_out,
    gx, gh, xe, res,
):  # fmt: skip
    """Every layer for one step of N streams: ids (N,), state in h_in, c_in, out h_out,
    c_out; xe (N, E) scratch for the embedding rows (no table, or a residual layer 0);
    res (L, N, H) the outputs of the residual layers (h plus the layer's input). Returns
    the top layer's output (N, H)."""
    L = w_hh.shape[0]
    N = ids.shape[0]
    if table.shape[0] == 0 or residual[0]:
        for n in range(N):
            xe[n, :] = emb[ids[n]]
    if table.shape[0] > 0:
        for n in range(N):
            gx[n, :] = table[ids[n]]
    else:
        _stream_products(w_ih0, xe, b_ih[0], gx)
    x = xe  # the layer's input; layer 0's is used only when residual (E == H then)
    for layer in range(L):
        if layer > 0:
            _stream_products2(
                w_ih[layer - 1], x, b_ih[layer], gx,
                w_hh[layer], h_in[layer], b_hh[layer], gh,
            )  # fmt: skip
        else:
            _stream_products(w_hh[layer], h_in[layer], b_hh[layer], gh)
        if N < _SERIAL_BELOW:
            _stream_cell_serial(cell, gx, gh, h_in[layer], c_in[layer], h_out[layer], c_out[layer])
        else:
            _stream_cell(cell, gx, gh, h_in[layer], c_in[layer], h_out[layer], c_out[layer])
        if residual[layer]:
            out = res[layer]
            for n in range(N):
                for j in range(out.shape[1]):
                    out[n, j] = h_out[layer, n, j] + x[n, j]
            x = out
        else:
            x = h_out[layer]
    return x


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def stream_step(
    cell, residual, ids, table, emb, w_ih0, w_ih, b_ih, w_hh, b_hh, w_dec, b_dec,
    h_in, c_in, h_out, c_out, gx, gh, logits, out,
):  # fmt: skip
    """T steps of N streams (see model._step); gx, gh, logits are scratch. residual (L,)
    uint8: 1 where a layer's output adds its input. The state and
    the embedding rows pass through the kernel's own copies, which Numba allocates 32-byte
    aligned, so that the products' vector loads of them do not straddle cache lines (the
    caller's arrays are numpy's, 16-byte aligned). c_in, c_out: lstm only (for the other
    cells, scratch of that shape)."""
    T, N = ids.shape
    ha, ca = h_in.copy(), c_in.copy()
    hb, cb = np.empty_like(ha), np.empty_like(ca)
    xe = np.empty((N, emb.shape[1]), np.float32)
    res = np.empty(ha.shape, np.float32)
    top = ha[0]
    for t in range(T):
        top = _stream_layers(
            cell, residual, ids[t], table, emb, w_ih0, w_ih, b_ih, w_hh, b_hh, ha, ca, hb, cb,
            gx, gh, xe, res,
        )  # fmt: skip
        ha, hb = hb, ha
        ca, cb = cb, ca
    h_out[...] = ha
    c_out[...] = ca
    if w_dec.shape[0] * w_dec.shape[1] * N < _SERIAL_PRODUCT_BELOW:
        _stream_products_serial(w_dec, top, b_dec, logits)
    else:
        _stream_products(w_dec, top, b_dec, logits)
    if N < _SERIAL_BELOW:
        _log_softmax_serial(logits, out)
    else:
        _stream_log_softmax(logits, out)


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
