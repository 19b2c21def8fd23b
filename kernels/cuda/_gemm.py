"""Matrix products and column sums on the GPU (numba.cuda), float32 throughout.

gemm is a tiled shared-memory product with register blocking: a block of
threads_m x threads_n threads computes a (threads_m reg_m) x (threads_n reg_n) tile of the
output, each thread reg_m x reg_n outputs kept in registers, stepping through K in slices
of tile_k that the block first stages in shared memory. Thread (ty, tx) owns the outputs
(ty + i threads_m, tx + j threads_n): consecutive threads of a warp own consecutive
columns, so the stores to ``out`` and the shared-memory reads of the B tile are coalesced
and conflict-free. The loads into shared memory follow the memory order of each operand
(along K for a row-major (M, K) or (N, K) operand, along M or N for a transposed one), so
they are coalesced for the four transpose combinations; the kernel is specialized for
each combination. Edges need no multiple of the tile: out-of-range elements load as 0.

Shared-memory shapes are compile-time constants, so kernels come from factories cached
per tile. Nothing compiles at import: each kernel compiles on its first launch.

Tiles: ``DEFAULT_TILES`` lists candidate tiles from the largest; gemm uses the first that
gives at least ``MIN_BLOCKS`` blocks (one per SM of an H100 SXM), else the last (smallest),
so the small per-step recurrent products (B x 4H x H) still spread over many SMs. Tests
running in the CUDA simulator, where every GPU thread is a Python thread, shrink them with
``set_tiles`` and ``set_column_sum_block``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import cuda, float32, float64


class Tile(NamedTuple):
    """A gemm block: threads_m x threads_n threads, each computing reg_m x reg_n outputs."""

    threads_m: int  # threadIdx.y
    threads_n: int  # threadIdx.x (consecutive threads: consecutive output columns)
    reg_m: int
    reg_n: int
    tile_k: int  # the K slice staged in shared memory per iteration

    @property
    def m(self) -> int:
        return self.threads_m * self.reg_m

    @property
    def n(self) -> int:
        return self.threads_n * self.reg_n


# 256 threads each: 64x64 (16 outputs a thread), 32x32 (4), 16x16 (1).
DEFAULT_TILES = (Tile(16, 16, 4, 4, 16), Tile(16, 16, 2, 2, 16), Tile(16, 16, 1, 1, 16))
MIN_BLOCKS = 132  # SMs on an H100 SXM
# column_sums: COLUMN_SUM_BLOCK = (columns, row groups) threads per block
DEFAULT_COLUMN_SUM_BLOCK = (32, 8)

_tiles: tuple[Tile, ...] = DEFAULT_TILES
_column_sum_block: tuple[int, int] = DEFAULT_COLUMN_SUM_BLOCK


def set_tiles(*tiles: Tile) -> tuple[Tile, ...]:
    """Set the candidate gemm tiles (largest first); none restores DEFAULT_TILES.

    Returns the previous candidates, so that a caller can restore them.
    """
    global _tiles
    previous = _tiles
    _tiles = tuple(Tile(*t) for t in tiles) if tiles else DEFAULT_TILES
    return previous


def set_column_sum_block(columns: int | None = None, rows: int | None = None):
    """Set column_sums' block (threads along columns, along rows); None restores the default.

    Returns the previous (columns, rows).
    """
    global _column_sum_block
    previous = _column_sum_block
    if columns is None:
        _column_sum_block = DEFAULT_COLUMN_SUM_BLOCK
    else:
        _column_sum_block = (int(columns), int(rows if rows is not None else 1))
    return previous


def pick_tile(M: int, N: int) -> Tile:
    """The first candidate tile giving at least MIN_BLOCKS blocks, else the smallest."""
    for tile in _tiles:
        if -(-M // tile.m) * -(-N // tile.n) >= MIN_BLOCKS:
            return tile
    return _tiles[-1]


def _stager(K_MAJOR: bool, BR: int, BK: int, NT: int):
    """A device function staging one operand's K slice into shared memory.

    The operand x is (R, K) when K_MAJOR, else (K, R); stage(x, S, tid, k0, r0, K, R)
    writes S[kk, rr] = x's element (k0 + kk, r0 + rr) for kk < BK, rr < BR (0 beyond the
    edges), the NT threads of a block reading consecutive elements of x's memory order.
    """
    LOADS = -(-(BK * BR) // NT)  # elements each thread stages
    SIZE = BK * BR
    ZERO = np.float32(0.0)

    @cuda.jit(device=True)
    def stage(x, S, tid, k0, r0, K, R):
        for s in range(LOADS):
            idx = tid + s * NT
            if idx < SIZE:
                if K_MAJOR:  # x (R, K): consecutive threads along K
                    rr = idx // BK
                    kk = idx - rr * BK
                else:  # x (K, R): consecutive threads along R
                    kk = idx // BR
                    rr = idx - kk * BR
                gk = k0 + kk
                gr = r0 + rr
                v = ZERO
                if gk < K and gr < R:
                    if K_MAJOR:
                        v = x[gr, gk]
                    else:
                        v = x[gk, gr]
                S[kk, rr] = v

    return stage


@functools.cache
def _gemm_kernel(tile: Tile, trans_a: bool, trans_b: bool):
    TM, TN, RM, RN, BK = tile
    BM, BN = TM * RM, TN * RN
    NT = TM * TN
    # rows of BM + 1 floats: the column-wise stores of a K-major load hit distinct banks.
    # Shapes are computed here: numba needs literal shapes, and BM + 1 in the kernel is not.
    A_SHARED = (BK, BM + 1)
    B_SHARED = (BK, BN + 1)
    ACC = (RM, RN)
    ZERO = np.float32(0.0)
    TA = bool(trans_a)
    stage_a = _stager(not trans_a, BM, BK, NT)  # a (M, K), or (K, M) with trans_a
    stage_b = _stager(bool(trans_b), BN, BK, NT)  # b (K, N), or (N, K) with trans_b

    @cuda.jit
    def kernel(a, b, out, alpha, beta):
        M = out.shape[0]
        N = out.shape[1]
        if TA:
            K = a.shape[0]
        else:
            K = a.shape[1]
        As = cuda.shared.array(A_SHARED, float32)
        Bs = cuda.shared.array(B_SHARED, float32)
        acc = cuda.local.array(ACC, float32)
        ra = cuda.local.array(RM, float32)
        rb = cuda.local.array(RN, float32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TN + tx
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        for i in range(RM):
            for j in range(RN):
                acc[i, j] = ZERO
        for k0 in range(0, K, BK):
            stage_a(a, As, tid, k0, m0, K, M)
            stage_b(b, Bs, tid, k0, n0, K, N)
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(RM):
                    ra[i] = As[kk, ty + i * TM]
                for j in range(RN):
                    rb[j] = Bs[kk, tx + j * TN]
                for i in range(RM):
                    for j in range(RN):
                        acc[i, j] += ra[i] * rb[j]
            cuda.syncthreads()
        for i in range(RM):
            m = m0 + ty + i * TM
            if m < M:
                for j in range(RN):
                    n = n0 + tx + j * TN
                    if n < N:
                        v = alpha * acc[i, j]
                        if beta != ZERO:  # out is not read when beta == 0 (it may hold NaN)
                            v += beta * out[m, n]
                        out[m, n] = v

    return kernel


def gemm(a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, *, tile=None):
    """out (M, N) = alpha op(a) @ op(b) + beta out, with op(x) = x.T where the flag is set.

    a is (M, K), or (K, M) with trans_a; b is (K, N), or (N, K) with trans_b; all float32
    C-contiguous device arrays, any M, N, K >= 1. With beta == 0 out is only written.
    tile forces a Tile instead of pick_tile's choice. Launches on the default stream.
    """
    M, N = out.shape
    t = pick_tile(M, N) if tile is None else Tile(*tile)
    kernel = _gemm_kernel(t, bool(trans_a), bool(trans_b))
    grid = (-(-N // t.n), -(-M // t.m))
    kernel[grid, (t.threads_n, t.threads_m)](a, b, out, np.float32(alpha), np.float32(beta))


@functools.cache
def _column_sums_kernel(CX: int, CY: int):
    ZERO = np.float64(0.0)

    @cuda.jit
    def kernel(a, out):
        # float64 sums: N may be every position of a training window (the bias gradients)
        N = a.shape[0]
        G = a.shape[1]
        part = cuda.shared.array((CY, CX), float64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        col = cuda.blockIdx.x * CX + tx
        s = ZERO
        if col < G:
            for r in range(ty, N, CY):  # consecutive threads read consecutive columns
                s += a[r, col]
        part[ty, tx] = s
        cuda.syncthreads()
        if ty == 0 and col < G:  # a fixed order: the same bits on every run
            total = ZERO
            for y in range(CY):
                total += part[y, tx]
            out[col] = total

    return kernel


def column_sums(a, out):
    """out (G,) = a.sum(axis=0) for a (N, G): deterministic (no atomics)."""
    CX, CY = _column_sum_block
    G = a.shape[1]
    _column_sums_kernel(CX, CY)[(-(-G // CX),), (CX, CY)](a, out)
