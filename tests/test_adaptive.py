"""The adaptive softmax output (issue 12, first steps): its configuration, and the float64
oracle against PyTorch's nn.AdaptiveLogSoftmaxWithLoss on the same weights (full
log-probabilities, target log-probabilities, the loss and every gradient).

Tolerance: both sides compute in float64 here, in different orders: 1e-9 normwise leaves a
wide margin over their rounding (about 1e-14) while a wrong cluster offset, a missing head
logit or a projection applied to the wrong rows gives errors of order 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlm_engine import ConfigError, ModelConfig, oracle
from rnnlm_engine.state import State

TOL = 1e-9


def err(got, want):
    return float(np.abs(np.asarray(got) - want).max() / max(np.abs(want).max(), 1e-30))


def random_sd(config, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(-scale, scale, s) for n, s in config.parameter_shapes().items()}


def test_the_parameters_have_pytorchs_names_and_shapes():
    c = ModelConfig("lstm", 100, 8, 32, 1, cutoffs=(10, 40), head_bias=True)
    shapes = c.parameter_shapes()
    assert shapes["decoder.head.weight"] == (12, 32) and shapes["decoder.head.bias"] == (12,)
    assert shapes["decoder.tail.0.0.weight"] == (8, 32)  # 32 // 4
    assert shapes["decoder.tail.0.1.weight"] == (30, 8)
    assert shapes["decoder.tail.1.0.weight"] == (2, 32)  # 32 // 16
    assert shapes["decoder.tail.1.1.weight"] == (60, 2)
    assert "decoder.weight" not in shapes and "decoder.bias" not in shapes
    assert ModelConfig.from_dict(c.to_dict()) == c
    plain = ModelConfig("lstm", 100, 8, 32, 1)
    assert "cutoffs" not in plain.to_dict()  # a full softmax's dict is unchanged


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cutoffs=(40, 10)), r"increase strictly.*\[40, 10\]"),
        (dict(cutoffs=(10, 10)), "increase strictly"),
        (dict(cutoffs=(0, 10)), r"in \[1, vocab_size - 1\] = \[1, 99\]"),
        (dict(cutoffs=(10, 100)), r"\[1, 99\]; got \[10, 100\]"),
        (dict(cutoffs=()), "non-empty sequence of integers"),
        (dict(cutoffs=(1.5,)), "non-empty sequence of integers"),
        (dict(cutoffs=(10, 20, 30, 40)), r"tail cluster 2 would project to .* = 0 units"),
        (dict(cutoffs=(10,), div_value=0), "div_value must be a positive number"),
        (dict(cutoffs=(10,), head_bias=1), "head_bias must be True or False"),
        (dict(cutoffs=(10,), tied=True, emb_size=32), "tied weights cannot go with an adaptive"),
    ],
)
def test_bad_adaptive_settings_are_one_clear_error(kwargs, message):
    args = dict(cell="lstm", vocab_size=100, emb_size=8, hidden_size=32, num_layers=1) | kwargs
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**args)


class TorchModel:
    """word_language_model's RNNModel with an nn.AdaptiveLogSoftmaxWithLoss decoder, in
    float64, loaded with the state dict (its names are PyTorch's own)."""

    def __init__(self, torch, config, sd):
        nn = torch.nn
        self.torch = torch
        self.encoder = nn.Embedding(config.vocab_size, config.emb_size).double()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[config.cell]
        self.rnn = rnn(config.emb_size, config.hidden_size, config.num_layers).double()
        self.decoder = nn.AdaptiveLogSoftmaxWithLoss(
            config.hidden_size, config.vocab_size, list(config.cutoffs),
            div_value=config.div_value, head_bias=config.head_bias,
        ).double()  # fmt: skip
        modules = {"encoder": self.encoder, "rnn": self.rnn, "decoder": self.decoder}
        with torch.no_grad():
            for name, value in sd.items():
                owner, rest = name.split(".", 1)
                modules[owner].get_parameter(rest).copy_(torch.tensor(value))

    def top(self, ids):
        out, _ = self.rnn(self.encoder(self.torch.tensor(ids)))
        return out.reshape(-1, out.shape[-1])

    def named_grads(self):
        for owner, m in (("encoder", self.encoder), ("rnn", self.rnn), ("decoder", self.decoder)):
            for name, p in m.named_parameters():
                yield f"{owner}.{name}", p.grad.numpy()


CASES = [
    ("lstm", 30, (5,), 4.0, False, 2),  # one cluster
    ("gru", 40, (6, 17, 30), 2.0, True, 1),  # several, and a head bias
    ("rnn", 23, (7, 22), 4.0, False, 2),  # a cluster of one word (22)
]


@pytest.mark.parametrize("cell, V, cutoffs, div, head_bias, layers", CASES)
def test_the_oracle_is_pytorchs_adaptive_softmax(cell, V, cutoffs, div, head_bias, layers):
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch)")
    config = ModelConfig(cell, V, 5, 16, layers, cutoffs=cutoffs, div_value=div,
                         head_bias=head_bias)  # fmt: skip
    sd = random_sd(config)
    tm = TorchModel(torch, config, sd)
    rng = np.random.default_rng(1)
    inputs = rng.integers(0, V, (9, 3))
    # targets in every cluster and in the shortlist
    targets = rng.integers(0, V, (9, 3))
    targets.reshape(-1)[: len(cutoffs) + 1] = [0, *cutoffs]

    lp, _ = oracle.model_forward(sd, config, inputs)
    top = tm.top(inputs)
    want = tm.decoder.log_prob(top).detach().numpy()
    assert err(lp.reshape(-1, V), want) < TOL
    assert np.allclose(np.exp(lp).sum(axis=2), 1.0, atol=1e-12)

    loss, grads, _ = oracle.model_loss_and_grad(sd, config, inputs, targets)
    result = tm.decoder(top, torch.tensor(targets.reshape(-1)))
    picked = lp.reshape(-1, V)[np.arange(27), targets.reshape(-1)]
    assert err(picked, result.output.detach().numpy()) < TOL
    assert loss == pytest.approx(result.loss.item(), rel=TOL)
    result.loss.backward()
    for name, g in tm.named_grads():
        assert err(grads[name], g) < TOL, name


