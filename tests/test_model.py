"""The whole model: forward, scoring and gradients against the float64 oracle; state carried
across windows; state_dict round trips; every invalid input refused with the right error
before any kernel runs; several threads sharing one model.

Tolerances against the oracle, as normwise relative errors max|ours - oracle| / scale:
1e-4 for log-probabilities (scale max|logprobs|, also for token scores and the loss), 1e-4
for states and 1e-3 for each gradient tensor (scale max|ref|, with floors for the values
float32 cannot resolve, explained where they are used). The engine computes in float32
(unit roundoff 6e-8) with a polynomial exp of relative error < 2e-7; rounding errors grow
through the T <= 20 steps of the recurrence and the sums over T * B positions. Over 6000
random draws of the sizes below we measured at most 4e-6 for log-probabilities and 4e-5
for gradients, so the bounds keep a margin of 25x or more, while a real mistake (a wrong
gate, a missing bias, a dropped path through time) makes errors of order 1.

Recurrent matrices are drawn in +-scale/sqrt(H) (``scale`` times PyTorch's default bound),
the others in +-scale: with W_hh entries of +-3 unnormalised an Elman RNN is chaotic, and
1e-7 perturbations of the weights change the float64 oracle's own log-probabilities by
0.1-1 within 20 steps, so no float32 implementation could match it. scale = 3 still drives
the gates deep into saturation through the input weights, embeddings and biases.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import rnnlm_engine.kernels.cpu as cpu_kernels
from rnnlm_engine import (
    BackendError,
    ConfigError,
    InputError,
    Model,
    ModelConfig,
    ModelFileError,
    ParameterError,
    RnnlmError,
    State,
    VocabularyError,
    oracle,
)
from rnnlm_engine.backend import get_backend
from rnnlm_engine.config import CELLS
from rnnlm_engine.streaming import streaming_weights

LOGPROB_TOL = 1e-4
STATE_TOL = 1e-4
GRAD_TOL = 1e-3
# Two windows against one: the same float32 operations, except that BLAS may block the input
# products over T * B rows differently, and a dot product summed in another order differs by
# a few roundings of the sum of |terms| (not of its result). With weights up to 1 and E <= 24
# that is ~1e-6 absolute, so states are compared to 1e-5 relative to max(max|ref|, 1) (h is
# in [-1, 1]), and this test draws scales up to 1 only (at 3 the terms reach 50).
CARRY_TOL = 1e-5
CARRY_STATE_FLOOR = 1.0
# A state whose entries are all small (H = B = 1 and a pre-activation near 0, summed from
# terms of size ~10 at scale 3) is known in float32 only to ~1e-6 absolute, however small it
# is; states are compared relative to max(max|ref|, STATE_FLOOR). h lies in [-1, 1].
STATE_FLOOR = 0.1

CELL_TIED = [(cell, tied) for cell in CELLS for tied in (False, True)]


# ---------------------------------------------------------------------------- helpers


normwise = oracle.normwise_error


def random_state_dict(config: ModelConfig, rng: np.random.Generator, scale=0.5, outlier=False):
    """Float32 parameters, uniform in +-scale (recurrent matrices +-scale/sqrt(H)).

    outlier: one token gets a decoder bias of +8, so it takes most of the probability and
    the others' log-probabilities are far from uniform.
    """
    H = config.hidden_size
    sd = {}
    for name, shape in config.parameter_shapes().items():
        bound = scale / np.sqrt(H) if "weight_hh" in name else scale
        sd[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    if outlier:
        sd["decoder.bias"][rng.integers(config.vocab_size)] += 8.0
    return sd


def random_state(config: ModelConfig, batch: int, rng: np.random.Generator) -> State:
    shape = (config.num_layers, batch, config.hidden_size)
    h = rng.uniform(-0.9, 0.9, shape).astype(np.float32)
    c = rng.uniform(-2.0, 2.0, shape).astype(np.float32) if config.cell == "lstm" else None
    return State(h, c)


def state64(state: State | None):
    """The oracle's form of a state: float64 (h, c or None)."""
    if state is None:
        return None
    return (
        state.h.astype(np.float64),
        None if state.c is None else state.c.astype(np.float64),
    )


def assert_state_close(ours: State, ref, tol, what="", floor=None):
    """Normwise relative error of h and c, relative to max(max|ref|, floor)."""
    floor = STATE_FLOOR if floor is None else floor
    h_ref, c_ref = ref
    assert ours.h.dtype == np.float32
    for name, a, b in (("h", ours.h, h_ref), ("c", ours.c, c_ref)):
        if b is None:
            assert a is None, f"{what} {name}: expected no {name}"
            continue
        assert a.shape == b.shape, f"{what} {name}: shape {a.shape} != {b.shape}"
        scale = max(np.abs(b).max(), floor)
        err = np.abs(a.astype(np.float64) - b).max() / scale
        assert err < tol, f"{what} {name}: normwise error {err:.2e} (max |ref| {scale:.2e})"


@dataclass(frozen=True)
class Sizes:
    layers: int
    batch: int
    hidden: int
    emb: int  # ignored for tied models, whose emb is hidden
    steps: int
    vocab: int
    scale: float
    seed: int
    nonzero_state: bool
    outlier: bool


sizes_strategy = st.builds(
    Sizes,
    layers=st.integers(1, 3),
    batch=st.integers(1, 6),
    hidden=st.integers(1, 24),
    emb=st.integers(1, 24),
    steps=st.integers(1, 20),
    vocab=st.integers(2, 60),
    scale=st.sampled_from([0.1, 0.5, 1.0, 3.0]),
    seed=st.integers(0, 2**32 - 1),
    nonzero_state=st.booleans(),
    outlier=st.booleans(),
)

# smallest everything; and the largest sizes with saturating weights
SMALLEST = Sizes(1, 1, 1, 1, 1, 2, 0.5, 0, True, False)
LARGEST_SATURATED = Sizes(3, 6, 24, 23, 20, 60, 3.0, 1, True, True)


def make_case(cell: str, tied: bool, s: Sizes):
    """(state_dict, model, inputs, targets, initial state or None) for one drawn example."""
    rng = np.random.default_rng(s.seed)
    emb = s.hidden if tied else s.emb
    config = ModelConfig(cell, s.vocab, emb, s.hidden, s.layers, tied)
    sd = random_state_dict(config, rng, s.scale, s.outlier)
    model = Model.from_state_dict(sd, cell=cell, tied=tied)
    assert model.config == config
    inputs = rng.integers(0, s.vocab, (s.steps, s.batch))
    targets = rng.integers(0, s.vocab, (s.steps, s.batch))
    state = random_state(config, s.batch, rng) if s.nonzero_state else None
    return sd, model, inputs, targets, state


