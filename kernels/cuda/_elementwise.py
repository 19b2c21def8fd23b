"""numba.cuda kernels of the CUDA backend: embedding, row softmaxes, optimizer updates and
sampling; the twins of ``kernels/cpu/_elementwise.py`` (same names, same argument order).

Conventions:
- Arrays are numba device arrays, float32 (ids, targets and sampled ids int64, the
  sampling uniforms float64), C-contiguous; scalars are Python numbers. Nothing is
  validated here (the model does that first), and no two array arguments are the same.
- Every kernel is launched on the default stream; the host functions return None, except
  sum_of_squares, which returns a Python float (one small device-to-host copy).
- Nothing compiles or touches the GPU at import time: the kernels have no signatures and
  compile on first use; those whose shared memory depends on the block size come from a
  factory cached per block size.
- Block sizes: module defaults for a real GPU (``BLOCK`` threads per block, at most
  ``MAX_BLOCKS`` blocks for grid-stride loops). Every host function takes keyword-only
  ``threads=`` (a power of two, at least 2) and the grid-stride ones ``blocks=`` too, so
  tests under the CUDA simulator (a Python thread per GPU thread) keep launches tiny;
  ``set_block_size`` changes the default.
- Row reductions (row_max, log_softmax, xent_*, sample) run one block per row with
  shared-memory tree reductions; loads are strided by the block size, so a warp reads
  consecutive elements (coalesced).
- The softmax kernels ignore ``shift``: each block computes its row's exact max together
  with the sum of exponentials in one pass (an online softmax: each thread keeps a running
  max m and sum s, rescaling s when m grows; pairs (m, s) then merge in a tree). The
  argument stays for the CPU backend's signature; row_shift is row_max here.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
from numba import cuda, float32, float64, int64

from ._gemm import column_sums

BLOCK = 256  # threads per block on a real GPU
MAX_BLOCKS = 2048  # grid-stride kernels: 132 SMs x 16 blocks of 256 threads (H100)
SAMPLE_BINS = 16  # radix of the sampling search: 4 bits of the key per pass

_NEG_INF32 = np.float32(-np.inf)
_ZERO32 = np.float32(0.0)
_ONE32 = np.float32(1.0)


def set_block_size(n: int) -> None:
    """Set the default threads per block (a power of two)."""
    global BLOCK
    if n < 2 or n & (n - 1):
        raise ValueError(f"block size must be a power of two >= 2, got {n}")
    BLOCK = int(n)


def _threads(threads):
    t = BLOCK if threads is None else int(threads)
    if t < 2 or t & (t - 1):
        raise ValueError(f"threads must be a power of two >= 2, got {t}")
    return t


def _grid(n, threads, blocks):
    """(blocks, threads) for a grid-stride loop over n elements."""
    t = _threads(threads)
    b = min(-(-n // t), MAX_BLOCKS) if blocks is None else int(blocks)
    return max(1, b), t


def _flat(a):
    """A 1-D view of a C-contiguous device array (reshape to an explicit size)."""
    return a if a.ndim == 1 else a.reshape(a.size)


# ---------------------------------------------------------------------------- embedding


@cuda.jit
def _embedding_forward_k(weight, ids, out):
    E = out.shape[1]
    total = ids.shape[0] * E
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        n = i // E
        e = i - n * E
        out[n, e] = weight[ids[n], e]


@cuda.jit
def _embedding_backward_k(ids, dout, dweight):
    E = dout.shape[1]
    total = ids.shape[0] * E
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        n = i // E
        e = i - n * E
        cuda.atomic.add(dweight, (ids[n], e), dout[n, e])


def embedding_forward(weight, ids, out, *, threads=None, blocks=None):
    """weight (V, E), ids (N,) int64 -> out (N, E) = weight[ids]."""
    n = out.shape[0] * out.shape[1]
    if n == 0:
        return
    b, t = _grid(n, threads, blocks)
    _embedding_forward_k[b, t](weight, ids, out)


def embedding_backward(ids, dout, dweight, *, threads=None, blocks=None):
    """dweight (V, E) += dout (N, E) scattered to rows ids (N,) (repeats add up, by float
    atomics: the order of a repeated row's additions varies from run to run)."""
    n = dout.shape[0] * dout.shape[1]
    if n == 0:
        return
    b, t = _grid(n, threads, blocks)
    _embedding_backward_k[b, t](ids, dout, dweight)


# ---------------------------------------------------------------------------- row reductions


@cuda.jit(device=True)
def _tree_max(sh, tid, nt):
    """Max of sh[:nt] (filled by the caller, then synchronized) into sh[0]."""
    s = nt // 2
    while s > 0:
        if tid < s:
            other = sh[tid + s]
            if other > sh[tid]:
                sh[tid] = other
        cuda.syncthreads()
        s //= 2
    return sh[0]


@cuda.jit(device=True)
def _tree_sum(sh, tid, nt):
    s = nt // 2
    while s > 0:
        if tid < s:
            sh[tid] += sh[tid + s]
        cuda.syncthreads()
        s //= 2
    return sh[0]


@cuda.jit(device=True)
def _merge(m1, s1, m2, s2):
    """(m, s) for the union of two sets given each one's max m and sum of exp(x - m)."""
    if m2 > m1:
        m1, m2 = m2, m1
        s1, s2 = s2, s1
    if m2 == _NEG_INF32:  # also when both are empty (-inf - -inf would be NaN)
        return m1, s1
    return m1, s1 + s2 * math.exp(m2 - m1)


@cuda.jit(device=True)
def _row_lse_parts(logits, bias, n, tid, nt, shm, shs):
    """(m, s) of row n of logits + bias for the whole block: max, sum of exp(x - max)."""
    V = logits.shape[1]
    m = _NEG_INF32
    s = _ZERO32
    for j in range(tid, V, nt):
        x = logits[n, j] + bias[j]
        if x > m:
            s = s * math.exp(m - x) + _ONE32
            m = x
        else:
            s += math.exp(x - m)
    shm[tid] = m
    shs[tid] = s
    cuda.syncthreads()
    step = nt // 2
    while step > 0:
        if tid < step:
            mm, ss = _merge(shm[tid], shs[tid], shm[tid + step], shs[tid + step])
            shm[tid] = mm
            shs[tid] = ss
        cuda.syncthreads()
        step //= 2
    return shm[0], shs[0]


@functools.cache
def _block_kernels(nt):
    """The kernels with nt-sized shared memory, for nt threads per block: the
    one-block-per-row ones, and the grid-stride reductions to one partial per block."""

    @cuda.jit
    def row_max_k(logits, bias, out):
        sh = cuda.shared.array(nt, float32)
        n = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        m = _NEG_INF32
        for j in range(tid, logits.shape[1], nt):
            x = logits[n, j] + bias[j]
            if x > m:
                m = x
        sh[tid] = m
        cuda.syncthreads()
        m = _tree_max(sh, tid, nt)
        if tid == 0:
            out[n] = m

    @cuda.jit
    def log_softmax_k(logits, bias, out):
        shm = cuda.shared.array(nt, float32)
        shs = cuda.shared.array(nt, float32)
        n = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        m, s = _row_lse_parts(logits, bias, n, tid, nt, shm, shs)
        lse = m + math.log(s)
        for j in range(tid, logits.shape[1], nt):
            out[n, j] = logits[n, j] + bias[j] - lse

    @cuda.jit
    def xent_forward_k(logits, bias, targets, nll):
        shm = cuda.shared.array(nt, float32)
        shs = cuda.shared.array(nt, float32)
        n = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        m, s = _row_lse_parts(logits, bias, n, tid, nt, shm, shs)
        if tid == 0:
            t = targets[n]
            nll[n] = m + math.log(s) - (logits[n, t] + bias[t])

    @cuda.jit
    def xent_forward_backward_k(logits, bias, targets, scale, nll):
        shm = cuda.shared.array(nt, float32)
        shs = cuda.shared.array(nt, float32)
        n = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        t = targets[n]
        target_logit = logits[n, t] + bias[t]  # read before any thread overwrites the row
        m, s = _row_lse_parts(logits, bias, n, tid, nt, shm, shs)  # ends on a barrier
        if tid == 0:
            nll[n] = m + math.log(s) - target_logit
        k = scale / s
        for j in range(tid, logits.shape[1], nt):
            g = math.exp(logits[n, j] + bias[j] - m) * k
            if j == t:
                g -= scale
            logits[n, j] = g

    @cuda.jit
    def prediction_stats_k(logits, bias, targets, logp, entropy, rank, top_ids, top_vals):
        shm = cuda.shared.array(nt, float32)
        shs = cuda.shared.array(nt, float32)
        sh1 = cuda.shared.array(nt, float32)
        shc = cuda.shared.array(nt, int64)
        n = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        V = logits.shape[1]
        t = targets[n]
        xt = logits[n, t] + bias[t]
        m, s = _row_lse_parts(logits, bias, n, tid, nt, shm, shs)  # ends on a barrier
        s1 = _ZERO32
        above = 0
        for j in range(tid, V, nt):
            x = logits[n, j] + bias[j]
            d = x - m
            s1 += math.exp(d) * d
            if x > xt:  # x itself: (x - m) + m may round to another float
                above += 1
        sh1[tid] = s1
        shc[tid] = above
        cuda.syncthreads()
        s1 = _tree_sum(sh1, tid, nt)
        above = _tree_sum(shc, tid, nt)
        if tid == 0:
            lse = m + math.log(s)
            logp[n] = xt - lse
            entropy[n] = math.log(s) - s1 / s
            rank[n] = 1 + above
            # the top K by one thread: K is small and the rows run in parallel blocks
            K = top_ids.shape[1]
            for i in range(K):
                top_vals[n, i] = _NEG_INF32
                top_ids[n, i] = -1
            for j in range(V if K > 0 else 0):
                x = logits[n, j] + bias[j]
                if x > top_vals[n, K - 1]:
                    i = K - 1
                    while i > 0 and x > top_vals[n, i - 1]:
                        top_vals[n, i] = top_vals[n, i - 1]
                        top_ids[n, i] = top_ids[n, i - 1]
                        i -= 1
                    top_vals[n, i] = x
                    top_ids[n, i] = j
            for i in range(K):
                top_vals[n, i] -= lse

    @cuda.jit
    def sum_of_squares_k(x, partial):
        sh = cuda.shared.array(nt, float64)
        tid = cuda.threadIdx.x
        acc = float64(0.0)
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            v = float64(x[i])
            acc += v * v
        sh[tid] = acc
        cuda.syncthreads()
        total = _tree_sum(sh, tid, nt)
        if tid == 0:
            partial[cuda.blockIdx.x] = total

    @cuda.jit
    def max_abs_k(x, partial):
        sh = cuda.shared.array(nt, float32)
        tid = cuda.threadIdx.x
        m = float32(0.0)
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            v = abs(x[i])
            if v > m:
                m = v
        sh[tid] = m
        cuda.syncthreads()
        top = _tree_max(sh, tid, nt)
        if tid == 0:
            partial[cuda.blockIdx.x] = top

    return SimpleNamespace(
        row_max=row_max_k,
        log_softmax=log_softmax_k,
        xent_forward=xent_forward_k,
        xent_forward_backward=xent_forward_backward_k,
        prediction_stats=prediction_stats_k,
        sum_of_squares=sum_of_squares_k,
        max_abs=max_abs_k,
    )


def row_max(logits, bias, out, *, threads=None):
    """out (N,) = max over each row of logits (N, V) + bias (V,)."""
    N = logits.shape[0]
    if N == 0:
        return
    t = _threads(threads)
    _block_kernels(t).row_max[N, t](logits, bias, out)


def row_shift(logits, bias, out, *, threads=None):
    """out (N,): a softmax shift for each row (the exact row max of logits + bias). The
    kernels of this module ignore shift (see the module docstring)."""
    row_max(logits, bias, out, threads=threads)


def log_softmax(logits, bias, shift, out, *, threads=None):
    """out (N, V) = log softmax(logits + bias) per row; shift is ignored."""
    N = logits.shape[0]
    if N == 0:
        return
    t = _threads(threads)
    _block_kernels(t).log_softmax[N, t](logits, bias, out)


def xent_forward(logits, bias, targets, shift, nll, *, threads=None):
    """nll (N,) = -log softmax(logits + bias)[n, targets[n]]; shift is ignored."""
    N = logits.shape[0]
    if N == 0:
        return
    t = _threads(threads)
    _block_kernels(t).xent_forward[N, t](logits, bias, targets, nll)


def prediction_stats(
    logits, bias, shift, targets, logp, entropy, rank, top_ids, top_vals, *, threads=None
):
    """Per row of logits (N, V) + bias: logp of the target, entropy, rank, and the top K
    (ids and log-probabilities, best first, ties lower id first); see the CPU kernel.
    shift is ignored."""
    N = logits.shape[0]
    if N == 0:
        return
    t = _threads(threads)
    _block_kernels(t).prediction_stats[N, t](
        logits, bias, targets, logp, entropy, rank, top_ids, top_vals
    )


def xent_forward_backward(logits, bias, targets, shift, scale, nll, dbias, *, threads=None):
    """nll (N,) as xent_forward; then, in place, logits becomes scale * (softmax -
    onehot(target)) and dbias (V,) its column sums (_gemm.column_sums: deterministic,
    summing in float64). shift is ignored."""
    N = logits.shape[0]
    t = _threads(threads)
    if N > 0:
        kernel = _block_kernels(t).xent_forward_backward
        kernel[N, t](logits, bias, targets, np.float32(scale), nll)
    column_sums(logits, dbias)


def sum_of_squares(x, *, threads=None, blocks=None) -> float:
    """sum(x**2) of a flat float32 array in float64: one partial sum per block on the
    device, added on the host (one copy of at most MAX_BLOCKS doubles)."""
    x = _flat(x)
    n = x.shape[0]
    if n == 0:
        return 0.0
    b, t = _grid(n, threads, blocks)
    partial = cuda.device_array(b, np.float64)
    _block_kernels(t).sum_of_squares[b, t](x, partial)
    return float(np.sum(partial.copy_to_host()))


def max_abs(x, *, threads=None, blocks=None) -> float:
    """max |x| of a float32 array (0 when empty): one partial per block on the device,
    the largest taken on the host. NaN is not reported (check sum_of_squares first)."""
    x = _flat(x)
    n = x.shape[0]
    if n == 0:
        return 0.0
    b, t = _grid(n, threads, blocks)
    partial = cuda.device_array(b, np.float32)
    _block_kernels(t).max_abs[b, t](x, partial)
    return float(np.max(partial.copy_to_host()))


# ---------------------------------------------------------------------------- element-wise


@cuda.jit
def _scale_k(x, factor):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        x[i] *= factor


@cuda.jit
def _sgd_k(param, grad, lr):
    for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
        param[i] -= lr * grad[i]


@cuda.jit
def _adam_k(param, grad, m, v, b1, b2, a1, a2, step_size, inv_sqrt_c2, eps):
    for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
        g = grad[i]
        mi = b1 * m[i] + a1 * g
        vi = b2 * v[i] + a2 * g * g
        m[i] = mi
        v[i] = vi
        param[i] -= step_size * mi / (math.sqrt(vi) * inv_sqrt_c2 + eps)


@cuda.jit
def _multiply_k(a, b, out):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = a[i] * b[i]


@cuda.jit
def _add_k(a, b, out):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = a[i] + b[i]


def scale_inplace(x, factor, *, threads=None, blocks=None):
    """x *= factor (float32)."""
    x = _flat(x)
    if x.shape[0] == 0:
        return
    b, t = _grid(x.shape[0], threads, blocks)
    _scale_k[b, t](x, np.float32(factor))


def sgd_update(param, grad, lr, *, threads=None, blocks=None):
    """param -= lr * grad (lr rounded to float32, as on the CPU)."""
    param, grad = _flat(param), _flat(grad)
    if param.shape[0] == 0:
        return
    b, t = _grid(param.shape[0], threads, blocks)
    _sgd_k[b, t](param, grad, np.float32(lr))


@cuda.jit
def _sgd_rows_k(param, rows, grad, lr):
    E = grad.shape[1]
    for i in range(cuda.grid(1), rows.shape[0] * E, cuda.gridsize(1)):
        n = i // E
        e = i - n * E
        param[rows[n], e] -= lr * grad[n, e]


def sgd_update_rows(param, rows, grad, lr, *, threads=None, blocks=None):
    """param (V, E)[rows[n]] -= lr * grad (n, E)[n], rows (n,) int64 unique (no races)."""
    n = grad.shape[0] * grad.shape[1]
    if n == 0:
        return
    b, t = _grid(n, threads, blocks)
    _sgd_rows_k[b, t](param, rows, grad, np.float32(lr))


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, step, *, threads=None, blocks=None):
    """One torch.optim.Adam step (step counts from 1), updating param, m and v in place;
    the scalars are formed exactly as in the CPU kernel (1 - beta in float64 first, bias
    corrections folded into a step size and 1 / sqrt(c2))."""
    param, grad, m, v = _flat(param), _flat(grad), _flat(m), _flat(v)
    if param.shape[0] == 0:
        return
    c1 = 1.0 - beta1**step
    c2 = 1.0 - beta2**step
    b, t = _grid(param.shape[0], threads, blocks)
    _adam_k[b, t](
        param, grad, m, v,
        np.float32(beta1), np.float32(beta2),
        np.float32(1.0 - beta1), np.float32(1.0 - beta2),
        np.float32(lr / c1), np.float32(1.0 / np.sqrt(c2)), np.float32(eps),
    )  # fmt: skip