# ------------------------------------------------------------------ the engine's model
# Tolerances, normwise against the float64 oracle: the engine computes in float32 (unit
# roundoff 6e-8) through the layers and the head and tail products; as in
# tests/test_model.py, 1e-4 for log-probabilities, losses and states, 1e-3 for gradients,
# while a wrong cluster offset or a tail's rows mixed up give errors of order 1.
LP_TOL, GRAD_TOL = 1e-4, 1e-3


def engine_model(config, seed=0, backend=None):
    from rnnlm_engine import Model

    sd = {n: a.astype(np.float32) for n, a in random_sd(config, seed).items()}
    return sd, Model.from_state_dict(sd, cell=config.cell, backend=backend,
                                     residual=config.residual)  # fmt: skip


@settings(max_examples=12, deadline=None)
@given(
    cell=st.sampled_from(["rnn", "gru", "lstm"]),
    V=st.integers(3, 60),
    n=st.integers(1, 3),
    H=st.sampled_from([4, 9, 16]),
    T=st.integers(1, 7),
    B=st.integers(1, 4),
    head_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_engine_computes_what_the_oracle_does(cell, V, n, H, T, B, head_bias, seed):
    """Every batch path of an adaptive model against the oracle: shapes crossing cutoffs,
    one or several clusters, clusters of one word, batch 1."""
    rng = np.random.default_rng(seed)
    n = min(n, V - 1, int(np.log2(H)))  # tail i projects to H // 2 ** (i + 1) >= 1 units
    cutoffs = tuple(sorted(rng.choice(np.arange(1, V), n, replace=False).tolist()))
    config = ModelConfig(cell, V, 5, H, 2, cutoffs=cutoffs, div_value=2.0, head_bias=head_bias)
    sd, model = engine_model(config, seed)
    assert model.config == config  # inferred from the names and shapes
    inputs, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    lp, _ = model.forward(inputs)
    want, _ = oracle.model_forward(sd, config, inputs)
    assert err(lp, want) < LP_TOL
    got, _ = model.token_logprobs(inputs, targets)
    picked = np.take_along_axis(want, targets[..., None], axis=2)[..., 0]
    assert np.abs(got - picked).max() < LP_TOL * max(1.0, np.abs(picked).max())
    loss, grads, _ = model.loss_and_grad(inputs, targets)
    want_loss, want_grads, _ = oracle.model_loss_and_grad(sd, config, inputs, targets)
    assert loss == pytest.approx(want_loss, rel=LP_TOL)
    assert set(grads) == set(want_grads)
    for name, g in want_grads.items():
        assert oracle.normwise_error(grads[name], g, floor=1e-3) < GRAD_TOL, name


def test_the_model_matches_pytorch_and_its_state_dict_loads_there():
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch)")
    config = ModelConfig("lstm", 40, 6, 16, 2, cutoffs=(6, 17, 30), div_value=2.0,
                         head_bias=True)  # fmt: skip
    sd, model = engine_model(config, 3)
    tm = TorchModel(torch, config, {n: a.astype(np.float64) for n, a in model.state_dict().items()})
    rng = np.random.default_rng(2)
    inputs, targets = rng.integers(0, 40, (8, 3)), rng.integers(0, 40, (8, 3))
    lp, _ = model.forward(inputs)
    top = tm.top(inputs)
    assert err(lp.reshape(-1, 40), tm.decoder.log_prob(top).detach().numpy()) < LP_TOL
    loss, grads, _ = model.loss_and_grad(inputs, targets)
    result = tm.decoder(top, torch.tensor(targets.reshape(-1)))
    assert loss == pytest.approx(result.loss.item(), rel=LP_TOL)
    result.loss.backward()
    for name, g in tm.named_grads():
        assert oracle.normwise_error(grads[name], g, floor=1e-3) < GRAD_TOL, name


