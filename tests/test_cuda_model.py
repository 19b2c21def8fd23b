"""The whole model on the CUDA backend against the CPU backend: log-probabilities, scores,
gradients, carried state, training, streams, StreamBatch and scoring; and how a backend
is chosen (``backend=``, "auto", $RNNLM_BACKEND) and refused where CUDA cannot run.

Runs on a GPU, or in numba's simulator (the conftest turns it on unless
RNNLM_TEST_CUDA_DEVICE=1), where every launch is kept small with ``small_launches``.

Tolerances: both backends compute in float32 and differ only in the order of their sums
(tiled products, tree reductions) and in exp/tanh (a polynomial on the CPU, libdevice on
the GPU, both within a few ulps). Each agrees with the float64 oracle to the bounds of
test_model.py (1e-4 for log-probabilities, 1e-3 for gradients, normwise, with at most
4e-6 and 4e-5 seen there), so the two agree to twice those; the sizes here are smaller
than test_model.py's and the errors seen are ~1e-7.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import config, cuda

import rnnlm_engine.kernels.cuda as kc
from rnnlm_engine import BackendError, Model, ModelConfig, load, oracle
from rnnlm_engine.backend import get_backend
from rnnlm_engine.stream import StreamBatch
from rnnlm_engine.train import TrainConfig, train
from rnnlm_engine.vocab import Vocabulary

pytestmark = [
    pytest.mark.skipif(
        not cuda.is_available(),
        reason="numba.cuda finds no GPU (set NUMBA_ENABLE_CUDASIM=1 to run on the simulator)",
    ),
    pytest.mark.usefixtures("cuda_simulator_fixes", "small_launches"),
]

LOGPROB_TOL = 2e-4
GRAD_TOL = 2e-3
TEXT = "the cat sat on the mat .\na dog ran to the cat .\nthe mat was red .\n" * 3


@pytest.fixture(scope="module")
def small_launches():
    if config.ENABLE_CUDASIM:
        with kc.small_launches():
            yield
    else:
        yield


def err(got, want) -> float:
    got, want = np.asarray(kc.to_host(got), np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    return oracle.normwise_error(got, want)


def pair(cell: str, tied=False, layers=2, vocab=None, seed=0, residual=False):
    """The same weights on both backends."""
    V = len(vocab) if vocab is not None else 11
    H = 6
    cfg = ModelConfig(cell, V, H if tied else 5, H, layers, tied=tied, residual=residual)
    rng = np.random.default_rng(seed)
    sd = {
        n: rng.uniform(-0.6, 0.6, s).astype(np.float32) for n, s in cfg.parameter_shapes().items()
    }
    if tied:
        sd["decoder.weight"] = sd["encoder.weight"]
    kw = dict(cell=cell, tied=tied, vocab=vocab, residual=residual)
    return Model.from_state_dict(sd, backend="cpu", **kw), Model.from_state_dict(
        sd, backend="cuda", **kw
    )


@pytest.mark.parametrize(
    "cell,tied,residual",
    # residual: layer 1 only (E != H), and both layers (tied: E == H)
    [("lstm", False, False), ("gru", True, False), ("rnn", False, False),
     ("lstm", False, True), ("gru", True, True)],
)  # fmt: skip
def test_passes_equal_the_cpu_backend(cell, tied, residual):
    cpu, gpu = pair(cell, tied, residual=residual)
    assert gpu.backend == "cuda" and cpu.backend == "cpu"
    rng = np.random.default_rng(1)
    T, B = 3, 2
    ids, tg = rng.integers(0, 11, (T, B)), rng.integers(0, 11, (T, B))

    (a, sa), (b, sb) = cpu.forward(ids), gpu.forward(ids)
    assert isinstance(b, np.ndarray)  # log-probabilities come back to the host
    assert err(b, a) < LOGPROB_TOL
    assert err(sb.h, sa.h) < LOGPROB_TOL

    # the state stays on the device and is carried into the next window
    assert kc.is_array(sb.h)
    (a2, _), (b2, _) = cpu.token_logprobs(ids, tg, sa), gpu.token_logprobs(ids, tg, sb)
    assert err(b2, a2) < LOGPROB_TOL

    masks = cpu.dropout_masks(T, B, 0.3, np.random.default_rng(2))
    la, ga, _ = cpu.loss_and_grad(ids, tg, sa, masks)
    lb, gb, _ = gpu.loss_and_grad(ids, tg, sb, masks)
    assert abs(la - lb) < LOGPROB_TOL * max(1.0, abs(la))
    assert set(ga) == set(gb)
    for name in ga:
        assert err(gb[name], ga[name]) < GRAD_TOL, name


def test_a_device_state_is_checked_like_a_host_state():
    cpu, gpu = pair("lstm")
    ids = np.array([[1], [2]])
    _, state = gpu.forward(ids)
    bad = kc.to_device(np.full((2, 1, 6), np.nan, np.float32))
    with pytest.raises(Exception, match="NaN"):
        gpu.forward(ids, (bad, state.c))
    with pytest.raises(Exception, match="shape"):
        gpu.forward(ids, (kc.to_device(np.zeros((2, 3, 6), np.float32)), state.c))


@pytest.fixture
def device_reshape_never_copies(monkeypatch):
    """In the simulator, a device array's reshape that needs a copy raises as a real
    DeviceNDArray's does ("operation requires copying") instead of silently copying."""
    if config.ENABLE_CUDASIM:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        def reshape(self, *args, **kwargs):
            out = self._ary.reshape(*args, **kwargs)
            if self._ary.size and not np.shares_memory(out, self._ary):
                raise NotImplementedError("operation requires copying")
            return FakeCUDAArray(out)

        monkeypatch.setattr(FakeCUDAArray, "reshape", reshape)


