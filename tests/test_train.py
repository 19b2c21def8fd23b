"""Training: the loss goes down, Ctrl-C and resume give the uninterrupted result bit for
bit, non-finite losses roll back, checkpoints refuse the wrong data or settings."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest

import rnnlm_engine.kernels.cpu as kc
from rnnlm_engine import modelfile, oracle
from rnnlm_engine.errors import ConfigError, InputError
from rnnlm_engine.model import Model, load
from rnnlm_engine.optim import SGD, Adam, RowSparse, clip_grad_norm
from rnnlm_engine.train import (
    Progress,
    TrainConfig,
    TrainingDiverged,
    batchify,
    evaluate,
    initial_parameters,
    train,
)
from rnnlm_engine.vocab import Vocabulary

# a small text with structure worth learning: words from a tiny grammar
WORDS = ["the cat", "a dog", "the bird", "my fish"]
VERBS = ["sees", "likes", "chases", "hears"]


def corpus(n_lines: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    lines = [
        f"{WORDS[rng.integers(4)]} {VERBS[rng.integers(4)]} {WORDS[rng.integers(4)]} ."
        for _ in range(n_lines)
    ]
    return "\n".join(lines) + "\n"


def small_config(**changes) -> TrainConfig:
    base = dict(
        cell="lstm", emb_size=12, hidden_size=16, num_layers=2, optimizer="adam", lr=0.01,
        clip=1.0, epochs=3, batch_size=4, bptt=9, eval_batch_size=3, seed=3,
        checkpoint_every=0.0, dropout=0.1,
    )  # fmt: skip
    return TrainConfig(**(base | changes))


@pytest.fixture(scope="module")
def data():
    text = corpus(300, 0)
    vocab = Vocabulary.build(text, "char")
    return vocab, vocab.encode(text), vocab.encode(corpus(40, 1))


class Silent(Progress):
    """Progress that records messages instead of printing them."""

    def __init__(self):
        super().__init__(enabled=False)
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


class CtrlCAt(Silent):
    """Presses Ctrl-C (a real SIGINT to this process) after the given window count."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.count = after, 0

    def update(self, *args) -> None:
        self.count += 1
        if self.count == self.after:
            os.kill(os.getpid(), signal.SIGINT)


def weights(path) -> dict[str, np.ndarray]:
    return dict(modelfile.load(path).tensors)


def test_batchify_cuts_the_stream_into_columns():
    ids = np.arange(11)
    np.testing.assert_array_equal(batchify(ids, 2), [[0, 5], [1, 6], [2, 7], [3, 8], [4, 9]])
    with pytest.raises(InputError, match="too few for batch size 8"):
        batchify(ids, 8)


def test_training_lowers_the_loss_and_keeps_the_best_model(data, tmp_path):
    vocab, train_ids, valid_ids = data
    out = tmp_path / "m.rnnlm"
    result = train(train_ids, valid_ids, vocab, small_config(), out, progress=Silent())
    losses = [e["valid_loss"] for e in result.history]
    assert result.stopped == "done" and len(losses) == 3
    assert losses[-1] < losses[0] < math.log(len(vocab))  # better than uniform, and learning
    model = load(out)
    assert model.vocab == vocab
    assert model.metadata["valid_loss"] == min(losses)
    # the saved model scores the validation text as training measured it: the same
    # weights and the same float32 operations, so the same number exactly
    assert evaluate(model, batchify(valid_ids, 3)) == min(losses)