def multiply(a, b, out, *, threads=None, blocks=None):
    """out = a * b element-wise, for C-contiguous arrays of one shape (any ndim); returns
    out (as numpy's multiply does)."""
    n = out.size
    if n:
        g, t = _grid(n, threads, blocks)
        _multiply_k[g, t](_flat(a), _flat(b), _flat(out))
    return out


def add(a, b, out, *, threads=None, blocks=None):
    """out = a + b element-wise, as multiply; out may be a (each element is read before it
    is written, by the same thread)."""
    n = out.size
    if n:
        g, t = _grid(n, threads, blocks)
        _add_k[g, t](_flat(a), _flat(b), _flat(out))
    return out


# ---------------------------------------------------------------------------- sampling
# One block per row. The row's tokens are ordered by a 64-bit key that is distinct per
# token and decreases along the reference order (stream.sample_id: z descending, ties by
# lower id): K = u * V + (V - 1 - id), u the float32 bits of the log-prob mapped to an
# unsigned order (u < 2**32; -0.0 and +0.0 share one u). Since temperature > 0 divides
# every z alike, ordering log-probs orders z. V < 2**28 keeps K below 2**60.
#
# Each of the three steps (top-k cut, top-p cut, the draw) finds the first token, in key
# order, at which the running total of a weight reaches a target: a count for top-k
# (>= k); the unnormalised probability e = exp(z - z_max) for top-p (>= top_p * sum) and
# the draw (> u * sum, the inverse CDF). The search is a radix select on K, 4 bits a pass:
# each pass, every thread adds the weights of its tokens inside the current key range into
# 16 bins (a per-thread local array), a shared-memory tree sums the bins, thread 0 picks
# the bin where the target is reached and the range shrinks to it. Sums are in float64
# and in a fixed order, so the result is deterministic; no sort and no scratch memory.
# About 12 passes per step for log-probs in [-30, 0] and V = 50,000 (K spans ~2**46).
# e is a float32 exp of z - z_max (computed in float64): relative error ~3e-7, which moves
# CDF boundaries by less than 1e-6 (the tests' tolerance).


