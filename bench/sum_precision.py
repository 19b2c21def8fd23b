"""Float32 sums over the vocabulary and over the T*B rows, against float64 (issue 18, item 9).

Run it from the repository root (20 s on the 2-core build machine, 1.4 GB of memory; 40 s
with --time-against):

    python bench/sum_precision.py
    python bench/sum_precision.py --cuda     # also the CUDA softmax kernels: on a GPU, or
                                             # in numba's simulator (NUMBA_ENABLE_CUDASIM=1)

It calls the engine's real CPU kernels on float32 inputs and compares what they return
with float64 NumPy on the very same float32 inputs, so every error shown is the kernels'
own (the exp polynomial, the float32 sums, the output's rounding), not the inputs'.

1. The log-normaliser, a sum of V exponentials per row: --rows rows (256, not T*B: the
   error is per row, and 256 rows of V=100,000 are already 100 MB) of logits drawn
   N(0, sigma^2) for sigma 2 and 5, at V=10,000 and 100,000, bias 0 (the kernels add the
   bias in float32; 0 keeps the inputs exact). Each softmax kernel of the CPU backend:
   log_softmax (Model.forward), xent_forward (scoring few rows), xent_forward_backward
   (the training loss), decode_xent (the scoring pass, vocabulary-blocked; given the
   logits exactly, as the product of an identity with them) and the streaming step's
   softmax (_stream._log_softmax_serial, which stream_step runs). The error is max |got -
   want| in nats over the kernel's output; "floor" is the same for the float64 answer
   rounded to float32, the error any float32 output has.
2. The bias gradients, sums over N = T*B = --grad-rows rows (20,000):
   - the decoder bias, summed by xent_forward_backward over the rows of scale * (softmax
     - onehot), scale = 1/N, targets drawn from a Zipf law (p(rank r) ~ 1/r), logits
     N(0, 2^2). At V=10,000 the kernel runs on the whole (N, V) logits (800 MB). At
     V=100,000 that would be 8 GB, so it runs on 4,095 of the columns (the 2,048 most
     frequent words, which take nearly all the targets, and 2,047 others) plus one column
     holding the log-sum-exp of the other 95,905 (estimated from 8,192 of them): each
     kept column then sees its V=100,000 probabilities, and its sum over the N rows is
     exactly the kernel's work at that size. The extra column is not compared.
   - the layer biases (rnn.bias_ih_l* in the model, rnn.bias_hh_l* in the cells' backward):
     column_sums over (N, G) gate gradients, G=800, drawn N(0, 1) (mixed signs).
   Error of a column: |got - want| / sum_n |term_n| (the size the rounding scales with,
   also where the terms cancel), the max over the columns, also in units of u = 2^-24;
   and |got - want| in float32 ulps of the exact sum, the median over the columns (the
   max is meaningless where a column's terms cancel to near 0). A float32 sum rounded
   once from the exact value is within 0.5 ulp and, for same-sign terms, 1 u.
3. With --cuda: the CUDA backend's log_softmax and xent_forward on --cuda-rows rows at
   V=100,000 with 256 threads per row (their default block), as part 1. (Its bias
   gradients are float64 column sums already.) The simulator runs the kernels' float32
   sums in the GPU's order, with exps from the host's libm instead of the GPU's. The row
   "exact sum, f32 last steps" is xent_forward's last steps in float32 (m + log s, then
   minus the target's logit) from the exact sum: the part of the error not due to the sum.
4. With --time-against DIR: the speed of these CPU kernels against those of another
   kernels/cpu folder, side by side in this process (median per call over alternating
   rounds), after checking that both give the same results to 1e-5.
With --kernels DIR, parts 1 and 2 measure the kernels of another kernels/cpu folder, such
as those before the float64 sums, taken from git:
    mkdir -p /tmp/k && git archive 4f4055e kernels/cpu | tar -x -C /tmp/k
    python bench/sum_precision.py --kernels /tmp/k/kernels/cpu
    python bench/sum_precision.py --time-against /tmp/k/kernels/cpu
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import rnnlm_engine.kernels.cpu as kc

U32 = 2.0**-24  # float32 unit roundoff


def lse64(x):
    """(R,) float64 log-sum-exp of each row of x (float64)."""
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


def floor_error(want):
    """max |float32(want) - want|: the error of the exact answer stored as float32."""
    return float(np.max(np.abs(want.astype(np.float32).astype(np.float64) - want)))


def scratch():
    """A work(name, shape) function like the model's per-thread workspace."""
    arrays = {}

    def work(name, shape):
        if name not in arrays or arrays[name].shape != shape:
            arrays[name] = np.empty(shape, np.float32)
        return arrays[name]

    return work


