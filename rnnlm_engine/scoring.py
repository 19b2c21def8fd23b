"""Batch scoring of text: per-line and total log-probabilities and perplexity.

Two modes, as language-model toolkits offer them:

- ``"sentence"``: every line is scored on its own from a fresh state (KenLM's ``score``,
  Mikolov's ``-independent``). A line is read as if it followed a line end: the model is
  first fed the boundary token (``<eos>`` for words, ``"\\n"`` for characters, byte 10 for
  bytes) and then predicts each token of the line and the line end. Lines of similar
  length are scored together in batches.
- ``"corpus"``: the text is one stream and the state is carried across lines, as PyTorch's
  word_language_model evaluates; the first token of the text is context only (it has no
  history), every later token is predicted and counted in the line it belongs to.

Log-probabilities are natural logarithms (divide by ln 10 for KenLM's log10). Files are
read in chunks of lines, so memory stays bounded whatever the size of the input.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, VocabularyError

MODES = ("sentence", "corpus")
CHUNK_LINES = 4096  # lines read and sorted by length at a time (sentence mode)
CORPUS_WINDOW = 512  # tokens per call in corpus mode (the result does not depend on it)


@dataclass
class LineScore:
    """One line: total log-probability (nats) of its `tokens` predicted tokens."""

    line: int  # 1-based line number
    logprob: float
    tokens: int
    oov: int = 0  # tokens not in the vocabulary (scored as <unk>)
    token_logprobs: np.ndarray | None = None  # (tokens,) float32, on request
    oov_flags: np.ndarray | None = None  # (tokens,) bool, on request

    @property
    def perplexity(self) -> float:
        return perplexity(self.logprob, self.tokens)


@dataclass
class ScoreTotal:
    lines: int = 0
    tokens: int = 0
    logprob: float = 0.0
    oov: int = 0

    @property
    def perplexity(self) -> float:
        return perplexity(self.logprob, self.tokens)

    def add(self, s: LineScore) -> None:
        self.lines += 1
        self.tokens += s.tokens
        self.logprob += s.logprob
        self.oov += s.oov


class Scoring:
    """An iterator of LineScore, in input order; ``total`` holds the running totals
    (final once the iterator is exhausted)."""

    def __init__(self, lines: Iterator[LineScore]):
        self._lines = lines
        self.total = ScoreTotal()

    def __iter__(self):
        return self

    def __next__(self) -> LineScore:
        s = next(self._lines)
        self.total.add(s)
        return s

    def run(self) -> ScoreTotal:
        """Score everything (discarding the per-line results); return the totals."""
        for _ in self:
            pass
        return self.total


def perplexity(logprob: float, tokens: int) -> float:
    """exp(-logprob / tokens): NaN for no tokens, inf past float64's range (a mean loss
    above 709 nats), never an OverflowError."""
    if not tokens:
        return math.nan
    loss = -logprob / tokens
    return math.exp(loss) if loss < _EXP_LIMIT else math.inf


_EXP_LIMIT = math.log(sys.float_info.max)


def score(model, source, mode="sentence", per_token=False, batch_size=64, errors="strict"):
    """Score text with model (see the module docstring): source is a str (a sentence, or
    lines separated by "\\n"), an iterable of lines (str), or a pathlib.Path (any
    os.PathLike) to a UTF-8 file. Returns a Scoring iterator of LineScore with running
    totals."""
    if model.vocab is None:
        raise InputError("scoring text needs a model with a vocabulary (load one from a file)")
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer; got {batch_size!r}")
    lines = _read_lines(source, errors)
    if mode == "sentence":
        return Scoring(_sentences(model, lines, per_token, batch_size))
    return Scoring(_corpus(model, lines, per_token))  # one stream: no batches


def _read_lines(source, errors: str) -> Iterator[str]:
    """The lines of a source: a str is text (one sentence, or lines separated by "\\n"), a
    path object (pathlib.Path, os.PathLike) is a UTF-8 file, any other iterable gives
    lines. A str is never taken for a file name: that would make a sentence such as "a b"
    mean a file whenever one of that name exists."""
    if isinstance(source, str):
        if "\n" not in source and source.strip() and os.path.isfile(source):
            warnings.warn(
                f"scoring the text {source!r}, not the file of that name: pass "
                f"pathlib.Path({source!r}) to score the file",
                stacklevel=4,
            )
        lines = source.split("\n")
        if len(lines) > 1 and lines[-1] == "":  # a final "\n" ends the last line
            lines.pop()
        return iter(lines)
    if isinstance(source, os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        return _file_lines(path, errors)
    if isinstance(source, bytes | bytearray | memoryview):
        raise InputError(
            "score text as str (decode bytes first) or a file as a pathlib.Path; got bytes"
        )
    try:
        return iter(source)
    except TypeError:
        raise InputError(
            "score a str (a sentence or lines), a list of lines or a pathlib.Path to a file; "
            f"got {type(source).__name__}"
        ) from None


def _file_lines(path: Path, errors: str) -> Iterator[str]:
    # newline="\n": a line ends at "\n" only ("\r" is text), as for wc -l and the CLI
    with open(path, encoding="utf-8", errors=errors, newline="\n") as f:
        n = 0
        while True:
            n += 1
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                raise VocabularyError(
                    f"{path}: invalid UTF-8 near line {n} ({e.reason}); pass errors='replace' "
                    "(CLI: --replace-invalid) to substitute U+FFFD"
                ) from None
            if not line:
                return
            yield line[:-1] if line.endswith("\n") else line


def line_end_id(vocab) -> int | None:
    """The id that ends a line (<eos>, "\\n", byte 10), or None if the vocabulary lacks it."""
    if vocab.kind == "word":
        return vocab.eos_id
    if vocab.kind == "byte":
        return 10
    return vocab.id("\n") if "\n" in vocab else None


def unencodable(vocab, line: str) -> str | None:
    """Why a line (no newline) cannot be scored with vocab: its unknown token, in the
    vocabulary's words, when the vocabulary has no "<unk>" (with one, every line can be:
    callers ask only then); None when it can be."""
    try:
        _encode_text(vocab, line)
    except VocabularyError as e:
        return str(e)
    return None


def _encode_text(vocab, text: str) -> tuple[list, list]:
    """(ids, oov flags) of a line's tokens; VocabularyError for an unknown token without
    "<unk>"."""
    if vocab.kind == "word":
        words = text.split()
        return [vocab.id(w) for w in words], [w not in vocab for w in words]
    ids = list(vocab.encode(text)) if text else []
    oov = [ch not in vocab for ch in text] if vocab.kind == "char" else [False] * len(ids)
    return ids, oov


def _encode_line(vocab, text: str, n: int, end: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids of the line's tokens and of its line end when the vocabulary has one, oov
    flags)."""
    if "\n" in text:
        raise InputError(f"line {n}: a line may not contain a newline")
    try:
        ids, oov = _encode_text(vocab, text)
    except VocabularyError as e:
        raise VocabularyError(f"line {n}: {e}") from None
    if end is not None:
        ids.append(end)
        oov.append(False)
    return np.array(ids, np.int64), np.array(oov, bool)


