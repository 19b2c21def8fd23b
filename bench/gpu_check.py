"""The GPU check of the CUDA backend: tests on the device, then timings against cuDNN.

On a machine with an NVIDIA GPU (offline is fine):

    pip install --no-deps --no-build-isolation -e .
    python bench/gpu_check.py

1. runs the CUDA tests (tests/test_cuda_*.py) on the device, not in the simulator;
2. times, side by side in this one process, the engine's cuda backend against PyTorch's
   cuDNN path: training tokens/s of an LSTM 2x650 (V=10000, batch 64, BPTT 35, SGD with
   clipping), sentence scoring tokens/s at batch 256, and per-token streaming latency at
   batch 1 and 64 (state fed back, the next-token log-probabilities copied to the host
   each token by both, as a server would);
3. prints one table. The whole run is kept under 8 minutes (each timing is bounded).

``--quick`` runs tiny sizes, for checking the script itself (in numba's simulator with
NUMBA_ENABLE_CUDASIM=1 and PyTorch on the CPU where it has no GPU).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import random_params, restore_row_stack, torch_lstm_lm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_tests(quick: bool, log: str | None) -> tuple[bool, str]:
    """pytest over the CUDA tests, on the device (the conftest leaves the simulator off
    when RNNLM_TEST_CUDA_DEVICE=1). All of them run (no -x): a GPU lease is short, so one
    run should show every failure; `log` gets pytest's whole output."""
    env = dict(os.environ)
    if not quick:
        env["RNNLM_TEST_CUDA_DEVICE"] = "1"
        env.pop("NUMBA_ENABLE_CUDASIM", None)
        env.setdefault("RNNLM_HYPOTHESIS_PROFILE", "ci")
    tests = sorted(str(p) for p in (ROOT / "tests").glob("test_cuda_*.py"))
    # bench/compat/numpy_row_stack.py: main's np.row_stack shim, in the test process too
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench" / "compat"),
                                                      env.get("PYTHONPATH")]))  # fmt: skip
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=8"]
    cmd += ["-p", "numpy_row_stack"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [*cmd, *tests],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else ""
        if log:
            Path(log).write_text(out)
        print(out[-3000:])
        return False, "timed out after 300 s"
    if log:
        Path(log).write_text(proc.stdout + proc.stderr)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    summary = tail[-1] if tail else "(no output)"
    print("\n".join(tail[-40:]) if proc.returncode else "\n".join(tail[-12:]), flush=True)
    return proc.returncode == 0, f"{summary} ({time.perf_counter() - t0:.0f} s)"


def lstm_params(V: int, E: int, H: int, L: int, seed: int) -> dict[str, np.ndarray]:
    from rnnlm_engine import ModelConfig

    return random_params(ModelConfig("lstm", V, E, H, L), np.random.default_rng(seed), 0.1)


class TorchLM:
    """PyTorch's word_language_model shape on the GPU: Embedding, cuDNN LSTM, Linear."""

    def __init__(self, torch, sd: dict, device: str):
        self.emb, self.rnn, self.dec = torch_lstm_lm(torch, sd, device)
        self.params = [*self.emb.parameters(), *self.rnn.parameters(), *self.dec.parameters()]

    def logits(self, ids, state):
        out, state = self.rnn(self.emb(ids), state)
        return self.dec(out), state


def sync(torch, device):
    from numba import cuda

    if device == "cuda":
        torch.cuda.synchronize()
    cuda.synchronize()


def timed(fn, seconds: float, min_reps: int = 3) -> tuple[float, int]:
    """Median seconds per call of fn (which synchronizes), over about `seconds`."""
    fn()  # warm-up: compilation, cuDNN plans
    times = []
    t_end = time.perf_counter() + seconds
    while len(times) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), len(times)


