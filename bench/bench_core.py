"""Engine-core benchmark: a training step and a scoring pass of an LSTM language model.

Run it from the repository root (about 2 minutes on the 2-core build machine):

    python bench/bench_core.py                       # the full run
    python bench/bench_core.py --quick               # smoke test: few repeats
    python bench/bench_core.py --vocab 10000 --repeats 30 --no-torch

What one run does, in this order:

1. Checks; nothing is timed before they pass. rnnlm_engine's Model (lstm, gru, rnn, tied lstm)
   against the float64 oracle on a small config, then the two baselines below on a small
   config; then, at each benchmarked vocabulary, the engine and the baselines against the
   oracle on the very inputs that are timed. A mismatch exits with status 1.
2. Times, side by side in this process, an LSTM 2 x 200 (emb 200, B 20, T 35) at each vocab:
   "train" = forward + backward through time, no optimizer (Model.loss_and_grad);
   "score" = forward to the log-probability of each target (Model.token_logprobs).
   Rows: engine; numpy-f32, the vectorized NumPy LSTM a careful user writes (below);
   oracle-f64 (rnnlm_engine.oracle, slow by design, few repeats); torch (CPU, same threads).
3. Measures this machine's float32 matmul rate on the model's product shapes, just before
   each table's rows, and prints the floor: the tokens/s that the model's matrix products
   alone would reach at that rate.

Times are the median of --repeats calls after two burn-in calls (JIT compilation and first
touch excluded; one for the oracle, which compiles nothing), with the 10th-90th percentile
as the spread. The calls are made in --rounds rounds (default 3) of probes and rows, each
with its own burn-in, so that a machine whose speed drifts over seconds (a shared virtual
machine) affects the floor and every row alike; the engine's and torch's % of floor in
each round are printed under each table. The last line says how much CPU other processes
of this machine took during the run: on a shared machine, rerun when it warns.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time

import numba
import numpy as np
from _common import random_params

from rnnlm_engine import oracle
from rnnlm_engine.config import ModelConfig
from rnnlm_engine.model import Model

# The benchmarked model and window: PyTorch word_language_model's "medium" LSTM shape.
LAYERS, EMB, HIDDEN, BATCH, STEPS = 2, 200, 200, 20, 35
INIT_RANGE = 0.1  # weights uniform in +-0.1, as word_language_model initialises them

# Normwise relative error max|a - b| / max|b| allowed against the float64 oracle.
TOL_LOGPROBS = 1e-4
TOL_GRADS = 1e-3

BURN_IN = 2
ORACLE_REPEATS = 3
MIN_REPEATS = 3
ROW_BUDGET_S = 6.0  # timed seconds per row at most (past MIN_REPEATS): a run stays in minutes


class CheckFailed(Exception):
    """An implementation disagreed with the oracle: nothing may be timed."""


# ---------------------------------------------------------------------------- inputs


def random_window(config: ModelConfig, rng: np.random.Generator, T: int, B: int):
    """(inputs, targets), each (T, B) int64, targets the inputs shifted by one step."""
    ids = rng.integers(0, config.vocab_size, size=(T + 1, B), dtype=np.int64)
    return np.ascontiguousarray(ids[:-1]), np.ascontiguousarray(ids[1:])


# ---------------------------------------------------------------------------- numpy-f32


class NumpyLSTM:
    """The plain-NumPy float32 baseline: an LSTM LM as a careful NumPy user writes it.

    Vectorized over the batch; every matrix product is one BLAS call (the input projection
    of a layer is one (T*B, E) x (E, G) product, the recurrence one (B, H) x (H, G) product
    per step); gates and softmax are whole-array ufuncs, in place where it saves a copy.
    The backward through time is written by hand. Zero initial state; untied weights.
    """

    def __init__(self, params: dict, num_layers: int):
        self.L = num_layers
        self.p = {name: np.asarray(a, np.float32) for name, a in params.items()}
        # b_ih and b_hh always appear summed: add them once
        self.bias = [
            self.p[f"rnn.bias_ih_l{k}"] + self.p[f"rnn.bias_hh_l{k}"] for k in range(num_layers)
        ]

    def _forward(self, ids):
        """ids (T, B) -> logits (T*B, V) and what the backward needs."""
        T, B = ids.shape
        x = self.p["encoder.weight"][ids.reshape(-1)]  # (N, E)
        saved = []
        for k in range(self.L):
            w_hh = self.p[f"rnn.weight_hh_l{k}"]
            G, H = w_hh.shape
            xproj = (x @ self.p[f"rnn.weight_ih_l{k}"].T + self.bias[k]).reshape(T, B, G)
            acts = np.empty((T, B, G), np.float32)  # activated gates [i, f, g, o]
            cs = np.empty((T, B, H), np.float32)
            tcs = np.empty((T, B, H), np.float32)  # tanh(c), reused by the backward
            hs = np.empty((T, B, H), np.float32)
            h = np.zeros((B, H), np.float32)
            c = np.zeros((B, H), np.float32)
            for t in range(T):
                a = acts[t]
                np.matmul(h, w_hh.T, out=a)
                a += xproj[t]
                g_pre = a[:, 2 * H : 3 * H].copy()
                # sigmoid over all four blocks in place, then the g block becomes tanh
                np.negative(a, out=a)
                np.exp(a, out=a)
                a += 1.0
                np.reciprocal(a, out=a)
                np.tanh(g_pre, out=a[:, 2 * H : 3 * H])
                i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
                c = f * c + i * g
                cs[t] = c
                np.tanh(c, out=tcs[t])
                np.multiply(o, tcs[t], out=hs[t])
                h = hs[t]
            saved.append((x, acts, cs, tcs, hs))
            x = hs.reshape(T * B, H)
        logits = x @ self.p["decoder.weight"].T
        logits += self.p["decoder.bias"]
        return logits, saved

    @staticmethod
    def _logsumexp(logits):
        """(N, V) -> (N,); shifts by the row max: exp() would overflow."""
        m = logits.max(axis=1)
        return m + np.log(np.exp(logits - m[:, None]).sum(axis=1))

    def forward(self, ids):
        """ids (T, B) -> log-probabilities (T, B, V)."""
        logits, _ = self._forward(ids)
        logits -= self._logsumexp(logits)[:, None]
        return logits.reshape(*ids.shape, -1)

    def token_logprobs(self, inputs, targets):
        """(T, B) log p(target | history), without the (T, B, V) log-prob matrix."""
        logits, _ = self._forward(inputs)
        rows = np.arange(logits.shape[0])
        lp = logits[rows, targets.reshape(-1)] - self._logsumexp(logits)
        return lp.reshape(inputs.shape)

    def loss_and_grad(self, inputs, targets):
        """Mean cross-entropy (nats) and name -> float32 gradient, as Model.loss_and_grad."""
        T, B = inputs.shape
        N = T * B
        p = self.p
        logits, saved = self._forward(inputs)
        rows, tgt = np.arange(N), targets.reshape(-1)
        lse = self._logsumexp(logits)
        loss = float(np.mean(lse - logits[rows, tgt], dtype=np.float64))

        # dlogits = (softmax - onehot) / N, built in the logits buffer
        dlogits = logits
        dlogits -= lse[:, None]
        np.exp(dlogits, out=dlogits)
        dlogits[rows, tgt] -= 1.0
        dlogits *= np.float32(1.0 / N)

        top = saved[-1][4].reshape(N, -1)
        grads = {
            "decoder.weight": dlogits.T @ top,
            "decoder.bias": dlogits.sum(axis=0),
        }
        dx = dlogits @ p["decoder.weight"]  # (N, H)
        for k in reversed(range(self.L)):
            x_in, acts, cs, tcs, hs = saved[k]
            w_hh = p[f"rnn.weight_hh_l{k}"]
            G, H = w_hh.shape
            dhs = dx.reshape(T, B, H)
            dgates = np.empty((T, B, G), np.float32)
            dh_next = np.zeros((B, H), np.float32)
            dc = np.zeros((B, H), np.float32)
            zeros = np.zeros((B, H), np.float32)
            for t in reversed(range(T)):
                a = acts[t]
                i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
                c_prev = cs[t - 1] if t > 0 else zeros
                tc = tcs[t]
                dh = dhs[t] + dh_next
                dc = dc + dh * o * (1.0 - tc * tc)
                d = dgates[t]
                d[:, :H] = dc * g * i * (1.0 - i)
                d[:, H : 2 * H] = dc * c_prev * f * (1.0 - f)
                d[:, 2 * H : 3 * H] = dc * i * (1.0 - g * g)
                d[:, 3 * H :] = dh * tc * o * (1.0 - o)
                dh_next = d @ w_hh
                dc = dc * f
            flat = dgates.reshape(N, G)
            db = flat.sum(axis=0)
            grads[f"rnn.weight_ih_l{k}"] = flat.T @ x_in
            # h_{-1} is zero, so step 0 adds nothing to dW_hh: one product over steps 1..T-1
            grads[f"rnn.weight_hh_l{k}"] = flat[B:].T @ hs[:-1].reshape(N - B, H)
            grads[f"rnn.bias_ih_l{k}"] = db
            grads[f"rnn.bias_hh_l{k}"] = db.copy()
            dx = flat @ p[f"rnn.weight_ih_l{k}"]
        d_enc = np.zeros_like(p["encoder.weight"])
        np.add.at(d_enc, inputs.reshape(-1), dx)  # repeated ids must add up
        grads["encoder.weight"] = d_enc
        return loss, grads


# ---------------------------------------------------------------------------- torch


def import_torch():
    """(torch module or None, why it is missing)."""
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install raising something else
        return None, f"torch not importable ({type(e).__name__}: {e})"
    return torch, ""


def make_torch_model(torch, params: dict, config: ModelConfig):
    """word_language_model's RNNModel (encoder / rnn / decoder), loaded with params."""
    nn = torch.nn

    class RNNModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Embedding(config.vocab_size, config.emb_size)
            self.rnn = nn.LSTM(config.emb_size, config.hidden_size, config.num_layers)
            self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

        def forward(self, ids):
            out, _ = self.rnn(self.encoder(ids))
            return self.decoder(out)  # (T, B, V) logits

    model = RNNModel()
    model.load_state_dict({name: torch.from_numpy(a.copy()) for name, a in params.items()})
    return model


