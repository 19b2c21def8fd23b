"""Scoring many files of documents: ``rnnlm score MODEL FILES... --out DIR``.

A shard is a file of documents: plain text (one document per line), gzip (``.gz``) or xz
(``.xz``) compressed, or JSON lines whose records hold the document in a field (``jsonl``,
``field``). A document is scored as CCNet scores one: each of its lines in sentence mode
(rnnlm_engine.scoring), their log-probabilities and tokens summed; its ``perplexity`` is
exp(-logprob / tokens). A line of a plain-text shard is one document, so its score is
``Model.score``'s for that line.

Each shard gives one output file in the output folder, ``<shard name>.jsonl``: one JSON
line per document kept (a JSON record with ``logprob``, ``tokens``, ``perplexity`` and
``oov`` added, replacing fields of those names; for plain text ``{"line", "text",
...}``; ``perplexity`` is null where it is no finite number: a document of no tokens, or
a mean loss beyond float64's exp), written atomically (a temporary
file renamed over it once complete), so a task that dies or runs twice leaves either no
file or the whole one. ``min_ppl`` / ``max_ppl`` keep only documents within them.
``buckets`` (percentiles, CCNet's 30 and 60) adds ``bucket``: head, middle or tail, from
the percentiles of every scored document's perplexity (a second pass rewrites each
output), or from cutoffs given back in (one pass). Totals per shard merge into the
corpus perplexity: the tokens and log-probabilities summed in float64, the same as one
process's.

Memory is bounded whatever the input: documents stream through the scorer in chunks, and
each shard's output streams to its temporary file. What grows with the input is one
float64 per document (its perplexity, kept for the percentiles) when buckets are asked for.

Bad input (an unreadable or corrupt compressed shard, a record that is no JSON object or
lacks the field, invalid UTF-8, a token a vocabulary without "<unk>" cannot encode) is an
InputError naming the file and record; with ``skip_bad`` the record (or the whole of a
corrupt shard: its output is removed) is skipped and counted, never dropped silently.
An output that would replace an input, or another output, is refused before anything is
scored.
"""

from __future__ import annotations

import glob
import gzip
import json
import lzma
import math
import time
import zlib
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import write_atomically
from .errors import InputError, ModelFileError, VocabularyError
from .scoring import ScoreTotal, perplexity, unencodable
from .scoring import score as score_lines

BUCKETS = ("head", "middle", "tail")
SUMMARY = "summary.json"
CUTOFFS = "cutoffs.json"


@dataclass
class ShardResult:
    """What scoring one shard gave (output path, counts, float64 totals)."""

    shard: str
    output: str | None  # None: the shard was skipped (corrupt, with skip_bad)
    documents: int = 0  # scored
    kept: int = 0  # written (within min_ppl / max_ppl)
    tokens: int = 0
    logprob: float = 0.0
    oov: int = 0
    skipped: int = 0  # bad records skipped (skip_bad)
    problems: list = field(default_factory=list)  # the first few skips, said in words
    seconds: float = 0.0
    perplexities: np.ndarray | None = None  # float64 per document, when buckets need them

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "perplexities"}


@dataclass
class CorpusResult:
    shards: list[ShardResult]
    cutoffs: list[float] | None = None  # the perplexities that split the buckets

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def logprob(self) -> float:
        return math.fsum(s.logprob for s in self.shards)

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    @property
    def perplexity(self) -> float:
        return perplexity(self.logprob, self.tokens)

    def to_dict(self) -> dict:
        return {
            "documents": self.documents,
            "kept": sum(s.kept for s in self.shards),
            "tokens": self.tokens,
            "logprob": self.logprob,
            "perplexity": _json_number(self.perplexity),
            "skipped": sum(s.skipped for s in self.shards),
            "cutoffs": self.cutoffs,
            "shards": [s.to_dict() for s in self.shards],
        }