def bench_training(torch, device, sizes, seconds):
    from rnnlm_engine import Model
    from rnnlm_engine.optim import SGD, clip_grad_norm

    V, E, H, L, B, T = sizes["V"], sizes["H"], sizes["H"], 2, sizes["train_batch"], sizes["bptt"]
    sd = lstm_params(V, E, H, L, 1)
    model = Model.from_state_dict(sd, backend="cuda")
    k = model._k
    opt = SGD(k, 1.0)
    rng = np.random.default_rng(2)
    data = rng.integers(0, V, (T + 1, B))
    state = [None]

    def engine_window():
        loss, grads, state[0] = model.loss_and_grad(data[:-1], data[1:], state[0])
        clip_grad_norm(k, grads, 0.25)
        model._apply_update(lambda p, g=grads: opt.step(p, g))
        sync(torch, device)

    tlm = TorchLM(torch, sd, device)
    topt = torch.optim.SGD(tlm.params, lr=1.0)
    inp = torch.from_numpy(data[:-1]).to(device)
    tgt = torch.from_numpy(data[1:]).to(device).reshape(-1)
    tstate = [None]

    def torch_window():
        topt.zero_grad()
        if tstate[0] is not None:
            tstate[0] = tuple(s.detach() for s in tstate[0])
        logits, tstate[0] = tlm.logits(inp, tstate[0])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tlm.params, 0.25)
        topt.step()
        sync(torch, device)

    te, _ = timed(engine_window, seconds)
    tt, _ = timed(torch_window, seconds)
    return [("train tokens/s", f"LSTM {L}x{H}, V={V}, B={B}, BPTT {T}", B * T / te, B * T / tt)]


def bench_scoring(torch, device, sizes, seconds):
    from rnnlm_engine import Model

    V, H, B, T = sizes["V"], sizes["H"], sizes["score_batch"], sizes["score_len"]
    sd = lstm_params(V, H, H, 2, 3)
    model = Model.from_state_dict(sd, backend="cuda")
    rng = np.random.default_rng(4)
    data = rng.integers(0, V, (T + 1, B))

    def engine():
        model.token_logprobs(data[:-1], data[1:])  # returns host scores: synchronous

    tlm = TorchLM(torch, sd, device)
    inp = torch.from_numpy(data[:-1]).to(device)
    tgt = torch.from_numpy(data[1:]).to(device)

    def torch_score():
        with torch.no_grad():
            logits, _ = tlm.logits(inp, None)
            lp = torch.log_softmax(logits, -1).gather(2, tgt[..., None])[..., 0]
            lp.cpu()

    # the same math: the engine's scores against cuDNN's on these weights and tokens
    ours, _ = model.token_logprobs(data[:-1], data[1:])
    with torch.no_grad():
        logits, _ = tlm.logits(inp, None)
        theirs = torch.log_softmax(logits, -1).gather(2, tgt[..., None])[..., 0].cpu().numpy()
    diff = float(np.max(np.abs(ours - theirs)))
    print(f"  scores against cuDNN's: max |difference| {diff:.2e} (|log p| ~ {np.log(V):.1f})")

    te, _ = timed(engine, seconds)
    tt, _ = timed(torch_score, seconds)
    return [("score tokens/s", f"LSTM 2x{H}, V={V}, batch {B}, {T} tokens", B * T / te, B * T / tt)]


def _stream_row(torch, device, model, tlm, tokens: list[int], seconds: float, blas_from=None):
    """(engine, torch) seconds per step of len(tokens) streams, one token each; blas_from
    as StreamBatch's (None: its default, the streaming kernel on cuda)."""
    from rnnlm_engine.stream import StreamBatch

    if len(tokens) == 1:
        s = model.stream()

        def engine():
            s.feed(tokens)  # returns the (V,) log-probabilities on the host
    else:
        batch = StreamBatch(model, blas_from=blas_from)
        pairs = list(zip([batch.stream() for _ in tokens], tokens, strict=True))

        def engine():
            batch.step(pairs)  # each stream's log-probabilities on the host

    inp = torch.tensor([tokens], device=device)
    state = [None]

    def torch_step():
        with torch.no_grad():
            logits, state[0] = tlm.logits(inp, state[0])
            torch.log_softmax(logits[0], -1).cpu()

    return timed(engine, seconds)[0], timed(torch_step, seconds)[0]


