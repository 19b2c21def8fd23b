"""The CUDA streaming step (kernels/cuda/_stream.py) against the float64 oracle and the CPU
``stream_step``, on inputs drawn by Hypothesis.

Runs on a real GPU or in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), and skips
when numba.cuda has neither. The simulator runs every GPU thread as a Python thread and
each warp reduction there waits at a barrier of 32 Python threads (milliseconds), so its
launches use one block of 32 or 64 threads (the simulator's grid sync only synchronizes
one block) and small shapes; on a GPU the same tests also draw several blocks and the
default launch shape.

Shapes cross the kernel's internal boundaries: N = 5 streams needs two passes of _S = 4
streams; H or E = 33 makes the lanes stride twice over a weight row; V = 1 leaves warps
(and, on a GPU, blocks) without vocabulary rows, V > 64 makes threads stride twice over
a block's rows in the output phase. Outputs are poisoned (NaN) before each launch so an
element the kernel fails to write shows; inputs are checked to be left unchanged.

Error measure: oracle.normwise_error, max|got - want| / max(max|want|, floor).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kernel_cases import CELLS, GATES
from numba import config, cuda

import rnnlm_engine.kernels.cpu as kc
from rnnlm_engine import oracle
from rnnlm_engine.kernels.cuda import _stream as ks

if not cuda.is_available():
    pytest.skip(
        "numba.cuda has no GPU and the simulator is off (set NUMBA_ENABLE_CUDASIM=1)",
        allow_module_level=True,
    )


pytestmark = pytest.mark.usefixtures("cuda_simulator_fixes")

SIMULATOR = bool(config.ENABLE_CUDASIM)

# Launch shapes: (threads, blocks); blocks None = the kernel's default (1 in the simulator).
if SIMULATOR:
    LAUNCH = st.sampled_from([(32, None), (64, None)])
    EXAMPLES = 6  # per cell: each simulated launch takes 0.2-4 s
else:
    LAUNCH = st.sampled_from([(32, 1), (64, 2), (64, 3), (128, 5), (None, None)])
    EXAMPLES = 40

# Tolerances (float32 unit roundoff u = 6e-8). Inputs keep every pre-activation O(scale)
# (weights ~ scale / sqrt(fan-in)): a dot of K <= 40 terms has a rounding error of about
# sqrt(K) u to K u relative to the sum of |terms| (<= 3e-6); expf, tanhf, logf (libdevice
# on a GPU, <= 2 ulp) and the CPU's polynomial exp (2e-7) add a few ulps per activation;
# T <= 3 steps through L <= 2 layers carry those errors through Jacobians of norm up to
# ~scale (3 at most). h (tanh-bounded) and c (growing by at most 1 a step) are O(1), and
# so are log-probabilities' errors (logits carry the top state's error times a row of
# W_dec, ~2, plus their own rounding; log-sum-exp adds ~u log V): every error here is
# absolute, measured normwise with a floor of 1 (a tensor of tiny values, h with H = 1
# say, would otherwise turn float32 noise into a large relative error). Over 1,500 draws
# of these strategies (H, E up to 40, V up to 300) the float32 CPU kernel's worst errors
# against float64 were 1.8e-6 (states, rnn at scale 3 through 2 layers and 3 steps) and
# 1.5e-6 (log-probabilities); the bounds keep a 10x margin.
TOL = 2e-5
FLOOR = 1.0
# kernel against kernel: each is within TOL of the oracle.
CROSS_TOL = 2 * TOL


def poisoned(shape) -> np.ndarray:
    return np.full(shape, np.nan, np.float32)


def make_model(rng, cell, L, H, E, V, scale):
    """float32 weights in the stacked form streaming.streaming_weights passes."""
    G = GATES[cell] * H

    def f32(shape, s):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    w = {
        "emb": f32((V, E), 1.0),
        "w_ih0": f32((G, E), scale / np.sqrt(E)),
        "w_ih": f32((L - 1, G, H), scale / np.sqrt(H)),
        "b_ih": f32((L, G), 0.5),
        "w_hh": f32((L, G, H), scale / np.sqrt(H)),
        "b_hh": f32((L, G), 0.5),
        "w_dec": f32((V, H), 2.0 / np.sqrt(H)),
        "b_dec": f32((V,), 1.0),
    }
    return w


def quantized(w):
    """(w with every matrix as int8 rows and its scales beside it, as the streaming
    kernels take an int8 model's weights; the float32 weights they stand for)."""
    from rnnlm_engine.quantize import dequantize_rows, quantize_rows

    q, deq = dict(w), dict(w)
    for name, scale in (("emb", "s_emb"), ("w_ih0", "s_ih0"), ("w_dec", "s_dec")):
        q[name], q[scale] = quantize_rows(w[name])
        deq[name] = dequantize_rows(q[name], q[scale])
    for name, scale in (("w_ih", "s_ih"), ("w_hh", "s_hh")):
        rows = [quantize_rows(m) for m in w[name]]
        G = w[name].shape[1]
        q[name] = np.stack([r[0] for r in rows]) if rows else np.zeros((0, G, 0), np.int8)
        q[name] = q[name].reshape(w[name].shape)
        q[scale] = np.stack([r[1] for r in rows]) if rows else np.zeros((0, G), np.float32)
        deq[name] = np.stack([dequantize_rows(*r) for r in rows]) if rows else w[name]
    return q, deq


def layer0_table(w):
    """(V, G) = emb @ w_ih0^T + b_ih0, as model._layer0_table builds it."""
    t = w["emb"].astype(np.float64) @ w["w_ih0"].T.astype(np.float64) + w["b_ih"][0]
    return t.astype(np.float32)


def residual_flags(residual: bool, L: int, H: int, E: int) -> np.ndarray:
    """ModelConfig.residual_layers as the kernel takes them: layers >= 1, and layer 0 when
    E == H."""
    return np.array([residual and (k > 0 or E == H) for k in range(L)], np.uint8)


def reference(cell, ids, w, h0, c0, residual=False):
    """The model equations in float64: embedding, each layer's input projection and cell
    (oracle.CELL_FORWARD), one step at a time (a residual layer's output adds its input);
    decoder and log-softmax after the last."""
    p = {k: np.asarray(v, np.float64) for k, v in w.items()}
    L = p["w_hh"].shape[0]
    h = [np.asarray(h0[k], np.float64) for k in range(L)]
    c = [np.asarray(c0[k], np.float64) for k in range(L)]
    lstm = cell == "lstm"
    flags = residual_flags(residual, L, p["w_hh"].shape[2], p["emb"].shape[1])
    for t in range(ids.shape[0]):
        x = oracle.embedding_forward(p["emb"], ids[t])
        for k in range(L):
            w_ih = p["w_ih0"] if k == 0 else p["w_ih"][k - 1]
            xproj = (x @ w_ih.T + p["b_ih"][k])[None]
            _, h[k], c_new, _ = oracle.CELL_FORWARD[cell](
                xproj, p["w_hh"][k], p["b_hh"][k], h[k], c[k] if lstm else None
            )
            if lstm:
                c[k] = c_new
            x = h[k] + x if flags[k] else h[k]
    logp = oracle.log_softmax(x @ p["w_dec"].T, p["b_dec"])
    return np.stack(h), np.stack(c), logp


def stream_args(cell, ids, w, table, h_in, c_in, residual=False):
    """stream_step's arguments (numpy), outputs poisoned, scratch as model._step passes."""
    T, N = ids.shape
    L, _, H = h_in.shape
    V, E = w["emb"].shape
    G = GATES[cell] * H
    # float32 matrices: their scales are not read (a last dimension of 0); int8 ones have
    # them in w (see quantized)
    no_scale = np.zeros(0, np.float32)
    return [
        ks.STREAM_CELLS[cell], residual_flags(residual, L, H, E), ids, table, w["emb"],
        w.get("s_emb", no_scale), w["w_ih0"], w.get("s_ih0", no_scale), w["w_ih"],
        w.get("s_ih", np.zeros((L - 1, 0), np.float32)), w["b_ih"], w["w_hh"],
        w.get("s_hh", np.zeros((L, 0), np.float32)), w["b_hh"], w["w_dec"],
        w.get("s_dec", no_scale), w["b_dec"], h_in, c_in,
        poisoned((L, N, H)), poisoned((L, N, H)),
        poisoned((N, G)), poisoned((N, G)), poisoned((N, V)), poisoned((N, V)),
    ]  # fmt: skip


H_OUT, C_OUT, OUT = 19, 20, 24


def run_cuda(args, threads, blocks):
    dev = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    ks.stream_step(*dev, threads=threads, blocks=blocks)
    for i in range(1, H_OUT):  # inputs: unchanged
        np.testing.assert_array_equal(dev[i].copy_to_host(), args[i])
    return [dev[i].copy_to_host() for i in (H_OUT, C_OUT, OUT)]


def run_cpu(args):
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    kc.stream_step(*args)
    return [args[i] for i in (H_OUT, C_OUT, OUT)]


def err(got, want):
    assert np.all(np.isfinite(got)), "kernel left NaN (an unwritten element) or inf"
    return oracle.normwise_error(got, want, FLOOR)


def check_step(
    cell, L, use_table, N, T, H, E, V, scale, seed, launch, residual=False, int8=False
):  # fmt: skip
    rng = np.random.default_rng(seed)
    w = make_model(rng, cell, L, H, E, V, scale)
    G = GATES[cell] * H
    table = layer0_table(w) if use_table else np.empty((0, G), np.float32)
    if int8:  # the kernels on int8 weights; the oracle on the weights they stand for
        w_kernel, w = quantized(w)
    else:
        w_kernel = w
    ids = rng.integers(0, V, (T, N)).astype(np.int64)
    h_in = rng.uniform(-1, 1, (L, N, H)).astype(np.float32)
    c_in = (rng.standard_normal((L, N, H)) * (1.0 if cell == "lstm" else 0.0)).astype(np.float32)
    args = stream_args(cell, ids, w_kernel, table, h_in, c_in, residual)
    threads, blocks = launch
    h_gpu, c_gpu, out_gpu = run_cuda(args, threads, blocks)
    h_cpu, c_cpu, out_cpu = run_cpu(args)
    h_ref, c_ref, out_ref = reference(cell, ids, w, h_in, c_in, residual)

    assert err(h_gpu, h_ref) < TOL
    assert err(out_gpu, out_ref) < TOL
    assert err(h_gpu, h_cpu) < CROSS_TOL
    assert err(out_gpu, out_cpu) < CROSS_TOL
    if cell == "lstm":
        assert err(c_gpu, c_ref) < TOL
        assert err(c_gpu, c_cpu) < CROSS_TOL
    # every row is a distribution
    np.testing.assert_allclose(np.exp(out_gpu.astype(np.float64)).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=EXAMPLES)
@given(
    L=st.integers(1, 2),
    use_table=st.booleans(),
    N=st.sampled_from([1, 2, 3, 5]),
    T=st.integers(1, 3),
    H=st.integers(1, 7),
    E=st.integers(1, 7),
    V=st.sampled_from([1, 2, 3, 7, 20, 70]),
    scale=st.sampled_from([0.5, 1.0, 3.0]),
    seed=st.integers(0, 2**32 - 1),
    launch=LAUNCH,
)
# the corners, every cell: one of everything; the most of everything; the lane stride
# crossed by H (recurrent and layer-1 rows) and by E (layer 0 without the table)
@example(L=1, use_table=False, N=1, T=1, H=1, E=1, V=1, scale=1.0, seed=0, launch=(32, None))
@example(L=2, use_table=True, N=5, T=3, H=3, E=2, V=70, scale=3.0, seed=1, launch=(64, None))
@example(L=2, use_table=False, N=1, T=1, H=33, E=2, V=3, scale=1.0, seed=2, launch=(32, None))
@example(L=1, use_table=False, N=3, T=2, H=2, E=33, V=7, scale=1.0, seed=3, launch=(64, None))
def test_stream_step_matches_oracle_and_cpu(cell, L, use_table, N, T, H, E, V, scale, seed, launch):
    check_step(cell, L, use_table, N, T, H, E, V, scale, seed, launch)


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=max(1, EXAMPLES // 2))
@given(
    L=st.integers(1, 3),
    use_table=st.booleans(),
    N=st.sampled_from([1, 2, 5]),
    T=st.integers(1, 3),
    H=st.integers(1, 7),
    emb_is_hidden=st.booleans(),
    V=st.sampled_from([2, 7, 20]),
    seed=st.integers(0, 2**32 - 1),
)
# residual layer 0 (E == H) with and without the table; only layers above it (E != H)
@example(L=2, use_table=True, N=2, T=2, H=3, emb_is_hidden=True, V=7, seed=0)
@example(L=3, use_table=False, N=1, T=1, H=2, emb_is_hidden=False, V=2, seed=1)
def test_stream_step_with_residual_layers_matches_oracle_and_cpu(
    cell, L, use_table, N, T, H, emb_is_hidden, V, seed
):
    E = H if emb_is_hidden else H + 1
    check_step(cell, L, use_table, N, T, H, E, V, 1.0, seed, (32, None), residual=True)


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=max(1, EXAMPLES // 2))
@given(
    L=st.integers(1, 2),
    N=st.sampled_from([1, 2, 5]),
    T=st.integers(1, 2),
    H=st.integers(1, 7),
    E=st.integers(1, 7),
    V=st.sampled_from([2, 7, 20]),
    residual=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    launch=LAUNCH,
)
@example(L=2, N=5, T=2, H=3, E=3, V=20, residual=True, seed=0, launch=(64, None))
def test_int8_stream_step_matches_oracle_and_cpu(cell, L, N, T, H, E, V, residual, seed, launch):
    """An int8 model's weights (int8 rows and their scales; no input table): the CUDA
    kernel dequantizes each weight as it loads it, the CPU kernel scales each row's sum;
    both against the oracle of the dequantized weights."""
    check_step(cell, L, False, N, T, H, E, V, 1.0, seed, launch, residual=residual, int8=True)


@pytest.fixture
def concurrent_blocks(monkeypatch):
    """On a GPU, nothing. In the simulator, which runs blocks one after another and whose
    grid sync only synchronizes one block, run every block at once (a thread each, over
    the simulator's own BlockManager) with a grid sync that waits for every thread of the
    grid, so that the multi-block paths (units spread over blocks, the decoder's per-block
    softmax partials combined across blocks) run in CI too. It replaces internals of
    numba's simulator (as of numba 0.68) and skips when they are not there."""
    if not SIMULATOR:
        return
    try:
        from numba.cuda.args import wrap_arg
        from numba.cuda.errors import normalize_kernel_dimensions
        from numba.cuda.simulator import kernel as sim_kernel
        from numba.cuda.simulator import kernelapi as sim_api
        from numba.cuda.simulator.cudadrv.devicearray import (
            FakeCUDAArray,
            FakeWithinKernelCUDAArray,
        )

        needed = [
            (sim_kernel, "FakeCUDAKernel"),
            (sim_kernel, "BlockManager"),
            (sim_kernel, "_push_kernel_context"),
            (sim_api, "FakeCUDAModule"),
            (sim_api, "GridGroup"),
            (sim_api, "swapped_cuda_module"),
        ]
        for module, name in needed:
            getattr(module, name)
    except (ImportError, AttributeError) as e:
        pytest.skip(f"numba's simulator has changed ({e}): cannot run blocks concurrently")

    grid_barrier = {}
    launch_one_block_at_a_time = sim_kernel.FakeCUDAKernel.__call__

    def launch(self, *args):
        if self._device:  # a device function called from a kernel
            return launch_one_block_at_a_time(self, *args)
        grid_dim, block_dim = normalize_kernel_dimensions(self.grid_dim, self.block_dim)
        barrier = threading.Barrier(int(np.prod(grid_dim) * np.prod(block_dim)), timeout=300)
        grid_barrier["now"] = barrier
        fake_cuda = sim_api.FakeCUDAModule(grid_dim, block_dim, self.dynshared_size)
        with sim_kernel._push_kernel_context(fake_cuda):
            write_back = []
            fake_args = []
            for a in args:
                if isinstance(a, np.ndarray) and a.ndim > 0:
                    a = wrap_arg(a).to_device(write_back)
                fake_args.append(
                    FakeWithinKernelCUDAArray(a) if isinstance(a, FakeCUDAArray) else a
                )
            errors = []

            def run_block(point):
                try:
                    manager = sim_kernel.BlockManager(self.fn, grid_dim, block_dim, self._debug)
                    manager.run(point, *fake_args)
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)
                    barrier.abort()

            with sim_api.swapped_cuda_module(self.fn, fake_cuda):
                blocks = [
                    threading.Thread(target=run_block, args=(p,)) for p in np.ndindex(*grid_dim)
                ]
                for b in blocks:
                    b.start()
                for b in blocks:
                    b.join()
            if errors:
                raise errors[0]
            for wb in write_back:
                wb()

    monkeypatch.setattr(sim_kernel.FakeCUDAKernel, "__call__", launch)
    monkeypatch.setattr(sim_api.GridGroup, "sync", lambda self: grid_barrier["now"].wait())
    monkeypatch.setattr(ks, "_SIMULATOR", False)  # let the launcher take blocks > 1
    monkeypatch.setattr(ks, "_device_key", lambda: 0)


@pytest.mark.parametrize(
    "cell, L, use_table, N, T, H, E, V, threads, blocks",
    [
        ("lstm", 2, False, 5, 2, 4, 4, 9, 32, 3),  # N = 5: two passes of 4 streams
        ("gru", 2, True, 3, 2, 4, 3, 1, 32, 3),  # V = 1: two blocks without a vocabulary row
        ("rnn", 1, False, 2, 2, 7, 5, 70, 64, 2),
    ],
)
def test_stream_step_on_several_blocks(
    concurrent_blocks, cell, L, use_table, N, T, H, E, V, threads, blocks
):
    check_step(cell, L, use_table, N, T, H, E, V, 3.0, 11, (threads, blocks))


@pytest.mark.skipif(SIMULATOR, reason="a GPU-sized model: the simulator would take hours")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("use_table", [False, True])
def test_stream_step_model_sized(cell, use_table):
    """The default launch shape on a 2 x 650 model, V = 10000 (the benchmark's shape)."""
    check_step(cell, 2, use_table, 3, 2, 650, 650, 10000, 1.0, 7, (None, None))


def test_stream_cells_match_cpu():
    assert ks.STREAM_CELLS == kc.STREAM_CELLS


def tiny_args():
    """An rnn with L = N = T = H = E = V = 1."""
    w = make_model(np.random.default_rng(0), "rnn", 1, 1, 1, 1, 1.0)
    state = np.zeros((1, 1, 1), np.float32)
    return stream_args(
        "rnn", np.zeros((1, 1), np.int64), w, np.empty((0, 1), np.float32), state, state
    )


@pytest.mark.parametrize("threads", [0, 16, 48, 2048])
def test_bad_thread_counts_are_refused(threads):
    args = tiny_args()
    with pytest.raises(ValueError, match="multiple of 32"):
        ks.stream_step(*args, threads=threads)


@pytest.mark.skipif(not SIMULATOR, reason="only the simulator limits the grid to one block")
def test_simulator_refuses_several_blocks():
    args = tiny_args()
    with pytest.raises(ValueError, match="simulator"):
        ks.stream_step(*args, threads=32, blocks=2)
