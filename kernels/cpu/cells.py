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
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import numba
import numpy as np

from . import _jit

# Numba's fallback threading layer, "workqueue" (used where neither OpenMP nor TBB can be
# loaded), aborts the process when two threads launch parallel kernels at once; on it,
# every parallel launch (the step loops here, the streaming kernel) takes turns. OpenMP
# and TBB need no lock.
_WORKQUEUE_LOCK = threading.Lock()


_NO_LOCK = nullcontext()
_layer_needs_lock: bool | None = None  # known once Numba has chosen its threading layer


def _needs_lock() -> bool:
    global _layer_needs_lock
    if _layer_needs_lock is None:
        try:
            _layer_needs_lock = numba.threading_layer() == "workqueue"
        except ValueError:  # no parallel kernel has run yet: the layer is not chosen
            return True
    return _layer_needs_lock


def workqueue_lock():
    """The lock parallel launches share on the workqueue layer; elsewhere a null context."""
    return _WORKQUEUE_LOCK if _needs_lock() else _NO_LOCK


@contextmanager
def _one_thread():
    """Run the step kernels on the calling thread alone.

    They are prange loops only so that Numba compiles them without aliasing (see
    _jit.py); run on two threads, each step would end in a barrier, and with more busy
    threads than cores a barrier waits for a descheduled thread: two processes running
    these kernels side by side on 2 cores took minutes for what takes a second alone.
    numba.set_num_threads is per calling thread, so other threads are not affected.
    """
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with workqueue_lock():
            yield
    finally:
        numba.set_num_threads(n)


# width of the saved activations, in units of H
ACTS_PER_HIDDEN = {"rnn": 0, "gru": 4, "lstm": 4}


def _accumulate_dw_hh(dgrad, h0, hs, dw_hh, db_hh):
    """dw_hh = sum_t dgrad_t^T h_{t-1} and db_hh = sum_t,b dgrad, with two large products."""
    T, B, G = dgrad.shape
    H = h0.shape[1]
    np.matmul(dgrad[0].T, h0, out=dw_hh)
    if T > 1:
        dw_hh += dgrad[1:].reshape((T - 1) * B, G).T @ hs[:-1].reshape((T - 1) * B, H)
    _jit.column_sums(dgrad.reshape(T * B, G), db_hh)  # in float64: T*B may be 20,000


def rnn_forward(xproj, w_hh, b_hh, h0, c0, hs, cs, acts):
    T, B, G = xproj.shape
    hp = np.empty((B, G), np.float32)
    h_prev = h0
    with _one_thread():
        for t in range(T):
            np.matmul(h_prev, w_hh.T, out=hp)
            _jit.rnn_step_forward(xproj[t], hp, b_hh, hs[t])
            h_prev = hs[t]


def rnn_backward(w_hh, h0, c0, hs, cs, acts, dhs, dcT, dxproj, dw_hh, db_hh, dh0, dc0):
    T, B, H = hs.shape
    dh_rec = np.zeros((B, H), np.float32)
    with _one_thread():
        for t in range(T - 1, -1, -1):
            _jit.rnn_step_backward(dhs[t], dh_rec, hs[t], dxproj[t])
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
            _jit.gru_step_forward(xproj[t], hp, b_hh, h_prev, hs[t], acts[t])
            h_prev = hs[t]


def gru_backward(w_hh, h0, c0, hs, cs, acts, dhs, dcT, dxproj, dw_hh, db_hh, dh0, dc0):
    T, B, H = hs.shape
    dhproj = np.empty_like(dxproj)  # the recurrent product's gradient (differs in n block)
    dh_rec = np.zeros((B, H), np.float32)
    dh_carry = np.zeros((B, H), np.float32)  # dh * z: the path through h' = ... + z h
    with _one_thread():
        for t in range(T - 1, -1, -1):
            h_prev = hs[t - 1] if t > 0 else h0
            _jit.gru_step_backward(dhs[t], dh_rec, dh_carry, h_prev, acts[t], dxproj[t], dhproj[t])
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
            _jit.lstm_step_forward(xproj[t], hp, b_hh, c_prev, hs[t], cs[t], acts[t])
            h_prev, c_prev = hs[t], cs[t]


def lstm_backward(w_hh, h0, c0, hs, cs, acts, dhs, dcT, dxproj, dw_hh, db_hh, dh0, dc0):
    T, B, H = hs.shape
    dh_rec = np.zeros((B, H), np.float32)
    dc = np.zeros((B, H), np.float32) if dcT is None else np.array(dcT, np.float32)
    with _one_thread():
        for t in range(T - 1, -1, -1):
            c_prev = cs[t - 1] if t > 0 else c0
            _jit.lstm_step_backward(dhs[t], dh_rec, dc, c_prev, cs[t], acts[t], dxproj[t])
            np.matmul(dxproj[t], w_hh, out=dh_rec)
    dh0[...] = dh_rec
    dc0[...] = dc
    _accumulate_dw_hh(dxproj, h0, hs, dw_hh, db_hh)


CELL_FORWARD = {"rnn": rnn_forward, "gru": gru_forward, "lstm": lstm_forward}
CELL_BACKWARD = {"rnn": rnn_backward, "gru": gru_backward, "lstm": lstm_backward}