def test_ctrl_c_then_resume_ends_with_the_same_weights_bit_for_bit(data, tmp_path):
    vocab, train_ids, valid_ids = data
    config = small_config()
    full = train(train_ids, valid_ids, vocab, config, tmp_path / "a.rnnlm", progress=Silent())
    assert full.stopped == "done"

    # windows per epoch: 1 + (len(train) // 4 - 2) // 9; stop in the middle of epoch 2
    press = CtrlCAt(after=(len(train_ids) // 4 - 1) // 9 + 7)
    part = train(train_ids, valid_ids, vocab, config, tmp_path / "b.rnnlm", progress=press)
    assert part.stopped == "interrupted"
    assert any("continue with --resume" in m for m in press.messages)
    ckpt = tmp_path / "b.rnnlm.ckpt"
    assert modelfile.load(ckpt).training["values"]["window"] > 0  # mid-epoch
    rest = train(train_ids, valid_ids, vocab, config, tmp_path / "b.rnnlm", resume=ckpt,
                 progress=Silent())  # fmt: skip
    assert rest.stopped == "done"
    a, b = weights(tmp_path / "a.rnnlm.ckpt"), weights(ckpt)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    a_best, b_best = weights(tmp_path / "a.rnnlm"), weights(tmp_path / "b.rnnlm")
    for name in a_best:
        np.testing.assert_array_equal(a_best[name], b_best[name], err_msg=name)
    assert [e["valid_loss"] for e in full.history] == [e["valid_loss"] for e in rest.history]
    # the interrupted epoch's training loss counts its windows from before the interruption
    assert [e["train_loss"] for e in full.history] == [e["train_loss"] for e in rest.history]


@pytest.mark.parametrize("tied", [False, True])
def test_row_sparse_embedding_gradient_is_the_dense_one(data, tied):
    vocab, train_ids, _ = data
    config = small_config(tied=tied, emb_size=16)
    params = initial_parameters(config.model_config(len(vocab)), 0.5, np.random.default_rng(5))
    if tied:
        params["decoder.weight"] = params["encoder.weight"]
    model = Model.from_state_dict(params, cell="lstm", tied=tied, vocab=vocab)
    inputs = batchify(train_ids, 4)[:9]
    targets = batchify(train_ids, 4)[1:10]
    _, dense, _ = model.loss_and_grad(inputs, targets)
    _, sparse, _ = model.loss_and_grad(inputs, targets, row_sparse=True)
    g = sparse["encoder.weight"]
    if tied:  # the decoder's gradient on the shared matrix is dense: it stays dense
        np.testing.assert_array_equal(g, dense["encoder.weight"])
        return
    assert isinstance(g, RowSparse)
    np.testing.assert_array_equal(g.rows, np.unique(inputs))
    np.testing.assert_array_equal(g.values, dense["encoder.weight"][g.rows])
    untouched = np.setdiff1d(np.arange(len(vocab)), g.rows)
    assert not np.any(dense["encoder.weight"][untouched])
    for name in dense:
        if name != "encoder.weight":
            np.testing.assert_array_equal(sparse[name], dense[name], err_msg=name)


def test_sgd_trains_the_same_with_the_row_sparse_gradient(data, tmp_path, monkeypatch):
    """Training with SGD takes the embedding's gradient row-sparse (clipping and update on
    the touched rows only); the run must be the dense run bit for bit."""
    vocab, train_ids, valid_ids = data
    config = small_config(optimizer="sgd", lr=1.0, clip=0.05, epochs=2)
    sparse = train(train_ids, valid_ids, vocab, config, tmp_path / "s.rnnlm", progress=Silent())
    monkeypatch.setattr(SGD, "takes_row_sparse", False)
    dense = train(train_ids, valid_ids, vocab, config, tmp_path / "d.rnnlm", progress=Silent())
    assert [e["valid_loss"] for e in sparse.history] == [e["valid_loss"] for e in dense.history]
    assert sparse.history[-1]["clipped"] > 0  # the clipping was exercised
    a, b = weights(tmp_path / "s.rnnlm.ckpt"), weights(tmp_path / "d.rnnlm.ckpt")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_resume_refuses_other_settings_or_data(data, tmp_path):
    vocab, train_ids, valid_ids = data
    config = small_config(epochs=1)
    out = tmp_path / "m.rnnlm"
    train(train_ids, valid_ids, vocab, config, out, progress=Silent())
    ckpt = tmp_path / "m.rnnlm.ckpt"
    with pytest.raises(ConfigError, match=r"different settings: lr \(0.01 in the checkpoint"):
        train(train_ids, valid_ids, vocab, small_config(epochs=2, lr=0.02), out, resume=ckpt,
              progress=Silent())  # fmt: skip
    with pytest.raises(ConfigError, match="other data"):
        train(train_ids[:-5], valid_ids, vocab, small_config(epochs=2), out, resume=ckpt,
              progress=Silent())  # fmt: skip
    # more epochs may be asked for
    more = train(train_ids, valid_ids, vocab, small_config(epochs=2), out, resume=ckpt,
                 progress=Silent())  # fmt: skip
    assert [e["epoch"] for e in more.history] == [1, 2]


def test_a_non_finite_loss_rolls_back_and_lowers_the_learning_rate(data, tmp_path, monkeypatch):
    vocab, train_ids, valid_ids = data
    calls = {"n": 0}
    real = Model.loss_and_grad

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        loss, grads, state = real(self, *args, **kwargs)
        return (math.nan if calls["n"] == 5 else loss), grads, state

    monkeypatch.setattr(Model, "loss_and_grad", flaky)
    progress = Silent()
    result = train(train_ids, valid_ids, vocab, small_config(epochs=1), tmp_path / "m",
                   progress=progress)  # fmt: skip
    said = [m for m in progress.messages if "rolled back" in m]
    assert len(said) == 1
    assert "the loss became nan at epoch 1, window 4" in said[0]
    assert "lowered the learning rate from 0.01 to 0.005" in said[0]
    assert result.stopped == "done" and result.history[0]["lr"] == 0.005


def test_a_loss_that_stays_non_finite_stops_with_a_diagnosis(data, tmp_path):
    vocab, train_ids, valid_ids = data
    config = small_config(optimizer="sgd", lr=1e30, clip=0.0, init_range=1.0)
    with pytest.raises(TrainingDiverged, match="training diverged.*lower --lr"):
        train(train_ids, valid_ids, vocab, config, tmp_path / "m", progress=Silent())


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(cell="tree"), "cell must be one of"),
        (dict(optimizer="lbfgs"), "optimizer must be one of"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(lr=-1.0), "lr must be a positive number"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(tied=True, emb_size=5), "tied weights need emb_size == hidden_size"),
        (dict(lr_decay=0.0), r"lr_decay must be in \(0, 1\]"),
    ],
)
def test_bad_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        small_config(**changes)


