"""rnnlm diagnose and rnnlm explain: their figures are the library's (saturation, gradient by
lag, singular values, feature units, attributions), the page works in a real browser with a
model's data, the figures' extra is named when missing, and bad input is one clear line."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import numpy as np
import pytest
from chromium import CHROMIUM, SKIP_REASON
from chromium import run as run_page

from rnnlm_engine import Model, ModelConfig
from rnnlm_engine.attribution import attributions
from rnnlm_engine.cli import main
from rnnlm_engine.inspection import find_units, gate_saturation
from rnnlm_engine.vocab import Vocabulary

# the figures need the report extra (matplotlib); the README's test command has only the
# test extra, where the page goes without them
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
TEXT = 'First "Citizen": (before we proceed) any further,\nhear me speak.\n' * 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("explain")
    vocab = Vocabulary.build(TEXT, "char")
    config = ModelConfig("lstm", len(vocab), 6, 8, 2)
    rng = np.random.default_rng(0)
    sd = {n: rng.uniform(-0.6, 0.6, s).astype(np.float32)
          for n, s in config.parameter_shapes().items()}  # fmt: skip
    model = Model.from_state_dict(sd, cell="lstm", vocab=vocab)
    model.save(d / "m.rnnlm")
    (d / "text.txt").write_text(TEXT)
    return d, model


def test_diagnose_json_holds_the_librarys_figures(files, capsys):
    d, model = files
    assert main(["diagnose", str(d / "m.rnnlm"), str(d / "text.txt"), "--json",
                 "--max-lag", "12", "--positions", "30"]) == 0  # fmt: skip
    got = json.loads(capsys.readouterr().out)
    ids = model.vocab.encode(TEXT)
    tr = model.trace(ids)
    assert got["tokens"] == len(ids)
    assert got["perplexity"] == pytest.approx(np.exp(-np.mean(tr.logprob[1:])), rel=1e-6)
    sat = gate_saturation(tr)
    for layer in (0, 1):
        for g in "ifo":
            left, right = sat[layer][g]
            s = got["saturation"][str(layer)][g]
            assert s["left"] == pytest.approx(left.mean()) and s["right"] == pytest.approx(
                right.mean()
            )
            assert s["units_right"] == int(np.sum(right > 0.5))
    prof = model.gradient_by_lag(ids, 12, 30)
    assert np.allclose(got["gradient_by_lag"]["norms"], prof.norms)
    assert got["gradient_by_lag"]["reach"] == prof.reach(0.01)
    assert got["singular_values"]["1"]["all"] == pytest.approx(prof.singular_values[1]["all"])
    best = find_units(tr, "bracket_depth", top=3)
    assert [(u["layer"], u["unit"], u["state"]) for u in got["units"]["bracket_depth"]] == [
        (m.layer, m.unit, m.state) for m in best
    ]


def test_diagnose_prints_tables(files, capsys):
    d, _ = files
    assert main(["diagnose", str(d / "m.rnnlm"), str(d / "text.txt"), "--max-lag", "5"]) == 0
    out = capsys.readouterr().out
    for heading in ("gate saturation", "gradient by lag", "largest singular value",
                    "units that track a feature"):  # fmt: skip
        assert heading in out
    assert re.search(r"^\s+1\s+i\s+\d\.\d{3}", out, re.M)  # layer 1's input gate row


@pytest.fixture(scope="module")
def page(files, tmp_path_factory):
    d, _ = files
    out = tmp_path_factory.mktemp("page") / "report.html"
    assert main(["explain", str(d / "m.rnnlm"), str(d / "text.txt"), "--html", str(out),
                 "--window", "7", "--quiet"]) == 0  # fmt: skip
    return out


def test_the_page_is_self_contained(page):
    text = page.read_text()
    assert not re.search(r"https?://", text)
    assert text.count('id="data"') == 1
    assert ("<svg" in text) == HAVE_MATPLOTLIB  # the figures


PROBE = r"""
const toks = [...document.querySelectorAll("#text .tok")];
const tip = document.getElementById("tip"), panel = document.getElementById("panel");
const fire = (el, type) => el.dispatchEvent(new MouseEvent(type, {bubbles: true}));
const r = {count: toks.length};
fire(toks[40], "mouseover");
r.tip = tip.innerText;
fire(toks[40], "click");
r.win = toks.flatMap((s, i) => (s.classList.contains("win") ? [i] : []));
r.scores = [...panel.querySelectorAll(".scores tr")].map((tr) => tr.lastChild.textContent);
r.figures = document.querySelectorAll("figure svg").length;
return r;
"""


def test_the_page_shows_the_models_predictions_and_attributions(files, page):
    if CHROMIUM is None:
        pytest.skip(SKIP_REASON)
    _, model = files
    ids = model.vocab.encode(TEXT)
    run = run_page(str(page), PROBE)
    assert run.result is not None and "exception" not in run.result, run.stderr[-2000:]
    assert run.result["errors"] == [] and run.console == []
    r = run.result["value"]
    assert r["count"] == len(ids)
    tr = model.trace(ids)
    assert re.search(rf"rank\s+{tr.rank[40]}\b", r["tip"]), r["tip"]
    assert model.vocab.token(int(tr.top_ids[40, 0])).replace(" ", "\u2423") in r["tip"]
    assert r["win"] == list(range(33, 40))
    want = attributions(model, ids, 7)[40]
    assert [float(s) for s in r["scores"]] == pytest.approx(want.tolist(), rel=6e-3, abs=1e-6)
    assert r["figures"] == (2 if HAVE_MATPLOTLIB else 0)


def test_without_matplotlib_the_page_is_written_and_the_extra_named(
    files, tmp_path, monkeypatch, capsys
):
    d, _ = files
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    out = tmp_path / "r.html"
    assert main(["explain", str(d / "m.rnnlm"), str(d / "text.txt"), "--html", str(out)]) == 0
    err = capsys.readouterr().err
    assert "pip install 'rnnlm-engine[report]'" in err
    text = out.read_text()
    assert "<svg" not in text and "rnnlm-engine[report]" in text


def test_max_tokens_cuts_the_text_and_says_so(files, tmp_path, capsys):
    d, _ = files
    out = tmp_path / "r.html"
    assert main(["explain", str(d / "m.rnnlm"), str(d / "text.txt"), "--html", str(out),
                 "--max-tokens", "50"]) == 0  # fmt: skip
    text = out.read_text()
    data = json.loads(re.search(r'id="data">(.*?)</script>', text, re.S).group(1))
    assert len(data["tokens"]) == 50
    assert f"the first 50 of the text&#x27;s {len(TEXT)} tokens" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-tokens", "2"], "--max-tokens must be at least 3"),
        (["--window", "0"], "--window and --max-units must be at least 1"),
    ],
)
def test_bad_options_are_one_line(files, tmp_path, capsys, args, message):
    d, _ = files
    code = main(["explain", str(d / "m.rnnlm"), str(d / "text.txt"), "--html",
                 str(tmp_path / "x.html"), *args])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bad_inputs_are_one_line(files, tmp_path, capsys):
    d, model = files
    (tmp_path / "empty.txt").write_text("")
    assert main(["diagnose", str(d / "m.rnnlm"), str(tmp_path / "empty.txt")]) == 2
    assert "the text is empty" in capsys.readouterr().err
    assert main(["diagnose", str(d / "m.rnnlm"), str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    bare = Model.from_state_dict(model.state_dict(), cell="lstm")  # no vocabulary
    bare.save(tmp_path / "bare.rnnlm")
    assert main(["diagnose", str(tmp_path / "bare.rnnlm"), str(d / "text.txt")]) == 2
    assert "no vocabulary" in capsys.readouterr().err
    (tmp_path / "odd.txt").write_text("zzz \u00e9\u00e9")  # characters the vocabulary lacks
    assert main(["diagnose", str(d / "m.rnnlm"), str(tmp_path / "odd.txt")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_tanh_rnn_is_diagnosed_without_gates(files, tmp_path, capsys):
    _, model = files
    config = ModelConfig("rnn", model.config.vocab_size, 6, 8, 1)
    rng = np.random.default_rng(1)
    sd = {n: rng.uniform(-0.5, 0.5, s).astype(np.float32)
          for n, s in config.parameter_shapes().items()}  # fmt: skip
    Model.from_state_dict(sd, cell="rnn", vocab=model.vocab).save(tmp_path / "rnn.rnnlm")
    (tmp_path / "t.txt").write_text(TEXT)
    assert main(["diagnose", str(tmp_path / "rnn.rnnlm"), str(tmp_path / "t.txt"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert "saturation" not in got and len(got["gradient_by_lag"]["norms"]) == 1
