"""Training: truncated backpropagation through time, checkpoints, and resume.

Batching follows PyTorch's word_language_model: the token stream is cut into B parallel
streams (columns), windows of `bptt` steps are taken down the columns, and the recurrent
state is carried from one window to the next (zeroed at each epoch start). Validation runs
after every epoch; the best model so far is written to the output file; a checkpoint (the
current weights with the optimizer state, the data position, the RNG state and the
carried recurrent state) is written at each epoch end, every `checkpoint_every` minutes
and on Ctrl-C, so that `resume=` continues exactly where the run stopped: an interrupted
and resumed run ends with the same weights, bit for bit, as an uninterrupted one.

Each epoch adds one entry to the run's history (TrainResult.history, and the model file's
metadata["history"]): epoch, lr, train_loss (mean nats per token), seconds, tokens_per_s,
valid_loss, partial (True for a budget's stop mid-epoch), and the gradient diagnostics,
over the epoch's training windows:
- grad_norm_median, grad_norm_max: the global L2 norm of the window's gradients before
  clipping (measured with clip 0 too), stored as float32; None when no window was measured
  (an epoch resumed from a checkpoint of an older engine counts the windows after the
  resume only). A window whose loss or norm is not finite is rolled back, never counted.
- clipped: the fraction of those windows in which clipping scaled the gradients (0.0 with
  clip 0), and clipped_windows their number.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import sys
import threading
import time
from array import array
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from . import modelfile
from .config import ModelConfig
from .errors import ConfigError, InputError, ModelFileError, RnnlmError
from .model import Model, State
from .optim import OPTIMIZERS, clip_grad_norm, clips, grad_norm, make_optimizer
from .vocab import Vocabulary

# A run whose loss turns non-finite this many times without a good epoch in between
# stops with a diagnosis instead of rolling back again.
MAX_ROLLBACKS = 3
# Validation and scoring run in windows this long (the result does not depend on it).
EVAL_WINDOW = 256


class TrainingDiverged(RnnlmError):
    """The loss kept turning non-finite after rollbacks with lower learning rates."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; stored in checkpoints and in the model's metadata.

    lr_decay applies on validation plateaus (an epoch that does not improve the best
    validation loss) when decay_start is None, as word_language_model does; with
    decay_start = e it applies after every epoch from epoch e on, as Zaremba et al. do.

    max_time (seconds, None: no limit) is the budget of one call of train(): a resumed run
    trains for max_time more seconds, whatever its earlier sessions took. max_windows
    likewise counts the training windows (of bptt steps) of one call: a budget that,
    unlike time, gives the same run on any machine.
    """

    cell: str = "lstm"
    emb_size: int = 200
    hidden_size: int = 200
    num_layers: int = 2
    tied: bool = False
    residual: bool = False
    cutoffs: tuple[int, ...] | None = None  # an adaptive softmax output (ModelConfig)
    div_value: float = 4.0
    dropout: float = 0.0
    init_range: float = 0.1
    optimizer: str = "sgd"
    lr: float = 20.0
    lr_decay: float = 0.25
    decay_start: int | None = None
    clip: float = 0.25
    epochs: int = 40
    max_time: float | None = None
    max_windows: int | None = None
    batch_size: int = 20
    bptt: int = 35
    eval_batch_size: int = 10
    seed: int = 1
    checkpoint_every: float = 10.0

    def __post_init__(self) -> None:
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer; got {v!r}")

        c = self.cutoffs
        if isinstance(c, list):  # from a checkpoint's msgpack
            object.__setattr__(self, "cutoffs", c := tuple(c))
        if c is not None and not (
            isinstance(c, tuple)
            and c
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in c)
            and all(b > a for a, b in zip(c, c[1:], strict=False))
        ):
            raise ConfigError(f"cutoffs must be increasing positive integers; got {c!r}")
        # the model's own settings, checked where ModelConfig checks them (the vocabulary's
        # size is known later: here, one that fits the cutoffs)
        self.model_config(2 if not c else c[-1] + 1)
        for name in ("epochs", "batch_size", "bptt", "eval_batch_size"):
            positive_int(name)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1); got {self.dropout!r}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"lr must be a positive number; got {self.lr!r}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError(f"lr_decay must be in (0, 1]; got {self.lr_decay!r}")
        if not self.init_range > 0:
            raise ConfigError(f"init_range must be positive; got {self.init_range!r}")
        if not self.clip >= 0:
            raise ConfigError(f"clip must be >= 0 (0: no clipping); got {self.clip!r}")
        if self.max_time is not None and not self.max_time > 0:
            raise ConfigError(f"max_time must be positive seconds; got {self.max_time!r}")
        if self.max_windows is not None:
            positive_int("max_windows")
        if not self.checkpoint_every >= 0:
            raise ConfigError(f"checkpoint_every must be >= 0; got {self.checkpoint_every!r}")
        if self.decay_start is not None and (
            isinstance(self.decay_start, bool)
            or not isinstance(self.decay_start, int)
            or self.decay_start < 1
        ):
            raise ConfigError(f"decay_start must be a positive epoch; got {self.decay_start!r}")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            self.cell,
            vocab_size,
            self.emb_size,
            self.hidden_size,
            self.num_layers,
            self.tied,
            self.residual,
            cutoffs=self.cutoffs,
            div_value=self.div_value,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Settings that may change when a run is resumed (they do not change its trajectory).
RESUMABLE_CHANGES = ("epochs", "max_time", "max_windows", "checkpoint_every")


@dataclass
class TrainResult:
    """What a run ended with. stopped: "done", "max_time", "max_windows" or "interrupted".
    windows: the training windows this call trained."""

    best_valid_loss: float
    epochs_completed: int
    stopped: str
    history: list[dict] = field(default_factory=list)
    out: Path | None = None
    checkpoint: Path | None = None
    windows: int = 0


# ---------------------------------------------------------------------------- data


def batchify(ids: np.ndarray, batch: int) -> np.ndarray:
    """1-D ids -> (n, batch): the stream cut into `batch` columns, the tail dropped."""
    n = len(ids) // batch
    if n < 2:
        raise InputError(
            f"{len(ids)} tokens are too few for batch size {batch}: each of the {batch} "
            "streams needs at least 2 tokens; use more text or a smaller batch size"
        )
    return np.ascontiguousarray(ids[: n * batch].reshape(batch, n).T)


def evaluate(model: Model, data: np.ndarray) -> float:
    """Mean next-token cross-entropy (nats) over a batchified (n, B) array, with the state
    carried down the columns from a zero state, as word_language_model evaluates."""
    state, total, count = None, 0.0, 0
    for i in range(0, data.shape[0] - 1, EVAL_WINDOW):
        j = min(data.shape[0] - 1, i + EVAL_WINDOW)
        scores, state = model.token_logprobs(data[i:j], data[i + 1 : j + 1], state)
        total -= float(np.sum(scores, dtype=np.float64))
        count += scores.size
    return total / count


def data_fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------- progress


class Progress:
    """A one-line progress bar on stderr: tokens/s, loss, perplexity, ETA. Drawn only on
    a terminal; messages (epoch summaries, warnings) always go to the stream."""

    def __init__(self, stream=None, enabled: bool | None = None, quiet: bool = False):
        self.stream = stream if stream is not None else sys.stderr
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = (tty if enabled is None else enabled) and not quiet
        self.quiet = quiet
        self._last = 0.0
        self._drawn = False

    def message(self, text: str) -> None:
        if self.quiet:
            return
        self._clear()
        print(text, file=self.stream, flush=True)

    def update(self, epoch, epochs, done, total, tokens_per_s, loss, eta_s) -> None:
        now = time.monotonic()
        if not self.bar or now - self._last < 0.25:
            return
        self._last = now
        width = 24
        filled = int(width * done / max(total, 1))
        ppl = math.exp(min(loss, 50.0))
        line = (
            f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}] "
            f"{100 * done / max(total, 1):3.0f}%  {tokens_per_s:,.0f} tok/s  loss {loss:.3f}  "
            f"ppl {ppl:,.1f}  ETA {_clock(eta_s)}"
        )
        self.stream.write(line + "\033[K")
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


# ---------------------------------------------------------------------------- training


class _StopFlag:
    """Ctrl-C asks the run to stop at the next window boundary (a window's update is never
    left half done); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def initial_parameters(config: ModelConfig, init_range: float, rng) -> dict[str, np.ndarray]:
    """Every parameter uniform in +-init_range (Zaremba et al.), drawn in a fixed order."""
    return {
        name: rng.uniform(-init_range, init_range, size=shape).astype(np.float32)
        for name, shape in config.parameter_shapes().items()
    }


