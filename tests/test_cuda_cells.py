"""The CUDA gemm, column sums and recurrent cells against float64 references.

Runs on a GPU, or on the CPU under numba's simulator (``NUMBA_ENABLE_CUDASIM=1``); skipped
when numba.cuda has neither. Shapes are small and tiles are shrunk (see ``small_tiles``)
so that each simulated launch is a few blocks of at most 64 threads (the simulator runs
every GPU thread as a Python thread); the real-size, default-tile checks run on a GPU only.

As in test_kernels_cpu.py: outputs are filled with NaN before each call (an element a
kernel fails to write fails the comparison), and errors are normwise relative errors
(oracle.normwise_error) for the cells; the products get an element-wise rounding bound.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kernel_cases import (
    CELLS,
    FWD_TOL,
    GATES,
    cell_case,
    cell_inputs,
    check_grads,
    f32,
    oracle_cell,
    oracle_forward,
    rel_err,
)
from numba import cuda

from rnnlm_engine.kernels.cuda import _cells as kcells
from rnnlm_engine.kernels.cuda import _gemm as kg

pytestmark = [
    pytest.mark.skipif(
        not cuda.is_available(),
        reason="numba.cuda finds no GPU (set NUMBA_ENABLE_CUDASIM=1 to run on the simulator)",
    ),
    pytest.mark.usefixtures("cuda_simulator_fixes"),
]

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)


U = 2.0**-24  # float32 unit roundoff

# Cell tolerances (FWD_TOL, GRAD_TOL, GRAD_FLOOR): the CPU tests', from kernel_cases.py.
# The CUDA kernels differ from the CPU ones only in the order of the float32 sums and in
# libdevice's expf/tanhf (within 2 ulp), so the same bounds apply. The errors seen here are
# ~2e-7 for both (margins of 50x and 500x); the gradient bound stays the CPU tests' because
# the GPU-sized test (T=35, H=200) reaches their sweep's worst, ~1e-5.

# Simulator-sized tiles: 4 to 16 threads a block, tiles of 2x3 to 6x10 outputs, K slices
# of 2 to 5, so every product of the cell tests spans several tiles in M, N and K.
CELL_TILES = (kg.Tile(2, 2, 3, 5, 5), kg.Tile(2, 2, 1, 2, 2))
CELL_THREADS = 16  # element-wise kernels: B H up to 45 spans up to 3 blocks
COLUMN_BLOCK = (4, 3)


@pytest.fixture(scope="module", autouse=True)
def small_tiles():
    """Shrink every tile and block for the module (simulator-sized launches)."""
    tiles = kg.set_tiles(*CELL_TILES)
    threads = kcells.set_threads(CELL_THREADS)
    block = kg.set_column_sum_block(*COLUMN_BLOCK)
    try:
        yield
    finally:
        kg.set_tiles(*tiles)
        kcells.set_threads(threads)
        kg.set_column_sum_block(*block)


def poisoned(shape):
    return cuda.to_device(np.full(shape, np.nan, np.float32))


def dev(x):
    return None if x is None else cuda.to_device(np.ascontiguousarray(x))


def host(d):
    return None if d is None else d.copy_to_host()


# ---------------------------------------------------------------------------- gemm

tiles = st.builds(
    kg.Tile,
    threads_m=st.integers(1, 3),
    threads_n=st.integers(1, 4),
    reg_m=st.integers(1, 3),
    reg_n=st.integers(1, 2),
    tile_k=st.integers(1, 5),
)


def check_gemm(M, N, K, trans_a, trans_b, alpha, beta, tile, seed):
    rng = np.random.default_rng(seed)
    a = f32(rng, (K, M) if trans_a else (M, K))
    b = f32(rng, (N, K) if trans_b else (K, N))
    c0 = f32(rng, (M, N))
    out = poisoned((M, N)) if beta == 0.0 else dev(c0)
    kg.gemm(dev(a), dev(b), out, trans_a, trans_b, alpha, beta, tile=tile)
    got = host(out)
    assert np.all(np.isfinite(got)), "gemm left NaN (unwritten element, or read out at beta 0)"
    opa = (a.T if trans_a else a).astype(np.float64)
    opb = (b.T if trans_b else b).astype(np.float64)
    want = alpha * (opa @ opb) + beta * c0.astype(np.float64)
    # K - 1 float32 additions and K products, then alpha, beta and one more addition: at
    # most (K + 3) u of the sum of magnitudes, element by element (to first order).
    bound = (K + 3) * U * (abs(alpha) * (np.abs(opa) @ np.abs(opb)) + abs(beta) * np.abs(c0))
    excess = np.abs(got - want) - bound
    assert np.all(excess <= 1e-30), float(np.max(excess))


@settings(max_examples=20)
@given(
    M=st.integers(1, 9),
    N=st.integers(1, 9),
    K=st.integers(1, 11),
    trans_a=st.booleans(),
    trans_b=st.booleans(),
    alpha=st.sampled_from([1.0, -0.5, 2.0, 0.375]),
    beta=st.sampled_from([0.0, 1.0, -0.75]),
    tile=tiles,
    seed=st.integers(0, 2**32 - 1),
)
@example(M=1, N=1, K=1, trans_a=False, trans_b=False, alpha=1.0, beta=0.0,
         tile=kg.Tile(1, 1, 1, 1, 1), seed=0)  # fmt: skip
def test_gemm(M, N, K, trans_a, trans_b, alpha, beta, tile, seed):
    check_gemm(M, N, K, trans_a, trans_b, alpha, beta, tile, seed)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_crosses_tile_edges(trans_a, trans_b):
    """Every transpose combination with M, N, K one past a multiple of the tile in each
    dimension (two tiles, the second nearly empty), beta 0 and beta 1."""
    tile = kg.Tile(2, 3, 2, 2, 3)  # 4 x 6 outputs, K slices of 3
    check_gemm(5, 7, 7, trans_a, trans_b, 1.0, 0.0, tile, 1)
    check_gemm(5, 7, 4, trans_a, trans_b, -0.5, 1.0, tile, 2)


def test_pick_tile_prefers_large_tiles_with_enough_blocks():
    big, mid, small = kg.DEFAULT_TILES
    previous = kg.set_tiles()
    try:
        assert kg.pick_tile(2000, 2000) == big
        assert kg.pick_tile(800, 200) == mid  # 13 x 4 = 52 big tiles, 25 x 7 = 175 mid
        assert kg.pick_tile(20, 800) == small
        assert kg.pick_tile(1, 1) == small
    finally:
        kg.set_tiles(*previous)


# ---------------------------------------------------------------------------- column sums


@settings(max_examples=8)
@given(
    N=st.integers(1, 20),
    G=st.integers(1, 13),
    block=st.sampled_from([(1, 1), (4, 3), (8, 2), (3, 5)]),
    seed=st.integers(0, 2**32 - 1),
)
@example(N=1, G=1, block=(4, 3), seed=0)
def test_column_sums(N, G, block, seed):
    rng = np.random.default_rng(seed)
    a = f32(rng, (N, G))
    da = dev(a)
    out = poisoned(G)
    previous = kg.set_column_sum_block(*block)
    try:
        kg.column_sums(da, out)
        again = poisoned(G)
        kg.column_sums(da, again)
    finally:
        kg.set_column_sum_block(*previous)
    got = host(out)
    want = a.astype(np.float64).sum(axis=0)
    bound = N * U * np.abs(a).astype(np.float64).sum(axis=0)  # N - 1 float32 additions
    assert np.all(np.abs(got - want) <= bound)
    np.testing.assert_array_equal(host(again), got)  # deterministic: no atomics


# ---------------------------------------------------------------------------- cells


def cuda_forward(cell, inp):
    T, B, G = inp["xproj"].shape
    H = inp["h0"].shape[1]
    hs = poisoned((T, B, H))
    cs = poisoned((T, B, H)) if cell == "lstm" else None
    width = kcells.ACTS_PER_HIDDEN[cell] * H
    acts = poisoned((T, B, width)) if width else None
    d = {k: dev(v) for k, v in inp.items()}
    w = kcells.forward_layout(d["w_hh"])
    kcells.CELL_FORWARD[cell](d["xproj"], w, d["b_hh"], d["h0"], d["c0"], hs, cs, acts)
    return hs, cs, acts


def cuda_backward(cell, inp, hs, cs, acts, dhs, dcT):
    """hs, cs, acts: device arrays (from either backend's forward)."""
    T, B, G = inp["xproj"].shape
    H = inp["h0"].shape[1]
    dxproj, dw_hh, db_hh = poisoned((T, B, G)), poisoned((G, H)), poisoned(G)
    dh0 = poisoned((B, H))
    dc0 = poisoned((B, H)) if cell == "lstm" else None
    ddcT = dev(dcT)
    kcells.CELL_BACKWARD[cell](
        dev(inp["w_hh"]), dev(inp["h0"]), dev(inp["c0"]), hs, cs, acts,
        dev(dhs), ddcT, dxproj, dw_hh, db_hh, dh0, dc0,
    )  # fmt: skip
    if dcT is not None:
        np.testing.assert_array_equal(host(ddcT), dcT)  # read only
    return tuple(host(g) for g in (dxproj, dw_hh, db_hh, dh0, dc0))


def check_cell(cell, T, B, H, w_scale, x_scale, seed):
    """The CUDA forward and backward of one drawn case against the oracle; returns what
    a further backward needs: (inp, dhs, hs, cs, acts), the states on the device."""
    inp, dhs, dcT = cell_case(np.random.default_rng(seed), cell, T, B, H, w_scale, x_scale)
    hs, cs, acts = cuda_forward(cell, inp)
    want_hs, want_cs, want = oracle_cell(cell, inp, dhs, dcT)
    assert rel_err(host(hs), want_hs) < FWD_TOL
    if cell == "lstm":
        assert rel_err(host(cs), want_cs) < FWD_TOL
    if acts is not None:
        assert np.all(np.isfinite(host(acts)))
    check_grads(cuda_backward(cell, inp, hs, cs, acts, dhs, dcT), want, dhs)
    return inp, dhs, hs, cs, acts


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=3)
@given(
    T=st.integers(1, 7),
    B=st.integers(1, 5),
    H=st.integers(1, 9),
    w_scale=st.sampled_from([0.5, 1.0, 2.0]),
    x_scale=st.sampled_from([0.3, 1.0, 8.0]),  # 8: most gates saturate
    seed=st.integers(0, 2**32 - 1),
)
@example(T=1, B=1, H=1, w_scale=1.0, x_scale=1.0, seed=0)
@example(T=7, B=5, H=9, w_scale=2.0, x_scale=1.0, seed=1)
def test_cell_forward_backward(cell, T, B, H, w_scale, x_scale, seed):
    inp, dhs, hs, cs, acts = check_cell(cell, T, B, H, w_scale, x_scale, seed)
    if cell == "lstm":  # dcT None: no gradient on the final cell state
        _, _, want0 = oracle_cell(cell, inp, dhs, None)
        check_grads(cuda_backward(cell, inp, hs, cs, acts, dhs, None), want0, dhs)