class TorchRunner:
    """The PyTorch baseline's two tasks on one fixed window."""

    def __init__(self, torch, params, config, inputs, targets):
        self.torch = torch
        self.F = torch.nn.functional
        self.V = config.vocab_size
        self.model = make_torch_model(torch, params, config)
        self.inputs = torch.from_numpy(inputs)
        self.targets = torch.from_numpy(targets.reshape(-1))

    def train_step(self):
        self.model.zero_grad()  # as a training loop does before every backward
        logits = self.model(self.inputs).view(-1, self.V)
        loss = self.F.cross_entropy(logits, self.targets)  # mean over the T*B positions
        loss.backward()
        return loss

    def score(self):
        with self.torch.no_grad():
            logits = self.model(self.inputs).view(-1, self.V)
            return self.F.log_softmax(logits, dim=1).gather(1, self.targets[:, None])

    def loss_and_grad(self):
        loss = self.train_step()
        grads = {n: q.grad.numpy().copy() for n, q in self.model.named_parameters()}
        return loss.item(), grads

    def token_logprobs(self, shape):
        return self.score().numpy().reshape(shape)

    def forward(self, shape):
        with self.torch.no_grad():
            logits = self.model(self.inputs)
            return self.F.log_softmax(logits, dim=2).numpy()


