"""The rnnlm command line: train, info, demo; one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_resume_from_the_checkpoint_alone(corpus, tmp_path, capsys):
    """--resume finds the data files and settings in the checkpoint; more epochs run."""
    out = tmp_path / "m.rnnlm"
    assert run(["train", "--train", corpus, "--out", out, *TRAIN], capsys)[0] == 0
    # without --epochs the run keeps its own (2, all done): nothing more to train
    assert run(["train", "--out", out, "--resume", f"{out}.ckpt", "--quiet"], capsys)[0] == 0
    assert load(f"{out}.ckpt").metadata["epochs_completed"] == 2
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
        ["demo", "--corpus", corpus, "--time", "4", "--out", out, "--sample", "60", "--quiet"],
        capsys,
    )
    assert code == 0, err
    assert "bits per character" in text and "sample" in text
    bpc = float(text.split("validation: ")[1].split()[0])
    assert bpc < 3.0
    assert load(out).vocab.kind == "char"
