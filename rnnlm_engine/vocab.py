"""Vocabularies: how text becomes token ids and back, for character, word and byte models.

Three kinds (``KINDS``):

- ``"char"``: one token per Unicode code point, newline and space included. The only
  special token a character vocabulary may hold is ``"<unk>"``; it decodes to U+FFFD.
- ``"word"``: PTB style, as PyTorch word_language_model's ``data.py``: each line of the
  text is ``line.split()`` followed by ``"<eos>"``. Lines are the pieces of
  ``text.split("\\n")``, except that the empty piece after a final ``"\\n"`` is no line:
  ``"a b\\nc\\n"`` and ``"a b\\nc"`` are both two lines, ``""`` is none, ``"\\n"`` is one
  empty line (just ``"<eos>"``). Every word vocabulary holds ``"<eos>"``; decoding joins
  the words of a line with single spaces and turns each ``"<eos>"`` into ``"\\n"``. A word
  ``"<unk>"`` in the text (PTB has them) is an ordinary token, and becomes ``unk_id``.
- ``"byte"``: the 256 values of the text's UTF-8 bytes; token i is the string
  ``f"<0x{i:02X}>"`` (``"<0x00>"`` ... ``"<0xFF>"``, as SentencePiece's byte fallback
  spells them). Any text encodes; decoding replaces invalid UTF-8 with U+FFFD.

Token order made by ``Vocabulary.build``: decreasing count in the text, so id 0 is the most
frequent token (the order a frequency-binned class softmax wants). Ties go by code point
(char) or by first appearance (word; ``"<eos>"`` first appears at the end of line 1).
When build adds ``"<unk>"``, it counts the occurrences of every dropped token and goes after
the tokens of equal count.

Special tokens are several characters long, so they never collide with a character.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np

from .errors import InputError, VocabularyError

KINDS = ("char", "word", "byte")
UNK = "<unk>"
EOS = "<eos>"

# bounds on every vocabulary, so one read from an untrusted model file stays small
MAX_TOKENS = 10_000_000
MAX_TOKEN_CHARS = 1_000

BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))

_BMP = 0x10000  # code points below this are looked up in a table, the rest by binary search
_REPLACEMENT_CP = 0xFFFD


class Vocabulary:
    """An immutable mapping between tokens (str) and ids (0 .. len - 1).

    Construct one from its tokens (``Vocabulary(kind, tokens)``), from text
    (``Vocabulary.build``) or from a model file's dict (``Vocabulary.from_dict``). Equal
    vocabularies have equal kind and tokens, in the same order. Safe to share between threads.

    Raises:
        VocabularyError: kind not in KINDS; tokens not a sequence of unique non-empty str of at
            most MAX_TOKEN_CHARS characters (and at most MAX_TOKENS of them, at least 2);
            char tokens other than single characters and "<unk>"; word tokens containing
            whitespace, or no "<eos>"; byte tokens other than BYTE_TOKENS; tokens holding lone
            surrogates (UTF-8 model files cannot store them).
    """

    __slots__ = (
        "_kind",
        "_tokens",
        "_index",
        "_unk_id",
        "_eos_id",
        "_hash",
        "_bmp_ids",
        "_astral_cps",
        "_astral_ids",
        "_decode_cps",
        "_decode_words",
    )

    def __init__(self, kind: str, tokens: Sequence[str]):
        kind = _check_kind(kind)
        tokens = _check_tokens(kind, tokens)
        index = {t: i for i, t in enumerate(tokens)}
        if len(index) != len(tokens):
            seen: dict[str, int] = {}
            for i, t in enumerate(tokens):
                if t in seen:
                    raise VocabularyError(
                        f"token {_show(t)} appears twice (ids {seen[t]} and {i}); "
                        "vocabulary tokens must be unique"
                    )
                seen[t] = i
        if kind == "word" and EOS not in index:
            raise VocabularyError(f"a word vocabulary must hold {EOS!r}; add it to the tokens")
        self._kind = kind
        self._tokens = tokens
        self._index = index
        self._unk_id = index.get(UNK)
        self._eos_id = index.get(EOS) if kind == "word" else None
        self._hash = None
        if kind == "char":
            self._build_char_tables()
        elif kind == "word":
            words = list(tokens)
            words[self._eos_id] = "\n"
            self._decode_words = tuple(words)

    def _build_char_tables(self) -> None:
        cps = np.array(
            [ord(t) if len(t) == 1 else -1 for t in self._tokens], dtype=np.int64
        )  # -1 marks "<unk>"
        ids = np.arange(len(cps), dtype=np.int64)
        # encode: code point -> id (-1 where absent); a table below U+10000, sorted arrays above
        self._bmp_ids = np.full(_BMP, -1, dtype=np.int64)
        bmp = (cps >= 0) & (cps < _BMP)
        self._bmp_ids[cps[bmp]] = ids[bmp]
        astral = cps >= _BMP
        order = np.argsort(cps[astral])
        self._astral_cps = cps[astral][order]
        self._astral_ids = ids[astral][order]
        # decode: id -> code point, "<unk>" -> U+FFFD
        self._decode_cps = np.where(cps >= 0, cps, _REPLACEMENT_CP).astype(np.uint32)
        for table in (self._bmp_ids, self._astral_cps, self._astral_ids, self._decode_cps):
            table.flags.writeable = False  # the vocabulary is immutable, and shared by threads

    # ---- construction from text and from model files -------------------------------------

    @classmethod
    def build(
        cls,
        text: str | Iterable[str],
        kind: str,
        *,
        max_size: int | None = None,
        min_count: int = 1,
    ) -> Vocabulary:
        """Count the tokens of ``text`` and make a vocabulary of them (order: see the module).

        ``text`` is a str or an iterable of str pieces, concatenated exactly as given (a text
        file object yields its lines with their newlines). Tokens seen fewer than
        ``min_count`` times are dropped, then all but the ``max_size`` most frequent (counting
        "<unk>" and, for words, "<eos>"). Passing ``max_size`` or ``min_count > 1`` makes an
        open vocabulary: it holds "<unk>", which encodes every dropped or unseen token, even
        when this text drops none. A byte vocabulary is always the 256 bytes.

        Raises:
            VocabularyError: empty text; bad kind, max_size (an int >= 2 or None) or
                min_count (an int >= 1); max_size or min_count given for bytes; fewer than 2
                distinct tokens; a kept token that breaks the constructor's rules.
        """
        kind = _check_kind(kind)
        max_size, min_count = _check_limits(kind, max_size, min_count)
        text = _join_text(text)
        if not text:
            raise VocabularyError(
                "cannot build a vocabulary from empty text; pass the training text"
            )
        if kind == "byte":
            return cls("byte", BYTE_TOKENS)
        if kind == "char":
            tokens = _rank_chars(text, max_size, min_count)
        else:
            tokens = _rank_words(text, max_size, min_count)
        if len(tokens) < 2:
            unit = "character" if kind == "char" else "token"
            raise VocabularyError(
                f"the text has only one distinct {unit} ({tokens[0]!r}) and a vocabulary "
                "needs at least 2; build from more varied text"
            )
        return cls(kind, tokens)

    def to_dict(self) -> dict:
        """{"kind": str, "tokens": [str, ...]}: plain msgpack-friendly data for model files."""
        return {"kind": self._kind, "tokens": list(self._tokens)}

    @classmethod
    def from_dict(cls, d) -> Vocabulary:
        """The inverse of to_dict, for data read from untrusted files.

        Unknown keys are ignored (a later version may add some). Whatever ``d`` is, the only
        exception raised is VocabularyError, naming the defect.
        """
        if not isinstance(d, dict):
            raise VocabularyError(f"vocabulary must be a dict; got {type(d).__name__}")
        for key in ("kind", "tokens"):
            if key not in d:
                raise VocabularyError(f"vocabulary has no {key!r} entry")
        kind, tokens = d["kind"], d["tokens"]
        if not isinstance(tokens, list | tuple):
            raise VocabularyError(f"vocabulary tokens must be a list; got {type(tokens).__name__}")
        return cls(kind, tokens)

    # ---- the mapping ---------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def tokens(self) -> tuple[str, ...]:
        """id -> token."""
        return self._tokens

    @property
    def unk_id(self) -> int | None:
        """Id of "<unk>", or None when the vocabulary has none (unknown tokens then raise)."""
        return self._unk_id

    @property
    def eos_id(self) -> int | None:
        """Id of "<eos>" in a word vocabulary; None for char and byte vocabularies."""
        return self._eos_id

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and token in self._index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._kind == other._kind and self._tokens == other._tokens

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash((self._kind, self._tokens))
        return self._hash

    def __repr__(self) -> str:
        return f"Vocabulary(kind={self._kind!r}, size={len(self._tokens)})"

    def id(self, token: str) -> int:
        """Id of ``token``; unk_id for an unknown token when there is one.

        Raises:
            VocabularyError: token is not a str, or unknown and the vocabulary has no "<unk>".
        """
        if not isinstance(token, str):
            raise VocabularyError(f"token must be a str; got {type(token).__name__}")
        i = self._index.get(token, self._unk_id)
        if i is None:
            raise VocabularyError(
                f"token {_show(token)} is not in the {self._kind} vocabulary, which has no "
                f"{UNK!r} token"
            )
        return i

    def token(self, i: int) -> str:
        """Token of id ``i``.

        Raises:
            VocabularyError: i is not an int in [0, len).
        """
        if isinstance(i, bool | np.bool_) or not isinstance(i, int | np.integer):
            raise VocabularyError(f"token id must be an int; got {type(i).__name__}")
        if not 0 <= i < len(self._tokens):
            raise VocabularyError(
                f"token id {int(i)} is out of range for a vocabulary of {len(self._tokens)} "
                f"tokens (ids 0 to {len(self._tokens) - 1})"
            )
        return self._tokens[int(i)]

    # ---- text <-> ids --------------------------------------------------------------------

    def encode(self, text: str, *, final_eos: bool = True) -> np.ndarray:
        """Token ids of ``text``: an int64 array of shape (T,).

        Unknown tokens become unk_id when the vocabulary has "<unk>". Word vocabularies
        end a last line without a newline with "<eos>" too, unless final_eos is False (a
        fragment of streamed text: "the cat" is two tokens, "the cat\n" three).

        Raises:
            VocabularyError: text is not a str; an unknown token and no "<unk>" (the message
                names the token and where it is); a lone surrogate in text for bytes.
        """
        if not isinstance(text, str):
            hint = " (decode bytes first, or use read_text)" if isinstance(text, bytes) else ""
            raise VocabularyError(f"encode takes a str; got {type(text).__name__}{hint}")
        if self._kind == "char":
            return self._encode_chars(text)
        if self._kind == "word":
            return self._encode_words(text, final_eos)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise VocabularyError(
                f"{_where_char(text, e.start)} holds a lone surrogate "
                f"(U+{ord(text[e.start]):04X}), which has no UTF-8 bytes; remove it"
            ) from None
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def _encode_chars(self, text: str) -> np.ndarray:
        # one uint32 per code point; surrogatepass so a lone surrogate is an unknown character
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if cps.size == 0:
            return np.zeros(0, dtype=np.int64)
        if cps.max() < _BMP:
            ids = self._bmp_ids[cps]
        else:
            ids = np.empty(cps.size, dtype=np.int64)
            small = cps < _BMP
            ids[small] = self._bmp_ids[cps[small]]
            ids[~small] = self._astral_lookup(cps[~small].astype(np.int64))
        missing = ids < 0
        if self._unk_id is not None:
            ids[missing] = self._unk_id
        elif missing.any():
            k = int(np.argmax(missing))
            raise VocabularyError(
                f"character {text[k]!r} at {_where_char(text, k)} is not in the vocabulary, "
                f"which has no {UNK!r} token; build the vocabulary from text that holds it, "
                f"or with max_size or min_count so that it gets {UNK!r}"
            )
        return ids

    def _astral_lookup(self, cps: np.ndarray) -> np.ndarray:
        """Ids of code points >= U+10000 (-1 where absent), by binary search."""
        if len(self._astral_cps) == 0:
            return np.full(cps.size, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._astral_cps, cps), len(self._astral_cps) - 1)
        return np.where(self._astral_cps[pos] == cps, self._astral_ids[pos], -1)

    def _encode_words(self, text: str, final_eos: bool) -> np.ndarray:
        # "\n" is whitespace to split(), so one split of the whole text gives every line's
        # words; a literal "<eos>" word maps to eos_id either way
        words = text.replace("\n", f" {EOS} ").split()
        if final_eos and text and not text.endswith("\n"):
            words.append(EOS)
        index = self._index
        try:
            if self._unk_id is None:
                tokens = map(index.__getitem__, words)
            else:
                tokens = map(index.get, words, repeat(self._unk_id))
            return np.fromiter(tokens, dtype=np.int64, count=len(words))
        except KeyError:
            pass
        for n, line in enumerate(_lines(text), 1):
            for j, w in enumerate(line.split(), 1):
                if w not in index:
                    raise VocabularyError(
                        f"word {_show(w)} (line {n}, word {j}) is not in the vocabulary, which "
                        f"has no {UNK!r} token; build the vocabulary from text that holds it, "
                        f"or with max_size or min_count so that it gets {UNK!r}"
                    ) from None
        raise AssertionError("unreachable: a KeyError without an unknown word")

    def decode(self, ids) -> str:
        """Text of token ids (a sequence or 1-D array of ints in [0, len)).

        char: tokens joined, "<unk>" as U+FFFD. word: a line's words joined by single spaces,
        each "<eos>" as "\\n". byte: the bytes decoded as UTF-8, invalid ones as U+FFFD.

        Raises:
            VocabularyError: ids not a 1-D sequence of ints, or one out of range.
        """
        ids = self._check_ids(ids)
        if self._kind == "char":
            return self._decode_cps[ids].tobytes().decode("utf-32-le")
        if self._kind == "word":
            text = " ".join(map(self._decode_words.__getitem__, ids.tolist()))
            return text.replace(" \n", "\n").replace("\n ", "\n")
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def _check_ids(self, ids) -> np.ndarray:
        if isinstance(ids, str | bytes | bytearray):
            raise VocabularyError(f"ids must be a sequence of ints; got {type(ids).__name__}")
        if not isinstance(ids, np.ndarray):
            try:
                ids = np.asarray(ids if isinstance(ids, Sequence) else list(ids))
            except (TypeError, ValueError, OverflowError):
                raise VocabularyError(
                    f"ids must be a 1-D sequence of ints; got {type(ids).__name__}"
                ) from None
        if ids.ndim != 1:
            raise VocabularyError(f"ids must be 1-D; got an array of shape {ids.shape}")
        if ids.size == 0:
            return np.zeros(0, dtype=np.int64)
        if ids.dtype.kind not in "iu":
            raise VocabularyError(f"ids must be integers; got an array of dtype {ids.dtype}")
        bad = (ids < 0) | (ids >= len(self._tokens))
        if bad.any():
            k = int(np.argmax(bad))
            raise VocabularyError(
                f"token id {int(ids[k])} at position {k} is out of range for a vocabulary of "
                f"{len(self._tokens)} tokens (ids 0 to {len(self._tokens) - 1})"
            )
        return ids.astype(np.int64, copy=False)


def read_text(path, errors: str = "strict") -> str:
    """The text of a UTF-8 file, exactly as decoded ("\\r\\n" stays "\\r\\n"; a BOM stays).

    ``errors="replace"`` substitutes U+FFFD for invalid bytes.

    Raises:
        InputError: the file is missing, a directory, or unreadable (the message names it).
        VocabularyError: invalid UTF-8 with errors="strict" (the message gives the byte
            offset and line); errors not "strict" or "replace".
    """
    if errors not in ("strict", "replace"):
        raise VocabularyError(f"errors must be 'strict' or 'replace'; got {errors!r}")
    try:
        name = os.fspath(path)
    except TypeError:
        raise InputError(f"path must be a str or os.PathLike; got {type(path).__name__}") from None
    shown = os.fsdecode(name)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"{shown}: no such file; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{shown}: is a directory; name a text file") from None
    except PermissionError:
        raise InputError(f"{shown}: permission denied; make the file readable") from None
    except OSError as e:
        raise InputError(f"{shown}: cannot read it: {e.strerror or e}") from None
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise VocabularyError(
            f"{shown}: invalid UTF-8 at byte offset {e.start} (line {line}): {e.reason} "
            f"(bytes {data[e.start : e.end].hex(' ')}); fix the file, or pass "
            "errors='replace' (CLI: --replace-invalid) to read invalid bytes as U+FFFD"
        ) from None


# ---- helpers ---------------------------------------------------------------------------------


def _show(token: str) -> str:
    """repr of a token, shortened: error messages may name tokens from hostile files."""
    if len(token) <= 40:
        return repr(token)
    return f"{token[:40]!r}... ({len(token)} characters)"


def _where_char(text: str, k: int) -> str:
    line = text.count("\n", 0, k) + 1
    column = k - (text.rfind("\n", 0, k) + 1) + 1
    return f"index {k} (line {line}, column {column})"


def _lines(text: str) -> list[str]:
    """The lines of word mode: the empty piece after a final "\\n" is no line."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _check_kind(kind) -> str:
    if not isinstance(kind, str) or kind not in KINDS:
        raise VocabularyError(f"vocabulary kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return kind


def _is_int(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)


def _check_limits(kind: str, max_size, min_count) -> tuple[int | None, int]:
    if max_size is not None and (not _is_int(max_size) or max_size < 2):
        raise VocabularyError(
            f"max_size must be None or an integer >= 2 (a vocabulary needs at least 2 tokens); "
            f"got {max_size!r}"
        )
    if not _is_int(min_count) or min_count < 1:
        raise VocabularyError(f"min_count must be an integer >= 1; got {min_count!r}")
    if kind == "byte" and (max_size is not None or min_count != 1):
        raise VocabularyError(
            "a byte vocabulary always holds all 256 byte values, so nothing can be dropped: "
            "leave max_size and min_count at their defaults"
        )
    return (None if max_size is None else int(max_size)), int(min_count)


def _join_text(text) -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, bytes | bytearray | memoryview):
        raise VocabularyError("text must be str, not bytes; decode it first (or use read_text)")
    try:
        pieces = list(text)
    except TypeError:
        raise VocabularyError(
            f"text must be a str or an iterable of str; got {type(text).__name__}"
        ) from None
    for i, piece in enumerate(pieces):
        if not isinstance(piece, str):
            raise VocabularyError(f"text piece {i} must be a str; got {type(piece).__name__}")
    return "".join(pieces)


