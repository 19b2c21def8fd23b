"""Recurrent cells over a whole sequence on the GPU (numba.cuda): forward, and backward
through time. The CUDA twin of kernels/cpu/_cells.py, with the same contract and the same
saved-activation layout, so that either backend's forward feeds the other's backward.

Each time step is one gemm for the recurrent product (h_{t-1} @ w_hh^T, see _gemm.py)
followed by one fused element-wise kernel (one thread per (b, j) of the (B, H) state).
The weight-gradient products that do not depend on the step order are done once, after
the loop: dw_hh as two large gemms (step 0 against h0, then steps 1.. against hs[:-1],
each a reshape of a contiguous slice, no copy), db_hh as column sums.

Contract, the same for the three cells (c arrays are None for rnn and gru; acts is None
for rnn, whose saved activation is hs itself). Every array is a float32 C-contiguous numba
device array; every kernel launches on the default stream; nothing is validated here.

  forward(xproj, w_hh, b_hh, h0, c0, hs, cs, acts)
    xproj (T, B, G)  x W_ih^T + b_ih for every step (read only)
    w_hh (G, H) (as forward_layout returns it: w_hh itself), b_hh (G,), h0 (B, H), c0 (B, H)
    hs, cs (T, B, H) outputs; acts (T, B, 4H) saved activations for the backward
      (lstm [i, f, g, o]; gru [r, z, n, W_hn h + b_hn])

  backward(w_hh, h0, c0, hs, cs, acts, dhs, dcT, dxproj, dw_hh, db_hh, dh0, dc0)
    dhs (T, B, H) gradient on every output h_t (the final state's included); dcT (B, H) on
    the final cell state or None for zero (read only). Outputs: dxproj (T, B, G),
    dw_hh (G, H), db_hh (G,), dh0 (B, H), dc0 (B, H).

The backward carries the recurrent gradient in one (B, H) buffer: the step kernel reads
it (dh = dh_out + dh_next) and the step's gemm overwrites it with dgates @ w_hh (for gru,
accumulates onto dh * z, which the step kernel left there); at t = 0 the kernel and the
gemm write dh0 (and dc0) directly. The first step (t = T - 1) is told by a flag that there
is no incoming gradient, so no buffer needs zeroing.

Scratch buffers (the per-step product, gru's recurrent-product gradient) are allocated
once per shape and thread (calls from several threads must not share them).
Gates use precise math.exp / math.tanh; the sigmoid is written so that exp never
overflows (the CUDA simulator's math.exp would raise OverflowError).
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import cuda

from ._gemm import column_sums, gemm

# width of the saved activations, in units of H
ACTS_PER_HIDDEN = {"rnn": 0, "gru": 4, "lstm": 4}

DEFAULT_THREADS = 256  # threads per block of the element-wise step kernels
_threads = DEFAULT_THREADS


def set_threads(n: int | None = None) -> int:
    """Threads per block of the element-wise kernels (None: the default); returns the previous."""
    global _threads
    previous = _threads
    _threads = DEFAULT_THREADS if n is None else int(n)
    return previous


def forward_layout(w):
    """A layer matrix w (G, H) as the forward products want it: unchanged (gemm reads it
    transposed, with coalesced loads along H)."""
    return w


_local = threading.local()


def _scratch(name, shape):
    """A float32 device array for name and shape, allocated once per calling thread."""
    cache = getattr(_local, "buffers", None)
    if cache is None:
        cache = _local.buffers = {}
    key = (name, tuple(shape))
    buf = cache.get(key)
    if buf is None:
        buf = cache[key] = cuda.device_array(shape, np.float32)
    return buf


def _launch(kernel, n):
    threads = min(_threads, n)
    return kernel[(n + threads - 1) // threads, threads]


ONE = np.float32(1.0)
ZERO = np.float32(0.0)


@cuda.jit(device=True)
def _sigmoid(x):
    if x >= ZERO:
        return ONE / (ONE + math.exp(-x))
    e = math.exp(x)
    return e / (ONE + e)


# ---------------------------------------------------------------------------- step kernels
# One thread per (b, j); hp (B, G) is this step's recurrent product h_prev @ w_hh^T and xp
# (B, G) its input projection. Flags are int32 0/1.


@cuda.jit
def _rnn_step_forward(xp, hp, b_hh, h_out):
    B, H = h_out.shape
    idx = cuda.grid(1)
    if idx < B * H:
        b = idx // H
        j = idx - b * H
        h_out[b, j] = math.tanh(xp[b, j] + hp[b, j] + b_hh[j])


@cuda.jit
def _rnn_step_backward(dh_out, dh_rec, has_rec, h, dpre):
    """dpre = (dh_out + dh_rec) (1 - h^2); dh_rec is read only if has_rec."""
    B, H = h.shape
    idx = cuda.grid(1)
    if idx < B * H:
        b = idx // H
        j = idx - b * H
        dh = dh_out[b, j]
        if has_rec:
            dh += dh_rec[b, j]
        hv = h[b, j]
        dpre[b, j] = dh * (ONE - hv * hv)


@cuda.jit
def _gru_step_forward(xp, hp, b_hh, h_prev, h_out, acts):
    """acts (B, 4H) receives [r, z, n, hn] with hn = W_hn h_prev + b_hn."""
    B, H = h_out.shape
    idx = cuda.grid(1)
    if idx < B * H:
        b = idx // H
        j = idx - b * H
        r = _sigmoid(xp[b, j] + hp[b, j] + b_hh[j])
        z = _sigmoid(xp[b, H + j] + hp[b, H + j] + b_hh[H + j])
        hn = hp[b, 2 * H + j] + b_hh[2 * H + j]
        n = math.tanh(xp[b, 2 * H + j] + r * hn)
        h_out[b, j] = (ONE - z) * n + z * h_prev[b, j]
        acts[b, j] = r
        acts[b, H + j] = z
        acts[b, 2 * H + j] = n
        acts[b, 3 * H + j] = hn


@cuda.jit
def _gru_step_backward(dh_out, dh_next, has_next, dh_carry, h_prev, acts, dxp, dhp):
    """dh = dh_out + dh_next (if has_next); writes dxp, dhp (B, 3H) and dh_carry = dh z.

    dh_carry may be dh_next itself (each thread reads its element before writing it).
    dxp is the gradient of the input projection, dhp that of W_hh h + b_hh; they differ in
    the n block, where the recurrent part enters multiplied by r.
    """
    B, H = h_prev.shape
    idx = cuda.grid(1)
    if idx < B * H:
        b = idx // H
        j = idx - b * H
        r = acts[b, j]
        z = acts[b, H + j]
        n = acts[b, 2 * H + j]
        hn = acts[b, 3 * H + j]
        dh = dh_out[b, j]
        if has_next:
            dh += dh_next[b, j]
        dn_pre = dh * (ONE - z) * (ONE - n * n)
        dr_pre = dn_pre * hn * r * (ONE - r)
        dz_pre = dh * (h_prev[b, j] - n) * z * (ONE - z)
        dxp[b, j] = dr_pre
        dxp[b, H + j] = dz_pre
        dxp[b, 2 * H + j] = dn_pre
        dhp[b, j] = dr_pre
        dhp[b, H + j] = dz_pre
        dhp[b, 2 * H + j] = dn_pre * r
        dh_carry[b, j] = dh * z


@cuda.jit
def _lstm_step_forward(xp, hp, b_hh, c_prev, h_out, c_out, acts):
    """acts (B, 4H) receives the activated gates [i, f, g, o]."""
    B, H = h_out.shape
    idx = cuda.grid(1)
    if idx < B * H:
        b = idx // H
        j = idx - b * H
        i = _sigmoid(xp[b, j] + hp[b, j] + b_hh[j])
        f = _sigmoid(xp[b, H + j] + hp[b, H + j] + b_hh[H + j])
        g = math.tanh(xp[b, 2 * H + j] + hp[b, 2 * H + j] + b_hh[2 * H + j])
        o = _sigmoid(xp[b, 3 * H + j] + hp[b, 3 * H + j] + b_hh[3 * H + j])
        c = f * c_prev[b, j] + i * g
        c_out[b, j] = c
        h_out[b, j] = o * math.tanh(c)
        acts[b, j] = i
        acts[b, H + j] = f
        acts[b, 2 * H + j] = g
        acts[b, 3 * H + j] = o


@cuda.jit
def _lstm_step_backward(dh_out, dh_rec, has_rec, dc_in, has_dc, dc_out, c_prev, c, acts, dgates):
    """dh = dh_out + dh_rec (if has_rec); dc_in holds dc_next (zero unless has_dc) and
    dc_out receives dc_prev (it may be dc_in itself)."""
    B, H = c.shape
    idx = cuda.grid(1)
    if idx < B * H:
        b = idx // H
        j = idx - b * H
        i = acts[b, j]
        f = acts[b, H + j]
        g = acts[b, 2 * H + j]
        o = acts[b, 3 * H + j]
        tc = math.tanh(c[b, j])
        dh = dh_out[b, j]
        if has_rec:
            dh += dh_rec[b, j]
        dcv = dh * o * (ONE - tc * tc)
        if has_dc:
            dcv += dc_in[b, j]
        dgates[b, j] = dcv * g * i * (ONE - i)
        dgates[b, H + j] = dcv * c_prev[b, j] * f * (ONE - f)
        dgates[b, 2 * H + j] = dcv * i * (ONE - g * g)
        dgates[b, 3 * H + j] = dh * tc * o * (ONE - o)
        dc_out[b, j] = dcv * f


# ---------------------------------------------------------------------------- sequences


def _accumulate_dw_hh(dgrad, h0, hs, dw_hh, db_hh):
    """dw_hh = sum_t dgrad_t^T h_{t-1} and db_hh = sum_t,b dgrad, with large products."""
    T, B, G = dgrad.shape
    H = h0.shape[1]
    gemm(dgrad[0], h0, dw_hh, trans_a=True)
    if T > 1:
        rest = dgrad[1:].reshape((T - 1) * B, G)
        gemm(rest, hs[:-1].reshape((T - 1) * B, H), dw_hh, trans_a=True, beta=1.0)
    column_sums(dgrad.reshape(T * B, G), db_hh)


def rnn_forward(xproj, w_hh, b_hh, h0, c0, hs, cs, acts):
    T, B, G = xproj.shape
    H = h0.shape[1]
    hp = _scratch("hp", (B, G))
    step = _launch(_rnn_step_forward, B * H)
    h_prev = h0
    for t in range(T):
        h_t = hs[t]
        gemm(h_prev, w_hh, hp, trans_b=True)
        step(xproj[t], hp, b_hh, h_t)
        h_prev = h_t


def rnn_backward(w_hh, h0, c0, hs, cs, acts, dhs, dcT, dxproj, dw_hh, db_hh, dh0, dc0):
    T, B, H = hs.shape
    dh_rec = _scratch("dh_rec", (B, H))
    step = _launch(_rnn_step_backward, B * H)
    for t in range(T - 1, -1, -1):
        dpre = dxproj[t]
        step(dhs[t], dh_rec, np.int32(t < T - 1), hs[t], dpre)
        gemm(dpre, w_hh, dh_rec if t > 0 else dh0)
    _accumulate_dw_hh(dxproj, h0, hs, dw_hh, db_hh)


def gru_forward(xproj, w_hh, b_hh, h0, c0, hs, cs, acts):
    T, B, G = xproj.shape
    H = h0.shape[1]
    hp = _scratch("hp", (B, G))
    step = _launch(_gru_step_forward, B * H)
    h_prev = h0
    for t in range(T):
        h_t = hs[t]
        gemm(h_prev, w_hh, hp, trans_b=True)
        step(xproj[t], hp, b_hh, h_prev, h_t, acts[t])
        h_prev = h_t


def gru_backward(w_hh, h0, c0, hs, cs, acts, dhs, dcT, dxproj, dw_hh, db_hh, dh0, dc0):
    T, B, H = hs.shape
    G = dxproj.shape[2]
    dhproj = _scratch("dhproj", (T, B, G))  # the recurrent product's gradient
    dh_next = _scratch("dh_next", (B, H))
    step = _launch(_gru_step_backward, B * H)
    for t in range(T - 1, -1, -1):
        h_prev = hs[t - 1] if t > 0 else h0
        carry = dh_next if t > 0 else dh0
        dhp = dhproj[t]
        step(dhs[t], dh_next, np.int32(t < T - 1), carry, h_prev, acts[t], dxproj[t], dhp)
        gemm(dhp, w_hh, carry, beta=1.0)  # dh_next = dh z + dhp @ w_hh
    _accumulate_dw_hh(dhproj, h0, hs, dw_hh, db_hh)


def lstm_forward(xproj, w_hh, b_hh, h0, c0, hs, cs, acts):
    T, B, G = xproj.shape
    H = h0.shape[1]
    hp = _scratch("hp", (B, G))
    step = _launch(_lstm_step_forward, B * H)
    h_prev, c_prev = h0, c0
    for t in range(T):
        h_t, c_t = hs[t], cs[t]
        gemm(h_prev, w_hh, hp, trans_b=True)
        step(xproj[t], hp, b_hh, c_prev, h_t, c_t, acts[t])
        h_prev, c_prev = h_t, c_t


def lstm_backward(w_hh, h0, c0, hs, cs, acts, dhs, dcT, dxproj, dw_hh, db_hh, dh0, dc0):
    T, B, H = hs.shape
    dh_rec = _scratch("dh_rec", (B, H))
    dc = _scratch("dc", (B, H))
    step = _launch(_lstm_step_backward, B * H)
    for t in range(T - 1, -1, -1):
        last = t == T - 1
        c_prev = cs[t - 1] if t > 0 else c0
        # dc_next: dc, except at the last step dcT (none given: zero, dc is not read)
        dc_in = dcT if last and dcT is not None else dc
        has_dc = not last or dcT is not None
        dgates = dxproj[t]
        step(
            dhs[t],
            dh_rec,
            np.int32(not last),
            dc_in,
            np.int32(has_dc),
            dc if t > 0 else dc0,
            c_prev,
            cs[t],
            acts[t],
            dgates,
        )
        gemm(dgates, w_hh, dh_rec if t > 0 else dh0)
    _accumulate_dw_hh(dxproj, h0, hs, dw_hh, db_hh)


CELL_FORWARD = {"rnn": rnn_forward, "gru": gru_forward, "lstm": lstm_forward}
CELL_BACKWARD = {"rnn": rnn_backward, "gru": gru_backward, "lstm": lstm_backward}
