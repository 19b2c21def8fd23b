"""PyTorch word_language_model checkpoints in and out (rnnlm_engine/torch_io.py): a
word_language_model RNNModel written here, trained two steps with torch, saved both ways
(state_dict, and the whole pickled model), imported: the engine's scores equal torch's;
export then import is bit-exact; the vocabulary is word_language_model's Corpus's; other
architectures and untrusted pickles are refused with a clear error."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from rnnlm_engine import InputError, Model, ModelConfig, load
from rnnlm_engine.cli import main
from rnnlm_engine.errors import ConfigError

torch = pytest.importorskip("torch", reason="torch is an optional extra: pip install torch")
nn = torch.nn

from rnnlm_engine import torch_io  # noqa: E402

# float32 log-probabilities of the same weights through two implementations: the
# products sum in another order (a few ulps of |logits| ~ 10)
TOL = 2e-5


class RNNModel(nn.Module):
    """word_language_model's model.py RNNModel (its LSTM / GRU / RNN_TANH / RNN_RELU part)."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.0, tie_weights=False):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ["LSTM", "GRU"]:
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        else:
            nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.ntoken)
        return torch.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        zeros = weight.new_zeros(self.nlayers, bsz, self.nhid)
        return (zeros, zeros.clone()) if self.rnn_type == "LSTM" else zeros


def trained(rnn_type="LSTM", V=23, E=8, H=8, L=2, tie=False, seed=0) -> RNNModel:
    """An RNNModel after two SGD steps on random windows (word_language_model's loop)."""
    torch.manual_seed(seed)
    model = RNNModel(rnn_type, V, E, H, L, dropout=0.2 if L > 1 else 0.0, tie_weights=tie)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    hidden = model.init_hidden(4)
    for _ in range(2):
        data = torch.randint(0, V, (6, 4))
        target = torch.randint(0, V, (6 * 4,))
        model.zero_grad()
        out, hidden = model(data, hidden)
        hidden = tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()
        nn.functional.nll_loss(out, target).backward()
        opt.step()
    return model.eval()


def torch_logprobs(model: RNNModel, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out, _ = model(torch.from_numpy(ids), model.init_hidden(ids.shape[1]))
    return out.numpy().reshape(*ids.shape, -1)


def words(V: int):
    from rnnlm_engine.vocab import Vocabulary

    return Vocabulary("word", ["<eos>"] + [f"w{i}" for i in range(V - 1)])


@pytest.mark.parametrize(
    "rnn_type, tie, L", [("LSTM", False, 2), ("GRU", True, 1), ("RNN_TANH", False, 3)]
)
def test_both_kinds_of_checkpoint_import_with_torchs_scores(tmp_path, rnn_type, tie, L):
    tm = trained(rnn_type, tie=tie, L=L)
    ids = np.random.default_rng(1).integers(0, 23, (7, 3))
    want = torch_logprobs(tm, ids)
    sd_path, whole_path = tmp_path / "sd.pt", tmp_path / "model.pt"
    torch.save(tm.state_dict(), sd_path)
    torch.save(tm, whole_path)  # what word_language_model's main.py writes
    cell = "rnn" if rnn_type == "RNN_TANH" else None  # a state_dict cannot say tanh
    for path, trust in ((sd_path, False), (whole_path, True)):
        model = torch_io.import_model(path, words(23), cell=cell, trust_pickle=trust)
        assert model.config.cell == {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn"}[rnn_type]
        assert model.config.tied == tie and model.config.num_layers == L
        got, _ = model.forward(ids)
        assert np.abs(got - want).max() < TOL, path


def test_a_whole_model_needs_trust(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(trained(), path)
    with pytest.raises(InputError, match="pass --trust-pickle"):
        torch_io.import_model(path, words(23))


def test_export_then_import_is_bit_exact(tmp_path):
    model = torch_io.import_model(_saved_state_dict(tmp_path, trained(tie=True)), words(23))
    out, vocab_path = torch_io.export_model(model, tmp_path / "out.pt")
    sd = torch.load(out, weights_only=True)
    assert set(sd) == set(model.state_dict())  # tied: decoder.weight listed, as torch does
    back = torch_io.import_model(out, torch_io.read_token_list(vocab_path))
    assert back.vocab == model.vocab and back.config == model.config
    for name, a in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], a)
    # and the exported state_dict loads into word_language_model's RNNModel
    tm = RNNModel("LSTM", 23, 8, 8, 2, tie_weights=True)
    tm.load_state_dict(sd)


def _saved_state_dict(tmp_path, tm) -> str:
    path = tmp_path / "sd.pt"
    torch.save(tm.state_dict(), path)
    return path


def test_the_vocabulary_is_word_language_models_corpus(tmp_path):
    """Corpus numbers words by first appearance over train, valid, test, each line's words
    followed by <eos> (an empty line too)."""
    (tmp_path / "train.txt").write_text("the cat sat\n\na dog  sat on the mat\n")
    (tmp_path / "valid.txt").write_text("the bird\n")
    (tmp_path / "test.txt").write_text("a cat flew")  # no final newline
    want = ["the", "cat", "sat", "<eos>", "a", "dog", "on", "mat", "bird", "flew"]
    assert list(torch_io.corpus_vocabulary(tmp_path).tokens) == want
    (tmp_path / "tokens.txt").write_text("\n".join(want) + "\n")
    assert list(torch_io.read_token_list(tmp_path / "tokens.txt").tokens) == want


def test_other_architectures_are_refused_clearly(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"pos_encoder.pe": torch.zeros(3), "encoder.weight": torch.zeros(4, 2)}, path)
    with pytest.raises(InputError, match="not word_language_model's RNNModel"):
        torch_io.import_model(path, None)
    torch.save(trained("RNN_RELU"), path)
    with pytest.raises(InputError, match="'RNN_RELU'"):
        torch_io.import_model(path, None, trust_pickle=True)
    torch.save(trained("RNN_TANH").state_dict(), path)
    with pytest.raises(InputError, match="does not say tanh or relu"):
        torch_io.import_model(path, None)
    torch.save({"encoder.weight": torch.zeros(4, 2, dtype=torch.int64)}, path)
    with pytest.raises(InputError, match="not floating point"):
        torch_io.import_model(path, None)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="does not load as a state_dict"):
        torch_io.import_model(path, None)
    torch.save(trained().state_dict(), path)
    with pytest.raises(InputError, match="vocabulary has 5 tokens but the model's vocab_size"):
        torch_io.import_model(path, words(5))