@cache
def small_model(cell: str, tied: bool = False, layers: int = 2) -> Model:
    """A small shared model (V 11, E 4 or 5, H 5): models are immutable, so tests share them."""
    H = 5
    config = ModelConfig(cell, 11, H if tied else 4, H, layers, tied)
    sd = random_state_dict(config, np.random.default_rng(CELLS.index(cell)))
    return Model.from_state_dict(sd, cell=cell, tied=tied)


# ---------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize(("cell", "tied"), CELL_TIED)
@given(s=sizes_strategy)
@example(s=SMALLEST)
@example(s=LARGEST_SATURATED)
def test_forward_and_token_logprobs_match_oracle(cell, tied, s):
    sd, model, inputs, targets, state = make_case(cell, tied, s)
    ref_lp, ref_state = oracle.model_forward(sd, model.config, inputs, state64(state))

    logprobs, new_state = model.forward(inputs, state)
    assert logprobs.shape == (s.steps, s.batch, s.vocab) and logprobs.dtype == np.float32
    err = normwise(logprobs, ref_lp)
    assert err < LOGPROB_TOL, f"logprobs: normwise error {err:.2e}"
    assert_state_close(new_state, ref_state, STATE_TOL, "forward")

    scores, score_state = model.token_logprobs(inputs, targets, state)
    ref_scores = np.take_along_axis(ref_lp, targets[..., None], axis=2)[..., 0]
    assert scores.shape == (s.steps, s.batch) and scores.dtype == np.float32
    # relative to the largest log-probability of the whole matrix, as for forward: a
    # near-certain token's log-prob (~ -1e-4) is the difference of two numbers of that size
    err = np.abs(scores - ref_scores).max() / np.abs(ref_lp).max()
    assert err < LOGPROB_TOL, f"token_logprobs: normwise error {err:.2e}"
    assert_state_close(score_state, ref_state, STATE_TOL, "token_logprobs")


@pytest.mark.parametrize(("cell", "tied"), CELL_TIED)
@given(s=sizes_strategy)
@example(s=SMALLEST)
@example(s=LARGEST_SATURATED)
def test_loss_and_grad_match_oracle(cell, tied, s):
    sd, model, inputs, targets, state = make_case(cell, tied, s)
    ref_loss, ref_grads, ref_state = oracle.model_loss_and_grad(
        sd, model.config, inputs, targets, state64(state)
    )
    ref_lp, _ = oracle.model_forward(sd, model.config, inputs, state64(state))
    loss, grads, new_state = model.loss_and_grad(inputs, targets, state)
    assert isinstance(loss, float)
    # the loss is the mean of -logprobs, so it inherits their normwise bound (relative to
    # the largest log-probability: a near-zero loss is a difference of two large numbers)
    assert abs(loss - ref_loss) <= LOGPROB_TOL * np.abs(ref_lp).max()
    # Every gradient is linear in the residuals softmax - onehot(target), which float32
    # holds only to ~1e-6 absolute (p - 1 cancels for a near-certain target). When every
    # prediction is nearly certain (largest residual r small, loss near 0), the gradients
    # are O(r) and their relative error grows like 1e-6 / r: scale the bound by 0.01 / r.
    onehot = np.eye(s.vocab)[targets]
    r = np.abs(np.exp(ref_lp) - onehot).max()
    # Capped at 50x (r >= 2e-4): past that a test would accept anything; cases that
    # confident are skipped rather than judged by a bound that cannot fail.
    assume(r >= 2e-4)
    grad_tol = GRAD_TOL * max(1.0, 0.01 / r)
    # A gradient that reaches a tensor only through saturated units is tiny (1e-10 of the
    # largest, say), and float32 cannot resolve it: 1 - h^2 and s (1 - s) are computed from
    # h and s rounded to float32, so with h = 1 - 1e-9 they are 0 or 6e-8 (PyTorch does the
    # same). Such gradients are known only to ~1e-7 of the largest gradient G (we measured
    # at most 7e-7 over 6000 draws): every tensor's scale is at least 0.01 G.
    G = max(np.abs(ref).max() for ref in ref_grads.values())
    assert list(grads) == list(model.config.parameter_shapes())
    for name, ref in ref_grads.items():
        assert grads[name].shape == ref.shape and grads[name].dtype == np.float32, name
        scale = max(np.abs(ref).max(), 0.01 * G)
        err = np.abs(grads[name].astype(np.float64) - ref).max() / scale
        assert err < grad_tol, (
            f"{name}: normwise error {err:.2e} (largest residual {r:.2e}, largest gradient "
            f"{G:.2e}, this tensor's {np.abs(ref).max():.2e})"
        )
    assert_state_close(new_state, ref_state, STATE_TOL, "loss_and_grad")


# ---------------------------------------------------------------------------- consistency


carry_sizes = sizes_strategy.map(
    lambda s: replace(s, steps=max(s.steps, 2), scale=min(s.scale, 1.0))
)


@pytest.mark.parametrize("cell", CELLS)
@given(s=carry_sizes, data=st.data())
def test_two_windows_equal_one_long_window(cell, s, data):
    _, model, inputs, targets, state = make_case(cell, False, s)
    split = data.draw(st.integers(1, s.steps - 1), label="split")

    whole, whole_state = model.forward(inputs, state)
    first, mid_state = model.forward(inputs[:split], state)
    second, end_state = model.forward(inputs[split:], mid_state)
    err = normwise(np.concatenate([first, second]), whole)
    assert err < CARRY_TOL, f"logprobs: normwise error {err:.2e}"
    assert_state_close(end_state, whole_state, CARRY_TOL, "carried", CARRY_STATE_FLOOR)

    scores, score_state = model.token_logprobs(inputs, targets, state)
    a, mid = model.token_logprobs(inputs[:split], targets[:split], state)
    b, end = model.token_logprobs(inputs[split:], targets[split:], mid)
    # relative to the largest log-probability (see test_forward_and_token_logprobs_...)
    err = np.abs(np.concatenate([a, b]) - scores).max() / np.abs(whole).max()
    assert err < CARRY_TOL, f"token_logprobs: normwise error {err:.2e}"
    assert_state_close(end, score_state, CARRY_TOL, "carried scoring", CARRY_STATE_FLOOR)
    # loss_and_grad's final state is the forward's
    _, _, grad_state = model.loss_and_grad(inputs, targets, state)
    assert_state_close(grad_state, whole_state, CARRY_TOL, "loss_and_grad", CARRY_STATE_FLOOR)


@pytest.mark.parametrize("cell", CELLS)
@given(s=sizes_strategy)
def test_token_logprobs_is_forward_gathered_at_targets(cell, s):
    _, model, inputs, targets, state = make_case(cell, False, s)
    logprobs, fwd_state = model.forward(inputs, state)
    scores, score_state = model.token_logprobs(inputs, targets, state)
    gathered = np.take_along_axis(logprobs, targets[..., None], axis=2)[..., 0]
    # scoring forms the logits in another product order (blocks of W times top^T) and
    # sums blockwise: a few float32 roundings (u = 6e-8) of the largest log-prob apart
    np.testing.assert_allclose(scores, gathered, rtol=1e-6, atol=1e-6 * np.abs(logprobs).max())
    np.testing.assert_array_equal(score_state.h, fwd_state.h)
    # the mean of the scores is minus the training loss (computed from layer 0's input
    # product rather than the forward passes' table: roundings of the logits apart)
    loss, _, _ = model.loss_and_grad(inputs, targets, state)
    assert -float(np.mean(scores, dtype=np.float64)) == pytest.approx(
        loss, rel=1e-5, abs=1e-6 * float(np.abs(logprobs).max())
    )


