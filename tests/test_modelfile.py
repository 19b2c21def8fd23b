"""Model files: exact round trips, one hand-made file per defect, fuzzing, atomic saves.

Hostile files are built by unpacking a valid file's header, mutating the Python structure
(or the raw bytes), re-packing, and recomputing the lengths and the checksum, so that the
checks after the checksum are exercised and not only the checksum.
"""

from __future__ import annotations

import copy
import hashlib
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rnnlm_engine import atomic, modelfile, msgpack_size
from rnnlm_engine.config import ModelConfig
from rnnlm_engine.errors import ConfigError, ModelFileError, ParameterError, VocabularyError
from rnnlm_engine.modelfile import (
    FORMAT_NAME,
    FORMAT_VERSION,
    HEADER_MEMORY_FACTOR,
    HEADER_MEMORY_SLACK,
    MAGIC,
    load,
    read_info,
    save,
)

REPO = Path(__file__).resolve().parents[1]

# fuzz tests run 10x the profile's examples: each example is a sub-millisecond load
FUZZ = settings(
    max_examples=settings().max_examples * 10,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FIXTURE_OK = settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


# ---------------------------------------------------------------------------- helpers


def random_tensors(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 parameters with awkward values: -0.0, subnormals, extremes."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in config.parameter_shapes().items():
        a = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 3, shape)).astype(np.float32)
        flat = a.reshape(-1)
        specials = [-0.0, 1e-45, -1e-45, 3.4028235e38, -3.4028235e38, 1.1754944e-38]
        flat[: min(len(flat), len(specials))] = specials[: len(flat)]
        out[name] = a
    return out


BASE_CONFIG = ModelConfig("gru", 6, 4, 4, 2, False)


