"""Recurrent cells over a whole sequence: forward, and backward through time.

Each time step is one BLAS product for the recurrent term (numpy.matmul into a preallocated
buffer; numba's np.dot would need SciPy) followed by one fused element-wise Numba kernel.
The weight-gradient products that do not depend on the step order are done once, after
the loop, as single large matrix products.

Contract, the same for the three cells (c arrays are None for rnn and gru; acts is None
for rnn, whose saved activation is hs itself):

  forward(xproj, w_hh, b_hh, h0, c0, hs, cs, acts)
    xproj (T, B, G)  x W_ih^T + b_ih for every step (read only)
    w_hh (G, H), b_hh (G,), h0 (B, H), c0 (B, H)
    hs, cs (T, B, H) outputs; acts (T, B, 4H) saved activations for the backward
      (lstm [i, f, g, o]; gru [r, z, n, W_hn h + b_hn])

  backward(w_hh, h0, c0, hs, cs, acts, dhs, dcT, dxproj, dw_hh, db_hh, dh0, dc0)
    dhs (T, B, H) gradient on every output h_t (the final state's included); dcT (B, H) on
    the final cell state or None for zero. Outputs: dxproj (T, B, G), dw_hh (G, H),
    db_hh (G,), dh0 (B, H), dc0 (B, H).

The step kernels (one time step of a cell, element-wise, after BLAS's recurrent product)
are here too; their CUDA twins are in kernels/cuda/_cells.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._elementwise import column_sums
from ._math import _sigmoid, _tanh
from ._threads import _one_thread

# ---------------------------------------------------------------------------- cell steps
# One time step of each cell, element-wise, after the caller has computed the recurrent
# product hp = h_prev @ w_hh^T (B, G) with BLAS. xp (B, G) is this step's input projection.
# The loops over batch rows are pranges, yet the layer loops below run them on one thread: Numba
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


# width of the saved activations, in units of H
ACTS_PER_HIDDEN = {"rnn": 0, "gru": 4, "lstm": 4}


def _accumulate_dw_hh(dgrad, h0, hs, dw_hh, db_hh):
    """dw_hh = sum_t dgrad_t^T h_{t-1} and db_hh = sum_t,b dgrad, with two large products."""
    T, B, G = dgrad.shape
    H = h0.shape[1]
    np.matmul(dgrad[0].T, h0, out=dw_hh)
    if T > 1:
        dw_hh += dgrad[1:].reshape((T - 1) * B, G).T @ hs[:-1].reshape((T - 1) * B, H)
    column_sums(dgrad.reshape(T * B, G), db_hh)  # in float64: T*B may be 20,000


def rnn_forward(xproj, w_hh, b_hh, h0, c0, hs, cs, acts):
    T, B, G = xproj.shape
    hp = np.empty((B, G), np.float32)
    h_prev = h0
    with _one_thread():
        for t in range(T):
            np.matmul(h_prev, w_hh.T, out=hp)
            rnn_step_forward(xproj[t], hp, b_hh, hs[t])
            h_prev = hs[t]


def rnn_backward(w_hh, h0, c0, hs, cs, acts, dhs, dcT, dxproj, dw_hh, db_hh, dh0, dc0):
    T, B, H = hs.shape
    dh_rec = np.zeros((B, H), np.float32)
    with _one_thread():
        for t in range(T - 1, -1, -1):
            rnn_step_backward(dhs[t], dh_rec, hs[t], dxproj[t])
            np.matmul(dxproj[t], w_hh, out=dh_rec)
    dh0[...] = dh_rec
    _accumulate_dw_hh(dxproj, h0, hs, dw_hh, db_hh)


def gru_forward(xproj, w_hh, b_hh, h0, c0, hs, cs, acts):
    T, B, G = xproj.shape
    hp = np.empty((B, G), np.float32)
    h_prev = h0
    with _one_thread():
        for t in range(T):
            np.matmul(h_prev, w_hh.T, out=hp)
            gru_step_forward(xproj[t], hp, b_hh, h_prev, hs[t], acts[t])
            h_prev = hs[t]


def gru_backward(w_hh, h0, c0, hs, cs, acts, dhs, dcT, dxproj, dw_hh, db_hh, dh0, dc0):
    T, B, H = hs.shape
    dhproj = np.empty_like(dxproj)  # the recurrent product's gradient (differs in n block)
    dh_rec = np.zeros((B, H), np.float32)
    dh_carry = np.zeros((B, H), np.float32)  # dh * z: the path through h' = ... + z h
    with _one_thread():
        for t in range(T - 1, -1, -1):
            h_prev = hs[t - 1] if t > 0 else h0
            gru_step_backward(dhs[t], dh_rec, dh_carry, h_prev, acts[t], dxproj[t], dhproj[t])
            np.matmul(dhproj[t], w_hh, out=dh_rec)
    np.add(dh_rec, dh_carry, out=dh0)
    _accumulate_dw_hh(dhproj, h0, hs, dw_hh, db_hh)


def lstm_forward(xproj, w_hh, b_hh, h0, c0, hs, cs, acts):
    T, B, G = xproj.shape
    hp = np.empty((B, G), np.float32)
    h_prev, c_prev = h0, c0
    with _one_thread():
        for t in range(T):
            np.matmul(h_prev, w_hh.T, out=hp)
            lstm_step_forward(xproj[t], hp, b_hh, c_prev, hs[t], cs[t], acts[t])
            h_prev, c_prev = hs[t], cs[t]


def lstm_backward(w_hh, h0, c0, hs, cs, acts, dhs, dcT, dxproj, dw_hh, db_hh, dh0, dc0):
    T, B, H = hs.shape
    dh_rec = np.zeros((B, H), np.float32)
    dc = np.zeros((B, H), np.float32) if dcT is None else np.array(dcT, np.float32)
    with _one_thread():
        for t in range(T - 1, -1, -1):
            c_prev = cs[t - 1] if t > 0 else c0
            lstm_step_backward(dhs[t], dh_rec, dc, c_prev, cs[t], acts[t], dxproj[t])
            np.matmul(dxproj[t], w_hh, out=dh_rec)
    dh0[...] = dh_rec
    dc0[...] = dc
    _accumulate_dw_hh(dxproj, h0, hs, dw_hh, db_hh)


CELL_FORWARD = {"rnn": rnn_forward, "gru": gru_forward, "lstm": lstm_forward}
CELL_BACKWARD = {"rnn": rnn_backward, "gru": gru_backward, "lstm": lstm_backward}