def _check_tokens(kind: str, tokens) -> tuple[str, ...]:
    if isinstance(tokens, str | bytes | bytearray):
        raise VocabularyError(
            f"tokens must be a sequence of str, not one {type(tokens).__name__}; "
            "to make a vocabulary from text use Vocabulary.build"
        )
    if hasattr(tokens, "__len__") and len(tokens) > MAX_TOKENS:
        raise VocabularyError(
            f"a vocabulary holds at most MAX_TOKENS={MAX_TOKENS:,} tokens; got {len(tokens):,} "
            "(Vocabulary.build(..., max_size=N) keeps the N most frequent)"
        )
    try:
        tokens = tuple(tokens)
    except TypeError:
        raise VocabularyError(
            f"tokens must be a sequence of str; got {type(tokens).__name__}"
        ) from None
    if len(tokens) > MAX_TOKENS:
        raise VocabularyError(
            f"a vocabulary holds at most MAX_TOKENS={MAX_TOKENS:,} tokens; got {len(tokens):,}"
        )
    if len(tokens) < 2:
        raise VocabularyError(f"a vocabulary needs at least 2 tokens; got {len(tokens)}")
    if kind == "byte":
        if tokens != BYTE_TOKENS:
            raise VocabularyError(
                "a byte vocabulary's tokens must be the 256 strings '<0x00>' to '<0xFF>' in order"
            )
        return BYTE_TOKENS
    out = []
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            raise VocabularyError(f"token {i} must be a str; got {type(t).__name__}")
        if type(t) is not str:
            t = str.__str__(t)  # a str subclass (numpy.str_, say) becomes a plain str
        if not t:
            raise VocabularyError(f"token {i} is empty; tokens must be non-empty strings")
        if len(t) > MAX_TOKEN_CHARS:
            raise VocabularyError(
                f"token {i} ({_show(t)}) is longer than MAX_TOKEN_CHARS={MAX_TOKEN_CHARS}; "
                "clean the text, or drop rare tokens with Vocabulary.build's min_count/max_size"
            )
        if kind == "char" and t == EOS:
            raise VocabularyError(
                f"a char vocabulary cannot hold {EOS!r} (token {i}): lines end with the token '\\n'"
            )
        if kind == "char" and len(t) != 1 and t != UNK:
            raise VocabularyError(
                f"token {i} ({_show(t)}) of a char vocabulary must be one character or {UNK!r}"
            )
        if kind == "word" and t.split() != [t]:
            raise VocabularyError(
                f"token {i} ({_show(t)}) of a word vocabulary contains whitespace, so no text "
                "could encode to it; words are what str.split() returns"
            )
        out.append(t)
    try:
        "".join(out).encode("utf-8")
    except UnicodeEncodeError:
        for i, t in enumerate(out):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise VocabularyError(
                    f"token {i} ({_show(t)}) holds a lone surrogate (U+{ord(t[e.start]):04X}), "
                    "which UTF-8 model files cannot store; read text with read_text, which "
                    "never yields one"
                ) from None
    return tuple(out)