@cuda.jit(device=True)
def _sample_key(bits, j, V):
    b = int64(bits)
    u = -b if b < 0 else b + int64(2147483648)
    return u * V + (V - 1 - j)


@cuda.jit(device=True)
def _sample_weight(x, xmax, inv_t):
    d = float32((float64(x) - xmax) * inv_t)
    return float64(math.exp(d))


@cuda.jit(device=True)
def _radix_search(xs, xi, row, kcut, kref, shift0, mode, param, xmax, inv_t, hist, loc, st, stf):
    """The key of the first token, in key order among those with K >= kcut, at which the
    running weight reaches the target; -1 if the total falls short (modes 0 and 1).

    mode 0: weight 1, target param, reached when >= (top-k);
    mode 1: weight e, target param * total, >= (top-p);
    mode 2: weight e, target param * total, > (the draw; falls back to the last token
    with nonzero weight if rounding leaves the target unreached).
    kref: any token's key; all keys share their bits above shift0 (a multiple of 4).
    """
    nbins = hist.shape[0]
    nt = hist.shape[1]
    tid = cuda.threadIdx.x
    V = xs.shape[1]
    prefix = kref >> shift0
    shift = shift0
    above = float64(0.0)
    target = float64(0.0)
    first = True
    while shift > 0:
        shift -= 4
        for b in range(nbins):
            loc[b] = 0.0
        for j in range(tid, V, nt):
            K = _sample_key(xi[row, j], j, V)
            if K >= kcut and (K >> (shift + 4)) == prefix:
                w = float64(1.0) if mode == 0 else _sample_weight(xs[row, j], xmax, inv_t)
                loc[(K >> shift) & 15] += w
        for b in range(nbins):
            hist[b, tid] = loc[b]
        cuda.syncthreads()
        step = nt // 2
        while step > 0:
            if tid < step:
                for b in range(nbins):
                    hist[b, tid] += hist[b, tid + step]
            cuda.syncthreads()
            step //= 2
        if tid == 0:
            if first:
                total = float64(0.0)
                for b in range(nbins):
                    total += hist[b, 0]
                target = param if mode == 0 else param * total
            cum = above
            chosen = -1
            for bb in range(nbins):
                b = nbins - 1 - bb
                h = hist[b, 0]
                if h > 0.0:
                    reach = cum + h
                    if (mode == 2 and reach > target) or (mode != 2 and reach >= target):
                        chosen = b
                        break
                    cum += h
            give_up = 0
            if chosen < 0:
                if first and mode != 2:
                    give_up = 1
                else:  # the lowest bin with weight, and the weight above it
                    cum = above
                    chosen = 0
                    above_chosen = above
                    for bb in range(nbins):
                        b = nbins - 1 - bb
                        h = hist[b, 0]
                        if h > 0.0:
                            chosen = b
                            above_chosen = cum
                            cum += h
                    cum = above_chosen
            st[0] = prefix * nbins + chosen
            st[1] = give_up
            stf[0] = cum
        cuda.syncthreads()
        prefix = st[0]
        above = stf[0]
        give_up = st[1]
        cuda.syncthreads()  # everyone has read st before thread 0 writes it again
        if give_up != 0:
            return int64(-1)
        first = False
    return prefix


