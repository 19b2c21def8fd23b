"""int8 models (rnnlm_engine/quantized.py): the int8 streaming kernels against the float64
oracle of the dequantized weights (Hypothesis: odd sizes, sizes 1, rows of zeros, a row
with one huge value, row counts around the kernel's blocks of INT8_ROWS), every inference
path of a QuantizedModel, model files (round trip bit-exact; damaged files refused), and
what an int8 model refuses (training, state_dict).

Tolerances: the int8 kernel sums q * x in float32 and multiplies the sum by the row's scale
(one more rounding than the float32 kernel, whose products use q * s rounded once); the
dots here have at most 40 terms, so both are within a few K u (u = 6e-8) of the exact
dot, relative to the sum of |terms|. Through T <= 3 steps of L <= 3 layers of weights of
norm ~1 and a log-softmax, errors stay O(1e-6); TOL keeps the 10x margin of the float32
streaming tests (test_cuda_stream), with the same normwise measure and floor of 1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnlm_engine.kernels.cpu as kc
from rnnlm_engine import (
    ConfigError,
    Model,
    ModelConfig,
    ParameterError,
    load,
    oracle,
    streaming,
)
from rnnlm_engine import QuantizedModel as PublicQuantizedModel
from rnnlm_engine.kernels.cpu._stream import INT8_ROWS
from rnnlm_engine.modelfile import load as load_file
from rnnlm_engine.quantized import QuantizedModel
from rnnlm_engine.stream import StreamBatch

TOL = 2e-5
FLOOR = 1.0


def float_params(config: ModelConfig, rng, zero_row: bool, huge: bool) -> dict:
    """Weights ~ 1/sqrt(fan-in) (pre-activations O(1)), with a row of zeros in every
    matrix and one value 50x the rest in a row of each (its other weights then take only
    a few int8 steps), where drawn."""
    sd = {}
    for name, shape in config.parameter_shapes().items():
        a = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
        if len(shape) == 2:
            if zero_row:
                a[rng.integers(shape[0])] = 0.0
            if huge:
                r, k = rng.integers(shape[0]), rng.integers(shape[1])
                a[r, k] = 50.0 / np.sqrt(shape[-1])
        sd[name] = a
    return sd


@st.composite
def int8_models(draw, adaptive=False):
    cell = draw(st.sampled_from(["rnn", "gru", "lstm"]))
    L = draw(st.integers(1, 3))
    # gate rows 1..68: below, at and past INT8_ROWS (an adaptive tail needs H // 4 >= 1)
    H = draw(st.sampled_from([5, 9, 17] if adaptive else [1, 2, 5, 9, 17]))
    residual = draw(st.booleans())
    E = H if residual and draw(st.booleans()) else draw(st.sampled_from([1, 3, 8, 33]))
    tied = not adaptive and E == H and draw(st.booleans())
    if adaptive:
        V = draw(st.integers(8, 40))
        c0 = draw(st.integers(2, V - 4))
        cutoffs = (c0,) if draw(st.booleans()) else (c0, c0 + 2)
        config = ModelConfig(cell, V, E, H, L, residual=residual, cutoffs=cutoffs, div_value=2.0)
    else:
        V = draw(st.sampled_from([2, 7, 23, 70]))
        config = ModelConfig(cell, V, E, H, L, tied=tied, residual=residual)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sd = float_params(config, rng, draw(st.booleans()), draw(st.booleans()))
    model = Model.from_state_dict(sd, cell=cell, tied=tied, residual=residual)
    return config, model.quantize("int8")


def dequantized_params(q: QuantizedModel) -> dict:
    """The float32 weights the int8 model stands for (state_dict names, tied listed once)."""
    return q._dequantized_host()


def poisoned(shape) -> np.ndarray:
    return np.full(shape, np.nan, np.float32)


@settings(max_examples=60, deadline=None)
@given(case=int8_models(), N=st.integers(1, 5), T=st.integers(1, 3), seed=st.integers(0, 99))
def test_int8_stream_step_matches_the_oracle_of_the_dequantized_weights(case, N, T, seed):
    config, q = case
    rng = np.random.default_rng(seed)
    L, H, G, V = config.num_layers, config.hidden_size, config.gate_rows, config.vocab_size
    ids = rng.integers(0, V, (T, N))
    h0 = rng.uniform(-1, 1, (L, N, H)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (L, N, H)).astype(np.float32)
    cell, residual, weights = streaming._build_stream_args(q)
    # a float32 input table only for small vocabularies (no larger than what it replaces)
    assert weights[1].dtype == np.int8 and (weights[0].shape[0] > 0) == q._has_input_table()
    h_out, c_out, out = poisoned((L, N, H)), poisoned((L, N, H)), poisoned((N, V))
    h_in, c_in = h0.copy(), c0.copy()
    kc.stream_step(
        cell, residual, ids, *weights, h_in, c_in, h_out, c_out, poisoned((N, G)),
        poisoned((N, G)), poisoned((N, V)), out,
    )  # fmt: skip
    np.testing.assert_array_equal(h_in, h0)  # the state given is never written
    lstm = config.cell == "lstm"
    want_lp, (want_h, want_c) = oracle.model_forward(
        dequantized_params(q), config, ids, (h0, c0 if lstm else None)
    )
    for got, want in [(h_out, want_h), (out, want_lp[-1])] + ([(c_out, want_c)] if lstm else []):
        assert np.isfinite(got).all(), "an element left unwritten (NaN)"
        assert oracle.normwise_error(got, want, FLOOR) < TOL


@settings(max_examples=25, deadline=None)
@given(case=int8_models(adaptive=True), T=st.integers(1, 4), seed=st.integers(0, 99))
def test_int8_adaptive_streams_match_the_oracle(case, T, seed):
    """The layers in the int8 kernel, then the adaptive head and tails (dequantized)."""
    config, q = case
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, T)
    want, _ = oracle.model_forward(dequantized_params(q), config, ids.reshape(-1, 1))
    s = q.stream()
    got = np.stack([s.feed(int(t)) for t in ids])
    assert oracle.normwise_error(got, want[:, 0], FLOOR) < TOL
    pushed = q.stream()
    pushed.push([int(t) for t in ids])
    assert pushed.logprob(int(ids[0])) == pytest.approx(float(got[-1, ids[0]]), abs=1e-6)


@pytest.mark.parametrize("G", [1, INT8_ROWS - 1, INT8_ROWS, INT8_ROWS + 1, 3 * INT8_ROWS + 5])
def test_every_row_of_an_int8_product_is_written(G):
    """The products of int8 rows in blocks of INT8_ROWS: every row of every stream, the
    last block's too, equals the oracle's (outputs poisoned first)."""
    from rnnlm_engine.kernels.cpu import _stream
    from rnnlm_engine.quantize import quantize_rows

    rng = np.random.default_rng(G)
    K, N = 13, 3
    w, s = quantize_rows(rng.standard_normal((G, K)).astype(np.float32))
    x = rng.standard_normal((N, K)).astype(np.float32)
    bias = rng.standard_normal(G).astype(np.float32)
    want = x.astype(np.float64) @ oracle.dequantize_rows(w, s).T + bias
    for product in (_stream._stream_products, _stream._stream_products_serial):
        out = poisoned((N, G))
        product(w, s, x, bias, out)
        assert oracle.normwise_error(out, want, FLOOR) < 1e-6


def small_model(cell="lstm", **kw) -> tuple[Model, QuantizedModel]:
    E = 12 if kw.get("tied") or kw.get("residual") else 8
    config = ModelConfig(cell, 30, E, 12, 2, **kw)
    sd = float_params(config, np.random.default_rng(5), True, True)
    m = Model.from_state_dict(sd, cell=cell, tied=config.tied, residual=config.residual)
    return m, m.quantize()


def test_a_quantized_model_is_int8_and_four_times_smaller():
    m, q = small_model()
    assert isinstance(q, QuantizedModel) and q.weight_storage == "int8"
    assert PublicQuantizedModel is QuantizedModel
    assert m.weight_storage == "float32"
    for name, a in q.int8_tensors()[0].items():
        assert a.dtype == (np.float32 if "bias" in name else np.int8)
    # int8 matrices plus one float32 scale per row and float32 biases
    shapes = m.config.parameter_shapes().values()
    want = sum(r * c + 4 * r for r, c in (s for s in shapes if len(s) == 2))
    assert q.nbytes() == want + sum(4 * s[0] for s in shapes if len(s) == 1)
    assert m.nbytes() == 4 * m.config.num_parameters()
    big = Model.from_state_dict(float_params(ModelConfig("lstm", 2000, 64, 64, 2),
                                             np.random.default_rng(1), False, False))  # fmt: skip
    assert big.quantize().nbytes() < 0.3 * big.nbytes()  # (1 + 4 / 64) / 4, and the biases
    assert q.quantize("int8") is q
    with pytest.raises(ConfigError, match="kind must be one of int8"):
        m.quantize("int4")


def test_only_a_small_vocabulary_gets_a_float32_input_table():
    """A character model's (V, G) table is no larger than the int8 embedding and W_ih0
    it replaces; a word model's would be larger than the whole int8 model."""
    for V, H, table in ((65, 256, True), (10000, 200, False)):
        config = ModelConfig("lstm", V, H, H, 1)
        q = Model.from_state_dict(float_params(config, np.random.default_rng(0), False, False))
        q = q.quantize()
        assert q._has_input_table() == table
        assert (streaming.streaming_weights(q)["table"].shape[0] > 0) == table


