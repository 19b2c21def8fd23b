"""Model.score: sentence and corpus modes against the oracle and against Streams; files
equal lines; OOV counting; errors."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from rnnlm_engine import InputError, Model, ModelConfig, VocabularyError, oracle
from rnnlm_engine.vocab import Vocabulary

TEXT = "the cat sat on the mat\nthe dog sat\n\non the log the end\na cat\n"
LINES = TEXT.split("\n")[:-1]


def word_model(text=TEXT, seed=0, **build):
    vocab = Vocabulary.build(text, "word", **build)
    config = ModelConfig("lstm", len(vocab), 6, 7, 2)
    rng = np.random.default_rng(seed)
    sd = {
        n: rng.uniform(-0.5, 0.5, s).astype(np.float32)
        for n, s in config.parameter_shapes().items()
    }
    return sd, config, Model.from_state_dict(sd, vocab=vocab)


def oracle_logprobs(sd, config, inputs, targets):
    lp, _ = oracle.model_forward(sd, config, np.asarray(inputs).reshape(-1, 1))
    return lp[np.arange(len(targets)), 0, np.asarray(targets)]


def line_ids(vocab, line):
    return [vocab.id(w) for w in line.split()] + [vocab.eos_id]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_sentence_mode_scores_each_line_from_a_fresh_state(batch_size):
    sd, config, model = word_model()
    vocab = model.vocab
    scoring = model.score(LINES, per_token=True, batch_size=batch_size)
    results = list(scoring)
    assert [r.line for r in results] == list(range(1, len(LINES) + 1))
    total_lp, total_n = 0.0, 0
    for r, line in zip(results, LINES, strict=True):
        ids = line_ids(vocab, line)
        want = oracle_logprobs(sd, config, [vocab.eos_id] + ids[:-1], ids)
        np.testing.assert_allclose(r.token_logprobs, want, atol=1e-5 * max(1, np.abs(want).max()))
        assert r.tokens == len(ids) and r.logprob == pytest.approx(want.sum(), abs=1e-4)
        assert r.perplexity == pytest.approx(math.exp(-want.sum() / len(ids)), rel=1e-4)
        total_lp += want.sum()
        total_n += len(ids)
    assert scoring.total.tokens == total_n and scoring.total.lines == len(LINES)
    assert scoring.total.perplexity == pytest.approx(math.exp(-total_lp / total_n), rel=1e-4)


def test_corpus_mode_carries_the_state_across_lines():
    sd, config, model = word_model()
    vocab = model.vocab
    ids = vocab.encode(TEXT)  # every line's words and <eos>
    want = oracle_logprobs(sd, config, ids[:-1], ids[1:])  # the first token: context only
    results = list(model.score(LINES, mode="corpus", per_token=True))
    got = np.concatenate([r.token_logprobs for r in results])
    assert np.isnan(got[0])
    np.testing.assert_allclose(got[1:], want, atol=1e-5 * np.abs(want).max())
    assert sum(r.tokens for r in results) == len(ids) - 1


def test_stream_log_probs_equal_sentence_scores():
    _, _, model = word_model()
    vocab = model.vocab
    line = LINES[0]
    s = model.stream()
    s.feed([vocab.eos_id])
    total = 0.0
    for t in line_ids(vocab, line):
        total += s.logprob(t)
        s.feed([t])
    (result,) = list(model.score([line]))
    assert result.logprob == pytest.approx(total, abs=1e-4)


def test_a_file_scores_as_its_lines(tmp_path):
    _, _, model = word_model()
    path = tmp_path / "in.txt"
    path.write_text(TEXT, encoding="utf-8")
    for mode in ("sentence", "corpus"):
        a = [(r.logprob, r.tokens) for r in model.score(path, mode=mode)]
        b = [(r.logprob, r.tokens) for r in model.score(LINES, mode=mode)]
        assert a == b


def test_unknown_words_count_as_oov_or_fail_with_the_line():
    _, _, with_unk = word_model(max_size=8)
    (r,) = list(with_unk.score(["the zebra sat"], per_token=True))
    assert r.oov == 1 and list(r.oov_flags) == [False, True, False, False]
    _, _, closed = word_model()
    with pytest.raises(VocabularyError, match=r"line 2: .*'zebra'"):
        list(closed.score(["the cat", "the zebra"]))


def test_bad_arguments():
    _, _, model = word_model()
    with pytest.raises(InputError, match="mode must be one of"):
        model.score(LINES, mode="paragraph")
    with pytest.raises(InputError, match="no such file"):
        model.score(Path("/no/such/file.txt"))
    with pytest.raises(InputError, match="got bytes"):
        model.score(b"the cat")
    with pytest.raises(InputError, match="got int"):
        model.score(5)
    with pytest.raises(InputError, match="batch_size"):
        model.score(LINES, batch_size=0)
    config = ModelConfig("rnn", 5, 3, 3, 1)
    bare = Model.from_state_dict(
        {n: np.zeros(s, np.float32) for n, s in config.parameter_shapes().items()}, cell="rnn"
    )
    with pytest.raises(InputError, match="needs a model with a vocabulary"):
        bare.score(LINES)


def test_a_carriage_return_does_not_end_a_line_in_a_file(tmp_path):
    _, _, model = word_model()
    path = tmp_path / "cr.txt"
    path.write_bytes(b"the cat\rsat\non the mat\n")
    results = list(model.score(path))
    assert [r.line for r in results] == [1, 2]


def test_corpus_mode_with_empty_lines_and_no_line_end_token():
    vocab = Vocabulary.build("abcab", "char")  # no "\n" in the vocabulary
    config = ModelConfig("rnn", len(vocab), 3, 3, 1)
    rng = np.random.default_rng(0)
    sd = {
        n: rng.uniform(-0.5, 0.5, s).astype(np.float32)
        for n, s in config.parameter_shapes().items()
    }
    model = Model.from_state_dict(sd, cell="rnn", vocab=vocab)
    results = list(model.score(["", "abc", ""], mode="corpus"))
    assert [r.tokens for r in results] == [0, 2, 0]


def test_a_string_is_text_never_a_file_name(tmp_path, monkeypatch):
    _, _, model = word_model()

    def scored(source, **kw):
        return [(r.line, r.logprob, r.tokens) for r in model.score(source, **kw)]

    for mode in ("sentence", "corpus"):
        assert scored("the cat sat", mode=mode) == scored(["the cat sat"], mode=mode)
        assert scored(TEXT, mode=mode) == scored(LINES, mode=mode)  # "\n" ends each line
        assert scored("the cat\nsat", mode=mode) == scored(["the cat", "sat"], mode=mode)
    (empty,) = scored("")  # the empty sentence: only its line end is predicted
    assert empty[2] == 1
    # a string that names a file is still text, with a warning that says how to get the file
    (tmp_path / "cat").write_text("the dog sat\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"pass pathlib.Path\('cat'\) to score the file"):
        assert scored("cat") == scored(["cat"])
    assert scored(Path("cat")) == scored(["the dog sat"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for text that names no file
        scored("the cat")


def test_empty_lines_score_as_empty_sentences_without_a_line_end_token(tmp_path):
    vocab = Vocabulary.build("abcab", "char")  # no "\n" in the vocabulary
    config = ModelConfig("rnn", len(vocab), 3, 3, 1)
    rng = np.random.default_rng(0)
    sd = {
        n: rng.uniform(-0.5, 0.5, s).astype(np.float32)
        for n, s in config.parameter_shapes().items()
    }
    model = Model.from_state_dict(sd, cell="rnn", vocab=vocab)
    path = tmp_path / "t.txt"
    path.write_text("\nabc\n\nb\n", encoding="utf-8")
    for source in (path, ["", "abc", "", "b"]):
        results = list(model.score(source, batch_size=2, per_token=True))
        assert [r.tokens for r in results] == [0, 2, 0, 0]
        assert [r.logprob for r in results][::2] == [0.0, 0.0]
        assert len(results[0].token_logprobs) == 0 and len(results[3].token_logprobs) == 1
        # the line with tokens scores as it does alone
        (alone,) = list(model.score(["abc"]))
        assert results[1].logprob == pytest.approx(alone.logprob, abs=1e-6)
