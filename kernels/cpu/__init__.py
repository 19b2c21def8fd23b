"""The CPU backend: Numba kernels around numpy's BLAS, float32 throughout.

Every function writes into preallocated arrays whose shapes the caller has checked; none
validates its input (``rnnlm_engine.model`` does, before any kernel runs).
"""

import numpy as np

from . import _cache

_cache.install()  # before any kernel module: their cache is keyed on the whole folder

from . import _adaptive, _elementwise, _stream  # noqa: E402
from ._cells import (  # noqa: E402
    ACTS_PER_HIDDEN,
    CELL_BACKWARD,
    CELL_FORWARD,
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
)
from ._elementwise import (  # noqa: E402
    adam_update,
    embedding_backward,
    embedding_forward,
    log_softmax,
    prediction_stats,
    row_max,
    scale_inplace,
    sgd_update,
    sgd_update_rows,
    sum_of_squares,
    xent_forward,
    xent_forward_backward,
)
from ._stream import STREAM_CELLS  # noqa: E402
from ._threads import workqueue_lock  # noqa: E402

NAME = "cpu"

# Arrays of this backend are numpy arrays; matrix products go to numpy's BLAS.
empty = np.empty
zeros = np.zeros
multiply = np.multiply
add = np.add  # add(a, b, out=): out may be a (element-wise, so in place is safe)


def matmul(a, b, out=None, trans_a=False, trans_b=False):
    """op(a) @ op(b) into out (or a new array), op(x) = x.T where the flag is set.

    The flags rather than a.T from the caller: a CUDA device array's .T is a copy."""
    return np.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)


# The parameters (to_device_aligned) and the streaming weights (stack) start on a cache
# line: numpy's allocations are only 16-byte aligned, and a matrix-vector product
# whose 64-byte vector loads straddle cache lines runs slower (LSTM 2 x 200, V=10000, one
# streaming step: 96 us with the weights 16 bytes past a cache line, 74-78 us aligned;
# the 2 x 256 character model: 35-37 us against 27-29 us).
_ALIGN = 64


def to_device(array):
    """A float32 (or int64) C-contiguous numpy array: the CPU's "device" is host memory."""
    return np.ascontiguousarray(array)