# ---------------------------------------------------------------------------- 1. softmax


def softmax_rows(rng, R, V, sigma):
    logits = rng.standard_normal((R, V), dtype=np.float32) * np.float32(sigma)
    targets = rng.integers(0, V, R)
    return logits, targets


def cpu_softmax_errors(k, logits, targets):
    """[(kernel, max |err| nats, floor nats)] for every softmax kernel of the CPU kernels
    package k on these rows."""
    R, V = logits.shape
    x = logits.astype(np.float64)
    lse = lse64(x)
    want_lp = x - lse[:, None]
    want_nll = lse - x[np.arange(R), targets]
    bias = np.zeros(V, np.float32)
    shift = np.empty(R, np.float32)
    k.row_shift(logits, bias, shift)
    rows = []

    out = np.empty_like(logits)
    k.log_softmax(logits, bias, shift, out)
    rows.append(("log_softmax", np.max(np.abs(out - want_lp)), floor_error(want_lp)))
    k._stream._log_softmax_serial(logits, out)
    rows.append(("stream softmax", np.max(np.abs(out - want_lp)), floor_error(want_lp)))
    del out

    nll = np.empty(R, np.float32)
    nll_floor = floor_error(want_nll)
    k.xent_forward(logits, bias, targets, shift, nll)
    rows.append(("xent_forward", np.max(np.abs(nll - want_nll)), nll_floor))
    grad = logits.copy()
    dbias = np.empty(V, np.float32)
    k.xent_forward_backward(grad, bias, targets, shift, 1.0 / R, nll, dbias)
    rows.append(("xent_forward_backward", np.max(np.abs(nll - want_nll)), nll_floor))
    del grad
    # the logits as the product of an identity with them: exact in any blocking
    w_dec = np.ascontiguousarray(logits.T)
    k.decode_xent(np.eye(R, dtype=np.float32), w_dec, bias, targets, nll, scratch())
    rows.append(("decode_xent", np.max(np.abs(nll - want_nll)), nll_floor))
    return rows


def cuda_softmax_errors(logits, targets):
    """[(kernel, max |err| nats, floor nats)] for the CUDA softmax kernels, 256 threads."""
    from numba import cuda

    from rnnlm_engine.kernels.cuda import _elementwise as ew

    R, V = logits.shape
    x = logits.astype(np.float64)
    lse = lse64(x)
    want_lp = x - lse[:, None]
    want_nll = lse - x[np.arange(R), targets]
    d_logits = cuda.to_device(logits)
    d_bias = cuda.to_device(np.zeros(V, np.float32))
    out = cuda.device_array((R, V), np.float32)
    ew.log_softmax(d_logits, d_bias, None, out, threads=256)
    lp = out.copy_to_host()
    nll = cuda.device_array(R, np.float32)
    ew.xent_forward(d_logits, d_bias, cuda.to_device(targets), None, nll, threads=256)
    got_nll = nll.copy_to_host()
    # what the kernel's last steps in float32 (m + log s, then minus the target's logit)
    # give from the exact sum: the error that does not come from the sum
    m = logits.max(axis=1)
    s = np.exp(x - m[:, None].astype(np.float64)).sum(axis=1).astype(np.float32)
    last = (m + np.log(s)) - logits[np.arange(R), targets]
    return [
        ("cuda log_softmax", np.max(np.abs(lp - want_lp)), floor_error(want_lp)),
        ("cuda xent_forward", np.max(np.abs(got_nll - want_nll)), floor_error(want_nll)),
        ("exact sum, f32 last steps", np.max(np.abs(last - want_nll)), floor_error(want_nll)),
    ]


