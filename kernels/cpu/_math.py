"""Fast math for the CPU kernels, and the conventions every kernel here follows.

Kernels only compute: the public wrappers validate shapes and dtypes before calling them.
All arrays are float32 unless named otherwise; ids and targets are int64.

They compile on first use and are cached on disk (``cache=True``); the cache of every
kernel file is keyed on all of this folder's files together (``_cache.py``), so that a
helper changed in one file never leaves a stale compiled caller in another.

Threads: numpy's OpenBLAS keeps its worker threads spinning for a while after each
matrix product, so a Numba kernel that runs on several threads right after one competes
with them for the cores. Measured on 2 cores: the scoring pass of an LSTM 2x200 with
V=65 took 22.8 ms with Numba's parallel kernels and 15.6 ms with every Numba kernel on one
thread; training 56 ms against 35 ms. So the kernels of the batched passes run on the
calling thread, BLAS alone uses the cores, and many model calls in many threads run side
by side. The streaming kernels, which use no BLAS, are parallel loops (_stream.py).

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
from numba import njit
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
