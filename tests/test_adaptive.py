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

from rnnlm_engine import ConfigError, ModelConfig, oracle

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


def test_the_engine_refuses_what_it_cannot_compute_or_write_yet(tmp_path):
    """Until the kernels and the file feature land, an adaptive model is refused with one
    clear error, never computed as another model or written as a file no reader takes."""
    from rnnlm_engine import Model, modelfile

    config = ModelConfig("lstm", 30, 5, 16, 1, cutoffs=(5,))
    sd = {n: a.astype(np.float32) for n, a in random_sd(config).items()}
    with pytest.raises(ConfigError, match="adaptive softmax output is not in the engine"):
        Model(config, sd)
    with pytest.raises(ConfigError, match="cannot write 'adaptive' yet"):
        modelfile.save(tmp_path / "m.rnnlm", config=config, tensors=sd)
    assert not (tmp_path / "m.rnnlm").exists()