@dataclass
class _EpochFigures:
    """The running figures of the current epoch, from its first window: what its history
    entry reports. Part of a checkpoint (with the epoch's seconds so far) and of a
    rollback snapshot, so that neither a resume nor a replayed window counts twice."""

    tokens: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0
    # each window's gradient norm before clipping, as float32 (4 bytes a window: a
    # checkpoint stores them as a training tensor, and a resumed run sees the same values)
    grad_norms: array = field(default_factory=lambda: array("f"))

    def add(self, tokens: int, loss: float, norm: float) -> None:
        self.tokens += tokens
        self.loss_sum += loss * tokens
        self.loss_n += tokens
        self.grad_norms.append(norm)

    def copy(self) -> _EpochFigures:
        # the norms are copied: a rollback replays windows into the snapshot's figures
        return _EpochFigures(self.tokens, self.loss_sum, self.loss_n, self.grad_norms[:])

    def norms(self) -> np.ndarray:
        """The windows' gradient norms, (n,) float32 (a view of the figures' own buffer)."""
        return np.frombuffer(self.grad_norms, dtype=np.float32)


class _Run:
    """The mutable state of one training run: what a checkpoint holds."""

    def __init__(self, model, optimizer, rng, hidden, epoch, window, best, bad, history, spent):
        self.model, self.optimizer, self.rng = model, optimizer, rng
        self.hidden: State | None = hidden
        self.epoch, self.window = epoch, window
        self.best_valid_loss = best  # over whole epochs: what the lr schedule looks at
        self.best_saved_loss = best  # of the model in the output file (partial epochs too)
        self.rollbacks = bad
        self.history: list[dict] = history
        self.spent_s = spent  # training seconds of every session of this run
        self.figures = _EpochFigures()
        # training seconds of the current epoch in earlier sessions (set on resume)
        self.epoch_seconds_before = 0.0

    def snapshot(self):
        """An in-memory copy to roll back to when the loss turns non-finite."""
        k = self.model._k
        params = {n: k.clone(a) for n, a in self.model._params.items()}
        opt_tensors, opt_values = self.optimizer.state()
        return (
            params,
            {n: k.clone(a) for n, a in opt_tensors.items()},
            dict(opt_values),
            None
            if self.hidden is None
            else State(*(None if a is None else k.clone(a) for a in self.hidden)),
            self.rng.bit_generator.state,
            self.epoch,
            self.window,
            self.figures.copy(),
        )

    def restore(self, snap) -> None:
        params, opt_tensors, opt_values, hidden, rng_state, epoch, window, figures = snap

        def put(p):
            for name, a in params.items():
                self.model._k.copy(p[name], a)

        self.model._apply_update(put)
        lr = self.optimizer.lr
        self.optimizer.load_state(opt_tensors, opt_values)
        self.optimizer.lr = lr  # the caller lowers it
        self.hidden = hidden
        self.rng.bit_generator.state = rng_state
        self.epoch, self.window = epoch, window
        self.figures = figures.copy()  # the snapshot may be restored again