@pytest.mark.parametrize("cell", CELLS)
def test_passes_do_not_modify_their_arguments(cell):
    model = small_model(cell)
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 11, (6, 3))
    targets = rng.integers(0, 11, (6, 3))
    state = random_state(model.config, 3, rng)
    arguments = [inputs, targets, *(a for a in state if a is not None)]
    copies = [a.copy() for a in arguments]
    model.forward(inputs, state)
    model.token_logprobs(inputs, targets, state)
    _, grads, _ = model.loss_and_grad(inputs, targets, state)
    for before, after in zip(copies, arguments, strict=True):
        np.testing.assert_array_equal(before, after)
    # the returned gradients are the caller's: changing them changes no later result
    for g in grads.values():
        g[...] = 1e6
    _, grads2, _ = model.loss_and_grad(inputs, targets, state)
    assert all(np.abs(g).max() < 1e3 for g in grads2.values())


def test_zero_state_and_none_are_the_same():
    model = small_model("lstm")
    ids = np.array([[1, 2], [3, 4], [5, 6]])
    a, sa = model.forward(ids)
    b, sb = model.forward(ids, model.zero_state(2))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa.h, sb.h)
    np.testing.assert_array_equal(sa.c, sb.c)
    assert model.zero_state(2).h.shape == (2, 2, 5)
    assert small_model("gru").zero_state(1).c is None


# ---------------------------------------------------------------------------- state_dict


@pytest.mark.parametrize(("cell", "tied"), CELL_TIED)
def test_state_dict_round_trip(cell, tied):
    model = small_model(cell, tied)
    sd = model.state_dict()
    expected = set(model.config.parameter_shapes()) | {"decoder.weight"}
    assert set(sd) == expected
    for name, a in sd.items():
        assert a.dtype == np.float32, name
    again = Model.from_state_dict(sd, cell=cell, tied=tied)
    assert again.config == model.config
    sd2 = again.state_dict()
    assert set(sd2) == set(sd)
    for name in sd:
        np.testing.assert_array_equal(sd2[name], sd[name])
    if tied:
        np.testing.assert_array_equal(sd["decoder.weight"], sd["encoder.weight"])
        # and without decoder.weight: a tied model may leave it out
        del sd["decoder.weight"]
        np.testing.assert_array_equal(
            Model.from_state_dict(sd, cell=cell, tied=True).state_dict()["decoder.weight"],
            sd["encoder.weight"],
        )


def test_state_dict_returns_copies_and_the_model_keeps_its_own():
    cell = "gru"
    model = small_model(cell)
    ids = np.array([[1, 2], [3, 4]])
    before, _ = model.forward(ids)

    sd = model.state_dict()
    for a in sd.values():
        assert a.flags.writeable
        a[...] = 0.0  # mutating the returned copies ...
    after, _ = model.forward(ids)
    np.testing.assert_array_equal(before, after)  # ... changes nothing in the model
    assert np.abs(model.state_dict()["encoder.weight"]).max() > 0

    # the model copies what it was built from: later changes to the caller's arrays are
    # not seen
    source = random_state_dict(model.config, np.random.default_rng(5))
    built = Model.from_state_dict(source, cell=cell)
    ref, _ = built.forward(ids)
    for a in source.values():
        a += 1.0
    np.testing.assert_array_equal(built.forward(ids)[0], ref)

    # float64 weights are stored as float32
    source64 = {k: v.astype(np.float64) + 1e-9 for k, v in source.items()}
    sd64 = Model.from_state_dict(source64, cell=cell).state_dict()
    for k, v in sd64.items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, source64[k].astype(np.float32))


def test_model_parameters_are_read_only():
    # the model's own arrays (private: no public accessor hands them out) cannot be written,
    # which is what makes a Model safe to share between threads
    model = small_model("lstm")
    for name, a in model._params.items():
        assert not a.flags.writeable, name
        with pytest.raises(ValueError, match="read-only"):
            a[...] = 0.0


def test_cpu_weights_start_on_a_cache_line():
    """The parameters and the streaming weights are 64-byte aligned on the CPU (numpy's
    own allocations are 16-byte aligned; the streaming products' vector loads run slower
    across cache lines), and still hold the values given."""
    config = ModelConfig("lstm", 13, 5, 7, 2)
    rng = np.random.default_rng(4)
    shapes = config.parameter_shapes()
    sd = {n: rng.uniform(-1, 1, shape).astype(np.float32) for n, shape in shapes.items()}
    for _ in range(4):  # a fresh model each time: allocations land at different offsets
        model = Model.from_state_dict(sd)
        for name, a in model._params.items():
            assert a.ctypes.data % 64 == 0, name
            np.testing.assert_array_equal(a, sd[name])
        for name, a in streaming_weights(model).items():
            if name not in ("table", "emb") and a.size:
                assert a.ctypes.data % 64 == 0, name
    raw = np.arange(1000 + 32, dtype=np.float32)
    start = (-raw.ctypes.data % 64) // 4 + 4
    misaligned = raw[start : start + 1000]  # 16 bytes past a cache line
    assert misaligned.ctypes.data % 64 == 16
    moved = cpu_kernels.to_device_aligned(misaligned)
    assert moved.ctypes.data % 64 == 0
    np.testing.assert_array_equal(moved, misaligned)
    # plain to_device (states, dropout masks: every call) never copies a C array
    assert cpu_kernels.to_device(misaligned) is misaligned


# ---------------------------------------------------------------------------- errors


@pytest.fixture
def no_kernels(monkeypatch):
    """Every kernel of the CPU backend replaced by a tripwire: errors must come first."""

    def tripwire(*args, **kwargs):
        raise AssertionError("a kernel ran before the input was validated")

    for name in cpu_kernels.__all__:
        if callable(getattr(cpu_kernels, name)):
            monkeypatch.setattr(cpu_kernels, name, tripwire)
    monkeypatch.setattr(cpu_kernels, "CELL_FORWARD", dict.fromkeys(CELLS, tripwire))
    monkeypatch.setattr(cpu_kernels, "CELL_BACKWARD", dict.fromkeys(CELLS, tripwire))


def test_tripwire_catches_a_kernel_call(no_kernels):
    with pytest.raises(AssertionError, match="a kernel ran"):
        small_model("rnn").forward(np.array([[1]]))


def _ids(*shape, value=1):
    return np.full(shape, value, np.int64)