@dataclass(frozen=True)
class Options:
    """How shards are read, filtered and written (see the module docstring)."""

    jsonl: bool = False
    field: str = "text"
    errors: str = "strict"  # invalid UTF-8: "strict" (an error) or "replace"
    skip_bad: bool = False
    min_ppl: float | None = None
    max_ppl: float | None = None
    percentiles: tuple[float, ...] | None = None  # buckets from these percentiles
    cutoffs: tuple[float, ...] | None = None  # buckets from these perplexities
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.errors not in ("strict", "replace"):
            raise InputError(f"errors must be 'strict' or 'replace'; got {self.errors!r}")
        for name in ("min_ppl", "max_ppl"):
            v = getattr(self, name)
            if v is not None and not (_number(v) and v > 0):
                raise InputError(f"{name} must be a positive number; got {v!r}")
        if self.min_ppl is not None and self.max_ppl is not None and self.min_ppl > self.max_ppl:
            raise InputError(
                f"min_ppl {self.min_ppl} is above max_ppl {self.max_ppl}: no document would be kept"
            )
        for name, bounds in (("percentiles", (0, 100)), ("cutoffs", (0, math.inf))):
            v = getattr(self, name)
            if v is None:
                continue
            # cutoffs may be equal: the percentiles of documents with equal perplexities
            ordered = v[0] < v[1] if name == "percentiles" else v[0] <= v[1]
            if (
                len(v) != len(BUCKETS) - 1
                or not all(_number(x) and bounds[0] < x < bounds[1] for x in v)
                or not ordered
            ):
                raise InputError(
                    f"{name} must be two increasing numbers in ({bounds[0]}, {bounds[1]}); "
                    f"got {list(v)}"
                )
        if self.percentiles and self.cutoffs:
            raise InputError("give buckets as percentiles or as cutoffs, not both")

    @property
    def wants_perplexities(self) -> bool:
        return self.percentiles is not None


def _number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


# ---------------------------------------------------------------------------- reading


def _open(path: Path):
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


_CORRUPT = (OSError, EOFError, zlib.error, lzma.LZMAError)


class _Corrupt(Exception):
    """The shard cannot be opened, or read past some point."""


class Skips:
    """Bad records skipped: how many, and the first few (memory stays bounded)."""

    KEEP = 5

    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []

    def add(self, n: int, why: str) -> None:
        self.count += 1
        if len(self.first) < self.KEEP:
            self.first.append(f"record {n}: {why}")


def documents(
    path, options: Options, skips: Skips, check=None
) -> Iterator[tuple[int, str, dict | None]]:
    """(record number from 1, the document's text, the JSON record or None) of a shard.
    Bad records raise InputError, or with skip_bad are counted in skips. A shard
    unreadable past some point raises _Corrupt. check: None, or a function of a
    document's text that says why it is bad (or None)."""
    path = Path(path)
    try:
        f = _open(path)
    except OSError as e:
        raise _Corrupt(f"{path}: cannot open: {e.strerror or e}") from None
    with f:
        n = 0
        while True:
            try:
                raw = f.readline()
            except _CORRUPT as e:
                raise _Corrupt(f"{path}: unreadable after record {n}: {e}") from None
            if not raw:
                return
            n += 1
            try:
                text, record = _record(raw, n, path, options)
                problem = check(text) if check is not None else None
                if problem:
                    raise _BadRecord(problem)
                yield n, text, record
            except _BadRecord as e:
                if not options.skip_bad:
                    raise InputError(f"{path}: record {n}: {e}") from None
                skips.add(n, str(e))


class _BadRecord(Exception):
    pass


