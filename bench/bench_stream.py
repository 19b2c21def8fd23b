"""Streaming benchmark: per-token latency at batch 1, StreamBatch throughput, and
sentence-mode scoring throughput, against PyTorch CPU eager and a plain-NumPy step.

    python bench/bench_stream.py            # under a minute on the 2-core build machine
    python bench/bench_stream.py --quick

Latency: one token fed to a Stream (the whole step: embedding, every layer, decoder,
log-softmax) against PyTorch eager (nn.Embedding + nn.LSTM + nn.Linear + log_softmax
under no_grad, batch 1, the state fed back) and a NumPy step (matrix-vector products
and the cell in float32), for LSTM 2 x 256 with V=65 (character model), 2 x 200 with
V=10000 and 2 x 650 with V=10000 (word models). Before timing, each row is checked
against the float64 oracle over 20 tokens. The floor is the bytes of weights one step
must read, over the read bandwidth of this machine for an array of that size (a parallel
vectorized sum over it: the cache's bandwidth when the weights fit in the cache, as they
do for the two smaller models, memory's when they do not).

StreamBatch: tokens/s when N streams advance together (1, 8, 64, 256), as a share of the
matrix-product floor (a large float32 matrix product's FLOP/s over the FLOPs of one
token's products), and 64 streams against the same 64 fed one by one.
Scoring: Model.score(sentence mode) tokens/s on PTB's validation text (if
../shared/data is there) against PyTorch no_grad on the same padded batches of 64 lines,
and as a share of the same floor.
"""

# ruff: noqa: B023  (the timed closures are called within the loop iteration that makes them)
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba
import numpy as np
from _common import random_params, torch_lstm_lm

from rnnlm_engine import Model, ModelConfig, oracle
from rnnlm_engine.stream import StreamBatch

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ptb"
MODELS = [("char 2x256", 65, 256), ("word 2x200", 10000, 200), ("word 2x650", 10000, 650)]


def params(config: ModelConfig, seed: int) -> dict:
    return random_params(config, np.random.default_rng(seed), 0.1)


def timings(fn, n: int, warm: int = 20) -> np.ndarray:
    # let the thread pools of the row before (torch's OpenMP, OpenBLAS) stop spinning: a
    # spinning pool takes a core from this row's threads, stalling it for a whole
    # scheduler tick (4 ms) now and then
    time.sleep(0.5)
    for _ in range(warm):
        fn()
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


@numba.njit(parallel=True, fastmath=True, nogil=True)
def _read_all(a):
    s = np.float32(0.0)
    for i in numba.prange(a.shape[0]):
        s += a[i]
    return s


