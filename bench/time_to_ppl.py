"""Time to perplexity on PTB: the full softmax against the adaptive softmax, each trained
for the same wall-clock budget on this machine, validation included.

    python bench/time_to_ppl.py --minutes 10            # both outputs, 10 minutes each
    python bench/time_to_ppl.py --minutes 3 --figure bench/figures/ptb_time_to_ppl.svg

Configuration: bench/train_ptb.py's (Zaremba et al.'s "small" LSTM 2 x 200, SGD lr 20
halved every epoch from the 4th, clip 0.25, BPTT 20, batch 20, no dropout), with the
output either the full softmax or an adaptive softmax whose cutoffs cover 80% and 95% of
the training tokens (`--adaptive auto`, printed). Each run stops at the budget (the
partial epoch is validated, as `--max-time` does); the clock runs from the start of
training, so validation counts. Reported: validation perplexity (batch 10) at each epoch
end against wall-clock seconds, and the final model's test perplexity with the state
carried through the whole text (batch 1, as the paper measures).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numba
from train_ptb import CONFIG, DATA

from rnnlm_engine.model import load
from rnnlm_engine.output import choose_cutoffs
from rnnlm_engine.train import Progress, batchify, evaluate, train
from rnnlm_engine.vocab import Vocabulary, read_text


class Clock(Progress):
    """A quiet Progress that stamps each epoch's line with the wall-clock seconds."""

    def __init__(self, t0: float):
        super().__init__(quiet=True)
        self.t0, self.points = t0, []

    def message(self, line: str) -> None:
        if line.startswith("epoch "):
            ppl = float(line.split("(perplexity ")[1].split(")")[0].split(",")[0])
            self.points.append((time.perf_counter() - self.t0, ppl))
            print(f"  {time.perf_counter() - self.t0:7.1f} s  {line}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--figure", type=Path, default=None, help="an SVG of the curves")
    args = ap.parse_args(argv)

    texts = {s: read_text(args.data / f"ptb.{s}.txt") for s in ("train", "valid", "test")}
    vocab = Vocabulary.build(texts["train"], "word")
    ids = {s: vocab.encode(t) for s, t in texts.items()}
    cutoffs = choose_cutoffs(ids["train"], len(vocab), CONFIG.hidden_size)
    print(
        f"PTB, {args.minutes:g} minutes each, validation included; adaptive cutoffs "
        f"{cutoffs} (auto); {numba.get_num_threads()} threads; load average "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    curves = {}
    for name, config in (
        ("full softmax", CONFIG),
        (f"adaptive {cutoffs}", replace(CONFIG, cutoffs=cutoffs)),
    ):
        config = replace(config, epochs=1000, max_time=60 * args.minutes, checkpoint_every=0.0)
        out = Path(tempfile.mkdtemp(prefix="ttp-")) / "m.rnnlm"
        print(name, flush=True)
        t0 = time.perf_counter()
        clock = Clock(t0)
        train(ids["train"], ids["valid"], vocab, config, out, checkpoint=False, progress=clock)
        test = math.exp(evaluate(load(out), batchify(ids["test"], 1)))
        curves[name] = clock.points
        spent = time.perf_counter() - t0
        print(f"  {name}: test perplexity {test:.2f} (batch 1) after {spent:.0f} s", flush=True)

    if args.figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        for name, points in curves.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=name)
        ax.axhline(141.2, color="0.6", lw=0.8, ls="--", label="KN 5-gram (141.2)")
        ax.set(xlabel="seconds (validation included)", ylabel="validation perplexity",
               title=f"PTB, LSTM 2x200, {args.minutes:g} minutes")  # fmt: skip
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.figure, format="svg")
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