def _record(raw: bytes, n: int, path: Path, options: Options) -> tuple[str, dict | None]:
    try:
        line = raw.decode("utf-8", errors=options.errors)
    except UnicodeDecodeError as e:
        raise _BadRecord(
            f"invalid UTF-8 at byte {e.start} ({e.reason}); pass --replace-invalid to "
            "substitute U+FFFD"
        ) from None
    line = line[:-1] if line.endswith("\n") else line
    if not options.jsonl:
        return line, None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise _BadRecord(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise _BadRecord(f"a JSON {type(record).__name__}, not an object")
    if options.field not in record:
        raise _BadRecord(f"no field {options.field!r} (text expected)")
    text = record[options.field]
    if not isinstance(text, str):
        what = "null" if text is None else f"a {type(text).__name__}"
        raise _BadRecord(f"{what} in field {options.field!r} (text expected)")
    return text, record


# ---------------------------------------------------------------------------- scoring


def score_shard(model, path, out_dir, options: Options) -> ShardResult:
    """Score one shard with model and write its output file (atomically); see the module
    docstring."""
    t0 = time.perf_counter()
    path = Path(path)
    out = Path(out_dir) / output_name(path)
    result = ShardResult(str(path), str(out))
    skips = Skips()
    ppls = array("d")  # 8 bytes a document
    try:
        write_atomically(str(out), _output_lines(model, path, options, result, skips, ppls))
    except _Corrupt as e:
        if not options.skip_bad:
            raise InputError(f"{e} (pass --skip-bad to skip the shard and go on)") from None
        result = ShardResult(str(path), None, skipped=1, problems=[str(e)])
        skips, ppls = Skips(), array("d")
        out.unlink(missing_ok=True)  # an earlier run's output would look whole
    except ModelFileError as e:  # write_atomically's error for an unwritable output
        raise InputError(str(e).replace("cannot save", "cannot write")) from None
    result.skipped += skips.count
    result.problems += skips.first
    if options.wants_perplexities:
        result.perplexities = np.frombuffer(ppls, np.float64).copy()
    result.seconds = time.perf_counter() - t0
    return result


def output_name(path) -> str:
    return Path(path).name + ".jsonl"


def _output_lines(model, path, options: Options, result: ShardResult, skips, ppls):
    """The output file's bytes, a line per kept document, as the documents are scored."""
    for n, text, record, s in _scored(model, path, options, skips):
        result.documents += 1
        result.tokens += s.tokens
        result.logprob += s.logprob
        result.oov += s.oov
        ppl = s.perplexity
        if options.wants_perplexities:
            ppls.append(ppl)
        if options.min_ppl is not None and not ppl >= options.min_ppl:
            continue
        if options.max_ppl is not None and not ppl <= options.max_ppl:
            continue
        result.kept += 1
        out = dict(record) if record is not None else {"line": n, "text": text}
        out.update(logprob=s.logprob, tokens=s.tokens, perplexity=_json_number(ppl), oov=s.oov)
        if options.cutoffs is not None:
            out["bucket"] = bucket_of(ppl, options.cutoffs)
        yield _json_line(out)


def _json_line(record: dict) -> bytes:
    """A JSON line in UTF-8; escaped as ASCII when the record holds text that UTF-8 cannot
    encode (a lone surrogate, valid in JSON's escapes), so it is written as it was read."""
    line = json.dumps(record, ensure_ascii=False) + "\n"
    try:
        return line.encode()
    except UnicodeEncodeError:
        return (json.dumps(record) + "\n").encode()


def _scored(model, path, options: Options, skips):
    """(record number, text, record, the ScoreTotal of its lines) of each good document,
    in order: every line of every document goes through one sentence-mode scorer (batched
    across documents), and each line's score is added to its document's."""
    pending: deque = deque()  # (n, text, record, lines left, score) read, not yet whole
    check = None
    if model.vocab is not None and model.vocab.unk_id is None:  # unknown tokens are errors

        def check(text: str) -> str | None:
            return next(filter(None, (unencodable(model.vocab, p) for p in _pieces(text))), None)

    def lines():
        for n, text, record in documents(path, options, skips, check):
            pieces = _pieces(text)
            pending.append([n, text, record, len(pieces), ScoreTotal()])
            yield from pieces

    def done():
        while pending and pending[0][3] == 0:
            n, text, record, _, s = pending.popleft()
            yield n, text, record, s

    try:
        scoring = score_lines(model, lines(), "sentence", False, options.batch_size)
        for line_score in scoring:  # every document has a line ("" is one empty line)
            doc = pending[0]
            doc[4].add(line_score)
            doc[3] -= 1
            yield from done()
    except VocabularyError as e:  # a token the vocabulary lacks, in the scorer's words
        raise InputError(f"{path}: {e}") from None


def _pieces(text: str) -> list[str]:
    """A document's lines (a final "\n" ends the last line; "" is one empty line)."""
    pieces = text.split("\n")
    if len(pieces) > 1 and pieces[-1] == "":
        pieces.pop()
    return pieces


def _json_number(x: float):
    """x, or None (JSON null) for NaN and infinity, which JSON cannot hold."""
    return x if math.isfinite(x) else None


def bucket_of(ppl: float, cutoffs) -> str:
    """head (perplexity <= the first cutoff), middle, or tail (above the second)."""
    if not ppl <= cutoffs[1]:
        return "tail"  # NaN (a document of no tokens) too
    return "head" if ppl <= cutoffs[0] else "middle"


def cutoffs_of(perplexities: np.ndarray, percentiles) -> list[float]:
    """The perplexities at the given percentiles of the scored documents (numpy's linear
    interpolation), NaN (documents of no tokens) left out."""
    finite = perplexities[np.isfinite(perplexities)].astype(np.float64)
    if finite.size == 0:
        raise InputError("no document had a token to score: no percentiles to cut at")
    return [float(v) for v in np.percentile(finite, list(percentiles))]


def add_buckets(output: str, cutoffs) -> None:
    """Rewrite a shard's output with each document's bucket (atomically)."""

    def lines():
        with open(output, "rb") as f:
            for raw in f:
                record = json.loads(raw)
                ppl = record.get("perplexity")
                record["bucket"] = bucket_of(math.nan if ppl is None else ppl, cutoffs)
                yield _json_line(record)

    write_atomically(output, lines())


# ---------------------------------------------------------------------------- driver


def check_shards(paths, out_dir) -> list[Path]:
    """The shards as paths (each an existing file given once, names distinct: one output
    each, none of them an input) and the output folder, made if missing."""
    shards = [Path(p) for p in paths]
    if not shards:
        raise InputError("no files to score")
    folders = [str(p) for p in shards if p.is_dir()]
    if folders:
        raise InputError(f"a folder, not a file: {', '.join(folders[:5])} (give its files)")
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise InputError(f"no such file: {', '.join(missing[:5])}")
    names: dict[str, Path] = {}
    for p in shards:
        other = names.setdefault(output_name(p), p)
        if other is not p and other.resolve() == p.resolve():
            raise InputError(f"{p} is given twice: each file is scored once")
        if other is not p:
            raise InputError(
                f"{other} and {p} would write the same output {output_name(p)}: rename one"
            )
    out = Path(out_dir)
    written = {(out / name).resolve() for name in (*names, SUMMARY, CUTOFFS)}
    for p in shards:
        if p.resolve() in written:
            raise InputError(
                f"{p} would be overwritten by an output of this run: give another --out folder"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot make the output folder {out}: {e.strerror or e}") from None
    return shards


def score_files(model, paths, out_dir, options: Options, progress=None) -> CorpusResult:
    """Score every shard with model on this machine, one shard after another (each uses
    every core: the matrix products and kernels are parallel), then the buckets; write
    summary.json (and cutoffs.json) in out_dir. progress: called with each ShardResult."""
    shards = check_shards(paths, out_dir)
    results = []
    for path in shards:
        r = score_shard(model, path, out_dir, options)
        results.append(r)
        if progress is not None:
            progress(r)
    return finish(results, out_dir, options)


def finish(results: list[ShardResult], out_dir, options: Options, rewrite=None) -> CorpusResult:
    """Buckets from percentiles (a second pass over the outputs: rewrite(outputs, cutoffs),
    by default add_buckets on each here), and the summary. Temporary files that a killed
    writer left behind (a lost Dask worker's) are removed: every output is whole now."""
    corpus = CorpusResult(results, list(options.cutoffs) if options.cutoffs else None)
    if options.percentiles is not None:
        every = [r.perplexities for r in results if r.perplexities is not None]
        corpus.cutoffs = cutoffs_of(np.concatenate(every or [np.zeros(0)]), options.percentiles)
        outputs = [r.output for r in results if r.output is not None]
        if rewrite is None:
            for output in outputs:
                add_buckets(output, corpus.cutoffs)
        else:
            rewrite(outputs, corpus.cutoffs)
    out = Path(out_dir)
    for r in results:
        name = Path(r.output or output_name(r.shard)).name
        for stale in out.glob(f".{glob.escape(name)}.*.tmp"):
            stale.unlink(missing_ok=True)
    if corpus.cutoffs is not None:
        data = {"cutoffs": corpus.cutoffs, "percentiles": options.percentiles}
        write_atomically(str(out / CUTOFFS), [json.dumps(data).encode()])
    summary = json.dumps(corpus.to_dict(), indent=1).encode()
    write_atomically(str(out / SUMMARY), [summary])
    return corpus


def read_cutoffs(path) -> tuple[float, float]:
    """The cutoffs of a cutoffs.json that an earlier run wrote (or a list of two)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read cutoffs ({e})") from None
    values = data.get("cutoffs") if isinstance(data, dict) else data
    if not (isinstance(values, list) and len(values) == 2):
        raise InputError(f"{path}: expected {{'cutoffs': [a, b]}}; got {str(data)[:80]}")
    return tuple(values)