def test_scoring_tracing_and_attributing_an_adaptive_model():
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch)")
    config = ModelConfig("gru", 30, 6, 16, 1, cutoffs=(5, 12))
    sd, model = engine_model(config, 4)
    ids = np.random.default_rng(5).integers(0, 30, 25)
    want, _ = oracle.model_forward(sd, config, ids[:, None])
    tr = model.trace(ids, top_k=3)
    assert err(tr.logprob[1:], want[np.arange(24), 0, ids[1:]]) < LP_TOL
    assert np.array_equal(tr.top_ids[1:], np.argsort(-want[:24, 0], axis=1, kind="stable")[:, :3])
    a = model.attribution(ids, 20)
    tm = TorchModel(torch, config, {n: v.astype(np.float64) for n, v in sd.items()})
    x = tm.encoder(torch.tensor(ids[:20])).detach().requires_grad_(True)
    out, _ = tm.rnn(x)
    tm.decoder.log_prob(out[-1:])[0, int(ids[20])].backward()
    assert err(a.scores, (x * x.grad).sum(1).detach().numpy()) < 1e-4


def test_an_adaptive_model_file_round_trips_and_old_readers_refuse_it(tmp_path):
    from rnnlm_engine import ModelFileError, load, modelfile

    config = ModelConfig("lstm", 30, 5, 16, 1, cutoffs=(5,), head_bias=True)
    _, model = engine_model(config)
    model.save(tmp_path / "m.rnnlm")
    back = load(tmp_path / "m.rnnlm")
    assert back.config == config
    for name, a in model.state_dict().items():
        assert np.array_equal(back.state_dict()[name], a)
    info = modelfile.read_info(tmp_path / "m.rnnlm")
    assert info["features"] == ["adaptive"] and tuple(info["version"]) == (2, 0)
    # a reader that knows only "residual" (as the engine before this) refuses the file
    from rnnlm_engine.modelfile import read as reader

    old = reader.FEATURES  # what the reader knows
    try:
        reader.FEATURES = ("residual",)
        with pytest.raises(ModelFileError, match="needs 'adaptive'.*upgrade"):
            load(tmp_path / "m.rnnlm")
    finally:
        reader.FEATURES = old