def _h(cell, batch=2, layers=2, hidden=5, dtype=np.float32, fill=0.1):
    return np.full((layers, batch, hidden), fill, dtype)


# (id, cell, call on the model, match); every one raises InputError
INPUT_ERRORS = [
    (
        "negative id",
        "lstm",
        lambda m: m.forward(np.array([[0, 3], [2, -1]])),
        r"ids\[1, 1\] = -1 is outside the vocabulary \[0, 11\)",
    ),
    (
        "id == V",
        "gru",
        lambda m: m.forward(np.array([[0, 11], [2, 3]])),
        r"ids\[0, 1\] = 11 is outside the vocabulary \[0, 11\)",
    ),
    ("huge id", "rnn", lambda m: m.forward(np.array([[2**40]])), r"outside the vocabulary"),
    (
        "float ids",
        "lstm",
        lambda m: m.forward(np.zeros((2, 2))),
        r"integer array; got dtype float64",
    ),
    ("float ids as a list", "rnn", lambda m: m.forward([[1.0, 2.0]]), r"integer array"),
    (
        "bool ids",
        "gru",
        lambda m: m.forward(np.ones((2, 2), bool)),
        r"integer array; got dtype bool",
    ),
    ("string ids", "rnn", lambda m: m.forward([["a", "b"]]), r"integer array"),
    ("ragged ids", "rnn", lambda m: m.forward([[1, 2], [3]]), r"ids must be a \(T, B\)"),
    (
        "1-D ids",
        "lstm",
        lambda m: m.forward(np.array([1, 2, 3])),
        r"1 dimensions.*ids\.reshape\(-1, 1\)",
    ),
    ("3-D ids", "lstm", lambda m: m.forward(_ids(2, 2, 2)), r"got 3 dimensions"),
    ("scalar id", "rnn", lambda m: m.forward(3), r"got 0 dimensions"),
    ("no time steps", "lstm", lambda m: m.forward(_ids(0, 2)), r"empty"),
    ("no sequences", "gru", lambda m: m.forward(_ids(3, 0)), r"empty"),
    (
        "empty inputs for scoring",
        "rnn",
        lambda m: m.token_logprobs(_ids(0, 1), _ids(0, 1)),
        r"inputs is empty",
    ),
    (
        "targets shape mismatch",
        "lstm",
        lambda m: m.loss_and_grad(_ids(3, 2), _ids(2, 2)),
        r"same \(T, B\) shape; got \(3, 2\) and \(2, 2\)",
    ),
    (
        "targets shape mismatch (scoring)",
        "gru",
        lambda m: m.token_logprobs(_ids(3, 2), _ids(3, 1)),
        r"same \(T, B\) shape",
    ),
    (
        "target == V",
        "rnn",
        lambda m: m.loss_and_grad(_ids(2, 2), _ids(2, 2, value=11)),
        r"targets\[0, 0\] = 11 is outside",
    ),
    (
        "negative target (scoring)",
        "gru",
        lambda m: m.token_logprobs(_ids(2, 2), _ids(2, 2, value=-3)),
        r"targets\[0, 0\] = -3 is outside",
    ),
    (
        "float targets",
        "lstm",
        lambda m: m.loss_and_grad(_ids(2, 2), np.zeros((2, 2))),
        r"targets must be a \(T, B\) integer array",
    ),
    (
        "state h wrong hidden",
        "gru",
        lambda m: m.forward(_ids(3, 2), _h("gru", hidden=4)),
        r"state h must have shape \(layers, batch, hidden\) = \(2, 2, 5\); got \(2, 2, 4\)",
    ),
    (
        "state h wrong batch",
        "rnn",
        lambda m: m.forward(_ids(3, 2), _h("rnn", batch=3)),
        r"state h must have shape",
    ),
    (
        "state h wrong layers",
        "rnn",
        lambda m: m.forward(_ids(3, 2), _h("rnn", layers=1)),
        r"state h must have shape",
    ),
    (
        "state c wrong shape",
        "lstm",
        lambda m: m.forward(_ids(3, 2), State(_h("lstm"), _h("lstm", hidden=3))),
        r"state c must have shape",
    ),
    (
        "lstm state missing c",
        "lstm",
        lambda m: m.forward(_ids(3, 2), State(_h("lstm"))),
        r"lstm state needs both h and c",
    ),
    (
        "lstm state as a bare array",
        "lstm",
        lambda m: m.forward(_ids(3, 2), _h("lstm")),
        r"needs both h and c",
    ),
    (
        "gru state with c",
        "gru",
        lambda m: m.forward(_ids(3, 2), State(_h("gru"), _h("gru"))),
        r"gru state has no c",
    ),
    (
        "rnn state with c",
        "rnn",
        lambda m: m.forward(_ids(3, 2), (_h("rnn"), _h("rnn"))),
        r"rnn state has no c",
    ),
    (
        "state as a list",
        "gru",
        lambda m: m.forward(_ids(3, 2), [_h("gru")]),
        r"state must be a State",
    ),
    (
        "state a 3-tuple",
        "lstm",
        lambda m: m.forward(_ids(3, 2), (_h("lstm"), _h("lstm"), _h("lstm"))),
        r"state must be a State",
    ),
    (
        "state h with NaN",
        "rnn",
        lambda m: m.forward(_ids(3, 2), _h("rnn", fill=np.nan)),
        r"state h contains NaN",
    ),
    (
        "state c with inf",
        "lstm",
        lambda m: m.forward(_ids(3, 2), State(_h("lstm"), _h("lstm", fill=np.inf))),
        r"state c contains NaN or infinity",
    ),
    (
        "state float64 beyond float32",
        "gru",
        lambda m: m.forward(_ids(3, 2), _h("gru", dtype=np.float64, fill=1e39)),
        r"state h contains NaN or infinity",
    ),
    (
        "state integer dtype",
        "rnn",
        lambda m: m.forward(_ids(3, 2), _h("rnn", dtype=np.int64, fill=0)),
        r"state h must be floating point; got int64",
    ),
    (
        "state with NaN in loss_and_grad",
        "lstm",
        lambda m: m.loss_and_grad(
            _ids(3, 2), _ids(3, 2), State(_h("lstm"), _h("lstm", fill=np.nan))
        ),
        r"state c contains NaN",
    ),
    (
        "state with NaN in scoring",
        "gru",
        lambda m: m.token_logprobs(_ids(3, 2), _ids(3, 2), _h("gru", fill=np.nan)),
        r"state h contains NaN",
    ),
    ("zero_state(0)", "rnn", lambda m: m.zero_state(0), r"batch must be a positive integer"),
    ("zero_state(True)", "rnn", lambda m: m.zero_state(True), r"batch must be a positive"),
    ("zero_state(2.0)", "rnn", lambda m: m.zero_state(2.0), r"batch must be a positive"),
]