def test_what_word_language_model_cannot_hold_is_not_exported(tmp_path):
    config = ModelConfig("lstm", 30, 8, 8, 1, cutoffs=(10,), div_value=2.0)
    from rnnlm_engine.train import initial_parameters

    sd = initial_parameters(config, 0.1, np.random.default_rng(0))
    adaptive = Model.from_state_dict(sd)
    with pytest.raises(ConfigError, match="no adaptive softmax"):
        torch_io.export_model(adaptive, tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="dequantize"):
        torch_io.export_model(adaptive.quantize(), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_the_command_line(tmp_path, capsys):
    (tmp_path / "train.txt").write_text(" ".join(f"w{i}" for i in range(22)) + "\n")
    tm = trained()
    torch.save(tm, tmp_path / "model.pt")
    args = ["import-torch", str(tmp_path / "model.pt"), "--corpus", str(tmp_path), "--out",
            str(tmp_path / "m.rnnlm")]  # fmt: skip
    assert main(args) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main([*args, "--trust-pickle"]) == 0
    model = load(tmp_path / "m.rnnlm")
    assert model.vocab.tokens[0] == "w0" and model.vocab.tokens[-1] == "<eos>"
    assert main(["export-torch", str(tmp_path / "m.rnnlm"), str(tmp_path / "out.pt")]) == 0
    vocab = json.loads((tmp_path / "out.pt.vocab.json").read_text())
    assert vocab["tokens"] == list(model.vocab.tokens)
    before = (tmp_path / "m.rnnlm").read_bytes()
    for out in (tmp_path / "m.rnnlm", tmp_path / "x" / ".." / "m.rnnlm"):  # OUT is MODEL
        assert main(["export-torch", str(tmp_path / "m.rnnlm"), str(out)]) == 2
        assert "is MODEL: export to another file" in capsys.readouterr().err
    assert (tmp_path / "m.rnnlm").read_bytes() == before


def test_without_torch_one_line_names_the_extra(tmp_path, monkeypatch, capsys):
    model = torch_io.import_model(_saved_state_dict(tmp_path, trained()), words(23))
    model.save(tmp_path / "m.rnnlm")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    for argv in (
        ["export-torch", str(tmp_path / "m.rnnlm"), str(tmp_path / "o.pt")],
        ["import-torch", str(tmp_path / "sd.pt"), "--vocab", str(tmp_path / "v.txt"),
         "--out", str(tmp_path / "x.rnnlm")],
    ):  # fmt: skip
        (tmp_path / "v.txt").write_text("<eos>\na\n")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pip install 'rnnlm-engine[torch]'" in err, err
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "x.rnnlm").exists()