def to_device_aligned(array, copy: bool = False):
    """to_device for arrays the kernels read on every step (the parameters): a float32
    (or int8: an int8 model's weights) array comes back 64-byte aligned, a copy where it
    was not (copy: a copy always, for an array the caller keeps); other dtypes become
    float32."""
    dtype = np.int8 if np.asarray(array).dtype == np.int8 else np.float32
    a = np.ascontiguousarray(array, dtype=dtype)
    if a.ctypes.data % _ALIGN == 0 and not (copy and np.may_share_memory(a, array)):
        return a
    raw = np.empty(a.size + _ALIGN // a.itemsize, dtype)
    start = (-raw.ctypes.data % _ALIGN) // a.itemsize
    out = raw[start : start + a.size].reshape(a.shape)
    out[...] = a
    return out


def to_host(array):
    return array


def adaptive_log_probs(*args):
    """_adaptive.adaptive_log_probs (see there), serialised as stream_step is."""
    with workqueue_lock():
        _adaptive.adaptive_log_probs(*args)


def stream_layers(*args):
    """_stream.stream_layers (see there), serialised as stream_step is."""
    with workqueue_lock():
        _stream.stream_layers(*args)


def stream_step(*args):
    """_stream.stream_step (see there), serialised with every other parallel launch on
    Numba's workqueue layer, which aborts the process when two threads launch at once."""
    with workqueue_lock():
        _stream.stream_step(*args)


def is_array(a) -> bool:
    """Whether a is an array of this backend (a value it may use without conversion)."""
    return isinstance(a, np.ndarray)


def clone(a):
    """A new array with a's values."""
    return a.copy()


def copy(dst, src):
    """dst[...] = src (same shapes; dst may be a strided view)."""
    dst[...] = src


def add_bias(a, bias):
    """a (N, G) += bias (G,), in place."""
    a += bias


def stack(arrays):
    """A new (len(arrays), ...) float32 (or int8) array of equally shaped arrays, aligned
    as to_device_aligned's."""
    return to_device_aligned(np.stack(arrays))


def gather_streams(states):
    """[(L, 1, H)] * N -> a new (L, N, H): the states of N streams side by side."""
    return np.concatenate(states, axis=1)


def split_streams(states):
    """(L, N, H) -> N arrays (L, 1, H), stream by stream: views of one (N, L, H) copy (one
    copy for all the streams, instead of one per stream)."""
    L, N, H = states.shape
    by_stream = np.ascontiguousarray(states.transpose(1, 0, 2)).reshape(N, L, 1, H)
    return list(by_stream)


def max_abs(x) -> float:
    """max |x| of a flat array (0 when empty)."""
    return float(np.max(np.abs(x), initial=0.0))


def freeze(a):
    """Mark a read-only where the backend can (numpy: writeable False); returns a."""
    a.flags.writeable = False
    return a


def thaw(a):
    a.flags.writeable = True
    return a


def column_sums(a):
    """(N, G) -> a new (G,): the sum over rows (a bias gradient), in float64 (_elementwise.py)."""
    out = np.empty(a.shape[1], np.float32)
    _elementwise.column_sums(a, out)
    return out


# The largest spread of the bias for which rowmax(logits) + max(bias) may serve as the
# softmax shift: it then exceeds the true max(row + bias) by at most the spread.
SHIFT_SLACK = 40.0


def row_shift(logits, bias, out):
    """out (N,): a softmax shift for each row of logits + bias (see _elementwise.py, softmax).

    numpy's SIMD row max of the logits alone (0.85 ms for 700 x 10000) plus max(bias) is
    an upper bound within max(bias) - min(bias) of the true max; Numba's exact max of
    logits + bias takes 2.0 ms (LLVM does not vectorize float max reductions from Numba),
    so the exact one runs only when the bias spread is too wide for the bound.
    """
    b_max = float(bias.max())
    if b_max - float(bias.min()) <= SHIFT_SLACK:
        np.max(logits, axis=1, out=out)
        out += np.float32(b_max)
    else:
        row_max(logits, bias, out)


# decode_xent's block sizes: at most _XENT_ROWS positions at a time, and about
# _XENT_BLOCK_FLOATS logits per vocabulary block (4 MB: in L3 when the kernel reads it).
_XENT_ROWS = 2048
_XENT_BLOCK_FLOATS = 1 << 20
# Below this many positions the per-position loops are too short to vectorize well, and
# the row-major path (decoder product, row_shift, xent_forward) is used instead.
_XENT_MIN_ROWS = 64


def decode_xent(
    top,
    w_dec,
    bias,
    targets,
    nll,
    work,
    *,
    max_rows=_XENT_ROWS,
    block_floats=_XENT_BLOCK_FLOATS,
    min_rows=_XENT_MIN_ROWS,
):
    """nll (N,) = -log softmax(top @ w_dec.T + bias)[n, targets[n]], top (N, H).

    The scoring pass's decoder: it never holds more than a block of the (N, V) logits.
    work(name, shape) returns a float32 scratch array (the model's per-thread workspace).
    The keywords set the block sizes (tests shrink them to reach every path).
    Each block of vocabulary rows is one BLAS product, W[v0:v1] @ top^T (which packs only
    that block of W), consumed by xent_block while it is still in cache. Measured for
    N=700, V=10000, H=200: 18.2 ms against 20.2 ms for the whole (N, V) product followed
    by row_shift and xent_forward, which read 28 MB of logits back from memory twice.
    """
    N, H = top.shape
    V = w_dec.shape[0]
    if N < min_rows:
        logits = work("logits", (N, V))
        np.matmul(top, w_dec.T, out=logits)
        shift = work("shift", (N,))
        row_shift(logits, bias, shift)
        xent_forward(logits, bias, targets, shift, nll)
        return
    rows = min(N, max_rows)
    vb = min(V, max(1, block_floats // rows))
    # flat buffers, so that the views of a shorter last row block stay contiguous
    top_t = work("xent_top_t", (H * rows,))
    buf = work("xent_logits_t", (vb * rows,))
    state = work("xent_state", (4, rows))  # m, target logit, block max, partial sum
    sums = np.empty((2, rows))  # float64: s, s before the block (see _elementwise.xent_block)
    for r0 in range(0, N, rows):
        r1 = min(N, r0 + rows)
        n = r1 - r0
        tt = top_t[: H * n].reshape(H, n)
        tt[...] = top[r0:r1].T
        m, tl, bm, part = (a[:n] for a in state)
        s, sb = (a[:n] for a in sums)
        for v0 in range(0, V, vb):
            v1 = min(V, v0 + vb)
            block = buf[: (v1 - v0) * n].reshape(v1 - v0, n)
            np.matmul(w_dec[v0:v1], tt, out=block)
            _elementwise.xent_block(block, bias, v0, targets[r0:r1], m, s, tl, bm, sb, part)
        _elementwise.xent_finish(m, s, tl, nll[r0:r1])


def forward_layout(w):
    """A layer matrix w (G, H) in the memory order the forward products run fastest with:
    Fortran order, so that x @ w.T reads a C-contiguous (H, G) matrix, which BLAS does not
    repack (measured for B=20, H=200, G=800: 52-68 us against 84-99 us through the
    transposed C array). Always a copy: training updates the parameters, then this."""
    return np.array(w, order="F")


__all__ = [
    "ACTS_PER_HIDDEN",
    "CELL_BACKWARD",
    "CELL_FORWARD",
    "NAME",
    "adam_update",
    "adaptive_log_probs",
    "add_bias",
    "clone",
    "copy",
    "freeze",
    "gather_streams",
    "is_array",
    "max_abs",
    "stack",
    "split_streams",
    "thaw",
    "embedding_backward",
    "embedding_forward",
    "column_sums",
    "decode_xent",
    "empty",
    "forward_layout",
    "gru_backward",
    "gru_forward",
    "log_softmax",
    "prediction_stats",
    "lstm_backward",
    "lstm_forward",
    "matmul",
    "multiply",
    "add",
    "rnn_backward",
    "rnn_forward",
    "row_max",
    "row_shift",
    "scale_inplace",
    "sgd_update",
    "sgd_update_rows",
    "STREAM_CELLS",
    "stream_layers",
    "stream_step",
    "sum_of_squares",
    "to_device",
    "to_device_aligned",
    "to_host",
    "xent_forward",
    "xent_forward_backward",
    "zeros",
]