def test_clip_grad_norm_matches_pytorch_semantics():
    rng = np.random.default_rng(0)
    grads = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float32),
    }
    want_norm = oracle.global_norm(list(grads.values()))
    factor = oracle.clip_scale(want_norm, 0.5)
    expected = {n: g.astype(np.float64) * factor for n, g in grads.items()}
    norm = clip_grad_norm(kc, grads, 0.5)
    assert norm == pytest.approx(want_norm, rel=1e-12)
    for n in grads:
        np.testing.assert_allclose(grads[n], expected[n], rtol=1e-6)
    before = {n: g.copy() for n, g in grads.items()}
    clip_grad_norm(kc, grads, 1e9)  # under the limit: untouched
    for n in grads:
        np.testing.assert_array_equal(grads[n], before[n])


def test_adam_class_matches_the_oracle_over_steps():
    rng = np.random.default_rng(1)
    shapes = {"w": (4, 3), "b": (5,)}
    params = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    p64 = {n: a.astype(np.float64) for n, a in params.items()}
    m64 = {n: np.zeros(s) for n, s in shapes.items()}
    v64 = {n: np.zeros(s) for n, s in shapes.items()}
    opt = Adam(kc, 0.01, shapes)
    for step in range(1, 4):
        grads = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
        opt.step(params, grads)
        for n in shapes:
            p64[n], m64[n], v64[n] = oracle.adam_update(
                p64[n], grads[n].astype(np.float64), m64[n], v64[n], 0.01, 0.9, 0.999, 1e-8, step
            )
    for n in shapes:
        np.testing.assert_allclose(params[n], p64[n], rtol=1e-5, atol=1e-6)