def base_kwargs() -> dict:
    return dict(
        config=BASE_CONFIG,
        tensors=random_tensors(BASE_CONFIG),
        vocab={"kind": "char", "tokens": list("abcdef")},
        metadata={"engine": "rnnlm-engine test", "history": [{"epoch": 1, "loss": 2.5}]},
        training={
            "tensors": {
                "adam.m.decoder.bias": np.arange(6, dtype=np.float32),
                "state.h": np.ones((2, 1, 4), np.float32),
                "empty": np.zeros((0, 3), np.float32),
            },
            "values": {"kind": "checkpoint", "lr": 0.1, "best": float("inf"), "rng": "{}"},
        },
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> bytes:
    """The bytes of a valid model file with vocab, metadata and training state."""
    path = tmp_path_factory.mktemp("base") / "base.rnnlm"
    save(path, **base_kwargs())
    return path.read_bytes()


def align(n: int) -> int:
    return -(-n // 64) * 64


def split(blob: bytes) -> tuple[object, bytes]:
    """(header as Python objects, data section) of a valid file."""
    _, h, n = struct.unpack_from("<8sQQ", blob)
    header = msgpack.unpackb(blob[24 : 24 + h], strict_map_key=False)
    start = align(24 + h)
    return header, blob[start : start + n]


def assemble(header: bytes, data: bytes, *, magic: bytes = MAGIC, pad: bytes | None = None):
    """A file with correct lengths and checksum around raw header and data bytes."""
    if pad is None:
        pad = bytes(align(24 + len(header)) - 24 - len(header))
    body = struct.pack("<8sQQ", magic, len(header), len(data)) + header + pad + data
    return body + hashlib.sha256(body).digest()


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def rechecksum(blob: bytes) -> bytes:
    return blob[:-32] + hashlib.sha256(blob[:-32]).digest()


def write(tmp_path: Path, blob: bytes, name: str = "m.rnnlm") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def expect_error(path, *fragments: str) -> str:
    with pytest.raises(ModelFileError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def assert_same_tensors(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert y.dtype == np.float32 and x.shape == y.shape, name
        assert np.array_equal(x.astype(np.float32).view(np.uint32), y.view(np.uint32)), name


DELETE = object()


def edit(header, path: tuple, value) -> None:
    """Set (or DELETE) header[path[0]][path[1]]... in place."""
    node = header
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def header_edit(*edits):
    """A builder: the base file with edits (path, value) applied to its header."""

    def build(blob: bytes) -> bytes:
        header, data = split(blob)
        for path, value in edits:
            edit(header, path, value)
        return assemble(pack(header), data)

    return build


def raw_header(header_bytes: bytes):
    return lambda blob: assemble(header_bytes, split(blob)[1])


def patch(offset: int, new: bytes, *, fix_checksum: bool = False):
    def build(blob: bytes) -> bytes:
        out = blob[:offset] + new + blob[offset + len(new) :]
        return rechecksum(out) if fix_checksum else out

    return build


def data_edit(fn):
    """A builder: the base file with its data section replaced by fn(header, data)."""

    def build(blob: bytes) -> bytes:
        header, data = split(blob)
        data = fn(header, bytearray(data))
        return assemble(pack(header), bytes(data))

    return build


def put_float(tensor: str, value: float, training: bool = False):
    def fn(header, data):
        entries = header["training"]["tensors"] if training else header["tensors"]
        offset = entries[tensor]["offset"] + 4
        data[offset : offset + 4] = struct.pack("<f", value)
        return data

    return fn


def nested(depth: int, leaf=None):
    for _ in range(depth):
        leaf = [leaf]
    return leaf


# ---------------------------------------------------------------------------- round trips

CONFIGS = [
    ModelConfig("lstm", 50, 8, 8, 1, True),
    ModelConfig("lstm", 50, 8, 16, 3, False),
    ModelConfig("gru", 30, 6, 6, 2, True),
    ModelConfig("gru", 30, 4, 7, 1, False),
    ModelConfig("rnn", 20, 5, 5, 3, True),
    ModelConfig("rnn", 20, 3, 9, 2, False),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.cell}-L{c.num_layers}-t{c.tied}")
def test_round_trip_is_exact(tmp_path, config):
    tensors = random_tensors(config, seed=config.num_layers)
    vocab = {"kind": "word", "tokens": [f"w{i}" for i in range(config.vocab_size)]}
    metadata = {
        "engine": "rnnlm-engine 0.1.0",
        "created": "2024-01-01T00:00:00Z",
        "valid_loss": 4.25,
        "history": [{"epoch": 1, "loss": 5.0}, {"epoch": 2, "loss": float("inf")}],
        "blob": b"\x00\xff",
        "nothing": None,
        "flag": True,
        "big": 2**64 - 1,
        "small": -(2**63),
        "unicode": "naïve ✓ \U0001f600",
    }
    training = {
        "tensors": {f"adam.m.{n}": a * 0.5 for n, a in tensors.items()}
        | {"state.h": np.full((config.num_layers, 3, config.hidden_size), -1.5, np.float32)},
        "values": {"kind": "checkpoint", "lr": 1e-3, "steps": 12, "rng": '{"state": 1}'},
    }
    path = tmp_path / "model.rnnlm"
    save(path, config=config, tensors=tensors, vocab=vocab, metadata=metadata, training=training)
    f = load(str(path))
    assert f.config == config
    assert f.version == (1, 0)  # a plain model stays 1.0, readable by every 1.x reader
    assert f.vocab == vocab
    assert f.metadata == metadata
    assert_same_tensors(tensors, f.tensors)
    assert list(f.tensors) == list(config.parameter_shapes())
    assert set(f.training) == {"tensors", "values"}
    assert f.training["values"] == training["values"]
    assert_same_tensors(training["tensors"], f.training["tensors"])
    for a in list(f.tensors.values()) + list(f.training["tensors"].values()):
        assert a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned
        assert not a.flags.writeable


def test_round_trip_without_optional_parts(tmp_path):
    config = ModelConfig("lstm", 10, 4, 4, 1, False)
    tensors = random_tensors(config)
    save(str(tmp_path / "m"), config=config, tensors=tensors)
    f = load(tmp_path / "m")
    assert (f.vocab, f.metadata, f.training) == (None, {}, None)
    assert_same_tensors(tensors, f.tensors)


def test_loaded_arrays_cannot_be_made_writeable(tmp_path, base):
    f = load(write(tmp_path, base))
    a = f.tensors["encoder.weight"]
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
    with pytest.raises(ValueError):
        a.flags.writeable = True


def test_save_is_deterministic_and_converts_floats(tmp_path):
    kw = base_kwargs()
    save(tmp_path / "a", **kw)
    as64 = {n: a.astype(np.float64) for n, a in kw["tensors"].items()}
    as64["encoder.weight"] = np.asfortranarray(as64["encoder.weight"])  # not C-contiguous
    save(tmp_path / "b", **(kw | {"tensors": as64}))
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_tuples_are_stored_as_lists(tmp_path):
    kw = base_kwargs() | {"metadata": {"shape": (1, 2), "nested": {"t": ((1,), "a")}}}
    save(tmp_path / "m", **kw)
    assert load(tmp_path / "m").metadata == {"shape": [1, 2], "nested": {"t": [[1], "a"]}}


leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
plain = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
plain_maps = st.dictionaries(st.text(max_size=8), plain, max_size=5)


@FIXTURE_OK
@given(metadata=plain_maps, values=plain_maps, vocab=st.none() | plain_maps, seed=st.integers(0, 9))
def test_round_trip_property(tmp_path, metadata, values, vocab, seed):
    cells = ["rnn", "gru", "lstm"]
    size = 2 + seed
    config = ModelConfig(cells[seed % 3], 2 + seed, size, size, 1 + seed % 3, seed % 2 == 0)
    tensors = random_tensors(config, seed)
    training = {"tensors": {"m": np.full((seed,), seed, np.float32)}, "values": values}
    save(
        tmp_path / "p",
        config=config,
        tensors=tensors,
        vocab=vocab,
        metadata=metadata,
        training=training,
    )
    f = load(tmp_path / "p")
    assert (f.config, f.vocab, f.metadata, f.training["values"]) == (
        config,
        vocab,
        metadata,
        values,
    )
    assert_same_tensors(tensors, f.tensors)
    assert_same_tensors(training["tensors"], f.training["tensors"])


# ---------------------------------------------------------------------------- versions


def test_newer_major_is_refused(tmp_path, base):
    path = write(tmp_path, header_edit((("version",), [3, 0]))(base))
    message = expect_error(path)
    assert message == (
        f"{path}: written by a newer rnnlm-engine (format 3.x); this reader supports 1.x "
        "and 2.x: upgrade rnnlm-engine"
    )
    assert FORMAT_VERSION == (2, 0)


RESIDUAL_CONFIG = ModelConfig("gru", 7, 4, 4, 2, residual=True)


def test_a_residual_model_is_a_format_2_file_that_lists_it(tmp_path):
    tensors = random_tensors(RESIDUAL_CONFIG)
    save(tmp_path / "r", config=RESIDUAL_CONFIG, tensors=tensors)
    f = load(tmp_path / "r")
    assert f.version == (2, 0) and f.config == RESIDUAL_CONFIG
    assert read_info(tmp_path / "r")["features"] == ["residual"]
    assert_same_tensors(tensors, f.tensors)
    # what a 1.0 reader sees: a newer major, which it refuses (it would drop the unknown
    # config key "residual" and compute a plain model)
    blob = (tmp_path / "r").read_bytes()
    header = msgpack.unpackb(blob[24 : 24 + int.from_bytes(blob[8:16], "little")])
    assert header["version"] == [2, 0] and header["features"] == ["residual"]
    assert header["config"]["residual"] is True


@pytest.mark.parametrize(
    "edits, message",
    [
        ([(("features",), ["residual", "sparse"])], "needs 'sparse', which this rnnlm-engine"),
        ([(("features",), [])], "'features' lists  but the config needs 'residual'"),
        ([(("features",), DELETE)], "'features' is None, not a list of names"),
        ([(("features",), "residual")], "'features' is 'residual', not a list"),
        ([(("features",), [1])], "not a list of names"),
        ([(("features",), ["residual", "residual"])], "lists 'residual' more than once"),
        ([(("config", "residual"), False)], "lists 'residual' but the config needs none"),
        ([(("config", "residual"), 1)], "residual is 1, not a bool"),
        ([(("version",), [1, 0]), (("features",), DELETE)], "a format 1.x file cannot hold"),
        ([(("version",), [1, 3])], "a format 1.x file cannot hold a model that needs residual"),
    ],
)
def test_damaged_features_are_refused(tmp_path, edits, message):
    save(tmp_path / "r", config=RESIDUAL_CONFIG, tensors=random_tensors(RESIDUAL_CONFIG))
    blob = header_edit(*edits)((tmp_path / "r").read_bytes())
    expect_error(write(tmp_path, blob), message)


ADAPTIVE_CONFIG = ModelConfig("lstm", 12, 4, 8, 1, cutoffs=(4, 8), div_value=2.0)


@pytest.mark.parametrize(
    "edits, message",
    [
        ([(("features",), [])], "'features' lists  but the config needs 'adaptive'"),
        ([(("config", "cutoffs"), [8, 4])], "cutoffs must increase strictly"),
        ([(("config", "cutoffs"), [4, 12])], "[1, 11]; got [4, 12]"),
        ([(("config", "cutoffs"), "4,8")], "cutoffs is '4,8', not a list of integers"),
        ([(("config", "cutoffs"), list(range(1, 100)))], "not a list of integers"),
        ([(("config", "cutoffs"), [4])], "decoder.tail.1.0.weight"),
        ([(("config", "div_value"), "2")], "div_value is '2', not a number"),
        ([(("config", "div_value"), 0.0)], "div_value must be a positive number"),
        ([(("config", "div_value"), 4.0)], "tail cluster 1 would project to"),
        ([(("config", "head_bias"), 1)], "head_bias is 1, not a bool"),
        (
            [(("version",), [1, 0]), (("features",), DELETE)],
            "cannot hold a model that needs adaptive",
        ),
    ],
)
def test_damaged_adaptive_files_are_refused(tmp_path, edits, message):
    save(tmp_path / "a", config=ADAPTIVE_CONFIG, tensors=random_tensors(ADAPTIVE_CONFIG))
    assert read_info(tmp_path / "a")["features"] == ["adaptive"]
    blob = header_edit(*edits)((tmp_path / "a").read_bytes())
    expect_error(write(tmp_path, blob), message)


def test_older_major_is_refused(tmp_path, base):
    expect_error(write(tmp_path, header_edit((("version",), [0, 3]))(base)), "format 0.3 is not")


def test_newer_minor_with_unknown_keys_is_accepted(tmp_path, base):
    blob = header_edit(
        (("version",), [1, 7]),
        (("future",), {"anything": [1, 2, {"x": b"y"}]}),
        (("config", "dropout"), 0.25),
        (("tensors", "decoder.bias", "compression"), None),
        (("training", "future"), "ignored"),
    )(base)
    f = load(write(tmp_path, blob))
    assert f.version == (1, 7)
    expected = load(write(tmp_path, base, "base"))
    assert f.config == expected.config
    assert_same_tensors(expected.tensors, f.tensors)


def test_missing_optional_keys_default(tmp_path, base):
    header, data = split(base)
    for key in ("vocab", "metadata", "training"):
        del header[key]
    end = max(e["offset"] + e["nbytes"] for e in header["tensors"].values())
    blob = assemble(pack(header), data[:end])  # without the training tensors' bytes
    f = load(write(tmp_path, blob))
    assert (f.vocab, f.metadata, f.training) == (None, {}, None)
    f = load(write(tmp_path, header_edit((("metadata",), None))(base)))
    assert f.metadata == {}


# ---------------------------------------------------------------------------- defects

TENSOR = ("tensors", "rnn.weight_hh_l1")
TRAIN = ("training", "tensors", "state.h")


def corrupt_byte(offset: int):
    def build(blob: bytes) -> bytes:
        i = offset % len(blob)
        return blob[:i] + bytes([blob[i] ^ 0x10]) + blob[i + 1 :]

    return build


def nonzero_header_padding(blob: bytes) -> bytes:
    header, data = split(blob)
    header["pad"] = "x"  # make sure the header does not end on a multiple of 64
    raw = pack(header)
    if (24 + len(raw)) % 64 == 0:
        header["pad"] = "xy"
        raw = pack(header)
    pad = b"\x01" + bytes(align(24 + len(raw)) - 25 - len(raw))
    return assemble(raw, data, pad=pad)


def move_tensor(delta: int):
    def build(blob: bytes) -> bytes:
        header, data = split(blob)
        header["tensors"]["rnn.weight_hh_l1"]["offset"] += delta
        return assemble(pack(header), data)

    return build


def training_too_big(blob: bytes) -> bytes:
    header, data = split(blob)
    n = modelfile.TRAINING_SLACK_BYTES // 4 + 10_000  # the base model: a few hundred parameters
    offset = align(len(data))
    header["training"]["tensors"]["huge"] = {
        "dtype": "<f4",
        "shape": [n],
        "offset": offset,
        "nbytes": 4 * n,
    }
    return assemble(pack(header), data + bytes(offset - len(data) + 4 * n))


def overlong(blob: bytes) -> bytes:
    header, data = split(blob)
    return assemble(pack(header), data + bytes(64))


def nonzero_tensor_padding(blob: bytes) -> bytes:
    header, data = split(blob)
    entries = sorted(header["tensors"].values(), key=lambda e: e["offset"])
    for e in entries:
        end = e["offset"] + e["nbytes"]
        if end % 64:
            data = data[:end] + b"\x01" + data[end + 1 :]
            return assemble(pack(header), data)
    raise AssertionError("no padding in the base file")


DEFECTS = {
    # envelope, before the checksum
    "empty": (lambda b: b"", "not an rnnlm-engine model file: the file is empty"),
    "text": (lambda b: b"cell = lstm\nhidden = 200\n" * 4, "not an rnnlm-engine model file"),
    "bad magic": (lambda b: b"\x89RNNLM\n\n" + b[8:], "not an rnnlm-engine model file"),
    "magic only": (lambda b: MAGIC, "truncated"),
    "shorter than the preamble": (lambda b: b[:40], "truncated"),
    "header length 0": (patch(8, struct.pack("<Q", 0)), "header length 0 is outside"),
    "header length 2**63": (patch(8, struct.pack("<Q", 2**63)), "is outside 1.."),
    "data length 2**64-1": (patch(16, struct.pack("<Q", 2**64 - 1)), "truncated: the file is"),
    "truncated": (lambda b: b[:-100], "truncated: the file is"),
    "truncated by one byte": (lambda b: b[:-1], "truncated: the file is"),
    "trailing bytes": (lambda b: b + b"\0", "corrupt: 1 unexpected byte(s) after the end"),
    "flipped data bit": (corrupt_byte(-40), "corrupt: checksum mismatch"),
    "flipped header bit": (corrupt_byte(30), "corrupt: checksum mismatch"),
    "flipped digest bit": (corrupt_byte(-1), "corrupt: checksum mismatch"),
    # msgpack
    "invalid msgpack": (raw_header(b"\xc1"), "corrupt header: not valid msgpack"),
    "truncated msgpack": (raw_header(b"\x82\xa6format"), "corrupt header: "),
    "extra data after the map": (raw_header(pack({}) + b"\xc0"), "extra bytes after its"),
    "ext type": (raw_header(pack({"x": msgpack.ExtType(1, b"ab")})), "corrupt header: "),
    "timestamp": (raw_header(b"\x81\xa1t\xd6\xff\x00\x00\x00\x00"), "corrupt header: "),
    "nested 5000 deep": (raw_header(b"\x91" * 5000 + b"\xc0"), "nested deeper than msgpack"),
    "invalid utf-8": (raw_header(b"\x81\xa6format\xa2\xff\xfe"), "corrupt header: "),
    "int map key": (raw_header(pack({1: 2})), "corrupt header: "),
    "array of 2**32-1": (raw_header(b"\xdd\xff\xff\xff\xff"), "corrupt header: "),
    "map of 2**32-1": (raw_header(b"\xdf\xff\xff\xff\xff"), "corrupt header: "),
    "str of 2**32-1": (raw_header(b"\xdb\xff\xff\xff\xffabc"), "corrupt header: "),
    "bin of 2**32-1": (raw_header(b"\xc6\xff\xff\xff\xffabc"), "corrupt header: "),
    "nonzero header padding": (nonzero_header_padding, "padding after the header is not zero"),
    # top level
    "top level a list": (raw_header(pack([FORMAT_NAME, [1, 0]])), "a list, not a map"),
    "top level nil": (raw_header(pack(None)), "a NoneType, not a map"),
    "format missing": (header_edit((("format",), DELETE)), "format is None"),
    "format wrong": (header_edit((("format",), "other model")), "format is 'other model'"),
    "format bytes": (header_edit((("format",), FORMAT_NAME.encode())), "format is b'rnnlm"),
    "version missing": (header_edit((("version",), DELETE)), "no format version"),
    "version a string": (header_edit((("version",), "1.0")), "malformed format version '1.0'"),
    "version one number": (header_edit((("version",), [1])), "malformed format version [1]"),
    "version three numbers": (header_edit((("version",), [1, 0, 0])), "malformed format"),
    "version negative": (header_edit((("version",), [1, -1])), "malformed format version"),
    "version floats": (header_edit((("version",), [1.0, 0])), "malformed format version"),
    "version bools": (header_edit((("version",), [True, False])), "malformed format version"),
    "version huge": (header_edit((("version",), [2**64 - 1, 0])), "malformed format version"),
    "config missing": (header_edit((("config",), DELETE)), "no 'config'"),
    "tensors missing": (header_edit((("tensors",), DELETE)), "no 'tensors'"),
    # config
    "config a list": (header_edit((("config",), [1, 2])), "'config' is not a map"),
    "config key missing": (
        header_edit((("config", "hidden_size"), DELETE)),
        "invalid config: config is missing hidden_size",
    ),
    "config bytes key": (header_edit((("config", b"x"), 1)), "has the key b'x'; keys must be str"),
    "cell unknown": (header_edit((("config", "cell"), "transformer")), "cell must be one of"),
    "cell huge": (header_edit((("config", "cell"), "x" * 100_000)), "not a cell name"),
    "cell a number": (header_edit((("config", "cell"), 4)), "cell is 4, not a cell name"),
    "vocab_size a string": (
        header_edit((("config", "vocab_size"), "6")),
        "vocab_size is '6', not an integer",
    ),
    "vocab_size a bool": (header_edit((("config", "vocab_size"), True)), "not an integer"),
    "vocab_size a float": (header_edit((("config", "vocab_size"), 6.0)), "not an integer"),
    "vocab_size 1": (header_edit((("config", "vocab_size"), 1)), "at least 2"),
    "vocab_size 0": (header_edit((("config", "vocab_size"), 0)), "positive integer"),
    "vocab_size 10**18": (
        header_edit((("config", "vocab_size"), 10**18)),
        "vocab_size 1000000000000000000 is more than the format's limit",
    ),
    "hidden_size 2**64-1": (header_edit((("config", "hidden_size"), 2**64 - 1)), "limit"),
    "num_layers 10**6": (header_edit((("config", "num_layers"), 10**6)), "num_layers 1000000"),
    "tied a string": (header_edit((("config", "tied"), "yes")), "tied is 'yes', not a bool"),
    "tied with unequal sizes": (
        header_edit((("config", "tied"), True), (("config", "emb_size"), 5)),
        "tied weights need emb_size == hidden_size",
    ),
    "config larger than the data": (
        header_edit((("config", "hidden_size"), 1 << 20)),
        "the config declares",
    ),
    "vocab_size larger than the data": (
        header_edit((("config", "vocab_size"), 100_000_000)),
        "the config declares",
    ),
    # parameter tensors
    "tensors a list": (header_edit((("tensors",), [])), "'tensors' is not a map"),
    "tensor missing": (
        header_edit((("tensors", "decoder.bias"), DELETE)),
        "missing tensor(s) 'decoder.bias'",
    ),
    "tensor unexpected": (
        header_edit(
            (("tensors", "extra"), {"dtype": "<f4", "shape": [], "offset": 0, "nbytes": 4})
        ),
        "unexpected tensor(s) 'extra'",
    ),
    "tensor name bytes": (
        header_edit((("tensors", b"decoder.bias"), {})),
        "unexpected tensor(s) b'decoder.bias'",
    ),
    "decoder.weight in a tied file": (
        header_edit((("config", "tied"), True)),
        "unexpected tensor(s) 'decoder.weight'",
    ),
    "entry a list": (header_edit((TENSOR, [1, 2])), "its entry is not a map"),
    "dtype float64": (header_edit((TENSOR + ("dtype",), "<f8")), "dtype '<f8'; expected '<f4'"),
    "dtype big-endian": (header_edit((TENSOR + ("dtype",), ">f4")), "dtype '>f4'"),
    "dtype missing": (header_edit((TENSOR + ("dtype",), DELETE)), "dtype None"),
    "shape a string": (header_edit((TENSOR + ("shape",), "12x4")), "shape '12x4' is not a list"),
    "shape negative": (header_edit((TENSOR + ("shape",), [-12, -4])), "is not a list of"),
    "shape floats": (header_edit((TENSOR + ("shape",), [12.0, 4.0])), "is not a list of"),
    "shape bools": (header_edit((TENSOR + ("shape",), [True, 4])), "is not a list of"),
    "shape 40 dims": (header_edit((TENSOR + ("shape",), [1] * 40)), "at most 32"),
    "shape 2**62 elements, all zeros": (
        header_edit((("training", "tensors", "empty", "shape"), [0, 2**31, 2**31])),
        "has more than 1099511627776 elements",
    ),
    "shape transposed": (
        header_edit((TENSOR + ("shape",), [4, 12])),
        "shape [4, 12] does not match the config's (12, 4)",
    ),
    "shape 2**40 x 2**40": (
        header_edit((TENSOR + ("shape",), [2**40, 2**40])),
        "shape [1099511627776, 1099511627776] has more than",
    ),
    "nbytes wrong": (header_edit((TENSOR + ("nbytes",), 4 * 48 - 4)), "nbytes 188 does not"),
    "nbytes negative": (header_edit((TENSOR + ("nbytes",), -4)), "nbytes -4 is not a non-neg"),
    "nbytes missing": (header_edit((TENSOR + ("nbytes",), DELETE)), "nbytes None is not"),
    "offset a string": (header_edit((TENSOR + ("offset",), "0")), "offset '0' is not"),
    "offset past the end": (
        header_edit((TENSOR + ("offset",), 2**64 - 1)),
        "lie past the end of the data section",
    ),
    "offset overlapping": (move_tensor(-64), "overlaps the tensor before it"),
    "offset misaligned": (move_tensor(4), "is not where it belongs"),
    "data section too long": (overlong, "bytes of the data section are no tensor's"),
    "nonzero tensor padding": (nonzero_tensor_padding, "padding before tensor"),
    "NaN": (data_edit(put_float("rnn.bias_ih_l0", float("nan"))), "'rnn.bias_ih_l0' holds nan at"),
    "infinity": (data_edit(put_float("encoder.weight", float("inf"))), "holds inf at index (0, 1)"),
    # vocab and metadata
    "vocab a list": (header_edit((("vocab",), ["a", "b"])), "'vocab' is a list, not a map"),
    "vocab bytes key": (header_edit((("vocab", b"kind"), "char")), "vocab has the key b'kind'"),
    "vocab nested 40 deep": (
        header_edit((("vocab", "tokens"), nested(40))),
        "vocab is nested more than 32 levels deep",
    ),
    "metadata a string": (header_edit((("metadata",), "hello")), "'metadata' is a str, not a map"),
    "metadata ext type": (
        header_edit((("metadata", "x"), msgpack.ExtType(5, b""))),
        "metadata['x'] has type msgpack.ext.ExtType",
    ),
    "metadata nested key": (
        header_edit((("metadata", "history", 0, b"epoch"), 1)),
        "metadata['history'][0] has the key b'epoch'",
    ),
    "metadata nested 100 deep": (header_edit((("metadata", "x"), nested(100))), "nested more"),
    # training state
    "training a list": (header_edit((("training",), [])), "'training' is not a map"),
    "training tensors a list": (header_edit((("training", "tensors"), [])), "training 'tensors'"),
    "training values a list": (header_edit((("training", "values"), [])), "training 'values'"),
    "training values bytes key": (
        header_edit((("training", "values", b"lr"), 1.0)),
        "training values has the key b'lr'",
    ),
    "training tensor name bytes": (
        header_edit((("training", "tensors", b"x"), {})),
        "training tensor name b'x'",
    ),
    "training dtype": (
        header_edit((TRAIN + ("dtype",), "<i4")),
        "training tensor 'state.h': dtype",
    ),
    "training shape": (header_edit((TRAIN + ("shape",), [2, 1, -4])), "is not a list of"),
    "training shape 2**19 x 2**20": (
        header_edit((TRAIN + ("shape",), [2**19, 2**20]), (TRAIN + ("nbytes",), 2**41)),
        "lie past the end of the data section",
    ),
    "training nbytes": (header_edit((TRAIN + ("nbytes",), 4)), "nbytes 4 does not equal"),
    "training too big": (training_too_big, "training tensors declare"),
    "training -inf": (
        data_edit(put_float("state.h", float("-inf"), training=True)),
        "training tensor 'state.h' holds -inf",
    ),
}


@pytest.mark.parametrize("name", list(DEFECTS))
def test_defect(tmp_path, base, name):
    build, fragment = DEFECTS[name]
    expect_error(write(tmp_path, build(base)), fragment)


def test_a_valid_base_loads(tmp_path, base):
    """The defect builders start from this file; without edits it must load."""
    assert load(write(tmp_path, header_edit()(base))).config == BASE_CONFIG


def test_checks_run_in_order(tmp_path, base):
    """A file with several defects reports the first in the documented order."""
    blob = header_edit((("version",), [9, 0]), (("config",), None))(base)
    expect_error(write(tmp_path, blob), "newer rnnlm-engine")
    expect_error(write(tmp_path, blob[:-1] + bytes([blob[-1] ^ 1])), "checksum mismatch")
    expect_error(write(tmp_path, b"junk" + blob[4:-1]), "not an rnnlm-engine model file")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.rnnlm", "no such file; check the path")


def test_folder(tmp_path):
    expect_error(tmp_path, "not a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_named_pipe_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    expect_error(tmp_path / "pipe", "not a regular file")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path, base):
    path = write(tmp_path, base)
    path.chmod(0)
    expect_error(path, "permission denied")


def test_max_bytes(tmp_path, base):
    path = write(tmp_path, base)
    assert load(path, max_bytes=len(base)).config == BASE_CONFIG
    with pytest.raises(ModelFileError, match=r"more than max_bytes=100; pass a larger max_bytes"):
        load(path, max_bytes=100)
    with pytest.raises(ValueError, match="max_bytes"):
        load(path, max_bytes=-1)


def test_header_size_cap(tmp_path, base, monkeypatch):
    path = write(tmp_path, base)
    header_len = struct.unpack_from("<Q", base, 8)[0]
    # the reader and the writer each hold the limit
    monkeypatch.setattr(modelfile.read, "MAX_HEADER_BYTES", header_len - 1)
    monkeypatch.setattr(modelfile.write, "MAX_HEADER_BYTES", header_len - 1)
    expect_error(path, f"header length {header_len} is outside 1..{header_len - 1}")
    with pytest.raises(ModelFileError, match="more than the format's limit"):
        save(tmp_path / "new", **base_kwargs())
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------- fuzzing


def only_model_file_errors(path: Path, blob: bytes) -> None:
    path.write_bytes(blob)
    try:
        f = load(path)
    except ModelFileError as e:
        assert str(path) in str(e)
        return
    scales = f.scales or {}
    for name, a in f.tensors.items():  # a file that loads is fully valid
        assert not a.flags.writeable
        if name in scales:  # an int8 model's matrix: int8 rows, a positive scale each
            assert a.dtype == np.int8 and (a.size == 0 or a.min() >= -127)
            s = scales[name]
            assert s.dtype == np.float32 and s.shape == (a.shape[0],)
            assert np.isfinite(s).all() and (s > 0).all()
        else:
            assert a.dtype == np.float32
            assert np.isfinite(a).all()
    assert list(f.tensors) == list(f.config.parameter_shapes())


@FUZZ
@given(data=st.binary(max_size=3000), prefix=st.sampled_from([b"", MAGIC]))
def test_fuzz_random_bytes(tmp_path, data, prefix):
    only_model_file_errors(tmp_path / "f", prefix + data)


@FUZZ
@given(payload=st.binary(max_size=3000), data=st.binary(max_size=256))
def test_fuzz_random_header_with_valid_envelope(tmp_path, payload, data):
    only_model_file_errors(tmp_path / "f", assemble(payload, data))


def test_every_truncation(tmp_path, base):
    path = tmp_path / "t"
    for n in range(len(base)):
        only_model_file_errors(path, base[:n])


def test_every_header_truncation_with_valid_envelope(tmp_path, base):
    _, h, _ = struct.unpack_from("<8sQQ", base)
    header, data = base[24 : 24 + h], split(base)[1]
    path = tmp_path / "t"
    for n in range(1, h):
        with pytest.raises(ModelFileError, match="corrupt header"):
            path.write_bytes(assemble(header[:n], data))
            load(path)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 7)), min_size=1, max_size=4))
def test_fuzz_bit_flips_fail_the_checksum(tmp_path, base, flips):
    blob = bytearray(base)
    for position, bit in flips:
        blob[position % len(blob)] ^= 1 << bit
    if bytes(blob) != base:
        path = tmp_path / "f"
        path.write_bytes(bytes(blob))
        with pytest.raises(ModelFileError):
            load(path)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 7)), min_size=1, max_size=4))
