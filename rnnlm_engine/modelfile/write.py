"""Writing a model file: save() validates its inputs, then writes the file atomically."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping

import msgpack
import numpy as np

from ..atomic import write_atomically
from ..config import ModelConfig
from ..errors import ConfigError, ModelFileError, ParameterError, VocabularyError
from ..quantize import int8_names, minus_128, scale_problem
from .format import (
    DTYPE,
    FORMAT_NAME,
    INT8,
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_NDIM,
    PREAMBLE,
    TRAINING_FACTOR,
    TRAINING_SLACK_BYTES,
    align,
    config_limit_problem,
    first_nonfinite,
    names,
    needed_features,
    plain_problem,
    training_limit,
)


def save(
    path,
    *,
    config: ModelConfig,
    tensors: Mapping[str, np.ndarray],
    vocab: dict | None = None,
    metadata: dict | None = None,
    training: dict | None = None,
    scales: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write a model file at path (str or os.PathLike), atomically.

    scales: for an int8 model, name -> float32 (rows,) scales of every matrix (2-D
    parameter), which ``tensors`` then gives as int8 arrays in -127..127; every scale
    positive and finite. The file is then format 2.0 with the feature "int8", and holds no
    training state.

    tensors: name -> float array with exactly the names and shapes of
    ``config.parameter_shapes()``; floating dtypes are converted to float32, and every value
    must be finite (after conversion). vocab, metadata and training["values"] hold only
    None, bool, int (64-bit), float, str, bytes, lists (tuples become lists) and dicts with
    str keys, nested at most MAX_DEPTH levels. training: {"tensors": {name: float array},
    "values": {...}} with training tensors of at most TRAINING_FACTOR x the parameter bytes
    + TRAINING_SLACK_BYTES in all.

    Raises ConfigError (config not a ModelConfig or beyond the format's limits),
    ParameterError (a parameter or training tensor missing, extra, misshapen, not float or
    not finite), VocabularyError (vocab not a plain dict), ModelFileError (metadata or
    training malformed, header over MAX_HEADER_BYTES, or the file cannot be written: then
    any previous file at path is unchanged and no temporary file is left behind).
    """
    target = os.fsdecode(os.fspath(path))
    if not isinstance(config, ModelConfig):
        raise ConfigError(f"config must be a ModelConfig; got {type(config).__name__}")
    problem = config_limit_problem(config)
    if problem:
        raise ConfigError(f"cannot save {target}: {problem}")

    shapes = config.parameter_shapes()
    if not isinstance(tensors, Mapping):
        raise ParameterError(f"tensors must be a dict of name -> array; got {type(tensors)}")
    missing = [name for name in shapes if name not in tensors]
    if missing:
        raise ParameterError(f"missing parameter(s) {names(missing)} for this config")
    extra = [name for name in tensors if name not in shapes]
    if extra:
        raise ParameterError(
            f"unexpected parameter(s) {names(extra)}; this config has only {names(list(shapes))}"
        )
    params = {}
    int8 = int8_names(config) if scales is not None else []
    for name, shape in shapes.items():
        if name in int8:
            a = _int8(tensors[name], f"parameter {name!r}")
        else:
            a = _float32(tensors[name], f"parameter {name!r}")
        if a.shape != shape:
            raise ParameterError(
                f"parameter {name!r} has shape {a.shape}; the config needs {shape}"
            )
        params[name] = a

    if vocab is not None:
        if not isinstance(vocab, dict):
            raise VocabularyError(
                f"vocab must be a dict (Vocabulary.to_dict()); got {type(vocab).__name__}"
            )
        problem = plain_problem(vocab, "vocab")
        if problem:
            raise VocabularyError(f"cannot save {target}: {problem}")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ModelFileError(
            f"cannot save {target}: metadata must be a dict; got {type(metadata).__name__}"
        )
    problem = plain_problem(metadata, "metadata")
    if problem:
        raise ModelFileError(f"cannot save {target}: {problem}")
    scale_arrays = _prepare_scales(scales, shapes, int8)
    if scales is not None and training is not None:
        raise ModelFileError(f"cannot save {target}: an int8 model file holds no training state")
    train_arrays, train_values = _prepare_training(target, training, 4 * config.num_parameters())

    features = needed_features(config, int8=scales is not None)
    # tensors are laid out in this order: parameters in config order, then training tensors
    entries: dict[str, dict] = {}
    train_entries: dict[str, dict] = {}
    scale_entries: dict[str, dict] = {}
    pieces: list[tuple[int, np.ndarray]] = []
    end = 0
    for table, arrays in (
        (entries, params), (scale_entries, scale_arrays), (train_entries, train_arrays)
    ):  # fmt: skip
        for name, a in arrays.items():
            offset = align(end)
            table[name] = {
                "dtype": INT8 if a.dtype == np.int8 else DTYPE,
                "shape": list(a.shape),
                "offset": offset,
                "nbytes": a.nbytes,
            }
            pieces.append((offset, a))
            end = offset + a.nbytes
    header = {
        "format": FORMAT_NAME,
        "version": [2, 0] if features else [1, 0],
        **({"features": features} if features else {}),
        "config": config.to_dict(),
        "tensors": entries,
        **({"scales": scale_entries} if scales is not None else {}),
        "vocab": vocab,
        "metadata": metadata,
        "training": None
        if training is None
        else {"tensors": train_entries, "values": train_values},
    }
    try:
        header_bytes = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:  # e.g. a str with lone surrogates
        raise ModelFileError(
            f"cannot save {target}: vocab, metadata or training values cannot be stored: {e}"
        ) from None
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ModelFileError(
            f"cannot save {target}: the header (config, vocabulary, metadata and training "
            f"values) takes {len(header_bytes)} bytes, more than the format's limit of "
            f"{MAX_HEADER_BYTES}; store less metadata"
        )
    write_atomically(target, _with_digest(_file_pieces(header_bytes, pieces, end)))


