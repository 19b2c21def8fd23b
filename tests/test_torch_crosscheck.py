"""The engine against PyTorch: same weights, same log-probabilities, states and gradients.

The torch module below is PyTorch's word_language_model ``RNNModel`` without dropout
(submodules ``encoder``, ``rnn``, ``decoder``; tied means decoder.weight is encoder.weight),
so its state_dict is exactly what users bring from PyTorch checkpoints.

Tolerances, as normwise relative errors max|ours - torch| / max|torch|: under 1e-4 for
log-probabilities and recurrent states, under 1e-3 for gradients. Both sides compute in
float32 (unit roundoff 6e-8) but in different orders (BLAS blocking, fused kernels, the
engine's polynomial exp with relative error < 2e-7), and these differences grow through
the T steps of the recurrence and the sums over the T * B positions: at these sizes we
measured at most 2e-7 for log-probabilities, 2e-6 for states and 3e-6 for gradients, so
the bounds leave a margin of 50x or more, while a real mistake (a gate in the wrong place,
a missing bias, a transposed weight) makes errors of order 1.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch not installed: the PyTorch cross-check needs it (pip install torch)"
)
import torch.nn.functional as F  # noqa: E402

from rnnlm_engine import Model, State, oracle  # noqa: E402
from rnnlm_engine.config import CELLS  # noqa: E402

LOGPROB_TOL = 1e-4
STATE_TOL = 1e-4
GRAD_TOL = 1e-3

CASES = [(cell, tied, layers) for cell in CELLS for tied in (False, True) for layers in (1, 2, 3)]


class RNNModel(torch.nn.Module):
    """PyTorch word_language_model's RNNModel, without dropout."""

    def __init__(self, cell: str, ntoken: int, ninp: int, nhid: int, nlayers: int, tied: bool):
        super().__init__()
        self.encoder = torch.nn.Embedding(ntoken, ninp)
        if cell == "lstm":
            self.rnn = torch.nn.LSTM(ninp, nhid, nlayers)
        elif cell == "gru":
            self.rnn = torch.nn.GRU(ninp, nhid, nlayers)
        else:
            self.rnn = torch.nn.RNN(ninp, nhid, nlayers, nonlinearity="tanh")
        self.decoder = torch.nn.Linear(nhid, ntoken)
        if tied:
            self.decoder.weight = self.encoder.weight

    def forward(self, ids, hidden=None):
        output, hidden = self.rnn(self.encoder(ids), hidden)
        return self.decoder(output), hidden


# ---------------------------------------------------------------------------- helpers


normwise = oracle.normwise_error


def build(cell, tied, layers, seed, V=23, E=5, H=7):
    """A torch RNNModel with torch's default initialisation, and the engine's twin."""
    if tied:
        E = H
    torch.manual_seed(seed)
    module = RNNModel(cell, V, E, H, layers, tied)
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    return module, Model.from_state_dict(sd, cell=cell, tied=tied)


def random_state(cell, layers, batch, hidden, gen):
    h = torch.randn(layers, batch, hidden, generator=gen) * 0.5
    if cell == "lstm":
        c = torch.randn(layers, batch, hidden, generator=gen)
        return (h, c), State(h.numpy(), c.numpy())
    return h, State(h.numpy())


def assert_states_close(ours: State, theirs, cell):
    if cell == "lstm":
        h, c = theirs
        assert normwise(ours.h, h.detach().numpy()) < STATE_TOL
        assert normwise(ours.c, c.detach().numpy()) < STATE_TOL
    else:
        assert ours.c is None
        assert normwise(ours.h, theirs.detach().numpy()) < STATE_TOL


def torch_logprobs(module, ids, hidden):
    with torch.no_grad():
        logits, new_hidden = module(torch.from_numpy(ids), hidden)
    return F.log_softmax(logits, dim=-1).numpy(), new_hidden


def torch_loss_and_grad(module, inputs, targets, hidden):
    module.zero_grad()
    logits, _ = module(torch.from_numpy(inputs), hidden)
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    return float(loss.detach()), grads


