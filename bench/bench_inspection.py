"""Inspection costs, side by side in one run: a trace against scoring the same tokens,
integrated gradients, the gradient by lag, and the report page (size, and its load time in
headless Chromium), then the diagnosis of the model over its text.

    python bench/bench_inspection.py --model ptb.rnnlm --text ../shared/data/ptb/ptb.test.txt
    python bench/bench_inspection.py                      # a random LSTM 2x200, V=10,000
    python bench/bench_inspection.py ... --figures bench/figures --name ptb

The trace and the score alternate (median of --repeats each) over the text's first 10,000
tokens: Model.score in corpus mode (the state carried through the text, as a trace does),
and Model.trace with top_k=5. The acceptance bounds are those of issue 14: a trace at most
2x the score; integrated gradients (20 steps, one position, 200 tokens of history) under
1 s; the report of 5,000 tokens under 5 MB and open in under 2 s. With --figures, the
gate-saturation and gradient-by-lag figures are written there as SVG.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
from _common import random_params

from rnnlm_engine import Model, ModelConfig, load
from rnnlm_engine.explain import diagnose, format_diagnosis, lag_svg, report_data, saturation_svg
from rnnlm_engine.report import write_html
from rnnlm_engine.vocab import read_text

# at the end of <body>: after the page's own script, force a layout, then write the time
# since navigation start where --dump-dom shows it
_TIMER = (
    "<script>document.body.offsetHeight;"
    "document.body.insertAdjacentHTML('beforeend','<pre id=\"t\">'+performance.now()+'</pre>')"
    "</script></body>"
)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def page_load_ms(path: Path) -> float | None:
    """Milliseconds from navigation start to the page built and laid out, in headless
    Chromium (None without chromium)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        timed = Path(d) / "timed.html"
        timed.write_text(path.read_text().replace("</body>", _TIMER, 1))
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={d}/p",
             "--dump-dom", "--virtual-time-budget=10000", timed.as_uri()],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    found = re.search(r'<pre id="t">([\d.]+)</pre>', proc.stdout)
    return float(found.group(1)) if found else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a model file (default: random)")
    ap.add_argument("--text", type=Path, default=None, help="a text in its vocabulary")
    ap.add_argument("--tokens", type=int, default=10_000)
    ap.add_argument("--report-tokens", type=int, default=5_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--figures", type=Path, default=None, help="write the SVG figures here")
    ap.add_argument("--name", default="model", help="the figures' file name prefix")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    if args.model is None:
        config = ModelConfig("lstm", 10_000, 200, 200, 2)
        model = Model.from_state_dict(random_params(config, rng, 0.1), cell="lstm")
        ids = rng.integers(0, 10_000, args.tokens)
        lines = None
        label = "random LSTM 2x200, V=10,000"
    else:
        model = load(args.model)
        ids = model.vocab.encode(read_text(args.text))[: args.tokens]
        # the same tokens as text lines, for Model.score (corpus mode carries the state)
        text = model.vocab.decode(ids)
        lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
        label = f"{args.model.name} on {args.text.name}"
    c = model.config
    print(
        f"{label}: {c.cell} {c.num_layers}x{c.hidden_size}, V={c.vocab_size:,}; "
        f"{len(ids):,} tokens; {numba.get_num_threads()} threads; load average "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )

    def score():
        if lines is None:
            model.token_logprobs(ids[:-1, None], ids[1:, None])
        else:
            list(model.score(lines, mode="corpus"))

    def trace():
        model.trace(ids, top_k=5)

    score(), trace()  # compile and warm up
    t_score, t_trace = [], []
    for _ in range(args.repeats):  # alternate, so that drifts in load hit both
        t_score.append(median_time(score, 1))
        t_trace.append(median_time(trace, 1))
    s, t = statistics.median(t_score), statistics.median(t_trace)
    what = "Model.score (corpus)" if lines is not None else "token_logprobs"
    print(f"\n{'pass':<34} {'seconds':>8} {'ratio':>7}  bound")
    print(f"{what + ' of the tokens':<34} {s:>8.3f} {1.0:>7.2f}")
    print(f"{'Model.trace (top_k=5)':<34} {t:>8.3f} {t / s:>7.2f}  <= 2.00")

    long = ids[:201]
    model.attribution(long, 200, "integrated_gradients", 20)
    ig = median_time(lambda: model.attribution(long, 200, "integrated_gradients", 20), 3)
    print(f"{'integrated gradients, 20 steps, 200':<34} {ig:>8.3f} {'':>7}  < 1 s")
    ixg = median_time(lambda: model.attribution(long, 200), 3)
    print(f"{'input x gradient, 200 tokens':<34} {ixg:>8.3f}")
    lag = median_time(lambda: model.gradient_by_lag(ids, 50, 500), 1)
    print(f"{'gradient_by_lag, 51 lags x 500 pos.':<34} {lag:>8.3f}")

    n = min(args.report_tokens, len(ids))
    with tempfile.TemporaryDirectory() as d:
        page = Path(d) / "report.html"
        t0 = time.perf_counter()
        write_html(page, report_data(model, ids[:n], label))
        built = time.perf_counter() - t0
        size = page.stat().st_size
        load_ms = page_load_ms(page)
    print(f"{f'report of {n:,} tokens: build':<34} {built:>8.3f}")
    print(f"{'report: size (MB)':<34} {size / 1e6:>8.2f} {'':>7}  < 5 MB")
    shown = "no chromium" if load_ms is None else f"{load_ms / 1000:>8.3f}"
    print(f"{'report: open in Chromium (s)':<34} {shown} {'':>7}  < 2 s")

    if model.vocab is not None:
        print()
        d = diagnose(model, ids, 100, 500)
        print(format_diagnosis(d))
        if args.figures is not None:
            args.figures.mkdir(parents=True, exist_ok=True)
            for kind, svg in (("saturation", saturation_svg(d)), ("lag", lag_svg(d))):
                if svg is not None:
                    (args.figures / f"{args.name}_{kind}.svg").write_text(svg)
                    print(f"wrote {args.figures / f'{args.name}_{kind}.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