# ---------------------------------------------------------------------------- checks


rel_err = oracle.normwise_error


def expect_close(what: str, a, b, tol: float) -> float:
    a = np.asarray(a)
    if a.shape != np.shape(b):
        raise CheckFailed(f"{what}: shape {a.shape}, oracle {np.shape(b)}")
    if not np.all(np.isfinite(a)):
        raise CheckFailed(f"{what}: contains NaN or infinity")
    err = rel_err(a, b)
    if not err < tol:
        raise CheckFailed(f"{what}: normwise relative error {err:.2e} >= {tol:.0e}")
    return err


def expect_grads(who: str, grads: dict, ref: dict) -> float:
    """Every oracle gradient must be present and close; returns the worst error."""
    missing = sorted(set(ref) - set(grads))
    if missing:
        raise CheckFailed(f"{who}: no gradient for {', '.join(missing)}")
    return max(
        expect_close(f"{who} grad {name}", grads[name], g, TOL_GRADS) for name, g in ref.items()
    )


def oracle_gathered(logprobs, targets):
    """(T, B, V) oracle log-probs -> (T, B) at the targets."""
    return np.take_along_axis(logprobs, targets[..., None], axis=2)[..., 0]


def check_engine_small(rng) -> None:
    """Model against the oracle for each cell on a small config with a random initial state.

    Weights are wider (+-0.5) than the benchmark's so that logits and gates spread out: with
    +-0.1 every distribution is nearly uniform, and a wrong kernel could still pass.
    """
    T, B = 7, 3
    for cell, tied in (("lstm", False), ("gru", False), ("rnn", False), ("lstm", True)):
        E = 13 if tied else 11  # E != H catches transposed input weights
        config = ModelConfig(
            cell, vocab_size=37, emb_size=E, hidden_size=13, num_layers=2, tied=tied
        )
        params = random_params(config, rng, 0.5)
        inputs, targets = random_window(config, rng, T, B)
        shape = (config.num_layers, B, config.hidden_size)
        h0 = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
        c0 = rng.uniform(-0.5, 0.5, shape).astype(np.float32) if cell == "lstm" else None
        model = Model.from_state_dict(params, cell=cell, tied=tied)
        name = f"engine {cell}{' tied' if tied else ''}"

        ref_lp, ref_state = oracle.model_forward(params, config, inputs, (h0, c0))
        ref_loss, ref_grads, _ = oracle.model_loss_and_grad(
            params, config, inputs, targets, (h0, c0)
        )
        lp, state = model.forward(inputs, (h0, c0))
        e_lp = expect_close(f"{name} forward logprobs", lp, ref_lp, TOL_LOGPROBS)
        expect_close(f"{name} final h", state.h, ref_state[0], TOL_LOGPROBS)
        if cell == "lstm":
            expect_close(f"{name} final c", state.c, ref_state[1], TOL_LOGPROBS)
        tok, _ = model.token_logprobs(inputs, targets, (h0, c0))
        expect_close(f"{name} token_logprobs", tok, oracle_gathered(ref_lp, targets), TOL_LOGPROBS)
        loss, grads, _ = model.loss_and_grad(inputs, targets, (h0, c0))
        expect_close(f"{name} loss", loss, ref_loss, TOL_LOGPROBS)
        e_g = expect_grads(name, grads, ref_grads)
        print(
            f"  ok  {name:<18} small  logprobs {e_lp:.1e}  grads {e_g:.1e}  "
            f"(V={config.vocab_size}, random initial state)"
        )


