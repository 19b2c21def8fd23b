"""int8 models: every weight matrix stored as int8 rows with one float32 scale per row
(rnnlm_engine/quantize.py), biases float32; inference only.

``Model.quantize("int8")`` makes one and ``rnnlm_engine.load`` reads one from its file.
Its math is the float32 model's with the dequantized weights q * s (what the oracle
computes), and it is about 4x smaller in memory and on disk.

Where each pass runs:
- Streams, ``StreamBatch`` and ``generate``: the streaming kernels on the int8 weights
  (CPU: each row's int8 sum in float32, times its scale; CUDA: each weight dequantized as
  it is loaded; the embedding row dequantized). They read a quarter of the bytes, which
  is what a batch-1 step is bound by. Layer 0's input is the int8 product of the
  token's embedding row, except for small vocabularies (characters), whose float32 (V, G)
  input table is no larger than the int8 matrices it replaces (for a word model it would
  be larger than the whole int8 model). An adaptive output's head and tails are read as
  float32 copies (dequantized once: they are a few percent of the model).
- Batch passes (``forward``, ``token_logprobs``, ``score``, ``trace``, attributions):
  a float32 model of the dequantized weights, built on first use and kept until
  ``release_workspace()``. Their products are large matrix products, bound by arithmetic:
  with float32 activations (the contract), int8 weights would only add a conversion per
  multiply-add, so BLAS on dequantized weights is the fastest way here, and it gives the
  dequantized float32 model's results to the bit.

Training, ``loss_and_grad`` and ``state_dict()`` are refused: train the float32 model,
then quantize it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import ConfigError, ParameterError
from .model import Model
from .params import check_sums_fit_float32
from .quantize import (
    dequantize_rows,
    int8_names,
    minus_128,
    quantize_rows,
    row_abs_max,
    row_abs_sums,
    scale_problem,
)

KINDS = ("int8",)
_INFERENCE_ONLY = (
    "an int8 model is for inference only: train the float32 model, then quantize it "
    "(Model.quantize or rnnlm quantize)"
)


def check_kind(kind) -> None:
    if kind not in KINDS:
        raise ConfigError(f"quantize: kind must be one of {', '.join(KINDS)}; got {kind!r}")


def quantize_model(model: Model, kind: str = "int8") -> QuantizedModel:
    """The int8 model of a float32 Model (same config, vocabulary, metadata, backend)."""
    check_kind(kind)
    if isinstance(model, QuantizedModel):
        return model
    host = model._parameters()
    weights, scales = {}, {}
    for name, a in host.items():
        if name in int8_names(model.config):
            weights[name], scales[name] = quantize_rows(np.asarray(a), name)
        else:
            weights[name] = np.array(a, np.float32)
    return QuantizedModel(
        model.config, weights, scales, model.backend, vocab=model.vocab, metadata=model.metadata
    )


def check_quantized(config, weights: dict, scales: dict) -> dict[str, np.ndarray]:
    """Check an int8 model's tensors: names, dtypes and shapes, int8 values in -127..127,
    scales positive and finite, biases finite. Returns the biases as float32 arrays (the
    matrices are checked where they are, never copied to float). Raises ParameterError
    naming the first defect."""
    for what, given in (("weights", weights), ("scales", scales)):
        if not isinstance(given, Mapping):
            raise ParameterError(
                f"{what} must be a dict of name -> array; got {type(given).__name__}"
            )
    names = int8_names(config)
    extra = [name for name in scales if name not in names]
    if extra:
        raise ParameterError(f"scales given for {', '.join(map(repr, extra))}, not int8 matrices")
    shapes = config.parameter_shapes()
    unknown = [name for name in weights if name not in shapes]
    if unknown:
        raise ParameterError(f"unexpected parameter(s) {', '.join(map(repr, unknown))}")
    biases = {}
    for name, shape in shapes.items():
        if name not in weights:
            raise ParameterError(f"missing parameter {name!r}")
        a = np.asarray(weights[name])
        if name not in names:
            if a.shape != shape or not np.issubdtype(a.dtype, np.floating):
                raise ParameterError(
                    f"{name}: float of shape {shape} needed; got {a.dtype} {a.shape}"
                )
            biases[name] = a = np.array(a, np.float32)
            if not np.all(np.isfinite(a)):
                raise ParameterError(f"parameter {name!r} contains NaN or infinity")
            continue
        if a.dtype != np.int8 or a.shape != shape:
            raise ParameterError(
                f"{name}: int8 rows of shape {shape} needed; got {a.dtype} {a.shape}"
            )
        if minus_128(a) is not None:
            raise ParameterError(f"{name} holds -128: int8 rows are symmetric, -127..127")
        if name not in scales:
            raise ParameterError(f"missing the scales of {name!r}")
        problem = scale_problem(np.asarray(scales[name]), shape[0])
        if problem:
            raise ParameterError(f"the scales of {name!r}: {problem}")
    return biases


def _row_l1(weights: dict, scales: dict):
    """row_l1(name) of the dequantized weights, from q and the scales in float64 (the sums
    of |q| are exact; each dequantized weight differs from q * s by a float32 rounding,
    far inside the overflow check's margin)."""

    def row_l1(name):
        return row_abs_sums(weights[name]).astype(np.float64) * scales[name].astype(np.float64)

    return row_l1


def _max_abs(weights: dict, scales: dict):
    def max_abs(name):
        q = row_abs_max(weights[name])
        return float(np.max(q * scales[name].astype(np.float64), initial=0.0))

    return max_abs


class QuantizedModel(Model):
    """An int8 model (see the module docstring). Build one with ``Model.quantize``."""

    weight_storage = "int8"

    def __init__(
        self,
        config,
        weights: dict,
        scales: dict,
        backend: str | None = None,
        vocab=None,
        metadata: dict | None = None,
    ):
        # no float32 copy of the weights, not even for a moment: freed, its pages would
        # stay with the process (the allocator keeps them), and the model would not be 4x
        # smaller in memory
        self._init_common(config, backend, vocab, metadata)
        biases = check_quantized(config, weights, scales)
        self._recurrent_bounds = check_sums_fit_float32(
            config, biases, self._output, _row_l1(weights, scales), _max_abs(weights, scales)
        )
        k = self._k
        # copies: the model is immutable, and the caller keeps the arrays it gave (the
        # biases are already check_quantized's)
        self._params = {
            name: k.freeze(
                k.to_device_aligned(biases[name]) if name in biases
                else k.to_device_aligned(weights[name], copy=True)
            )
            for name in config.parameter_shapes()
        }  # fmt: skip
        self._scales = {
            name: k.freeze(k.to_device_aligned(s, copy=True)) for name, s in scales.items()
        }

    # ------------------------------------------------------------ what is refused

    def state_dict(self):
        raise ConfigError(f"state_dict(): {_INFERENCE_ONLY}; dequantize() gives a float32 Model")

    def loss_and_grad(self, *args, **kwargs):
        raise ConfigError(f"loss_and_grad(): {_INFERENCE_ONLY}")

    def _apply_update(self, update) -> None:
        raise ConfigError(_INFERENCE_ONLY)

    # ------------------------------------------------------------ int8 specifics

    def quantize(self, kind: str = "int8") -> QuantizedModel:
        check_kind(kind)
        return self

    def dequantize(self) -> Model:
        """A float32 Model of the dequantized weights (a new model, trainable)."""
        return Model(
            self._config, self._dequantized_host(), self.backend, vocab=self._vocab,
            metadata=self._metadata,
        )  # fmt: skip

    def int8_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(name -> host array: int8 matrices and float32 biases, name -> scales (rows,)):
        read-only, the model's own on the CPU (np.array(...) gives a writable copy)."""
        k = self._k
        return (
            {name: k.to_host(a) for name, a in self._params.items()},
            {name: k.to_host(s) for name, s in self._scales.items()},
        )

    def save(self, path, metadata: dict | None = None, training: dict | None = None) -> None:
        """Write the int8 model file (format 2 with the "int8" feature), atomically."""
        from . import modelfile

        if training is not None:
            raise ConfigError(f"an int8 model file holds no training state: {_INFERENCE_ONLY}")
        weights, scales = self.int8_tensors()
        modelfile.save(
            path,
            config=self._config,
            tensors=weights,
            scales=scales,
            vocab=None if self._vocab is None else self._vocab.to_dict(),
            metadata=self._metadata if metadata is None else metadata,
        )

    def nbytes(self) -> int:
        return super().nbytes() + sum(s.nbytes for s in self._scales.values())

    def __repr__(self) -> str:
        return super().__repr__().replace("Model(", "QuantizedModel(int8, ", 1)

    # ---------------------------------------------- hooks the streaming path reads

    def _scale(self, name: str):
        s = self._scales.get(name)
        return super()._scale(name) if s is None else s  # a bias has none

    def _dequantized(self, name: str):
        if name not in self._scales:
            return self._params[name]
        k = self._k
        w = dequantize_rows(k.to_host(self._params[name]), k.to_host(self._scales[name]))
        return k.freeze(k.to_device_aligned(w))

    def _dequantized_host(self) -> dict[str, np.ndarray]:
        weights, scales = self.int8_tensors()
        return {
            name: dequantize_rows(a, scales[name]) if name in scales else np.array(a)
            for name, a in weights.items()
        }

    def _has_input_table(self) -> bool:
        # a float32 (V, G) table only where it is no larger than the int8 embedding and
        # W_ih0 it replaces (small vocabularies: characters, bytes), so the model stays
        # about 4x smaller; elsewhere layer 0's input is one more int8 product per token
        c = self._config
        return c.vocab_size * c.gate_rows * 4 <= (c.vocab_size + c.gate_rows) * c.emb_size

    # ------------------------------------------------ batch passes: the float32 model

    def _float(self) -> Model:
        """The float32 model of the dequantized weights that batch passes run on (built
        on first use, kept until release_workspace)."""
        return self._cached("float_model", self.dequantize)

    def _batch_model(self) -> Model:
        return self._float()

    def release_workspace(self) -> None:
        """Free the calling thread's work arrays and the float32 model of batch passes."""
        super().release_workspace()
        with self._derived_lock:
            self._derived.pop("float_model", None)

    def forward(self, ids, state=None):
        return self._float().forward(ids, state)

    def _forward_checked(self, ids, state, saved=None):
        return self._float()._forward_checked(ids, state, saved)

    def token_logprobs(self, inputs, targets, state=None):
        return self._float().token_logprobs(inputs, targets, state)

    def score(self, text_lines_or_path, *args, **kwargs):
        return self._float().score(text_lines_or_path, *args, **kwargs)

    # trace, attribution and gradient_by_lag: their modules ask for _batch_model()
