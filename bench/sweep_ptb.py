"""Choosing a model on PTB with `rnnlm_engine.sweep`, and what Dask costs.

    python bench/sweep_ptb.py                       # the sweep: cell x layers x hidden x residual
    python bench/sweep_ptb.py --windows 100         # a shorter budget per trial
    python bench/sweep_ptb.py --dask-overhead       # the same small sweep in-process and on a
                                                    # LocalCluster, in alternation

The sweep trains every setting of the grid for the same number of windows (batch 20 x
bptt 35; a budget in windows gives the same table on any machine), validates on PTB's
validation text, prints the table best first, and reports the best model's perplexity on
PTB's test text. The figure (perplexity against parameters and time) is written to the
sweep's folder as sweep.svg and copied to --figure.

--dask-overhead runs one small sweep in this process and on a local Dask cluster of one
worker process (as many threads as cores, like this process), in alternation, each time
in a fresh folder, and prints the wall times side by side with their ratio.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rnnlm_engine import load
from rnnlm_engine.sweep import Budget, format_table, parse_grid, sweep
from rnnlm_engine.train import Progress, batchify, evaluate
from rnnlm_engine.vocab import Vocabulary, read_text

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ptb"
GRID = (
    "cell=lstm,gru layers=1,2 hidden=128,256 residual=false,true optimizer=adam lr=0.002 "
    "batch_size=20 bptt=35 dropout=0 clip=0.25 seed=1"
)
SMALL_GRID = "cell=lstm hidden=64,128 layers=1 optimizer=adam lr=0.002 batch_size=20 bptt=35"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--windows", type=int, default=300, help="budget per trial")
    ap.add_argument("--grid", default=GRID)
    ap.add_argument("--out", type=Path, default=None, help="the sweep's folder (default: temp)")
    ap.add_argument("--figure", type=Path, default=None, help="copy sweep.svg here")
    ap.add_argument("--dask-overhead", action="store_true")
    ap.add_argument("--rounds", type=int, default=2, help="--dask-overhead: alternations")
    args = ap.parse_args()
    texts = {s: read_text(args.data / f"ptb.{s}.txt") for s in ("train", "valid", "test")}
    vocab = Vocabulary.build(texts["train"], "word")
    ids = {s: vocab.encode(t) for s, t in texts.items()}
    if args.dask_overhead:
        return dask_overhead(ids, vocab, args)

    out = args.out or Path(tempfile.mkdtemp(prefix="sweep-ptb-"))
    grid = parse_grid(args.grid)
    t0 = time.perf_counter()
    table = sweep(ids["train"], vocab, grid, out, Budget(windows=args.windows),
                  valid_ids=ids["valid"], progress=Progress())  # fmt: skip
    seconds = time.perf_counter() - t0
    print(f"\nPTB, {args.windows} windows of 20 x 35 tokens per trial "
          f"({args.windows * 700:,} tokens, {args.windows * 700 / len(ids['train']):.2f} "
          f"epochs); sweep {seconds:.0f} s in {out}\n")  # fmt: skip
    print(format_table(table, grid))
    best = table[0]
    from rnnlm_engine.sweep import _key  # the trial's model file is named by its key

    model = load(out / "trials" / f"{_key(best['settings'], 0)}.rnnlm")
    test = evaluate(model, batchify(ids["test"], 10))
    print(f"\nbest: {best['settings']}\nits test perplexity: {np.exp(test):.2f} "
          f"(validation {best['valid_ppl']:.2f})")  # fmt: skip
    if args.figure:
        shutil.copyfile(out / "sweep.svg", args.figure)
        print(f"figure: {args.figure}")
    return 0


def dask_overhead(ids, vocab, args) -> int:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        print("--dask-overhead needs dask.distributed: pip install 'rnnlm-engine[dask]'")
        return 2
    import os

    grid = parse_grid(SMALL_GRID)
    budget = Budget(windows=args.windows)
    quiet = Progress(quiet=True)
    threads = os.cpu_count() or 1
    times: dict[str, list[float]] = {"in-process": [], "dask": []}
    tables = {}
    with (
        LocalCluster(n_workers=1, threads_per_worker=threads, processes=True,
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        # one sweep each first, unmeasured: Numba's cache and the worker's imports warm
        for mode in ("in-process", "dask", *(["in-process", "dask"] * args.rounds)):
            folder = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
            t0 = time.perf_counter()
            on = client if mode == "dask" else None
            tables[mode] = sweep(ids["train"], vocab, grid, folder, budget,
                                 valid_ids=ids["valid"][:20000], progress=quiet,
                                 figure=False, client=on)  # fmt: skip
            times[mode].append(time.perf_counter() - t0)
            shutil.rmtree(folder)
    for mode in times:
        times[mode] = times[mode][1:]  # the warm-up
    a, b = np.median(times["in-process"]), np.median(times["dask"])
    print(f"{len(tables['dask'])} settings x {args.windows} windows, PTB; {args.rounds} "
          "alternations after a warm-up of each\n")  # fmt: skip
    print(f"{'mode':<12}{'median s':>10}{'runs':>30}")
    for mode, ts in times.items():
        print(f"{mode:<12}{np.median(ts):>10.2f}{'  '.join(f'{t:.2f}' for t in ts):>30}")
    print(f"\ndask / in-process: {b / a:.3f} (overhead {100 * (b / a - 1):+.1f}%)")
    same = [r["valid_ppl"] for r in tables["in-process"]] == [
        r["valid_ppl"] for r in tables["dask"]
    ]
    print(f"same validation perplexities: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
