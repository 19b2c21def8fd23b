"""int8 models against the same float32 models, side by side in one run (issue 13).

    python bench/bench_int8.py                       # speed and memory, about 2 minutes
    python bench/bench_int8.py --quality MODEL.rnnlm # + PTB test perplexity, float32 vs int8

Latency: one token fed to a Stream at batch 1 (the whole step: embedding, every layer,
decoder, log-softmax), the float32 model and its int8 quantization alternating in blocks,
for LSTM 2 x 256 with V=65 (character model), 2 x 200 and 2 x 650 with V=10000 (word
models); each int8 stream is checked first against the float64 oracle of its dequantized
weights. Beside them, the float32 floor that bench_stream prints: the float32 weights'
bytes over the read bandwidth of an array of that size.
StreamBatch: 64 streams of the word 2 x 200 model stepped together.
Scoring: Model.score (sentence mode, batch 64) of PTB's validation text (random weights,
word 2 x 200 with PTB's vocabulary), float32 against int8.
Memory: the model file's size, and the resident memory a process gains by loading the
model and streaming 100 tokens (VmRSS from /proc, each model in a fresh process, less a
process that did the same with a tiny model of the same kind, kernels and all).
Quality (--quality MODEL): test perplexity of PTB's test text at batch 1, the state carried
through (bench/train_ptb.py's measure), for the model and its int8 quantization.
"""

# ruff: noqa: B023  (the timed closures are called within the loop iteration that makes them)
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
from bench_stream import alternating, memory_bandwidth, params, weight_bytes

from rnnlm_engine import Model, ModelConfig, load, oracle
from rnnlm_engine.stream import StreamBatch

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ptb"
MODELS = [("char 2x256", 65, 256), ("word 2x200", 10000, 200), ("word 2x650", 10000, 650)]
TARGETS = {"char 2x256": 1.2, "word 2x200": 1.6, "word 2x650": 2.0}


def latency(args) -> None:
    print(f"\nper-token latency, batch 1 (us, p50 of {args.rounds} x 50 tokens, alternating)")
    print(f"{'model':<12}{'float32':>9}{'int8':>9}{'speed-up':>10}{'target':>8}"
          f"{'f32 floor':>11}{'int8/floor':>12}")  # fmt: skip
    rng = np.random.default_rng(0)
    for name, V, H in MODELS:
        config = ModelConfig("lstm", V, H, H, 2)
        model = Model.from_state_dict(params(config, 1))
        q = model.quantize("int8")
        tokens = rng.integers(0, V, 20)
        ref, _ = oracle.model_forward(q._dequantized_host(), config, tokens.reshape(-1, 1))
        s = q.stream()
        err = max(np.abs(s.feed([int(t)]) - ref[i, 0]).max() for i, t in enumerate(tokens))
        assert err < 1e-4, (name, err)
        f_stream, q_stream = model.stream(), q.stream()
        ids = iter(rng.integers(0, V, 10**6).tolist())
        t_f, t_q = alternating(
            [lambda: f_stream.feed(next(ids)), lambda: q_stream.feed(next(ids))], args.rounds, 50
        )
        floor_us = weight_bytes(config) / memory_bandwidth(weight_bytes(config)) * 1e6
        f50, q50 = np.median(t_f) * 1e6, np.median(t_q) * 1e6
        print(f"{name:<12}{f50:>9.1f}{q50:>9.1f}{f50 / q50:>9.2f}x{TARGETS[name]:>7.1f}x"
              f"{floor_us:>11.1f}{q50 / floor_us:>12.2f}")  # fmt: skip