def print_softmax_table(title, results):
    print(f"\n{title}")
    print(f"{'kernel':<27}{'V':>8}{'sigma':>6}{'rows':>6}  {'max |err| nats':>15}"
          f"{'floor nats':>12}{'x floor':>9}")  # fmt: skip
    for kernel, V, sigma, R, err, floor in results:
        print(f"{kernel:<27}{V:>8,}{sigma:>6g}{R:>6}  {err:>15.2e}{floor:>12.2e}"
              f"{err / floor:>9.1f}")  # fmt: skip


# ---------------------------------------------------------------------------- 2. bias grads


def zipf_targets(rng, N, V):
    p = 1.0 / np.arange(1, V + 1)
    return rng.choice(V, size=N, p=p / p.sum())


def column_errors(got, want, magnitude):
    """(max |err|, max rel, median ulps) of per-column sums: rel = |got - want| / sum of
    |terms| of the column; ulps = |got - want| / ulp(want as float32)."""
    err = np.abs(got.astype(np.float64) - want)
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return float(err.max()), float(np.max(err / magnitude)), float(np.median(err / ulp))


def decoder_bias_case(rng, N, V, sigma, kept, sample):
    """(logits (N, V') float32, targets (N,), column ids compared) for the decoder bias
    gradient at vocabulary V; V' = V, or kept + 1 columns (see the module docstring)."""
    ranks = zipf_targets(rng, N, V)
    if kept is None or kept >= V:
        logits = rng.standard_normal((N, V), dtype=np.float32) * np.float32(sigma)
        return logits, ranks, np.arange(V)
    top = kept // 2 + 1
    others = rng.choice(np.arange(top, V), size=kept - top, replace=False)
    cols = np.concatenate([np.arange(top), np.sort(others)])  # the kept vocabulary ids
    column_of = np.full(V, kept, np.int64)  # every other word: the mass column
    column_of[cols] = np.arange(kept)
    logits = np.empty((N, kept + 1), np.float32)
    logits[:, :kept] = rng.standard_normal((N, kept), dtype=np.float32) * np.float32(sigma)
    rest = V - kept
    for r0 in range(0, N, 1000):
        r1 = min(N, r0 + 1000)
        z = rng.standard_normal((r1 - r0, sample)) * sigma
        logits[r0:r1, kept] = lse64(z) + np.log(rest / sample)
    return logits, column_of[ranks], np.arange(kept)


def decoder_bias_errors(k, logits, targets, compare):
    """Run xent_forward_backward on all N rows; column_errors of its dbias."""
    N, V = logits.shape
    scale = 1.0 / N
    p_sum = np.zeros(V)  # sum over rows of the float64 softmax
    p_target = np.zeros(V)  # the same, over the rows whose target is that column
    for r0 in range(0, N, 1000):
        x = logits[r0 : r0 + 1000].astype(np.float64)
        p = np.exp(x - lse64(x)[:, None])
        p_sum += p.sum(axis=0)
        t = targets[r0 : r0 + 1000]
        np.add.at(p_target, t, p[np.arange(len(t)), t])
    counts = np.bincount(targets, minlength=V)
    want = scale * (p_sum - counts)
    magnitude = scale * (p_sum + counts - 2 * p_target)  # |p - 1| = 1 - p at a target
    bias = np.zeros(V, np.float32)
    shift = np.empty(N, np.float32)
    k.row_shift(logits, bias, shift)
    nll = np.empty(N, np.float32)
    dbias = np.empty(V, np.float32)
    k.xent_forward_backward(logits, bias, targets, shift, scale, nll, dbias)  # in place
    return column_errors(dbias[compare], want[compare], magnitude[compare])