def test_streams_of_an_adaptive_model_predict_what_the_oracle_does():
    from rnnlm_engine import StreamBatch

    config = ModelConfig("lstm", 30, 5, 16, 2, cutoffs=(5, 12), head_bias=True)
    sd, model = engine_model(config, 6)
    s = model.stream()
    lp = s.feed([1, 2, 3])
    want, _ = oracle.model_forward(sd, config, np.array([[1], [2], [3], [29]]))
    assert err(lp, want[2, 0]) < LP_TOL
    assert np.exp(np.float64(lp)).sum() == pytest.approx(1.0, abs=1e-5)
    snap = s.snapshot()
    assert err(s.feed(29), want[3, 0]) < LP_TOL
    s.restore(snap)
    assert s.logprob(29) == pytest.approx(float(lp[29]))
    assert [t for t, _ in s.top(3)] == np.argsort(-lp, kind="stable")[:3].tolist()
    # StreamBatch, both of its paths (the step, and the batched forward from 2 streams)
    for blas_from in (1 << 30, 2):
        batch = StreamBatch(model, blas_from=blas_from)
        a, b = batch.stream(), batch.stream()
        batch.step([(a, 1), (b, 4)])
        out = batch.step([(a, 2), (b, 29)])
        ref = model.stream()
        ref.feed([1, 2])
        assert err(out[0], ref._current()) < LP_TOL
        ref.reset()
        ref.feed([4, 29])
        assert err(out[1], ref._current()) < LP_TOL


@pytest.mark.parametrize("how", ["head, then the cluster", "from a restored distribution"])
def test_sampling_an_adaptive_model_draws_what_its_distribution_says(how):
    """A fixed-seed frequency check: 20,000 draws against the stream's distribution; the
    bound (4 standard deviations of each count, plus one) fails for a sampler that
    misplaces a cluster or ignores the head. A fed stream draws the cluster from the head,
    then the word; a restored one (no top layer's output kept) from its distribution."""
    config = ModelConfig("gru", 12, 4, 8, 1, cutoffs=(3, 7), div_value=2.0)
    _, model = engine_model(config, 7)
    s = model.stream()
    p = np.exp(np.float64(s.feed([1, 5])))
    if how == "from a restored distribution":
        s.restore(s.snapshot())
    assert (s._top is None) == (how == "from a restored distribution")
    n = 20_000
    rng_seed = 11
    draws = [s.sample(seed=rng_seed + i) for i in range(n)]
    counts = np.bincount(draws, minlength=12)
    expected = n * p
    assert np.all(np.abs(counts - expected) <= 4 * np.sqrt(expected * (1 - p)) + 1), (
        counts,
        expected,
    )


def rows_case(backend, V, n, H, N, head_bias, seed):
    """A model of random weights, and the rows kernel's arguments for N random rows."""
    rng = np.random.default_rng(seed)
    n = min(n, V - 1, int(np.log2(H)))  # tail i projects to H // 2 ** (i + 1) >= 1 units
    cutoffs = tuple(sorted(rng.choice(np.arange(1, V), n, replace=False).tolist()))
    config = ModelConfig("rnn", V, 3, H, 1, cutoffs=cutoffs, div_value=2.0, head_bias=head_bias)
    sd, model = engine_model(config, seed, backend)
    top = rng.uniform(-1, 1, (N, H)).astype(np.float32)
    want = rng.integers(0, 2, n).astype(np.uint8)
    return sd, config, model, top, want