def test_batch_passes_are_the_dequantized_float32_models_to_the_bit():
    m, q = small_model()
    f = q.dequantize()
    ids = np.random.default_rng(0).integers(0, 30, (6, 3))
    np.testing.assert_array_equal(q.forward(ids)[0], f.forward(ids)[0])
    np.testing.assert_array_equal(
        q.token_logprobs(ids[:-1], ids[1:])[0], f.token_logprobs(ids[:-1], ids[1:])[0]
    )
    # and the float32 model of the dequantized weights is the oracle's
    want, _ = oracle.model_forward(f.state_dict(), f.config, ids)
    assert oracle.normwise_error(q.forward(ids)[0], want, FLOOR) < TOL


def test_int8_streams_batches_and_generation_agree():
    _, q = small_model("gru")
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    lone = [q.stream() for _ in range(3)]
    batch = StreamBatch(q)
    together = [batch.stream() for _ in range(3)]
    for t in range(len(ids)):
        toks = [ids[t], ids[-1 - t], t]
        got = batch.step(list(zip(together, toks, strict=True)))
        for i, s in enumerate(lone):
            np.testing.assert_array_equal(got[i], s.feed(toks[i]))  # the same kernel
    a, b = q.stream(), q.stream()
    drawn = list(a.generate([3], max_tokens=20, seed=7))
    assert drawn == list(b.generate([3], max_tokens=20, seed=7)) and len(drawn) == 20
    snap = lone[0].snapshot()
    other = q.stream()
    other.restore(snap)
    np.testing.assert_array_equal(other.feed(2), lone[0].feed(2))


