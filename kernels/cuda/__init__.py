"""The CUDA backend: numba.cuda kernels, float32 throughout, every array in GPU memory.

The same names and contracts as ``kernels/cpu`` (see ``rnnlm_engine.backend``), so the
model runs on either without change. Arrays are numba device arrays; the model keeps its
parameters, the optimizer its moments and streams their states on the device, and only
what a caller asks for (log-probabilities, a loss, a norm) is copied back.

Importing this module needs no GPU and compiles nothing: every kernel compiles on its
first launch. ``unavailable_reason()`` says why the backend cannot run here, if it cannot.
Under ``NUMBA_ENABLE_CUDASIM=1`` numba's simulator runs the kernels on the CPU (slowly:
every GPU thread is a Python thread); the tests use it on small shapes.
"""

from __future__ import annotations

import importlib
import warnings
from contextlib import contextmanager

import numpy as np
from numba import config, cuda
from numba.core.errors import NumbaPerformanceWarning

from . import _cells, _elementwise, _gemm, _stream
from ._adaptive import adaptive_log_probs
from ._arrays import (
    add_bias,
    clone,
    copy,
    empty,
    freeze,
    gather_streams,
    is_array,
    split_streams,
    stack,
    thaw,
    to_device,
    to_device_aligned,
    to_host,
    zeros,
)
from ._cells import (
    ACTS_PER_HIDDEN,
    CELL_BACKWARD,
    CELL_FORWARD,
    forward_layout,
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
)
from ._elementwise import (
    adam_update,
    add,
    embedding_backward,
    embedding_forward,
    log_softmax,
    max_abs,
    multiply,
    prediction_stats,
    row_max,
    row_shift,
    sample,
    scale_inplace,
    sgd_update,
    sgd_update_rows,
    sum_of_squares,
    xent_forward,
    xent_forward_backward,
)
from ._gemm import column_sums as _column_sums
from ._gemm import gemm  # matmul and decode_xent
from ._stream import STREAM_CELLS, stream_layers, stream_step

NAME = "cuda"
_SIMULATOR = bool(config.ENABLE_CUDASIM)  # numba's CUDA simulator: kernels run on the CPU

# Small models give small grids (a 20x800 product is 26 blocks), and numba warns on every
# such launch; the grids are sized on purpose, so that warning would only be noise. The
# pattern must match from the message's start, and numba-cuda 0.30 starts it with a
# terminal colour code ("\x1b[1mGrid size 6 will likely..."), hence the leading ".*".
UNDER_UTILIZATION = r".*Grid size .* under-utilization"
warnings.filterwarnings("ignore", message=UNDER_UTILIZATION, category=NumbaPerformanceWarning)


def _nvvm_available() -> bool:
    """Whether numba finds libNVVM, which compiles every kernel on its first launch."""
    from numba.cuda.cudadrv import nvvm

    return nvvm.is_available()


def _numpy_mismatch() -> str | None:
    """Why this numba.cuda cannot compile with this numpy, if it cannot.

    numba-cuda 0.30.4 registers an implementation of np.row_stack, which numpy 2.5
    removed. With such a pair, the module that does so fails on import, at the first
    kernel compilation, deep inside numba: "module 'numpy' has no attribute 'row_stack'".
    The backend says so when it is chosen instead.
    """
    if hasattr(np, "row_stack"):
        return None
    try:
        importlib.import_module("numba.cuda.np.arrayobj")
    except ImportError:  # another layout of numba.cuda: nothing known to check
        return None
    except Exception as e:  # the module cannot load: no kernel could compile
        if "row_stack" not in str(e):
            return f"numba.cuda's numpy support fails to load: {type(e).__name__}: {e}"
        try:
            from importlib.metadata import version

            numba_cuda = f"numba-cuda {version('numba-cuda')}"
        except Exception:  # numba's own CUDA target, or no metadata
            numba_cuda = "this numba.cuda"
        return (
            f"{numba_cuda} does not work with numpy {np.__version__}: it uses np.row_stack, "
            "which numpy 2.5 removed; install numpy<2.5, or a numba-cuda release that "
            "supports numpy 2.5"
        )
    return None


