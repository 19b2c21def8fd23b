"""The one seam between the model code and the kernels.

A backend is a module exposing the kernel functions of ``kernels/cpu`` under the same
names and contracts, plus ``empty``, ``zeros``, ``matmul``, ``to_device`` and ``to_host``.
The model code calls kernels only through the object ``get_backend`` returns, so a CUDA
backend slots in beside the CPU one without touching the model.
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