def test_save_and_load_are_bit_exact(tmp_path):
    for kw in ({}, {"residual": True}, {"tied": True}, {"cutoffs": (10, 20), "div_value": 2.0}):
        m, q = small_model(**kw)
        path = tmp_path / "q.rnnlm"
        q.save(path)
        f = load_file(path)
        assert f.version == (2, 0) and f.scales is not None
        r = load(path)
        assert isinstance(r, QuantizedModel) and r.fingerprint() == q.fingerprint()
        w1, s1 = q.int8_tensors()
        w2, s2 = r.int8_tensors()
        for name in w1:
            assert w2[name].dtype == w1[name].dtype
            np.testing.assert_array_equal(w2[name], w1[name])
        for name in s1:
            np.testing.assert_array_equal(s2[name], s1[name])
        np.testing.assert_array_equal(r.stream().feed([1, 2, 3]), q.stream().feed([1, 2, 3]))
        assert r.fingerprint() != m.fingerprint()


def test_training_and_state_dict_are_refused():
    _, q = small_model()
    with pytest.raises(ConfigError, match="train the float32 model, then quantize"):
        q.state_dict()
    with pytest.raises(ConfigError, match="train the float32 model, then quantize"):
        q.loss_and_grad(np.zeros((2, 1), np.int64), np.zeros((2, 1), np.int64))
    with pytest.raises(ConfigError, match="no training state"):
        q.save("/nonexistent/x", training={"tensors": {}, "values": {}})


def test_an_int8_model_streams_on_the_cuda_backend():
    """The CUDA streaming kernel on int8 weights (each dequantized as it is loaded) gives
    the CPU int8 kernel's log-probabilities and states to float32 rounding (the simulator
    on a machine without a GPU)."""
    import rnnlm_engine.kernels.cuda as kcu

    if kcu.unavailable_reason() is not None:
        pytest.skip(f"the cuda backend cannot run here: {kcu.unavailable_reason()}")
    for kw in ({}, {"residual": True}, {"cutoffs": (10, 20), "div_value": 2.0}):
        _, q = small_model(**kw)
        weights, scales = q.int8_tensors()
        g = QuantizedModel(q.config, weights, scales, backend="cuda")
        assert g.backend == "cuda" and g.fingerprint() == q.fingerprint()
        a, b = q.stream(), g.stream()
        for t in (3, 1, 4, 1, 5):
            assert oracle.normwise_error(b.feed(t), a.feed(t), FLOOR) < TOL
        np.testing.assert_allclose(b.snapshot().h, a.snapshot().h, atol=TOL)


