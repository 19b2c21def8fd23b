"""Scoring many files of documents (rnnlm_engine/shards.py, rnnlm score FILES... --out):
sharded results equal one Model.score document for document, the merged corpus
perplexity equals one process's, JSON-lines documents of several lines, buckets, filters,
and bad input (corrupt compressed shards, records without the field, invalid UTF-8)
refused with the file and record named, or skipped and counted."""

from __future__ import annotations

import gzip
import json
import lzma
import math

import numpy as np
import pytest

from rnnlm_engine import InputError, Model, ModelConfig
from rnnlm_engine import shards as sh
from rnnlm_engine.cli import main
from rnnlm_engine.train import initial_parameters
from rnnlm_engine.vocab import Vocabulary

WORDS = "the cat sat on a mat dog ran far away".split()


@pytest.fixture(scope="module")
def model():
    vocab = Vocabulary("word", ["<eos>", "<unk>", *WORDS])
    config = ModelConfig("lstm", len(vocab), 8, 8, 1)
    params = initial_parameters(config, 0.5, np.random.default_rng(0))
    return Model.from_state_dict(params, vocab=vocab)


def lines(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(0, 9))) for _ in range(n)]


def write_shards(tmp_path, parts) -> list:
    """Shards of plain text, gzip and xz, one per list of lines."""
    paths = []
    for i, part in enumerate(parts):
        data = ("\n".join(part) + "\n").encode()
        opener, suffix = [(open, ".txt"), (gzip.open, ".txt.gz"), (lzma.open, ".txt.xz")][i % 3]
        path = tmp_path / f"shard{i}{suffix}"
        with opener(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths


def outputs(result) -> list[dict]:
    return [json.loads(line) for r in result.shards for line in open(r.output)]


def test_shards_equal_one_score_call_document_for_document(tmp_path, model):
    parts = [lines(40, 1), lines(33, 2), lines(1, 3), lines(57, 4)]
    result = sh.score_files(model, write_shards(tmp_path, parts), tmp_path / "out", sh.Options())
    got = outputs(result)
    assert [d["text"] for d in got] == [line for part in parts for line in part]
    # each shard's documents: exactly Model.score's of that shard's lines
    want = [w for part in parts for w in model.score(part)]
    for g, w in zip(got, want, strict=True):
        assert (g["logprob"], g["tokens"], g["oov"]) == (w.logprob, w.tokens, w.oov)
    # and Model.score's of the whole text to float32 rounding (which lines share a
    # batch changes the order of the products' sums)
    whole = model.score([line for part in parts for line in part])
    for g, w in zip(got, whole, strict=True):
        assert g["tokens"] == w.tokens and g["logprob"] == pytest.approx(w.logprob, rel=1e-5)
    # the merged totals: the sums of the shards', as one process sums them
    assert result.tokens == whole.total.tokens and result.documents == whole.total.lines
    one = math.fsum(w.logprob for w in want)
    assert math.isclose(result.logprob, one, rel_tol=1e-13)
    assert math.isclose(result.perplexity, whole.total.perplexity, rel_tol=1e-5)
    summary = json.loads((tmp_path / "out" / sh.SUMMARY).read_text())
    assert summary["tokens"] == whole.total.tokens and summary["documents"] == 131


def test_a_json_document_of_several_lines_sums_its_lines(tmp_path, model):
    docs = ["the cat sat\na dog ran\n", "far away", "", "on a mat\n\nthe dog"]
    path = tmp_path / "docs.jsonl"
    records = [{"id": i, "body": d, "keep": [1, 2]} for i, d in enumerate(docs)]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    options = sh.Options(jsonl=True, field="body")
    result = sh.score_files(model, [path], tmp_path / "out", options)
    got = outputs(result)
    for record, doc, out in zip(records, docs, got, strict=True):
        pieces = doc.split("\n")
        if len(pieces) > 1 and pieces[-1] == "":
            pieces.pop()
        want = list(model.score(pieces))
        assert out["id"] == record["id"] and out["keep"] == [1, 2]  # the record is kept
        assert out["tokens"] == sum(w.tokens for w in want)
        assert out["logprob"] == pytest.approx(sum(w.logprob for w in want), rel=1e-12)
        assert out["perplexity"] == pytest.approx(math.exp(-out["logprob"] / out["tokens"]))


def test_buckets_from_percentiles_and_from_cutoffs_given_back(tmp_path, model):
    paths = write_shards(tmp_path, [lines(60, 5), lines(45, 6)])
    result = sh.score_files(model, paths, tmp_path / "a", sh.Options(percentiles=(30, 60)))
    docs = outputs(result)
    ppl = np.array([d["perplexity"] for d in docs])
    lo, hi = result.cutoffs
    assert (lo, hi) == tuple(np.percentile(ppl, [30, 60]))
    for d in docs:
        p = d["perplexity"]
        assert d["bucket"] == ("head" if p <= lo else "middle" if p <= hi else "tail")
    counts = {b: sum(d["bucket"] == b for d in docs) for b in sh.BUCKETS}
    assert abs(counts["head"] - 0.3 * len(docs)) <= 2 and counts["tail"] >= 0.35 * len(docs)
    cutoffs = sh.read_cutoffs(tmp_path / "a" / sh.CUTOFFS)
    again = sh.score_files(model, paths, tmp_path / "b", sh.Options(cutoffs=cutoffs))
    assert [d["bucket"] for d in outputs(again)] == [d["bucket"] for d in docs]


def test_perplexity_filters_keep_exactly_the_documents_within(tmp_path, model):
    paths = write_shards(tmp_path, [lines(50, 7)])
    every = outputs(sh.score_files(model, paths, tmp_path / "all", sh.Options()))
    ppl = sorted(d["perplexity"] for d in every)
    lo, hi = ppl[10], ppl[40]
    result = sh.score_files(model, paths, tmp_path / "f", sh.Options(min_ppl=lo, max_ppl=hi))
    kept = outputs(result)
    assert [d["line"] for d in kept] == [d["line"] for d in every if lo <= d["perplexity"] <= hi]
    assert result.shards[0].kept == len(kept) and result.shards[0].documents == 50


def test_bad_records_are_named_or_skipped_and_counted(tmp_path, model):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"text": "the cat"}\n{"txt": "no field"}\nnot json\n[1, 2]\n'
        b'{"text": "a \xff dog"}\n{"text": 7}\n{"text": "ran"}\n'
    )
    with pytest.raises(InputError, match=r"bad.jsonl: record 2: no field 'text'"):
        sh.score_files(model, [path], tmp_path / "out", sh.Options(jsonl=True))
    assert not list((tmp_path / "out").glob("*.jsonl*")) and not list(
        (tmp_path / "out").glob(".*.tmp")
    )  # no partial output, no temporary file
    result = sh.score_files(model, [path], tmp_path / "out", sh.Options(jsonl=True, skip_bad=True))
    r = result.shards[0]
    assert (r.documents, r.skipped) == (2, 5)
    assert any("invalid UTF-8" in p for p in r.problems) and any(
        "not JSON" in p for p in r.problems
    )
    assert [d["text"] for d in outputs(result)] == ["the cat", "ran"]


