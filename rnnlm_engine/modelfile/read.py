"""Reading a model file: load() and read_info() check every byte of it, in the order of
docs/FORMAT.md ("Checks"), before anything is handed out."""

from __future__ import annotations

import hashlib
import math
import os
import stat

import msgpack
import numpy as np

from ..config import ModelConfig
from ..errors import ConfigError, ModelFileError
from ..msgpack_size import unpacked_size
from ..quantize import int8_names, minus_128, scale_problem
from .format import (
    ALIGN,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DIGEST_SIZE,
    DTYPE,
    FEATURES,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEADER_MEMORY_FACTOR,
    HEADER_MEMORY_SLACK,
    INT8,
    MAGIC,
    MAX_CUTOFFS,
    MAX_ELEMENTS,
    MAX_HEADER_BYTES,
    MAX_NDIM,
    PREAMBLE,
    TRAINING_FACTOR,
    TRAINING_SLACK_BYTES,
    ModelFile,
    align,
    config_limit_problem,
    first_nonfinite,
    names,
    needed_features,
    plain_problem,
    short,
    training_limit,
)


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
        "features": needed_features(f.config, int8=f.scales is not None),
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
    data_start = align(PREAMBLE.size + header_len)
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
            f"not an rnnlm-engine model file: format is {short(fmt)}, expected {FORMAT_NAME!r}",
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
        raise _error(shown, f"missing tensor(s) {names(missing)} that the config needs")
    extra = [name for name in entries if name not in shapes]
    if extra:
        raise _error(shown, f"unexpected tensor(s) {names(extra)} that the config does not have")
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
                raise _error(shown, f"corrupt header: training tensor name {short(name)}")
            label = f"training tensor {name!r}"
            train_spans[name] = _entry(shown, label, entry, data_len, None)
        total, limit = sum(s[1] for s in train_spans.values()), training_limit(param_bytes)
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


def _check_features(shown: str, header: dict, version: tuple[int, int], config) -> bool:
    """A 2.x file lists exactly the features its config needs, all known here, and
    "int8" for int8 matrices; a 1.x file needs none (a 1.0 reader would compute another
    model). Returns whether the file holds int8 matrices."""
    needed = needed_features(config)
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
        raise _error(shown, f"corrupt header: 'features' is {short(listed)}, not a list of names")
    twice = sorted({f for f in listed if listed.count(f) > 1})
    if twice:
        raise _error(shown, f"corrupt header: 'features' lists {names(twice)} more than once")
    unknown = [f for f in listed if f not in FEATURES]
    if unknown:
        raise _error(
            shown,
            f"the model needs {names(unknown)}, which this rnnlm-engine does not know "
            f"(it knows {', '.join(FEATURES)}): upgrade rnnlm-engine",
        )
    int8 = "int8" in listed
    if sorted(set(listed) - {"int8"}) != sorted(needed) or not (needed or int8):
        raise _error(
            shown,
            f"corrupt header: 'features' lists {names(listed)} but the config needs "
            f"{names(needed) if needed else 'none'}",
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
        raise _error(shown, f"corrupt header: 'scales' is {short(raw)}, not a map")
    if sorted(raw, key=repr) != sorted(int8, key=repr):
        raise _error(
            shown,
            f"corrupt header: 'scales' lists {names(list(raw))}; an int8 model has scales "
            f"for exactly its matrices {names(int8)}",
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
        raise _error(shown, f"corrupt header: malformed format version {short(v)}; expected [1, n]")
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
        raise _error(shown, f"invalid config: cell is {short(cell)}, not a cell name")
    for key in ("vocab_size", "emb_size", "hidden_size", "num_layers"):
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _error(shown, f"invalid config: {key} is {short(value)}, not an integer")
    for key in ("tied", "residual", "head_bias"):
        if key in raw and not isinstance(raw[key], bool):
            raise _error(shown, f"invalid config: {key} is {short(raw[key])}, not a bool")
    cutoffs = raw.get("cutoffs")
    if cutoffs is not None and not (
        isinstance(cutoffs, list)
        and 0 < len(cutoffs) <= MAX_CUTOFFS
        and all(isinstance(v, int) and not isinstance(v, bool) for v in cutoffs)
    ):
        raise _error(shown, f"invalid config: cutoffs is {short(cutoffs)}, not a list of integers")
    div = raw.get("div_value")
    if div is not None and (isinstance(div, bool) or not isinstance(div, int | float)):
        raise _error(shown, f"invalid config: div_value is {short(div)}, not a number")
    try:
        config = ModelConfig.from_dict(raw)
    except (ConfigError, TypeError, ValueError) as e:
        raise _error(shown, f"invalid config: {_cut(str(e))}") from None
    problem = config_limit_problem(config)
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
            f"{label}: dtype {short(dtype)}; expected {want!r}"
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
            f"{label}: shape {short(shape)} is not a list of at most {MAX_NDIM} "
            "non-negative integers",
        )
    shape = tuple(shape)
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:  # numpy refuses even an empty [0, 2**62]
        raise _error(
            shown, f"{label}: shape {short(list(shape))} has more than {MAX_ELEMENTS} elements"
        )
    if expected is not None and shape != expected:
        raise _error(shown, f"{label}: shape {list(shape)} does not match the config's {expected}")
    offset, nbytes = entry.get("offset"), entry.get("nbytes")
    for key, value in (("offset", offset), ("nbytes", nbytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _error(shown, f"{label}: {key} {short(value)} is not a non-negative integer")
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
        if offset != align(end):
            how = "overlaps the tensor before it" if offset < end else "is not where it belongs"
            raise _error(
                shown,
                f"corrupt: {label} starts at data offset {offset} and {how}; tensors are "
                f"packed in offset order, each at the next multiple of {ALIGN} (here "
                f"{align(end)})",
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
    bad = first_nonfinite(a)
    if bad is not None:
        raise _error(
            shown, f"{label} holds {a[bad]} at index {bad}; model files hold finite values only"
        )
    return a


def _check_plain(shown: str, root, label: str) -> None:
    problem = plain_problem(root, label)
    if problem:
        raise _error(shown, f"corrupt header: {problem}")


def _zeros(blob: bytes, start: int, end: int) -> bool:
    return blob.count(0, start, end) == end - start


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