def test_bad_int8_weights_are_refused_before_a_kernel_sees_them():
    m, q = small_model()
    weights, scales = q.int8_tensors()
    name = "rnn.weight_hh_l1"
    for bad, match in [
        (np.float32(0.0), "positive and finite"),
        (np.float32(-1.0), "positive and finite"),
        (np.float32(np.nan), "positive and finite"),
        (np.float32(np.inf), "positive and finite"),
    ]:
        s = dict(scales)
        s[name] = scales[name].copy()
        s[name][3] = bad
        with pytest.raises(ParameterError, match=match):
            QuantizedModel(m.config, weights, s)
    s = dict(scales)
    s[name] = scales[name][:-1]
    with pytest.raises(ParameterError, match="float32 of shape"):
        QuantizedModel(m.config, weights, s)
    w = dict(weights)
    w[name] = weights[name].copy()
    w[name][0, 0] = -128
    with pytest.raises(ParameterError, match="-128"):
        QuantizedModel(m.config, w, scales)
    for w, s, match in [
        (dict(weights, extra=weights[name]), scales, "unexpected parameter"),
        ({k: v for k, v in weights.items() if k != name}, scales, "missing parameter"),
        (dict(weights, **{name: weights[name].astype(np.float32)}), scales, "int8 rows of shape"),
        (weights, {k: v for k, v in scales.items() if k != name}, "missing the scales"),
        (weights, dict(scales, **{"rnn.bias_hh_l0": scales[name]}), "not int8 matrices"),
    ]:
        with pytest.raises(ParameterError, match=match):
            QuantizedModel(m.config, w, s)


# ---------------------------------------------------------------------- review findings


def test_inspection_of_an_int8_model_is_the_dequantized_models():
    """Traces, attributions, gradients by lag, singular values and the diagnosis read the
    float32 model of the dequantized weights (their functions used to read the int8
    values as weights, or the layers' passes an int8 model does not have)."""
    from rnnlm_engine import attribution, explain

    _, q = small_model()
    f = q.dequantize()
    ids = np.random.default_rng(4).integers(0, 30, 40)
    got, want = q.trace(ids), f.trace(ids)
    np.testing.assert_array_equal(got.logprob, want.logprob)
    np.testing.assert_array_equal(got.layers[1].h, want.layers[1].h)
    np.testing.assert_array_equal(  # the module function, given the int8 model itself
        attribution.attribution(q, ids, 30).scores, attribution.attribution(f, ids, 30).scores
    )
    for x, y in zip(attribution.attributions(q, ids, 5), attribution.attributions(f, ids, 5),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(x, y)
    lag_q, lag_f = attribution.gradient_by_lag(q, ids, 8, 10), f.gradient_by_lag(ids, 8, 10)
    np.testing.assert_array_equal(lag_q.norms, lag_f.norms)
    assert (
        attribution.singular_values(q) == attribution.singular_values(f) == (lag_q.singular_values)
    )
    dq, df = explain.diagnose(q, ids, 8, 10), explain.diagnose(f, ids, 8, 10)
    assert dq.pop("model").endswith(", int8 weights") and not df.pop("model").endswith(
        "int8 weights"
    )
    assert dq == df
    page = explain.report_data(q, ids, "int8", window=5, max_lag=8, positions=10)
    np.testing.assert_array_equal(page["logprob"], want.logprob)
    assert page["model"].endswith("int8 weights")


def test_the_cli_diagnoses_an_int8_model_file(tmp_path, capsys):
    from rnnlm_engine.cli import main
    from rnnlm_engine.vocab import Vocabulary

    text = "to be or not to be, that is the question\n" * 3
    vocab = Vocabulary.build(text, "char")
    config = ModelConfig("lstm", len(vocab), 8, 12, 2)
    sd = float_params(config, np.random.default_rng(2), False, False)
    q = Model.from_state_dict(sd, vocab=vocab).quantize()
    q.save(tmp_path / "q.rnnlm")
    q.dequantize().save(tmp_path / "f.rnnlm")
    (tmp_path / "text.txt").write_text(text)
    outs = []
    for name in ("q.rnnlm", "f.rnnlm"):
        args = ["diagnose", str(tmp_path / name), str(tmp_path / "text.txt"), "--json",
                "--max-lag", "6", "--positions", "10"]  # fmt: skip
        assert main(args) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0].pop("model") != outs[1].pop("model")
    assert outs[0] == outs[1]


