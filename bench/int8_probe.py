"""What this CPU's integer arithmetic gives a matrix-vector product, for issue 13 (int8
weights): float32 weights against int8 weights with a float32 scale per row, the vector
kept in float32 (each weight widened to float) or quantized to int8 as well (an integer
dot product with int32 sums), side by side on one thread, and which instructions LLVM
emitted for the integer loops.

    python bench/int8_probe.py

Also the engine's own streaming product (kernels/cpu/_stream.py, its parallel loop on
one thread) on float32 and on int8 rows (eight rows at a time), the same eight-row loop
written plainly, and eight rows widened without vcvtdq2ps (an integer add and a float
subtract of a magic number instead), with the instructions of both loops counted.

Numba types an integer product and sum as int64. Truncating the sum to int32 where it is
used lets LLVM narrow the whole loop to vpmaddwd (16 products and 8 pairwise sums per
AVX2 instruction); without it (the last column) the loop runs in 64-bit products
(vpmuldq) at about half the float32 speed.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from numba import njit


@njit(fastmath=True, nogil=True, error_model="numpy")
def f32_rows(w, x, out):
    for g in range(w.shape[0]):
        acc = np.float32(0.0)
        for k in range(w.shape[1]):
            acc += w[g, k] * x[k]
        out[g] = acc


@njit(fastmath=True, nogil=True, error_model="numpy")
def int8_weights_f32_vector(w, scale, x, out):
    for g in range(w.shape[0]):
        acc = np.float32(0.0)
        for k in range(w.shape[1]):
            acc += np.float32(w[g, k]) * x[k]
        out[g] = acc * scale[g]


@njit(fastmath=True, nogil=True, error_model="numpy")
def int8_both(w, scale, xq, xs, out):
    for g in range(w.shape[0]):
        acc = np.int32(0)
        for k in range(w.shape[1]):
            acc += np.int32(w[g, k]) * np.int32(xq[k])
        # Numba sums in int64; truncating to int32 here lets LLVM narrow the whole loop
        # (sums of up to 2**17 products of |127 x 127| fit in int32)
        out[g] = np.float32(np.int32(acc)) * scale[g] * xs


@njit(fastmath=True, nogil=True, error_model="numpy")
def int8_both_int64(w, scale, xq, xs, out):
    for g in range(w.shape[0]):
        acc = np.int32(0)
        for k in range(w.shape[1]):
            acc += np.int32(w[g, k]) * np.int32(xq[k])
        out[g] = np.float32(acc) * scale[g] * xs


# widening an int8 to float without vcvtdq2ps: the bits of 1.5 * 2**23 plus a small
# integer are that float plus the integer, exactly; one integer add and one float subtract
# in place of the conversion
_MAGIC = np.int32(0x4B400000)
_MAGIC_VALUE = np.float32(12582912.0)


@njit(fastmath=True, nogil=True, error_model="numpy", inline="always")
def _widen(q):
    return np.int32(np.int32(q) + _MAGIC).view(np.float32) - _MAGIC_VALUE


@njit(fastmath=True, nogil=True, error_model="numpy")
def int8_rows8(w, scale, x, out):
    for g in range(0, w.shape[0] - w.shape[0] % 8, 8):
        r0, r1, r2, r3 = w[g], w[g + 1], w[g + 2], w[g + 3]
        r4, r5, r6, r7 = w[g + 4], w[g + 5], w[g + 6], w[g + 7]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
        for k in range(w.shape[1]):
            xk = x[k]
            a0 += np.float32(r0[k]) * xk
            a1 += np.float32(r1[k]) * xk
            a2 += np.float32(r2[k]) * xk
            a3 += np.float32(r3[k]) * xk
            a4 += np.float32(r4[k]) * xk
            a5 += np.float32(r5[k]) * xk
            a6 += np.float32(r6[k]) * xk
            a7 += np.float32(r7[k]) * xk
        out[g], out[g + 1], out[g + 2], out[g + 3] = a0, a1, a2, a3
        out[g + 4], out[g + 5], out[g + 6], out[g + 7] = a4, a5, a6, a7
        for r in range(g, g + 8):
            out[r] *= scale[r]


@njit(fastmath=True, nogil=True, error_model="numpy")
def int8_magic_rows8(w, scale, x, out):
    for g in range(0, w.shape[0] - w.shape[0] % 8, 8):
        r0, r1, r2, r3 = w[g], w[g + 1], w[g + 2], w[g + 3]
        r4, r5, r6, r7 = w[g + 4], w[g + 5], w[g + 6], w[g + 7]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
        for k in range(w.shape[1]):
            xk = x[k]
            a0 += _widen(r0[k]) * xk
            a1 += _widen(r1[k]) * xk
            a2 += _widen(r2[k]) * xk
            a3 += _widen(r3[k]) * xk
            a4 += _widen(r4[k]) * xk
            a5 += _widen(r5[k]) * xk
            a6 += _widen(r6[k]) * xk
            a7 += _widen(r7[k]) * xk
        out[g], out[g + 1], out[g + 2], out[g + 3] = a0, a1, a2, a3
        out[g + 4], out[g + 5], out[g + 6], out[g + 7] = a4, a5, a6, a7
        for r in range(g, g + 8):
            out[r] *= scale[r]


def median_us(f, n=300) -> float:
    for _ in range(5):
        f()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def main() -> None:
    rng = np.random.default_rng(0)
    import numba

    from rnnlm_engine.kernels.cpu._stream import _stream_products

    numba.set_num_threads(1)  # the engine's parallel product, on one thread like the rest
    zero = np.zeros(1 << 14, np.float32)

    def engine(w, s, x, out):
        _stream_products(w, s, x[None], zero[: w.shape[0]], out[None])

    kernels = {
        "float32": lambda a: f32_rows(a["w"], a["x"], a["out"]),
        "engine f32": lambda a: engine(a["w"], a["s"][:0], a["x"], a["out"]),
        "engine int8": lambda a: engine(a["wq"], a["s"], a["x"], a["out"]),
        "int8, 8 rows": lambda a: int8_rows8(a["wq"], a["s"], a["x"], a["out"]),
        "8 rows, no cvt": lambda a: int8_magic_rows8(a["wq"], a["s"], a["x"], a["out"]),
        "int8 w, f32 x": lambda a: int8_weights_f32_vector(a["wq"], a["s"], a["x"], a["out"]),
        "int8 w, int8 x": lambda a: int8_both(a["wq"], a["s"], a["xq"], a["xs"], a["out"]),
        "same, int64 sums": lambda a: int8_both_int64(a["wq"], a["s"], a["xq"], a["xs"], a["out"]),
    }
    print(f"{'rows x cols':>12} " + " ".join(f"{k:>21}" for k in kernels) + "   us (speed)")
    for G, K in ((800, 200), (1024, 256), (2600, 650), (10000, 200), (10000, 650)):
        w = rng.standard_normal((G, K)).astype(np.float32)
        x = rng.standard_normal(K).astype(np.float32)
        s = (np.abs(w).max(axis=1) / 127).astype(np.float32)
        xs = np.float32(np.abs(x).max() / 127)
        a = {"w": w, "x": x, "s": s, "xs": xs, "out": np.empty(G, np.float32),
             "wq": np.round(w / s[:, None]).astype(np.int8),
             "xq": np.round(x / xs).astype(np.int8)}  # fmt: skip
        base = None
        cells = []
        for run in kernels.values():
            us = median_us(lambda run=run, a=a: run(a))
            base = base or us
            cells.append(f"{us:>12.1f} ({base / us:4.2f}x)")
        print(f"{G:>5} x {K:<5} " + " ".join(f"{c:>21}" for c in cells))
    for name, f in (("int8 w, int8 x", int8_both), ("int64 sums", int8_both_int64)):
        asm = f.inspect_asm(f.signatures[0])
        found = {op: asm.count(op) for op in ("vpmaddwd", "vpdpbusd", "vpmuldq", "vpmulld")}
        print(f"{name}: " + ", ".join(f"{op} x{n}" for op, n in found.items()))
    import re

    ops = ("vpmovsxbd", "vcvtdq2ps", "vpaddd", "vsubps", "vfmadd231ps")
    for name, f in (("int8, 8 rows", int8_rows8), ("8 rows, no cvt", int8_magic_rows8)):
        asm = f.inspect_asm(f.signatures[0])
        found = {op: len(re.findall(rf"\b{op}\b", asm)) for op in ops}
        print(f"{name}: " + ", ".join(f"{op} x{n}" for op, n in found.items()))


if __name__ == "__main__":
    main()
