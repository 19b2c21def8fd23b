"""What integer activations would give the batch passes, for issue 13 (int8 weights).

    python bench/int8_gemm_probe.py

Sentence scoring spends most of its time in matrix products of many rows: the decoder
(rows x H times H x V) and each layer's input projection. The contract (DESIGN.md) keeps
float32 activations, so an int8 model's batch passes run OpenBLAS's sgemm on the
dequantized weights. Quantizing the activations too (PyTorch's dynamic quantization) would
change the math; this probe measures whether it would even be faster here: the integer
matrix products Numba can generate, on both threads, against sgemm on the same shape.

- "rows, vpmaddwd": one output at a time, int32 sums truncated where they are stored, so
  LLVM narrows the loop to vpmaddwd (16 products, 8 pairwise sums an instruction), for
  int8 and for int16 operands.
- "3x4 tile": three activation rows by four weight rows, twelve sums kept in registers
  (each weight and activation loaded once for several products, as a GEMM kernel does),
  int32 sums wrapped at every step: LLVM then multiplies in vpmulld (8 products an
  instruction); left to sum in int64 it uses vpmuldq (4).

Each kernel's result is checked against numpy's exact int64 product first, and the
instructions LLVM emitted are counted.
"""

from __future__ import annotations

import collections
import re
import time

import numba
import numpy as np
from numba import njit, prange


@njit(parallel=True, fastmath=True, error_model="numpy")
def rows_madd(a, b, out):
    """out (M, N) int32 = a (M, K) @ b (N, K).T, one output at a time."""
    for j in prange(b.shape[0]):
        for i in range(a.shape[0]):
            acc = 0
            for k in range(a.shape[1]):
                acc += np.int32(a[i, k]) * np.int32(b[j, k])
            out[i, j] = np.int32(acc)  # truncated only here: LLVM narrows to vpmaddwd


@njit(parallel=True, fastmath=True, error_model="numpy")
def tile_3x4(a, b, out):
    """The same product, three rows of a by four rows of b at a time (M % 3 == N % 4 == 0)."""
    for jb in prange(b.shape[0] // 4):
        j = 4 * jb
        b0, b1, b2, b3 = b[j], b[j + 1], b[j + 2], b[j + 3]
        for i in range(0, a.shape[0], 3):
            a0, a1, a2 = a[i], a[i + 1], a[i + 2]
            s00 = s01 = s02 = s03 = np.int32(0)
            s10 = s11 = s12 = s13 = np.int32(0)
            s20 = s21 = s22 = s23 = np.int32(0)
            for k in range(a.shape[1]):
                x0, x1, x2 = np.int32(a0[k]), np.int32(a1[k]), np.int32(a2[k])
                w0, w1 = np.int32(b0[k]), np.int32(b1[k])
                w2, w3 = np.int32(b2[k]), np.int32(b3[k])
                # wrapped to int32 at every step: otherwise Numba's int64 sums stay int64
                s00, s01 = np.int32(s00 + x0 * w0), np.int32(s01 + x0 * w1)
                s02, s03 = np.int32(s02 + x0 * w2), np.int32(s03 + x0 * w3)
                s10, s11 = np.int32(s10 + x1 * w0), np.int32(s11 + x1 * w1)
                s12, s13 = np.int32(s12 + x1 * w2), np.int32(s13 + x1 * w3)
                s20, s21 = np.int32(s20 + x2 * w0), np.int32(s21 + x2 * w1)
                s22, s23 = np.int32(s22 + x2 * w2), np.int32(s23 + x2 * w3)
            out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = s00, s01, s02, s03
            out[i + 1, j], out[i + 1, j + 1], out[i + 1, j + 2], out[i + 1, j + 3] = (
                s10, s11, s12, s13)  # fmt: skip
            out[i + 2, j], out[i + 2, j + 1], out[i + 2, j + 2], out[i + 2, j + 3] = (
                s20, s21, s22, s23)  # fmt: skip


def best_s(f, n=9) -> float:
    f()
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def instructions(kernel, *args) -> str:
    """The multiply instructions of the kernel's serial twin (a parallel kernel's loop body
    is compiled apart from the function that inspect_asm shows)."""
    serial = njit(fastmath=True, error_model="numpy")(kernel.py_func)
    serial(*(x[:12] for x in args))
    asm = serial.inspect_asm(serial.signatures[0])
    ops = collections.Counter(re.findall(r"\b(vpmaddwd|vpmulld|vpmuldq|vfmadd\w+)\b", asm))
    return " ".join(f"{op} x{n}" for op, n in sorted(ops.items())) or "none counted"


def main() -> None:
    rng = np.random.default_rng(0)
    # rows: one batch of sentence scoring (64 sentences of about 22 tokens)
    shapes = (("decoder", 1404, 200, 10000), ("input proj.", 1404, 200, 800),
              ("decoder 650", 1404, 650, 10000))  # fmt: skip
    print(f"{numba.get_num_threads()} threads; GMAC/s (and against sgemm), best of 9")
    head = ("sgemm f32", "rows, vpmaddwd i8", "rows, vpmaddwd i16", "3x4 tile i8", "3x4 tile i16")
    print(f"{'product':<12}{'M x K x N':>19}" + "".join(f"{h:>22}" for h in head))
    found = {}
    for name, M, K, N in shapes:
        w8 = rng.integers(-127, 128, (N, K)).astype(np.int8)
        x8 = rng.integers(-127, 128, (M, K)).astype(np.int8)
        exact = (x8.astype(np.int64) @ w8.T.astype(np.int64)).astype(np.int32)
        f32 = (x8.astype(np.float32), w8.astype(np.float32), np.empty((M, N), np.float32))
        times = [best_s(lambda f32=f32: np.matmul(f32[0], f32[1].T, out=f32[2]))]
        for kernel, dtype in ((rows_madd, np.int8), (rows_madd, np.int16),
                              (tile_3x4, np.int8), (tile_3x4, np.int16)):  # fmt: skip
            a, b = x8.astype(dtype), w8.astype(dtype)
            out = np.full((M, N), -7, np.int32)  # poisoned: an unwritten output shows
            kernel(a, b, out)
            assert np.array_equal(out, exact), (kernel.__name__, dtype)
            times.append(best_s(lambda kernel=kernel, a=a, b=b, out=out: kernel(a, b, out)))
            key = f"{kernel.__name__} {np.dtype(dtype).name}"
            found.setdefault(key, instructions(kernel, a, b, out))
        macs = M * K * N
        cells = [f"{macs / t / 1e9:9.1f} ({times[0] / t:4.2f}x)" for t in times]
        print(f"{name:<12}{f'{M} x {K} x {N}':>19}" + "".join(f"{c:>22}" for c in cells))
    for key, ops in found.items():
        print(f"{key}: {ops}")


if __name__ == "__main__":
    main()