def _training_state(run: _Run, config: TrainConfig, fingerprint: str, epoch_s: float) -> dict:
    tensors, opt_values = run.optimizer.state()
    tensors = dict(tensors)
    if run.hidden is not None:
        tensors["state.h"] = run.hidden.h
        if run.hidden.c is not None:
            tensors["state.c"] = run.hidden.c
    tensors = {name: run.model._k.to_host(a) for name, a in tensors.items()}
    if run.figures.grad_norms:  # absent at an epoch's start (a zero-length tensor says no more)
        tensors["epoch.grad_norms"] = run.figures.norms().copy()
    values = {
        "kind": "checkpoint",
        "train_config": config.to_dict(),
        "optimizer": opt_values,
        "epoch": run.epoch,
        "window": run.window,
        "best_valid_loss": run.best_valid_loss,
        "best_saved_loss": run.best_saved_loss,
        "rollbacks": run.rollbacks,
        "history": run.history,
        "rng": json.dumps(run.rng.bit_generator.state),
        "data": fingerprint,
        "spent_s": run.spent_s,
        # (tokens, loss sum, loss count, seconds) of the current epoch so far
        "epoch_stats": [run.figures.tokens, run.figures.loss_sum, run.figures.loss_n, epoch_s],
    }
    return {"tensors": tensors, "values": values}


