"""Model files: one file holds a model's config, parameters, vocabulary, metadata and
optional training state, written atomically and validated completely when read.

A model file is hostile input until proven otherwise. ``load`` reads the whole file (at
most ``max_bytes``), checks the magic bytes, the declared lengths (the header's at most
``max_header_bytes``) and the SHA-256 digest, counts what unpacking the msgpack header
would allocate (at most HEADER_MEMORY_FACTOR x its size), unpacks it with bounded
lengths, then checks every key, dtype, shape and
offset, and that every float is finite, in the fixed order given in docs/FORMAT.md. Any
defect raises one ``ModelFileError`` naming the file and the defect. Nothing is executed
(no pickle), and the parameter arrays handed out are read-only float32 views of the bytes
read, never of a file that could change under them.

``save`` validates its inputs, then writes a temporary file in the target's folder,
fsyncs it and renames it over the target: a crash or Ctrl-C during a save leaves any
previous file at that path intact.

Layout (all integers little-endian; details in docs/FORMAT.md)::

    MAGIC (8) | header length H (u64) | data length N (u64) | header: msgpack map (H)
    | zero padding to a multiple of 64 | data: tensors' raw float32 bytes (N) | SHA-256 (32)
"""

from __future__ import annotations

import hashlib
import math
import os
import reprlib
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgpack
import numpy as np

from .atomic import write_atomically
from .config import ModelConfig
from .errors import ConfigError, ModelFileError, ParameterError, VocabularyError
from .msgpack_size import unpacked_size
from .quantize import int8_names, minus_128, scale_problem

FORMAT_NAME = "rnnlm-engine model"
# (major, minor): the newest this engine reads and writes; a newer major is refused, a
# newer minor accepted. A writer writes the lowest version that describes the file: 1.0
# for a plain model, 2.0 (with its "features") for one whose math a 1.x reader lacks.
FORMAT_VERSION = (2, 0)
# What a format-2 model may need of its reader, listed in the header's "features": a
# reader refuses a file that needs one it does not know (a 1.x reader refuses major 2).
FEATURES = ("residual", "adaptive", "int8")
MAGIC = b"\x89RNNLM\r\n"  # \x89 catches 7-bit transfers, \r\n catches newline translation

PREAMBLE = struct.Struct("<8sQQ")  # magic, header length, data length
DIGEST_SIZE = 32  # SHA-256 of every byte before it
ALIGN = 64  # data section and every tensor start at a multiple of this (file offsets)
DTYPE = "<f4"  # the only tensor dtype of format 1.x
INT8 = "<i1"  # the matrices of an int8 model (feature "int8"), with float32 "scales"

DEFAULT_MAX_BYTES = 8 << 30  # load() refuses larger files unless told otherwise
MAX_HEADER_BYTES = 64 << 20  # msgpack header: config, vocabulary, metadata, tensor index
DEFAULT_MAX_HEADER_BYTES = 16 << 20  # load() refuses larger headers unless told otherwise
# unpacking a header of H bytes may take at most HEADER_MEMORY_FACTOR x H +
# HEADER_MEMORY_SLACK bytes of Python objects, counted before anything is unpacked (a
# 1M-word vocabulary takes about 7 x its bytes; 1-byte empty lists would take 64 x)
HEADER_MEMORY_FACTOR = 24
HEADER_MEMORY_SLACK = 1 << 20
MAX_VOCAB_SIZE = 100_000_000
MAX_WIDTH = 1 << 20  # emb_size and hidden_size
MAX_CUTOFFS = 64  # an adaptive output's tail clusters
MAX_LAYERS = 256
MAX_NDIM = 32  # numpy's own limit on dimensions
MAX_ELEMENTS = 1 << 40  # in a tensor's shape, counting zero dimensions as 1
MAX_DEPTH = 32  # nesting of vocab, metadata and training values
TRAINING_FACTOR = 4  # training tensors may hold at most 4 x parameter bytes + 16 MiB
# the slack holds the epoch's gradient norms (4 bytes a window: 4M windows, 2.9 billion
# tokens an epoch at batch 20 x bptt 35), which grow with the data, not the model
TRAINING_SLACK_BYTES = 16 << 20