def _rank_chars(text: str, max_size: int | None, min_count: int) -> list[str]:
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    counts = np.bincount(cps)
    present = np.flatnonzero(counts)
    count = counts[present]
    order = np.lexsort((present, -count))  # decreasing count, ties by code point
    present, count = present[order], count[order]
    if max_size is None and min_count == 1:
        return [chr(c) for c in present]
    n = int(np.count_nonzero(count >= min_count))  # a prefix: counts are decreasing
    if max_size is not None:
        n = min(n, max_size - 1)  # one place for "<unk>"
    if n == 0:
        raise VocabularyError(
            f"no character occurs min_count={min_count} times or more; lower min_count"
        )
    unk_count = int(count[n:].sum())
    at = int(np.searchsorted(-count[:n], -unk_count, side="right"))
    kept = [chr(c) for c in present[:n]]
    return kept[:at] + [UNK] + kept[at:]


def _rank_words(text: str, max_size: int | None, min_count: int) -> list[str]:
    # a Counter keeps first-appearance order; "<eos>" first appears at the end of line 1
    first_newline = text.find("\n")
    counts = Counter(text[: first_newline if first_newline >= 0 else len(text)].split())
    counts[EOS] += 0
    if first_newline >= 0:
        counts.update(text[first_newline + 1 :].split())
    counts[EOS] += text.count("\n") + (not text.endswith("\n"))
    first = {w: i for i, w in enumerate(counts)}
    ranked = sorted(counts, key=counts.__getitem__, reverse=True)  # stable: ties by first
    if max_size is None and min_count == 1:
        return ranked
    words = [w for w in ranked if w not in (EOS, UNK) and counts[w] >= min_count]
    if max_size is not None:
        words = words[: max_size - 2]  # places for "<eos>" and "<unk>"
    kept = set(words)
    unk_count = sum(c for w, c in counts.items() if w != EOS and w not in kept)
    unk_first = first.get(UNK, len(first))  # an added "<unk>" goes after its equals
    sizes = {**{w: counts[w] for w in words}, EOS: counts[EOS], UNK: unk_count}
    rank = {**first, UNK: unk_first}
    return sorted(sizes, key=lambda w: (-sizes[w], rank[w]))
