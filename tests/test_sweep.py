"""rnnlm sweep: grids and random draws, K-fold splits, every row of a small grid, failed
rows, reproducible tables, resuming after kill -9, the same rows on a Dask cluster, and
one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rnnlm_engine.cli import main
from rnnlm_engine.errors import ConfigError, InputError
from rnnlm_engine.sweep import Budget, Range, folds, parse_grid, settings_list, sweep
from rnnlm_engine.train import Progress
from rnnlm_engine.vocab import Vocabulary

try:
    import dask.distributed  # noqa: F401  (the dask extra)

    HAVE_DASK = True
except ImportError:
    HAVE_DASK = False

WORDS = ["the cat", "a dog", "my fish"]
VERBS = ["sees", "likes"]
BASE = "optimizer=adam lr=0.01 batch_size=4 bptt=8 layers=1"


def corpus(n: int = 300, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(
        f"{WORDS[rng.integers(3)]} {VERBS[rng.integers(2)]} {WORDS[rng.integers(3)]} .\n"
        for _ in range(n)
    )


@pytest.fixture(scope="module")
def data():
    text = corpus()
    vocab = Vocabulary.build(text, "word")
    return vocab, vocab.encode(text)


class Quiet(Progress):
    def __init__(self):
        super().__init__(enabled=False)
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


def stable(table):
    """The columns that do not depend on the machine's speed."""
    return [{k: v for k, v in row.items() if k not in ("seconds", "tokens_per_s")} for row in table]


# ---------------------------------------------------------------------------- the grid


def test_parse_grid_types_each_setting_and_knows_the_aliases():
    grid = parse_grid("cell=lstm,gru layers=1,2 hidden=8 dropout=0,0.25 tied=false lr=1e-3:1e-1")
    assert grid == {
        "cell": ["lstm", "gru"],
        "num_layers": [1, 2],
        "hidden_size": [8],
        "dropout": [0.0, 0.25],
        "tied": [False],
        "lr": Range(1e-3, 1e-1),
    }
    assert parse_grid("decay-start=none,4")["decay_start"] == [None, 4]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the grid is empty"),
        ("   ", "the grid is empty"),
        ("colour=red", "unknown setting 'colour'"),
        ("max_time=5", "unknown setting 'max_time'"),  # a budget, not a setting
        ("hidden=eight", "hidden_size: 'eight' is not a int"),
        ("tied=maybe", "tied: 'maybe' is not a bool"),
        ("hidden", "not name=value"),
        ("hidden=8 hidden=16", "appears twice"),
    ],
)
def test_bad_grids_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(text)


def test_settings_are_the_product_or_reproducible_draws():
    grid = parse_grid("cell=lstm,gru hidden=8,16,32")
    assert len(settings_list(grid)) == 6
    assert {"cell": "gru", "hidden_size": 32} in settings_list(grid)
    ranged = parse_grid("hidden=8:64 lr=1e-4:1e-2 cell=lstm,gru")
    with pytest.raises(ConfigError, match="needs --samples"):
        settings_list(ranged)
    a, b = settings_list(ranged, 20, seed=3), settings_list(ranged, 20, seed=3)
    assert a == b and a != settings_list(ranged, 20, seed=4)
    assert all(8 <= s["hidden_size"] <= 64 and 1e-4 <= s["lr"] <= 1e-2 for s in a)
    assert all(isinstance(s["hidden_size"], int) for s in a)


def test_folds_are_contiguous_pieces():
    ids = np.arange(10)
    pieces = [folds(ids, k, 3)[1] for k in range(3)]
    assert [list(p) for p in pieces] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    train, valid = folds(ids, 1, 3)
    assert list(train) == [0, 1, 2, 6, 7, 8, 9] and list(valid) == [3, 4, 5]


# ---------------------------------------------------------------------------- sweeps


