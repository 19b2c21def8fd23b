"""Scoring shards on a Dask cluster (rnnlm_engine/distributed.py): a LocalCluster of 2
worker processes gives the local scores document for document, loads the model once per
worker (counted), and a worker killed during a run costs a retry: the output is complete,
once, and identical."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from rnnlm_engine import Model, ModelConfig
from rnnlm_engine import distributed as dist
from rnnlm_engine import shards as sh
from rnnlm_engine.train import initial_parameters
from rnnlm_engine.vocab import Vocabulary

distributed = pytest.importorskip("dask.distributed", reason="needs the dask extra")

WORDS = "the cat sat on a mat dog ran far away".split()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    vocab = Vocabulary("word", ["<eos>", "<unk>", *WORDS])
    config = ModelConfig("lstm", len(vocab), 16, 16, 2)
    params = initial_parameters(config, 0.5, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("model") / "m.rnnlm"
    Model.from_state_dict(params, vocab=vocab).save(path)
    return path


def shard_files(folder, n: int, lines: int) -> list:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(n)
    paths = []
    for i in range(n):
        text = "\n".join(" ".join(rng.choice(WORDS, rng.integers(1, 12))) for _ in range(lines))
        path = folder / f"part{i:02d}.txt"
        path.write_text(text + "\n")
        paths.append(path)
    return paths


@pytest.fixture
def client(dask_client):
    return dask_client


def read_outputs(result) -> list[bytes]:
    return [open(r.output, "rb").read() for r in result.shards]


def test_dask_scores_equal_local_scores_and_each_worker_loads_once(tmp_path, model_path, client):
    paths = shard_files(tmp_path / "in", 6, 80)
    options = sh.Options(percentiles=(30, 60))
    here = dist.score_files(paths, model_path, tmp_path / "here", options)
    there = dist.score_files(paths, model_path, tmp_path / "there", options, client=client)
    assert there.documents == here.documents == 480 and there.tokens == here.tokens
    for a, b in zip(read_outputs(here), read_outputs(there), strict=True):
        for x, y in zip(a.splitlines(), b.splitlines(), strict=True):
            dx, dy = json.loads(x), json.loads(y)
            assert dx["text"] == dy["text"] and dx["tokens"] == dy["tokens"]
            # the same kernels; BLAS may sum in another order in a worker process
            assert dy["logprob"] == pytest.approx(dx["logprob"], rel=1e-5)
    assert there.perplexity == pytest.approx(here.perplexity, rel=1e-6)
    assert there.cutoffs == pytest.approx(here.cutoffs, rel=1e-5)
    # every worker that scored loaded the model once, for all its shards
    loads = client.run(dist.loads)
    assert sorted(loads.values()) in ([1, 1], [0, 1]) and sum(loads.values()) >= 1
    summary = json.loads((tmp_path / "there" / sh.SUMMARY).read_text())
    assert summary["documents"] == 480


def test_a_worker_killed_during_a_run_costs_a_retry(tmp_path, model_path, client):
    paths = shard_files(tmp_path / "in", 8, 600)
    reference = dist.score_files(paths, model_path, tmp_path / "ref", client=client)
    want = read_outputs(reference)
    out = tmp_path / "run"
    box = {}

    def run():
        try:
            box["result"] = dist.score_files(paths, model_path, out, client=client)
        except BaseException as e:  # surfaced below
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    pids = client.run(os.getpid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(out.glob("*.jsonl")):
        time.sleep(0.01)
    victim = next(iter(pids.values()))
    assert t.is_alive(), "the run ended before a worker could be killed"
    os.kill(victim, signal.SIGKILL)  # a worker dies mid-run; its nanny starts another
    t.join(timeout=300)
    assert not t.is_alive() and "error" not in box, box.get("error")
    result = box["result"]
    assert read_outputs(result) == want  # complete and identical
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{p.name}.jsonl" for p in paths] + [sh.SUMMARY]
    )  # once each, and no temporary file left behind


def test_the_command_line_on_a_scheduler(tmp_path, model_path, client, capsys):
    from rnnlm_engine.cli import main

    paths = shard_files(tmp_path / "in", 3, 20)
    argv = ["score", str(model_path), *map(str, paths), "--out", str(tmp_path / "o"),
            "--scheduler", client.scheduler.address, "--json"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 60
    assert len(list((tmp_path / "o").glob("*.jsonl"))) == 3