def test_fuzz_bit_flips_with_recomputed_checksum(tmp_path, base, flips):
    flip_and_load(tmp_path, base, flips)


def flip_and_load(tmp_path, base: bytes, flips) -> None:
    """Bits flipped anywhere before the digest, the digest recomputed: a ModelFileError
    or a valid load."""
    blob = bytearray(base)
    for position, bit in flips:
        blob[position % (len(blob) - 32)] ^= 1 << bit
    only_model_file_errors(tmp_path / "f", rechecksum(bytes(blob)))


def all_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from all_paths(value, prefix + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from all_paths(value, prefix + (i,))


ABSURD = [
    -1, 0, 1, 3, 2**31, 2**40, 2**63 - 1, 2**64 - 1, -(2**63), 10**18, 0.5, float("nan"),
    float("inf"), True, None, "", "<f4", ">f4", "lstm", FORMAT_NAME, "x" * 5000, b"", b"\xff",
    [], {}, [1, 0], [2, 0], [0], [-1], [2**40, 2**40], [2**64 - 1], [1] * 33, nested(200),
    {"a": nested(31)}, {"dtype": "<f4", "shape": [1], "offset": 0, "nbytes": 4},
    {"tensors": {}, "values": {}}, msgpack.ExtType(3, b""),
]  # fmt: skip
mutations = st.sampled_from(ABSURD) | plain | st.just(DELETE)


@pytest.fixture(scope="module")
def residual_base(tmp_path_factory) -> bytes:
    """A valid format-2 file (a residual model: 'features' and config['residual'])."""
    path = tmp_path_factory.mktemp("residual") / "r.rnnlm"
    config = ModelConfig("lstm", 6, 3, 3, 2, residual=True)
    save(path, config=config, tensors=random_tensors(config), vocab={"kind": "x"})
    return path.read_bytes()


@pytest.fixture(scope="module")
def adaptive_base(tmp_path_factory) -> bytes:
    """A valid format-2 file of an adaptive-softmax model (config cutoffs, div_value,
    head_bias; features ['adaptive']; decoder.head / decoder.tail tensors)."""
    path = tmp_path_factory.mktemp("adaptive") / "a.rnnlm"
    config = ModelConfig("gru", 9, 3, 8, 1, cutoffs=(3, 6), div_value=2.0, head_bias=True)
    save(path, config=config, tensors=random_tensors(config))
    return path.read_bytes()


def int8_file(path, config: ModelConfig, seed: int = 0) -> None:
    """An int8 model file (feature "int8": int8 matrices, float32 scales and biases)."""
    from rnnlm_engine.quantize import quantize_rows

    tensors, scales = {}, {}
    for name, a in random_tensors(config, seed).items():
        if a.ndim == 2:
            small = np.clip(a, -1e3, 1e3)  # quantize_rows refuses nothing finite; keep it tame
            tensors[name], scales[name] = quantize_rows(small, name)
        else:
            tensors[name] = a
    save(path, config=config, tensors=tensors, scales=scales, vocab={"kind": "x"})


@pytest.fixture(scope="module")
def int8_base(tmp_path_factory) -> bytes:
    """A valid int8 model file of an adaptive model (features ['adaptive', 'int8'])."""
    path = tmp_path_factory.mktemp("int8") / "q.rnnlm"
    int8_file(path, ModelConfig("lstm", 9, 3, 4, 2, cutoffs=(3, 6), div_value=2.0))
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzz_int8_header_mutations(tmp_path, int8_base, data):
    mutate_and_load(tmp_path, int8_base, data)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 7)), min_size=1, max_size=4))