def unavailable_reason() -> str | None:
    """None when kernels can run here (a GPU and NVVM, or the simulator); else why not."""
    mismatch = _numpy_mismatch()
    if mismatch is not None:
        return mismatch
    try:
        if cuda.is_available():
            # the driver alone runs no kernel: without NVVM the first launch would fail
            if _SIMULATOR or _nvvm_available():
                return None
            return "NvvmSupportError: numba.cuda finds a GPU but no libNVVM to compile kernels with"
        cuda.current_context()  # raises with the driver's own reason
    except Exception as e:  # CudaSupportError, a missing libcuda, ...
        text = " ".join(str(e).split()).rstrip(":. ")  # the driver's message is multi-line
        return f"{type(e).__name__}: {text}"
    return "numba.cuda finds no usable NVIDIA GPU"


@contextmanager
def small_launches(threads: int = 16):
    """Every kernel of the backend with few threads per block and small tiles, for tests
    in the simulator (which runs every GPU thread as a Python thread); restored on exit.
    threads: a power of two; the streaming kernel takes its minimum, one warp."""
    old_block = _elementwise.BLOCK  # also the block size of _arrays' kernels
    old_cells = _cells.set_threads(threads)
    old_tiles = _gemm.set_tiles(_gemm.Tile(2, 2, 2, 2, 4), _gemm.Tile(2, 2, 1, 1, 4))
    old_column_sum = _gemm.set_column_sum_block(4, 4)
    old_stream = _stream.DEFAULT_THREADS
    _elementwise.set_block_size(threads)
    _stream.DEFAULT_THREADS = 32
    try:
        yield
    finally:
        _elementwise.set_block_size(old_block)
        _cells.set_threads(old_cells)
        _gemm.set_tiles(*old_tiles)
        _gemm.set_column_sum_block(*old_column_sum)
        _stream.DEFAULT_THREADS = old_stream


def matmul(a, b, out=None, trans_a=False, trans_b=False):
    """op(a) @ op(b) into out (or a new array); op(x) = x^T where the flag is set."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    if out is None:
        out = empty((m, n))
    gemm(a, b, out, trans_a=trans_a, trans_b=trans_b)
    return out


def column_sums(a):
    """(N, G) -> a new (G,): the sum over rows (a bias gradient)."""
    out = empty((a.shape[1],))
    _column_sums(a, out)
    return out


# decode_xent's row blocks: at most this many logits rows at a time (bounded memory)
_XENT_ROWS = 4096


def decode_xent(top, w_dec, bias, targets, nll, work, *, max_rows=_XENT_ROWS):
    """nll (N,) = -log softmax(top @ w_dec.T + bias)[n, targets[n]], top (N, H): the
    scoring pass's decoder, a block of rows at a time (one product, then one block per
    row for the cross-entropy)."""
    N = top.shape[0]
    V = w_dec.shape[0]
    rows = min(N, max_rows)
    buf = work("xent_logits", (rows, V))
    for r0 in range(0, N, rows):
        r1 = min(N, r0 + rows)
        logits = buf[: r1 - r0]
        gemm(top[r0:r1], w_dec, logits, trans_b=True)
        xent_forward(logits, bias, targets[r0:r1], None, nll[r0:r1])


__all__ = [
    "ACTS_PER_HIDDEN",
    "CELL_BACKWARD",
    "CELL_FORWARD",
    "NAME",
    "STREAM_CELLS",
    "adam_update",
    "adaptive_log_probs",
    "add_bias",
    "clone",
    "column_sums",
    "copy",
    "decode_xent",
    "embedding_backward",
    "embedding_forward",
    "empty",
    "forward_layout",
    "freeze",
    "gather_streams",
    "gru_backward",
    "gru_forward",
    "is_array",
    "log_softmax",
    "prediction_stats",
    "lstm_backward",
    "lstm_forward",
    "matmul",
    "max_abs",
    "multiply",
    "add",
    "rnn_backward",
    "rnn_forward",
    "row_max",
    "row_shift",
    "sample",
    "small_launches",
    "scale_inplace",
    "sgd_update",
    "sgd_update_rows",
    "stack",
    "split_streams",
    "stream_layers",
    "stream_step",
    "sum_of_squares",
    "thaw",
    "to_device",
    "to_device_aligned",
    "to_host",
    "unavailable_reason",
    "xent_forward",
    "xent_forward_backward",
    "zeros",
]