def test_dropped_models_and_the_float_copy_are_freed_without_the_cycle_collector():
    """A model and its output layer referred to each other, so a dropped model (and the
    float32 copy that release_workspace dropped) stayed until the cyclic collector ran."""
    import gc
    import weakref

    ids = np.arange(6).reshape(3, 2)

    def use(m, q):
        m.forward(ids)
        m.stream().feed(1)
        q.forward(ids)
        q.stream().feed(1)
        return weakref.ref(q._float())

    use(*small_model())  # first calls (compiling, imports) out of the way
    gc.collect()
    gc.disable()
    try:
        m, q = small_model()
        twin = use(m, q)
        dropped = weakref.ref(m)
        del m
        assert dropped() is None
        q.release_workspace()
        assert twin() is None
        dropped = weakref.ref(q)
        del q
        assert dropped() is None
    finally:
        gc.enable()


def test_a_quantized_model_keeps_copies_of_the_arrays_it_was_given():
    """Aligned arrays were kept as they were: the caller could write NaN or -128 into the
    immutable, validated model (and found its own arrays made read-only)."""
    m, q = small_model()
    weights, scales = q.int8_tensors()
    weights = {k: kc.to_device_aligned(v, copy=True) for k, v in weights.items()}
    scales = {k: kc.to_device_aligned(v, copy=True) for k, v in scales.items()}
    assert all(a.ctypes.data % 64 == 0 for a in (*weights.values(), *scales.values()))
    mine = QuantizedModel(m.config, weights, scales)
    before = mine.stream().feed(3).copy()
    for a in (*weights.values(), *scales.values()):
        assert a.flags.writeable  # still the caller's to change
    scales["decoder.weight"][:] = np.nan
    weights["encoder.weight"][:] = -128
    np.testing.assert_array_equal(mine.stream().feed(3), before)


def test_building_an_int8_model_makes_no_matrix_sized_temporaries():
    """quantize_rows and the constructor's overflow check go over blocks of rows: peak
    memory beyond the result stays under the float32 matrix's bytes (whole-matrix
    float64 and int32 copies took 5-8x)."""
    import tracemalloc

    from rnnlm_engine.quantize import quantize_rows

    w = np.random.default_rng(0).standard_normal((2048, 1024)).astype(np.float32)  # 8 MB
    tracemalloc.start()
    try:
        q, s = quantize_rows(w)
        _, peak = tracemalloc.get_traced_memory()
        assert peak - q.nbytes - s.nbytes < w.nbytes
        config = ModelConfig("rnn", 2048, 1024, 8, 1, tied=False)
        sd = float_params(config, np.random.default_rng(1), False, False)
        sd["encoder.weight"] = w
        weights, scales = Model.from_state_dict(sd, cell="rnn").quantize().int8_tensors()
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        QuantizedModel(config, weights, scales)
        _, peak = tracemalloc.get_traced_memory()
        # its own copies (int8 matrices, scales, biases) and a block's temporaries
        own = sum(a.nbytes for a in (*weights.values(), *scales.values()))
        assert peak - base < own + 0.5 * w.nbytes
    finally:
        tracemalloc.stop()


def test_the_constructors_refuse_wrong_types_with_one_clear_error():
    """Not an AttributeError or TypeError from inside: the error names the argument."""
    m, q = small_model()
    weights, scales = q.int8_tensors()
    params = m.state_dict()
    for build, error, match in [
        (lambda: Model(m.config.to_dict(), params), ConfigError, "config must be a ModelConfig"),
        (lambda: Model(m.config, None), ParameterError, "params must be a dict"),
        (lambda: Model(m.config, list(params.values())), ParameterError, "got list"),
        (lambda: Model(m.config, params, metadata=[1]), ConfigError, "metadata must be a dict"),
        (lambda: QuantizedModel(m.config.to_dict(), weights, scales), ConfigError, "ModelConfig"),
        (lambda: QuantizedModel(m.config, None, scales), ParameterError, "weights must be a"),
        (lambda: QuantizedModel(m.config, weights, None), ParameterError, "scales must be a"),
    ]:
        with pytest.raises(error, match=match):
            build()