def batch(args) -> None:
    config = ModelConfig("lstm", 10000, 200, 200, 2)
    model = Model.from_state_dict(params(config, 2))
    q = model.quantize("int8")
    rng = np.random.default_rng(1)
    rows = []
    for m in (model, q):
        b = StreamBatch(m)
        streams = [b.stream() for _ in range(64)]
        rows.append(
            lambda b=b, streams=streams: b.step(
                list(zip(streams, rng.integers(0, 10000, 64).tolist(), strict=True))
            )
        )
    t_f, t_q = (np.median(t) for t in alternating(rows, max(2, args.rounds // 2), 5))
    print(f"\nStreamBatch of 64 streams, word 2x200: float32 {64 / t_f:,.0f} tokens/s (BLAS "
          f"forward), int8 {64 / t_q:,.0f} tokens/s (int8 streaming kernel): "
          f"{t_f / t_q:.2f}x")  # fmt: skip


def scoring(args) -> None:
    path = DATA / "ptb.valid.txt"
    if not path.is_file():
        print(f"\nscoring: skipped ({path} not found)")
        return
    from rnnlm_engine.vocab import Vocabulary, read_text

    vocab = Vocabulary.build(read_text(DATA / "ptb.train.txt"), "word")
    config = ModelConfig("lstm", len(vocab), 200, 200, 2)
    model = Model.from_state_dict(params(config, 3), vocab=vocab)
    q = model.quantize("int8")
    lines = read_text(path).split("\n")[:-1][: args.lines]
    for m in (model, q):  # warm: kernels, the input table, the int8 model's float32 copy
        m.score(lines[:100], batch_size=64).run()
    out = {}

    def run(m, key):
        out[key] = m.score(lines, batch_size=64).run()

    rows = [lambda: run(model, "f"), lambda: run(q, "q")]
    t_f, t_q = (np.median(t) for t in alternating(rows, 3, 1))
    n = out["f"].tokens
    print(f"\nsentence-mode scoring of PTB valid ({out['f'].lines:,} lines, {n:,} tokens), batch "
          f"64: float32 {n / t_f:,.0f} tokens/s, int8 {n / t_q:,.0f} tokens/s: {t_f / t_q:.2f}x "
          f"(target 1.3x); logprob {out['f'].logprob:.1f}, {out['q'].logprob:.1f}")  # fmt: skip


_RSS_CHILD = """
import sys, numpy as np
from rnnlm_engine import load
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
before = rss()
m = load(sys.argv[1])
s = m.stream()
for t in range(100):
    s.feed(t % m.config.vocab_size)
print(rss() - before)
"""


def memory(args) -> None:
    import tempfile

    print("\nmemory: file size, and resident memory gained by loading the model and streaming "
          "100 tokens (less a tiny model's)")  # fmt: skip
    print(f"{'model':<12}{'file f32':>10}{'file int8':>11}{'ratio':>7}"
          f"{'RSS f32':>10}{'RSS int8':>10}{'ratio':>7}  (MB)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tiny = ModelConfig("lstm", 65, 8, 8, 2)
        tiny_model = Model.from_state_dict(params(tiny, 0))
        tiny_model.save(f"{tmp}/tiny.rnnlm")
        tiny_model.quantize().save(f"{tmp}/tinyq.rnnlm")

        def rss(path) -> int:
            done = subprocess.run([sys.executable, "-c", _RSS_CHILD, path], check=True,
                                  capture_output=True, text=True)  # fmt: skip
            return int(done.stdout.split()[-1])

        base_f, base_q = rss(f"{tmp}/tiny.rnnlm"), rss(f"{tmp}/tinyq.rnnlm")
        for name, V, H in MODELS:
            config = ModelConfig("lstm", V, H, H, 2)
            model = Model.from_state_dict(params(config, 1))
            fp, qp = f"{tmp}/f.rnnlm", f"{tmp}/q.rnnlm"
            model.save(fp)
            model.quantize().save(qp)
            fs, qs = Path(fp).stat().st_size, Path(qp).stat().st_size
            fr, qr = rss(fp) - base_f, rss(qp) - base_q
            print(f"{name:<12}{fs / 1e6:>10.2f}{qs / 1e6:>11.2f}{fs / qs:>6.2f}x"
                  f"{fr / 1e6:>10.1f}{qr / 1e6:>10.1f}{fr / qr:>6.2f}x")  # fmt: skip


def quality(args) -> None:
    from rnnlm_engine.train import batchify, evaluate
    from rnnlm_engine.vocab import read_text

    model = load(args.quality)
    if model.vocab is None:
        raise SystemExit(f"{args.quality}: no vocabulary")
    test = model.vocab.encode(read_text(DATA / "ptb.test.txt"))  # as bench/train_ptb.py
    data = batchify(test, 1)
    q = model.quantize("int8")
    ppl = {}
    for label, m in (("float32", model), ("int8", q)):
        t0 = time.perf_counter()
        ppl[label] = math.exp(evaluate(m, data))
        print(f"  {label}: test perplexity {ppl[label]:.3f} ({time.perf_counter() - t0:.0f} s)")
    change = 100 * (ppl["int8"] / ppl["float32"] - 1)
    print(
        f"\nPTB test perplexity, batch 1 ({len(test):,} tokens), {args.quality}: float32 "
        f"{ppl['float32']:.3f}, int8 {ppl['int8']:.3f}: {change:+.3f}% (at most +0.5%)"
    )
    print(json.dumps({"model": args.quality, "test_ppl": ppl}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds (default 12)")
    parser.add_argument("--lines", type=int, default=3370, help="PTB valid lines to score")
    parser.add_argument("--quality", metavar="MODEL", help="a trained PTB model file")
    parser.add_argument("--only", choices=["latency", "batch", "scoring", "memory", "quality"])
    args = parser.parse_args()
    print(f"int8 against float32; {numba.get_num_threads()} threads; read bandwidth "
          f"{memory_bandwidth() / 1e9:.1f} GB/s")  # fmt: skip
    parts = {"latency": latency, "batch": batch, "scoring": scoring, "memory": memory}
    if args.quality:
        parts["quality"] = quality
    for name, part in parts.items():
        if args.only in (None, name):
            part(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
