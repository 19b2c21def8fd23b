"""rnnlm-engine: an embeddable recurrent language-model engine on Numba kernels.

Public names: ``Model`` (built with ``Model.from_state_dict`` or read with ``load``;
``Model.quantize("int8")`` gives a ``QuantizedModel``),
``ModelConfig``, ``State``, ``Vocabulary``, ``train`` with ``TrainConfig``, and the error
classes. Importing the package compiles nothing: kernels compile on first use and are
cached on disk.
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

__version__ = "0.1.0"  # before the imports below: train.py reads it

from .model import Model, State, load  # noqa: E402
from .quantized import QuantizedModel  # noqa: E402
from .stream import Snapshot, Stream, StreamBatch  # noqa: E402
from .train import TrainConfig, TrainingDiverged, train  # noqa: E402
from .vocab import Vocabulary  # noqa: E402

__all__ = [
    "BackendError",
    "ConfigError",
    "InputError",
    "Model",
    "ModelConfig",
    "ModelFileError",
    "ParameterError",
    "QuantizedModel",
    "RnnlmError",
    "Snapshot",
    "State",
    "Stream",
    "StreamBatch",
    "TrainConfig",
    "TrainingDiverged",
    "Vocabulary",
    "VocabularyError",
    "__version__",
    "load",
    "train",
]
