"""Choosing a model: a grid or random search over training settings, each setting scored
by its validation perplexity (mean and spread over K contiguous folds, or one validation
text), in this process or on a Dask cluster; resumable after any crash.

A sweep lives in one folder:

    sweep.json       what the sweep is (grid, budgets, folds, seed, data fingerprint): a
                     rerun with other settings is refused instead of mixing two sweeps
    runs.json        every finished unit of work (one setting on one fold), rewritten
                     atomically after each: a sweep killed at any moment and started again
                     continues where it stopped, and never runs a finished unit twice
    results.jsonl    the table, best first, a JSON object per setting (atomic)
    results.csv      the same table as CSV (atomic)
    trials/          each unit's trained model (KEY-fFOLD.rnnlm)
    best.rnnlm       the best setting retrained on all the training text (retrain=True)
    sweep.svg        validation perplexity against parameters and against time
                     (matplotlib: the `report` extra)

Budgets: per unit of work in epochs or windows (the same sweep gives the same table on any
machine) or in seconds (enforced inside the training loop), and one in seconds for the
whole sweep (no unit starts after it, and a running unit gets what is left). A unit that
diverges or fails is a row with its reason, and the sweep goes on.

Settings left out of the grid take TrainConfig's defaults, except the embedding size,
which is the hidden size unless given (as in ``rnnlm train``).

Folds: the training text is cut into K contiguous pieces; fold k validates on piece k and
trains on the others, joined in order. The vocabulary is built from the whole training
text, so that every fold's model has the same outputs.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .atomic import write_atomically
from .errors import ConfigError, InputError, RnnlmError
from .train import Progress, TrainConfig, TrainingDiverged, data_fingerprint, train
from .vocab import Vocabulary

# short names a grid may use for TrainConfig fields (those of `rnnlm train`'s options)
ALIASES = {"layers": "num_layers", "hidden": "hidden_size", "emb": "emb_size"}
# TrainConfig fields that are budgets or bookkeeping, not settings to search over
NOT_SETTINGS = ("max_time", "max_windows", "checkpoint_every")
SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_SETTINGS)
COLUMNS = ["rank", "settings", "valid_ppl", "valid_ppl_std", "folds", "parameters",
           "seconds", "tokens_per_s", "epochs", "status", "reason"]  # fmt: skip
SWEEP_FORMAT = "rnnlm-engine sweep 1"
TOO_SMALL = "the time budget is too small for one training window"


# ---------------------------------------------------------------------------- the grid


def parse_grid(text: str) -> dict[str, list]:
    """'cell=lstm,gru layers=1,2 lr=1e-3:1e-2' -> {"cell": ["lstm", "gru"], "num_layers":
    [1, 2], "lr": Range(1e-3, 1e-2)}: values of each TrainConfig setting (or alias), typed
    as the setting is; lo:hi is a range for random search. Raises ConfigError naming an
    unknown setting or a value of the wrong type."""
    if not isinstance(text, str) or not text.split():
        raise ConfigError("the grid is empty: give settings as name=v1,v2 (e.g. 'hidden=64,128')")
    grid: dict[str, list | Range] = {}
    for item in text.split():
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"grid item {item!r} is not name=value[,value...]")
        name = ALIASES.get(name.replace("-", "_"), name.replace("-", "_"))
        if name not in SETTINGS:
            known = ", ".join(sorted(set(SETTINGS) | set(ALIASES)))
            raise ConfigError(f"unknown setting {item.partition('=')[0]!r}; known: {known}")
        if name in grid:
            raise ConfigError(f"setting {name!r} appears twice in the grid")
        if ":" in values:
            lo, _, hi = values.partition(":")
            grid[name] = Range(_typed(name, lo), _typed(name, hi))
        else:
            grid[name] = [_typed(name, v) for v in values.split(",")]
    return grid


@dataclasses.dataclass(frozen=True)
class Range:
    """lo:hi of a numeric setting, for random search: ints uniform, floats log-uniform
    when both ends are positive, else uniform."""

    lo: float
    hi: float


def _typed(name: str, text: str):
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]
    t = text.strip()
    try:
        if name == "decay_start":
            return None if t.lower() == "none" else int(t)
        if isinstance(default, bool):
            if t.lower() in ("true", "yes", "1"):
                return True
            if t.lower() in ("false", "no", "0"):
                return False
            raise ValueError(t)
        if isinstance(default, int):
            return int(t)
        if isinstance(default, float):
            return float(t)
        return t
    except ValueError:
        raise ConfigError(
            f"setting {name}: {text!r} is not a {type(default).__name__} value"
        ) from None


def settings_list(grid: dict, samples: int | None = None, seed: int = 0) -> list[dict]:
    """Every combination of a grid (no ranges), or `samples` random draws from it (ranges
    and lists), in a fixed order for a given seed. Each a dict of settings by name."""
    names = sorted(grid)
    if samples is None:
        ranges = [n for n in names if isinstance(grid[n], Range)]
        if ranges:
            raise ConfigError(f"{', '.join(ranges)}: a range (lo:hi) needs --samples N")
        return [dict(zip(names, combo, strict=True)) for combo in _product(grid, names)]
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples must be a positive integer; got {samples!r}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        draw = {}
        for n in names:
            v = grid[n]
            if isinstance(v, Range):
                draw[n] = _draw(n, v, rng)
            else:
                draw[n] = v[int(rng.integers(len(v)))]
        out.append(draw)
    return out


def _product(grid, names):
    return itertools.product(*(grid[n] for n in names))


def _draw(name: str, r: Range, rng):
    lo, hi = sorted((r.lo, r.hi))
    if isinstance(r.lo, int) and isinstance(r.hi, int):
        return int(rng.integers(lo, hi + 1))
    if lo > 0:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


def folds(ids: np.ndarray, k: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """(training ids, validation ids) of fold k of K: piece k of K contiguous pieces
    (piece j is ids[j n // K : (j + 1) n // K]) validates; the others, in order, train."""
    n = len(ids)
    a, b = k * n // K, (k + 1) * n // K
    return np.concatenate([ids[:a], ids[b:]]), ids[a:b]


# ---------------------------------------------------------------------------- one unit


@dataclasses.dataclass(frozen=True)
class Budget:
    """Per unit of work: epochs, windows or seconds (any of them; the first reached
    stops it). Epochs and windows make a unit reproducible."""

    epochs: int | None = None
    windows: int | None = None
    seconds: float | None = None

    def __post_init__(self):
        for name in ("epochs", "windows"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"the trial budget in {name} must be a positive integer")
        if self.seconds is not None and not self.seconds > 0:
            raise ConfigError("the trial budget in seconds must be positive")
        if self.epochs is None and self.windows is None and self.seconds is None:
            raise ConfigError("give each trial a budget: epochs, windows or seconds")


def run_unit(
    train_ids,
    valid_ids,
    vocab: dict,
    settings: dict,
    fold: int,
    n_folds: int,
    budget: Budget,
    seconds_left: float | None = None,
) -> tuple[dict, bytes | None]:
    """Train one setting on one fold (n_folds 0: train_ids and valid_ids as given) within
    the budget; return (its record, the trained model file's bytes or None). Never raises
    for the trial's own failure: a diverged or failed unit is a record with its reason.
    A plain function of plain data, so that it runs in this process or on a Dask worker."""
    if n_folds:
        train_ids, valid_ids = folds(np.asarray(train_ids), fold, n_folds)
    record = {"settings": settings, "fold": fold, "status": "ok", "reason": ""}
    t0 = time.monotonic()
    try:
        seconds = budget.seconds
        if seconds_left is not None:
            seconds = seconds_left if seconds is None else min(seconds, seconds_left)
        # as in rnnlm train, the embedding is as wide as the hidden layer unless given
        emb = {"emb_size": settings["hidden_size"]} if "hidden_size" in settings else {}
        config = TrainConfig(
            **(
                emb
                | settings
                | {
                    "checkpoint_every": 0.0,
                    "max_time": seconds,
                    "max_windows": budget.windows,
                    "epochs": budget.epochs or settings.get("epochs", 10**6),
                }
            )  # fmt: skip
        )
        v = Vocabulary.from_dict(vocab)
        with tempfile.TemporaryDirectory(prefix="rnnlm-sweep-") as tmp:
            out = Path(tmp) / "model.rnnlm"
            result = train(train_ids, valid_ids, v, config, out, checkpoint=False,
                           progress=Progress(quiet=True))  # fmt: skip
            model_bytes = out.read_bytes() if result.out is not None else None
        trained = result.history
        per_epoch = len(range(0, len(train_ids) // config.batch_size - 1, config.bptt))
        record |= {
            "valid_loss": result.best_valid_loss if model_bytes else None,
            "parameters": config.model_config(len(v)).num_parameters(),
            "epochs": round(result.windows / max(per_epoch, 1), 3),
            "windows": result.windows,
            "tokens": int(sum((e["tokens_per_s"] or 0) * e["seconds"] for e in trained)),
            "train_seconds": sum(e["seconds"] for e in trained),
        }
        if model_bytes is None:
            record |= {"status": "failed", "reason": TOO_SMALL}
    except TrainingDiverged as e:
        record |= {"status": "diverged", "reason": _one_line(e)}
        model_bytes = None
    except (RnnlmError, TypeError, ValueError) as e:
        record |= {"status": "failed", "reason": _one_line(e)}
        model_bytes = None
    record["seconds"] = round(time.monotonic() - t0, 3)
    return record, model_bytes


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


# ---------------------------------------------------------------------------- the sweep


def sweep(
    train_ids,
    vocab: Vocabulary,
    grid: dict,
    out_dir,
    budget: Budget,
    *,
    valid_ids=None,
    n_folds: int = 0,
    samples: int | None = None,
    seed: int = 0,
    max_time: float | None = None,
    retrain: bool = False,
    client=None,
    progress: Progress | None = None,
    figure: bool = True,
) -> list[dict]:
    """Run (or continue) a sweep in out_dir; return its table, best first.

    train_ids: the training text's ids (1-D); valid_ids: a validation text's, or None with
    n_folds >= 2 (K-fold cross-validation over train_ids). client: a
    dask.distributed.Client to run the units on (each worker trains, the model files come
    back), or None for this process. Raises ConfigError or InputError for bad settings,
    before anything is written."""
    progress = progress or Progress()
    train_ids = np.asarray(train_ids, np.int64)
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 0 or n_folds == 1:
        raise ConfigError(f"folds must be 0 (none) or at least 2; got {n_folds!r}")
    if n_folds == 0 and valid_ids is None:
        raise ConfigError("give a validation text or folds >= 2")
    if n_folds and valid_ids is not None:
        raise ConfigError("give either a validation text or folds, not both")
    if max_time is not None and not max_time > 0:
        raise ConfigError("the sweep's time budget must be positive")
    # (a combination TrainConfig refuses, tied with emb != hidden say, is a failed row)
    settings = settings_list(grid, samples, seed)
    valid_ids = None if valid_ids is None else np.asarray(valid_ids, np.int64)
    out = Path(out_dir)
    identity = {
        "format": SWEEP_FORMAT,
        "grid": {k: dataclasses.asdict(v) if isinstance(v, Range) else v for k, v in grid.items()},
        "samples": samples,
        "seed": seed,
        "folds": n_folds,
        "budget": dataclasses.asdict(budget),
        "data": data_fingerprint(train_ids, valid_ids if valid_ids is not None else train_ids[:0]),
        "vocab": hashlib.sha256(json.dumps(vocab.to_dict()).encode()).hexdigest()[:16],
    }
    runs = _open(out, identity)
    units = [(s, f) for s in settings for f in (range(n_folds) if n_folds else [0])]
    pending = [(s, f) for s, f in units if _key(s, f) not in runs]
    if len(pending) < len(units):
        progress.message(
            f"{out}: {len(units) - len(pending)} of {len(units)} units already done; "
            f"running the other {len(pending)}"
        )
    start = time.monotonic()

    def seconds_left():
        return None if max_time is None else max_time - (time.monotonic() - start)

    def keep(record, model_bytes):
        key = _key(record["settings"], record["fold"])
        if model_bytes is not None:
            (out / "trials").mkdir(exist_ok=True)
            write_atomically(str(out / "trials" / f"{key}.rnnlm"), [model_bytes])
        runs[key] = record
        _save_runs(out, identity, runs)
        table = _table(runs, settings, n_folds)
        _write_table(out, table, grid)
        progress.message(_unit_line(record, len(runs), len(units)))

    vocab_dict = vocab.to_dict()
    if client is None:
        for s, f in pending:
            left = seconds_left()
            if left is not None and left <= 0:
                progress.message(f"the sweep's time budget is spent; {out} holds what ran")
                break
            record, model_bytes = run_unit(
                train_ids, valid_ids, vocab_dict, s, f, n_folds, budget, left
            )
            if record["reason"] == TOO_SMALL:
                if left is not None and (budget.seconds is None or left < budget.seconds):
                    progress.message(f"the sweep's time budget is spent; {out} holds what ran")
                    break  # the sweep's own budget ran out, not the trial's: not recorded
                raise InputError(
                    f"the trial budget of {budget.seconds:g} s is too small for one training "
                    f"window ({_settings_text(s)} trained none); give more --trial-time"
                )
            keep(record, model_bytes)
    else:
        _run_on_dask(client, pending, train_ids, valid_ids, vocab_dict, n_folds, budget,
                     seconds_left, keep)  # fmt: skip
    table = _table(runs, settings, n_folds)
    _write_table(out, table, grid)
    if figure and table:
        _figure(out, table, progress)
    if retrain:
        _retrain(out, table, train_ids, valid_ids, vocab, budget, progress)
    return table


def _run_on_dask(client, pending, train_ids, valid_ids, vocab_dict, n_folds, budget,
                 seconds_left, keep) -> None:  # fmt: skip
    """Every pending unit as a Dask task, the data scattered once; records and model files
    come back here, as they finish. A unit whose worker is lost is run again on another
    (the scheduler's own rescheduling; retries cover a task that fails). The units run at
    once, so the sweep's time budget bounds each unit (as what was left when they were
    submitted), not their sum."""
    from dask.distributed import as_completed

    data = client.scatter([train_ids, valid_ids], broadcast=False)
    futures = [
        client.submit(
            run_unit,
            data[0],
            data[1],
            vocab_dict,
            s,
            f,
            n_folds,
            budget,
            seconds_left(),
            key=f"rnnlm-unit-{_key(s, f)}-{os.getpid()}",
            pure=False,
            retries=3,
        )  # fmt: skip
        for s, f in pending
    ]
    for future in as_completed(futures):
        keep(*future.result())


def _key(settings: dict, fold: int) -> str:
    blob = json.dumps(settings, sort_keys=True).encode()
    return f"{hashlib.sha256(blob).hexdigest()[:12]}-f{fold}"


def _open(out: Path, identity: dict) -> dict:
    """The finished units of the sweep in out (creating it), refusing another sweep's."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: unreadable ({e}); use another folder") from None
        if saved.get("identity") != identity:
            differ = [k for k in identity if (saved.get("identity") or {}).get(k) != identity[k]]
            raise InputError(
                f"{out} holds another sweep (its {', '.join(differ) or 'format'} differ); "
                "rerun with the same settings and data to continue it, or use another folder"
            )
        runs_path = out / "runs.json"
        if runs_path.exists():
            return json.loads(runs_path.read_text(encoding="utf-8"))
        return {}
    write_atomically(str(path), [json.dumps({"identity": identity}, indent=1).encode()])
    return {}


def _save_runs(out: Path, identity: dict, runs: dict) -> None:
    write_atomically(str(out / "runs.json"), [json.dumps(runs, indent=1).encode()])


def _table(runs: dict, settings: list[dict], n_folds: int) -> list[dict]:
    """One row per setting with at least one finished unit, best first (failures last)."""
    rows = []
    for s in settings:
        records = [runs[k] for f in range(max(n_folds, 1)) if (k := _key(s, f)) in runs]
        if not records:
            continue
        bad = [r for r in records if r["status"] != "ok"]
        losses = [r["valid_loss"] for r in records if r["status"] == "ok"]
        ppls = [math.exp(min(v, 700.0)) for v in losses]
        done = len(records) == max(n_folds, 1)
        tokens = sum(r.get("tokens", 0) for r in records)
        train_s = sum(r.get("train_seconds", 0.0) for r in records)
        row = {
            "settings": s,
            "valid_ppl": float(np.mean(ppls)) if ppls and not bad else None,
            "valid_ppl_std": float(np.std(ppls)) if len(ppls) > 1 and not bad else None,
            "folds": len(records) if n_folds else None,
            "parameters": next((r["parameters"] for r in records if "parameters" in r), None),
            "seconds": round(sum(r["seconds"] for r in records), 3),
            "tokens_per_s": round(tokens / train_s, 1) if train_s > 0 else None,
            "epochs": float(np.mean([r.get("epochs", 0.0) for r in records])),
            "status": bad[0]["status"] if bad else ("ok" if done else "partial"),
            "reason": bad[0]["reason"] if bad else ("" if done else "folds still to run"),
        }
        rows.append(row)
    rows.sort(key=lambda r: (r["valid_ppl"] is None, r["valid_ppl"] or 0.0))
    for i, row in enumerate(rows, start=1):
        row["rank"] = i
    return [{c: row[c] for c in COLUMNS} for row in rows]


def _write_table(out: Path, table: list[dict], grid: dict) -> None:
    lines = "".join(json.dumps(row) + "\n" for row in table)
    write_atomically(str(out / "results.jsonl"), [lines.encode()])
    buf = io.StringIO()
    names = sorted(grid)
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rank", *names, *COLUMNS[2:]])
    for row in table:
        writer.writerow(
            [row["rank"], *(row["settings"].get(n) for n in names)]
            + ["" if row[c] is None else row[c] for c in COLUMNS[2:]]
        )
    write_atomically(str(out / "results.csv"), [buf.getvalue().encode()])


def format_table(table: list[dict], grid: dict) -> str:
    """The table for a terminal: one line per setting, best first."""
    names = [n for n in sorted(grid) if len(_values(grid[n])) != 1]
    head = ["#", *names, "valid ppl", "+-", "params", "seconds", "tok/s", "epochs", "status"]
    lines = []
    for r in table:
        ppl = "" if r["valid_ppl"] is None else f"{r['valid_ppl']:.2f}"
        std = "" if r["valid_ppl_std"] is None else f"{r['valid_ppl_std']:.2f}"
        status = r["status"] + (f": {r['reason']}" if r["reason"] else "")
        lines.append(
            [str(r["rank"]), *(str(r["settings"].get(n)) for n in names), ppl, std,
             f"{r['parameters'] or 0:,}", f"{r['seconds']:.1f}",
             f"{r['tokens_per_s'] or 0:,.0f}", f"{r['epochs']:g}", status[:60]]
        )  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    return "\n".join(
        "  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
        for row in [head, *lines]
    )


def _values(v) -> list:
    return [v.lo, v.hi] if isinstance(v, Range) else v


def _settings_text(settings: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def _unit_line(record: dict, done: int, total: int) -> str:
    s = _settings_text(record["settings"])
    if record["status"] == "ok":
        what = f"valid ppl {math.exp(min(record['valid_loss'], 700.0)):.2f}"
    else:
        what = f"{record['status']}: {record['reason']}"
    return f"[{done}/{total}] {s} fold {record['fold']}: {what} ({record['seconds']:.1f} s)"


def _figure(out: Path, table: list[dict], progress: Progress) -> None:
    """sweep.svg: validation perplexity against parameters and against seconds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        progress.message("no figure: it needs matplotlib (pip install 'rnnlm-engine[report]')")
        return
    ok = [r for r in table if r["valid_ppl"] is not None]
    if not ok:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key, label in (
        (axes[0], "parameters", "parameters"),
        (axes[1], "seconds", "seconds (all folds)"),
    ):
        xs = [r[key] for r in ok]
        ys = [r["valid_ppl"] for r in ok]
        err = [r["valid_ppl_std"] or 0.0 for r in ok]
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3)
        positive = [x for x in xs if x > 0]
        if positive and max(positive) >= 10 * min(positive):  # a decade or more: log
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # (minor labels would overlap)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation perplexity")
    spread = " (bars: spread over folds)" if any(r["valid_ppl_std"] for r in ok) else ""
    fig.suptitle(f"rnnlm sweep: {len(ok)} settings{spread}", fontsize=10)
    best = ok[0]
    axes[0].annotate("best", (best["parameters"], best["valid_ppl"]))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    write_atomically(str(out / "sweep.svg"), [buf.getvalue()])


def _retrain(out, table, train_ids, valid_ids, vocab, budget, progress) -> None:
    """The best setting trained on all the training text, saved as best.rnnlm. It is
    validated on the validation text, or, when folds were used, on the training text's
    last tenth: seen in training, so its figure there is no held-out estimate (the folds'
    mean is)."""
    best = next((r for r in table if r["valid_ppl"] is not None), None)
    if best is None:
        progress.message("no setting finished: nothing to retrain")
        return
    seen = valid_ids is None
    if seen:
        valid_ids = train_ids[len(train_ids) - len(train_ids) // 10 :]
    record, model_bytes = run_unit(train_ids, valid_ids, vocab.to_dict(), best["settings"],
                                   0, 0, budget)  # fmt: skip
    if model_bytes is None:
        progress.message(f"retraining the best setting failed: {record['reason']}")
        return
    write_atomically(str(out / "best.rnnlm"), [model_bytes])
    progress.message(
        f"the best setting retrained on all the training text: {out / 'best.rnnlm'} "
        f"({'on text it trained on, ' if seen else ''}valid ppl "
        f"{math.exp(min(record['valid_loss'], 700.0)):.2f})"
    )
