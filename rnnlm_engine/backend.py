"""The one seam between the model code and the kernels.

A backend is a module (``rnnlm_engine.kernels.<name>``) that the model reaches only
through ``get_backend``. It provides, with the contracts documented in ``kernels/cpu``:

- arrays: ``NAME``, ``empty``, ``zeros``, ``to_device``, ``to_device_aligned`` (for the
  parameters), ``to_host``, ``matmul(a, b, out=)``, ``multiply(a, b, out=)``,
  ``add(a, b, out=)`` (out may be a),
  ``column_sums``, ``forward_layout`` (a layer matrix as the forward products want it);
- embedding: ``embedding_forward``, ``embedding_backward``;
- cells: ``CELL_FORWARD`` / ``CELL_BACKWARD`` (name -> function, also exported as
  ``lstm_forward`` etc.) and ``ACTS_PER_HIDDEN``;
- softmax: ``row_shift``, ``row_max``, ``log_softmax``, ``xent_forward``,
  ``xent_forward_backward``; ``decode_xent`` (the scoring pass's decoder product and
  cross-entropy together, in blocks of bounded memory);
- optimizer: ``sum_of_squares``, ``scale_inplace``, ``sgd_update``,
  ``sgd_update_rows``, ``adam_update``.

and the array plumbing the model needs without touching the arrays itself (a CUDA
device array supports none of numpy's operators): ``is_array``, ``clone``, ``copy``,
``add_bias``, ``stack``, ``gather_streams``, ``split_streams``, ``freeze``, ``thaw``,
``max_abs``; ``stream_step`` and ``STREAM_CELLS`` for streaming.

The CUDA backend (``kernels/cuda``) has the same names, so the model runs on either.
Every array argument of a kernel is distinct from every other (no aliasing).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from .errors import BackendError

BACKENDS = ("cpu", "cuda")
CHOICES = (*BACKENDS, "auto")
ENV_VAR = "RNNLM_BACKEND"


def get_backend(name: str | None = None) -> ModuleType:
    """The backend module for ``name``: "cpu", "cuda", or "auto" (cuda where a GPU is
    usable, else cpu); None reads $RNNLM_BACKEND, default "cpu".

    Asking for cuda where it cannot run raises BackendError saying why. The cpu backend
    never touches CUDA, and importing rnnlm_engine never needs it.
    """
    if name is None:
        name = os.environ.get(ENV_VAR, "cpu")
    if name not in CHOICES:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(CHOICES)}")
    if name == "cpu":
        return importlib.import_module("rnnlm_engine.kernels.cpu")
    try:
        cuda = importlib.import_module("rnnlm_engine.kernels.cuda")
    except ImportError as e:
        reason = f"numba's CUDA target cannot be imported ({e})"
    else:
        reason = cuda.unavailable_reason()
        if reason is None:
            return cuda
    if name == "auto":
        return importlib.import_module("rnnlm_engine.kernels.cpu")
    raise BackendError(
        f"backend 'cuda' cannot run here: {reason}. It needs an NVIDIA GPU, its driver and "
        "the CUDA compiler library numba.cuda uses (NVVM, from a CUDA toolkit or NVIDIA's "
        "pip wheels); use backend 'cpu' (the default) or 'auto'"
    )
