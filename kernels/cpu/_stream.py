"""The streaming kernels of the CPU backend: T steps of N streams in one call, every
layer and then the decoder and log-softmax (stream_step), or the layers alone
(stream_layers). The CUDA twin is kernels/cuda/_stream.py. Conventions: _math.py."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._elementwise import _max8, _sum_exp
from ._math import _sigmoid, _tanh

# ---------------------------------------------------------------------------- streaming
# T time steps for N independent streams (a token each per step), the whole model in one
# call: layer 0's input projection, every layer, then, after the last step only, the
# decoder and the log-softmax, with no Python in between. Matrix-vector products are
# hand-written dots (a row of W against each stream's vector: every weight is read once
# per step whatever N is); the parallel loops run over weight rows. Shapes: ids (T, N)
# int64; table (V, G) layer 0's input projection
# with b_ih0 (or (0, G) to compute it from emb (V, E) and w_ih0 (G, E)); w_ih (L - 1, G, H)
# for layers 1.. ; b_ih, b_hh (L, G); w_hh (L, G, H); w_dec (V, H), b_dec (V,). Each weight
# matrix is float32, or int8 with a float32 scale per row beside it (s_emb (V,), s_ih0 (G,),
# s_ih (L - 1, G), s_hh (L, G), s_dec (V,)): an int8 model (rnnlm_engine/quantized.py),
# whose weight w[r, k] stands for q[r, k] * s[r]. A float32 matrix's scales are not read
# (pass them with a last dimension of 0). h_in,
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


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _dot_int8(w, x):
    acc = np.float32(0.0)
    for k in range(w.shape[0]):
        acc += np.float32(w[k]) * x[k]
    return acc


# int8 rows are multiplied INT8_ROWS at a time: each element of x, loaded once, serves
# eight rows, and the eight sums are eight independent chains. Widening an int8 to float
# costs two instructions a vector (vpmovsxbd, vcvtdq2ps) besides the multiply-add, so a
# row at a time is bound by those, not by the bytes: one thread, 10000 x 200, 151 us a
# row at a time, 90 us eight at a time, against 151 us for the same float32 matrix
# (bench/int8_probe.py measures the variants).
INT8_ROWS = 8


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _products_int8_block(w, s, x, bias, out, g):
    """out[:, g:g + INT8_ROWS] of _stream_products for int8 w (fewer rows at the end)."""
    G, K = w.shape
    if g + INT8_ROWS > G:
        for r in range(g, G):
            for n in range(x.shape[0]):
                out[n, r] = bias[r] + s[r] * _dot_int8(w[r], x[n])
        return
    r0, r1, r2, r3 = w[g], w[g + 1], w[g + 2], w[g + 3]
    r4, r5, r6, r7 = w[g + 4], w[g + 5], w[g + 6], w[g + 7]
    for n in range(x.shape[0]):
        xn = x[n]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
        for k in range(K):
            xk = xn[k]
            a0 += np.float32(r0[k]) * xk
            a1 += np.float32(r1[k]) * xk
            a2 += np.float32(r2[k]) * xk
            a3 += np.float32(r3[k]) * xk
            a4 += np.float32(r4[k]) * xk
            a5 += np.float32(r5[k]) * xk
            a6 += np.float32(r6[k]) * xk
            a7 += np.float32(r7[k]) * xk
        out[n, g] = bias[g] + s[g] * a0
        out[n, g + 1] = bias[g + 1] + s[g + 1] * a1
        out[n, g + 2] = bias[g + 2] + s[g + 2] * a2
        out[n, g + 3] = bias[g + 3] + s[g + 3] * a3
        out[n, g + 4] = bias[g + 4] + s[g + 4] * a4
        out[n, g + 5] = bias[g + 5] + s[g + 5] * a5
        out[n, g + 6] = bias[g + 6] + s[g + 6] * a6
        out[n, g + 7] = bias[g + 7] + s[g + 7] * a7


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def _stream_products(w, s, x, bias, out):
    """out (N, G) = x (N, K) @ w (G, K)^T + bias (G,), in parallel over the rows of w;
    for int8 w, each row's sum times its scale s[g]. (w.itemsize is a constant of each
    compiled version: LLVM drops the other branch.)"""
    G = w.shape[0]
    N = x.shape[0]
    if w.itemsize == 1:
        for b in prange((G + INT8_ROWS - 1) // INT8_ROWS):
            _products_int8_block(w, s, x, bias, out, b * INT8_ROWS)
    else:
        for g in prange(G):
            row = w[g]
            for n in range(N):
                out[n, g] = bias[g] + _dot(row, x[n])


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def _stream_products_serial(w, s, x, bias, out):
    """_stream_products on the calling thread, for products too small to pay for a fork
    and join of the threads (a character model's decoder, 65 x 256: 1.6 us against
    2.6 us). Each output is computed as there, so the results are the same to the bit."""
    if w.itemsize == 1:
        for g in range(0, w.shape[0], INT8_ROWS):
            _products_int8_block(w, s, x, bias, out, g)
    else:
        for g in range(w.shape[0]):
            row = w[g]
            for n in range(x.shape[0]):
                out[n, g] = bias[g] + _dot(row, x[n])


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy", inline="always")
def _embedding_row(emb, s_emb, i, out):
    """out (E,) = row i of emb, dequantized (q * s, one rounding: quantize.dequantize_rows)
    for int8."""
    if emb.itemsize == 1:
        s = s_emb[i]
        for j in range(out.shape[0]):
            out[j] = np.float32(emb[i, j]) * s
    else:
        out[:] = emb[i]


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
def _log_softmax_row(logits, out):
    """out (V,) = log_softmax(logits (V,))."""
    V = logits.shape[0]
    m = _max8(logits, None, logits[0])
    s = _sum_exp(logits, None, m, False)
    lse = np.float64(m) + np.log(s)
    for v in range(V):
        out[v] = np.float32(np.float64(logits[v]) - lse)


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def _stream_log_softmax(logits, out):
    for n in prange(logits.shape[0]):
        _log_softmax_row(logits[n], out[n])


@njit(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
def _stream_products2(w1, s1, x1, b1, out1, w2, s2, x2, b2, out2):
    """Both products of a layer (input and recurrent) in one parallel loop: one fork and
    join of the threads instead of two."""
    G = w1.shape[0]
    N = x1.shape[0]
    if w1.itemsize == 1:
        for b in prange((G + INT8_ROWS - 1) // INT8_ROWS):
            _products_int8_block(w1, s1, x1, b1, out1, b * INT8_ROWS)
            _products_int8_block(w2, s2, x2, b2, out2, b * INT8_ROWS)
    else:
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
    cell, residual, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh, s_hh, b_hh,
    h_in, c_in, h_out, c_out, gx, gh, xe, res,
):  # fmt: skip
    """Every layer for one step of N streams: ids (N,), state in h_in, c_in, out h_out,
    c_out; xe (N, E) scratch for the embedding rows (no table, or a residual layer 0);
    res (L, N, H) the outputs of the residual layers (h plus the layer's input). Returns
    the top layer's output (N, H)."""
    L = w_hh.shape[0]
    N = ids.shape[0]
    if table.shape[0] == 0 or residual[0]:
        for n in range(N):
            _embedding_row(emb, s_emb, ids[n], xe[n])
    if table.shape[0] > 0:
        for n in range(N):
            gx[n, :] = table[ids[n]]
    x = xe  # the layer's input; layer 0's is used only when residual (E == H then)
    for layer in range(L):
        if layer > 0:
            _stream_products2(
                w_ih[layer - 1], s_ih[layer - 1], x, b_ih[layer], gx,
                w_hh[layer], s_hh[layer], h_in[layer], b_hh[layer], gh,
            )  # fmt: skip
        elif table.shape[0] == 0:  # layer 0's input product too, in the same parallel loop
            _stream_products2(
                w_ih0, s_ih0, xe, b_ih[0], gx, w_hh[0], s_hh[0], h_in[0], b_hh[0], gh
            )  # fmt: skip
        else:
            _stream_products(w_hh[layer], s_hh[layer], h_in[layer], b_hh[layer], gh)
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
def _stream_steps(
    cell, residual, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh, s_hh, b_hh,
    h_in, c_in, h_out, c_out, gx, gh,
):  # fmt: skip
    """The layers of T steps of N streams (see stream_step); returns the top layer's
    output (N, H) after the last step. The state and the embedding rows pass through the
    kernel's own copies, which Numba allocates 32-byte aligned, so that the products'
    vector loads of them do not straddle cache lines (the caller's arrays are numpy's,
    16-byte aligned)."""
    T, N = ids.shape
    ha, ca = h_in.copy(), c_in.copy()
    hb, cb = np.empty_like(ha), np.empty_like(ca)
    xe = np.empty((N, emb.shape[1]), np.float32)
    res = np.empty(ha.shape, np.float32)
    top = ha[0]
    for t in range(T):
        top = _stream_layers(
            cell, residual, ids[t], table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh,
            s_hh, b_hh, ha, ca, hb, cb, gx, gh, xe, res,
        )  # fmt: skip
        ha, hb = hb, ha
        ca, cb = cb, ca
    h_out[...] = ha
    c_out[...] = ca
    return top


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def stream_step(
    cell, residual, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh, s_hh, b_hh,
    w_dec, s_dec, b_dec, h_in, c_in, h_out, c_out, gx, gh, logits, out,
):  # fmt: skip
    """T steps of N streams (see rnnlm_engine/streaming.py); gx, gh, logits are scratch.
    residual (L,) uint8: 1 where a layer's output adds its input. c_in, c_out: lstm only
    (for the other cells, scratch of that shape). The s_* are the int8 matrices' scales
    (see the top of this section)."""
    N = ids.shape[1]
    top = _stream_steps(
        cell, residual, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh, s_hh,
        b_hh, h_in, c_in, h_out, c_out, gx, gh,
    )  # fmt: skip
    if w_dec.shape[0] * w_dec.shape[1] * N < _SERIAL_PRODUCT_BELOW:
        _stream_products_serial(w_dec, s_dec, top, b_dec, logits)
    else:
        _stream_products(w_dec, s_dec, top, b_dec, logits)
    if N < _SERIAL_BELOW:
        _log_softmax_serial(logits, out)
    else:
        _stream_log_softmax(logits, out)


@njit(fastmath=True, nogil=True, cache=True, error_model="numpy")
def stream_layers(
    cell, residual, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh, s_hh, b_hh,
    h_in, c_in, h_out, c_out, gx, gh, top,
):  # fmt: skip
    """stream_step without the output layer: top (N, H) gets the top layer's output after
    the last step (for an output layer of its own: the adaptive softmax)."""
    top[...] = _stream_steps(
        cell, residual, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh, s_hh,
        b_hh, h_in, c_in, h_out, c_out, gx, gh,
    )  # fmt: skip