def test_a_malformed_checkpoint_is_a_model_file_error(data, tmp_path):
    from rnnlm_engine.errors import ModelFileError

    vocab, train_ids, valid_ids = data
    out = tmp_path / "m.rnnlm"
    train(train_ids, valid_ids, vocab, small_config(epochs=1), out, progress=Silent())
    ckpt = modelfile.load(tmp_path / "m.rnnlm.ckpt")
    broken = tmp_path / "broken.ckpt"
    modelfile.save(broken, config=ckpt.config, tensors=dict(ckpt.tensors), vocab=ckpt.vocab,
                   training={"tensors": {}, "values": {"kind": "checkpoint"}})  # fmt: skip
    with pytest.raises(ModelFileError, match="broken.ckpt: the checkpoint's training state"):
        train(train_ids, valid_ids, vocab, small_config(epochs=2), out, resume=broken,
              progress=Silent())  # fmt: skip
    # an optimizer moment of another shape (numpy would have broadcast it silently)
    tensors = dict(ckpt.training["tensors"])
    name = next(n for n in tensors if n.startswith("adam.m."))
    tensors[name] = tensors[name][:1]
    modelfile.save(broken, config=ckpt.config, tensors=dict(ckpt.tensors), vocab=ckpt.vocab,
                   training={"tensors": tensors, "values": ckpt.training["values"]})  # fmt: skip
    with pytest.raises(ModelFileError, match=f"malformed .*{name} has shape"):
        train(train_ids, valid_ids, vocab, small_config(epochs=2), out, resume=broken,
              progress=Silent())  # fmt: skip


# ---------------------------------------------------------------------------- bookkeeping