_FINITE_CHUNK = 1 << 20  # elements per isfinite() pass: bounds the temporary bool array
_INT_RANGE = (-(1 << 63), 1 << 64)  # what msgpack can encode
_PLAIN_LEAVES = (type(None), bool, int, float, str, bytes)

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = _repr.maxlong = 60
_repr.maxlist = _repr.maxdict = 6
_repr.maxlevel = 3


@dataclass(frozen=True)
class ModelFile:
    """The contents of a model file, validated.

    config: the model's shape. tensors: name -> read-only C-contiguous float32 array, with
    exactly the names and shapes of ``config.parameter_shapes()``. vocab: the vocabulary's
    ``to_dict()`` (opaque here) or None. metadata: str keys, plain msgpack values.
    training: None, or {"tensors": {name: read-only float32 array}, "values": {str: value}}.
    version: the (major, minor) format version the file was written with.
    scales: None, or for an int8 model (feature "int8") name -> read-only float32 (rows,)
    scales of each matrix, which ``tensors`` then holds as int8 (-127..127; biases stay
    float32): the weights are q * scale (rnnlm_engine/quantize.py).
    """

    config: ModelConfig
    tensors: dict[str, np.ndarray]
    vocab: dict | None
    metadata: dict
    training: dict | None
    version: tuple[int, int]
    scales: dict[str, np.ndarray] | None = None


# ---------------------------------------------------------------------------- save


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
    problem = _config_limit_problem(config)
    if problem:
        raise ConfigError(f"cannot save {target}: {problem}")

    shapes = config.parameter_shapes()
    if not isinstance(tensors, Mapping):
        raise ParameterError(f"tensors must be a dict of name -> array; got {type(tensors)}")
    missing = [name for name in shapes if name not in tensors]
    if missing:
        raise ParameterError(f"missing parameter(s) {_names(missing)} for this config")
    extra = [name for name in tensors if name not in shapes]
    if extra:
        raise ParameterError(
            f"unexpected parameter(s) {_names(extra)}; this config has only {_names(list(shapes))}"
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
        problem = _plain_problem(vocab, "vocab")
        if problem:
            raise VocabularyError(f"cannot save {target}: {problem}")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ModelFileError(
            f"cannot save {target}: metadata must be a dict; got {type(metadata).__name__}"
        )
    problem = _plain_problem(metadata, "metadata")
    if problem:
        raise ModelFileError(f"cannot save {target}: {problem}")
    scale_arrays = _prepare_scales(scales, shapes, int8)
    if scales is not None and training is not None:
        raise ModelFileError(f"cannot save {target}: an int8 model file holds no training state")
    train_arrays, train_values = _prepare_training(target, training, 4 * config.num_parameters())

    features = _features(config, int8=scales is not None)
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
            offset = _align(end)
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
            f"scales are needed for exactly the matrices {_names(int8)}; got {_names(list(scales))}"
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
    bad = _first_nonfinite(a)
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
            f"cannot save {target}: training has unknown key(s) {_names(sorted(map(str, unknown)))}"
            "; it holds only 'tensors' and 'values'"
        )
    tensors = training.get("tensors", {})
    values = training.get("values", {})
    if not isinstance(tensors, Mapping):
        raise ModelFileError(f"cannot save {target}: training['tensors'] must be a dict")
    if not isinstance(values, dict):
        raise ModelFileError(f"cannot save {target}: training['values'] must be a dict")
    problem = _plain_problem(values, "training['values']")
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
    total, limit = sum(a.nbytes for a in arrays.values()), _training_limit(param_bytes)
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
    yield bytes(_align(PREAMBLE.size + len(header)) - PREAMBLE.size - len(header))
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


# ---------------------------------------------------------------------------- load


