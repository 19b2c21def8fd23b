"""Training diagnostics: each epoch's history entry records the gradient norm's median and
maximum over the epoch's windows (before clipping, measured without clipping too) and how
often clipping fired; the figures survive a mid-epoch checkpoint and resume, a rollback
does not count replayed windows twice, and the model file keeps them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_train import CtrlCAt, Silent, corpus, small_config

from rnnlm_engine import modelfile
from rnnlm_engine.model import Model, load
from rnnlm_engine.train import _percent, batchify, train
from rnnlm_engine.vocab import Vocabulary

DIAGNOSTICS = ("grad_norm_median", "grad_norm_max", "clipped", "clipped_windows")


@pytest.fixture(scope="module")
def data():
    text = corpus(300, 0)
    vocab = Vocabulary.build(text, "char")
    return vocab, vocab.encode(text), vocab.encode(corpus(40, 1))


def windows_per_epoch(train_ids, config) -> int:
    return len(range(0, batchify(train_ids, config.batch_size).shape[0] - 1, config.bptt))


@pytest.fixture
def norms_seen(monkeypatch) -> list[float]:
    """Every loss_and_grad call's global gradient norm, recomputed in float64 numpy from the
    gradients as they leave loss_and_grad (before the training loop clips them)."""
    seen: list[float] = []
    real = Model.loss_and_grad

    def recording(self, *args, **kwargs):
        loss, grads, state = real(self, *args, **kwargs)
        seen.append(math.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads.values())))
        return loss, grads, state

    monkeypatch.setattr(Model, "loss_and_grad", recording)
    return seen


def expected(norms, clip: float) -> dict:
    """The diagnostics of one epoch's windows' norms (kept as float32, as training does)."""
    f32 = np.asarray(norms, np.float32).astype(np.float64)
    above = int(np.sum(f32 > clip)) if clip > 0 else 0
    return {
        "grad_norm_median": float(np.median(f32)),
        "grad_norm_max": float(f32.max()),
        "clipped": above / len(f32),
        "clipped_windows": above,
    }


def assert_diagnostics(entry: dict, want: dict) -> None:
    # the kernel sums squares in another order than numpy: equal to float32 rounding
    assert entry["grad_norm_median"] == pytest.approx(want["grad_norm_median"], rel=1e-6)
    assert entry["grad_norm_max"] == pytest.approx(want["grad_norm_max"], rel=1e-6)
    assert entry["clipped_windows"] == want["clipped_windows"]
    assert entry["clipped"] == want["clipped"]


def test_median_and_max_are_of_the_norms_before_clipping(data, tmp_path, norms_seen):
    vocab, train_ids, valid_ids = data
    config = small_config(clip=0.5)
    result = train(train_ids, valid_ids, vocab, config, tmp_path / "m", progress=Silent())
    n = windows_per_epoch(train_ids, config)
    assert len(norms_seen) == 3 * n  # no rollback: every window counted once
    for e, entry in enumerate(result.history):
        assert_diagnostics(entry, expected(norms_seen[e * n : (e + 1) * n], config.clip))
    # the norms are those before clipping: some exceed the clip, which scaled them down
    assert max(entry["grad_norm_max"] for entry in result.history) > config.clip
    # the median is not the mean (norms are skewed: a few large ones)
    first = norms_seen[:n]
    assert result.history[0]["grad_norm_median"] != pytest.approx(np.mean(first), rel=1e-3)


@pytest.mark.parametrize("clip, fraction", [(1e-6, 1.0), (0.5, None), (1e9, 0.0)])
def test_clipped_is_the_fraction_of_windows_whose_norm_exceeds_the_clip(
    data, tmp_path, norms_seen, clip, fraction
):
    vocab, train_ids, valid_ids = data
    config = small_config(clip=clip, epochs=2)
    result = train(train_ids, valid_ids, vocab, config, tmp_path / "m", progress=Silent())
    n = windows_per_epoch(train_ids, config)
    for e, entry in enumerate(result.history):
        want = expected(norms_seen[e * n : (e + 1) * n], clip)
        assert_diagnostics(entry, want)
        if fraction is not None:
            assert entry["clipped"] == fraction
            assert entry["clipped_windows"] == (n if fraction else 0)
        else:  # in between: some windows clipped, not all
            assert 0 < entry["clipped_windows"] < n


def test_without_clipping_the_norms_are_still_measured(data, tmp_path, norms_seen):
    vocab, train_ids, valid_ids = data
    config = small_config(clip=0.0, epochs=2)
    progress = Silent()
    result = train(train_ids, valid_ids, vocab, config, tmp_path / "m", progress=progress)
    n = windows_per_epoch(train_ids, config)
    for e, entry in enumerate(result.history):
        assert entry["clipped"] == 0.0 and entry["clipped_windows"] == 0
        assert 0 < entry["grad_norm_median"] <= entry["grad_norm_max"]
        assert_diagnostics(entry, expected(norms_seen[e * n : (e + 1) * n], 0.0))
    lines = [m for m in progress.messages if m.startswith("epoch ")]
    assert len(lines) == 2
    assert all("grad norm median" in m and "clipped" not in m for m in lines)


def test_the_epoch_line_shows_the_diagnostics_on_one_line(data, tmp_path):
    vocab, train_ids, valid_ids = data
    progress = Silent()
    result = train(train_ids, valid_ids, vocab, small_config(clip=0.5, epochs=1),
                   tmp_path / "m", progress=progress)  # fmt: skip
    entry = result.history[0]
    (line,) = [m for m in progress.messages if m.startswith("epoch 1:")]
    assert "\n" not in line
    percent = round(100 * entry["clipped"])
    assert 0 < percent < 100
    assert (
        f"grad norm median {entry['grad_norm_median']:.3g} max {entry['grad_norm_max']:.3g}, "
        f"clipped {percent}%"
    ) in line


def test_percentages_never_round_some_to_none_or_most_to_all():
    assert [_percent(f) for f in (0.0, 0.001, 0.12, 0.999, 1.0)] == [
        "0%", "<1%", "12%", ">99%", "100%"
    ]  # fmt: skip


def test_a_resumed_run_records_the_same_diagnostics(data, tmp_path):
    vocab, train_ids, valid_ids = data
    config = small_config(clip=0.5)
    full = train(train_ids, valid_ids, vocab, config, tmp_path / "a.rnnlm", progress=Silent())
    n = windows_per_epoch(train_ids, config)
    press = CtrlCAt(after=n + 7)  # in the middle of epoch 2
    part = train(train_ids, valid_ids, vocab, config, tmp_path / "b.rnnlm", progress=press)
    assert part.stopped == "interrupted"
    ckpt = tmp_path / "b.rnnlm.ckpt"
    training = modelfile.load(ckpt).training
    window = training["values"]["window"]
    assert 0 < window < n
    assert training["tensors"]["epoch.grad_norms"].shape == (window,)
    rest = train(train_ids, valid_ids, vocab, config, tmp_path / "b.rnnlm", resume=ckpt,
                 progress=Silent())  # fmt: skip
    assert rest.stopped == "done" and len(rest.history) == len(full.history) == 3
    for a, b in zip(full.history, rest.history, strict=True):
        for key in ("epoch", "lr", "train_loss", "valid_loss", *DIAGNOSTICS):
            assert a[key] == b[key], (a["epoch"], key)
    # the interrupted epoch clipped some windows before and some after the interruption
    assert 0 < full.history[1]["clipped_windows"] < n


def test_a_checkpoint_without_norms_still_resumes(data, tmp_path, norms_seen):
    """A checkpoint of an engine before the diagnostics: the interrupted epoch's figures
    then cover the windows after the resume."""
    vocab, train_ids, valid_ids = data
    config = small_config(clip=0.5, epochs=2)
    n = windows_per_epoch(train_ids, config)
    out = tmp_path / "b.rnnlm"
    train(train_ids, valid_ids, vocab, config, out, progress=CtrlCAt(after=n + 7))
    ckpt = modelfile.load(tmp_path / "b.rnnlm.ckpt")
    window = ckpt.training["values"]["window"]
    tensors = dict(ckpt.training["tensors"])
    del tensors["epoch.grad_norms"]
    old = tmp_path / "old.ckpt"
    modelfile.save(old, config=ckpt.config, tensors=dict(ckpt.tensors), vocab=ckpt.vocab,
                   training={"tensors": tensors, "values": ckpt.training["values"]})  # fmt: skip
    del norms_seen[:]
    rest = train(train_ids, valid_ids, vocab, config, out, resume=old, progress=Silent())
    assert rest.stopped == "done" and len(norms_seen) == n - window
    assert_diagnostics(rest.history[1], expected(norms_seen, config.clip))


@pytest.mark.parametrize("clip", [1e-6, 0.0])
def test_a_rollback_does_not_record_the_bad_window_or_count_replayed_ones(
    data, tmp_path, monkeypatch, clip
):
    vocab, train_ids, valid_ids = data
    seen: list[float] = []
    real = Model.loss_and_grad

    def overflowing(self, *args, **kwargs):
        loss, grads, state = real(self, *args, **kwargs)
        if len(seen) == 4:  # the fifth window's gradients overflow; its loss stays finite
            next(iter(grads.values())).reshape(-1)[0] = np.inf
        seen.append(math.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads.values())))
        return loss, grads, state

    monkeypatch.setattr(Model, "loss_and_grad", overflowing)
    progress = Silent()
    config = small_config(clip=clip, epochs=1)
    result = train(train_ids, valid_ids, vocab, config, tmp_path / "m", progress=progress)
    said = [m for m in progress.messages if "rolled back" in m]
    assert len(said) == 1 and said[0].startswith(
        "the gradient norm became inf at epoch 1, window 4"
    )
    n = windows_per_epoch(train_ids, config)
    assert len(seen) == n + 5 and seen[4] == math.inf
    entry = result.history[0]
    # the epoch replayed from its start: only the replay's windows count, the bad one never
    assert_diagnostics(entry, expected(seen[-n:], clip))
    assert math.isfinite(entry["grad_norm_max"])
    if clip:
        assert entry["clipped"] == 1.0 and entry["clipped_windows"] == n


def test_the_model_files_keep_the_diagnostics(data, tmp_path):
    vocab, train_ids, valid_ids = data
    out = tmp_path / "m.rnnlm"
    result = train(train_ids, valid_ids, vocab, small_config(clip=0.5, epochs=2), out,
                   progress=Silent())  # fmt: skip
    assert all(set(DIAGNOSTICS) <= set(e) for e in result.history)
    best = load(out).metadata["history"]
    assert best == result.history[: len(best)] and len(best) >= 1
    assert modelfile.load(tmp_path / "m.rnnlm.ckpt").metadata["history"] == result.history