def check_window(who, impl, config, inputs, targets, ref, size: str) -> None:
    """One implementation's three passes against the oracle's results on (inputs, targets).

    impl has forward(inputs), token_logprobs(inputs, targets), loss_and_grad(inputs, targets).
    """
    ref_lp, ref_loss, ref_grads = ref
    e_lp = expect_close(f"{who} forward logprobs", impl.forward(inputs), ref_lp, TOL_LOGPROBS)
    expect_close(
        f"{who} token_logprobs",
        impl.token_logprobs(inputs, targets),
        oracle_gathered(ref_lp, targets),
        TOL_LOGPROBS,
    )
    loss, grads = impl.loss_and_grad(inputs, targets)
    expect_close(f"{who} loss", loss, ref_loss, TOL_LOGPROBS)
    e_g = expect_grads(who, grads, ref_grads)
    print(
        f"  ok  {who:<18} {size:<5}  logprobs {e_lp:.1e}  grads {e_g:.1e}  (V={config.vocab_size})"
    )


class EngineImpl:
    """Model with the checked interface of check_window (zero initial state)."""

    def __init__(self, model: Model):
        self.model = model

    def forward(self, inputs):
        return self.model.forward(inputs)[0]

    def token_logprobs(self, inputs, targets):
        return self.model.token_logprobs(inputs, targets)[0]

    def loss_and_grad(self, inputs, targets):
        loss, grads, _ = self.model.loss_and_grad(inputs, targets)
        return loss, grads