def _metadata(run: _Run, config: TrainConfig, vocab: Vocabulary) -> dict:
    from . import __version__

    meta = {
        "engine": f"rnnlm-engine {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_config": config.to_dict(),
        "epochs_completed": len(run.history),
        "history": run.history,
    }
    if math.isfinite(run.best_saved_loss):
        meta["valid_loss"] = run.best_saved_loss
        meta["valid_ppl"] = math.exp(min(run.best_saved_loss, 700.0))
        if vocab.kind in ("char", "byte"):
            meta["valid_bpc"] = run.best_saved_loss / math.log(2)
    return meta


def _resume(path, f, config: TrainConfig, vocab: Vocabulary, fingerprint: str, backend):
    """The run saved in a checkpoint. A checkpoint whose training state is malformed
    raises ModelFileError naming the file; one of other settings or data, ConfigError."""
    try:
        return _resume_unchecked(path, f, config, vocab, fingerprint, backend)
    except RnnlmError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ModelFileError(
            f"{path}: the checkpoint's training state is malformed ({type(e).__name__}: {e})"
        ) from None


def _resume_unchecked(path, f, config, vocab, fingerprint, backend):
    f = modelfile.load(path) if f is None else f
    if f.training is None or f.training.get("values", {}).get("kind") != "checkpoint":
        raise ModelFileError(f"{path}: not a training checkpoint (it holds no training state)")
    values, tensors = f.training["values"], f.training["tensors"]
    saved = TrainConfig.from_dict(values["train_config"])
    differ = [
        f"{k} ({getattr(saved, k)!r} in the checkpoint, {getattr(config, k)!r} now)"
        for k in config.to_dict()
        if k not in RESUMABLE_CHANGES and getattr(saved, k) != getattr(config, k)
    ]
    if differ:
        raise ConfigError(
            f"{path}: cannot resume with different settings: {', '.join(differ)}; only "
            f"{', '.join(RESUMABLE_CHANGES)} may change"
        )
    if f.vocab is None or Vocabulary.from_dict(f.vocab) != vocab:
        raise ConfigError(f"{path}: the checkpoint's vocabulary differs from this run's")
    if values["data"] != fingerprint:
        raise ConfigError(
            f"{path}: the checkpoint was trained on other data (training and validation "
            "tokens differ); resume with the same files"
        )
    model = Model(f.config, dict(f.tensors), backend, vocab=vocab)
    optimizer = make_optimizer(
        config.optimizer, model._k, config.lr, model.config.parameter_shapes()
    )
    optimizer.load_state(tensors, values["optimizer"])
    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(values["rng"])
    hidden = None
    if "state.h" in tensors:
        hidden = State(
            np.array(tensors["state.h"]),
            np.array(tensors["state.c"]) if "state.c" in tensors else None,
        )
    run = _Run(
        model,
        optimizer,
        rng,
        hidden,
        int(values["epoch"]),
        int(values["window"]),
        float(values["best_valid_loss"]),
        int(values["rollbacks"]),
        list(values["history"]),
        float(values["spent_s"]),
    )
    run.best_saved_loss = float(values["best_saved_loss"])
    tokens, loss_sum, loss_n, seconds = values["epoch_stats"]
    # at an epoch's start the figures are zero (checkpoints of engine 0.1.0 carried a
    # finished epoch's partial figures there: ignored)
    if run.window > 0:
        # checkpoints of engines before the gradient diagnostics hold no norms: the
        # epoch's diagnostics then cover the windows after the resume
        norms = np.asarray(tensors.get("epoch.grad_norms", np.zeros(0, np.float32)))
        if norms.ndim != 1 or not norms.size <= run.window:
            raise ValueError(f"epoch.grad_norms has shape {norms.shape} at window {run.window}")
        grad_norms = array("f", norms.astype(np.float32).tobytes())
        run.figures = _EpochFigures(int(tokens), float(loss_sum), int(loss_n), grad_norms)
        run.epoch_seconds_before = float(seconds)
    return run


