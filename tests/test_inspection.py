"""Model.trace and gate saturation: states, gates and predictions against the float64
oracle, chunking that changes nothing, a direct count of saturation, and clear errors.

Tolerances: states and gates are float32 kernel outputs of a few steps and layers, held to
the oracle like tests/test_model.py's states (normwise 1e-4); log-probabilities likewise.
Ranks and entropies are computed from the kernels' log-probabilities, so they are checked
against those exactly and against the oracle's within the same tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from rnnlm_engine import InputError, Model, ModelConfig, oracle
from rnnlm_engine.config import CELLS
from rnnlm_engine.inspection import (
    GATES,
    LayerTrace,
    Trace,
    feature,
    find_units,
    gate_saturation,
    match_spans,
)
from rnnlm_engine.vocab import Vocabulary

TOL = 1e-4


def make(cell, L=2, E=5, H=6, V=13, seed=0, vocab=None):
    config = ModelConfig(cell, V, E, H, L)
    rng = np.random.default_rng(seed)
    sd = {n: rng.uniform(-0.7, 0.7, s).astype(np.float32)
          for n, s in config.parameter_shapes().items()}  # fmt: skip
    return sd, Model.from_state_dict(sd, cell=cell, vocab=vocab)


def oracle_layers(sd, config, ids):
    """Per layer (hs (T, H), cs or None, {gate: (T, H)}) of the float64 oracle, B = 1."""
    p = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    x = p["encoder.weight"][ids][:, None, :]
    out = []
    for k in range(config.num_layers):
        xproj = x @ p[f"rnn.weight_ih_l{k}"].T + p[f"rnn.bias_ih_l{k}"]
        H = config.hidden_size
        h0 = np.zeros((1, H))
        c0 = np.zeros((1, H)) if config.cell == "lstm" else None
        hs, _, _, cache = oracle.CELL_FORWARD[config.cell](
            xproj, p[f"rnn.weight_hh_l{k}"], p[f"rnn.bias_hh_l{k}"], h0, c0
        )
        gates, cs = {}, None
        if config.cell == "lstm":
            steps = cache["steps"]
            gates = {g: np.stack([s[2 + j][0] for s in steps]) for j, g in enumerate("ifgo")}
            cs = np.stack([s[6][0] for s in steps])
        elif config.cell == "gru":
            steps = cache["steps"]
            gates = {g: np.stack([s[1 + j][0] for s in steps]) for j, g in enumerate("rzn")}
        out.append((hs[:, 0], cs, gates))
        x = hs
    return out


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("chunk", [1, 4, 1024])
def test_a_trace_matches_the_oracle(cell, chunk):
    sd, model = make(cell)
    ids = np.random.default_rng(1).integers(0, 13, 11)
    tr = model.trace(ids, top_k=3, chunk=chunk)
    ref_lp, _ = oracle.model_forward(sd, model.config, ids[:, None])
    ref_lp = ref_lp[:, 0]
    assert np.isnan(tr.logprob[0]) and tr.rank[0] == 0 and np.isnan(tr.entropy[0])
    want = ref_lp[np.arange(10), ids[1:]]
    assert np.abs(tr.logprob[1:] - want).max() < TOL * np.abs(ref_lp).max()
    want_rank = 1 + np.sum(ref_lp[:10] > want[:, None], axis=1)
    assert np.array_equal(tr.rank[1:], want_rank)
    want_entropy = -np.sum(np.exp(ref_lp[:10]) * ref_lp[:10], axis=1)
    assert np.allclose(tr.entropy[1:], want_entropy, atol=TOL * np.log(13))
    top = np.argsort(-ref_lp[:10], axis=1, kind="stable")[:, :3]
    assert np.array_equal(tr.top_ids[1:], top)
    assert np.all(np.diff(tr.top_logprobs[1:], axis=1) <= 0)
    for layer, (hs, cs, gates) in enumerate(oracle_layers(sd, model.config, ids)):
        lt = tr.layers[layer]
        assert oracle.normwise_error(lt.h, hs) < TOL
        assert (lt.c is None) == (cs is None)
        if cs is not None:
            assert oracle.normwise_error(lt.c, cs) < TOL
        assert set(lt.gates) == set(GATES[cell])
        for name, ref in gates.items():
            assert oracle.normwise_error(lt.gates[name], ref) < TOL, name


def test_only_the_layers_and_units_asked_for_are_kept():
    _, model = make("lstm", L=3)
    ids = np.arange(9) % 13
    whole = model.trace(ids)
    part = model.trace(ids, layers=[2], units=[5, 0], top_k=0)
    assert list(part.layers) == [2] and list(part.units) == [5, 0]
    assert np.array_equal(part.layers[2].h, whole.layers[2].h[:, [5, 0]])
    assert np.array_equal(part.layers[2].gates["f"], whole.layers[2].gates["f"][:, [5, 0]])
    assert part.top_ids.shape == (9, 0)
    assert model.trace(ids, top_k=50).top_ids.shape == (9, 13)  # at most the vocabulary
    assert np.array_equal(part.logprob, whole.logprob, equal_nan=True)


def test_gate_saturation_is_the_fraction_of_steps_beyond_the_thresholds():
    _, model = make("gru", H=4)
    tr = model.trace(np.arange(40) % 13)
    sat = gate_saturation(tr)
    assert set(sat) == {0, 1} and set(sat[0]) == {"r", "z"}
    z = tr.layers[1].gates["z"]
    left, right = sat[1]["z"]
    for u in range(4):
        assert left[u] == sum(v < 0.1 for v in z[:, u]) / 40
        assert right[u] == sum(v > 0.9 for v in z[:, u]) / 40
    with pytest.raises(InputError, match="no gates"):
        gate_saturation(make("rnn")[1].trace([1, 2]))


def test_a_text_is_traced_with_the_models_vocabulary():
    vocab = Vocabulary.build("abcab\n", "char")
    _, model = make("lstm", V=len(vocab), vocab=vocab)
    tr = model.trace("abca")
    assert tr.words() == ["a", "b", "c", "a"]
    assert np.array_equal(tr.tokens, vocab.encode("abca"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(text_or_ids=[]), "nothing to trace"),
        (dict(text_or_ids=[1, 99]), "token id 99 at 1 is outside"),
        (dict(text_or_ids=[[1, 2]]), "1-D sequence"),
        (dict(text_or_ids="abc"), "no vocabulary"),
        (dict(text_or_ids=[1, 2], top_k=-1), "top_k must be an integer >= 0"),
        (dict(text_or_ids=[1, 2], layers=[2]), r"layers must be indices in \[0, 2\)"),
        (dict(text_or_ids=[1, 2], units=[]), "units must be indices"),
        (dict(text_or_ids=[1, 2], chunk=0), "chunk must be an integer >= 1"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs, message):
    _, model = make("lstm")
    with pytest.raises(InputError, match=message):
        model.trace(**kwargs)


def test_the_cuda_backend_traces_what_the_cpu_does():
    """(numba's CUDA simulator in CI: a few tokens of a small model)"""
    import rnnlm_engine.kernels.cuda as kc

    if kc.unavailable_reason() is not None:
        pytest.skip(f"the cuda backend cannot run here: {kc.unavailable_reason()}")
    sd, cpu = make("lstm", L=2, E=3, H=4, V=7)
    gpu = Model.from_state_dict(sd, cell="lstm", backend="cuda")
    ids = [1, 5, 2, 6, 0]
    with kc.small_launches():
        a, b = cpu.trace(ids, top_k=2), gpu.trace(ids, top_k=2, chunk=2)
    assert np.allclose(a.logprob, b.logprob, atol=TOL, equal_nan=True)
    assert np.array_equal(a.rank, b.rank) and np.array_equal(a.top_ids, b.top_ids)
    for layer in a.layers:
        assert oracle.normwise_error(b.layers[layer].c, a.layers[layer].c) < TOL
        for g in "ifgo":
            assert oracle.normwise_error(b.layers[layer].gates[g], a.layers[layer].gates[g]) < TOL


# ------------------------------------------------------------ unit search and spans


def synthetic_trace(h, vocab=None, tokens=None, c=None):
    """A Trace holding the given states as layer 0 (for the searches, which read only
    the states and the tokens)."""
    T, U = h.shape
    tokens = np.zeros(T, np.int64) if tokens is None else np.asarray(tokens, np.int64)
    z = np.zeros(T, np.float32)
    layer = LayerTrace(np.asarray(h, np.float32), c, {})
    return Trace(tokens, z, np.zeros(T, np.int64), z, np.zeros((T, 0), np.int64),
                 np.zeros((T, 0), np.float32), {0: layer}, np.arange(U), "lstm", vocab)  # fmt: skip


def test_the_built_in_features_read_the_tokens():
    text = 'ab "c" (d(e)) f\ng'
    vocab = Vocabulary.build(text, "char")
    tr = synthetic_trace(np.zeros((len(text), 1)), vocab, vocab.encode(text))
    assert feature(tr, "line_position").tolist() == list(range(16)) + [0]
    #                   a  b  _  "  c  "  _  (  d  (  e  )  )  _  f  \n g
    assert feature(tr, "in_quotes").tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert feature(tr, "bracket_depth").tolist() == [
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        1,
        1,
        2,
        2,
        2,
        1,
        0,
        0,
        0,
        0,
    ]
    words = Vocabulary.build("a b\nc d e\n", "word")
    tr = synthetic_trace(np.zeros((7, 1)), words, words.encode("a b\nc d e\n"))
    assert feature(tr, "line_position").tolist() == [0, 1, 2, 0, 1, 2, 3]  # "<eos>" ends lines


def test_find_units_ranks_units_by_their_correlation_with_a_feature():
    rng = np.random.default_rng(0)
    f = rng.normal(size=50)
    h = rng.normal(size=(50, 5))
    h[:, 3] = np.tanh(f)  # strongly correlated, not perfectly
    h[:, 1] = -2 * f  # perfectly anti-correlated
    h[:, 4] = 0.25  # constant: r = 0
    found = find_units(synthetic_trace(h), f, top=3, states=("h",))
    assert [(m.unit, m.state) for m in found[:2]] == [(1, "h"), (3, "h")]
    assert found[0].r == pytest.approx(-1.0, abs=1e-6)
    assert found[1].r == pytest.approx(np.corrcoef(f, h[:, 3].astype(np.float32))[0, 1], abs=1e-6)
    assert all(m.unit != 4 for m in found)


def test_find_units_on_a_models_trace_reports_its_states_correlation():
    text = 'say "hi" (to (me)) now\n' * 3
    vocab = Vocabulary.build(text, "char")
    _, model = make("lstm", V=len(vocab), vocab=vocab)
    tr = model.trace(text)
    best = find_units(tr, "line_position", top=1)[0]
    states = tr.layers[best.layer].h if best.state == "h" else tr.layers[best.layer].c
    want = np.corrcoef(feature(tr, "line_position"), states[:, best.unit])[0, 1]
    assert best.r == pytest.approx(want, abs=1e-6)
    every = find_units(tr, "line_position", top=10_000)
    assert len(every) == 2 * 2 * 6 and abs(best.r) == max(abs(m.r) for m in every)


def test_match_spans_finds_where_the_spans_units_are_on_together():
    h = np.full((30, 4), -1.0)
    for s, e in [(2, 5), (10, 13), (20, 22), (25, 26)]:
        h[s:e, 0] = h[s:e, 1] = 1.0
    h[12:18, 2] = 1.0  # on in part of the query's span only: not chosen
    h[2:5, 3] = 1.0  # on over the query's span too: chosen
    h[10:13, 3] = 1.0
    units, spans = match_spans(synthetic_trace(h), (2, 5), 0.5)
    assert units.tolist() == [0, 1, 3]
    assert [(m.start, m.end) for m in spans] == [(10, 13)]
    units, spans = match_spans(synthetic_trace(h), (2, 5), 0.5, units=[0, 1])
    assert [(m.start, m.end) for m in spans] == [(10, 13), (20, 22), (25, 26)]
    _, spans = match_spans(synthetic_trace(h), (2, 5), 0.5, min_fraction=0.6)
    assert (20, 22) in [(m.start, m.end) for m in spans]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda tr: find_units(tr, "indent"), "feature must be one of"),
        (lambda tr: find_units(tr, np.zeros(3)), r"must be \(10,\) finite numbers"),
        (lambda tr: find_units(tr, np.zeros(10), states=("x",)), "states must be"),
        (lambda tr: match_spans(tr, (5, 5), 0.5), "0 <= start < end <= 10"),
        (lambda tr: match_spans(tr, (0, 3), 2.0), "no unit of layer 0 is at or above 2.0"),
        (lambda tr: match_spans(tr, (0, 3), 0.5, units=[7]), r"\[7\] are not"),
        (lambda tr: match_spans(tr, (0, 3), 0.5, layer=1), "layer 1 was not kept"),
        (lambda tr: feature(tr, "line_position"), "no vocabulary"),
    ],
)
def test_bad_searches_are_one_clear_error(call, message):
    with pytest.raises(InputError, match=message):
        call(synthetic_trace(np.ones((10, 2))))