@pytest.mark.parametrize(
    ("cell", "call", "match"),
    [pytest.param(cell, call, match, id=name) for name, cell, call, match in INPUT_ERRORS],
)
def test_invalid_input_raises_input_error(no_kernels, cell, call, match):
    model = small_model(cell)
    with pytest.raises(InputError, match=match) as info:
        call(model)
    assert isinstance(info.value, RnnlmError)


def _sd(cell="lstm", tied=False, layers=2, E=4, H=5, V=11, dtype=np.float32):
    config = ModelConfig(cell, V, H if tied else E, H, layers, tied)
    sd = random_state_dict(config, np.random.default_rng(1))
    return {k: v.astype(dtype) for k, v in sd.items()}


def _with(sd, **changes):
    """A copy of sd with entries replaced (value None deletes); names use __ for dots."""
    out = dict(sd)
    for key, value in changes.items():
        name = key.replace("__", ".")
        if value is None:
            del out[name]
        else:
            out[name] = value
    return out


def _tied_sd():
    sd = _sd("lstm", tied=True)
    sd["decoder.weight"] = sd["encoder.weight"].copy()
    return sd


_OVERFLOW = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
_BASE = _sd()

# (id, error class, kwargs for Model.from_state_dict, match[, pytest mark])
CONSTRUCTION_ERRORS = [
    (
        "missing bias",
        ParameterError,
        dict(state_dict=_with(_BASE, rnn__bias_hh_l1=None)),
        r"missing parameter 'rnn\.bias_hh_l1' \(expected shape \(20,\)\)",
    ),
    (
        "missing decoder.bias",
        ParameterError,
        dict(state_dict=_with(_BASE, decoder__bias=None)),
        r"missing parameter 'decoder\.bias'",
    ),
    (
        "missing decoder.weight (untied)",
        ParameterError,
        dict(state_dict=_with(_BASE, decoder__weight=None)),
        r"missing parameter 'decoder\.weight'",
    ),
    (
        "missing encoder.weight",
        ParameterError,
        dict(state_dict=_with(_BASE, encoder__weight=None)),
        r"no 'encoder\.weight'",
    ),
    (
        "missing weight_hh_l0",
        ParameterError,
        dict(state_dict=_with(_BASE, rnn__weight_hh_l0=None)),
        r"no 'rnn\.weight_hh_l0'",
    ),
    (
        "missing weight_ih_l0",
        ParameterError,
        dict(state_dict=_with(_BASE, rnn__weight_ih_l0=None)),
        r"no 'rnn\.weight_ih_l0'",
    ),
    (
        "half a third layer",
        ParameterError,
        dict(state_dict=_with(_BASE, rnn__weight_ih_l2=np.zeros((20, 5), np.float32))),
        r"missing parameter 'rnn\.weight_hh_l2'",
    ),
    (
        "unknown parameter",
        ParameterError,
        dict(state_dict=_with(_BASE, encoder__scale=np.ones(1, np.float32))),
        r"unexpected parameter\(s\) 'encoder\.scale' for a 2-layer lstm model",
    ),
    (
        "tied decoder.weight with other values",
        ParameterError,
        dict(
            state_dict=_with(_tied_sd(), decoder__weight=_tied_sd()["encoder.weight"] + 1),
            tied=True,
        ),
        r"tied=True but decoder\.weight differs from encoder\.weight",
    ),
    (
        "tied decoder.weight of another shape",
        ParameterError,
        dict(
            state_dict=_with(_tied_sd(), decoder__weight=np.zeros((11, 4), np.float32)), tied=True
        ),
        r"differs from encoder\.weight",
    ),
    (
        "misshapen bias",
        ParameterError,
        dict(state_dict=_with(_BASE, decoder__bias=np.zeros(12, np.float32))),
        r"parameter 'decoder\.bias' must have shape \(11,\); got \(12,\)",
    ),
    (
        "misshapen weight_ih_l1",
        ParameterError,
        dict(state_dict=_with(_BASE, rnn__weight_ih_l1=np.zeros((20, 4), np.float32))),
        r"'rnn\.weight_ih_l1' must have shape \(20, 5\); got \(20, 4\)",
    ),
    (
        "transposed decoder.weight",
        ParameterError,
        dict(state_dict=_with(_BASE, decoder__weight=_BASE["decoder.weight"].T)),
        r"'decoder\.weight' must have shape \(11, 5\); got \(5, 11\)",
    ),
    (
        "1-D encoder.weight",
        ParameterError,
        dict(state_dict=_with(_BASE, encoder__weight=np.zeros(11, np.float32))),
        r"encoder\.weight must be 2-D",
    ),
    (
        "3-D weight_hh_l0",
        ParameterError,
        dict(state_dict=_with(_BASE, rnn__weight_hh_l0=np.zeros((20, 5, 1), np.float32))),
        r"weight_hh_l0 must be 2-D",
    ),
    (
        "integer parameter",
        ParameterError,
        dict(state_dict=_with(_BASE, rnn__bias_ih_l0=np.zeros(20, np.int32))),
        r"parameter 'rnn\.bias_ih_l0' must be floating point; got dtype int32",
    ),
    (
        "bool parameter",
        ParameterError,
        dict(state_dict=_with(_BASE, decoder__bias=np.zeros(11, bool))),
        r"floating point",
    ),
    (
        "string parameter",
        ParameterError,
        dict(state_dict=_with(_BASE, decoder__bias="zeros")),
        r"floating point",
    ),
    (
        "ragged parameter",
        ParameterError,
        dict(state_dict=_with(_BASE, decoder__bias=[[1.0], [2.0, 3.0]])),
        r"not an array",
    ),
    (
        "NaN parameter",
        ParameterError,
        dict(state_dict=_with(_BASE, rnn__weight_hh_l1=np.full((20, 5), np.nan, np.float32))),
        r"'rnn\.weight_hh_l1' contains NaN or infinity",
    ),
    (
        "inf parameter",
        ParameterError,
        dict(state_dict=_with(_BASE, encoder__weight=np.full((11, 4), -np.inf, np.float32))),
        r"'encoder\.weight' contains NaN or infinity",
    ),
    (
        "float64 beyond float32",
        ParameterError,
        dict(state_dict=_with(_sd(dtype=np.float64), decoder__bias=np.full(11, 1e39))),
        r"'decoder\.bias' contains NaN or infinity \(or values beyond float32\)",
        _OVERFLOW,
    ),
    (
        "lstm weights as gru",
        ParameterError,
        dict(state_dict=_sd("lstm"), cell="gru"),
        r"a gru cell with hidden size 5 needs \(15, 5\); is this a lstm model\?",
    ),
    (
        "gru weights as lstm",
        ParameterError,
        dict(state_dict=_sd("gru"), cell="lstm"),
        r"is this a gru model\?",
    ),
    (
        "lstm weights as rnn",
        ParameterError,
        dict(state_dict=_sd("lstm"), cell="rnn"),
        r"is this a lstm model\?",
    ),
    (
        "rnn weights as gru",
        ParameterError,
        dict(state_dict=_sd("rnn"), cell="gru"),
        r"is this a rnn model\?",
    ),
    (
        "tied with emb != hidden",
        ConfigError,
        dict(state_dict=_BASE, tied=True),
        r"tied weights need emb_size == hidden_size; got 4 and 5",
    ),
    (
        "unknown cell",
        ConfigError,
        dict(state_dict=_BASE, cell="transformer"),
        r"cell must be one of rnn, gru, lstm; got 'transformer'",
    ),
    (
        "tied not a bool",
        ConfigError,
        dict(state_dict=_sd(E=5), tied="yes"),
        r"tied must be True or False",
    ),
    (
        "vocabulary of one",
        ConfigError,
        dict(
            state_dict={
                k: (v[:1] if k.startswith(("encoder", "decoder")) else v) for k, v in _BASE.items()
            }
        ),
        r"vocab_size must be at least 2",
    ),
    (
        "state_dict a list",
        ParameterError,
        dict(state_dict=list(_BASE.items())),
        r"state_dict must be a dict of name -> array; got list",
    ),
    ("state_dict None", ParameterError, dict(state_dict=None), r"must be a dict"),
    (
        "unknown backend",
        BackendError,
        dict(state_dict=_BASE, backend="tpu"),
        r"unknown backend 'tpu'; choose one of cpu, cuda, auto",
    ),
]


