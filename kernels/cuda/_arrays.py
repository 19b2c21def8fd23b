"""Array plumbing of the CUDA backend: allocation, copies between device arrays (strided
views included), bias rows, and the gathering of stream states for a StreamBatch.

Device arrays are numba's (``DeviceNDArray``, or the simulator's stand-in). Their ``.T``
is a transposing copy, not a view, so the model never asks for one: products take
``trans_a``/``trans_b`` flags instead (see ``_gemm``).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

# every kernel here is a grid-stride loop, launched as _elementwise launches its own
# (with its block size, which tests shrink)
from ._elementwise import _grid


def is_array(a) -> bool:
    """Whether a is a device array (numba's, or the simulator's)."""
    return hasattr(a, "copy_to_host")


def empty(shape, dtype=np.float32):
    return cuda.device_array(shape, dtype)


@cuda.jit
def _fill(x, value):
    start = cuda.grid(1)
    for i in range(start, x.shape[0], cuda.gridsize(1)):
        x[i] = value


def zeros(shape, dtype=np.float32):
    a = cuda.device_array(shape, dtype)
    if a.size:
        flat = a.reshape(-1)
        _fill[_grid(flat.shape[0], None, None)](flat, 0)
    return a


def to_device(a):
    """a on the device: device arrays pass through, host arrays are copied (C order)."""
    if is_array(a):
        return a
    return cuda.to_device(np.ascontiguousarray(a))


def to_device_aligned(a, copy: bool = False):
    """to_device: device allocations are already aligned (256 bytes). copy: a device
    array is copied too (a host array always is), for an array the caller keeps."""
    if copy and is_array(a):
        out = cuda.device_array(a.shape, a.dtype)
        out.copy_to_device(a)
        return out
    return to_device(a)


def to_host(a):
    """A host (numpy) copy of a device array; a host array passes through."""
    if is_array(a):
        return a.copy_to_host()
    return a


@cuda.jit
def _copy1(dst, src):
    start = cuda.grid(1)
    for i in range(start, dst.shape[0], cuda.gridsize(1)):
        dst[i] = src[i]


@cuda.jit
def _copy2(dst, src):
    n1 = dst.shape[1]
    start = cuda.grid(1)
    for i in range(start, dst.shape[0] * n1, cuda.gridsize(1)):
        dst[i // n1, i % n1] = src[i // n1, i % n1]


@cuda.jit
def _copy3(dst, src):
    n1, n2 = dst.shape[1], dst.shape[2]
    start = cuda.grid(1)
    for i in range(start, dst.shape[0] * n1 * n2, cuda.gridsize(1)):
        a = i // (n1 * n2)
        b = (i // n2) % n1
        c = i % n2
        dst[a, b, c] = src[a, b, c]


_COPY = {1: _copy1, 2: _copy2, 3: _copy3}


def copy(dst, src) -> None:
    """dst[...] = src, equal shapes; either may be a strided view; src may be on the host."""
    if dst is src or dst.size == 0:
        return
    src = to_device(src)
    if dst.is_c_contiguous() and src.is_c_contiguous():
        dst.copy_to_device(src)  # one device-to-device memcpy
        return
    _COPY[dst.ndim][_grid(dst.size, None, None)](dst, src)


def clone(a):
    out = cuda.device_array(a.shape, a.dtype)
    copy(out, a)
    return out


def stack(arrays):
    """A new (len(arrays), ...) device array of equally shaped arrays."""
    first = arrays[0]
    out = cuda.device_array((len(arrays), *first.shape), first.dtype)
    for i, a in enumerate(arrays):
        copy(out[i], a)
    return out


def gather_streams(states):
    """[(L, 1, H)] * N -> a new (L, N, H). One copy launch per stream: each stream's
    state is its own allocation (a StreamBatch lets streams join and leave freely)."""
    L, _, H = states[0].shape
    out = cuda.device_array((L, len(states), H), np.float32)
    for n, s in enumerate(states):
        copy(out[:, n : n + 1], s)
    return out


def split_streams(states):
    """(L, N, H) -> N new arrays (L, 1, H), stream by stream (one copy launch each)."""
    L, N, H = states.shape
    out = []
    for n in range(N):
        one = cuda.device_array((L, 1, H), np.float32)
        copy(one, states[:, n : n + 1])
        out.append(one)
    return out


def freeze(a):
    """Device arrays have no read-only flag: nothing to do (the model never writes its
    shared weights outside training updates)."""
    return a


def thaw(a):
    return a


@cuda.jit
def _add_bias(a, bias):
    G = a.shape[1]
    start = cuda.grid(1)
    for i in range(start, a.shape[0] * G, cuda.gridsize(1)):
        a[i // G, i % G] += bias[i % G]


def add_bias(a, bias) -> None:
    """a (N, G) += bias (G,), in place."""
    if a.size:
        _add_bias[_grid(a.size, None, None)](a, bias)