def check_loss_and_grad(module, model, inputs, targets, hidden, state):
    ref_loss, ref_grads = torch_loss_and_grad(module, inputs, targets, hidden)
    loss, grads, _ = model.loss_and_grad(inputs, targets, state)
    assert loss == pytest.approx(ref_loss, rel=LOGPROB_TOL)
    # named_parameters lists a tied matrix once, as encoder.weight: so does the engine
    assert set(grads) == set(ref_grads)
    for name, ref in ref_grads.items():
        assert grads[name].dtype == np.float32
        err = normwise(grads[name], ref)
        assert err < GRAD_TOL, f"{name}: normwise error {err:.2e}"


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("cell", "tied", "layers"), CASES)
def test_forward_matches_torch(cell, tied, layers):
    module, model = build(cell, tied, layers, seed=layers * 10 + int(tied))
    V, H = model.config.vocab_size, model.config.hidden_size
    T, B = 7, 3
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (2 * T, B), generator=gen).numpy()

    # zero initial state (None on both sides)
    ref, ref_hidden = torch_logprobs(module, ids, None)
    logprobs, state = model.forward(ids)
    assert logprobs.shape == (2 * T, B, V) and logprobs.dtype == np.float32
    assert normwise(logprobs, ref) < LOGPROB_TOL
    assert_states_close(state, ref_hidden, cell)

    # a random nonzero initial state, and carried across two windows
    hidden, state0 = random_state(cell, layers, B, H, gen)
    ref1, ref_hidden1 = torch_logprobs(module, ids[:T], hidden)
    ref2, ref_hidden2 = torch_logprobs(module, ids[T:], ref_hidden1)
    lp1, state1 = model.forward(ids[:T], state0)
    lp2, state2 = model.forward(ids[T:], state1)
    assert normwise(lp1, ref1) < LOGPROB_TOL
    assert normwise(lp2, ref2) < LOGPROB_TOL
    assert_states_close(state1, ref_hidden1, cell)
    assert_states_close(state2, ref_hidden2, cell)

    # scoring: the log-probabilities of the next tokens
    targets = torch.randint(0, V, (T, B), generator=gen).numpy()
    scores, score_state = model.token_logprobs(ids[:T], targets, state0)
    picked = np.take_along_axis(ref1, targets[..., None], axis=2)[..., 0]
    # relative to the largest log-probability, as for forward (a near-certain token's
    # log-prob is the difference of two numbers of that size)
    assert np.abs(scores - picked).max() / np.abs(ref1).max() < LOGPROB_TOL
    assert_states_close(score_state, ref_hidden1, cell)


@pytest.mark.parametrize(("cell", "tied", "layers"), CASES)
def test_loss_and_grad_match_torch(cell, tied, layers):
    module, model = build(cell, tied, layers, seed=100 + layers * 10 + int(tied))
    V, H = model.config.vocab_size, model.config.hidden_size
    T, B = 6, 4
    gen = torch.Generator().manual_seed(2)
    inputs = torch.randint(0, V, (T, B), generator=gen).numpy()
    targets = torch.randint(0, V, (T, B), generator=gen).numpy()
    check_loss_and_grad(module, model, inputs, targets, None, None)
    hidden, state = random_state(cell, layers, B, H, gen)
    check_loss_and_grad(module, model, inputs, targets, hidden, state)


@pytest.mark.parametrize(("cell", "tied", "layers"), CASES)
def test_state_dict_loads_back_into_torch(cell, tied, layers):
    module, model = build(cell, tied, layers, seed=200 + layers * 10 + int(tied))
    sd = model.state_dict()
    assert set(sd) == set(module.state_dict())
    torch.manual_seed(999)  # a differently initialised twin, then our weights loaded into it
    twin = RNNModel(
        cell,
        model.config.vocab_size,
        model.config.emb_size,
        model.config.hidden_size,
        layers,
        tied,
    )
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    for name, value in module.state_dict().items():
        assert torch.equal(twin.state_dict()[name], value), name
    if tied:
        assert twin.decoder.weight is twin.encoder.weight


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("tied", [False, True])
def test_saturating_weights_match_torch(cell, tied):
    """Weights uniform in +-3 drive the gates deep into saturation (and the logits far
    apart), where approximations of exp, sigmoid and tanh go wrong first. The recurrent
    matrices get +-3/sqrt(H), three times torch's default bound: with +-3 there an Elman
    RNN is chaotic, and any two float32 implementations drift apart by order 1 within 20
    steps (the float64 oracle does too, when its weights are perturbed by 1e-7)."""
    layers = 2
    module, model = build(cell, tied, layers, seed=300 + int(tied), H=8, E=6)
    H = model.config.hidden_size
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in module.named_parameters():
            bound = 3.0 / np.sqrt(H) if "weight_hh" in name else 3.0
            p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    model = Model.from_state_dict(sd, cell=cell, tied=tied)
    V = model.config.vocab_size
    T, B = 8, 3
    ids = torch.randint(0, V, (T, B), generator=gen).numpy()
    targets = torch.randint(0, V, (T, B), generator=gen).numpy()
    hidden, state = random_state(cell, layers, B, H, gen)

    ref, ref_hidden = torch_logprobs(module, ids, hidden)
    logprobs, new_state = model.forward(ids, state)
    assert normwise(logprobs, ref) < LOGPROB_TOL
    assert_states_close(new_state, ref_hidden, cell)
    # the gates did saturate: at the first step many first-layer pre-activations are beyond
    # +-4, where sigmoid' < 0.02 and tanh' < 0.002
    pre = (
        sd["encoder.weight"][ids[0]] @ sd["rnn.weight_ih_l0"].T
        + sd["rnn.bias_ih_l0"]
        + state.h[0] @ sd["rnn.weight_hh_l0"].T
        + sd["rnn.bias_hh_l0"]
    )
    assert np.mean(np.abs(pre) > 4.0) > 0.25
    assert ref.min() < -10.0  # some tokens are very unlikely: logits far apart
    check_loss_and_grad(module, model, ids, targets, hidden, state)
