"""Scoring corpora in shards (issue 16): tokens/s of rnnlm score FILES... --out, locally
and on a local Dask cluster, against Model.score of the whole text in one call; and the
memory of scoring 100 MB against 1 MB.

    python bench/bench_shards.py                 # about 5 minutes on the 2-core machine
    python bench/bench_shards.py --only memory

Throughput: PTB's training text (42,068 lines, 929,589 tokens with the line ends) split
into 8 shard files; the model is an LSTM 2 x 200 with PTB's vocabulary and random weights
(sentence mode, batch 64). Rows, alternating in each round: Model.score of the whole
text (the lines as one list), shards.score_files of the 8 files (one after another, each
on every core), and distributed.score_files on a LocalCluster (its start not timed).
Memory: the peak resident memory (VmHWM) of a fresh process that scores 1 MB, then of
one that scores 100 MB of PTB lines (repeated) in 8 shards, with a small model (LSTM 1 x
32) so that it is quick.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from rnnlm_engine import Model, ModelConfig
from rnnlm_engine import distributed as dist
from rnnlm_engine import shards as sh
from rnnlm_engine.train import initial_parameters
from rnnlm_engine.vocab import Vocabulary, read_text

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ptb"


def model_file(folder: Path, H: int, L: int, vocab) -> Path:
    config = ModelConfig("lstm", len(vocab), H, H, L)
    params = initial_parameters(config, 0.1, np.random.default_rng(0))
    path = folder / f"lstm{L}x{H}.rnnlm"
    Model.from_state_dict(params, vocab=vocab).save(path)
    return path


def split(lines: list[str], folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        part = lines[i * len(lines) // n : (i + 1) * len(lines) // n]
        path = folder / f"part{i}.txt"
        path.write_text("\n".join(part) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def throughput(args, tmp: Path, vocab, lines: list[str]) -> None:
    path = model_file(tmp, 200, 2, vocab)
    from rnnlm_engine import load

    model = load(path)
    paths = split(lines, tmp / "shards", 8)
    model.score(lines[:200]).run()  # warm: kernels, the input table
    from dask.distributed import Client, LocalCluster

    rows: dict[str, list[float]] = {"Model.score, one call": [], "8 shards, locally": []}
    tokens = {}
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        label = f"8 shards, Dask ({args.workers} worker processes)"
        rows[label] = []
        dist.score_files(paths[:1], path, tmp / "warm", client=client)  # workers load
        for r in range(args.rounds):
            t0 = time.perf_counter()
            tokens["one"] = model.score(lines).run().tokens
            rows["Model.score, one call"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tokens["local"] = sh.score_files(model, paths, tmp / f"l{r}", sh.Options()).tokens
            rows["8 shards, locally"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tokens["dask"] = dist.score_files(paths, path, tmp / f"d{r}", client=client).tokens
            rows[label].append(time.perf_counter() - t0)
    assert len(set(tokens.values())) == 1, tokens
    n = tokens["one"]
    base = min(rows["Model.score, one call"])
    print(f"\nPTB train, {len(lines):,} lines, {n:,} tokens; LSTM 2x200, V={len(vocab):,}, "
          f"sentence mode, batch 64; best of {args.rounds} alternating rounds")  # fmt: skip
    print(f"{'row':<42}{'seconds':>9}{'tokens/s':>11}{'of one call':>13}")
    for name, times in rows.items():
        t = min(times)
        print(f"{name:<42}{t:>9.2f}{n / t:>11,.0f}{base / t:>12.0%}   "
              f"(rounds: {', '.join(f'{x:.1f}' for x in times)} s)")  # fmt: skip


_CHILD = """
import sys
from rnnlm_engine import load, shards
model = load(sys.argv[1])
result = shards.score_files(model, sys.argv[3:], sys.argv[2], shards.Options())
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(result.tokens, int(peak) * 1024)
"""


def memory(args, tmp: Path, vocab, lines: list[str]) -> None:
    path = model_file(tmp, 32, 1, vocab)
    text = ("\n".join(lines) + "\n").encode()
    print("\npeak resident memory of scoring, LSTM 1x32 (a fresh process each)")
    peaks = {}
    for mb in (1, 100):
        folder = tmp / f"mem{mb}"
        folder.mkdir()
        size = mb << 20
        reps = -(-size // len(text))
        data = (text * reps)[:size]
        data = data[: data.rfind(b"\n") + 1]
        paths = []
        for i in range(8):
            part = data[i * len(data) // 8 : (i + 1) * len(data) // 8]
            cut = part.rfind(b"\n") + 1 if i < 7 else len(part)
            paths.append(folder / f"p{i}.txt")
            paths[-1].write_bytes(part[:cut] if i < 7 else part)
        total = sum(p.stat().st_size for p in paths)
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), str(folder / "out"), *map(str, paths)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        tokens, peak = map(int, out.stdout.split())
        peaks[mb] = peak
        print(f"{total / 1e6:8.1f} MB of text, {tokens:>11,} tokens: peak {peak / 1e6:7.1f} MB "
              f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    grew = (peaks[100] - peaks[1]) / 1e6
    print(f"100 MB against 1 MB: {grew:+.1f} MB (bound: within 50 MB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", choices=["throughput", "memory"])
    args = ap.parse_args()
    train = read_text(DATA / "ptb.train.txt")
    vocab = Vocabulary.build(train, "word")
    lines = train.split("\n")[:-1]
    print(f"{numba.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "throughput"):
            throughput(args, Path(tmp), vocab, lines)
        if args.only in (None, "memory"):
            memory(args, Path(tmp), vocab, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