def test_a_small_grid_gives_every_row_and_the_same_table_twice(data, tmp_path):
    vocab, ids = data
    grid = parse_grid(f"cell=lstm,gru hidden=8,16 {BASE}")
    budget = Budget(windows=15)
    said = Quiet()
    a = sweep(ids, vocab, grid, tmp_path / "a", budget, n_folds=3, progress=said)
    b = sweep(ids, vocab, grid, tmp_path / "b", budget, n_folds=3, progress=Quiet())
    assert len(a) == 4 and all(r["status"] == "ok" and r["folds"] == 3 for r in a)
    assert [r["rank"] for r in a] == [1, 2, 3, 4]
    ppls = [r["valid_ppl"] for r in a]
    assert ppls == sorted(ppls) and all(r["valid_ppl_std"] > 0 for r in a)
    assert stable(a) == stable(b)  # a budget in windows: the same table
    # the files: the table as JSON lines and CSV, best first; a model per unit; a figure
    lines = (tmp_path / "a" / "results.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == a
    csv_rows = (tmp_path / "a" / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 5 and csv_rows[0].startswith("rank,")
    assert len(list((tmp_path / "a" / "trials").glob("*.rnnlm"))) == 12
    try:
        import matplotlib  # noqa: F401  (the report extra)
    except ImportError:  # no figure, and one line that names the extra
        assert not (tmp_path / "a" / "sweep.svg").exists()
        assert any("rnnlm-engine[report]" in m for m in said.messages)
    else:
        assert (tmp_path / "a" / "sweep.svg").read_text().lstrip().startswith("<?xml")


def test_failed_and_diverged_trials_are_rows_and_the_sweep_goes_on(data, tmp_path):
    vocab, ids = data
    n = len(ids) * 9 // 10
    grid = parse_grid(
        "optimizer=sgd batch_size=4 bptt=8 layers=1 hidden=8 emb=8,5 tied=true,false "
        "lr=1,1e30 clip=0 init_range=1"
    )
    table = sweep(ids[:n], vocab, grid, tmp_path / "s", Budget(windows=10), valid_ids=ids[n:],
                  progress=Quiet(), figure=False)  # fmt: skip
    assert len(table) == 8
    status = {(r["settings"]["emb_size"], r["settings"]["tied"], r["settings"]["lr"]):
              (r["status"], r["reason"]) for r in table}  # fmt: skip
    assert status[(5, True, 1.0)][0] == "failed"
    assert "tied weights need emb_size == hidden_size" in status[(5, True, 1.0)][1]
    assert status[(8, False, 1e30)][0] == "diverged"
    assert status[(8, False, 1.0)] == ("ok", "")
    assert table[-1]["valid_ppl"] is None and table[0]["status"] == "ok"  # failures last


def kill_9_then_rerun(tmp_path, budget: list[str]):
    """A sweep (6 settings x 2 folds) killed with SIGKILL once 3 units are recorded, then
    the same command again: (its argv, the rows of the rerun, the units done at the kill)."""
    (tmp_path / "c.txt").write_text(corpus(600), encoding="utf-8")
    argv = ["sweep", "--train", str(tmp_path / "c.txt"), "--folds", "2", "--grid",
            f"hidden=4,6,8,10,12,14 {BASE}", *budget, "--no-figure", "--json"]  # fmt: skip
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rnnlm_engine.cli", *argv, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runs = out / "runs.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if runs.exists() and len(json.loads(runs.read_text())) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    # what a kill leaves is whole: every file parses
    done = json.loads(runs.read_text())
    assert 3 <= len(done) < 12
    for line in (out / "results.jsonl").read_text().splitlines():
        json.loads(line)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{len(done)} of 12 units already done" in again.stderr
    return argv, [json.loads(x) for x in again.stdout.splitlines()], done


def test_after_kill_9_a_time_budgeted_sweep_records_every_trial_once(tmp_path):
    _, rows, _ = kill_9_then_rerun(tmp_path, ["--trial-time", "0.3s"])
    assert sorted(r["settings"]["hidden_size"] for r in rows) == [4, 6, 8, 10, 12, 14]
    assert all(r["status"] == "ok" and r["folds"] == 2 for r in rows)
    runs = json.loads((tmp_path / "killed" / "runs.json").read_text())
    assert len(runs) == 12 and len(list((tmp_path / "killed" / "trials").iterdir())) == 12


def test_resume_after_kill_9_continues_and_equals_an_uninterrupted_sweep(tmp_path):
    argv, rows, done = kill_9_then_rerun(tmp_path, ["--trial-windows", "60"])
    whole = subprocess.run(
        [sys.executable, "-m", "rnnlm_engine.cli", *argv, "--out", str(tmp_path / "whole")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert len(rows) == 6 and stable(rows) == stable(
        [json.loads(x) for x in whole.stdout.splitlines()]
    )


def test_a_dask_local_cluster_gives_the_same_rows(data, tmp_path, dask_client):
    vocab, ids = data
    grid = parse_grid(f"cell=lstm,gru hidden=8,12 {BASE}")
    budget = Budget(windows=15)
    here = sweep(ids, vocab, grid, tmp_path / "here", budget, n_folds=2, progress=Quiet(),
                 figure=False)  # fmt: skip
    there = sweep(ids, vocab, grid, tmp_path / "there", budget, n_folds=2, progress=Quiet(),
                  figure=False, client=dask_client)  # fmt: skip
    assert len(there) == len(here) == 4
    for a, b in zip(stable(here), stable(there), strict=True):
        assert a["settings"] == b["settings"] and a["status"] == b["status"] == "ok"
        # the same kernels; BLAS may sum in another order in a worker process
        assert b["valid_ppl"] == pytest.approx(a["valid_ppl"], rel=1e-4)
    assert len(list((tmp_path / "there" / "trials").glob("*.rnnlm"))) == 8


def test_retrain_saves_the_best_setting_trained_on_all_the_text(data, tmp_path, monkeypatch):
    import importlib

    from rnnlm_engine import load

    sweep_module = importlib.import_module("rnnlm_engine.sweep")
    real, trained_on = sweep_module.run_unit, []

    def recording(train_ids, valid_ids, vocab, settings, fold, n_folds, *args):
        trained_on.append(len(train_ids) if not n_folds else None)
        return real(train_ids, valid_ids, vocab, settings, fold, n_folds, *args)

    monkeypatch.setattr(sweep_module, "run_unit", recording)
    vocab, ids = data
    grid = parse_grid(f"hidden=4,12 {BASE}")
    table = sweep(ids, vocab, grid, tmp_path / "s", Budget(windows=20), n_folds=2,
                  retrain=True, progress=Quiet(), figure=False)  # fmt: skip
    best = load(tmp_path / "s" / "best.rnnlm")
    assert best.config.hidden_size == table[0]["settings"]["hidden_size"]
    assert best.config.emb_size == best.config.hidden_size  # as in rnnlm train
    assert trained_on[-1] == len(ids)  # the retraining: every token (the folds: None)
    assert best.vocab == vocab


def test_another_sweep_in_the_same_folder_is_refused(data, tmp_path):
    vocab, ids = data
    sweep(ids, vocab, parse_grid(f"hidden=4 {BASE}"), tmp_path, Budget(windows=2), n_folds=2,
          progress=Quiet(), figure=False)  # fmt: skip
    with pytest.raises(InputError, match="holds another sweep .*grid"):
        sweep(ids, vocab, parse_grid(f"hidden=5 {BASE}"), tmp_path, Budget(windows=2),
              n_folds=2, progress=Quiet(), figure=False)  # fmt: skip


# ---------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--grid", "colour=red", "--folds", "2", "--trial-epochs", "1"], "unknown setting"),
        (["--grid", " ", "--folds", "2", "--trial-epochs", "1"], "the grid is empty"),
        (["--grid", "hidden=8", "--folds", "2", "--trial-windows", "0"], "positive integer"),
        (["--grid", "hidden=8", "--folds", "2"], "give each trial a budget"),
        (["--grid", "hidden=8", "--trial-epochs", "1"], "give --valid FILE or --folds K"),
        (
            [
                "--grid",
                "hidden=8",
                "--folds",
                "2",
                "--trial-epochs",
                "1",
                "--scheduler",
                "tcp://127.0.0.1:9",
            ],
            "cannot reach the Dask scheduler"
            if HAVE_DASK
            else "--scheduler needs dask.distributed: pip install 'rnnlm-engine[dask]'",
        ),  # fmt: skip
        (
            ["--grid", f"hidden=8 {BASE}", "--folds", "2", "--trial-time", "0.000001s"],
            "too small for one training window",
        ),  # fmt: skip
    ],
)
def test_bad_sweeps_fail_in_one_line_and_write_nothing_half(extra, message, tmp_path, capsys):
    (tmp_path / "c.txt").write_text(corpus(), encoding="utf-8")
    out = tmp_path / "s"
    code = main(["sweep", "--train", str(tmp_path / "c.txt"), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert (
        not (out / "results.jsonl").exists()
        or json.loads("[" + ",".join((out / "results.jsonl").read_text().splitlines()) + "]") == []
    )


def test_a_lost_dask_worker_costs_a_rerun_and_the_rows_are_complete(data, tmp_path, dask_client):
    import threading

    vocab, ids = data
    grid = parse_grid(f"hidden=4,5,6,7,8,9 {BASE}")
    budget = Budget(windows=40)
    here = sweep(ids, vocab, grid, tmp_path / "here", budget, n_folds=2, progress=Quiet(),
                 figure=False)  # fmt: skip
    pids = dask_client.run(os.getpid)  # worker address -> its process id
    killed = []

    def kill_one_worker_once_a_unit_is_done():
        runs = tmp_path / "there" / "runs.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = json.loads(runs.read_text()) if runs.exists() else {}
            if done:
                pid = next(iter(pids.values()))
                os.kill(pid, signal.SIGKILL)  # its nanny starts a new worker
                killed.append(len(done))
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one_worker_once_a_unit_is_done)
    killer.start()
    there = sweep(ids, vocab, grid, tmp_path / "there", budget, n_folds=2,
                  progress=Quiet(), figure=False, client=dask_client)  # fmt: skip
    killer.join()
    assert killed, "no unit finished in time to kill a worker after it"
    assert killed[0] < 12  # killed while units were still to run
    assert len(there) == 6 and all(r["status"] == "ok" and r["folds"] == 2 for r in there)
    for a, b in zip(stable(here), stable(there), strict=True):
        assert b["valid_ppl"] == pytest.approx(a["valid_ppl"], rel=1e-4)