def load(
    path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> ModelFile:
    """Read and validate a model file (str or os.PathLike).

    max_bytes: larger files are refused before reading (default 8 GiB); lower it for
    files from untrusted sources. max_header_bytes: files whose msgpack header (config,
    vocabulary, metadata, training values) is larger are refused before it is unpacked
    (default 16 MiB, room for a vocabulary of about 1.5 million words; the format allows
    up to MAX_HEADER_BYTES, 64 MiB): raise it for a trusted file with a larger vocabulary.

    Memory: loading a file of N bytes with a header of H bytes takes the N bytes read
    (the arrays are views of them) plus at most HEADER_MEMORY_FACTOR x H + 1 MiB (24 x H)
    for the header's Python objects, counted before they are made: a header that would
    take more is refused. So at most 25 x N + 1 MiB, whatever the bytes.

    Returns a ModelFile whose arrays are read-only float32 views of the bytes read.
    Raises ModelFileError naming the file and its first defect, in the order of
    docs/FORMAT.md ("Checks"); ValueError for a max_bytes or max_header_bytes that is not
    a non-negative int.
    """
    return _load(path, max_bytes, max_header_bytes)[0]


def read_info(
    path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> dict:
    """A summary of a model file for ``rnnlm info``, after validating all of it.

    Keys: path, file_size, format, version (major, minor), features, config (dict),
    parameters (count), storage ("float32" or "int8"), weight_bytes (the parameters'
    bytes as stored, scales included), vocab ({"kind", "size"} or None; size is None if
    the vocabulary holds no token list), metadata, training (True when the file holds
    training state).
    Raises ModelFileError as ``load`` does (and takes its limits).
    """
    f, size = _load(path, max_bytes, max_header_bytes)
    vocab = None
    if f.vocab is not None:
        kind, tokens = f.vocab.get("kind"), f.vocab.get("tokens")
        vocab = {
            "kind": kind if isinstance(kind, str) else None,
            "size": len(tokens) if isinstance(tokens, list) else None,
        }
    return {
        "path": os.fsdecode(os.fspath(path)),
        "file_size": size,
        "format": FORMAT_NAME,
        "version": f.version,
        "features": _features(f.config, int8=f.scales is not None),
        "config": f.config.to_dict(),
        "parameters": f.config.num_parameters(),
        "storage": "int8" if f.scales is not None else "float32",
        "weight_bytes": sum(a.nbytes for a in f.tensors.values())
        + sum(a.nbytes for a in (f.scales or {}).values()),
        "vocab": vocab,
        "metadata": f.metadata,
        "training": f.training is not None,
    }


def _load(path, max_bytes: int, max_header_bytes: int) -> tuple[ModelFile, int]:
    shown = os.fsdecode(os.fspath(path))
    for name, value in (("max_bytes", max_bytes), ("max_header_bytes", max_header_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int; got {value!r}")
    blob = _read(shown, max_bytes)
    header_len, data_start, data_len = _check_envelope(shown, blob, max_header_bytes)
    header = _unpack_header(shown, blob, header_len)
    if not _zeros(blob, PREAMBLE.size + header_len, data_start):
        raise _error(shown, "corrupt: the padding after the header is not zero")
    return _parse(shown, blob, header, data_start, data_len), len(blob)


def _error(shown: str, message: str) -> ModelFileError:
    return ModelFileError(f"{shown}: {message}")


def _read(shown: str, max_bytes: int) -> bytes:
    try:
        info = os.stat(shown)
        if not stat.S_ISREG(info.st_mode):  # before open(): opening a FIFO would block
            raise _error(shown, "not a regular file (a folder, device or pipe); give a model file")
        with open(shown, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise _error(
                    shown,
                    f"the file is {size} bytes, more than max_bytes={max_bytes}; pass a larger "
                    "max_bytes to load() if you trust it",
                )
            blob = f.read(size + 1)  # one more byte to notice a file growing meanwhile
    except FileNotFoundError:
        raise _error(shown, "no such file; check the path") from None
    except PermissionError:
        raise _error(shown, "permission denied; check the file's permissions") from None
    except OSError as e:
        raise _error(shown, f"cannot read the file: {e.strerror or e}") from None
    except MemoryError:
        raise _error(shown, "not enough memory to read the file") from None
    if len(blob) != size:
        raise _error(shown, "the file changed while it was read; try again once it is written")
    return blob


def _check_envelope(shown: str, blob: bytes, max_header_bytes: int) -> tuple[int, int, int]:
    """Magic, declared lengths against the file size and limits, digest: (H, data start,
    N)."""
    size = len(blob)
    if size == 0:
        raise _error(shown, "not an rnnlm-engine model file: the file is empty")
    if blob[: len(MAGIC)] != MAGIC:
        raise _error(
            shown,
            "not an rnnlm-engine model file (it does not start with the format's magic "
            "bytes); give a file written by rnnlm-engine",
        )
    minimum = PREAMBLE.size + DIGEST_SIZE
    if size < minimum:
        raise _error(shown, f"truncated: {size} bytes, fewer than the {minimum} of any model file")
    _, header_len, data_len = PREAMBLE.unpack_from(blob)
    if not 0 < header_len <= MAX_HEADER_BYTES:
        raise _error(shown, f"corrupt: header length {header_len} is outside 1..{MAX_HEADER_BYTES}")
    if header_len > max_header_bytes:
        raise _error(
            shown,
            f"the header (config, vocabulary, metadata) is {header_len} bytes, more than "
            f"max_header_bytes={max_header_bytes}; pass max_header_bytes={header_len} (or "
            "more) to load() if you trust the file",
        )
    data_start = _align(PREAMBLE.size + header_len)
    expected = data_start + data_len + DIGEST_SIZE
    if size < expected:
        raise _error(
            shown,
            f"truncated: the file is {size} bytes but declares {expected}; it was cut short "
            "(an interrupted copy or download?): copy it again",
        )
    if size > expected:
        raise _error(
            shown, f"corrupt: {size - expected} unexpected byte(s) after the end of the file"
        )
    digest = hashlib.sha256(memoryview(blob)[: size - DIGEST_SIZE]).digest()
    if digest != blob[size - DIGEST_SIZE :]:
        raise _error(
            shown,
            "corrupt: checksum mismatch (the file was damaged after it was written); "
            "restore it from a copy or save the model again",
        )
    return header_len, data_start, data_len


def _unpack_header(shown: str, blob: bytes, header_len: int):
    """The header's msgpack map, unpacked with bounded lengths once unpacked_size has
    counted that its objects take at most HEADER_MEMORY_FACTOR x its size + 1 MiB."""
    n = header_len
    limit = HEADER_MEMORY_FACTOR * n + HEADER_MEMORY_SLACK
    if unpacked_size(blob, PREAMBLE.size, PREAMBLE.size + n, limit) > limit:
        raise _error(
            shown,
            f"corrupt header: unpacking its {n} bytes would take more than {limit} bytes "
            f"of memory ({HEADER_MEMORY_FACTOR} x its size + {HEADER_MEMORY_SLACK}); it "
            "holds implausibly many tiny values, unlike any file rnnlm-engine writes",
        )
    header = memoryview(blob)[PREAMBLE.size : PREAMBLE.size + n]
    try:
        return msgpack.unpackb(
            header,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n // 2,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise _error(shown, "corrupt header: extra bytes after its msgpack map") from None
    except MemoryError:
        raise _error(shown, "not enough memory to unpack the header") from None
    except msgpack.StackError:
        raise _error(shown, "corrupt header: nested deeper than msgpack allows") from None
    except msgpack.FormatError:
        raise _error(shown, "corrupt header: not valid msgpack") from None
    except Exception as e:  # msgpack raises ValueError, TypeError, UnicodeDecodeError...
        raise _error(shown, f"corrupt header: {type(e).__name__}: {_cut(str(e))}") from None


def _parse(shown: str, blob: bytes, header, data_start: int, data_len: int) -> ModelFile:
    """Check the header's schema and the data section; build the ModelFile."""
    if not isinstance(header, dict):
        raise _error(shown, f"corrupt header: a {type(header).__name__}, not a map")
    fmt = header.get("format")
    if fmt != FORMAT_NAME:
        raise _error(
            shown,
            f"not an rnnlm-engine model file: format is {_repr.repr(fmt)}, expected "
            f"{FORMAT_NAME!r}",
        )
    version = _version(shown, header)
    for key in ("config", "tensors"):
        if key not in header:
            raise _error(shown, f"corrupt header: no {key!r}")

    config = _config(shown, header["config"])
    int8 = int8_names(config) if _check_features(shown, header, version, config) else []
    shapes = config.parameter_shapes()
    param_bytes = sum((1 if n in int8 else 4) * math.prod(shape) for n, shape in shapes.items())
    if param_bytes > data_len:
        raise _error(
            shown,
            f"corrupt: the config declares {config.num_parameters()} parameters "
            f"({param_bytes} bytes) but the data section holds {data_len} bytes",
        )

    entries = header["tensors"]
    if not isinstance(entries, dict):
        raise _error(shown, "corrupt header: 'tensors' is not a map")
    missing = [name for name in shapes if name not in entries]
    if missing:
        raise _error(shown, f"missing tensor(s) {_names(missing)} that the config needs")
    extra = [name for name in entries if name not in shapes]
    if extra:
        raise _error(shown, f"unexpected tensor(s) {_names(extra)} that the config does not have")
    spans = {}
    for name, shape in shapes.items():
        dtype = INT8 if name in int8 else DTYPE
        spans[name] = _entry(shown, f"tensor {name!r}", entries[name], data_len, shape, dtype)
    scale_spans = _scale_spans(shown, header, int8, shapes, data_len)

    vocab = header.get("vocab")
    if vocab is not None:
        if not isinstance(vocab, dict):
            raise _error(shown, f"corrupt header: 'vocab' is a {type(vocab).__name__}, not a map")
        _check_plain(shown, vocab, "vocab")
    metadata = header.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _error(shown, f"corrupt header: 'metadata' is a {type(metadata).__name__}, not a map")
    _check_plain(shown, metadata, "metadata")

    training = header.get("training")
    train_spans: dict[str, tuple[int, int, tuple]] = {}
    values = None
    if training is not None and int8:
        raise _error(shown, "corrupt header: an int8 model file holds no training state")
    if training is not None:
        if not isinstance(training, dict):
            raise _error(shown, "corrupt header: 'training' is not a map")
        t_entries, values = training.get("tensors", {}), training.get("values", {})
        if not isinstance(t_entries, dict):
            raise _error(shown, "corrupt header: training 'tensors' is not a map")
        if not isinstance(values, dict):
            raise _error(shown, "corrupt header: training 'values' is not a map")
        _check_plain(shown, values, "training values")
        for name, entry in t_entries.items():
            if not isinstance(name, str):
                raise _error(shown, f"corrupt header: training tensor name {_repr.repr(name)}")
            label = f"training tensor {name!r}"
            train_spans[name] = _entry(shown, label, entry, data_len, None)
        total, limit = sum(s[1] for s in train_spans.values()), _training_limit(param_bytes)
        if total > limit:
            raise _error(
                shown,
                f"corrupt: training tensors declare {total} bytes, more than the limit of "
                f"{limit} ({TRAINING_FACTOR} x the parameter bytes + {TRAINING_SLACK_BYTES})",
            )

    _check_layout(shown, blob, data_start, data_len, spans, train_spans, scale_spans)
    tensors = {}
    for name, span in spans.items():
        tensors[name] = _array(shown, blob, data_start, f"tensor {name!r}", span)
    scales = None
    if int8:
        scales = {}
        for name, span in scale_spans.items():
            label = f"the scales of {name!r}"
            scales[name] = a = _array(shown, blob, data_start, label, span)
            problem = scale_problem(a, span[2][0])
            if problem:
                raise _error(shown, f"{label}: {problem}")
    if training is not None:
        arrays = {}
        for name, span in train_spans.items():
            arrays[name] = _array(shown, blob, data_start, f"training tensor {name!r}", span)
        training = {"tensors": arrays, "values": values}
    return ModelFile(config, tensors, vocab, metadata, training, version, scales)


def _features(config: ModelConfig, int8: bool = False) -> list[str]:
    """The features of FEATURES that a model of this config (int8: with int8 matrices)
    needs of a reader."""
    return (
        (["residual"] if config.residual else [])
        + (["adaptive"] if config.adaptive else [])
        + (["int8"] if int8 else [])
    )


def _check_features(shown: str, header: dict, version: tuple[int, int], config) -> bool:
    """A 2.x file lists exactly the features its config needs, all known here, and
    "int8" for int8 matrices; a 1.x file needs none (a 1.0 reader would compute another
    model). Returns whether the file holds int8 matrices."""
    needed = _features(config)
    if version[0] == 1:
        if needed:
            raise _error(
                shown,
                f"corrupt header: a format 1.x file cannot hold a model that needs "
                f"{', '.join(needed)} (format 2 lists it in 'features')",
            )
        return False
    listed = header.get("features")
    if not (
        isinstance(listed, list)
        and len(listed) <= 64
        and all(isinstance(f, str) and len(f) <= 64 for f in listed)
    ):
        raise _error(
            shown, f"corrupt header: 'features' is {_repr.repr(listed)}, not a list of names"
        )
    unknown = [f for f in listed if f not in FEATURES]
    if unknown:
        raise _error(
            shown,
            f"the model needs {_names(unknown)}, which this rnnlm-engine does not know "
            f"(it knows {', '.join(FEATURES)}): upgrade rnnlm-engine",
        )
    int8 = "int8" in listed
    if sorted(set(listed) - {"int8"}) != sorted(needed) or not (needed or int8):
        raise _error(
            shown,
            f"corrupt header: 'features' lists {_names(listed)} but the config needs "
            f"{_names(needed) if needed else 'none'}",
        )
    return int8


def _scale_spans(shown: str, header: dict, int8: list[str], shapes: dict, data_len: int) -> dict:
    """The index entries of an int8 file's "scales" (exactly one float32 (rows,) tensor
    per int8 matrix); {} for a float32 file, which has no "scales"."""
    raw = header.get("scales")
    if not int8:
        if raw is not None:
            raise _error(shown, "corrupt header: 'scales' in a file without the feature int8")
        return {}
    if not isinstance(raw, dict):
        raise _error(shown, f"corrupt header: 'scales' is {_repr.repr(raw)}, not a map")
    if sorted(raw, key=repr) != sorted(int8, key=repr):
        raise _error(
            shown,
            f"corrupt header: 'scales' lists {_names(list(raw))}; an int8 model has scales "
            f"for exactly its matrices {_names(int8)}",
        )
    return {
        name: _entry(shown, f"the scales of {name!r}", raw[name], data_len, (shapes[name][0],))
        for name in int8
    }


def _version(shown: str, header: dict) -> tuple[int, int]:
    v = header.get("version")
    if v is None:
        raise _error(shown, "corrupt header: no format version")
    if not (
        isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 32 for x in v)
    ):
        raise _error(
            shown, f"corrupt header: malformed format version {_repr.repr(v)}; expected [1, n]"
        )
    major, minor = v
    supported = FORMAT_VERSION[0]
    if major > supported:
        raise _error(
            shown,
            f"written by a newer rnnlm-engine (format {major}.x); this reader supports "
            f"1.x and {supported}.x: upgrade rnnlm-engine",
        )
    if major < 1:
        raise _error(
            shown, f"format {major}.{minor} is not supported; this reader supports 1.x and 2.x"
        )
    return major, minor


def _config(shown: str, raw) -> ModelConfig:
    if not isinstance(raw, dict):
        raise _error(shown, "corrupt header: 'config' is not a map")
    _check_plain(shown, raw, "config")
    # types first, so that ModelConfig's messages never quote a huge hostile value
    cell = raw.get("cell")
    if cell is not None and not (isinstance(cell, str) and len(cell) <= 16):
        raise _error(shown, f"invalid config: cell is {_repr.repr(cell)}, not a cell name")
    for key in ("vocab_size", "emb_size", "hidden_size", "num_layers"):
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _error(shown, f"invalid config: {key} is {_repr.repr(value)}, not an integer")
    for key in ("tied", "residual", "head_bias"):
        if key in raw and not isinstance(raw[key], bool):
            raise _error(shown, f"invalid config: {key} is {_repr.repr(raw[key])}, not a bool")
    cutoffs = raw.get("cutoffs")
    if cutoffs is not None and not (
        isinstance(cutoffs, list)
        and 0 < len(cutoffs) <= MAX_CUTOFFS
        and all(isinstance(v, int) and not isinstance(v, bool) for v in cutoffs)
    ):
        raise _error(
            shown, f"invalid config: cutoffs is {_repr.repr(cutoffs)}, not a list of integers"
        )
    div = raw.get("div_value")
    if div is not None and (isinstance(div, bool) or not isinstance(div, int | float)):
        raise _error(shown, f"invalid config: div_value is {_repr.repr(div)}, not a number")
    try:
        config = ModelConfig.from_dict(raw)
    except (ConfigError, TypeError, ValueError) as e:
        raise _error(shown, f"invalid config: {_cut(str(e))}") from None
    problem = _config_limit_problem(config)
    if problem:
        raise _error(shown, f"invalid config: {problem}")
    return config


def _entry(shown: str, label: str, entry, data_len: int, expected: tuple | None, want=DTYPE):
    """(offset, nbytes, shape, dtype) of a tensor's index entry, checked against the data
    length; want: the dtype it must have (DTYPE, or INT8 for an int8 model's matrices)."""
    if not isinstance(entry, dict):
        raise _error(shown, f"{label}: its entry is not a map")
    dtype = entry.get("dtype")
    if dtype != want:
        raise _error(
            shown,
            f"{label}: dtype {_repr.repr(dtype)}; expected {want!r}"
            + (" (little-endian float32)" if want == DTYPE else " (int8)"),
        )
    shape = entry.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_NDIM
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise _error(
            shown,
            f"{label}: shape {_repr.repr(shape)} is not a list of at most {MAX_NDIM} "
            "non-negative integers",
        )
    shape = tuple(shape)
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:  # numpy refuses even an empty [0, 2**62]
        raise _error(
            shown, f"{label}: shape {_repr.repr(list(shape))} has more than {MAX_ELEMENTS} elements"
        )
    if expected is not None and shape != expected:
        raise _error(shown, f"{label}: shape {list(shape)} does not match the config's {expected}")
    offset, nbytes = entry.get("offset"), entry.get("nbytes")
    for key, value in (("offset", offset), ("nbytes", nbytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _error(shown, f"{label}: {key} {_repr.repr(value)} is not a non-negative integer")
    itemsize = np.dtype(want).itemsize
    size = itemsize * math.prod(shape)  # Python ints: no overflow, however absurd the shape
    if nbytes != size:
        raise _error(
            shown,
            f"{label}: nbytes {nbytes} does not equal {itemsize} x prod(shape {list(shape)})",
        )
    if offset + nbytes > data_len:
        raise _error(
            shown,
            f"{label}: bytes {offset}..{offset + nbytes} lie past the end of the data section "
            f"({data_len} bytes)",
        )
    return offset, nbytes, shape, want


def _check_layout(shown, blob, data_start, data_len, spans, train_spans, scale_spans) -> None:
    """Tensors tile the data section in offset order: each at the next multiple of ALIGN
    after the previous one's end, zero padding between, nothing after the last."""
    labelled = [(s[0], s[1], f"tensor {n!r}") for n, s in spans.items()]
    labelled += [(s[0], s[1], f"the scales of {n!r}") for n, s in scale_spans.items()]
    labelled += [(s[0], s[1], f"training tensor {n!r}") for n, s in train_spans.items()]
    end = 0
    for offset, nbytes, label in sorted(labelled):
        if offset != _align(end):
            how = "overlaps the tensor before it" if offset < end else "is not where it belongs"
            raise _error(
                shown,
                f"corrupt: {label} starts at data offset {offset} and {how}; tensors are "
                f"packed in offset order, each at the next multiple of {ALIGN} (here "
                f"{_align(end)})",
            )
        if not _zeros(blob, data_start + end, data_start + offset):
            raise _error(shown, f"corrupt: the padding before {label} is not zero")
        end = offset + nbytes
    if end != data_len:
        raise _error(
            shown, f"corrupt: the last {data_len - end} bytes of the data section are no tensor's"
        )


def _array(shown, blob: bytes, data_start: int, label: str, span) -> np.ndarray:
    offset, nbytes, shape, dtype = span
    if dtype == INT8:
        a = np.frombuffer(blob, np.int8, nbytes, data_start + offset).reshape(shape)
        a.flags.writeable = False
        where = minus_128(a)
        if where is not None:
            raise _error(
                shown, f"{label} holds -128 at index {where}; int8 rows are symmetric, -127..127"
            )
        return a
    if nbytes == 0:
        a = np.zeros(shape, np.float32)
    else:
        a = np.frombuffer(blob, DTYPE, nbytes // 4, data_start + offset).reshape(shape)
        if a.dtype != np.float32 or not a.flags.aligned:  # a big-endian host, or odd memory
            a = a.astype(np.float32)
    a.flags.writeable = False
    bad = _first_nonfinite(a)
    if bad is not None:
        raise _error(
            shown, f"{label} holds {a[bad]} at index {bad}; model files hold finite values only"
        )
    return a


# ---------------------------------------------------------------------------- shared


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _zeros(blob: bytes, start: int, end: int) -> bool:
    return blob.count(0, start, end) == end - start


def _training_limit(param_bytes: int) -> int:
    return TRAINING_FACTOR * param_bytes + TRAINING_SLACK_BYTES


def _config_limit_problem(config: ModelConfig) -> str | None:
    for key, limit in (
        ("vocab_size", MAX_VOCAB_SIZE),
        ("emb_size", MAX_WIDTH),
        ("hidden_size", MAX_WIDTH),
        ("num_layers", MAX_LAYERS),
    ):
        if getattr(config, key) > limit:
            return f"{key} {getattr(config, key)} is more than the format's limit of {limit}"
    return None


def _first_nonfinite(a: np.ndarray) -> tuple | None:
    """Index of the first NaN or infinity in a, or None; never a temporary as big as a."""
    flat = a.reshape(-1)
    for start in range(0, flat.size, _FINITE_CHUNK):
        ok = np.isfinite(flat[start : start + _FINITE_CHUNK])
        if not ok.all():
            i = start + int(np.argmin(ok))
            return tuple(int(j) for j in np.unravel_index(i, a.shape))
    return None


def _plain_problem(root, label: str) -> str | None:
    """What makes root not plain msgpack data (None, bool, 64-bit int, float, str, bytes,
    lists and dicts with str keys, nested at most MAX_DEPTH deep), or None if it is.

    Iterative, depth first with one iterator per open container: a hostile file may nest
    up to msgpack's limit of 1024 levels, deeper than Python's recursion limit, and its
    memory grows with the nesting, never with the number of values (a label is made only
    for the problem found)."""
    lo, hi = _INT_RANGE
    path: list = []  # the keys from root down to the container being walked

    def where(*last) -> str:
        return label + "".join(f"[{_repr.repr(key)}]" for key in (*path, *last))

    def leaf_problem(obj, *last) -> str | None:
        if isinstance(obj, int) and not isinstance(obj, bool):
            if lo <= obj < hi:
                return None
            return f"{where(*last)} is {_repr.repr(obj)}, outside the 64-bit range msgpack stores"
        if isinstance(obj, _PLAIN_LEAVES):
            return None
        return (
            f"{where(*last)} has type {type(obj).__module__}.{type(obj).__qualname__}, which "
            "a model file cannot store (only None, bool, int, float, str, bytes, lists and "
            "dicts with str keys)"
        )

    def items(obj):  # (key, value) pairs of a container, or None for a leaf
        if isinstance(obj, dict):
            return iter(obj.items())
        if isinstance(obj, list) or type(obj) is tuple:  # not msgpack.ExtType, a namedtuple
            return enumerate(obj)
        return None

    top = items(root)
    if top is None:
        return leaf_problem(root)
    stack = [(top, isinstance(root, dict))]
    while stack:
        pairs, keyed = stack[-1]
        for key, value in pairs:
            if keyed and not isinstance(key, str):
                return f"{where()} has the key {_repr.repr(key)}; keys must be str"
            t = type(value)
            if t is str or t is float or t is bool or value is None or t is bytes:
                continue  # the common leaves, quickly
            if t is int and lo <= value < hi:
                continue
            inner = items(value)
            if inner is None:
                problem = leaf_problem(value, key)
                if problem:
                    return problem
                continue
            if len(stack) >= MAX_DEPTH:
                return f"{label} is nested more than {MAX_DEPTH} levels deep"
            path.append(key)
            stack.append((inner, isinstance(value, dict)))
            break  # walk the inner container first; this one's iterator resumes after
        else:
            stack.pop()
            if path:
                path.pop()
    return None


def _check_plain(shown: str, root, label: str) -> None:
    problem = _plain_problem(root, label)
    if problem:
        raise _error(shown, f"corrupt header: {problem}")


def _names(names: list) -> str:
    shown = ", ".join(_repr.repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