def train(
    train_ids,
    valid_ids,
    vocab: Vocabulary,
    config: TrainConfig,
    out,
    *,
    checkpoint=None,
    resume=None,
    resume_file: modelfile.ModelFile | None = None,
    progress: Progress | None = None,
    backend: str | None = None,
    extra_metadata: dict | None = None,
) -> TrainResult:
    """Train a model on token ids (1-D int arrays, encoded with `vocab`), validating on
    valid_ids after each epoch. The best model is written to `out` (a model file);
    checkpoints go to `checkpoint` (default: out + ".ckpt"; False: none at all, not even
    on Ctrl-C or at the time limit). resume: a checkpoint to
    continue from (same data and settings; epochs, max_time and checkpoint_every may
    change); resume_file: that file already loaded, if the caller has (it is then not read
    again). extra_metadata is added to the files' metadata. max_time limits this call
    (a resumed run gets that much more time); a run stopped by it validates its last
    weights too if it trained any (kept if better; the learning-rate schedule looks at
    whole epochs only). Returns a TrainResult; raises TrainingDiverged, ConfigError,
    InputError.
    """
    progress = progress or Progress()
    out = Path(out)
    if checkpoint is None:
        checkpoint = out.with_name(out.name + ".ckpt")
    checkpoint = None if checkpoint is False else Path(checkpoint)
    train_ids = _as_ids(train_ids, "training", len(vocab))
    valid_ids = _as_ids(valid_ids, "validation", len(vocab))
    data = batchify(train_ids, config.batch_size)
    valid = batchify(valid_ids, config.eval_batch_size)
    fingerprint = data_fingerprint(train_ids, valid_ids)

    if resume is not None:
        run = _resume(resume, resume_file, config, vocab, fingerprint, backend)
        progress.message(
            f"resumed {resume}: epoch {run.epoch}, window {run.window}, "
            f"learning rate {run.optimizer.lr:g}"
        )
    else:
        rng = np.random.default_rng(config.seed)
        mconf = config.model_config(len(vocab))
        params = initial_parameters(mconf, config.init_range, rng)
        model = Model(mconf, params, backend=backend, vocab=vocab)
        optimizer = make_optimizer(config.optimizer, model._k, config.lr, mconf.parameter_shapes())
        run = _Run(model, optimizer, rng, None, 1, 0, math.inf, 0, [], 0.0)

    n_windows = len(range(0, data.shape[0] - 1, config.bptt))
    session_start, spent_before = time.monotonic(), run.spent_s
    last_checkpoint = session_start
    stopped = "done"
    trained_here = 0  # windows trained by this invocation (max_time is its budget)

    def metadata() -> dict:
        return _metadata(run, config, vocab) | (extra_metadata or {})

    def validate_and_keep(entry: dict) -> bool:
        """Validate, record in the history, write the model if it is the best so far."""
        entry["valid_loss"] = evaluate(run.model, valid)
        run.history.append(entry)
        improved = entry["valid_loss"] < run.best_saved_loss
        if improved:
            run.best_saved_loss = entry["valid_loss"]
            run.model.save(out, metadata())
        progress.message(_epoch_line(entry, vocab, improved, config.clip > 0))
        return improved

    def out_of_budget() -> str | None:
        """Why this call must stop training now (its time or window budget), or None."""
        if config.max_time is not None and time.monotonic() - session_start >= config.max_time:
            return "max_time"
        if config.max_windows is not None and trained_here >= config.max_windows:
            return "max_windows"
        return None

    def save_checkpoint() -> None:
        nonlocal last_checkpoint
        run.spent_s = spent_before + time.monotonic() - session_start
        if checkpoint is None:
            return
        epoch_s = time.monotonic() - epoch_t0 if run.window > 0 else 0.0
        state = _training_state(run, config, fingerprint, epoch_s)
        run.model.save(checkpoint, metadata(), state)
        last_checkpoint = time.monotonic()

    good = run.snapshot()
    with _StopFlag() as stop:
        while run.epoch <= config.epochs:
            # the epoch's clock, counting its seconds in earlier sessions on resume
            epoch_t0 = time.monotonic() - run.epoch_seconds_before
            run.epoch_seconds_before = 0.0
            fig = run.figures
            while run.window < n_windows:
                budget = out_of_budget()
                if stop.requested or budget:
                    stopped = "interrupted" if stop.requested else budget
                    break
                i = run.window * config.bptt
                seq = min(config.bptt, data.shape[0] - 1 - i)
                inputs, targets = data[i : i + seq], data[i + 1 : i + 1 + seq]
                masks = (
                    run.model.dropout_masks(seq, config.batch_size, config.dropout, run.rng)
                    if config.dropout > 0
                    else None
                )
                # a diverging run overflows: detected below and said in plain words instead
                with np.errstate(over="ignore", invalid="ignore"):
                    loss, grads, hidden = run.model.loss_and_grad(
                        inputs, targets, run.hidden, masks, run.optimizer.takes_row_sparse
                    )
                # the norm before clipping; measured without clipping too (diagnostics)
                k = run.model._k
                norm = (
                    clip_grad_norm(k, grads, config.clip)
                    if config.clip > 0
                    else grad_norm(k, grads)
                )
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    if math.isfinite(loss):  # finite loss, overflowing gradients
                        what = f"the gradient norm became {norm}"
                    else:
                        what = f"the loss became {loss}"
                    _roll_back(run, good, progress, what)  # the figures go back too
                    fig = run.figures
                    continue
                run.model._apply_update(lambda p, g=grads: run.optimizer.step(p, g))
                run.hidden = hidden
                run.window += 1
                trained_here += 1
                fig.add(inputs.size, loss, norm)
                dt = time.monotonic() - epoch_t0
                rate = fig.tokens / dt if dt > 0 else 0.0
                left = (n_windows - run.window) * config.batch_size * config.bptt
                progress.update(
                    run.epoch,
                    config.epochs,
                    run.window,
                    n_windows,
                    rate,
                    fig.loss_sum / fig.loss_n,
                    left / rate if rate > 0 else math.inf,
                )
                if config.checkpoint_every > 0 and (
                    time.monotonic() - last_checkpoint >= 60.0 * config.checkpoint_every
                ):
                    save_checkpoint()
                    good = run.snapshot()
            if stopped != "done":
                break
            # end of epoch: validate, keep the best, schedule the learning rate
            run.model._check_bounds()
            entry = _entry(run, fig, time.monotonic() - epoch_t0, config.clip)
            validate_and_keep(entry)
            improved = entry["valid_loss"] < run.best_valid_loss
            run.best_valid_loss = min(run.best_valid_loss, entry["valid_loss"])
            if (config.decay_start is None and not improved) or (
                config.decay_start is not None and run.epoch >= config.decay_start
            ):
                run.optimizer.lr *= config.lr_decay
            run.epoch += 1
            run.window = 0
            run.hidden = None
            run.rollbacks = 0
            run.figures = _EpochFigures()  # the next epoch starts from nothing
            save_checkpoint()
            good = run.snapshot()
        # a budget validates what this invocation trained (a resumed run that trained
        # nothing has nothing new to validate)
        if stopped in ("max_time", "max_windows") and trained_here > 0 and run.figures.loss_n:
            run.model._check_bounds()
            entry = _entry(run, run.figures, time.monotonic() - epoch_t0, config.clip)
            entry["partial"] = True
            validate_and_keep(entry)
        if stopped != "done":
            save_checkpoint()
            why = {"interrupted": "Ctrl-C", "max_time": "time limit"}.get(stopped, "window limit")
            progress.message(
                f"stopped ({why}) at epoch {run.epoch}, window {run.window}/{n_windows}"
                + (
                    f"; checkpoint written to {checkpoint}: continue with --resume {checkpoint}"
                    if checkpoint is not None
                    else ""
                )
            )
    return TrainResult(
        run.best_saved_loss,
        len(run.history),
        stopped,
        run.history,
        out if math.isfinite(run.best_saved_loss) else None,
        checkpoint,
        trained_here,
    )