@functools.cache
def _sample_kernel(nt):
    nbins = SAMPLE_BINS

    @cuda.jit
    def sample_k(xs, xi, temperature, top_k, top_p, uniforms, out):
        hist = cuda.shared.array((nbins, nt), float64)
        kred = cuda.shared.array((2, nt), int64)
        st = cuda.shared.array(2, int64)
        stf = cuda.shared.array(1, float64)
        loc = cuda.local.array(nbins, float64)
        row = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        V = xs.shape[1]
        kmax = int64(-1)
        kmin = int64(1) << 62
        for j in range(tid, V, nt):
            K = _sample_key(xi[row, j], j, V)
            if K > kmax:  # (builtin max/min of int64 fails to type for CUDA in numba 0.68)
                kmax = K
            if K < kmin:
                kmin = K
        kred[0, tid] = kmax
        kred[1, tid] = kmin
        cuda.syncthreads()
        step = nt // 2
        while step > 0:
            if tid < step:
                if kred[0, tid + step] > kred[0, tid]:
                    kred[0, tid] = kred[0, tid + step]
                if kred[1, tid + step] < kred[1, tid]:
                    kred[1, tid] = kred[1, tid + step]
            cuda.syncthreads()
            step //= 2
        kmax = kred[0, 0]
        kmin = kred[1, 0]
        xmax = float64(xs[row, V - 1 - kmax % V])
        inv_t = 1.0 / temperature
        shift0 = 0
        d = kmin ^ kmax
        while d > 0:
            d >>= 1
            shift0 += 1
        shift0 = (shift0 + 3) // 4 * 4
        kcut = int64(-1)
        if top_k > 0 and top_k < V:
            kc = _radix_search(
                xs, xi, row, kcut, kmax, shift0, 0, float64(top_k), xmax, inv_t,
                hist, loc, st, stf,
            )  # fmt: skip
            if kc >= 0:
                kcut = kc
        if top_p < 1.0:
            kc = _radix_search(
                xs, xi, row, kcut, kmax, shift0, 1, float64(top_p), xmax, inv_t,
                hist, loc, st, stf,
            )  # fmt: skip
            if kc >= 0:
                kcut = kc
        kc = _radix_search(
            xs, xi, row, kcut, kmax, shift0, 2, float64(uniforms[row]), xmax, inv_t,
            hist, loc, st, stf,
        )  # fmt: skip
        if tid == 0:
            out[row] = V - 1 - kc % V

    return sample_k