def _as_param(case):
    name, error, kwargs, match, *marks = case
    return pytest.param(error, kwargs, match, id=name, marks=marks)


@pytest.mark.parametrize(("error", "kwargs", "match"), [_as_param(c) for c in CONSTRUCTION_ERRORS])
def test_invalid_parameters_raise(no_kernels, error, kwargs, match):
    with pytest.raises(error, match=match) as info:
        Model.from_state_dict(**kwargs)
    assert isinstance(info.value, RnnlmError)


def test_float64_weights_are_rounded_to_float32():
    sd = _sd(dtype=np.float64)
    sd["decoder.bias"][0] = 3e37  # large, yet no sum of the model passes float32's range
    sd["decoder.bias"][1] = -1 / 3
    bias = Model.from_state_dict(sd, cell="lstm").state_dict()["decoder.bias"]
    assert bias.dtype == np.float32
    assert bias[0] == np.float32(3e37)
    assert bias[1] == np.float32(-1 / 3)


def test_unknown_backend_name():
    with pytest.raises(BackendError, match=r"'cuda9'; choose one of cpu, cuda, auto"):
        get_backend("cuda9")
    with pytest.raises(BackendError, match=r"unknown backend"):
        Model(small_model("rnn").config, small_model("rnn").state_dict(), backend="")


def test_backend_from_environment(monkeypatch):
    monkeypatch.setenv("RNNLM_BACKEND", "nonesuch")
    with pytest.raises(BackendError, match=r"'nonesuch'"):
        get_backend()
    monkeypatch.setenv("RNNLM_BACKEND", "cpu")
    assert get_backend().NAME == "cpu"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param(dict(cell="cnn"), r"cell must be one of rnn, gru, lstm", id="cell"),
        pytest.param(dict(vocab_size=0), r"vocab_size must be a positive integer", id="V=0"),
        pytest.param(dict(vocab_size=1), r"vocab_size must be at least 2", id="V=1"),
        pytest.param(dict(emb_size=-3), r"emb_size must be a positive integer", id="E<0"),
        pytest.param(dict(hidden_size=2.5), r"hidden_size must be a positive", id="H float"),
        pytest.param(dict(hidden_size="8"), r"hidden_size must be a positive", id="H str"),
        pytest.param(dict(num_layers=True), r"num_layers must be a positive", id="L bool"),
        pytest.param(dict(num_layers=0), r"num_layers must be a positive", id="L=0"),
        pytest.param(dict(tied=1), r"tied must be True or False", id="tied int"),
        pytest.param(dict(tied=True), r"emb_size == hidden_size; got 4 and 6", id="tied E!=H"),
    ],
)
def test_model_config_rejects_bad_values(kwargs, match):
    good = dict(cell="gru", vocab_size=10, emb_size=4, hidden_size=6, num_layers=2)
    ModelConfig(**good)
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**{**good, **kwargs})


def test_model_config_from_dict_names_missing_keys():
    with pytest.raises(ConfigError, match=r"config is missing hidden_size, num_layers"):
        ModelConfig.from_dict({"cell": "rnn", "vocab_size": 3, "emb_size": 2})
    # unknown keys are ignored (newer files may add some)
    d = {"cell": "rnn", "vocab_size": 3, "emb_size": 2, "hidden_size": 2, "num_layers": 1}
    assert ModelConfig.from_dict({**d, "future_key": 1}) == ModelConfig(**d)


@pytest.mark.parametrize(
    "error",
    [ConfigError, ParameterError, InputError, VocabularyError, ModelFileError, BackendError],
)
def test_every_error_is_an_rnnlm_error(error):
    assert issubclass(error, RnnlmError)
    assert issubclass(RnnlmError, Exception)
    with pytest.raises(RnnlmError):
        raise error("x")


def test_a_failed_call_leaves_the_model_working():
    model = small_model("lstm")
    ids = np.array([[1, 2], [3, 4]])
    before, _ = model.forward(ids)
    with pytest.raises(InputError):
        model.forward(np.array([[1, 99]]))
    np.testing.assert_array_equal(model.forward(ids)[0], before)


# ---------------------------------------------------------------------------- threads


@pytest.mark.parametrize("cell", CELLS)
def test_threads_share_a_model(cell):
    """Four threads at once give bit-for-bit what sequential calls give."""
    config = ModelConfig(cell, 300, 32, 48, 2)
    sd = random_state_dict(config, np.random.default_rng(21))
    model = Model.from_state_dict(sd, cell=cell)
    rng = np.random.default_rng(22)
    jobs = []
    for _ in range(4):
        inputs = rng.integers(0, 300, (25, 8))
        targets = rng.integers(0, 300, (25, 8))
        jobs.append((inputs, targets, random_state(config, 8, rng)))

    def run(job):
        inputs, targets, state = job
        lp, s = model.forward(inputs, state)
        scores, _ = model.token_logprobs(inputs, targets, state)
        loss, grads, _ = model.loss_and_grad(inputs, targets, state)
        return lp, s, scores, loss, grads

    expected = [run(job) for job in jobs]
    barrier = threading.Barrier(4)

    def run_many(k):
        barrier.wait()  # start together, so the calls really overlap
        return [run(jobs[k]) for _ in range(3)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run_many, range(4)))

    for k, repeats in enumerate(results):
        lp0, s0, scores0, loss0, grads0 = expected[k]
        for lp, s, scores, loss, grads in repeats:
            np.testing.assert_array_equal(lp, lp0)
            np.testing.assert_array_equal(s.h, s0.h)
            if s0.c is not None:
                np.testing.assert_array_equal(s.c, s0.c)
            np.testing.assert_array_equal(scores, scores0)
            assert loss == loss0
            for name in grads0:
                np.testing.assert_array_equal(grads[name], grads0[name])