def memory_bandwidth(nbytes: int = 512 << 20) -> float:
    """Bytes/s of reading an array of nbytes on every core (best of several passes of a
    vectorized parallel sum; numpy's sum is slower than memory): from memory for a large
    array, from the cache for one that fits, as a model's weights may."""
    a = np.ones(nbytes // 4, np.float32)
    best = min(timings(lambda: _read_all(a), 15, warm=2))
    return a.nbytes / best


class NumpyStep:
    """One LSTM token step in plain NumPy float32 (what a careful NumPy user writes)."""

    def __init__(self, sd: dict, layers: int):
        self.sd, self.L = sd, layers

    def __call__(self, token: int, state):
        sd = self.sd
        x = sd["encoder.weight"][token]
        hs, cs = [], []
        for k in range(self.L):
            h, c = state[0][k], state[1][k]
            g = sd[f"rnn.weight_ih_l{k}"] @ x + sd[f"rnn.bias_ih_l{k}"]
            g += sd[f"rnn.weight_hh_l{k}"] @ h + sd[f"rnn.bias_hh_l{k}"]
            i, f, gg, o = np.split(g, 4)
            c = 1 / (1 + np.exp(-f)) * c + 1 / (1 + np.exp(-i)) * np.tanh(gg)
            h = 1 / (1 + np.exp(-o)) * np.tanh(c)
            hs.append(h)
            cs.append(c)
            x = h
        logits = sd["decoder.weight"] @ x + sd["decoder.bias"]
        m = logits.max()
        return logits - m - np.log(np.exp(logits - m).sum()), (hs, cs)


def torch_step(torch, sd: dict):
    emb, lstm, dec = torch_lstm_lm(torch, sd)
    state = {"h": None}

    def step(token: int):
        with torch.no_grad():
            out, state["h"] = lstm(emb(torch.tensor([[token]])), state["h"])
            return torch.log_softmax(dec(out[0, 0]), -1)

    return step, state


def weight_bytes(config: ModelConfig) -> int:
    """Bytes one streaming step reads: a table row, every layer's matrices, the decoder."""
    G, H, V = config.gate_rows, config.hidden_size, config.vocab_size
    per_layer = (G * H + 2 * G) * 4  # W_hh and the biases
    total = G * 4 + config.num_layers * per_layer + (config.num_layers - 1) * G * H * 4
    return total + (V * H + V) * 4


def latency(args, torch, bandwidth: float) -> None:
    print(f"\nper-token latency, batch 1 (us; {args.tokens} tokens after 20 warm-up)")
    print(
        f"{'model':<12}{'row':<8}{'p50':>9}{'p99':>9}{'x vs engine':>13}{'floor':>8}"
        f"{'p50/floor':>11}"
    )
    rng = np.random.default_rng(0)
    for name, V, H in MODELS:
        config = ModelConfig("lstm", V, H, H, 2)
        sd = params(config, 1)
        model = Model.from_state_dict(sd)
        tokens = rng.integers(0, V, args.tokens + 40)
        # check first: 20 tokens against the oracle
        ref, _ = oracle.model_forward(sd, config, tokens[:20].reshape(-1, 1))
        s = model.stream()
        err = max(np.abs(s.feed([t]) - ref[i, 0]).max() for i, t in enumerate(tokens[:20]))
        np_step = NumpyStep(sd, 2)
        st = ([np.zeros(H, np.float32)] * 2, [np.zeros(H, np.float32)] * 2)
        np_err = 0.0
        for i, t in enumerate(tokens[:20]):
            lp, st = np_step(int(t), st)
            np_err = max(np_err, np.abs(lp - ref[i, 0]).max())
        assert err < 1e-4 and np_err < 1e-4, (name, err, np_err)
        rows = {}
        it = iter(tokens[20:])
        s = model.stream()
        s.feed(0)
        rows["engine"] = timings(lambda: s.feed(int(next(it))), args.tokens - 20)
        it = iter(tokens[20:])
        box = {"st": st}

        def np_call():
            box["lp"], box["st"] = np_step(int(next(it)), box["st"])

        rows["numpy"] = timings(np_call, args.tokens - 20)
        if torch is not None:
            step, _ = torch_step(torch, sd)
            t_lp = [step(int(t)).numpy() for t in tokens[:20]]
            assert max(np.abs(a - ref[i, 0]).max() for i, a in enumerate(t_lp)) < 1e-4
            it = iter(tokens[20:])
            rows["torch"] = timings(lambda: step(int(next(it))), args.tokens - 20)
        # the weights' bytes over the read bandwidth of an array of that size (cache-
        # resident when they fit, as they do after the first tokens)
        floor_us = weight_bytes(config) / memory_bandwidth(weight_bytes(config)) * 1e6
        e50 = np.median(rows["engine"])
        for row, t in rows.items():
            p50, p99 = np.median(t) * 1e6, np.percentile(t, 99) * 1e6
            print(f"{name:<12}{row:<8}{p50:>9.1f}{p99:>9.1f}{np.median(t) / e50:>13.2f}"
                  f"{floor_us:>8.1f}{p50 / floor_us:>11.2f}")  # fmt: skip
    print(
        "floor = the bytes of weights one step reads, over the read bandwidth measured by "
        f"summing an array of that size (from memory, 512 MB: {bandwidth / 1e9:.1f} GB/s)"
    )


def matmul_rate() -> float:
    """FLOP/s of a large float32 matrix product through numpy's BLAS (best of several):
    the rate the matrix-product floor assumes."""
    a = np.random.default_rng(0).random((2048, 2048), np.float32)
    out = np.empty_like(a)
    best = min(timings(lambda: np.matmul(a, a, out=out), 8, warm=2))
    return 2 * a.shape[0] ** 3 / best


def flops_per_token(config: ModelConfig) -> int:
    """The multiply-adds (x2) of one token's matrix products as the engine computes them:
    every layer's recurrent product, the input products of layers after the first (the
    first layer's comes from a table), and the decoder."""
    G, H, V, L = config.gate_rows, config.hidden_size, config.vocab_size, config.num_layers
    return 2 * (L * G * H + (L - 1) * G * H + H * V)


def batch_throughput(args, rate: float) -> None:
    config = ModelConfig("lstm", 10000, 200, 200, 2)
    floor = rate / flops_per_token(config)
    print(
        f"\nStreamBatch: N streams advanced together (LSTM 2 x 200, V=10000); matrix-product"
        f" floor {floor:,.0f} tokens/s ({rate / 1e9:.0f} GFLOP/s over "
        f"{flops_per_token(config) / 1e6:.2f} MFLOP per token)"
    )
    print(
        f"{'streams':>8}{'ms/step':>10}{'tokens/s':>12}{'of floor':>10}"
        f"{'products alone':>16}{'of floor':>10}"
    )
    model = Model.from_state_dict(params(config, 2))
    batch = StreamBatch(model)
    rng = np.random.default_rng(1)
    for n in (1, 8, 64, 256):
        streams = [batch.stream() for _ in range(n)]

        def step():
            batch.step(list(zip(streams, rng.integers(0, 10000, n).tolist(), strict=True)))

        reps = max(5, args.tokens // max(1, n // 8))
        t = np.median(timings(step, reps, warm=3))
        tp = np.median(timings(step_products(config, n), reps, warm=3))
        print(
            f"{n:>8}{t * 1e3:>10.2f}{n / t:>12,.0f}{n / t / floor:>10.0%}"
            f"{tp * 1e3:>13.2f} ms{n / tp / floor:>10.0%}"
        )
    # the same 64 streams, each fed alone, one after another, against a StreamBatch of 64,
    # in alternating blocks: both see the same load on the host (a shared machine's load
    # drifts over seconds, and the two measured apart gave ratios of 1.5 to 2.8)
    alone = [model.stream() for _ in range(64)]
    together = [batch.stream() for _ in range(64)]

    def one_by_one():
        for s, t in zip(alone, rng.integers(0, 10000, 64).tolist(), strict=True):
            s.feed(t)

    def batched():
        batch.step(list(zip(together, rng.integers(0, 10000, 64).tolist(), strict=True)))

    rounds = max(2, args.tokens // 50)
    t_alone, t_batch = (np.median(t) for t in alternating([one_by_one, batched], rounds))
    print(
        f"64 streams, {rounds} alternating blocks of 10 steps each: fed one by one "
        f"{64 / t_alone:,.0f} tokens/s, StreamBatch {64 / t_batch:,.0f} tokens/s: "
        f"{t_alone / t_batch:.2f}x"
    )
    print(
        "products alone = only the step's matrix products for N streams, through numpy's "
        "BLAS\n(the decoder's (N, H) x (H, V) and each layer's (N, H) x (H, 4H)): what a "
        "step would reach with everything else free"
    )


def alternating(fns, rounds: int, block: int = 10) -> list[np.ndarray]:
    """Seconds per call of each of fns: in each round, a block of `block` calls of each in
    turn, each block after a pause (as in timings(): a BLAS pool left spinning by one
    block would take a core from the next) and one untimed call."""
    out = [[] for _ in fns]
    for _ in range(rounds):
        for times, fn in zip(out, fns, strict=True):
            time.sleep(0.25)
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
    return [np.array(t) for t in out]


def step_products(config: ModelConfig, n: int):
    """A function doing only the matrix products of a batched step of n streams (the
    shapes of flops_per_token), on random data: the decoder with the (H, V) layout the
    model uses for few rows."""
    G, H, V, L = config.gate_rows, config.hidden_size, config.vocab_size, config.num_layers
    rng = np.random.default_rng(3)
    x = rng.random((n, H), np.float32)
    w_layers = [rng.random((H, G), np.float32) for _ in range(2 * L - 1)]
    w_dec = rng.random((H, V), np.float32)
    gates = np.empty((n, G), np.float32)
    logits = np.empty((n, V), np.float32)

    def products():
        for w in w_layers:
            np.matmul(x, w, out=gates)
        np.matmul(x, w_dec, out=logits)

    return products


def scoring(args, torch, rate: float) -> None:
    path = DATA / "ptb.valid.txt"
    if not path.is_file():
        print(f"\nscoring: skipped ({path} not found)")
        return
    from rnnlm_engine.vocab import Vocabulary, read_text

    train_text = read_text(DATA / "ptb.train.txt")
    vocab = Vocabulary.build(train_text, "word")
    config = ModelConfig("lstm", len(vocab), 200, 200, 2)
    sd = params(config, 3)
    model = Model.from_state_dict(sd, vocab=vocab)
    lines = read_text(path).split("\n")[:-1]
    if args.quick:
        lines = lines[:500]
    # steady state, as the torch side below: the first call of a new model also loads the
    # kernels, builds the input table and touches fresh work arrays (0.3-1 s here)
    model.score(lines[:200], batch_size=64).run()
    t0 = time.perf_counter()
    total = model.score(lines, batch_size=64).run()
    engine_s = time.perf_counter() - t0
    print(f"\nsentence-mode scoring of PTB valid ({total.lines:,} lines, {total.tokens:,} "
          f"tokens; random weights, perplexity {total.perplexity:,.0f}), batch 64")  # fmt: skip
    floor = rate / flops_per_token(config)
    print(
        f"engine  {engine_s:8.2f} s  {total.tokens / engine_s:>10,.0f} tokens/s   "
        f"({total.tokens / engine_s / floor:.0%} of the matrix-product floor, {floor:,.0f})"
    )
    if torch is None:
        return
    emb, lstm, dec = torch_lstm_lm(torch, sd)
    eos = vocab.eos_id
    encoded = [[vocab.id(w) for w in line.split()] + [eos] for line in lines]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    total_lp = 0.0
    with torch.no_grad():  # warm up, as the engine: one batch of the longest lines
        lstm(emb(torch.zeros((max(len(e) for e in encoded), 64), dtype=torch.long)))
    t0 = time.perf_counter()
    with torch.no_grad():
        for b0 in range(0, len(order), 64):
            group = [encoded[i] for i in order[b0 : b0 + 64]]
            T = max(len(g) for g in group)
            inp = torch.full((T, len(group)), eos, dtype=torch.long)
            tgt = torch.full((T, len(group)), eos, dtype=torch.long)
            mask = torch.zeros((T, len(group)), dtype=torch.bool)
            for b, g in enumerate(group):
                inp[1 : len(g), b] = torch.tensor(g[:-1])
                tgt[: len(g), b] = torch.tensor(g)
                mask[: len(g), b] = True
            out, _ = lstm(emb(inp))
            lp = torch.log_softmax(dec(out), -1).gather(2, tgt[..., None])[..., 0]
            total_lp += float(lp[mask].sum())
    torch_s = time.perf_counter() - t0
    assert abs(total_lp - total.logprob) < 1e-4 * abs(total_lp), (total_lp, total.logprob)
    print(
        f"torch   {torch_s:8.2f} s  {total.tokens / torch_s:>10,.0f} tokens/s   "
        f"(engine {torch_s / engine_s:.2f}x faster; same total log-probability)"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens = 60
    torch = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(numba.get_num_threads())
        except ImportError:
            torch = None
    bw = memory_bandwidth()
    rate = matmul_rate()
    print(
        f"rnnlm-engine streaming benchmark; {numba.get_num_threads()} threads; torch "
        f"{torch.__version__ if torch else '-'}; read bandwidth {bw / 1e9:.1f} GB/s; "
        f"float32 matrix product {rate / 1e9:.0f} GFLOP/s"
    )
    latency(args, torch, bw)
    batch_throughput(args, rate)
    scoring(args, torch, rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