def _encoded_lines(vocab, lines: Iterable[str], end: int | None):
    """(line number, ids, oov flags) of each line, numbered from 1."""
    for n, text in enumerate(lines, start=1):
        if not isinstance(text, str):
            raise InputError(f"line {n} is a {type(text).__name__}, not str")
        ids, oov = _encode_line(vocab, text.rstrip("\n"), n, end)
        yield n, ids, oov


def _sentences(model, lines: Iterable[str], per_token: bool, batch_size: int):
    start = line_end_id(model.vocab)
    encoded = _encoded_lines(model.vocab, lines, start)
    while True:
        chunk = list(itertools.islice(encoded, CHUNK_LINES))
        if not chunk:
            return
        results: dict[int, LineScore] = {}
        order = sorted(range(len(chunk)), key=lambda i: len(chunk[i][1]))
        for b0 in range(0, len(order), batch_size):
            group = [chunk[i] for i in order[b0 : b0 + batch_size]]
            for (line_no, _ids, oov), lps in zip(
                group, _score_group(model, group, start), strict=True
            ):
                results[line_no] = _line_score(line_no, lps, oov, per_token)
        for line_no, _, _ in chunk:
            yield results[line_no]


def _score_group(model, group, start):
    """Token log-probs of each line of a group, all lines run as one padded batch."""
    B = len(group)
    if start is None:  # no boundary token: each line's first token is context only
        seqs = [ids for _, ids, _ in group]
        T = max(max(len(s) for s in seqs) - 1, 1)
        inputs = np.zeros((T, B), np.int64)
        targets = np.zeros((T, B), np.int64)
        for b, s in enumerate(seqs):
            inputs[: len(s) - 1, b] = s[:-1]
            targets[: len(s) - 1, b] = s[1:]
        lps, _ = model.token_logprobs(inputs, targets)
        # an empty line is an empty sentence: nothing to score, no context either
        return [
            np.concatenate([[np.nan], lps[: len(s) - 1, b]]) if len(s) else lps[:0, b]
            for b, s in enumerate(seqs)
        ]
    T = max(len(ids) for _, ids, _ in group)
    inputs = np.full((T, B), start, np.int64)
    targets = np.full((T, B), start, np.int64)
    for b, (_, ids, _) in enumerate(group):
        inputs[1 : len(ids), b] = ids[:-1]
        targets[: len(ids), b] = ids
    lps, _ = model.token_logprobs(inputs, targets)
    return [lps[: len(ids), b] for b, (_, ids, _) in enumerate(group)]