@settings(max_examples=25, deadline=None)
@given(
    V=st.integers(2, 70),
    n=st.integers(1, 3),
    H=st.sampled_from([2, 5, 16, 33]),
    N=st.integers(1, 5),
    head_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_rows_kernel_computes_what_the_oracle_does(V, n, H, N, head_bias, seed):
    """adaptive_log_probs (a stream's output) against the oracle, outputs poisoned: the
    head, the shortlist and the wanted clusters are written, the others are not."""
    import rnnlm_engine.kernels.cpu as kc

    sd, config, model, top, want = rows_case(None, V, n, H, N, head_bias, seed)
    head_t, head_b, projs, outs_t = model._output._rows_weights()
    head = np.full((N, model._output.head_size), np.nan, np.float32)
    out = np.full((N, V), np.nan, np.float32)
    kc.adaptive_log_probs(top, head_t, head_b, projs, outs_t, want, head, out)
    check_rows(sd, config, top, want, head, out)


def check_rows(sd, config, top, want, head, out):
    p64 = {k: np.float64(v) for k, v in sd.items()}
    full = oracle.adaptive_log_probs(p64, config, np.float64(top))
    head_want = oracle.log_softmax(oracle._adaptive_head(p64, np.float64(top)))
    assert err(head, head_want) < LP_TOL
    bounds = [*config.cutoffs, config.vocab_size]
    written = np.zeros(config.vocab_size, bool)
    written[: bounds[0]] = True
    for i, (low, high) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        written[low:high] = bool(want[i])
    # float32 products of at most 33 terms, then a log-softmax: LP_TOL normwise
    assert err(out[:, written], full[:, written]) < LP_TOL
    assert np.isnan(out[:, ~written]).all()  # the poison is where nothing was asked


@settings(max_examples=6, deadline=None)
@given(
    V=st.integers(2, 40),
    n=st.integers(1, 3),
    N=st.integers(1, 3),
    head_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_cuda_rows_kernel_computes_what_the_oracle_does(V, n, N, head_bias, seed):
    import rnnlm_engine.kernels.cuda as kc

    if kc.unavailable_reason() is not None:
        pytest.skip(f"the cuda backend cannot run here: {kc.unavailable_reason()}")
    sd, config, model, top, want = rows_case("cuda", V, n, 8, N, head_bias, seed)
    head_t, head_b, projs, outs_t = model._output._rows_weights()
    head = kc.to_device(np.full((N, model._output.head_size), np.nan, np.float32))
    out = kc.to_device(np.full((N, V), np.nan, np.float32))
    with kc.small_launches():
        kc.adaptive_log_probs(kc.to_device(top), head_t, head_b, projs, outs_t, want, head, out)
    check_rows(sd, config, top, want, kc.to_host(head), kc.to_host(out))


@pytest.mark.parametrize("backend", [None, "cuda"])
@pytest.mark.parametrize("residual", [False, True])
def test_the_layers_kernel_is_the_stream_step_without_its_output(backend, residual):
    """stream_layers: the states of stream_step bit for bit, and the top layer's output."""
    from rnnlm_engine import streaming

    if backend == "cuda":
        import rnnlm_engine.kernels.cuda as kc

        if kc.unavailable_reason() is not None:
            pytest.skip(f"the cuda backend cannot run here: {kc.unavailable_reason()}")
    config = ModelConfig("lstm", 20, 6, 6, 2, residual=residual)
    _, model = engine_model(config, 2, backend)
    k = model._k
    state = model.zero_state(2)
    h0, c0 = k.to_device(state.h + 0.3), k.to_device(state.c - 0.2)
    ids = np.array([[1, 7], [3, 19], [0, 2]])
    h, c, lp = streaming.step(model, ids, h0, c0)
    h2, c2, top = streaming.layers_step(model, ids, h0, c0)
    np.testing.assert_array_equal(k.to_host(h2), k.to_host(h))
    np.testing.assert_array_equal(k.to_host(c2), k.to_host(c))
    # the top layer's output (h, plus the layer's input where residual) as the batch
    # kernels give it, to float32 rounding
    want_top, _ = model._forward_layers(ids, State(h0, c0), None)
    np.testing.assert_allclose(k.to_host(top), k.to_host(want_top)[-2:], rtol=1e-5, atol=1e-6)
    # the output of that top is the distribution the step gave
    assert err(model._output.log_probs(top), k.to_host(lp)) < LP_TOL


def test_a_pushed_stream_reads_parts_equal_to_the_whole():
    """push() computes no distribution: logprob, top and draws take the head and the
    clusters they need, and give exactly what the whole distribution gives (the same
    kernel computes each part)."""
    config = ModelConfig("lstm", 40, 5, 16, 2, cutoffs=(6, 15, 30), div_value=2.0)
    _, model = engine_model(config, 3)
    fed, pushed = model.stream(), model.stream()
    whole = fed.feed([1, 2, 33])
    pushed.push([1, 2, 33])
    assert pushed._logprobs is None
    for token in (0, 5, 6, 14, 15, 29, 30, 39):
        assert pushed.logprob(token) == float(whole[token]), token
    for k in (1, 3, 7, 40):
        assert pushed.top(k) == fed.top(k), k
    assert pushed._logprobs is None  # still nothing whole computed
    assert [pushed.sample(seed=i) for i in range(40)] == [fed.sample(seed=i) for i in range(40)]
    a = list(pushed.fork().generate(max_tokens=12, seed=5))
    assert a == list(fed.fork().generate(max_tokens=12, seed=5))
    np.testing.assert_array_equal(pushed.snapshot().logprobs, whole)  # computed for it
    assert pushed.tokens == fed.tokens == (1, 2, 33)
    # a full softmax needs its whole distribution for any read: push computes it
    full = ModelConfig("lstm", 40, 5, 16, 2)
    _, model = engine_model(full, 3)
    s = model.stream()
    s.push([1, 2, 33])
    np.testing.assert_array_equal(s._logprobs, model.stream().feed([1, 2, 33]))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda sd: sd.pop("decoder.tail.0.1.weight"),
            "state_dict has no 'decoder.tail.0.1.weight'",
        ),
        (
            lambda sd: sd.update({"decoder.tail.0.1.weight": np.zeros((3, 4), np.float32)}),
            "covers 8 ids",
        ),
        (
            lambda sd: sd.update({"decoder.tail.0.0.weight": np.zeros((4, 7), np.float32)}),
            r"must be \(u, 16\) and \(w, u\)",
        ),
        (
            lambda sd: sd.update(
                {  # 4 units then 8: no div_value gives 16 // d = 4 and 16 // d**2 = 8
                    "decoder.head.weight": np.zeros((7, 16), np.float32),
                    "decoder.tail.0.1.weight": np.zeros((15, 4), np.float32),
                    "decoder.tail.1.0.weight": np.zeros((8, 16), np.float32),
                    "decoder.tail.1.1.weight": np.zeros((10, 8), np.float32),
                }
            ),
            "no div_value",
        ),
    ],
)
def test_a_state_dict_whose_shapes_do_not_fit_is_one_clear_error(change, message):
    from rnnlm_engine import Model, ParameterError

    config = ModelConfig("lstm", 30, 5, 16, 1, cutoffs=(5,))
    sd = {n: a.astype(np.float32) for n, a in random_sd(config).items()}
    change(sd)
    with pytest.raises(ParameterError, match=message):
        Model.from_state_dict(sd, cell="lstm")


