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
from rnnlm_engine.inspection import GATES, gate_saturation
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