def _line_score(line_no: int, lps: np.ndarray, oov: np.ndarray, per_token: bool) -> LineScore:
    scored = ~np.isnan(lps)
    return LineScore(
        line=line_no,
        logprob=float(np.sum(lps[scored], dtype=np.float64)),
        tokens=int(scored.sum()),
        oov=int(oov[scored].sum()),
        token_logprobs=lps.astype(np.float32) if per_token else None,
        oov_flags=oov if per_token else None,
    )


def _corpus(model, lines: Iterable[str], per_token: bool):
    state = None
    prev = None  # the last token fed: the context of the next prediction
    pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # lines waiting to be scored
    buffered = 0

    def run(inputs, targets):
        nonlocal state
        res = np.empty(len(targets), np.float32)
        for i in range(0, len(targets), CORPUS_WINDOW):
            j = min(len(targets), i + CORPUS_WINDOW)
            lp, state = model.token_logprobs(inputs[i:j, None], targets[i:j, None], state)
            res[i:j] = lp[:, 0]
        return res

    def flush():
        nonlocal prev
        ids = np.concatenate([line_ids for _, line_ids, _ in pending])
        if ids.size == 0:  # lines without tokens (no line-end token in the vocabulary)
            lps = np.empty(0, np.float32)
        elif prev is None:  # the text's first token has no history: context only
            lps = np.concatenate([[np.nan], run(ids[:-1], ids[1:])])
        else:
            lps = run(np.concatenate([[prev], ids[:-1]]), ids)
        if ids.size:
            prev = int(ids[-1])
        at = 0
        for line_no, line_ids, oov in pending:
            yield _line_score(line_no, lps[at : at + len(line_ids)], oov, per_token)
            at += len(line_ids)
        pending.clear()

    for line in _encoded_lines(model.vocab, lines, line_end_id(model.vocab)):
        pending.append(line)
        buffered += len(line[1])
        if buffered >= CORPUS_WINDOW * 8:
            yield from flush()
            buffered = 0
    if pending:
        yield from flush()
