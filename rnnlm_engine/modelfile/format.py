"""The model file format's constants, its validated contents (ModelFile), and the checks
that the writer and the reader share (docs/FORMAT.md)."""

from __future__ import annotations

import reprlib
import struct
from dataclasses import dataclass

import numpy as np

from ..config import ModelConfig

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


def short(value) -> str:
    """A repr of value cut short (a hostile file's values can be huge)."""
    return _repr.repr(value)


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


def needed_features(config: ModelConfig, int8: bool = False) -> list[str]:
    """The features of FEATURES that a model of this config (int8: with int8 matrices)
    needs of a reader."""
    return (
        (["residual"] if config.residual else [])
        + (["adaptive"] if config.adaptive else [])
        + (["int8"] if int8 else [])
    )


def align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def training_limit(param_bytes: int) -> int:
    return TRAINING_FACTOR * param_bytes + TRAINING_SLACK_BYTES


def config_limit_problem(config: ModelConfig) -> str | None:
    for key, limit in (
        ("vocab_size", MAX_VOCAB_SIZE),
        ("emb_size", MAX_WIDTH),
        ("hidden_size", MAX_WIDTH),
        ("num_layers", MAX_LAYERS),
    ):
        if getattr(config, key) > limit:
            return f"{key} {getattr(config, key)} is more than the format's limit of {limit}"
    return None


def first_nonfinite(a: np.ndarray) -> tuple | None:
    """Index of the first NaN or infinity in a, or None; never a temporary as big as a."""
    flat = a.reshape(-1)
    for start in range(0, flat.size, _FINITE_CHUNK):
        ok = np.isfinite(flat[start : start + _FINITE_CHUNK])
        if not ok.all():
            i = start + int(np.argmin(ok))
            return tuple(int(j) for j in np.unravel_index(i, a.shape))
    return None


def plain_problem(root, label: str) -> str | None:
    """What makes root not plain msgpack data (None, bool, 64-bit int, float, str, bytes,
    lists and dicts with str keys, nested at most MAX_DEPTH deep), or None if it is.

    Iterative, depth first with one iterator per open container: a hostile file may nest
    up to msgpack's limit of 1024 levels, deeper than Python's recursion limit, and its
    memory grows with the nesting, never with the number of values (a label is made only
    for the problem found)."""
    lo, hi = _INT_RANGE
    path: list = []  # the keys from root down to the container being walked

    def where(*last) -> str:
        return label + "".join(f"[{short(key)}]" for key in (*path, *last))

    def leaf_problem(obj, *last) -> str | None:
        if isinstance(obj, int) and not isinstance(obj, bool):
            if lo <= obj < hi:
                return None
            return f"{where(*last)} is {short(obj)}, outside the 64-bit range msgpack stores"
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
                return f"{where()} has the key {short(key)}; keys must be str"
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


def names(names: list) -> str:
    shown = ", ".join(short(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")