def test_a_corrupt_compressed_shard(tmp_path, model):
    good, bad = write_shards(tmp_path, [lines(20, 8), lines(500, 9)])[:2]
    bad.write_bytes(bad.read_bytes()[:-40])  # truncated gzip
    with pytest.raises(InputError, match=r"shard1.txt.gz: unreadable after record \d+"):
        sh.score_files(model, [good, bad], tmp_path / "out", sh.Options())
    result = sh.score_files(model, [good, bad], tmp_path / "out2", sh.Options(skip_bad=True))
    assert result.shards[1].output is None and result.shards[1].skipped == 1
    assert result.documents == 20 and not (tmp_path / "out2" / "shard1.txt.gz.jsonl").exists()
    bad.write_bytes(b"\x00" * 50)  # not gzip at all
    with pytest.raises(InputError, match=r"shard1.txt.gz: unreadable after record 0"):
        sh.score_files(model, [good, bad], tmp_path / "out3", sh.Options())


def test_the_command_line(tmp_path, model, capsys):
    model.save(tmp_path / "m.rnnlm")
    paths = write_shards(tmp_path, [lines(30, 10), lines(20, 11)])
    out = tmp_path / "out"
    argv = ["score", str(tmp_path / "m.rnnlm"), *map(str, paths), "--out", str(out)]
    assert main([*argv, "--buckets", "30,60", "--json"]) == 0
    total = json.loads(capsys.readouterr().out)
    assert total["documents"] == 50 and len(total["cutoffs"]) == 2
    assert main(["score", str(tmp_path / "m.rnnlm"), "--jsonl", str(paths[0])]) == 2
    assert "--jsonl go with --out DIR" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "m.rnnlm"), *map(str, paths)]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    assert main([*argv, "--buckets", "60"]) == 2
    assert "two numbers" in capsys.readouterr().err
    twin = tmp_path / "x" / paths[0].name
    twin.parent.mkdir()
    twin.write_bytes(paths[0].read_bytes())
    assert main([*argv, str(twin)]) == 2
    assert "would write the same output" in capsys.readouterr().err