def layer_bias_errors(k, rng, N, G):
    """column_errors of column_sums over (N, G) mixed-sign rows."""
    a = rng.standard_normal((N, G), dtype=np.float32)
    a64 = a.astype(np.float64)
    got = k.column_sums(a)
    return column_errors(got, a64.sum(axis=0), np.abs(a64).sum(axis=0))


def print_grad_table(results):
    print("\nbias gradients: a sum over N rows per column")
    print(f"{'sum':<38}{'V or G':>8}{'N':>7}  {'max |err|':>10}{'max rel':>10}{'max / u':>9}"
          f"{'median ulps':>12}")  # fmt: skip
    for name, width, N, (err, rel, ulps) in results:
        print(f"{name:<38}{width:>8,}{N:>7,}  {err:>10.2e}{rel:>10.2e}{rel / U32:>9.1f}"
              f"{ulps:>12.1f}")  # fmt: skip
    print("max rel: |err| / sum |terms| of the column (max over columns), also in units of u;")
    print("median ulps: |err| in float32 ulps of the exact sum (median over columns; 0.5 is")
    print("the rounding of the exact sum to float32)")


# ---------------------------------------------------------------------------- 4. speed


def load_kernels(folder):
    """The CPU kernels package in folder (a kernels/cpu), imported under a name of its own
    (always the same for one folder: Numba's cache there records it)."""
    folder = Path(folder).resolve()
    name = "_cpu_kernels_" + hashlib.sha1(str(folder).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def timing_cases(rng):
    """[(name, call(k) -> result for the check, prepare() run untimed before each call)]."""
    cases = []
    for N, V in ((700, 10_000), (256, 100_000)):
        logits = rng.standard_normal((N, V), dtype=np.float32) * np.float32(3.0)
        bias = (rng.standard_normal(V, dtype=np.float32) * np.float32(0.5)).astype(np.float32)
        targets = rng.integers(0, V, N)
        shift = np.empty(N, np.float32)
        kc.row_shift(logits, bias, shift)
        out = np.empty_like(logits)
        grad = np.empty_like(logits)
        nll = np.empty(N, np.float32)
        dbias = np.empty(V, np.float32)
        H = 200
        top = rng.uniform(-1, 1, (N, H)).astype(np.float32)
        w_dec = (rng.standard_normal((V, H), dtype=np.float32) * np.float32(0.2)).astype(np.float32)
        work = scratch()

        def log_softmax(k, logits=logits, bias=bias, shift=shift, out=out):
            k.log_softmax(logits, bias, shift, out)
            return out

        def xent_fb(k, grad=grad, bias=bias, targets=targets, shift=shift, nll=nll, dbias=dbias):
            k.xent_forward_backward(grad, bias, targets, shift, 1.0 / len(targets), nll, dbias)
            return dbias

        def decode(k, top=top, w_dec=w_dec, bias=bias, targets=targets, nll=nll, work=work):
            k.decode_xent(top, w_dec, bias, targets, nll, work)
            return nll

        def row(k, logits=logits, out=out):
            k._stream._log_softmax_serial(logits[:1], out[:1])
            return out[:1]

        def restore(grad=grad, logits=logits):  # xent_forward_backward overwrites grad
            np.copyto(grad, logits)

        size = f"{N} x {V:,}"
        cases.append((f"log_softmax {size}", log_softmax, None))
        cases.append((f"xent_forward_backward {size}", xent_fb, restore))
        cases.append((f"decode_xent {size}, H {H}", decode, None))
        cases.append((f"stream softmax 1 x {V:,}", row, None))
    for N, G in ((700, 800), (20_000, 800)):
        a = rng.standard_normal((N, G), dtype=np.float32)
        cases.append((f"column_sums {N:,} x {G}", lambda k, a=a: k.column_sums(a), None))
    return cases


def time_against(folder, rounds=5, calls=7):
    other = load_kernels(folder)
    rng = np.random.default_rng(1)
    print(f"\nspeed: these kernels (new) against {folder} (old), median ms per call over "
          f"{rounds} alternating rounds of {calls} calls, after one untimed call each")  # fmt: skip
    print(f"{'kernel':<36}{'old ms':>10}{'new ms':>10}{'new/old':>9}")
    for name, call, prepare in timing_cases(rng):
        results = {}
        for label, k in (("old", other), ("new", kc)):
            if prepare:
                prepare()
            results[label] = np.array(call(k), copy=True)  # compiles, and is checked below
        scale = float(np.max(np.abs(results["old"])))
        if not np.max(np.abs(results["new"] - results["old"])) <= 1e-5 * scale:
            sys.exit(f"{name}: new and old disagree; nothing timed")
        times = {"old": [], "new": []}
        for _ in range(rounds):
            for label, k in (("old", other), ("new", kc)):
                for _ in range(calls):
                    if prepare:
                        prepare()
                    t0 = time.perf_counter()
                    call(k)
                    times[label].append(time.perf_counter() - t0)
        old, new = (1e3 * float(np.median(times[x])) for x in ("old", "new"))
        print(f"{name:<36}{old:>10.3f}{new:>10.3f}{new / old:>9.2f}")


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256, help="softmax rows per case (part 1)")
    ap.add_argument("--grad-rows", type=int, default=20000, help="N = T*B (part 2)")
    ap.add_argument("--cuda", action="store_true", help="also the CUDA softmax kernels")
    ap.add_argument("--cuda-rows", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-against", metavar="DIR", help="time against this kernels/cpu")
    ap.add_argument("--kernels", metavar="DIR", help="measure this kernels/cpu (parts 1, 2)")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    k = load_kernels(args.kernels) if args.kernels else kc
    print("float32 sums over the vocabulary and the T*B rows, against float64 on the same inputs")
    print(f"kernels  {Path(k.__file__).parent}")
    print(f"cpu      {platform.processor() or platform.machine()}; os.cpu_count() {os.cpu_count()}")
    print(f"numpy    {np.__version__}; seed {args.seed}")

    results = []
    for V in (10_000, 100_000):
        for sigma in (2.0, 5.0):
            logits, targets = softmax_rows(rng, args.rows, V, sigma)
            for kernel, err, floor in cpu_softmax_errors(k, logits, targets):
                results.append((kernel, V, sigma, args.rows, err, floor))
    print_softmax_table("log-normaliser: a sum of V exponentials per row (CPU kernels)", results)

    if args.cuda:
        cuda_results = []
        for sigma in (2.0, 5.0):
            logits, targets = softmax_rows(rng, args.cuda_rows, 100_000, sigma)
            for kernel, err, floor in cuda_softmax_errors(logits, targets):
                cuda_results.append((kernel, 100_000, sigma, args.cuda_rows, err, floor))
        print_softmax_table("log-normaliser: CUDA kernels, 256 threads per row", cuda_results)

    N = args.grad_rows
    grads = []
    for V, kept in ((10_000, None), (100_000, 4095)):
        logits, targets, compare = decoder_bias_case(rng, N, V, 2.0, kept, 8192)
        name = "decoder bias (xent_forward_backward)"
        grads.append((name, V, N, decoder_bias_errors(k, logits, targets, compare)))
        del logits
    grads.append(("layer bias (column_sums)", 800, N, layer_bias_errors(k, rng, N, 800)))
    print_grad_table(grads)
    print(f"\nu = 2^-24 = {U32:.2e}")
    if args.time_against:
        time_against(args.time_against)
    print(f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