def _int8(value, label: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != np.int8:
        raise ParameterError(f"{label}: an int8 model's matrices are int8 arrays; got "
                             f"{getattr(value, 'dtype', type(value).__name__)}")  # fmt: skip
    if minus_128(value) is not None:
        raise ParameterError(f"{label} holds -128: int8 rows are symmetric, -127..127")
    return np.ascontiguousarray(value)


def _prepare_scales(scales, shapes: dict, int8: list[str]) -> dict[str, np.ndarray]:
    """The scales of save(): exactly one float32 (rows,) array per int8 matrix, each scale
    positive and finite."""
    if scales is None:
        return {}
    if not isinstance(scales, Mapping):
        raise ParameterError(f"scales must be a dict of name -> array; got {type(scales)}")
    if sorted(scales) != sorted(int8):
        raise ParameterError(
            f"scales are needed for exactly the matrices {names(int8)}; got {names(list(scales))}"
        )
    out = {}
    for name in int8:
        a = np.asarray(scales[name])
        problem = scale_problem(a, shapes[name][0])
        if problem:
            raise ParameterError(f"the scales of {name!r}: {problem}")
        out[name] = np.ascontiguousarray(a)
    return out


def _float32(value, label: str) -> np.ndarray:
    """value as a C-contiguous little-endian float32 array; ParameterError if not finite."""
    try:
        a = np.asarray(value)
    except Exception as e:  # any failure to make an array is the user's
        raise ParameterError(f"{label} is not an array: {e}") from None
    if a.dtype.kind != "f":
        raise ParameterError(
            f"{label} has dtype {a.dtype}; expected float32: convert it with .astype(np.float32)"
        )
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: caught below
        a = a.astype(DTYPE, order="C", copy=False)
    bad = first_nonfinite(a)
    if bad is not None:
        raise ParameterError(
            f"{label} holds {a[bad]} at index {bad} (after conversion to float32): model "
            "files store finite values only"
        )
    return a


def _prepare_training(target: str, training, param_bytes: int):
    if training is None:
        return {}, None
    if not isinstance(training, dict):
        raise ModelFileError(
            f"cannot save {target}: training must be a dict {{'tensors': ..., 'values': ...}}"
            f"; got {type(training).__name__}"
        )
    unknown = set(training) - {"tensors", "values"}
    if unknown:
        raise ModelFileError(
            f"cannot save {target}: training has unknown key(s) {names(sorted(map(str, unknown)))}"
            "; it holds only 'tensors' and 'values'"
        )
    tensors = training.get("tensors", {})
    values = training.get("values", {})
    if not isinstance(tensors, Mapping):
        raise ModelFileError(f"cannot save {target}: training['tensors'] must be a dict")
    if not isinstance(values, dict):
        raise ModelFileError(f"cannot save {target}: training['values'] must be a dict")
    problem = plain_problem(values, "training['values']")
    if problem:
        raise ModelFileError(f"cannot save {target}: {problem}")
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise ParameterError(f"training tensor names must be str; got {name!r}")
        a = _float32(value, f"training tensor {name!r}")
        if a.ndim > MAX_NDIM:
            raise ParameterError(f"training tensor {name!r} has more than {MAX_NDIM} dimensions")
        arrays[name] = a
    total, limit = sum(a.nbytes for a in arrays.values()), training_limit(param_bytes)
    if total > limit:
        raise ParameterError(
            f"training tensors take {total} bytes, more than the format's limit of {limit} "
            f"({TRAINING_FACTOR} x the parameter bytes + {TRAINING_SLACK_BYTES})"
        )
    return arrays, values


def _file_pieces(header: bytes, tensors: list[tuple[int, np.ndarray]], data_len: int):
    """The file's bytes before the digest, as a sequence of buffers (no copies of tensors)."""
    yield PREAMBLE.pack(MAGIC, len(header), data_len)
    yield header
    yield bytes(align(PREAMBLE.size + len(header)) - PREAMBLE.size - len(header))
    end = 0
    for offset, a in tensors:
        yield bytes(offset - end)
        if a.nbytes:
            yield memoryview(a.reshape(-1)).cast("B")
        end = offset + a.nbytes


def _with_digest(pieces: Iterable):
    """The pieces, then the SHA-256 digest of all of them (a model file's last 32 bytes)."""
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
        yield piece
    yield digest.digest()