def test_tied_weights_with_an_adaptive_state_dict_are_refused():
    from rnnlm_engine import Model

    config = ModelConfig("lstm", 30, 16, 16, 1, cutoffs=(5,))
    sd = {n: a.astype(np.float32) for n, a in random_sd(config).items()}
    with pytest.raises(ConfigError, match="adaptive output .* cannot be tied"):
        Model.from_state_dict(sd, cell="lstm", tied=True)


def test_the_cuda_backend_computes_what_the_cpu_does():
    """(numba's CUDA simulator in CI: a few tokens of a small model)"""
    import rnnlm_engine.kernels.cuda as kc

    if kc.unavailable_reason() is not None:
        pytest.skip(f"the cuda backend cannot run here: {kc.unavailable_reason()}")
    config = ModelConfig("gru", 11, 3, 4, 1, cutoffs=(3, 7), div_value=2.0)
    _, cpu = engine_model(config, 1)
    _, gpu = engine_model(config, 1, backend="cuda")
    inputs, targets = np.array([[1, 5], [9, 2], [4, 10]]), np.array([[5, 9], [2, 4], [10, 0]])
    with kc.small_launches():
        a, b = cpu.forward(inputs)[0], gpu.forward(inputs)[0]
        la, ga, _ = cpu.loss_and_grad(inputs, targets)
        lb, gb, _ = gpu.loss_and_grad(inputs, targets)
        ta, tb = cpu.token_logprobs(inputs, targets)[0], gpu.token_logprobs(inputs, targets)[0]
        sa, sb = cpu.stream().feed([1, 5]), gpu.stream().feed([1, 5])
    assert err(sb, sa) < LP_TOL
    assert err(b, a) < LP_TOL and err(tb, ta) < LP_TOL
    assert lb == pytest.approx(la, rel=LP_TOL)
    for name in ga:
        assert oracle.normwise_error(gb[name], ga[name], floor=1e-3) < GRAD_TOL, name