class TorchImpl:
    """TorchRunner with the checked interface of check_window."""

    def __init__(self, torch, params, config):
        self.args = torch, params, config

    def _runner(self, inputs, targets):
        return TorchRunner(*self.args, inputs, targets)

    def forward(self, inputs):
        return self._runner(inputs, inputs).forward(inputs.shape)

    def token_logprobs(self, inputs, targets):
        return self._runner(inputs, targets).token_logprobs(inputs.shape)

    def loss_and_grad(self, inputs, targets):
        return self._runner(inputs, targets).loss_and_grad()


def oracle_reference(params, config, inputs, targets):
    ref_lp, _ = oracle.model_forward(params, config, inputs)
    ref_loss, ref_grads, _ = oracle.model_loss_and_grad(params, config, inputs, targets)
    return ref_lp, ref_loss, ref_grads


def check_baselines_small(rng, torch) -> None:
    config = ModelConfig("lstm", vocab_size=37, emb_size=11, hidden_size=13, num_layers=2)
    params = random_params(config, rng, 0.5)
    inputs, targets = random_window(config, rng, 7, 3)
    ref = oracle_reference(params, config, inputs, targets)
    check_window("numpy-f32", NumpyLSTM(params, 2), config, inputs, targets, ref, "small")
    if torch is not None:
        torch_impl = TorchImpl(torch, params, config)
        check_window("torch", torch_impl, config, inputs, targets, ref, "small")


# ---------------------------------------------------------------------------- timing


def time_rows(calls: dict, budget_s: float) -> dict[str, np.ndarray]:
    """name -> (fn, repeats, burn_in) => name -> seconds per timed call of fn().

    Row after row, each row's burn-in right before its own timed calls: numba's OpenMP pool,
    OpenBLAS and torch each keep their threads spinning for a while after a call, and
    interleaving rows would bill that spinning to whichever row came next. A row whose
    last burn-in call shows that its repeats would take more than budget_s gets fewer
    (at least MIN_REPEATS), so that a slow row, or a busy machine, cannot stall the run.
    """
    out = {}
    for name, (fn, repeats, burn_in) in calls.items():
        t0 = time.perf_counter()
        for _ in range(burn_in):
            t0 = time.perf_counter()
            fn()
        last_s = time.perf_counter() - t0
        repeats = min(repeats, max(MIN_REPEATS, int(budget_s / max(last_s, 1e-9))))
        times = np.empty(repeats)
        # as timeit does: a garbage collection inside one call is noise, not the code's cost
        gc.collect()
        gc.disable()
        try:
            for r in range(repeats):
                t0 = time.perf_counter()
                fn()
                times[r] = time.perf_counter() - t0
        finally:
            gc.enable()
        out[name] = times
    return out


