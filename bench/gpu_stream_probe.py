"""Where the CUDA streaming step's time goes, on a GPU: one short run, one table.

    pip install --no-deps --no-build-isolation -e .
    python bench/gpu_stream_probe.py

bench/gpu_check.py gives the per-token latency of ``Stream.feed`` on the cuda backend; this
script splits it for LSTM 2x650, V=10000, batch 1:

1. the host-side pieces of one feed (state allocations, the token's copy to the device,
   the launch call, the wait for the kernel, the log-probabilities' copy back);
2. the kernel alone (CUDA events) over launch shapes (threads a block x blocks);
3. the cost of one grid-wide barrier (a cooperative kernel doing only k barriers);
4. PyTorch's cuDNN step at batch 1, for scale.

``--quick`` runs tiny sizes (checks the script; in numba's simulator with
NUMBA_ENABLE_CUDASIM=1 the timings mean nothing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _common import random_params, restore_row_stack, torch_lstm_lm
from gpu_check import timed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def median_us(fn, seconds: float) -> float:
    return timed(fn, seconds, min_reps=5)[0] * 1e6


def event_us(cuda, fn, reps: int) -> float:
    """Median device time of fn's launches, by CUDA events (fn launches, no sync)."""
    fn()
    cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = cuda.event(), cuda.event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)  # ms -> us
    return float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    restore_row_stack()
    import numba
    from numba import cuda

    from rnnlm_engine import Model, ModelConfig, streaming

    sim = bool(numba.config.ENABLE_CUDASIM)
    V, H, L = (50, 16, 2) if args.quick else (10000, 650, 2)
    seconds, reps = (0.05, 3) if args.quick else (1.5, 50)
    sd = random_params(ModelConfig("lstm", V, H, H, L), np.random.default_rng(5), 0.1)
    model = Model.from_state_dict(sd, backend="cuda")
    k = model._k
    name = "simulator" if sim else cuda.get_current_device().name
    print(f"device: {name!s}; LSTM {L}x{H}, V={V}, batch 1", flush=True)

    s = model.stream()
    rows = [("Stream.feed([1]), whole", median_us(lambda: s.feed([1]), seconds))]

    # the pieces of Model._step, in its order
    cell, residual, weights = streaming._build_stream_args(model)
    c0, gx, gh, logits = streaming._build_stream_scratch(model, 1)
    h = k.to_device(np.zeros((L, 1, H), np.float32))
    shape = (L, 1, H)
    out = k.empty((1, V), np.float32)
    ids = np.ones((1, 1), np.int64)
    ids_d = k.to_device(ids)
    h_out, c_out = k.empty(shape, np.float32), k.empty(shape, np.float32)

    def launch(threads=None, blocks=None):
        k.stream_step(
            cell, residual, ids_d, *weights, h, c0, h_out, c_out, gx, gh, logits, out,
            threads=threads, blocks=blocks,
        )  # fmt: skip

    rows.append(("3 state/output allocations", median_us(
        lambda: [k.empty(shape, np.float32), k.empty(shape, np.float32),
                 k.empty((1, V), np.float32)], seconds)))  # fmt: skip
    rows.append(("token to the device", median_us(lambda: k.to_device(ids), seconds)))
    rows.append(("launch call, no wait", median_us(launch, seconds)))
    cuda.synchronize()

    def launch_and_wait():
        launch()
        cuda.synchronize()

    rows.append(("launch and wait", median_us(launch_and_wait, seconds)))
    rows.append(("log-probs to the host", median_us(lambda: k.to_host(out), seconds)))
    rows.append(("kernel alone (events), default shape", event_us(cuda, launch, reps)))
    for name, us in rows:
        print(f"  {name:<40}{us:>10.1f} us", flush=True)

    print("kernel alone (events, us) by launch shape:", flush=True)
    sms = 1 if sim else cuda.get_current_device().MULTIPROCESSOR_COUNT
    shapes = [(32, 1)] if sim else [
        (t, b) for t in (64, 128, 256) for b in (1, 8, 33, sms // 2, sms, 2 * sms)
    ]  # fmt: skip
    for threads, blocks in shapes:
        try:
            us = event_us(cuda, lambda t=threads, b=blocks: launch(t, b), reps)
            print(f"  {threads:>4} threads x {blocks:>4} blocks: {us:>9.1f}", flush=True)
        except Exception as e:  # a shape that does not fit: report it, go on
            print(f"  {threads:>4} threads x {blocks:>4} blocks: {type(e).__name__}: {e}")

    @cuda.jit
    def barriers(x, n):
        g = cuda.cg.this_grid()
        for _ in range(n):
            g.sync()
        if cuda.grid(1) == 0:
            x[0] = n

    x = cuda.device_array(1, np.float32)
    print("grid barriers alone (events):", "(not in the simulator)" if sim else "", flush=True)
    for threads, blocks in [] if sim else [(256, sms), (128, 2 * sms), (256, 8)]:
        t0 = event_us(cuda, lambda t=threads, b=blocks: barriers[b, t](x, 0), reps)
        t100 = event_us(cuda, lambda t=threads, b=blocks: barriers[b, t](x, 100), reps)
        print(f"  {threads} x {blocks}: empty launch {t0:.1f} us, "
              f"{(t100 - t0) / 100:.2f} us a barrier", flush=True)  # fmt: skip

    # a StreamBatch step's host side at 64 streams: gathering the states, handing them out
    from rnnlm_engine.stream import StreamBatch

    n = 4 if sim else 64
    batch = StreamBatch(model)
    streams = [batch.stream() for _ in range(n)]
    pairs = [(s, 1) for s in streams]
    states = [s._h for s in streams]
    gathered = k.gather_streams(states)
    print(f"StreamBatch of {n} (LSTM {L}x{H}, V={V}), us:", flush=True)
    for name, fn in (
        ("the whole step, streaming kernel", lambda: batch.step(pairs)),
        ("the whole step, batched forward",
         lambda: StreamBatch(model, blas_from=2).step(pairs)),
        ("gather_streams of h (one of h, c)", lambda: k.gather_streams(states)),
        ("split_streams of h (one of h, c)", lambda: k.split_streams(gathered)),
    ):  # fmt: skip
        print(f"  {name:<40}{median_us(fn, seconds):>10.1f}", flush=True)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    emb, rnn, dec = torch_lstm_lm(torch, sd, device)
    inp = torch.tensor([[1]], device=device)
    state = [None]

    def torch_step():
        with torch.no_grad():
            out_, state[0] = rnn(emb(inp), state[0])
            torch.log_softmax(dec(out_)[0], -1).cpu()

    print(f"torch {device} step, batch 1, to the host: {median_us(torch_step, seconds):.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