def _entry(run: _Run, fig: _EpochFigures, seconds: float, clip: float) -> dict:
    """The epoch's history entry (its keys: the module's docstring), valid_loss aside."""
    norms = fig.norms().astype(np.float64)
    n_clipped = sum(clips(float(v), clip) for v in norms)
    return {
        "epoch": run.epoch,
        "lr": run.optimizer.lr,
        "train_loss": fig.loss_sum / max(fig.loss_n, 1),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(fig.tokens / seconds, 1) if seconds > 0 else None,
        "grad_norm_median": float(np.median(norms)) if norms.size else None,
        "grad_norm_max": float(norms.max()) if norms.size else None,
        "clipped": n_clipped / norms.size if norms.size else None,
        "clipped_windows": n_clipped,
    }


def _roll_back(run: _Run, good, progress: Progress, what: str) -> None:
    """Back to the snapshot `good` with half the learning rate. what: what turned
    non-finite, as a phrase ("the loss became nan")."""
    run.rollbacks += 1
    where = f"epoch {run.epoch}, window {run.window}"
    if run.rollbacks > MAX_ROLLBACKS:
        raise TrainingDiverged(
            f"training diverged: {what} at {where}, {MAX_ROLLBACKS} times in "
            f"a row after rolling back and lowering the learning rate (now "
            f"{run.optimizer.lr:g}); start again with a lower --lr, a smaller --clip or "
            f"--init-range"
        )
    old = run.optimizer.lr
    run.restore(good)
    run.optimizer.lr = old * 0.5
    progress.message(
        f"{what} at {where}: rolled back to epoch {run.epoch}, window "
        f"{run.window} and lowered the learning rate from {old:g} to {run.optimizer.lr:g}"
    )