def test_a_device_state_may_be_a_slice_or_h_alone(device_reshape_never_copies):
    cpu, gpu = pair("lstm")
    ids = np.array([[1, 2, 3]])
    _, s = gpu.forward(ids)
    # one stream's state out of a batch's: a strided view, which a device array cannot
    # flatten without a copy
    (b, sb), (a, sa) = (
        gpu.forward(ids[:, 1:2], (s.h[:, 1:2], s.c[:, 1:2])),
        cpu.forward(ids[:, 1:2], (kc.to_host(s.h)[:, 1:2], kc.to_host(s.c)[:, 1:2])),
    )
    assert err(b, a) < LOGPROB_TOL and err(sb.h, sa.h) < LOGPROB_TOL
    # a gru's state carried as the bare h array the previous call returned, as on the CPU
    cpu, gpu = pair("gru", layers=1)
    (_, sa), (_, sb) = cpu.forward(ids), gpu.forward(ids)
    (a, _), (b, _) = cpu.forward(ids, sa.h), gpu.forward(ids, sb.h)
    assert err(b, a) < LOGPROB_TOL


def test_a_roll_back_restores_weights_and_moments_on_the_device(monkeypatch):
    """train's in-memory snapshot and roll back, on device arrays, with no host copies."""
    from rnnlm_engine.model import State
    from rnnlm_engine.optim import Adam
    from rnnlm_engine.train import _Run

    _, gpu = pair("gru", layers=1)
    opt = Adam(kc, 0.01, gpu.config.parameter_shapes())
    _, hidden = gpu.forward(np.array([[1]]))
    run = _Run(gpu, opt, np.random.default_rng(0), State(hidden.h), 1, 3, 9.0, 0, [], 0.0)
    before = gpu.state_dict()
    _, grads, _ = gpu.loss_and_grad(np.array([[1]]), np.array([[2]]))
    good = run.snapshot()
    gpu._apply_update(lambda p: opt.step(p, grads))
    opt.lr = 0.5
    assert err(gpu.state_dict()["decoder.bias"], before["decoder.bias"]) > 0
    # everything stays on the device: converting a device array to numpy is refused
    monkeypatch.setattr(kc, "to_host", lambda a: pytest.fail("copied to the host"))
    monkeypatch.setattr(np, "asarray", lambda *a, **k: pytest.fail("np.asarray"))
    run.restore(good)
    monkeypatch.undo()
    assert all(np.array_equal(gpu.state_dict()[n], w) for n, w in before.items())
    assert opt.steps == 0 and opt.lr == 0.5 and run.window == 3
    assert all(not np.any(kc.to_host(m)) for m in opt.m.values())


@pytest.mark.parametrize("residual", [False, True])
def test_streams_and_stream_batch_equal_the_cpu_backend(residual):
    cpu, gpu = pair("lstm", tied=residual, residual=residual)
    sc, sg = cpu.stream(), gpu.stream()
    assert err(sg.feed([1, 2, 3]), sc.feed([1, 2, 3])) < LOGPROB_TOL
    assert err(sg.feed(4), sc.feed(4)) < LOGPROB_TOL
    assert [t for t, _ in sg.top(3)] == [t for t, _ in sc.top(3)]

    # a snapshot is host data: one taken on the GPU continues on the CPU, and back
    other = cpu.stream()
    other.restore(sg.snapshot().to_bytes())
    back = gpu.stream()
    back.restore(sc.snapshot())
    want = sc.feed(5)
    assert err(other.feed(5), want) < LOGPROB_TOL
    assert err(back.feed(5), want) < LOGPROB_TOL

    assert StreamBatch(gpu).blas_from > 1 << 40  # cuda: the streaming kernel by default
    for blas_from in (2, 32):  # the BLAS path (batched forward) and the streaming kernel
        batch = StreamBatch(gpu, blas_from=blas_from)
        streams = [batch.stream() for _ in range(3)]
        streams[1].feed([7, 8])
        solo = cpu.stream()
        solo.feed([7, 8])
        out = batch.step(list(zip(streams, [1, 2, 3], strict=True)))
        refs = [cpu.stream().feed(1), solo.feed(2), cpu.stream().feed(3)]
        for got, want in zip(out, refs, strict=True):
            assert err(got, want) < LOGPROB_TOL
        assert err(streams[1].feed(4), solo.feed(4)) < LOGPROB_TOL


