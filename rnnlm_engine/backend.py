"""The one seam between the model code and the kernels.

A backend is a module (``rnnlm_engine.kernels.<name>``) that the model reaches only
through ``get_backend``. It provides, with the contracts documented in ``kernels/cpu``:

- arrays: ``NAME``, ``empty``, ``zeros``, ``to_device``, ``to_host``, ``matmul(a, b, out=)``,
  ``multiply(a, b, out=)``,
  ``column_sums``, ``forward_layout`` (the recurrent matrix as the cell forward wants it);
- embedding: ``embedding_forward``, ``embedding_backward``;
- cells: ``CELL_FORWARD`` / ``CELL_BACKWARD`` (name -> function, also exported as
  ``lstm_forward`` etc.) and ``ACTS_PER_HIDDEN``;
- softmax: ``row_shift``, ``row_max``, ``log_softmax``, ``xent_forward``,
  ``xent_forward_backward``; ``decode_xent`` (the scoring pass's decoder product and
  cross-entropy together, in blocks, with ``xent_block`` and ``xent_finish``);
- optimizer: ``sum_of_squares``, ``scale_inplace``, ``sgd_update``, ``adam_update``.

So a CUDA backend with the same names slots in beside the CPU one without touching the
model. Every array argument of a kernel is distinct from every other (no aliasing).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from .errors import BackendError

BACKENDS = ("cpu",)
ENV_VAR = "RNNLM_BACKEND"


def get_backend(name: str | None = None) -> ModuleType:
    """The backend module for ``name`` ("cpu"; None reads $RNNLM_BACKEND, default "cpu")."""
    if name is None:
        name = os.environ.get(ENV_VAR, "cpu")
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; available here: {', '.join(BACKENDS)}")
    return importlib.import_module(f"rnnlm_engine.kernels.{name}")
