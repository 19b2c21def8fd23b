"""Vocabularies: round trips for every kind, token order, limits, unknown tokens, the model-file
dict (fuzzed: only VocabularyError may escape), and read_text on hand-made invalid UTF-8."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from rnnlm_engine.errors import InputError, VocabularyError
from rnnlm_engine.vocab import (
    BYTE_TOKENS,
    EOS,
    KINDS,
    MAX_TOKEN_CHARS,
    MAX_TOKENS,
    UNK,
    Vocabulary,
    read_text,
)

PTB = Path("/work/shared/data/ptb")

# text that exposes bugs: non-ASCII, astral emoji, newlines, empty lines, "\r\n", spaces
rich_text = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\n", "\n\n", "\r\n", " ", "😀", "é", "\u2028", "\ufffd", "<unk>"]),
    ),
    max_size=100,
).map("".join)
word = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8).filter(
    lambda w: w.split() == [w] and w != EOS
)


# ---- round trips ---------------------------------------------------------------------------


@given(rich_text)
@example("a😀\n\nb\r\n")
@example("ab\n")
def test_char_round_trip(text):
    assume(len(set(text)) >= 2)
    v = Vocabulary.build(text, "char")
    ids = v.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert v.decode(ids) == text
    assert v.unk_id is None and v.eos_id is None
    assert sorted(v.tokens) == sorted(set(text))


@given(rich_text)
@example("")
@example("\udfff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
def test_byte_round_trip(text):
    v = Vocabulary.build("x", "byte")
    ids = v.encode(text)
    assert ids.dtype == np.int64
    assert ids.tolist() == list(text.encode("utf-8"))
    assert v.decode(ids) == text


@given(st.lists(st.lists(word, max_size=6), min_size=1, max_size=8))
@example([[], ["a"], []])
@example([["<unk>", "a"]])
def test_word_round_trip_on_normalised_text(lines):
    text = "".join(" ".join(line) + "\n" for line in lines)
    assume(any(lines))
    v = Vocabulary.build(text, "word")
    ids = v.encode(text)
    assert len(ids) == sum(len(line) + 1 for line in lines)
    assert (ids == v.eos_id).sum() == len(lines)
    assert v.decode(ids) == text
    if lines[-1]:  # a missing final "\n" is restored (after an empty line it ends one)
        assert v.decode(v.encode(text[:-1])) == text


@given(st.sampled_from(KINDS), rich_text)
def test_dict_round_trip(kind, text):
    assume(len(set(text)) >= 2 and len(set(text.split())) >= 1)
    v = Vocabulary.build(text, kind)
    d = v.to_dict()
    assert d == {"kind": kind, "tokens": list(v.tokens)}
    w = Vocabulary.from_dict(d)
    assert w == v and hash(w) == hash(v) and w.tokens == v.tokens
    assert w.unk_id == v.unk_id and w.eos_id == v.eos_id


def test_equality_and_hash():
    a = Vocabulary("word", ["<eos>", "a", "b"])
    assert a == Vocabulary("word", ("<eos>", "a", "b"))
    assert hash(a) == hash(Vocabulary("word", ("<eos>", "a", "b")))
    assert a != Vocabulary("word", ["a", "<eos>", "b"])
    assert Vocabulary("char", ["a", "b"]) != Vocabulary("word", ["a", "<eos>"])
    assert a != ("<eos>", "a", "b")
    assert len({a, Vocabulary("word", ["<eos>", "a", "b"])}) == 1


def test_immutable():
    v = Vocabulary("char", ["a", "b"])
    with pytest.raises(AttributeError):
        v.tokens = ("c", "d")
    with pytest.raises(AttributeError):
        v.extra = 1


# ---- word mode -------------------------------------------------------------------------------


def test_word_lines_and_empty_lines():
    v = Vocabulary("word", ["<eos>", "a", "b", "c"])
    eos, a, b, c = 0, 1, 2, 3
    assert v.encode("a b\nc\n").tolist() == [a, b, eos, c, eos]
    assert v.encode("a b\nc").tolist() == [a, b, eos, c, eos]
    assert v.encode("").tolist() == []
    assert v.encode("\n").tolist() == [eos]
    assert v.encode("\n\na\n\n").tolist() == [eos, eos, a, eos, eos]
    assert v.encode("  a\t b  \r\n").tolist() == [a, b, eos]
    assert v.decode([eos, eos, a, b, eos, eos, c]) == "\n\na b\n\nc"
    assert v.decode([]) == ""


def test_word_order_is_count_then_first_appearance():
    v = Vocabulary.build("b a\nc a\n", "word")
    # counts: a 2, <eos> 2, b 1, c 1; ties by first appearance (b, then a, <eos> after line 1)
    assert v.tokens == ("a", "<eos>", "b", "c")
    assert v.eos_id == 1 and v.unk_id is None
    assert Vocabulary.build(["b a\n", "c a\n"], "word") == v  # pieces are concatenated
    assert Vocabulary.build("z y x\n", "word").tokens == ("z", "y", "x", "<eos>")


def test_ptb_style_unk_is_an_ordinary_token():
    text = "the <unk> cat\nthe dog <unk>\n<unk>\n"
    v = Vocabulary.build(text, "word")
    assert v.tokens[:3] == ("<unk>", "<eos>", "the")
    assert v.unk_id == v.id("<unk>") == 0
    assert v.id("never-seen") == v.unk_id
    assert v.encode("a fish\n").tolist() == [v.unk_id, v.unk_id, v.eos_id]
    assert v.decode(v.encode(text)) == text


def test_word_vocabulary_rules():
    with pytest.raises(VocabularyError, match="must hold '<eos>'"):
        Vocabulary("word", ["a", "b"])
    with pytest.raises(VocabularyError, match="whitespace"):
        Vocabulary("word", ["<eos>", "a b"])
    with pytest.raises(VocabularyError, match="only one distinct token"):
        Vocabulary.build("\n\n  \n", "word")


# ---- char and byte modes -------------------------------------------------------------------


def test_char_order_is_count_then_code_point():
    v = Vocabulary.build("cbaab\n", "char")
    assert v.tokens == ("a", "b", "\n", "c")
    assert Vocabulary.build(iter(["cb", "aab\n"]), "char") == v


def test_char_vocabulary_rules():
    with pytest.raises(VocabularyError, match="one character or '<unk>'"):
        Vocabulary("char", ["a", "bc"])
    with pytest.raises(VocabularyError, match="cannot hold '<eos>'"):
        Vocabulary("char", ["a", "<eos>"])
    with pytest.raises(VocabularyError, match="only one distinct character"):
        Vocabulary.build("aaaa", "char")
    v = Vocabulary("char", ["<unk>", "a", "😀"])
    assert v.decode([0, 1, 2]) == "\ufffda😀"
    assert v.encode("a<unk>😀").tolist() == [1, 0, 0, 0, 0, 0, 2]


def test_byte_vocabulary():
    v = Vocabulary.build("anything", "byte")
    assert v.tokens == BYTE_TOKENS and len(v) == 256
    assert v.tokens[0] == "<0x00>" and v.tokens[0xAB] == "<0xAB>" and v.tokens[255] == "<0xFF>"
    assert v.unk_id is None and v.eos_id is None
    assert v.encode("é").tolist() == [0xC3, 0xA9]
    assert v.decode([0xC3]) == "\ufffd"
    assert v.id("<0x41>") == 0x41 and v.token(0x41) == "<0x41>"
    with pytest.raises(VocabularyError, match="256 strings"):
        Vocabulary("byte", BYTE_TOKENS[::-1])
    with pytest.raises(VocabularyError, match="lone surrogate"):
        v.encode("ab\udc80")
    for kwargs in ({"max_size": 100}, {"min_count": 2}):
        with pytest.raises(VocabularyError, match="all 256 byte values"):
            Vocabulary.build("abc", "byte", **kwargs)


# ---- limits ----------------------------------------------------------------------------------


def test_max_size_counts_unk_and_keeps_the_most_frequent():
    text = "aaaabbbccd"
    v = Vocabulary.build(text, "char", max_size=3)
    # kept a, b; <unk> stands for c, c, d (count 3) and goes after b's equal count
    assert v.tokens == ("a", "b", "<unk>")
    assert v.encode(text).tolist() == [0] * 4 + [1] * 3 + [2] * 3
    assert v.decode(v.encode("abcz")) == "ab\ufffd\ufffd"
    assert len(Vocabulary.build(text, "char", max_size=2)) == 2


def test_min_count_and_open_vocabulary():
    v = Vocabulary.build("aaaabbbccd", "char", min_count=2)
    assert v.tokens == ("a", "b", "c", "<unk>")
    # limits make an open vocabulary even when this text drops nothing
    assert Vocabulary.build("ab", "char", max_size=100).tokens == ("a", "b", "<unk>")
    with pytest.raises(VocabularyError, match="lower min_count"):
        Vocabulary.build("ab", "char", min_count=5)


def test_word_limits():
    text = "a a a b b c\nd\n"
    v = Vocabulary.build(text, "word", max_size=4)
    assert v.tokens == ("a", "b", "<eos>", "<unk>")  # <unk> for c and d: count 2, after <eos>
    assert v.encode(text).tolist() == [0, 0, 0, 1, 1, 3, 2, 3, 2]
    assert Vocabulary.build(text, "word", min_count=2).tokens == ("a", "b", "<eos>", "<unk>")
    assert Vocabulary.build(text, "word", max_size=2).tokens == ("<unk>", "<eos>")
    # a <unk> already in the text absorbs the dropped words' counts
    v = Vocabulary.build("<unk> x y\n", "word", max_size=3)
    assert v.tokens == ("<unk>", "x", "<eos>")  # <unk> 2; x, <eos> 1: first appearance


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_size": 1}, "max_size"),
        ({"max_size": 0}, "max_size"),
        ({"max_size": 2.5}, "max_size"),
        ({"max_size": True}, "max_size"),
        ({"min_count": 0}, "min_count"),
        ({"min_count": "2"}, "min_count"),
    ],
)
def test_bad_limits(kwargs, match):
    with pytest.raises(VocabularyError, match=match):
        Vocabulary.build("abc", "char", **kwargs)


def test_build_refuses_bad_text_and_kind():
    for kind in KINDS:
        with pytest.raises(VocabularyError, match="empty"):
            Vocabulary.build("", kind)
        with pytest.raises(VocabularyError, match="empty"):
            Vocabulary.build([], kind)
    with pytest.raises(VocabularyError, match="bytes"):
        Vocabulary.build(b"abc", "char")
    with pytest.raises(VocabularyError, match="piece 1"):
        Vocabulary.build(["a", 1], "char")
    with pytest.raises(VocabularyError, match="kind must be one of"):
        Vocabulary.build("abc", "chars")
    with pytest.raises(VocabularyError, match="MAX_TOKEN_CHARS"):
        Vocabulary.build("x" * (MAX_TOKEN_CHARS + 1) + " y\n", "word")
    # a long word that min_count drops is fine
    assert "y" in Vocabulary.build("x" * 2000 + " y y\n", "word", min_count=2)


# ---- unknown tokens and ids ----------------------------------------------------------------


def test_unknown_char_names_token_and_position():
    v = Vocabulary.build("ab\nab", "char")
    with pytest.raises(VocabularyError) as e:
        v.encode("ab\naxb")
    assert "'x'" in str(e.value) and "index 4 (line 2, column 2)" in str(e.value)
    with pytest.raises(VocabularyError, match="'😀' at index 0 \\(line 1, column 1\\)"):
        v.encode("😀a")
    with pytest.raises(VocabularyError, match="'<unk>'"):
        v.id("x")


def test_unknown_word_names_token_and_position():
    v = Vocabulary.build("a b\n", "word")
    with pytest.raises(VocabularyError) as e:
        v.encode("a b\n\nb a 'zz'\n")
    assert "\"'zz'\"" in str(e.value) and "line 3, word 3" in str(e.value)
    with pytest.raises(VocabularyError, match="'<unk>' \\(line 1, word 1\\)"):
        v.encode("<unk>")


def test_unknown_with_unk_maps_to_unk():
    v = Vocabulary.build("aab", "char", min_count=2)
    assert v.encode("abc😀").tolist() == [v.id("a"), v.unk_id, v.unk_id, v.unk_id]
    assert v.id("b") == v.unk_id


def test_id_token_and_decode_validate():
    v = Vocabulary("word", ["<eos>", "a", "b"])
    assert v.id("a") == 1 and v.token(2) == "b" and v.token(np.int32(0)) == "<eos>"
    for bad in (3, -1):
        with pytest.raises(VocabularyError, match="out of range"):
            v.token(bad)
    for bad in (1.0, True, "1", None):
        with pytest.raises(VocabularyError, match="must be an int"):
            v.token(bad)
    with pytest.raises(VocabularyError, match="must be a str"):
        v.id(1)
    with pytest.raises(VocabularyError, match="id 3 at position 1"):
        v.decode([1, 3])
    with pytest.raises(VocabularyError, match="id -1 at position 0"):
        v.decode(np.array([-1, 0]))
    for bad in ([1.0], [True], ["a"], [None], [2**70], "ab", 5, np.zeros((1, 2), int), [[1], [2]]):
        with pytest.raises(VocabularyError):
            v.decode(bad)
    assert v.decode(np.array([1, 2, 0], dtype=np.uint8)) == "a b\n"
    assert v.decode(iter([1, 0])) == "a\n"
    with pytest.raises(VocabularyError, match="takes a str"):
        v.encode(b"a")


def test_constructor_validates_tokens():
    cases = [
        ("chars", ["a", "b"], "kind"),
        ("char", ["a"], "at least 2"),
        ("char", "ab", "Vocabulary.build"),
        ("char", ["a", "a"], "appears twice \\(ids 0 and 1\\)"),
        ("char", ["a", ""], "empty"),
        ("char", ["a", 1], "token 1 must be a str"),
        ("char", ["a", "\ud800"], "lone surrogate"),
        ("word", ["<eos>", "x" * (MAX_TOKEN_CHARS + 1)], "MAX_TOKEN_CHARS"),
        ("word", 5, "sequence of str"),
    ]
    for kind, tokens, match in cases:
        with pytest.raises(VocabularyError, match=match):
            Vocabulary(kind, tokens)


# ---- the model-file dict ---------------------------------------------------------------------


def test_from_dict_names_the_defect():
    cases = [
        ([], "must be a dict"),
        ({"tokens": ["a", "b"]}, "no 'kind'"),
        ({"kind": "char"}, "no 'tokens'"),
        ({"kind": 3, "tokens": ["a", "b"]}, "kind"),
        ({"kind": "char", "tokens": "ab"}, "must be a list"),
        ({"kind": "char", "tokens": {"a": 1}}, "must be a list"),
        ({"kind": "char", "tokens": ["a", b"b"]}, "token 1 must be a str"),
        ({"kind": "byte", "tokens": ["a", "b"]}, "256 strings"),
    ]
    for d, match in cases:
        with pytest.raises(VocabularyError, match=match):
            Vocabulary.from_dict(d)
    d = Vocabulary("char", ["a", "b"]).to_dict()
    assert Vocabulary.from_dict({**d, "future": 1}) == Vocabulary("char", ["a", "b"])


def test_from_dict_bounds():
    class Huge(list):
        def __len__(self):
            return MAX_TOKENS + 1

    with pytest.raises(VocabularyError, match="MAX_TOKENS"):
        Vocabulary.from_dict({"kind": "word", "tokens": Huge(["<eos>", "a"])})


leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(max_size=8),
    st.text(max_size=8),
    st.sampled_from([*KINDS, EOS, UNK, "<0x00>"]),
)
nested = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=4),
    ),
    max_leaves=30,
)
vocab_like = st.fixed_dictionaries(
    {
        "kind": st.one_of(st.sampled_from(KINDS), nested),
        "tokens": st.one_of(
            st.lists(st.one_of(st.text(max_size=3), st.sampled_from([EOS, UNK]), nested)),
            st.just(list(BYTE_TOKENS)),
            nested,
        ),
    },
    optional={"extra": nested},
)


@given(st.one_of(nested, vocab_like))
@example({"kind": "word", "tokens": [EOS, "a", "a"]})
@example({"kind": "char", "tokens": [UNK, "\n", " "]})
def test_from_dict_fuzz_raises_only_vocabulary_error(d):
    try:
        v = Vocabulary.from_dict(d)
    except VocabularyError:
        return
    assert Vocabulary.from_dict(v.to_dict()) == v


# ---- read_text -------------------------------------------------------------------------------


def test_read_text_keeps_text_exactly(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffa\r\nb\rc\né😀\n".encode())
    assert read_text(p) == "\ufeffa\r\nb\rc\né😀\n"
    assert read_text(str(p)) == read_text(p)


def test_read_text_invalid_utf8(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok\nfine \xc3\xa9\nbad \xff here\n")  # 0xff at byte offset 15, line 3
    with pytest.raises(VocabularyError) as e:
        read_text(p)
    message = str(e.value)
    assert str(p) in message and "byte offset 15" in message and "line 3" in message
    assert "errors='replace'" in message and "--replace-invalid" in message
    assert read_text(p, errors="replace") == "ok\nfine é\nbad \ufffd here\n"
    p.write_bytes(b"\xe2\x82")  # truncated sequence at the end
    with pytest.raises(VocabularyError, match="byte offset 0 \\(line 1\\)"):
        read_text(p)
    with pytest.raises(VocabularyError, match="'strict' or 'replace'"):
        read_text(p, errors="ignore")


def test_read_text_missing_and_directory(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(InputError, match="nope.txt: no such file"):
        read_text(missing)
    with pytest.raises(InputError, match="is a directory"):
        read_text(tmp_path)
    with pytest.raises(InputError, match="path must be"):
        read_text(3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_read_text_permission(tmp_path):
    p = tmp_path / "secret.txt"
    p.write_text("x")
    p.chmod(0)
    try:
        with pytest.raises(InputError, match="secret.txt: permission denied"):
            read_text(p)
    finally:
        p.chmod(0o600)


# ---- Penn Treebank -------------------------------------------------------------------------


@pytest.mark.skipif(
    not (PTB / "ptb.valid.txt").exists(), reason="PTB data not present at /work/shared/data/ptb"
)
def test_ptb_valid_word_counts():
    text = read_text(PTB / "ptb.valid.txt")
    v = Vocabulary.build(text, "word")
    ids = v.encode(text)
    assert len(ids) == 73_760
    assert len(v) == 6_022  # 6,021 word types and <eos>
    assert (ids == v.eos_id).sum() == 3_370
    assert v.unk_id is not None and v.token(v.unk_id) == UNK
    assert Vocabulary.from_dict(v.to_dict()) == v