def test_generation_samples_on_the_device():
    cpu, gpu = pair("lstm")
    # top_k=1 is the argmax on either backend: the same tokens
    greedy = list(gpu.stream().generate([1], max_tokens=5, top_k=1, seed=0))
    assert greedy == list(cpu.stream().generate([1], max_tokens=5, top_k=1, seed=0))
    # the same seed, the same tokens; the stream then reads like any other
    s1, s2 = gpu.stream(), gpu.stream()
    a = list(s1.generate([2, 3], max_tokens=6, temperature=1.5, top_p=0.9, seed=7))
    b = list(s2.generate([2, 3], max_tokens=6, temperature=1.5, top_p=0.9, seed=7))
    assert a == b and all(0 <= t < 11 for t in a)
    assert s1.tokens == (2, 3, *a)
    replay = cpu.stream()
    assert err(s1.feed(4), replay.feed([2, 3, *a, 4])) < LOGPROB_TOL
    assert abs(sum(p for _, p in s2.top(11)) - 1.0) < 1e-5


def test_scoring_equals_the_cpu_backend():
    vocab = Vocabulary.build(TEXT, "word")
    cpu, gpu = pair("gru", vocab=vocab)
    lines = TEXT.splitlines()[:4]
    for mode in ("sentence", "corpus"):
        want = list(cpu.score(lines, mode=mode, batch_size=3))
        got = list(gpu.score(lines, mode=mode, batch_size=3))
        assert [g.tokens for g in got] == [w.tokens for w in want]
        assert err([g.logprob for g in got], [w.logprob for w in want]) < LOGPROB_TOL


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_on_cuda_ends_with_the_cpu_weights(tmp_path, optimizer):
    vocab = Vocabulary.build(TEXT, "char")
    ids = vocab.encode(TEXT)
    cfg = TrainConfig(
        cell="lstm", emb_size=4, hidden_size=5, num_layers=1, optimizer=optimizer,
        lr=0.5 if optimizer == "sgd" else 0.01, clip=0.5, epochs=1, batch_size=3, bptt=6,
        eval_batch_size=2, seed=4, checkpoint_every=0.0, dropout=0.2,
    )  # fmt: skip
    train_ids, valid_ids = ids[:100], ids[100:140]
    runs = {}
    for backend in ("cpu", "cuda"):
        out = tmp_path / f"{backend}.rnnlm"
        result = train(train_ids, valid_ids, vocab, cfg, out, checkpoint=False, backend=backend)
        assert result.stopped == "done"
        runs[backend] = (result, out)
    a, b = load(runs["cpu"][1]), load(runs["cuda"][1])
    for name, w in a.state_dict().items():
        # a few SGD or Adam steps move weights by lr * (gradient within GRAD_TOL)
        assert err(b.state_dict()[name], w) < GRAD_TOL, name
    loss = runs["cpu"][0].best_valid_loss  # a mean of log-probabilities: LOGPROB_TOL
    assert abs(loss - runs["cuda"][0].best_valid_loss) < LOGPROB_TOL * max(1.0, loss)


def test_decode_xent_in_row_blocks_equals_the_cpu():
    import rnnlm_engine.kernels.cpu as kcpu

    rng = np.random.default_rng(3)
    N, H, V = 7, 4, 9
    top, w, bias = (rng.uniform(-1, 1, s).astype(np.float32) for s in ((N, H), (V, H), (V,)))
    targets = rng.integers(0, V, N)
    want = np.full(N, np.nan, np.float32)
    kcpu.decode_xent(top, w, bias, targets, want, lambda n, s: np.empty(s, np.float32))
    got = kc.to_device(np.full(N, np.nan, np.float32))
    work = {}
    kc.decode_xent(
        *map(kc.to_device, (top, w, bias, targets)), got,
        lambda n, s: work.setdefault((n, s), kc.empty(s)), max_rows=3,
    )  # fmt: skip
    assert err(got, want) < LOGPROB_TOL  # rows 0-2, 3-5 and 6 in three blocks


def test_the_cuda_backend_has_every_name_of_the_cpu_backend():
    import rnnlm_engine.kernels.cpu as kcpu

    missing = set(kcpu.__all__) - set(kc.__all__)
    assert not missing
    assert all(hasattr(kc, name) for name in kc.__all__)
    assert kc.STREAM_CELLS == kcpu.STREAM_CELLS and kc.ACTS_PER_HIDDEN == kcpu.ACTS_PER_HIDDEN