def per_round(calls: dict, rounds: int) -> dict:
    """calls with each row's repeats shared out over `rounds` rounds (at least one each)."""
    return {
        name: (fn, max(1, -(-repeats // rounds)), burn_in)
        for name, (fn, repeats, burn_in) in calls.items()
    }


def matmul_probe(M: int, K: int, N: int, rng):
    """(fn, flops): fn computes (M, K) @ (K, N) in float32 with np.matmul, the second operand
    a transposed view of an (N, K) array, as the model stores and uses its weights."""
    a = rng.uniform(-1, 1, (M, K)).astype(np.float32)
    w = rng.uniform(-1, 1, (N, K)).astype(np.float32)
    out = np.empty((M, N), np.float32)
    return (lambda: np.matmul(a, w.T, out=out)), 2.0 * M * K * N


def forward_flops_per_token(config: ModelConfig) -> tuple[float, float]:
    """(decoder, recurrent layers) matmul FLOPs per token of the forward pass."""
    G, H = config.gate_rows, config.hidden_size
    layers = sum(2.0 * G * (config.layer_input_size(k) + H) for k in range(config.num_layers))
    return 2.0 * H * config.vocab_size, layers


class Table:
    """One task at one vocabulary: the rows' times, and the floor measured beside them."""

    def __init__(self, task: str, config: ModelConfig, times: dict, probes: dict):
        self.task, self.config, self.tokens = task, config, STEPS * BATCH
        self.rates = {
            name: flops / float(np.median(times.pop(name))) for name, flops in probes.items()
        }
        self.times = times
        self.fwd_flops = forward_flops_per_token(config)
        dec_flops, layer_flops = self.fwd_flops
        # seconds for the forward's products, each at the rate measured on its shape
        fwd_s = self.tokens * (dec_flops / self.rates["mm-decoder"])
        fwd_s += self.tokens * (layer_flops / self.rates["mm-layers"])
        self.floor_s = fwd_s * (3.0 if task == "train" else 1.0)


def prepare_vocab(config: ModelConfig, rng, torch, repeats: int, oracle_repeats: int):
    """Build every implementation on one benchmark window and check it against the oracle.

    Returns [(task, calls, probe_flops)] for train and score, where calls maps a row name to
    (fn, repeats, burn_in) ready for time_rows. Raises CheckFailed.
    """
    params = random_params(config, rng, INIT_RANGE)
    inputs, targets = random_window(config, rng, STEPS, BATCH)
    model = Model.from_state_dict(params, cell="lstm")
    numpy_lm = NumpyLSTM(params, config.num_layers)
    ref = oracle_reference(params, config, inputs, targets)
    check_window("engine", EngineImpl(model), config, inputs, targets, ref, "bench")
    check_window("numpy-f32", numpy_lm, config, inputs, targets, ref, "bench")
    if torch is not None:
        torch_impl = TorchImpl(torch, params, config)
        check_window("torch", torch_impl, config, inputs, targets, ref, "bench")

    # the floor's matrix products, timed just before the rows of each table
    N, H, E, G = STEPS * BATCH, config.hidden_size, config.emb_size, config.gate_rows
    shapes = {
        "mm-decoder": (N, H, config.vocab_size),
        "mm-layers": (N, E, G),
        "mm-step": (BATCH, H, G),
    }
    probes = {name: matmul_probe(*shape, rng) for name, shape in shapes.items()}
    probe_calls = {name: (fn, repeats, BURN_IN) for name, (fn, _) in probes.items()}
    probe_flops = {name: flops for name, (_, flops) in probes.items()}

    train = {
        "engine": (lambda: model.loss_and_grad(inputs, targets), repeats, BURN_IN),
        "numpy-f32": (lambda: numpy_lm.loss_and_grad(inputs, targets), repeats, BURN_IN),
        # no JIT to exclude: one burn-in call is enough, and the oracle is slow
        "oracle-f64": (
            lambda: oracle.model_loss_and_grad(params, config, inputs, targets),
            oracle_repeats,
            1,
        ),
    }
    score = {
        "engine": (lambda: model.token_logprobs(inputs, targets), repeats, BURN_IN),
        "numpy-f32": (lambda: numpy_lm.token_logprobs(inputs, targets), repeats, BURN_IN),
        "oracle-f64": (lambda: oracle.model_forward(params, config, inputs), oracle_repeats, 1),
    }
    if torch is not None:
        runner = TorchRunner(torch, params, config, inputs, targets)
        train["torch"] = (runner.train_step, repeats, BURN_IN)
        score["torch"] = (runner.score, repeats, BURN_IN)
    return [
        ("train", probe_calls | train, probe_flops),
        ("score", probe_calls | score, probe_flops),
    ]


class MachineNoise:
    """CPU time that other processes (and the hypervisor's steal) took while we timed.

    /proc/stat counts the whole machine's busy time; subtracting this process's own CPU
    time leaves everyone else's. None where /proc/stat is missing (not Linux).
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        busy_s = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        own = os.times()
        return busy_s - own.user - own.system, time.perf_counter()

    def report(self) -> str:
        end = self._sample()
        if self.start is None or end is None:
            return "machine noise: unknown (no /proc/stat)"
        others = max(0.0, end[0] - self.start[0])
        wall = end[1] - self.start[1]
        share = others / (wall * (os.cpu_count() or 1))
        line = (
            f"machine noise: other processes used {others:.1f} CPU-s during the "
            f"{wall:.0f} s of checks and timing ({100 * share:.0f}% of {os.cpu_count()} cores)"
        )
        if share > 0.05:
            line += "; WARNING: the machine was shared, times are noisy: run again when idle"
        return line


# ---------------------------------------------------------------------------- report


def machine_facts(torch, torch_why: str, threads: int) -> list[str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    lines = [
        f"cpu      {cpu}; os.cpu_count() {os.cpu_count()}, usable {usable}; load average {load}",
        f"python   {platform.python_version()}; numpy {np.__version__}; numba "
        f"{numba.__version__}; torch "
        + (torch.__version__ if torch is not None else f"- ({torch_why})"),
    ]
    try:
        from threadpoolctl import threadpool_info

        blas = [
            f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, "
            f"{i.get('num_threads')} threads)"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        ]
        lines.append("blas     " + ("; ".join(blas) or "none found by threadpoolctl"))
    except ImportError:
        lines.append("blas     (threadpoolctl not importable)")
    # the OpenMP wait policy decides whether idle pool threads spin, taking cores from BLAS
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    lines.append(
        f"threads  {threads}: numba {numba.get_num_threads()}"
        + (f", torch.set_num_threads({torch.get_num_threads()})" if torch is not None else "")
        + f"; OMP_WAIT_POLICY {policy}"
    )
    return lines


ROWS = ("engine", "numpy-f32", "oracle-f64", "torch")
HEADER = (
    f"{'':<12}{'n':>3}{'median ms':>11}{'p10-p90 ms':>18}{'tokens/s':>11}"
    f"{'x vs engine':>13}{'% of floor':>12}"
)


def print_table(t: Table, torch_why: str) -> None:
    what = {
        "train": "forward + backward through time, no optimizer",
        "score": "forward to per-token log-probs",
    }[t.task]
    print(f"\n{t.task}  V={t.config.vocab_size}  ({what})")
    print(HEADER)
    engine_s = float(np.median(t.times["engine"]))
    for name in ROWS:
        if name not in t.times:
            print(f"{name:<12}  skipped: {torch_why}")
            continue
        times = t.times[name]
        med = float(np.median(times))
        p10, p90 = np.percentile(times, [10, 90])
        spread = f"{p10 * 1e3:.2f}-{p90 * 1e3:.2f}"
        print(
            f"{name:<12}{len(times):>3}{med * 1e3:>11.2f}{spread:>18}{t.tokens / med:>11,.0f}"
            f"{med / engine_s:>13.2f}{100.0 * t.floor_s / med:>12.1f}"
        )
    print(
        f"{'floor':<12}{'':>3}{t.floor_s * 1e3:>11.2f}{'-':>18}{t.tokens / t.floor_s:>11,.0f}"
        f"{t.floor_s / engine_s:>13.2f}{100.0:>12.1f}"
    )
    dec, layers = t.fwd_flops
    mult = "3 x " if t.task == "train" else ""
    N, E, H, G, V = (
        t.tokens,
        t.config.emb_size,
        t.config.hidden_size,
        4 * HIDDEN,
        t.config.vocab_size,
    )
    print(
        f"floor = {mult}{(dec + layers) / 1e6:.2f} MFLOP/token of matrix products at the "
        f"float32 rates measured in the same rounds as the rows:\n"
        f"  decoder ({N}x{H})@({H}x{V}) {t.rates['mm-decoder'] / 1e9:.1f} GFLOP/s, "
        f"layers ({N}x{E})@({E}x{G}) {t.rates['mm-layers'] / 1e9:.1f} GFLOP/s "
        f"[one recurrent step ({BATCH}x{H})@({H}x{G}): "
        f"{t.rates['mm-step'] / 1e9:.1f} GFLOP/s, not in the floor]"
    )


def print_rounds(tables: list[Table]) -> None:
    """The engine's and torch's % of floor in each round alone: their spread is the
    machine's drift during the run."""
    for name in ("engine", "torch"):
        if name in tables[0].times:
            shares = [100.0 * t.floor_s / float(np.median(t.times[name])) for t in tables]
            print(
                f"  {name} % of floor in each of {len(tables)} round(s): "
                + ", ".join(f"{v:.1f}" for v in shares)
            )


# ---------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per row (default 20)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[10000, 65], help="vocabulary sizes")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 repeats, 1 oracle")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of probes and rows (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="seed of weights and tokens")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if any(v < 2 for v in args.vocab):
        ap.error("every --vocab must be at least 2")
    if args.quick:
        args.repeats = min(args.repeats, 3)
        args.rounds = 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    oracle_repeats = 1 if args.quick else min(ORACLE_REPEATS, args.repeats)
    budget_s = ROW_BUDGET_S / 4 if args.quick else ROW_BUDGET_S
    rng = np.random.default_rng(args.seed)
    noise = MachineNoise()

    if args.no_torch:
        torch, torch_why = None, "--no-torch"
    else:
        torch, torch_why = import_torch()
    # one thread count for all: numba's prange kernels, OpenBLAS and torch's intra-op pool
    threads = numba.get_num_threads()
    if torch is not None:
        torch.manual_seed(args.seed)
        torch.set_num_threads(threads)

    print("rnnlm-engine core benchmark: LSTM LM training step and scoring pass")
    for line in machine_facts(torch, torch_why, threads):
        print(line)
    print(
        f"model    lstm {LAYERS} x {HIDDEN}, emb {EMB}, untied, init +-{INIT_RANGE}; "
        f"window T {STEPS} x B {BATCH} = {STEPS * BATCH} tokens"
    )
    print(
        f"timing   median of {args.repeats} calls (oracle {oracle_repeats}) after "
        f"{BURN_IN} burn-in calls (oracle 1), one row after another, in {args.rounds} "
        f"round(s); seed {args.seed}"
    )

    print(
        "\nchecks against the float64 oracle (normwise relative error; tolerances "
        f"logprobs {TOL_LOGPROBS:.0e}, grads {TOL_GRADS:.0e})"
    )
    prepared = []
    try:
        check_engine_small(rng)
        check_baselines_small(rng, torch)
        for V in args.vocab:
            config = ModelConfig(
                "lstm", vocab_size=V, emb_size=EMB, hidden_size=HIDDEN, num_layers=LAYERS
            )
            prepared.append(
                (config, prepare_vocab(config, rng, torch, args.repeats, oracle_repeats))
            )
    except CheckFailed as e:
        print(f"CHECK FAILED: {e}; nothing timed", file=sys.stderr)
        return 1
    # known only once a parallel kernel has run, as the checks have
    print(f"all results match the oracle; numba threading layer {numba.threading_layer()!r}")

    for config, tasks in prepared:
        for task, calls, probe_flops in tasks:
            # a few rounds of (probes, rows), each with a share of the repeats: a machine
            # whose speed drifts over seconds (a shared host) then weighs on every row and
            # on the floor alike, and the per-round ratios show how much it drifted
            rounds = [
                time_rows(per_round(calls, args.rounds), budget_s / args.rounds)
                for _ in range(args.rounds)
            ]
            per_round_tables = [Table(task, config, dict(r), probe_flops) for r in rounds]
            times = {name: np.concatenate([r[name] for r in rounds]) for name in rounds[0]}
            print_table(Table(task, config, times, probe_flops), torch_why)
            print_rounds(per_round_tables)
    print(
        f"\nn = timed calls (fewer than --repeats where a row would pass {budget_s:.0f} s); "
        "x vs engine = row median / engine median (above 1: the engine is faster);\n"
        "% of floor = floor time / row median; floor: matrix products only, forward "
        "FLOPs/token = 2HV (decoder) + per layer 2G(E_in+H), G = 4H; training = 3 x forward."
    )
    print(noise.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