def _epoch_line(entry: dict, vocab: Vocabulary, improved: bool, clipping: bool) -> str:
    """The epoch's summary on one line; `clipping`: whether the run clips gradients."""
    v = entry["valid_loss"]
    extra = f", {v / math.log(2):.3f} bits/char" if vocab.kind in ("char", "byte") else ""
    partial = " (partial)" if entry.get("partial") else ""
    grads = ""
    if entry.get("grad_norm_median") is not None:
        grads = (
            f", grad norm median {entry['grad_norm_median']:.3g} max {entry['grad_norm_max']:.3g}"
        )
        if clipping:
            grads += f", clipped {_percent(entry['clipped'])}"
    return (
        f"epoch {entry['epoch']}{partial}: train loss {entry['train_loss']:.3f}, "
        f"valid loss {v:.3f} "
        f"(perplexity {math.exp(min(v, 700.0)):.2f}{extra}), lr {entry['lr']:g}, "
        f"{entry['seconds']:.0f} s, {entry['tokens_per_s'] or 0:,.0f} tokens/s{grads}"
        + ("  [best so far: saved]" if improved else "")
    )


def _percent(fraction: float) -> str:
    """A fraction as a whole percentage that never rounds some to none, or most to all."""
    if 0.0 < fraction < 0.005:
        return "<1%"
    if 0.995 <= fraction < 1.0:
        return ">99%"
    return f"{100 * fraction:.0f}%"


def _as_ids(ids, what: str, vocab_size: int) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{what} ids must be a 1-D integer array; got {a.dtype} {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= vocab_size):
        raise InputError(f"{what} ids must lie in [0, {vocab_size})")
    return a.astype(np.int64, copy=False)