def test_fuzz_int8_bit_flips_with_recomputed_checksum(tmp_path, int8_base, flips):
    flip_and_load(tmp_path, int8_base, flips)


def test_an_int8_file_is_format_2_with_its_feature(tmp_path, int8_base):
    """A 1.x reader refuses it (major 2), and this reader reads int8 rows and scales."""
    header, _ = split(int8_base)
    assert header["version"] == [2, 0] and header["features"] == ["adaptive", "int8"]
    assert header["tensors"]["decoder.head.weight"]["dtype"] == "<i1"
    assert header["tensors"]["rnn.bias_ih_l0"]["dtype"] == "<f4"
    assert set(header["scales"]) == {n for n, e in header["tensors"].items() if e["dtype"] == "<i1"}
    f = load(write(tmp_path, int8_base))
    assert f.scales is not None and f.tensors["encoder.weight"].dtype == np.int8
    info = read_info(write(tmp_path, int8_base))
    assert info["storage"] == "int8" and "int8" in info["features"]
    assert info["weight_bytes"] == sum(a.nbytes for a in f.tensors.values()) + sum(
        a.nbytes for a in f.scales.values()
    )


def scale_bytes(blob: bytes, name: str) -> tuple[int, int]:
    """(file offset, row count) of a tensor's scales in an int8 file."""
    header, _ = split(blob)
    _, h, _ = struct.unpack_from("<8sQQ", blob)
    entry = header["scales"][name]
    return align(24 + h) + entry["offset"], entry["shape"][0]


