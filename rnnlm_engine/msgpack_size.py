"""What unpacking msgpack bytes would allocate, counted without unpacking them: the model
file reader refuses a header that would take implausibly much memory (a hostile file of
1-byte empty lists would unpack to 64 x its size) before msgpack makes any object."""

from __future__ import annotations

import re

# What msgpack.unpackb's objects take, in bytes, as unpacked_size charges them: upper
# bounds of CPython 3.11's sizes (measured with tracemalloc; the tests check them)
_SLOT = 8  # a reference to an object, in a list
_LIST = 64  # a list, besides its slots (msgpack allocates them all at its header)
_DICT = 240  # a dict ...
_DICT_ENTRY = 112  # ... and per entry: its table as it grows, and the interned str key
_BIG_INT = 40  # an int outside -5..256 (those are shared, as are None, True and False)
_FLOAT = 32  # 24, and about 1 byte more each, measured in lists of a million
_STR = 56  # an ASCII str of 2 or more characters, besides 1 byte a character
_WIDE_STR = 76  # any other str, besides 4 bytes per byte of its UTF-8 (at most 4 x (bytes - 1))
_BYTES = 40  # a bytes object, besides its length
_STACK_DEPTH = 1024  # msgpack refuses a container inside this many open ones
_NON_ASCII = re.compile(rb"[\x80-\xff]")


def unpacked_size(blob: bytes, start: int, end: int, limit: int) -> int:
    """An upper bound of the bytes that unpacking blob[start:end] with msgpack.unpackb
    (max_array_len = its size, max_map_len = half of it, no extension types) allocates,
    counted by walking the msgpack without making its objects, and returned as soon as
    it passes limit. The walk stops where msgpack.unpackb would stop with an error
    (bad or truncated data, an extension type, a length over its bounds, too deep), so the
    count so far bounds what unpackb allocates before it fails; and after the first
    object (unpackb then refuses extra bytes). Itself it takes O(1) memory."""
    size = end - start
    pos, total, pending, stack = start, 0, 1, []  # pending: objects left in the container
    search = _NON_ASCII.search
    while total <= limit:
        if not pending:
            if not stack:
                break  # the first object is complete
            pending = stack.pop()
            continue
        if pos >= end:
            break  # truncated
        b = blob[pos]
        pending -= 1
        if b < 0x80:  # positive fixint: a shared small int
            pos += 1
        elif b >= 0xE0:  # negative fixint: -5..-1 are shared, -32..-6 are not
            pos += 1
            total += _BIG_INT if b < 0xFB else 0
        elif 0xA0 <= b <= 0xBF or 0xD9 <= b <= 0xDB:  # str
            if b <= 0xBF:
                length, pos = b & 0x1F, pos + 1
            else:
                width = 1 << (b - 0xD9)
                length = int.from_bytes(blob[pos + 1 : pos + 1 + width], "big")
                pos += 1 + width
            if pos + length > end:
                break
            if length < 2:  # "" and 1-character ASCII strs are shared (others fail)
                pass
            elif search(blob, pos, pos + length) is None:
                total += _STR + length
            else:  # at most 4 bytes a character, fewer characters than bytes
                total += _WIDE_STR + 4 * length
            pos += length
        elif b <= 0x9F or 0xDC <= b <= 0xDF:  # map or array
            if b <= 0x9F:
                count, is_map, pos = b & 0x0F, b <= 0x8F, pos + 1
            else:
                width = 2 if b in (0xDC, 0xDE) else 4
                if pos + 1 + width > end:
                    break
                count = int.from_bytes(blob[pos + 1 : pos + 1 + width], "big")
                is_map, pos = b >= 0xDE, pos + 1 + width
            if is_map:
                if count > size // 2:  # unpackb's max_map_len
                    break
                total += _DICT + _DICT_ENTRY * count
                count *= 2
            else:
                if count > size:  # unpackb's max_array_len
                    break
                total += _LIST + _SLOT * count
            if len(stack) >= _STACK_DEPTH:
                break
            if count:
                stack.append(pending)
                pending = count
        elif b in (0xC0, 0xC2, 0xC3):  # nil, false, true
            pos += 1
        elif b == 0xCC:  # uint8: a shared small int
            pos += 2
        elif 0xCD <= b <= 0xD3:  # uint16..64, int8..64
            pos += 1 + (1 << (b - 0xCC if b <= 0xCF else b - 0xD0))
            total += _BIG_INT
        elif b in (0xCA, 0xCB):  # float32, float64: both become a Python float
            pos += 5 if b == 0xCA else 9
            total += _FLOAT
        elif 0xC4 <= b <= 0xC6:  # bin
            width = 1 << (b - 0xC4)
            length = int.from_bytes(blob[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width + length
            if pos > end:
                break
            total += _BYTES + length
        else:  # 0xC1 (never used) and the extension types, which unpackb refuses
            break
    return total
