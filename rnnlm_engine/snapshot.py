"""Stream snapshots on the wire: ``Snapshot`` and its versioned msgpack bytes.

A snapshot is hostile input when it comes back (a server restores its clients'
snapshots): ``Snapshot.from_bytes`` reads it without unpacking any container whole,
bounds its tokens before reading them and its memory by SNAPSHOT_MEMORY_FACTOR x its
size, and raises InputError naming the first defect.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from itertools import islice

import msgpack
import numpy as np

from .errors import InputError

SNAPSHOT_FORMAT = "rnnlm-engine stream state"
SNAPSHOT_VERSION = 2  # what to_bytes writes; from_bytes reads versions 1 and 2
# a snapshot's bytes are bounded like a model file's header: nothing unbounded is unpacked
_MAX_SNAPSHOT_BYTES = 1 << 30
DEFAULT_MAX_SNAPSHOT_TOKENS = 1 << 24  # from_bytes refuses more tokens unless told otherwise
# reading a snapshot of N bytes (from_bytes, or restore of bytes) allocates at most
# SNAPSHOT_MEMORY_FACTOR x N + 1 MiB (version 1, a msgpack list of ints, holds a token in as
# little as 1 byte and keeps it in 4; version 2 keeps its 4 bytes a token as they are)
SNAPSHOT_MEMORY_FACTOR = 10
_TOKEN_DTYPES = {"<i4": np.int32, "<i8": np.int64}  # version 2's token blobs
_SNAPSHOT_KEYS = frozenset(
    ("format", "version", "model", "shape", "vocab", "h", "c", "logprobs", "token_dtype")
)


@dataclass(frozen=True, eq=False)
class Snapshot:
    """An immutable copy of a Stream's state: the recurrent state, the log-probabilities
    of the next token (None before the first token), and every token fed so far.

    token_ids: the tokens as a read-only (T,) int32 array (int64 for a vocabulary of more
    than 2**31 tokens); any sequence of non-negative int ids may be given (a read-only
    int32 or int64 array is kept as it is, anything else is copied). ``tokens`` gives them
    as a tuple of int.

    ``to_bytes()`` / ``Snapshot.from_bytes()`` serialise it (msgpack, versioned);
    ``Stream.restore`` refuses a snapshot of another model. Raises InputError for token
    ids that are not non-negative integers."""

    model: str  # the model's fingerprint
    h: np.ndarray  # (L, H) float32, read-only
    c: np.ndarray | None
    logprobs: np.ndarray | None  # (V,) float32, read-only
    token_ids: np.ndarray  # (T,) int32 (or int64), read-only

    version = SNAPSHOT_VERSION  # the format version to_bytes writes

    def __post_init__(self):
        object.__setattr__(self, "token_ids", _token_array(self.token_ids))

    @property
    def tokens(self) -> tuple[int, ...]:
        """Ids of every token fed before the snapshot was taken."""
        return tuple(self.token_ids.tolist())

    def to_bytes(self) -> bytes:
        """The snapshot in format version 2: a msgpack map whose arrays are raw
        little-endian blobs (float32 states and log-probabilities, int32 tokens)."""

        def blob(a):
            return None if a is None else np.ascontiguousarray(a, "<f4").tobytes()

        ids = self.token_ids
        dtype = "<i4" if ids.dtype == np.int32 else "<i8"
        return msgpack.packb(
            {
                "format": SNAPSHOT_FORMAT,
                "version": SNAPSHOT_VERSION,
                "model": self.model,
                "shape": list(self.h.shape),
                "vocab": None if self.logprobs is None else int(self.logprobs.shape[0]),
                "h": blob(self.h),
                "c": blob(self.c),
                "logprobs": blob(self.logprobs),
                "tokens": np.ascontiguousarray(ids, dtype).tobytes(),
                "token_dtype": dtype,
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data, max_tokens: int = DEFAULT_MAX_SNAPSHOT_TOKENS) -> Snapshot:
        """A snapshot from to_bytes() output of this or an earlier engine (format versions
        1 and 2), validated as hostile input: a server may restore its clients' snapshots.

        data: bytes, bytearray or memoryview, at most 1 GiB. max_tokens: snapshots holding
        more tokens are refused before their tokens are read (default
        DEFAULT_MAX_SNAPSHOT_TOKENS, 2**24); raise it for a trusted snapshot of a longer
        stream. Reading N bytes allocates at most SNAPSHOT_MEMORY_FACTOR x N + 1 MiB,
        whatever the bytes: no msgpack container is unpacked whole, and tokens become one
        int array, never a Python object each.

        Raises InputError naming the defect for anything but a valid snapshot, including
        tokens that are not non-negative integers (floats, bools, nil ...)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InputError(f"a snapshot is bytes; got {type(data).__name__}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise InputError(f"max_tokens must be a non-negative int; got {max_tokens!r}")
        try:
            view = memoryview(data).cast("B")  # indexable bytes, no copy
        except TypeError:  # a memoryview that is not C-contiguous
            raise InputError("a snapshot is contiguous bytes") from None
        if len(view) > _MAX_SNAPSHOT_BYTES:
            raise InputError(
                f"snapshot too large: {len(view)} bytes, more than {_MAX_SNAPSHOT_BYTES}"
            )
        try:
            d = _read_fields(view, max_tokens)
        except InputError:
            raise
        except Exception as e:  # msgpack raises several types on bad bytes
            raise InputError(f"not a stream snapshot ({type(e).__name__})") from None
        if d.get("format") != SNAPSHOT_FORMAT:
            raise InputError("not a stream snapshot")
        version = d.get("version")
        if type(version) is int and version > SNAPSHOT_VERSION:
            raise InputError(
                f"stream snapshot version {version}, from a newer rnnlm-engine; this engine "
                f"reads versions 1 and {SNAPSHOT_VERSION}: upgrade rnnlm-engine"
            )
        if type(version) is not int or version not in (1, 2):
            raise InputError(f"malformed stream snapshot: version {_short(version)}")
        missing = [key for key in ("model", "shape", "vocab", "h", "c", "logprobs", "tokens")
                   if key not in d]  # fmt: skip
        if version == 2 and "token_dtype" not in d:
            missing.append("token_dtype")
        if missing:
            raise InputError(f"malformed stream snapshot: no {', '.join(missing)}")
        model, (L, H), vocab = d["model"], d["shape"], d["vocab"]
        if not isinstance(model, str):
            raise InputError("malformed stream snapshot: the model fingerprint is not a str")
        if vocab is not None and (type(vocab) is not int or vocab < 0):
            raise InputError(f"malformed stream snapshot: vocab is {_short(vocab)}")
        tokens = _token_ids(d["tokens"], version, d.get("token_dtype"), max_tokens)
        h = _float_blob(d, "h", (L, H))
        if h is None:
            raise InputError("malformed stream snapshot: no state h")
        c = _float_blob(d, "c", (L, H))
        logprobs = None if vocab is None else _float_blob(d, "logprobs", (vocab,))
        return cls(model, h, c, logprobs, tokens)


class _NotAnId(Exception):
    """A value of a version-1 token list that is not an id below the current limit."""


def _read_fields(view: memoryview, max_tokens: int) -> dict:
    """The known fields of a snapshot's top-level msgpack map, walking it without ever
    unpacking a filled container: the map and shape by their headers, the tokens into an
    int array (version 1) or as one blob (version 2), every other value a scalar, str or
    bin (at most the snapshot's size). Unknown keys are skipped, unread."""
    n = len(view)
    u = msgpack.Unpacker(
        raw=False, max_buffer_size=max(n, 1), max_str_len=n, max_bin_len=n,
        max_array_len=0, max_map_len=0, max_ext_len=0,
    )  # fmt: skip
    u.feed(view)
    entries = u.read_map_header()  # raises for anything but a map
    if entries > 64:
        raise InputError(f"not a stream snapshot (a map of {entries} entries)")
    d: dict = {}
    for _ in range(entries):
        key = u.unpack()
        if not isinstance(key, str):
            raise InputError("not a stream snapshot (a key is not a str)")
        if key in d:
            raise InputError(f"malformed stream snapshot: {key!r} appears twice")
        if key == "tokens":
            d[key] = _read_tokens(u, view, max_tokens)
        elif key == "shape":
            if u.read_array_header() != 2:
                raise InputError("malformed stream snapshot: shape is not [layers, hidden]")
            shape = (u.unpack(), u.unpack())
            if not all(type(x) is int and x >= 0 for x in shape):
                raise InputError("malformed stream snapshot: shape is not [layers, hidden]")
            d[key] = shape
        elif key in _SNAPSHOT_KEYS:
            d[key] = u.unpack()  # a filled container raises: max_array_len=0, max_map_len=0
        else:
            u.skip()  # allocates nothing
    if u.tell() != n:
        raise InputError("not a stream snapshot (bytes after its end)")
    return d


def _read_tokens(u, view: memoryview, max_tokens: int):
    """The tokens field: an int array (a version-1 list, count checked before any token
    is read) or bytes (a version-2 blob, length checked before it is read)."""
    at = u.tell()
    marker = view[at] if at < len(view) else None
    if marker is not None and (0x90 <= marker <= 0x9F or marker in (0xDC, 0xDD)):
        count = u.read_array_header()
        if count > max_tokens:
            raise _too_many(count, max_tokens)
        if count > len(view) - u.tell():  # every item takes at least one byte
            raise InputError("not a stream snapshot (truncated)")
        items = islice(u, count)  # one item at a time: a filled container raises
        ids = array("i")
        try:
            try:
                ids.extend(_plain_ids(items, 1 << 31))
            except _NotAnId as e:
                (x,) = e.args
                if type(x) is not int or not 0 <= x < 1 << 63:
                    raise
                ids = array("q", ids)  # an id of 2**31 or more: a vocabulary that large
                ids.append(x)
                ids.extend(_plain_ids(items, 1 << 63))
        except _NotAnId as e:
            raise _not_an_id(len(ids), e.args[0]) from None
        except ValueError:  # msgpack: a filled container, an extension, bad bytes
            raise _not_an_id(len(ids), _NOT_SHOWN) from None
        if len(ids) != count:
            raise InputError("not a stream snapshot (truncated)")
        a = np.frombuffer(ids, np.intc if ids.typecode == "i" else np.longlong)
        a.flags.writeable = False
        return a
    if marker is not None and marker in (0xC4, 0xC5, 0xC6):
        width = 1 << (marker - 0xC4)
        length = int.from_bytes(view[at + 1 : at + 1 + width], "big")
        if length > 8 * max_tokens:  # before the blob is read; exactly once its dtype is known
            raise _too_many(length // 8, max_tokens)
        return u.unpack()
    raise InputError("malformed stream snapshot: tokens are neither a list nor a blob")


def _plain_ids(items, limit: int):
    """items, each checked to be an int in [0, limit) (not a bool, float or nil)."""
    for x in items:
        if type(x) is not int or not 0 <= x < limit:
            raise _NotAnId(x)
        yield x


_NOT_SHOWN = object()


def _not_an_id(i: int, x) -> InputError:
    shown = "" if x is _NOT_SHOWN else f" {_short(x)},"
    return InputError(
        f"malformed stream snapshot: token {i} is{shown} not a token id (a non-negative integer)"
    )


def _too_many(count: int, max_tokens: int) -> InputError:
    return InputError(
        f"the snapshot holds {count} tokens, more than max_tokens={max_tokens}; pass a "
        "larger max_tokens to Snapshot.from_bytes() or Stream.restore() if you trust it"
    )


def _short(x) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:40] + "..."


def _token_ids(raw, version: int, dtype, max_tokens: int) -> np.ndarray:
    """The (T,) read-only int array of a snapshot's tokens field."""
    if version == 1:
        if not isinstance(raw, np.ndarray):
            raise InputError("malformed stream snapshot: version 1 holds its tokens in a list")
        return raw
    if not isinstance(raw, bytes):
        raise InputError("malformed stream snapshot: version 2 holds its tokens in a blob")
    if dtype not in _TOKEN_DTYPES:
        raise InputError(f"malformed stream snapshot: token_dtype {_short(dtype)}")
    size = np.dtype(dtype).itemsize
    if len(raw) % size:
        raise InputError(f"malformed stream snapshot: a token blob of {len(raw)} bytes")
    if len(raw) // size > max_tokens:
        raise _too_many(len(raw) // size, max_tokens)
    a = np.frombuffer(raw, dtype)
    if a.dtype != _TOKEN_DTYPES[dtype]:  # a big-endian host
        a = a.astype(_TOKEN_DTYPES[dtype])
    if a.size and a.min() < 0:
        raise _not_an_id(int(np.argmax(a < 0)), int(a.min()))
    a.flags.writeable = False
    return a


def _float_blob(d: dict, key: str, shape: tuple) -> np.ndarray | None:
    """A snapshot's float32 array, a read-only view of its blob (None for nil)."""
    b = d[key]
    if b is None:
        return None
    if not isinstance(b, bytes) or len(b) != 4 * math.prod(shape):
        raise InputError(
            f"malformed stream snapshot: {key} is not {4 * math.prod(shape)} bytes of "
            f"float32 {shape}"
        )
    a = np.frombuffer(b, "<f4").reshape(shape)
    if a.dtype != np.float32:  # a big-endian host
        a = a.astype(np.float32)
    a.flags.writeable = False
    return a


def _token_array(tokens) -> np.ndarray:
    """tokens as a read-only 1-D int32 array (int64 if an id needs it): kept as it is if
    it is one already, else copied. Raises InputError unless they are non-negative ints."""
    a = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
    if a.size == 0:
        a = np.empty(0, np.int32)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise InputError(
            f"snapshot tokens must be a 1-D sequence of int ids; got {a.dtype} {a.shape}"
        )
    if a.dtype in (np.int32, np.int64) and a.dtype.isnative and not a.flags.writeable:
        if a.size and a.min() < 0:
            raise InputError(f"snapshot tokens must be non-negative; got {int(a.min())}")
        return a  # read-only: ours to keep (from_bytes, Stream.snapshot or the caller's)
    if a.size and (a.min() < 0 or a.max() >= 1 << 63):
        raise InputError("snapshot tokens must be non-negative int64 ids")
    a = a.astype(np.int32 if not a.size or a.max() < 1 << 31 else np.int64)
    a.flags.writeable = False
    return a