def test_backend_choice(monkeypatch):
    assert get_backend("cuda") is kc
    assert get_backend("cpu").NAME == "cpu"
    monkeypatch.setenv("RNNLM_BACKEND", "cuda")
    assert get_backend(None) is kc
    with pytest.raises(BackendError, match="unknown backend 'tpu'"):
        get_backend("tpu")
    # where CUDA cannot run: cuda is refused with the reason, auto falls back to the CPU
    monkeypatch.setattr(kc, "unavailable_reason", lambda: "CudaSupportError: no driver")
    with pytest.raises(BackendError, match="cannot run here: CudaSupportError: no driver"):
        get_backend("cuda")
    with pytest.raises(BackendError, match="no driver"):
        Model.from_state_dict(pair("rnn")[0].state_dict(), cell="rnn", backend="cuda")
    assert get_backend("auto").NAME == "cpu"


def test_a_gpu_without_nvvm_is_refused(monkeypatch):
    """A driver without libNVVM could launch no kernel: cuda is refused naming NVVM (not
    left to fail at the first launch), and auto takes the CPU."""
    monkeypatch.setattr(kc, "_SIMULATOR", False)
    monkeypatch.setattr(kc.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kc, "_nvvm_available", lambda: False)
    with pytest.raises(BackendError, match="cannot run here: NvvmSupportError: .* no libNVVM"):
        get_backend("cuda")
    assert get_backend("auto").NAME == "cpu"


def test_a_numba_cuda_that_needs_numpys_row_stack_is_refused(monkeypatch):
    """numba-cuda 0.30.4 with numpy 2.5 (seen on a GPU machine) fails at the first kernel
    compilation, deep inside numba: the backend refuses it when chosen, naming numpy, and
    auto takes the CPU; any other failure of that module is refused with its own text.
    Where numpy has row_stack nothing is imported to check."""
    imported = []
    real_import = kc.importlib.import_module

    missing = ["row_stack"]

    def import_module(name):
        if name != "numba.cuda.np.arrayobj":  # get_backend's own import of the backend
            return real_import(name)
        imported.append(name)
        raise AttributeError(f"module 'numpy' has no attribute '{missing[0]}'")

    monkeypatch.setattr(kc.importlib, "import_module", import_module)
    if not hasattr(np, "row_stack"):
        monkeypatch.setattr(np, "row_stack", np.vstack, raising=False)
    assert kc._numpy_mismatch() is None and imported == []
    monkeypatch.delattr(np, "row_stack")
    with pytest.raises(BackendError, match=r"does not work with numpy .*numpy<2\.5"):
        get_backend("cuda")
    assert imported == ["numba.cuda.np.arrayobj"]
    assert get_backend("auto").NAME == "cpu"

    missing[0] = "something_else"
    with pytest.raises(BackendError, match="numpy support fails to load: .*something_else"):
        get_backend("cuda")


def test_numbas_grid_size_warning_is_filtered_in_both_spellings():
    """numba-cuda 0.30 (on a GPU machine) starts its under-utilization warning with a
    terminal colour code; the filter matches it with and without."""
    import re
    import warnings

    for message in (
        "Grid size 6 will likely result in GPU under-utilization due to low occupancy.",
        "\x1b[1mGrid size 82 will likely result in GPU under-utilization due to low "
        "occupancy.\x1b[0m",
    ):
        assert re.match(kc.UNDER_UTILIZATION, message, re.IGNORECASE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings(
            "ignore", message=kc.UNDER_UTILIZATION, category=kc.NumbaPerformanceWarning
        )
        warnings.warn(
            kc.NumbaPerformanceWarning("\x1b[1mGrid size 6 will likely result in GPU "
                                       "under-utilization due to low occupancy.\x1b[0m"),
            stacklevel=1,
        )  # fmt: skip
    assert caught == []


def test_without_a_gpu_cuda_is_refused_in_one_line():
    """A fresh process with the simulator off: on this GPU-less machine asking for cuda
    raises BackendError naming the reason; on a GPU machine the backend loads."""
    import os
    import subprocess
    import sys

    code = (
        "from rnnlm_engine.backend import get_backend\n"
        "from rnnlm_engine.errors import BackendError\n"
        "try:\n    print(get_backend('cuda').NAME)\n"
        "except BackendError as e:\n    print('refused:', e)\n"
        "print(get_backend('auto').NAME)\n"
    )
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.strip().splitlines()
    if first == "cuda":
        assert second == "cuda"
    else:
        assert first.startswith("refused: backend 'cuda' cannot run here: ")
        assert second == "cpu"