@pytest.mark.parametrize(
    "value, message",
    [(0.0, "scale 0.0 at row 1"), (-0.5, "scale -0.5 at row 1"), (np.nan, "holds nan"),
     (np.inf, "holds inf")],
)  # fmt: skip
def test_a_damaged_scale_is_refused(tmp_path, int8_base, value, message):
    offset, _ = scale_bytes(int8_base, "rnn.weight_hh_l1")
    blob = bytearray(int8_base)
    blob[offset + 4 : offset + 8] = np.float32(value).tobytes()
    path = write(tmp_path, rechecksum(bytes(blob)))
    expect_error(path, "the scales of 'rnn.weight_hh_l1'", message)


def test_damaged_int8_headers_are_refused(tmp_path, int8_base):
    header, section = split(int8_base)

    def refused(edit, *fragments):
        h = copy.deepcopy(header)
        edit(h)
        expect_error(write(tmp_path, assemble(pack(h), section)), *fragments)

    name = "rnn.weight_hh_l0"
    refused(lambda h: h["scales"][name].update(shape=[3]), "the scales of", "does not match")
    refused(lambda h: h["scales"][name].update(dtype="<f8"), "the scales of", "expected '<f4'")
    refused(lambda h: h["tensors"][name].update(dtype="<f4"), f"tensor {name!r}", "expected '<i1'")
    refused(lambda h: h["scales"].pop(name), "'scales' lists", "exactly its matrices")
    refused(lambda h: h.pop("scales"), "'scales' is None, not a map")
    refused(lambda h: h.update(features=["adaptive"]), "corrupt")  # read as float32
    refused(lambda h: h.update(training={"tensors": {}, "values": {}}), "holds no training state")
    refused(lambda h: h.update(version=[1, 0]), "format 1.x file cannot hold")
    refused(lambda h: h.update(features=["adaptive", "int8", "int8"]), "'int8' more than once")


