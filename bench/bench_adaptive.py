"""The adaptive softmax against the full softmax at a large vocabulary, side by side in one
run: training windows (loss, gradients and an SGD update), sentence scoring, a streamed
token, and PyTorch's own training step with nn.AdaptiveLogSoftmaxWithLoss on the same model
and data.

    python bench/bench_adaptive.py                      # WikiText-2 train, V=33,278
    python bench/bench_adaptive.py --windows 20 --no-torch

The model is issue 12's: LSTM 2 x 200 (embedding 200), batch 20, BPTT 35, cutoffs 2000,
10000 (div_value 4), on WikiText-2's word vocabulary (33,278 tokens, frequency ranks).
Both engine models start from the same weights except the output layer. Windows
alternate between the models, so that drifts in the machine's load hit both; the figures
are medians over the windows after one warm-up window each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np
from _common import random_params

from rnnlm_engine import Model, ModelConfig
from rnnlm_engine.optim import clip_grad_norm, make_optimizer
from rnnlm_engine.vocab import Vocabulary, read_text

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wikitext-2"


def engine_step(model, opt, inputs, targets, state):
    loss, grads, state = model.loss_and_grad(inputs, targets, state, row_sparse=True)
    clip_grad_norm(model._k, grads, 0.25)
    model._apply_update(lambda p, g=grads: opt.step(p, g))
    return state


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--windows", type=int, default=30)
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--stream-tokens", type=int, default=500)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)

    text = read_text(args.data / "train.txt")
    vocab = Vocabulary.build(text, "word")
    ids = vocab.encode(text)
    V, B, T = len(vocab), 20, 35
    full = ModelConfig("lstm", V, 200, 200, 2)
    adaptive = ModelConfig("lstm", V, 200, 200, 2, cutoffs=(2000, 10000))
    rng = np.random.default_rng(0)
    sd_full = random_params(full, rng, 0.1)
    sd_adaptive = {n: a for n, a in sd_full.items() if not n.startswith("decoder.")}
    sd_adaptive |= {n: a for n, a in random_params(adaptive, rng, 0.1).items()
                    if n.startswith("decoder.")}  # fmt: skip
    models = {
        "full softmax": Model.from_state_dict(sd_full, cell="lstm", vocab=vocab),
        "adaptive (2000, 10000)": Model.from_state_dict(sd_adaptive, cell="lstm", vocab=vocab),
    }
    print(
        f"WikiText-2 train: {len(ids):,} tokens, V={V:,}; LSTM 2x200, batch {B}, BPTT {T}; "
        f"{numba.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    n = len(ids) // B
    data = ids[: n * B].reshape(B, n).T  # word_language_model's batchify: columns
    opts = {name: make_optimizer("sgd", m._k, 20.0, m.config.parameter_shapes())
            for name, m in models.items()}  # fmt: skip
    states = dict.fromkeys(models)
    times: dict[str, list[float]] = {name: [] for name in models}
    for w in range(args.windows + 1):
        i = w * T
        inputs, targets = data[i : i + T], data[i + 1 : i + 1 + T]
        for name, m in models.items():
            t0 = time.perf_counter()
            states[name] = engine_step(m, opts[name], inputs, targets, states[name])
            if w > 0:  # the first window compiles and warms up
                times[name].append(time.perf_counter() - t0)

    torch_rate = None
    if not args.no_torch:
        torch_rate = torch_tokens_per_s(sd_adaptive, adaptive, data, args.windows, B, T)

    lines = text.split("\n")
    lines = [ln for ln in lines if ln.strip()][: args.sentences]
    score_s: dict[str, list[float]] = {name: [] for name in models}
    for m in models.values():
        list(m.score(lines[:50]))  # warm up
    for _ in range(3):
        for name, m in models.items():
            t0 = time.perf_counter()
            scored = m.score(lines)
            list(scored)
            score_s[name].append(time.perf_counter() - t0)
    tokens = scored.total.tokens

    print(f"\n{'':<24} {'train tokens/s':>15} {'ratio':>6} {'score tokens/s':>15} {'ratio':>6}")
    base_t = base_s = None
    for name in models:
        rate = B * T / statistics.median(times[name])
        srate = tokens / statistics.median(score_s[name])
        base_t, base_s = base_t or rate, base_s or srate
        ratios = f"{rate / base_t:>6.2f} {srate:>15,.0f} {srate / base_s:>6.2f}"
        print(f"{name:<24} {rate:>15,.0f} {ratios}")
    if torch_rate is not None:
        print(f"{'torch adaptive (same)':<24} {torch_rate:>15,.0f} {torch_rate / base_t:>6.2f}")

    # a streamed token, alternating between the models: feed (the whole distribution
    # comes back), and push + logprob of the token that follows (what scoring a stream
    # asks: the adaptive softmax computes its head and at most that token's cluster)
    streams = {name: m.stream() for name, m in models.items()}
    for s in streams.values():
        s.feed(int(ids[0]))
    ways = {
        "feed": lambda s, j: s.feed(int(ids[j])),
        "push + logprob": lambda s, j: (s.push(int(ids[j])), s.logprob(int(ids[j + 1]))),
    }
    step_s: dict[tuple, list[float]] = {}
    for j in range(1, args.stream_tokens + 1):
        for way, run in ways.items():
            for name, s in streams.items():
                t0 = time.perf_counter()
                run(s, j)
                step_s.setdefault((way, name), []).append(time.perf_counter() - t0)
    print(f"\n{'a streamed token':<40} {'us':>8} {'speed':>6}")
    base = 1e6 * statistics.median(step_s[("feed", "full softmax")])
    for (way, name), times_ in step_s.items():
        us = 1e6 * statistics.median(times_)
        print(f"{way + ', ' + name:<40} {us:>8,.0f} {base / us:>6.2f}")
    return 0


def torch_tokens_per_s(sd, config, data, windows, B, T) -> float:
    """PyTorch's training step on the same adaptive model: tokens per second (median)."""
    import torch

    torch.set_num_threads(numba.get_num_threads())
    nn = torch.nn
    enc = nn.Embedding(config.vocab_size, 200)
    rnn = nn.LSTM(200, 200, 2)
    dec = nn.AdaptiveLogSoftmaxWithLoss(200, config.vocab_size, list(config.cutoffs))
    modules = {"encoder": enc, "rnn": rnn, "decoder": dec}
    with torch.no_grad():
        for name, value in sd.items():
            owner, rest = name.split(".", 1)
            modules[owner].get_parameter(rest).copy_(torch.from_numpy(value))
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=20.0)
    hidden = None
    times = []
    for w in range(windows + 1):
        i = w * T
        x = torch.from_numpy(data[i : i + T])
        y = torch.from_numpy(data[i + 1 : i + 1 + T]).reshape(-1)
        t0 = time.perf_counter()
        out, hidden = rnn(enc(x), hidden)
        hidden = tuple(h.detach() for h in hidden)
        loss = dec(out.reshape(-1, 200), y).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        opt.step()
        if w > 0:
            times.append(time.perf_counter() - t0)
    return B * T / statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