# ------------------------------------------------------------------ training, the CLI


def test_auto_cutoffs_cover_80_and_95_percent_of_the_text():
    from rnnlm_engine.output import choose_cutoffs

    rng = np.random.default_rng(0)
    ids = rng.zipf(1.3, 300_000) - 1  # ranks: 0 the most frequent
    ids = ids[ids < 5_000]
    counts = np.bincount(ids, minlength=5_000)
    cutoffs = choose_cutoffs(ids, 5_000, 200)
    share = [counts[:c].sum() / len(ids) for c in cutoffs]
    assert share[0] >= 0.8 and counts[: cutoffs[0] - 1].sum() / len(ids) < 0.8
    assert share[1] >= 0.95 and counts[: cutoffs[1] - 1].sum() / len(ids) < 0.95
    with pytest.raises(ConfigError, match="found no cutoff for a vocabulary of 2"):
        choose_cutoffs(np.array([0, 1, 0, 1]), 2, 200)  # 80% needs both: no tail left


def test_rnnlm_train_with_an_adaptive_output(tmp_path, capsys):
    from rnnlm_engine import load
    from rnnlm_engine.cli import main

    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(300)]
    lines = [" ".join(words[j] for j in np.minimum(rng.zipf(1.4, 12) - 1, 299)) for _ in range(400)]
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n")
    args = ["train", "--train", str(tmp_path / "t.txt"), "--level", "word", "--hidden", "16",
            "--layers", "1", "--epochs", "1", "--out", str(tmp_path / "m.rnnlm")]  # fmt: skip
    assert main([*args, "--adaptive", "auto", "--div-value", "2", "--quiet"]) == 0
    model = load(tmp_path / "m.rnnlm")
    assert model.config.adaptive and model.config.div_value == 2.0
    assert main(["info", str(tmp_path / "m.rnnlm")]) == 0
    assert "adaptive softmax (cutoffs" in capsys.readouterr().out
    assert main(["score", str(tmp_path / "m.rnnlm"), str(tmp_path / "t.txt"), "--quiet"]) == 0
    scores = capsys.readouterr().out.splitlines()
    assert len(scores) == 400 and all(float(line.split("\t")[0]) < 0 for line in scores)
    assert main([*args, "--adaptive", "3,2"]) == 2
    assert "cutoffs must be increasing positive integers" in capsys.readouterr().err
    assert main([*args, "--adaptive", "5,99999"]) == 2
    assert "[1, vocab_size - 1]" in capsys.readouterr().err
    ckpt = str(tmp_path / "m.rnnlm.ckpt")
    assert main(["train", "--resume", ckpt, "--out", str(tmp_path / "m.rnnlm"),
                 "--adaptive", "auto"]) == 2  # fmt: skip
    assert "leave out --adaptive" in capsys.readouterr().err
    assert main(["train", "--resume", ckpt, "--out", str(tmp_path / "m.rnnlm"), "--epochs",
                 "2", "--quiet"]) == 0  # fmt: skip
    assert load(tmp_path / "m.rnnlm").config == model.config