def bench_streaming(torch, device, sizes, seconds):
    import numba

    from rnnlm_engine import Model

    V, H = sizes["V"], sizes["H"]
    sd = lstm_params(V, H, H, 2, 5)
    model = Model.from_state_dict(sd, backend="cuda")
    tlm = TorchLM(torch, sd, device)
    rows = []
    rng = np.random.default_rng(6)
    if not numba.config.ENABLE_CUDASIM:  # the streaming kernel's block size, for tuning
        from rnnlm_engine.kernels.cuda import _stream

        default = _stream.DEFAULT_THREADS
        try:
            for threads in (128, 256, 512):
                _stream.DEFAULT_THREADS = threads
                s = model.stream()
                try:
                    t, _ = timed(lambda s=s: s.feed([1]), min(2.0, seconds))
                except RuntimeError as e:  # a block this size does not fit (registers)
                    print(f"  streaming kernel, {threads} threads a block: {e}")
                    continue
                print(f"  streaming kernel, {threads} threads a block: {t * 1e6:.1f} us/token")
        finally:
            _stream.DEFAULT_THREADS = default
    for n in (1, sizes["stream_batch"]):
        tokens = [int(t) for t in rng.integers(0, V, n)]
        te, tt = _stream_row(torch, device, model, tlm, tokens, seconds)
        name = f"stream us/token, batch {n}"
        rows.append((name, f"LSTM 2x{H}, V={V}", te * 1e6 / n, tt * 1e6 / n))
    # the other StreamBatch path: the batched forward pass (matrix-product kernels), which
    # the cpu backend takes from 32 streams; on cuda the default is the streaming kernel
    n = sizes["stream_batch"]
    tokens = [int(t) for t in rng.integers(0, V, n)]
    te, tt = _stream_row(torch, device, model, tlm, tokens, seconds, blas_from=2)
    name = f"stream us/token, batch {n}"
    rows.append((name, f"LSTM 2x{H}, V={V}, batched forward", te * 1e6 / n, tt * 1e6 / n))
    # the int8 model (issue 13): the same kernel on int8 weights, a quarter of the bytes
    quantized = model.quantize("int8")
    for n in (1, sizes["stream_batch"]):
        tokens = [int(t) for t in rng.integers(0, V, n)]
        te, tt = _stream_row(torch, device, quantized, tlm, tokens, seconds)
        name = f"int8 stream us/tok, b {n}"
        rows.append((name, f"LSTM 2x{H}, V={V}, int8 weights", te * 1e6 / n, tt * 1e6 / n))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (check the script)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--seconds", type=float, default=None, help="timing per measurement")
    ap.add_argument("--test-log", default=None, help="write pytest's whole output here")
    ap.add_argument("--only", choices=("training", "scoring", "streaming"), help="one timing")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    restore_row_stack()

    import numba
    import torch
    from numba import cuda

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (torch on the CPU)"
    numba_gpu = "simulator" if numba.config.ENABLE_CUDASIM else cuda.get_current_device().name
    if isinstance(numba_gpu, bytes):
        numba_gpu = numba_gpu.decode()
    cudnn = torch.backends.cudnn.version()
    print(f"GPU: {gpu}; numba.cuda device: {numba_gpu}; numba {numba.__version__}; "
          f"torch {torch.__version__} (cuDNN {cudnn})", flush=True)  # fmt: skip

    tests = ("skipped", "")
    if not args.skip_tests:
        ok, summary = run_tests(args.quick, args.test_log)
        tests = ("passed" if ok else "FAILED", summary)
        print(f"CUDA tests on the device: {tests[0]}: {summary}", flush=True)

    if args.quick:
        sizes = dict(V=50, H=16, train_batch=4, bptt=5, score_batch=8, score_len=6, stream_batch=4)
        seconds = args.seconds or 0.2
    else:
        sizes = dict(
            V=10000, H=650, train_batch=64, bptt=35, score_batch=256, score_len=35, stream_batch=64
        )
        seconds = args.seconds or 10.0
    rows = []
    if numba.config.ENABLE_CUDASIM:  # checking the script: simulator-sized launches
        import rnnlm_engine.kernels.cuda as kc

        kc.small_launches().__enter__()
    parts = (bench_training, bench_scoring, bench_streaming)
    for part in [p for p in parts if args.only in (None, p.__name__.removeprefix("bench_"))]:
        try:
            rows += part(torch, device, sizes, seconds)
        except Exception as e:  # report and go on: one failure must not hide the others
            rows.append((part.__name__, f"FAILED: {type(e).__name__}: {e}", float("nan"), 0.0))
        print(f"  {part.__name__} done at {time.perf_counter() - t_start:.0f} s", flush=True)

    print(f"\nrnnlm-engine cuda backend against PyTorch {device} (cuDNN) on {gpu}")
    print(f"{'measure':<26}{'setup':<40}{'engine':>12}{'torch':>12}{'engine/torch':>14}")
    for name, setup, engine, theirs in rows:
        ratio = engine / theirs if theirs else float("nan")
        print(f"{name:<26}{setup:<40}{engine:>12,.1f}{theirs:>12,.1f}{ratio:>14.2f}")
    print("(tokens/s: higher is better; us/token: lower is better)")
    print(f"CUDA tests: {tests[0]} {tests[1]}; total {time.perf_counter() - t_start:.0f} s")
    return 0 if tests[0] != "FAILED" else 1


if __name__ == "__main__":
    sys.exit(main())
