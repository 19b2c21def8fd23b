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


# ---------------------------------------------------------------------------- review findings


def test_an_output_never_replaces_an_input_and_a_file_is_scored_once(tmp_path, model):
    a = tmp_path / "a.txt"
    a.write_text("the cat sat\n")
    jsonl = tmp_path / "a.txt.jsonl"  # a's output, were tmp_path the output folder
    jsonl.write_text('{"text": "a dog ran far away"}\n')
    before = jsonl.read_bytes()
    with pytest.raises(InputError, match="a.txt.jsonl would be overwritten by an output"):
        sh.score_files(model, [a, jsonl], tmp_path, sh.Options())
    summary = tmp_path / sh.SUMMARY
    summary.write_text("the cat\n")
    with pytest.raises(InputError, match="summary.json would be overwritten"):
        sh.score_files(model, [summary], tmp_path, sh.Options())
    assert jsonl.read_bytes() == before
    with pytest.raises(InputError, match="a.txt is given twice"):
        sh.score_files(model, [a, tmp_path / "." / "a.txt"], tmp_path / "out", sh.Options())
    with pytest.raises(InputError, match="a folder, not a file"):
        sh.score_files(model, [tmp_path], tmp_path / "out", sh.Options())


def test_an_unknown_token_without_unk_is_a_bad_record_named_and_skippable(tmp_path):
    vocab = Vocabulary("word", ["<eos>", *WORDS])  # closed: no <unk>
    config = ModelConfig("lstm", len(vocab), 8, 8, 1)
    closed = Model.from_state_dict(
        initial_parameters(config, 0.5, np.random.default_rng(0)), vocab=vocab
    )
    path = tmp_path / "s.jsonl"
    docs = ["the cat\nsat on\na mat", "dog ran", "far zebra away", "the dog"]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    with pytest.raises(InputError, match=r"s.jsonl: record 3: .*'zebra'"):
        sh.score_files(closed, [path], tmp_path / "out", sh.Options(jsonl=True))
    result = sh.score_files(closed, [path], tmp_path / "out", sh.Options(jsonl=True, skip_bad=True))
    r = result.shards[0]
    assert (r.documents, r.skipped) == (3, 1) and "record 3" in r.problems[0]
    assert [d["text"] for d in outputs(result)] == [docs[0], docs[1], docs[3]]


def test_a_lone_surrogate_is_written_back_escaped(tmp_path, model):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "the \\ud800 cat", "id": 1}\n{"text": "sat", "note": "é"}\n')
    result = sh.score_files(model, [path], tmp_path / "out", sh.Options(jsonl=True))
    got = outputs(result)
    assert [d["text"] for d in got] == ["the \ud800 cat", "sat"] and got[1]["note"] == "é"
    assert b"\\ud800" in open(result.shards[0].output, "rb").read()


def test_a_perplexity_beyond_float64_is_inf_and_null_in_json(tmp_path, model, monkeypatch):
    from rnnlm_engine.scoring import perplexity

    assert perplexity(-7 * 720.0, 7) == math.inf and math.isnan(perplexity(0.0, 0))
    assert perplexity(-7.0, 7) == math.e
    path = tmp_path / "a.txt"
    path.write_text("the cat\n")
    result = sh.score_files(model, [path], tmp_path / "out", sh.Options())
    monkeypatch.setattr(result.shards[0], "logprob", -1e6)
    assert result.perplexity == math.inf and result.to_dict()["perplexity"] is None


def test_cutoffs_may_be_equal_and_options_are_checked(tmp_path, model):
    sh.Options(cutoffs=(10.5, 10.5))  # equal percentiles of equal documents
    for kwargs, match in [
        ({"percentiles": (30, 30)}, "two increasing numbers"),
        ({"min_ppl": 50, "max_ppl": 20}, "min_ppl 50 is above max_ppl 20"),
        ({"min_ppl": True}, "positive number"),
        ({"cutoffs": (True, 3)}, "two increasing numbers"),
    ]:
        with pytest.raises(InputError, match=match):
            sh.Options(**kwargs)
    path = tmp_path / "same.txt"
    path.write_text("the cat sat\n" * 5)
    out = tmp_path / "out"
    result = sh.score_files(model, [path], out, sh.Options(percentiles=(30.0, 60.0)))
    assert result.cutoffs[0] == result.cutoffs[1]
    given = sh.Options(cutoffs=sh.read_cutoffs(out / sh.CUTOFFS))
    again = sh.score_files(model, [path], tmp_path / "out2", given)
    assert [d["bucket"] for d in outputs(again)] == ["head"] * 5


def test_a_skipped_corrupt_shard_leaves_no_earlier_output(tmp_path, model):
    good, bad = write_shards(tmp_path, [lines(5, 1), lines(300, 2)])[:2]
    out = tmp_path / "out"
    sh.score_files(model, [good, bad], out, sh.Options())
    assert (out / "shard1.txt.gz.jsonl").exists()
    bad.write_bytes(bad.read_bytes()[:-40])
    result = sh.score_files(model, [good, bad], out, sh.Options(skip_bad=True))
    assert result.shards[1].output is None
    assert not (out / "shard1.txt.gz.jsonl").exists()


def test_options_that_out_would_ignore_are_refused(tmp_path, model, capsys):
    model.save(tmp_path / "m.rnnlm")
    (tmp_path / "a.txt").write_text("the cat\n")
    argv = ["score", str(tmp_path / "m.rnnlm"), str(tmp_path / "a.txt"), "--out",
            str(tmp_path / "out")]  # fmt: skip
    for extra, said in [
        (["--mode", "corpus"], "--mode corpus cannot go with --out"),
        (["--log10"], "--log10 cannot go with --out"),
        (["--per-token"], "--per-token cannot go with --out"),
        (["--field", "body"], "--field names a field of JSON records: it goes with --jsonl"),
    ]:
        assert main([*argv, *extra]) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