def test_an_int8_value_of_minus_128_is_refused(tmp_path, int8_base):
    header, _ = split(int8_base)
    _, h, _ = struct.unpack_from("<8sQQ", int8_base)
    offset = align(24 + h) + header["tensors"]["rnn.weight_ih_l1"]["offset"]
    blob = bytearray(int8_base)
    blob[offset + 5] = 0x80  # (16, 4) rows: element (1, 1)
    expect_error(write(tmp_path, rechecksum(bytes(blob))), "holds -128 at index (1, 1)")


def test_save_refuses_bad_int8_tensors(tmp_path):
    from rnnlm_engine.quantize import quantize_rows

    config = ModelConfig("rnn", 5, 3, 3, 1)
    t = random_tensors(config)
    tensors, scales = dict(t), {}
    for name in ("encoder.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "decoder.weight"):
        tensors[name], scales[name] = quantize_rows(np.clip(t[name], -1, 1))
    save(tmp_path / "ok", config=config, tensors=tensors, scales=scales)
    bad = dict(scales, **{"decoder.weight": np.zeros(5, np.float32)})
    with pytest.raises(ParameterError, match="positive and finite"):
        save(tmp_path / "x", config=config, tensors=tensors, scales=bad)
    with pytest.raises(ParameterError, match="exactly the matrices"):
        save(tmp_path / "x", config=config, tensors=tensors, scales={})
    with pytest.raises(ParameterError, match="int8 arrays"):
        save(tmp_path / "x", config=config, tensors=t, scales=scales)
    with pytest.raises(ModelFileError, match="no training state"):
        save(tmp_path / "x", config=config, tensors=tensors, scales=scales,
             training={"tensors": {}, "values": {}})  # fmt: skip
    assert not (tmp_path / "x").exists()


@FUZZ
@given(data=st.data())
def test_fuzz_adaptive_header_mutations(tmp_path, adaptive_base, data):
    mutate_and_load(tmp_path, adaptive_base, data)


@FUZZ
@given(data=st.data())
def test_fuzz_header_mutations(tmp_path, base, data):
    mutate_and_load(tmp_path, base, data)


@FUZZ
@given(data=st.data())
def test_fuzz_format_2_header_mutations(tmp_path, residual_base, data):
    mutate_and_load(tmp_path, residual_base, data)


def mutate_and_load(tmp_path, base: bytes, data) -> None:
    """One to three absurd values put anywhere in the header: a ModelFileError or a load."""
    header, section = split(base)
    paths = [p for p in all_paths(header) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        value = data.draw(mutations)
        node = header
        try:
            for key in path[:-1]:
                node = node[key]
            if value is DELETE:
                del node[path[-1]]
            else:
                node[path[-1]] = copy.deepcopy(value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    if data.draw(st.booleans()):
        section = section + bytes(data.draw(st.integers(0, 200)))
    only_model_file_errors(tmp_path / "f", assemble(pack(header), section))


@FUZZ
@given(
    name=st.sampled_from(["rnn.weight_hh_l1", "decoder.weight", "state.h", "empty"]),
    key=st.sampled_from(["shape", "offset", "nbytes"]),
    value=st.integers(-(2**63), 2**64 - 1) | st.lists(st.integers(0, 2**64 - 1), max_size=5),
)
def test_fuzz_absurd_sizes(tmp_path, base, name, key, value):
    header, section = split(base)
    table = header["tensors"] if name in header["tensors"] else header["training"]["tensors"]
    table[name][key] = value
    only_model_file_errors(tmp_path / "f", assemble(pack(header), section))


# ---------------------------------------------------------------------------- memory
# load() promises: a file of N bytes with a header of H bytes takes at most N (the bytes
# read) + HEADER_MEMORY_FACTOR x H + HEADER_MEMORY_SLACK, whatever the bytes. These tests
# measure the peak with tracemalloc on hostile headers of about 100 KB: before the bound,
# 1-byte empty lists took 207 x the file's size (the unpacked lists, then a label each in
# the plain-value check), tiny maps 215 x, negative fixints 41 x.

# str keys that msgpack interns are interned here first: a new key can grow Python's table
# of interned strings, a one-off cost of the interpreter that no input bound can include
KEYS = [sys.intern(k) for k in ("", "a", "bb", "key", "epoch", "loss")]


def peak_bytes(fn) -> tuple[int, object]:
    """The most memory fn() held at once while it ran (tracemalloc), and its result or
    the ModelFileError it raised."""
    tracemalloc.start()  # counts what is allocated from now on
    try:
        try:
            result = fn()
        except ModelFileError as e:
            result = e
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, result


def promised(blob: bytes) -> int:
    """The most that load() may take for this file, by its docstring."""
    header_len = struct.unpack_from("<Q", blob, 8)[0]
    return len(blob) + HEADER_MEMORY_FACTOR * header_len + HEADER_MEMORY_SLACK


def many_training_tensors(n: int):
    """A builder: the base file with n more (empty) training tensors."""
    entry = {"dtype": "<f4", "shape": [0], "offset": 0, "nbytes": 0}

    def build(blob: bytes) -> bytes:
        header, data = split(blob)
        for i in range(n):
            header["training"]["tensors"][f"optimizer.state.{i:08d}.exp_avg_sq"] = entry
        return assemble(pack(header), data)

    return build


K = 100_000  # bytes of hostile values in each header
HOSTILE_HEADERS = {
    # name: (builder, refused for its memory)
    "empty lists": (header_edit((("metadata", "x"), [[]] * K)), True),
    "empty maps": (header_edit((("metadata", "x"), [{}] * K)), True),
    "one-entry maps": (header_edit((("metadata", "x"), [{"": -20}] * (K // 3))), True),
    "negative fixints": (header_edit((("metadata", "x"), [-20] * K)), True),
    "nested empty lists": (header_edit((("metadata", "x"), [[[]]] * (K // 2))), True),
    "1-char Cyrillic strs": (header_edit((("vocab", "tokens"), ["ж"] * (K * 6 // 10))), True),
    "bin-keyed maps": (header_edit((("metadata", "x"), [{b"": None}] * (K // 4))), True),
    "uint16 ints": (header_edit((("metadata", "x"), [1000] * (K // 3))), False),
    "2-char strs": (header_edit((("vocab", "tokens"), ["ab"] * (K // 3))), False),
    "floats in lists": (header_edit((("metadata", "x"), [[1.5]] * (K // 10))), False),
    "float64s": (header_edit((("metadata", "x"), [0.1] * (K // 9))), False),
    "training tensor index": (many_training_tensors(K // 80), False),
}


@pytest.mark.parametrize("name", HOSTILE_HEADERS)
def test_hostile_headers_stay_within_the_memory_bound(tmp_path, base, name):
    build, refused = HOSTILE_HEADERS[name]
    blob = build(base)
    path = write(tmp_path, blob)
    peak, result = peak_bytes(lambda: load(path))
    assert peak <= promised(blob), (name, peak / len(blob))
    if refused:
        assert isinstance(result, ModelFileError), name
        assert "implausibly many tiny values" in str(result) and str(path) in str(result)
        assert peak < 2 * len(blob)  # counted, not unpacked
    else:
        assert isinstance(result, modelfile.ModelFile), result


def word_vocabulary(n: int) -> list[str]:
    rng = np.random.default_rng(5)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(2, 15, n)
    return [f"{''.join(letters[rng.integers(0, 26, k)])}{i}" for i, k in enumerate(lengths)]


LEGIT_HEADERS = {
    "50k words": {"vocab": {"kind": "word", "tokens": word_vocabulary(50_000)}},
    "20k CJK characters": {"vocab": {"kind": "char", "tokens": [chr(0x4E00 + i)
                                                                for i in range(20_000)]}},
    "history of 2000 epochs": {"metadata": {"history": [
        {"epoch": i, "loss": 4.25, "valid_loss": 4.5, "seconds": 12.3, "lr": 2e-3}
        for i in range(2000)
    ]}},
}  # fmt: skip


@pytest.mark.parametrize("name", LEGIT_HEADERS)
def test_large_legitimate_headers_load_within_the_bound(tmp_path, name):
    kw = base_kwargs() | LEGIT_HEADERS[name]
    save(tmp_path / "m", **kw)
    blob = (tmp_path / "m").read_bytes()
    peak, result = peak_bytes(lambda: load(tmp_path / "m"))
    assert isinstance(result, modelfile.ModelFile), result
    assert result.vocab == kw["vocab"] and result.metadata == kw["metadata"]
    assert peak <= promised(blob)


amplified_leaves = st.sampled_from(
    [None, True, 0, 5, 200, -3, -20, 1000, 2**40, -(2**63), 2**64 - 1, 1.5, "", "a", "ab",
     "é", "ж", "中", "😀", "word", "a" * 40 + "😀", b"", b"xy"]
)  # fmt: skip
amplified = st.recursive(
    amplified_leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.binary(max_size=3), inner, max_size=4)
        # one value packed many times: as many objects once unpacked
        | st.tuples(inner, st.sampled_from([2, 30, 1000, 4000])).map(lambda t: [t[0]] * t[1])
    ),
    max_leaves=12,
)


def packed_count(obj, seen=None) -> int:
    """How many msgpack objects obj packs into (shared values counted every time)."""
    seen = {} if seen is None else seen
    if id(obj) not in seen:
        if isinstance(obj, list):
            seen[id(obj)] = 1 + sum(packed_count(x, seen) for x in obj)
        elif isinstance(obj, dict):
            seen[id(obj)] = 1 + sum(1 + packed_count(v, seen) for v in obj.values())
        else:
            seen[id(obj)] = 1
    return seen[id(obj)]


@settings(max_examples=min(settings().max_examples, 40))  # each unpacks up to 20,000 objects
@given(value=amplified)
def test_counted_header_memory_bounds_what_unpacking_takes(value):
    """The count that load() checks before it unpacks a header is an upper bound of what
    msgpack then allocates (give or take msgpack's own few hundred bytes)."""
    assume(packed_count(value) <= 20_000)
    packed = pack({"metadata": value})
    n, blob = len(packed), b"\0" * 24 + packed
    counted = msgpack_size.unpacked_size(blob, 24, 24 + n, 1 << 62)
    for _ in range(2):  # the second: a first call can allocate caches
        peak, _ = peak_bytes(lambda: modelfile.read._unpack_header("f", blob, n))
    assert peak <= counted + 4096, (peak, counted, n)


@pytest.mark.parametrize(
    "header, fails",
    [(b"\x91" * 1023 + b"\x90", False), (b"\x91" * 1024 + b"\x90", True),
     (b"\x91" * 1024 + b"\x00", False), (b"\xdd\xff\xff\xff\xff", True),
     (b"\xdc\x00\x10" + b"\x90" * 8, True), (b"\x92\xd9\x05abc", True),
     (b"\x91\xa2\xc3\x28", True), (b"\x91\xc7\x01\x05x", True), (b"\x90\x90", True),
     (b"\xdf\x7f\xff\xff\xff", True), (b"\x92\xc1\x90", True)],
)  # fmt: skip
def test_counting_follows_unpacking_to_its_limits(header, fails):
    """As deep as msgpack goes and one more, truncated, oversized, invalid UTF-8, extension,
    trailing or never-used bytes: the count covers what msgpack allocates before it ends or
    fails, and the error is the usual one."""
    n = len(header)
    counted = msgpack_size.unpacked_size(header, 0, n, 1 << 62)
    peak, result = peak_bytes(lambda: modelfile.read._unpack_header("f", b"\0" * 24 + header, n))
    assert peak <= counted + 4096
    assert isinstance(result, ModelFileError) == fails
    if fails:
        assert "corrupt header" in str(result)


def test_headers_over_max_header_bytes_are_refused_unless_allowed(tmp_path, base):
    path = write(tmp_path, base)
    header_len = struct.unpack_from("<Q", base, 8)[0]
    assert load(path, max_header_bytes=header_len).config == BASE_CONFIG
    for fn in (load, read_info):
        with pytest.raises(
            ModelFileError,
            match=rf"is {header_len} bytes, more than max_header_bytes={header_len - 1}; "
            rf"pass max_header_bytes={header_len} \(or more\) to load\(\) if you trust",
        ):
            fn(path, max_header_bytes=header_len - 1)
    with pytest.raises(ValueError, match="max_header_bytes"):
        load(path, max_header_bytes=-1)
    # the default: a header of 16 MiB + 1 (a format 1.0 file, valid up to 64 MiB) is
    # refused before its checksum is computed, and loads when allowed
    assert modelfile.DEFAULT_MAX_HEADER_BYTES == 16 << 20
    kw, big_len = base_kwargs(), 1 << 20
    kw["metadata"] = {"blob": bytes(big_len)}
    for _ in range(2):  # grow the blob until the header is 16 MiB + 1 bytes
        kw["metadata"]["blob"] = bytes(len(kw["metadata"]["blob"]) + (16 << 20) + 1 - big_len)
        save(tmp_path / "big", **kw)
        big_len = struct.unpack_from("<Q", (tmp_path / "big").read_bytes(), 8)[0]
    assert big_len == (16 << 20) + 1
    expect_error(tmp_path / "big", "more than max_header_bytes=16777216")
    f = load(tmp_path / "big", max_header_bytes=big_len)
    assert len(f.metadata["blob"]) == len(kw["metadata"]["blob"])


# ---------------------------------------------------------------------------- save checks


def test_save_validates_config(tmp_path):
    kw = base_kwargs()
    with pytest.raises(ConfigError, match="config must be a ModelConfig"):
        save(tmp_path / "m", **(kw | {"config": BASE_CONFIG.to_dict()}))
    with pytest.raises(ConfigError, match="vocab_size 1000000000 is more than the format's"):
        save(tmp_path / "m", **(kw | {"config": ModelConfig("rnn", 10**9, 2, 2, 1)}))
    assert os.listdir(tmp_path) == []


SAVE_DEFECTS = [
    ("tensors", lambda t: {k: t[k] for k in list(t)[:-1]}, ParameterError, "missing parameter"),
    ("tensors", lambda t: t | {"x": np.zeros(1)}, ParameterError, "unexpected parameter(s) 'x'"),
    ("tensors", lambda t: t | {"decoder.bias": np.zeros(7)}, ParameterError, "has shape (7,)"),
    ("tensors", lambda t: t | {"decoder.bias": np.zeros(6, int)}, ParameterError, ".astype("),
    ("tensors", lambda t: t | {"decoder.bias": ["a"] * 6}, ParameterError, "dtype <U1"),
    ("tensors", lambda t: t | {"decoder.bias": np.full(6, np.nan)}, ParameterError, "holds nan"),
    ("tensors", lambda t: t | {"decoder.bias": np.full(6, 1e39)}, ParameterError, "holds inf"),
    ("tensors", lambda t: list(t.values()), ParameterError, "must be a dict"),
    ("vocab", lambda v: ["a", "b"], VocabularyError, "vocab must be a dict"),
    ("vocab", lambda v: v | {1: 2}, VocabularyError, "vocab has the key 1; keys must be str"),
    ("metadata", lambda m: [1], ModelFileError, "metadata must be a dict"),
    (
        "metadata",
        lambda m: {"n": np.int64(3)},
        ModelFileError,
        "metadata['n'] has type numpy.int64, which a model file cannot store",
    ),
    ("metadata", lambda m: {"s": {1, 2}}, ModelFileError, "metadata['s'] has type builtins.set"),
    ("metadata", lambda m: {"big": 2**64}, ModelFileError, "outside the 64-bit range"),
    ("metadata", lambda m: {"deep": nested(40)}, ModelFileError, "nested more than 32"),
    ("metadata", lambda m: {"bad": "\udc80"}, ModelFileError, "cannot be stored"),
    ("training", lambda t: [], ModelFileError, "training must be a dict"),
    ("training", lambda t: t | {"other": 1}, ModelFileError, "unknown key(s) 'other'"),
    ("training", lambda t: t | {"tensors": []}, ModelFileError, "training['tensors'] must be"),
    ("training", lambda t: t | {"values": [1]}, ModelFileError, "training['values'] must be"),
    ("training", lambda t: t | {"values": {2: 1}}, ModelFileError, "has the key 2"),
    ("training", lambda t: t | {"tensors": {3: np.zeros(1)}}, ParameterError, "names must be str"),
    (
        "training",
        lambda t: t | {"tensors": {"m": np.zeros(3, np.int8)}},
        ParameterError,
        "dtype int8",
    ),
    (
        "training",
        lambda t: t | {"tensors": {"m": np.zeros(4_200_000, np.float32)}},
        ParameterError,
        "training tensors take 16800000 bytes, more than the format's limit",
    ),
]


@pytest.mark.parametrize("key, change, error, fragment", SAVE_DEFECTS)
def test_save_rejects(tmp_path, key, change, error, fragment):
    kw = base_kwargs()
    kw[key] = change(kw[key])
    with pytest.raises(error) as info:
        save(tmp_path / "m.rnnlm", **kw)
    assert fragment in str(info.value)
    assert os.listdir(tmp_path) == []  # nothing written, no temporary file


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(ModelFileError, match="cannot save .*any previous file"):
        save(tmp_path / "no" / "such" / "m", **base_kwargs())
    assert os.listdir(tmp_path) == []


def test_save_onto_a_folder(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ModelFileError, match="cannot save"):
        save(tmp_path / "d", **base_kwargs())
    assert os.listdir(tmp_path) == ["d"]


# ---------------------------------------------------------------------------- atomic saves


@pytest.fixture
def old_file(tmp_path):
    """A model file already at the target path, and its loaded contents."""
    path = tmp_path / "model.rnnlm"
    kw = base_kwargs()
    save(path, **kw)
    return path, kw


def new_kwargs() -> dict:
    kw = base_kwargs()
    kw["tensors"] = {n: a * 0.5 for n, a in kw["tensors"].items()}
    kw["metadata"] = {"new": True}
    return kw


def assert_old_file_intact(path: Path, kw: dict) -> None:
    f = load(path)
    assert f.metadata == kw["metadata"]
    assert_same_tensors(kw["tensors"], f.tensors)
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind


def test_failing_replace_keeps_the_old_file(old_file, monkeypatch):
    path, kw = old_file

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ModelFileError, match="No space left on device; any previous file"):
        save(path, **new_kwargs())
    monkeypatch.undo()
    assert_old_file_intact(path, kw)


def test_failing_fsync_keeps_the_old_file(old_file, monkeypatch):
    path, kw = old_file

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(ModelFileError, match="Input/output error"):
        save(path, **new_kwargs())
    monkeypatch.undo()
    assert_old_file_intact(path, kw)


def test_interrupt_during_the_write_keeps_the_old_file(old_file, monkeypatch):
    path, kw = old_file
    real = atomic._write_all

    def interrupted(f, pieces):
        def some():
            for i, piece in enumerate(pieces):
                if i == 5:
                    raise KeyboardInterrupt
                yield piece

        real(f, some())

    monkeypatch.setattr(atomic, "_write_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(path, **new_kwargs())
    monkeypatch.undo()
    assert_old_file_intact(path, kw)
    save(path, **new_kwargs())  # and the next save works
    assert load(path).metadata == {"new": True}


@pytest.mark.skipif(not hasattr(os, "chmod") or os.name != "posix", reason="POSIX modes")
def test_save_keeps_permissions(old_file, tmp_path):
    path, _ = old_file
    path.chmod(0o600)
    save(path, **new_kwargs())
    assert path.stat().st_mode & 0o777 == 0o600
    umask = os.umask(0o022)
    try:
        save(tmp_path / "fresh", **new_kwargs())
    finally:
        os.umask(umask)
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o644


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from rnnlm_engine import atomic, modelfile
    from rnnlm_engine.config import ModelConfig

    path, mode = sys.argv[1], sys.argv[2]
    config = ModelConfig("lstm", 4000, 128, 128, 2, False)  # about 6 MB
    rng = np.random.default_rng(1)
    shapes = config.parameter_shapes()
    tensors = {n: rng.standard_normal(s, dtype=np.float32) for n, s in shapes.items()}
    if mode == "pause":  # stop half-way through the tensors, then wait to be killed
        real = atomic._write_all

        def paused(f, pieces):
            def some():
                for i, piece in enumerate(pieces):
                    if i == 8:
                        f.flush()
                        print("PAUSED", flush=True)
                        time.sleep(600)
                    yield piece

            real(f, some())

        atomic._write_all = paused
    else:
        print("SAVING", flush=True)
    for i in range(1, 10**6):  # "loop" saves until killed, each with other values
        modelfile.save(path, config=config, tensors={n: a + i for n, a in tensors.items()},
                       metadata={"round": i})
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("mode", ["pause", "loop"])
def test_killed_save_keeps_a_loadable_file(old_file, mode):
    """SIGKILL in the middle of a large save: the file at the path still loads, whole."""
    path, kw = old_file
    env = os.environ | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", CHILD, str(path), mode]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as child:
        try:
            assert child.stdout.readline().strip() in ("PAUSED", "SAVING")
            deadline = time.monotonic() + 60
            temps: list[str] = []
            while not temps and time.monotonic() < deadline:  # kill while a temporary exists
                temps = [n for n in os.listdir(path.parent) if n.endswith(".tmp")]
            assert temps, "the child never started writing"
            if mode == "loop":
                time.sleep(0.05)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    f = load(path)  # old or one of the child's complete saves, never a partial one
    if mode == "pause":
        assert f.metadata == kw["metadata"]
        assert_same_tensors(kw["tensors"], f.tensors)
        (temp,) = [n for n in os.listdir(path.parent) if n != path.name]
        assert temp.startswith(f".{path.name}.") and temp.endswith(".tmp")
        assert 0 < (path.parent / temp).stat().st_size < 6_000_000
    else:
        assert f.metadata == kw["metadata"] or set(f.metadata) == {"round"}
    save(path, **new_kwargs())  # a leftover temporary file does not get in the way
    assert load(path).metadata == {"new": True}


# ---------------------------------------------------------------------------- read_info


def test_read_info(tmp_path, base):
    path = write(tmp_path, base)
    info = read_info(path)
    assert info == {
        "path": str(path),
        "file_size": len(base),
        "format": FORMAT_NAME,
        "version": (1, 0),
        "features": [],
        "config": BASE_CONFIG.to_dict(),
        "parameters": BASE_CONFIG.num_parameters(),
        "storage": "float32",
        "weight_bytes": 4 * BASE_CONFIG.num_parameters(),
        "vocab": {"kind": "char", "size": 6},
        "metadata": base_kwargs()["metadata"],
        "training": True,
    }


def test_read_info_without_optional_parts(tmp_path):
    config = ModelConfig("rnn", 5, 3, 3, 1, True)
    save(tmp_path / "m", config=config, tensors=random_tensors(config), vocab={"kind": "x"})
    info = read_info(str(tmp_path / "m"))
    assert info["vocab"] == {"kind": "x", "size": None}
    assert (info["metadata"], info["training"]) == ({}, False)


def test_read_info_validates(tmp_path, base):
    path = write(tmp_path, corrupt_byte(-40)(base))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        read_info(path)