def sample(logprobs, temperature, top_k, top_p, uniforms, out, *, threads=None):
    """out (N,) int64: one token per row of logprobs (N, V) float32, drawn as
    rnnlm_engine.stream.sample_id does, with uniforms (N,) float64 in [0, 1) as the random
    numbers: z = logprobs / temperature; tokens ordered by z descending, ties by lower id;
    the first top_k kept (0: all); p = softmax over those; if top_p < 1, the shortest
    prefix whose cumulative p reaches top_p kept and renormalised; the token is the first
    whose cumulative probability exceeds uniforms[n]. temperature > 0."""
    N = logprobs.shape[0]
    if N == 0:
        return
    t = _threads(threads)
    _sample_kernel(t)[N, t](
        logprobs,
        logprobs.view(np.int32),
        float(temperature),
        int(top_k),
        float(top_p),
        uniforms,
        out,
    )


__all__ = [
    "BLOCK",
    "MAX_BLOCKS",
    "adam_update",
    "embedding_backward",
    "embedding_forward",
    "log_softmax",
    "multiply",
    "add",
    "row_max",
    "row_shift",
    "sample",
    "scale_inplace",
    "set_block_size",
    "sgd_update",
    "sgd_update_rows",
    "sum_of_squares",
    "xent_forward",
    "xent_forward_backward",
]