def test_threads_racing_to_build_the_input_table_agree():
    """The first forward-only calls of a fresh model build its layer-0 input table; four
    threads making them at once must get one table and the results of a lone call."""
    sd = random_state_dict(ModelConfig("lstm", 300, 16, 24, 2), np.random.default_rng(12))
    inputs = np.random.default_rng(13).integers(0, 300, (9, 4))
    expected, _ = Model.from_state_dict(sd).forward(inputs)
    model = Model.from_state_dict(sd)
    barrier = threading.Barrier(4)

    def first_call(_):
        barrier.wait()
        return model.forward(inputs)[0], model._layer0_table()

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(first_call, range(4)))
    for logprobs, table in results:
        np.testing.assert_array_equal(logprobs, expected)
        assert table is results[0][1]


@settings(max_examples=5)
@given(s=sizes_strategy)
def test_repeated_calls_are_deterministic(s):
    _, model, inputs, targets, state = make_case("lstm", False, s)
    a = model.loss_and_grad(inputs, targets, state)
    b = model.loss_and_grad(inputs, targets, state)
    assert a[0] == b[0]
    for name in a[1]:
        np.testing.assert_array_equal(a[1][name], b[1][name])


# ---------------------------------------------------------------------------- paths that
# the sizes above do not reach


@pytest.mark.parametrize("cell", CELLS)
def test_decoding_in_several_blocks_matches_oracle(cell, monkeypatch):
    """Forward-only passes decode in row blocks of _DECODE_BLOCK_FLOATS floats; shrink the
    block so that 40 rows take 3 full blocks and a partial one."""
    import rnnlm_engine.output as output_module

    rng = np.random.default_rng(3)
    config = ModelConfig(cell, 23, 5, 7, 2)
    monkeypatch.setattr(output_module, "_DECODE_BLOCK_FLOATS", 23 * 11)
    sd = random_state_dict(config, rng, outlier=True)
    model = Model.from_state_dict(sd, cell=cell)
    inputs, targets = rng.integers(0, 23, (10, 4)), rng.integers(0, 23, (10, 4))
    ref_lp, _ = oracle.model_forward(sd, config, inputs)
    logprobs, _ = model.forward(inputs)
    assert normwise(logprobs, ref_lp) < LOGPROB_TOL
    scores, _ = model.token_logprobs(inputs, targets)
    ref_scores = np.take_along_axis(ref_lp, targets[..., None], axis=2)[..., 0]
    assert np.abs(scores - ref_scores).max() / np.abs(ref_lp).max() < LOGPROB_TOL


@pytest.mark.parametrize("cell", CELLS)
def test_scoring_in_vocabulary_blocks_matches_oracle(cell):
    """token_logprobs decodes 64 positions or more in blocks of vocabulary rows: 80
    positions and V=20000 take two blocks at the default block size."""
    rng = np.random.default_rng(8)
    config = ModelConfig(cell, 20000, 6, 5, 2)
    sd = random_state_dict(config, rng, outlier=True)
    model = Model.from_state_dict(sd, cell=cell)
    ids = rng.integers(0, 20000, (17, 5))
    inputs, targets = ids[:-1], ids[1:]
    ref_lp, ref_state = oracle.model_forward(sd, config, inputs)
    scores, state = model.token_logprobs(inputs, targets)
    ref_scores = np.take_along_axis(ref_lp, targets[..., None], axis=2)[..., 0]
    assert np.abs(scores - ref_scores).max() / np.abs(ref_lp).max() < LOGPROB_TOL
    assert normwise(state.h, ref_state[0]) < LOGPROB_TOL


@pytest.mark.parametrize("cell", CELLS)
def test_forward_without_the_input_table_matches_oracle(cell, monkeypatch):
    """Forward-only passes read layer 0's input projection from a (V, G) table unless it
    would pass _INPUT_TABLE_MAX_BYTES; with no room for it, the product path runs."""
    import rnnlm_engine.model as model_module

    rng = np.random.default_rng(9)
    config = ModelConfig(cell, 13, 4, 6, 2)
    sd = random_state_dict(config, rng)
    inputs, targets = rng.integers(0, 13, (7, 3)), rng.integers(0, 13, (7, 3))
    ref_lp, _ = oracle.model_forward(sd, config, inputs)
    for table_bytes, has_table in ((1 << 20, True), (0, False)):
        monkeypatch.setattr(model_module, "_INPUT_TABLE_MAX_BYTES", table_bytes)
        model = Model.from_state_dict(sd, cell=cell)
        assert normwise(model.forward(inputs)[0], ref_lp) < LOGPROB_TOL
        scores, _ = model.token_logprobs(inputs, targets)
        ref_scores = np.take_along_axis(ref_lp, targets[..., None], axis=2)[..., 0]
        assert np.abs(scores - ref_scores).max() / np.abs(ref_lp).max() < LOGPROB_TOL
        assert (model._layer0_table() is not None) == has_table


@pytest.mark.parametrize("cell", CELLS)
def test_wide_decoder_bias_uses_exact_softmax_shift(cell):
    """A decoder bias spread over 40 nats makes the cheap softmax shift (row max of the
    logits + max of the bias) too loose; the exact row max must take over."""
    rng = np.random.default_rng(4)
    config = ModelConfig(cell, 17, 6, 6, 1)
    sd = random_state_dict(config, rng)
    sd["decoder.bias"][:] = rng.uniform(-60, 60, 17).astype(np.float32)
    model = Model.from_state_dict(sd, cell=cell)
    inputs, targets = rng.integers(0, 17, (6, 3)), rng.integers(0, 17, (6, 3))
    ref_lp, _ = oracle.model_forward(sd, config, inputs)
    assert normwise(model.forward(inputs)[0], ref_lp) < LOGPROB_TOL
    ref_loss, ref_grads, _ = oracle.model_loss_and_grad(sd, config, inputs, targets)
    loss, grads, _ = model.loss_and_grad(inputs, targets)
    assert abs(loss - ref_loss) <= LOGPROB_TOL * np.abs(ref_lp).max()
    assert normwise(grads["decoder.bias"], ref_grads["decoder.bias"]) < GRAD_TOL


@pytest.mark.parametrize(
    "name, value",
    [
        ("decoder.weight", 3e38),  # tanh units saturated at 1 times 3e38, summed 6 times
        ("decoder.weight", 2e37),
        ("decoder.bias", 3.3e38),
        ("rnn.weight_hh_l0", 2e37),
        ("rnn.weight_ih_l0", 2e37),
        ("encoder.weight", 2e37),  # times input weights of 1, summed over 6 inputs
    ],
)
def test_weights_whose_sums_overflow_float32_are_refused_at_construction(name, value):
    """Each weight is finite, but sums of them would pass float32's range: inf, or NaN
    from inf - inf, would reach the kernels. Loading must say so, naming the parameter."""
    config = ModelConfig("rnn", 20, 6, 6, 1)
    sd = {k: np.ones(shape, np.float32) for k, shape in config.parameter_shapes().items()}
    sd[name][:] = value
    with pytest.raises(ParameterError, match=f"{name}.*would overflow float32"):
        Model.from_state_dict(sd, cell="rnn")


