"""Residual connections (ModelConfig.residual): layer l's output is its cell's h plus its
input, for l >= 1 and for layer 0 when emb_size == hidden_size.

Checked against the float64 oracle (forward, scores, gradients, with and without
dropout), the oracle's gradients against finite differences, the whole model against a
PyTorch module written here (one torch RNN per layer, outputs added to inputs) on the
same weights, and streaming (Stream, StreamBatch) against the batched forward pass.

Tolerances are those of tests/test_model.py and tests/test_torch_crosscheck.py, for the
same reasons (float32 through T steps and L layers; normwise errors against the largest
value): a residual path adds one float32 addition per layer, whose rounding (6e-8
relative) is far inside them, while a missing or misplaced residual term makes errors
of order 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rnnlm_engine import Model, ModelConfig, ParameterError, oracle
from rnnlm_engine.config import CELLS
from rnnlm_engine.stream import StreamBatch

LOGPROB_TOL = 1e-4  # normwise, against the largest |log-probability|
STATE_TOL = 1e-4
GRAD_TOL = 1e-3  # normwise per tensor, against max(its largest, 0.01 x the largest of all)

normwise = oracle.normwise_error


def make(cell, L, E, H, V, seed, scale=0.5, residual=True):
    rng = np.random.default_rng(seed)
    config = ModelConfig(cell, V, E, H, L, residual=residual)
    sd = {
        name: rng.uniform(-scale, scale, shape).astype(np.float32)
        for name, shape in config.parameter_shapes().items()
    }
    return sd, Model.from_state_dict(sd, cell=cell, residual=residual)


def test_which_layers_are_residual():
    assert ModelConfig("lstm", 5, 4, 4, 3, residual=True).residual_layers == (True,) * 3
    assert ModelConfig("lstm", 5, 3, 4, 3, residual=True).residual_layers == (False, True, True)
    assert ModelConfig("lstm", 5, 3, 4, 1, residual=True).residual_layers == (False,)
    assert ModelConfig("lstm", 5, 4, 4, 3).residual_layers == (False,) * 3
    # a plain model's settings are what they were before residual layers existed
    assert "residual" not in ModelConfig("gru", 5, 4, 4, 2).to_dict()
    config = ModelConfig("gru", 5, 4, 4, 2, residual=True)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_residual_changes_the_model_and_says_so():
    sd, plain = make("lstm", 2, 4, 4, 9, 0, residual=False)
    residual = Model.from_state_dict(sd, cell="lstm", residual=True)
    ids = np.arange(6).reshape(3, 2)
    assert not np.allclose(plain.forward(ids)[0], residual.forward(ids)[0])
    assert "residual" in repr(residual) and "residual" not in repr(plain)
    assert plain.fingerprint() != residual.fingerprint()
    with pytest.raises(Exception, match="residual must be True or False"):
        Model.from_state_dict(sd, cell="lstm", residual="yes")


sizes = dict(
    L=st.integers(1, 3),
    H=st.integers(1, 6),
    emb_is_hidden=st.booleans(),
    V=st.integers(2, 12),
    T=st.integers(1, 5),
    B=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=40)
@given(**sizes)
@example(L=3, H=5, emb_is_hidden=True, V=7, T=4, B=2, seed=0)
@example(L=1, H=1, emb_is_hidden=True, V=2, T=1, B=1, seed=1)
def test_forward_and_scores_match_the_oracle(cell, L, H, emb_is_hidden, V, T, B, seed):
    E = H if emb_is_hidden else H + 2
    sd, model = make(cell, L, E, H, V, seed)
    rng = np.random.default_rng(seed + 1)
    ids = rng.integers(0, V, (T, B))
    targets = rng.integers(0, V, (T, B))
    ref_lp, (ref_h, ref_c) = oracle.model_forward(sd, model.config, ids)
    lp, state = model.forward(ids)
    assert normwise(lp, ref_lp) < LOGPROB_TOL
    assert normwise(state.h, ref_h) < STATE_TOL
    if cell == "lstm":
        assert normwise(state.c, ref_c) < STATE_TOL
    scores, _ = model.token_logprobs(ids, targets)
    ref = np.take_along_axis(ref_lp, targets[..., None], axis=2)[..., 0]
    assert np.abs(scores - ref).max() / np.abs(ref_lp).max() < LOGPROB_TOL


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=40)
@given(**sizes, dropout=st.sampled_from([0.0, 0.3]))
@example(L=3, H=4, emb_is_hidden=True, V=6, T=3, B=2, seed=0, dropout=0.3)
def test_loss_and_grad_match_the_oracle(cell, L, H, emb_is_hidden, V, T, B, seed, dropout):
    E = H if emb_is_hidden else H + 1
    sd, model = make(cell, L, E, H, V, seed)
    rng = np.random.default_rng(seed + 1)
    ids = rng.integers(0, V, (T, B))
    targets = rng.integers(0, V, (T, B))
    masks = model.dropout_masks(T, B, dropout, rng) if dropout else None
    ref_loss, ref_grads, _ = oracle.model_loss_and_grad(sd, model.config, ids, targets, None, masks)
    loss, grads, _ = model.loss_and_grad(ids, targets, None, masks)
    assert abs(loss - ref_loss) <= LOGPROB_TOL * max(1.0, abs(ref_loss))
    G = max(np.abs(g).max() for g in ref_grads.values())
    for name, ref in ref_grads.items():
        scale = max(np.abs(ref).max(), 0.01 * G)
        err = np.abs(grads[name].astype(np.float64) - ref).max() / scale
        assert err < GRAD_TOL, f"{name}: normwise error {err:.2e}"


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("emb_is_hidden", [True, False])
def test_the_oracle_gradient_matches_finite_differences(cell, emb_is_hidden):
    """Central differences of the float64 oracle's loss along a random direction of every
    parameter at once: error O(eps^2) ~ 1e-10 against a derivative of order 0.1-1."""
    H = 3
    sd, model = make(cell, 3, H if emb_is_hidden else 2, H, 5, 7)
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    rng = np.random.default_rng(3)
    ids, targets = rng.integers(0, 5, (4, 2)), rng.integers(0, 5, (4, 2))
    masks = [m.astype(np.float64) for m in model.dropout_masks(4, 2, 0.25, rng)]
    _, grads, _ = oracle.model_loss_and_grad(sd, model.config, ids, targets, None, masks)
    direction = {k: rng.standard_normal(v.shape) for k, v in sd.items()}
    eps = 1e-5

    def loss_at(t):
        moved = {k: sd[k] + t * direction[k] for k in sd}
        return oracle.model_loss_and_grad(moved, model.config, ids, targets, None, masks)[0]

    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(grads[k] * direction[k])) for k in sd)
    assert abs(numeric - analytic) < 1e-7 * max(1.0, abs(analytic))


# ---------------------------------------------------------------------------- PyTorch

torch_cases = [(cell, L, e) for cell in CELLS for L in (1, 3) for e in (True, False)]


@pytest.mark.parametrize(("cell", "L", "emb_is_hidden"), torch_cases)
def test_the_model_matches_a_pytorch_residual_stack(cell, L, emb_is_hidden):
    torch = pytest.importorskip("torch", reason="the PyTorch cross-check needs torch")

    class ResidualStack(torch.nn.Module):
        """Embedding, L one-layer torch RNNs whose outputs add their inputs where the
        sizes match, and a linear decoder."""

        def __init__(self, V, E, H):
            super().__init__()
            self.encoder = torch.nn.Embedding(V, E)
            kind = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
            self.layers = torch.nn.ModuleList(kind(E if k == 0 else H, H) for k in range(L))
            self.decoder = torch.nn.Linear(H, V)

        def forward(self, ids):
            x = self.encoder(ids)
            for layer in self.layers:
                out, _ = layer(x)
                x = out + x if out.shape == x.shape else out
            return torch.log_softmax(self.decoder(x), dim=-1)

        def engine_state_dict(self):
            sd = {"encoder.weight": self.encoder.weight, "decoder.weight": self.decoder.weight,
                  "decoder.bias": self.decoder.bias}  # fmt: skip
            for k, layer in enumerate(self.layers):
                for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    sd[f"rnn.{part}_l{k}"] = getattr(layer, f"{part}_l0")
            return sd

    V, H = 13, 6
    E = H if emb_is_hidden else 4
    torch.manual_seed(L * 10 + emb_is_hidden)
    module = ResidualStack(V, E, H)
    named = module.engine_state_dict()
    model = Model.from_state_dict(
        {k: v.detach().numpy().copy() for k, v in named.items()}, cell=cell, residual=True
    )
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, V, (7, 3)), rng.integers(0, V, (7, 3))
    want = module(torch.from_numpy(ids))
    lp, _ = model.forward(ids)
    assert normwise(lp, want.detach().numpy()) < LOGPROB_TOL
    loss_t = -want.gather(2, torch.from_numpy(targets)[..., None]).mean()
    loss_t.backward()
    loss, grads, _ = model.loss_and_grad(ids, targets)
    assert abs(loss - loss_t.item()) < 1e-5
    for name, param in named.items():
        ref = param.grad.numpy()
        assert normwise(grads[name], ref) < GRAD_TOL, name


# ---------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("emb_is_hidden", [True, False])
def test_streams_and_batches_equal_the_forward_pass(cell, emb_is_hidden):
    H = 5
    _, model = make(cell, 3, H if emb_is_hidden else 3, H, 11, 2)
    ids = np.random.default_rng(1).integers(0, 11, (6, 4))
    want, _ = model.forward(ids)
    for b in range(ids.shape[1]):
        s = model.stream()
        for t in range(ids.shape[0]):
            got = s.feed([int(ids[t, b])])
            assert normwise(got, want[t, b]) < LOGPROB_TOL
    batch = StreamBatch(model)
    streams = [batch.stream() for _ in range(ids.shape[1])]
    for t in range(ids.shape[0]):
        rows = batch.step([(s, int(ids[t, b])) for b, s in enumerate(streams)])
        for b, row in enumerate(rows):
            assert normwise(row, want[t, b]) < LOGPROB_TOL


# ---------------------------------------------------------------------------- float32 guard


def test_the_float32_guard_counts_the_residual_growth():
    """Layer outputs reach 1 + |input| in a residual stack, not 1: decoder rows whose L1
    norm times 1 fits float32 but times 2 does not are refused only with residual."""
    config = ModelConfig("rnn", 4, 3, 3, 2)  # E == H: the layer-0 input is the embedding
    sd = {
        name: np.full(shape, 0.01, np.float32) for name, shape in config.parameter_shapes().items()
    }
    sd["decoder.weight"] = np.full((4, 3), 0.3e38, np.float32)  # row L1 0.9e38 < 1e38
    Model.from_state_dict(sd, cell="rnn")  # the plain model: accepted
    with pytest.raises(ParameterError, match="overflow float32"):
        Model.from_state_dict(sd, cell="rnn", residual=True)


# ---------------------------------------------------------------------------- files, CLI


def test_a_residual_model_file_round_trips(tmp_path):
    from rnnlm_engine import load

    _, model = make("lstm", 2, 4, 4, 9, 5)
    model.save(tmp_path / "r.rnnlm")
    again = load(tmp_path / "r.rnnlm")
    assert again.config == model.config and again.config.residual
    ids = np.arange(8).reshape(4, 2)
    np.testing.assert_array_equal(again.forward(ids)[0], model.forward(ids)[0])


def test_rnnlm_train_residual_then_info(tmp_path, capsys):
    from rnnlm_engine import load
    from rnnlm_engine.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\nthe dog sat\n" * 40, encoding="utf-8")
    out = tmp_path / "m.rnnlm"
    argv = ["train", "--train", str(corpus), "--out", str(out), "--layers", "3", "--hidden",
            "8", "--batch-size", "4", "--bptt", "5", "--epochs", "1", "--optimizer", "adam",
            "--residual", "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    model = load(out)
    assert model.config.residual and model.config.residual_layers == (True, True, True)
    assert load(f"{out}.ckpt").config.residual
    # resuming keeps the setting; giving --residual again is the same run
    assert main(["train", "--out", str(out), "--resume", f"{out}.ckpt", "--epochs", "2",
                 "--residual", "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lstm 3 x 8, embedding 8, residual" in text and "format            2.0" in text
