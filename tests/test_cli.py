"""The rnnlm command line: train, info, demo; one-line errors and exit codes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from rnnlm_engine.cli import main
from rnnlm_engine.errors import ModelFileError
from rnnlm_engine.model import load

TEXT = "".join(f"line {i % 7} says {'abc'[i % 3]} and {'xyz'[i % 2]}\n" for i in range(400))


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


TRAIN = ["--level", "word", "--layers", "1", "--hidden", "8", "--batch-size", "4",
         "--bptt", "6", "--epochs", "2", "--optimizer", "adam", "--quiet"]  # fmt: skip


def test_train_then_info(corpus, tmp_path, capsys):
    out = tmp_path / "m.rnnlm"
    code, _, err = run(["train", "--train", corpus, "--out", out, *TRAIN], capsys)
    assert code == 0, err
    model = load(out)
    assert model.vocab.kind == "word" and model.config.hidden_size == 8
    code, text, _ = run(["info", out], capsys)
    assert code == 0
    assert "lstm 1 x 8" in text and "word" in text and "valid loss" in text
    code, text, _ = run(["info", out, "--json"], capsys)
    info = json.loads(text)
    assert info["config"]["hidden_size"] == 8
    assert info["metadata"]["epochs_completed"] == 2


def test_quantize_then_info_score_generate(corpus, tmp_path, capsys):
    """rnnlm quantize writes an int8 model (about 4x smaller) that info describes and that
    scores and generates; it is refused as a checkpoint, as its own input and as OUT."""
    out, q = tmp_path / "m.rnnlm", tmp_path / "q.rnnlm"
    assert run(["train", "--train", corpus, "--out", out, *TRAIN, "--hidden", "64"], capsys)[0] == 0
    code, _, err = run(["quantize", out, q], capsys)
    assert code == 0 and "int8" in err and "x smaller" in err
    assert out.stat().st_size > 3 * q.stat().st_size
    code, text, _ = run(["info", q], capsys)
    assert (
        code == 0
        and "int8 with a float32 scale per row" in text
        and "format            2.0" in text
    )
    info = json.loads(run(["info", q, "--json"], capsys)[1])
    assert info["storage"] == "int8" and info["features"] == ["int8"]
    float_info = json.loads(run(["info", out, "--json"], capsys)[1])
    assert float_info["storage"] == "float32"
    assert float_info["weight_bytes"] == 4 * float_info["parameters"]
    code, text, err = run(["score", q, corpus, "--json"], capsys)
    assert code == 0, err
    code, f_text, _ = run(["score", out, corpus, "--json"], capsys)
    totals = [json.loads(t.splitlines()[-1]) for t in (text, f_text)]
    assert 0 < totals[0]["perplexity"] < 1.05 * totals[1]["perplexity"]
    code, text, err = run(["generate", q, "--tokens", "5", "--seed", "1"], capsys)
    assert code == 0 and text.strip(), err
    for argv, message in [
        (["quantize", q, tmp_path / "r.rnnlm"], "already an int8 model"),
        (["quantize", out, out], "OUT is MODEL"),
        (["train", "--out", tmp_path / "x", "--resume", q], "an int8 model is for inference"),
    ]:
        code, _, err = run(argv, capsys)
        assert code == 2 and message in err, err


def test_resume_from_the_checkpoint_alone(corpus, tmp_path, capsys):
    """--resume finds the data files and settings in the checkpoint; more epochs run."""
    out = tmp_path / "m.rnnlm"
    assert run(["train", "--train", corpus, "--out", out, *TRAIN], capsys)[0] == 0
    # without --epochs the run keeps its own (2, all done): nothing more to train
    assert run(["train", "--out", out, "--resume", f"{out}.ckpt", "--quiet"], capsys)[0] == 0
    assert load(f"{out}.ckpt").metadata["epochs_completed"] == 2
    code, _, err = run(
        ["train", "--out", out, "--resume", f"{out}.ckpt", "--lr", "0.5", "--quiet"], capsys
    )
    assert code == 2 and "--lr 0.5 (the run has 0.002)" in err
    code, _, err = run(
        ["train", "--out", out, "--resume", f"{out}.ckpt", "--epochs", "3", "--quiet"], capsys
    )
    assert code == 0, err
    assert load(f"{out}.ckpt").metadata["epochs_completed"] == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--train", "/no/such/file.txt", "--out", "x"], "no such file"),
        (["train", "--train", "{corpus}", "--out", "x", "--dropout", "1.5"], "dropout"),
        (["train", "--train", "{corpus}", "--out", "x", "--max-time", "soon"], "duration"),
        (["train", "--out", "x"], "--train FILE is required"),
        (["info", "{corpus}"], "not an rnnlm-engine model file"),
        (["info"], "required: MODEL"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_errors_are_one_line_with_exit_2(argv, message, corpus, capsys):
    code, out, err = run([a.replace("{corpus}", str(corpus)) for a in argv], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_usage_errors_exit_2_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rnnlm_engine.cli", "info", str(tmp_path / "missing.rnnlm")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_debug_lets_the_exception_through(capsys, tmp_path):
    with pytest.raises(ModelFileError):
        main(["info", str(tmp_path / "missing.rnnlm"), "--debug"])


def test_demo_on_a_small_corpus(corpus, tmp_path, capsys):
    out = tmp_path / "demo.rnnlm"
    code, text, err = run(
        ["demo", "--corpus", corpus, "--epochs", "15", "--time", "1h", "--out", out,
         "--sample", "60", "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "bits per character" in text and "sample" in text
    bpc = float(text.split("validation: ")[1].split()[0])
    assert bpc < math.log2(20) - 1  # 20 distinct characters: well below a uniform guess
    assert load(out).vocab.kind == "char"


@pytest.fixture()
def trained(corpus, tmp_path, capsys):
    out = tmp_path / "m.rnnlm"
    assert run(["train", "--train", corpus, "--out", out, *TRAIN], capsys)[0] == 0
    return out


def test_score_prints_a_line_per_input_line_and_a_summary(trained, tmp_path, capsys):
    text = tmp_path / "s.txt"
    text.write_text("line 1 says a and x\nline 2 says b\n", encoding="utf-8")
    code, out, err = run(["score", trained, text], capsys)
    assert code == 0, err
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert [len(r) for r in rows] == [3, 3]
    assert [int(r[1]) for r in rows] == [7, 5]  # words + <eos>
    assert "2 lines, 12 tokens" in err and "perplexity" in err
    model = load(trained)
    want = [r.logprob for r in model.score(["line 1 says a and x", "line 2 says b"])]
    assert [float(r[0]) for r in rows] == pytest.approx(want, abs=5e-5)  # printed %.4f
    code, out, _ = run(["score", trained, text, "--log10", "--json", "--per-token"], capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0]["logprob"] == pytest.approx(want[0] / 2.302585092994046, rel=1e-12)
    assert len(records[1]["token_logprobs"]) == 5


def test_generate_is_reproducible_with_a_seed(trained, capsys):
    argv = ["generate", trained, "--prompt", "line", "--tokens", "15", "--seed", "4"]
    code, a, err = run(argv, capsys)
    assert code == 0, err
    assert run(argv, capsys)[1] == a and a.startswith("line")
    assert len(a.split()) >= 10


def test_byte_level_model_trains_and_generates_text(tmp_path, capsys):
    corpus = tmp_path / "u.txt"
    corpus.write_text("héllo wörld ✓ naïve café\n" * 60, encoding="utf-8")
    out = tmp_path / "b.rnnlm"
    argv = ["train", "--train", corpus, "--out", out, "--level", "byte", "--layers", "1",
            "--hidden", "16", "--batch-size", "4", "--bptt", "8", "--epochs", "1",
            "--quiet"]  # fmt: skip
    assert run(argv, capsys)[0] == 0
    assert load(out).vocab.kind == "byte" and load(out).config.vocab_size == 256
    code, text, err = run(["generate", out, "--prompt", "hé", "--tokens", "30", "--seed", "1"],
                          capsys)  # fmt: skip
    assert code == 0, err
    assert text.startswith("hé")


def test_score_accepts_options_before_the_file_and_generate_needs_no_prompt(
    trained, tmp_path, capsys
):
    text = tmp_path / "s.txt"
    text.write_text("line 1 says a\n", encoding="utf-8")
    code, out, err = run(["score", trained, "--json", text], capsys)
    assert code == 0, err
    assert json.loads(out)["tokens"] == 5
    code, out, err = run(["generate", trained, "--tokens", "5", "--seed", "2"], capsys)
    assert code == 0, err
    assert out.strip()


def test_score_reads_stdin_as_utf8_and_reports_invalid_bytes(trained):
    bad = b"line 1 says a\n" + b"line \xff2\n"
    cmd = [sys.executable, "-m", "rnnlm_engine.cli", "score", str(trained), "-"]
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict", LC_ALL="C")
    proc = subprocess.run(cmd, input=bad, capture_output=True, env=env)
    assert proc.returncode == 2
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "invalid UTF-8 in line 2" in err[0] and "--replace-invalid" in err[0]
    proc = subprocess.run(
        [*cmd, "--replace-invalid"], input=b"line 1 says a\n", capture_output=True, env=env
    )
    assert proc.returncode == 0 and proc.stdout.decode().split("\t")[1] == "5"


def test_info_of_a_vocabulary_without_its_token_list(tmp_path, capsys):
    from rnnlm_engine import ModelConfig
    from rnnlm_engine.modelfile import save

    config = ModelConfig("rnn", 5, 3, 3, 1)
    rng = np.random.default_rng(0)
    tensors = {n: rng.random(s, dtype=np.float32) for n, s in config.parameter_shapes().items()}
    save(tmp_path / "m", config=config, tensors=tensors, vocab={"kind": "x"})
    code, text, err = run(["info", tmp_path / "m"], capsys)
    assert code == 0, err
    assert "tokens not listed (x)" in text


def test_info_shows_metadata_that_is_not_a_number_instead_of_crashing(tmp_path, capsys):
    from rnnlm_engine import ModelConfig
    from rnnlm_engine.modelfile import save

    config = ModelConfig("rnn", 5, 3, 3, 1)
    rng = np.random.default_rng(0)
    tensors = {n: rng.random(s, dtype=np.float32) for n, s in config.parameter_shapes().items()}
    metadata = {
        "valid_loss": "oops",
        "valid_ppl": [1, 2],
        "valid_bpc": None,
        "epochs_completed": {"a": 1},
        "engine": b"\x00" * 500,
        "created": "a\nb" * 50,
    }
    save(tmp_path / "m", config=config, tensors=tensors, metadata=metadata)
    code, text, err = run(["info", tmp_path / "m"], capsys)
    assert code == 0, err
    assert "'oops' (not a number)" in text and "[1, 2] (not a number)" in text
    assert "None (not a number)" in text and "{'a': 1} (not a number)" in text
    assert max(len(line) for line in text.splitlines()) < 120  # long values are cut
    # one line each for file, format, model, vocabulary, parameters, weights, file size,
    # the three figures, epochs, engine, created and training state: a newline in a value
    # stays on its line
    assert len(text.splitlines()) == 14
    code, text, err = run(["info", tmp_path / "m", "--json"], capsys)
    assert code == 0, err
    assert json.loads(text)["metadata"]["valid_loss"] == "oops"


@pytest.mark.parametrize("given, factor", [("0.5", 0.5), ("1", 1.0), ("4", 0.25)])
def test_lr_decay_is_a_factor_or_word_language_models_divisor(given, factor, corpus, tmp_path,
                                                               capsys):  # fmt: skip
    out = tmp_path / "m.rnnlm"
    argv = ["train", "--train", corpus, "--out", out, *TRAIN, "--epochs", "1"]
    code, _, err = run([*argv, "--lr-decay", given], capsys)
    assert code == 0, err
    assert load(out).metadata["train_config"]["lr_decay"] == factor
    # resuming with the same habit is the same setting, not a change
    code, _, err = run(["train", "--out", out, "--resume", f"{out}.ckpt", "--epochs", "2",
                        "--lr-decay", given, "--quiet"], capsys)  # fmt: skip
    assert code == 0, err


@pytest.mark.parametrize("given", ["0", "-4", "nan", "inf", "fast"])
def test_lr_decay_refuses_what_is_no_factor(given, corpus, capsys):
    code, _, err = run(["train", "--train", corpus, "--out", "x", "--lr-decay", given], capsys)
    assert code == 2 and "--lr-decay" in err and len(err.strip().splitlines()) == 1