def test_largest_weights_that_fit_are_accepted_and_give_finite_results():
    """Just under the bound the model loads, and every pass returns finite numbers."""
    config = ModelConfig("lstm", 20, 6, 6, 1)
    sd = {k: np.ones(shape, np.float32) for k, shape in config.parameter_shapes().items()}
    sd["decoder.weight"][:] = 1e37  # |logit| <= 6e37 + 1 < 1e38
    model = Model.from_state_dict(sd, cell="lstm")
    ids = np.arange(6).reshape(3, 2)
    assert np.all(np.isfinite(model.forward(ids)[0]))
    assert np.all(np.isfinite(model.token_logprobs(ids, ids)[0]))
    loss, grads, _ = model.loss_and_grad(ids, ids)
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())


def test_initial_state_too_large_for_float32_sums_is_refused():
    config = ModelConfig("gru", 20, 6, 6, 2)
    sd = {k: np.ones(shape, np.float32) for k, shape in config.parameter_shapes().items()}
    model = Model.from_state_dict(sd, cell="gru")
    ids = np.arange(6).reshape(3, 2)
    h = np.full((2, 2, 6), 5.0, np.float32)  # beyond a cell's [-1, 1], but the sums fit
    assert np.all(np.isfinite(model.forward(ids, h)[0]))
    h[1, 0, 3] = 3e37  # 18 of them summed: past float32
    with pytest.raises(InputError, match="state h of layer 1.*overflow float32"):
        model.forward(ids, h)


@pytest.mark.parametrize("name", ["encoder.weight", "rnn.weight_hh_l0", "decoder.weight"])
def test_ragged_parameter_raises_parameter_error(name):
    config = ModelConfig("lstm", 11, 4, 5, 1)
    sd = random_state_dict(config, np.random.default_rng(5))
    sd[name] = [[1.0, 2.0], [3.0]]
    with pytest.raises(ParameterError, match=f"{name}.*not an array"):
        Model.from_state_dict(sd, cell="lstm")


def test_tied_weights_with_nan_are_reported_as_nan():
    config = ModelConfig("gru", 11, 5, 5, 1, tied=True)
    sd = random_state_dict(config, np.random.default_rng(6))
    sd["encoder.weight"][2, 3] = np.nan
    sd["decoder.weight"] = sd["encoder.weight"].copy()
    with pytest.raises(ParameterError, match="NaN"):
        Model.from_state_dict(sd, cell="gru", tied=True)


# ---------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("tied", [False, True])
def test_loss_and_grad_with_dropout_masks_matches_oracle(cell, tied):
    """Dropout on the embeddings, between the layers and on the top output: the engine
    with the same masks equals the oracle; the final state is the undropped one."""
    rng = np.random.default_rng(21)
    config = ModelConfig(cell, 19, 6, 6, 3, tied=tied)
    sd = random_state_dict(config, rng)
    model = Model.from_state_dict(sd, cell=cell, tied=tied)
    inputs, targets = rng.integers(0, 19, (7, 4)), rng.integers(0, 19, (7, 4))
    state = random_state(config, 4, rng)
    masks = model.dropout_masks(7, 4, 0.4, rng)
    assert [m.shape for m in masks] == [(7, 4, 6)] * 4
    kept = np.concatenate([m.ravel() for m in masks])
    assert set(np.unique(kept)) == {np.float32(0.0), np.float32(1 / 0.6)}
    ref_loss, ref_grads, ref_state = oracle.model_loss_and_grad(
        sd, config, inputs, targets, state64(state), masks=masks
    )
    loss, grads, new_state = model.loss_and_grad(inputs, targets, state, dropout_masks=masks)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    G = max(np.abs(g).max() for g in ref_grads.values())
    for name, ref in ref_grads.items():
        assert normwise(grads[name], ref, floor=0.01 * G) < GRAD_TOL, name
    assert normwise(new_state.h, ref_state[0]) < LOGPROB_TOL
    # and the masks matter: without them the loss differs
    assert model.loss_and_grad(inputs, targets, state)[0] != pytest.approx(loss, rel=1e-3)


def test_dropout_masks_are_validated():
    model = small_model("lstm")
    ids = _ids(3, 2)
    good = model.dropout_masks(3, 2, 0.5, np.random.default_rng(0))
    with pytest.raises(InputError, match="list of 3 arrays"):
        model.loss_and_grad(ids, ids, dropout_masks=good[:2])
    bad = [m.copy() for m in good]
    bad[1] = bad[1][:, :1]
    with pytest.raises(InputError, match=r"dropout mask 1 must have shape \(3, 2, 5\)"):
        model.loss_and_grad(ids, ids, dropout_masks=bad)
    bad[1] = np.full((3, 2, 5), np.nan, np.float32)
    with pytest.raises(InputError, match="dropout mask 1 contains NaN"):
        model.loss_and_grad(ids, ids, dropout_masks=bad)
    with pytest.raises(InputError, match=r"dropout probability must be a number in \[0, 1\)"):
        model.dropout_masks(3, 2, 1.0, np.random.default_rng(0))


# ---------------------------------------------------------------------------- files


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("tied", [False, True])
def test_save_then_load_gives_the_same_model(cell, tied, tmp_path):
    from rnnlm_engine.model import load
    from rnnlm_engine.vocab import Vocabulary

    config = ModelConfig(cell, 6, 5, 5, 2, tied=tied)
    sd = random_state_dict(config, np.random.default_rng(31))
    vocab = Vocabulary.build("abcde\n", "char")
    model = Model.from_state_dict(sd, cell=cell, tied=tied, vocab=vocab)
    model.save(tmp_path / "m.rnnlm", metadata={"note": "hello"})
    again = load(tmp_path / "m.rnnlm")
    assert again.config == model.config and again.vocab == vocab
    assert again.metadata == {"note": "hello"}
    for name, a in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name], a, err_msg=name)
    ids = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(again.forward(ids)[0], model.forward(ids)[0])


def test_load_reports_weights_the_model_refuses_as_a_file_error(tmp_path):
    from rnnlm_engine import modelfile
    from rnnlm_engine.model import load

    config = ModelConfig("rnn", 20, 6, 6, 1)
    sd = {k: np.ones(shape, np.float32) for k, shape in config.parameter_shapes().items()}
    sd["decoder.weight"][:] = 3e38  # finite, but the logits would overflow float32
    modelfile.save(tmp_path / "big.rnnlm", config=config, tensors=sd)
    with pytest.raises(ModelFileError, match=r"big.rnnlm: parameters 'decoder.weight'"):
        load(tmp_path / "big.rnnlm")
