"""Time to perplexity: the full softmax against the adaptive softmax, each trained for the
same wall-clock budget on this machine, validation included (PTB, or WikiText-2).

    python bench/time_to_ppl.py --minutes 10            # PTB, both outputs, 10 minutes each
    python bench/time_to_ppl.py --minutes 3 --figure bench/figures/ptb_time_to_ppl.svg
    python bench/time_to_ppl.py --corpus wikitext-2 --minutes 20 --cutoffs 2000,10000
    python bench/time_to_ppl.py --plot-logs full.log adaptive.log --figure curves.svg

Configuration: bench/train_ptb.py's (Zaremba et al.'s "small" LSTM 2 x 200, SGD lr 20
halved every epoch from the 4th, clip 0.25, BPTT 20, batch 20, no dropout unless
--dropout), with the output either the full softmax or an adaptive softmax whose cutoffs
are --cutoffs, or by default cover 80% and 95% of the training tokens (`--adaptive auto`,
printed). Before the clocks start, both models train a few windows untimed, so that
neither pays for compiling (or loading the cache of) the kernels. Each run stops at the
budget (the partial epoch is validated, as `--max-time` does); the clock runs from the
start of training, so validation counts. Reported: validation perplexity (batch 10) at
each epoch end against wall-clock seconds, and the final model's test perplexity with the
state carried through the whole text (batch 1, as the paper measures).
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
from train_ptb import CONFIG

from rnnlm_engine.model import load
from rnnlm_engine.output import choose_cutoffs
from rnnlm_engine.train import Progress, batchify, evaluate, train
from rnnlm_engine.vocab import Vocabulary, read_text

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
# each corpus's files: (train, valid, test)
FILES = {
    "ptb": ("ptb/ptb.train.txt", "ptb/ptb.valid.txt", "ptb/ptb.test.txt"),
    "wikitext-2": ("wikitext-2/train.txt", "wikitext-2/valid.txt", "wikitext-2/test.txt"),
}
KN5 = {"ptb": 141.2}  # a Kneser-Ney 5-gram's test perplexity (Mikolov et al.)


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


def draw(curves: dict, title: str, corpus: str, path: Path) -> None:
    """An SVG of validation perplexity against seconds, one curve per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=name)
    if corpus in KN5:
        kn = KN5[corpus]
        ax.axhline(kn, color="0.6", lw=0.8, ls="--", label=f"KN 5-gram ({kn})")
    ax.set(xlabel="seconds (validation included)", ylabel="validation perplexity", title=title)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="svg")
    print(f"wrote {path}")


def curves_of_logs(paths: list[Path]) -> tuple[dict, str]:
    """The curves printed by earlier runs of this script (their stdout saved to files),
    so that runs made separately share one figure; and the corpus they name."""
    curves: dict[str, list] = {}
    corpus, name = "", None
    for path in paths:
        for line in path.read_text().splitlines():
            if " (V=" in line and not line.startswith(" "):  # the header: the corpus
                corpus = line.split(" (V=")[0]
            elif line and not line.startswith(" "):  # a run's name
                name = line.strip()
                curves[name] = []
            elif name is not None and " s  epoch " in line and "(perplexity " in line:
                seconds = float(line.split(" s  epoch ")[0])
                ppl = float(line.split("(perplexity ")[1].split(")")[0].split(",")[0])
                curves[name].append((seconds, ppl))
    return curves, corpus


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the folder of the corpora")
    ap.add_argument("--corpus", choices=sorted(FILES), default="ptb")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--cutoffs", default="auto", help="the adaptive cutoffs: auto, or 2000,10000")
    ap.add_argument("--div-value", type=float, default=CONFIG.div_value)
    ap.add_argument("--dropout", type=float, default=CONFIG.dropout)
    ap.add_argument("--outputs", default="full,adaptive", help="which runs: full, adaptive or both")
    ap.add_argument("--figure", type=Path, default=None, help="an SVG of the curves")
    ap.add_argument(
        "--plot-logs", type=Path, nargs="+", metavar="LOG",
        help="draw --figure from earlier runs' saved output, train nothing",
    )  # fmt: skip
    ap.add_argument("--title", default=None, help="the figure's title (with --plot-logs)")
    args = ap.parse_args(argv)
    if args.plot_logs:
        if args.figure is None:
            ap.error("--plot-logs draws a --figure: give its path")
        curves, corpus = curves_of_logs(args.plot_logs)
        draw(curves, args.title or f"{corpus}, LSTM 2x200", corpus, args.figure)
        return 0

    parts = zip(("train", "valid", "test"), FILES[args.corpus], strict=True)
    texts = {s: read_text(args.data / f) for s, f in parts}
    vocab = Vocabulary.build(texts["train"], "word")
    ids = {s: vocab.encode(t) for s, t in texts.items()}
    if args.cutoffs == "auto":
        cutoffs = choose_cutoffs(ids["train"], len(vocab), CONFIG.hidden_size)
    else:
        cutoffs = tuple(int(v) for v in args.cutoffs.split(","))
    base = replace(CONFIG, dropout=args.dropout)
    print(
        f"{args.corpus} (V={len(vocab):,}), {args.minutes:g} minutes each, validation "
        f"included; adaptive cutoffs {cutoffs} ({args.cutoffs}); dropout {args.dropout:g}; "
        f"{numba.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    adaptive = replace(base, cutoffs=cutoffs, div_value=args.div_value)
    runs = [("full softmax", base), (f"adaptive {cutoffs} div {args.div_value:g}", adaptive)]
    wanted = args.outputs.split(",")
    runs = [run for run, key in zip(runs, ("full", "adaptive"), strict=True) if key in wanted]
    for _, config in runs:  # compile (or load) every kernel before any clock starts
        config = replace(config, epochs=1, max_windows=3, checkpoint_every=0.0)
        out = Path(tempfile.mkdtemp(prefix="ttp-warm-")) / "m.rnnlm"
        short = {s: ids[s][: 20 * config.batch_size * config.bptt] for s in ("train", "valid")}
        train(short["train"], short["valid"], vocab, config, out, checkpoint=False,
              progress=Progress(quiet=True))  # fmt: skip
    curves = {}
    for name, config in runs:
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
        draw(curves, f"{args.corpus}, LSTM 2x200, {args.minutes:g} minutes", args.corpus,
             args.figure)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