@pytest.mark.parametrize("cell", CELLS)
def test_cell_saturated_gates_stay_finite(cell):
    """Pre-activations of +-1e4 saturate every gate: outputs exact +-1/0, no inf or NaN."""
    rng = np.random.default_rng(7)
    T, B, H = 3, 2, 4
    inp = cell_inputs(rng, cell, T, B, H, 1.0, 1.0)
    inp["xproj"] = np.where(rng.random(inp["xproj"].shape) < 0.5, -1e4, 1e4).astype(np.float32)
    dhs = f32(rng, (T, B, H))
    hs, cs, acts = cuda_forward(cell, inp)
    want_hs, _, _ = oracle_forward(cell, inp)
    assert rel_err(host(hs), want_hs) < FWD_TOL
    for g in cuda_backward(cell, inp, hs, cs, acts, dhs, None):
        assert g is None or np.all(np.isfinite(g))


@pytest.mark.parametrize("cell", CELLS)
def test_cells_interchange_with_cpu_backend(cell):
    """The saved activations have the CPU kernels' layout: each backend's forward feeds
    the other's backward."""
    import rnnlm_engine.kernels.cpu as kc

    T, B, H = 3, 2, 5
    inp, dhs, dcT = cell_case(np.random.default_rng(3), cell, T, B, H, 1.0, 1.0)
    G = GATES[cell] * H
    width = kc.ACTS_PER_HIDDEN[cell] * H
    assert width == kcells.ACTS_PER_HIDDEN[cell] * H

    hs_c = np.full((T, B, H), np.nan, np.float32)
    cs_c = np.full((T, B, H), np.nan, np.float32) if cell == "lstm" else None
    acts_c = np.full((T, B, width), np.nan, np.float32) if width else None
    kc.CELL_FORWARD[cell](
        inp["xproj"], kc.forward_layout(inp["w_hh"]), inp["b_hh"], inp["h0"], inp["c0"],
        hs_c, cs_c, acts_c,
    )  # fmt: skip
    hs, cs, acts = cuda_forward(cell, inp)
    for got, want in ((hs, hs_c), (cs, cs_c), (acts, acts_c)):
        if want is not None:
            assert rel_err(host(got), want) < FWD_TOL

    _, _, want = oracle_cell(cell, inp, dhs, dcT)
    # CPU forward -> CUDA backward
    check_grads(cuda_backward(cell, inp, dev(hs_c), dev(cs_c), dev(acts_c), dhs, dcT), want, dhs)
    # CUDA forward -> CPU backward
    grads = [np.full(s, np.nan, np.float32) for s in ((T, B, G), (G, H), (G,), (B, H))]
    grads.append(np.full((B, H), np.nan, np.float32) if cell == "lstm" else None)
    kc.CELL_BACKWARD[cell](
        inp["w_hh"], inp["h0"], inp["c0"], host(hs), host(cs), host(acts), dhs, dcT, *grads
    )
    check_grads(grads, want, dhs)


# ---------------------------------------------------------------------------- GPU only


@pytest.mark.skipif(SIMULATOR, reason="default tiles and real sizes: too slow on the simulator")
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_default_tiles_on_gpu(trans_a, trans_b):
    previous = kg.set_tiles()
    try:
        for M, N, K in ((20, 800, 200), (800, 200, 700), (1000, 1100, 67), (1, 1, 1)):
            check_gemm(M, N, K, trans_a, trans_b, 1.0, 0.0, None, M)
            check_gemm(M, N, K, trans_a, trans_b, 0.5, -1.0, None, N)
    finally:
        kg.set_tiles(*previous)


@pytest.mark.skipif(SIMULATOR, reason="default tiles and real sizes: too slow on the simulator")
@pytest.mark.parametrize("cell", CELLS)
def test_cell_default_tiles_on_gpu(cell):
    previous = (kg.set_tiles(), kcells.set_threads(), kg.set_column_sum_block())
    try:
        check_cell(cell, 35, 20, 200, 1.0, 1.0, 11)
    finally:
        kg.set_tiles(*previous[0])
        kcells.set_threads(previous[1])
        kg.set_column_sum_block(*previous[2])
