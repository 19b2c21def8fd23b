"""rnnlm-engine: an embeddable recurrent language-model engine on Numba kernels.

Public names: ``Model`` (built with ``Model.from_state_dict``), ``ModelConfig``, ``State``
and the error classes. Importing the package compiles nothing: kernels compile on first
use and are cached on disk.
"""

from .config import ModelConfig
from .errors import (
    BackendError,
    ConfigError,
    InputError,
    ModelFileError,
    ParameterError,
    RnnlmError,
    VocabularyError,
)
from .model import Model, State

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "ConfigError",
    "InputError",
    "Model",
    "ModelConfig",
    "ModelFileError",
    "ParameterError",
    "RnnlmError",
    "State",
    "VocabularyError",
    "__version__",
]