class FakeClock:
    """A monotonic clock that advances one second per trained window (Progress.update is
    called once per window), so time limits and rates are exact and deterministic."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Ticking(Silent):
    def __init__(self, clock: FakeClock):
        super().__init__()
        self.clock = clock

    def update(self, *args) -> None:
        self.clock.now += 1.0


@pytest.fixture
def clock(monkeypatch):
    import importlib
    import time
    import types

    # the module (rnnlm_engine.train is the function train once the package is imported)
    train_module = importlib.import_module("rnnlm_engine.train")
    c = FakeClock()
    fake = types.SimpleNamespace(monotonic=c.monotonic, strftime=time.strftime, gmtime=time.gmtime)
    monkeypatch.setattr(train_module, "time", fake)
    return c


def epoch_tokens(train_ids, config) -> int:
    return (batchify(train_ids, config.batch_size).shape[0] - 1) * config.batch_size


def test_mid_epoch_checkpoints_do_not_leak_into_the_next_epoch(data, tmp_path, clock):
    vocab, train_ids, valid_ids = data
    plain = train(train_ids, valid_ids, vocab, small_config(), tmp_path / "a.rnnlm",
                  progress=Ticking(clock))  # fmt: skip
    # a checkpoint after every window (0.01 minutes = 0.6 fake seconds)
    config = small_config(checkpoint_every=0.01)
    busy = train(train_ids, valid_ids, vocab, config, tmp_path / "b.rnnlm",
                 progress=Ticking(clock))  # fmt: skip
    n_windows = len(range(0, batchify(train_ids, 4).shape[0] - 1, 9))
    for p, b in zip(plain.history, busy.history, strict=True):
        assert b["train_loss"] == p["train_loss"]
        assert b["seconds"] == p["seconds"] == n_windows  # one fake second a window
        assert b["tokens_per_s"] == round(epoch_tokens(train_ids, config) / n_windows, 1)
    # the checkpoint written at an epoch's end holds the next epoch's empty figures
    values = modelfile.load(tmp_path / "b.rnnlm.ckpt").training["values"]
    assert values["window"] == 0 and values["epoch_stats"] == [0, 0.0, 0, 0.0]


def test_max_time_is_the_budget_of_each_invocation(data, tmp_path, clock):
    vocab, train_ids, valid_ids = data
    out, ckpt = tmp_path / "m.rnnlm", tmp_path / "m.rnnlm.ckpt"
    config = small_config(epochs=1, max_time=5.0)
    first = train(train_ids, valid_ids, vocab, config, out, progress=Ticking(clock))
    assert first.stopped == "max_time"
    assert modelfile.load(ckpt).training["values"]["window"] == 5
    # resumed with the same limit: five more windows, not none
    again = train(train_ids, valid_ids, vocab, config, out, resume=ckpt, progress=Ticking(clock))
    assert again.stopped == "max_time"
    values = modelfile.load(ckpt).training["values"]
    assert values["window"] == 10
    assert values["epoch_stats"][0] == 10 * 9 * 4  # tokens of both sessions' windows
    assert values["spent_s"] == 10.0  # the run's whole training time is still recorded
    partial = [e for e in again.history if e.get("partial")]
    assert len(partial) == 2 and partial[0]["train_loss"] != partial[1]["train_loss"]
    # resumed without a limit: the rest of the epoch, whatever the earlier sessions took
    rest = train(train_ids, valid_ids, vocab, small_config(epochs=1), out, resume=ckpt,
                 progress=Ticking(clock))  # fmt: skip
    assert rest.stopped == "done" and not rest.history[-1].get("partial")


def test_a_rollback_does_not_count_the_replayed_windows_twice(data, tmp_path, monkeypatch):
    vocab, train_ids, valid_ids = data
    seen: list[tuple[float, int]] = []
    real = Model.loss_and_grad

    def flaky(self, inputs, *args, **kwargs):
        loss, grads, state = real(self, inputs, *args, **kwargs)
        seen.append((loss, inputs.size))
        return (math.nan if len(seen) == 5 else loss), grads, state

    monkeypatch.setattr(Model, "loss_and_grad", flaky)
    result = train(train_ids, valid_ids, vocab, small_config(epochs=1), tmp_path / "m",
                   progress=Silent())  # fmt: skip
    n_windows = len(range(0, batchify(train_ids, 4).shape[0] - 1, 9))
    kept = seen[-n_windows:]  # the epoch replayed from its start after the rollback
    assert len(seen) == n_windows + 5
    loss_sum = 0.0
    for loss, size in kept:
        loss_sum += loss * size
    assert result.history[0]["train_loss"] == loss_sum / sum(size for _, size in kept)


def test_max_windows_is_a_budget_of_windows_per_call(data, tmp_path):
    vocab, train_ids, valid_ids = data
    out, ckpt = tmp_path / "m.rnnlm", tmp_path / "m.rnnlm.ckpt"
    config = small_config(epochs=1, max_windows=7)
    first = train(train_ids, valid_ids, vocab, config, out, progress=Silent())
    assert first.stopped == "max_windows" and first.windows == 7
    assert first.history[-1]["partial"]
    again = train(train_ids, valid_ids, vocab, config, out, resume=ckpt, progress=Silent())
    assert again.windows == 7 and modelfile.load(ckpt).training["values"]["window"] == 14
    # the same budget gives the same run, bit for bit
    other = train(train_ids, valid_ids, vocab, config, tmp_path / "o.rnnlm", progress=Silent())
    for key in ("valid_loss", "train_loss", "epoch", "partial"):
        assert other.history[0][key] == first.history[0][key], key
    with pytest.raises(ConfigError, match="max_windows must be a positive integer"):
        small_config(max_windows=0)
