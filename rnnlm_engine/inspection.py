"""Seeing inside a model: traces of what it computes over a text, and gate saturation.

``trace(model, text)`` runs the model's own kernels (the training pass's forward, which
keeps every layer's states and gate activations) over the text in chunks, the state
carried between them, and returns a ``Trace``: per token its log-probability, its rank
among the vocabulary (1: the likeliest) and the entropy of the prediction it was drawn
from, the top-k alternatives, and per layer the hidden states h, the cell states c (lstm)
and the gates (lstm i, f, g, o; gru r, z, n). The first token has no history: its figures
are NaN (rank 0), as in corpus-mode scoring.

``gate_saturation(trace)``: per layer, sigmoid gate and unit, the fraction of steps the
gate is below 0.1 ("left-saturated") or above 0.9 ("right-saturated") (Karpathy, Johnson
and Fei-Fei 2015).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

# gate names in the order of each cell's saved activations (kernels: acts (T, B, 4H))
GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn": ()}
SIGMOID_GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z"), "rnn": ()}
SATURATION = (0.1, 0.9)


@dataclass
class LayerTrace:
    """One layer over the text: h (T, U) float32 for the units kept; c (T, U) for lstm,
    else None; gates: name -> (T, U)."""

    h: np.ndarray
    c: np.ndarray | None
    gates: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Trace:
    """What a model computed over a text (see the module docstring). T tokens."""

    tokens: np.ndarray  # (T,) int64 ids
    logprob: np.ndarray  # (T,) float32, log p(token t | tokens before); NaN at 0
    rank: np.ndarray  # (T,) int64, 1 = the model's likeliest token; 0 at t = 0
    entropy: np.ndarray  # (T,) float32, nats, of the prediction before token t; NaN at 0
    top_ids: np.ndarray  # (T, k) int64, the k likeliest tokens before token t (-1 at 0)
    top_logprobs: np.ndarray  # (T, k) float32 (NaN at 0)
    layers: dict[int, LayerTrace]  # the layers kept
    units: np.ndarray  # (U,) the units kept, the same in every layer
    cell: str = "lstm"
    vocab: object = None

    def __len__(self) -> int:
        return len(self.tokens)

    def words(self) -> list[str]:
        """The tokens as the vocabulary's strings (a model file's vocabulary)."""
        if self.vocab is None:
            raise InputError("this trace's model has no vocabulary: its tokens are ids")
        return [self.vocab.token(int(i)) for i in self.tokens]


def trace(model, text_or_ids, top_k: int = 5, layers=None, units=None, chunk: int = 1024):
    """A Trace of model over a text (str, encoded with the model's vocabulary) or a 1-D
    sequence of token ids. top_k: alternatives kept per token (0: none; at most the
    vocabulary's size). layers, units:
    the layers and hidden units whose states and gates are kept (default: all), to bound
    memory on long texts. chunk: tokens per forward pass (the result does not depend on
    it). Raises InputError naming what is wrong."""
    from .model import _Saved

    c = model.config
    ids = _token_ids(model, text_or_ids)
    top_k = min(_count(top_k, "top_k", None), c.vocab_size)  # (a small vocabulary has fewer)
    chunk = _count(chunk, "chunk", None, minimum=1)
    layer_list = _selection(layers, c.num_layers, "layers")
    unit_list = _selection(units, c.hidden_size, "units")
    T, k = len(ids), top_k
    logprob = np.full(T, np.nan, np.float32)
    rank = np.zeros(T, np.int64)
    entropy = np.full(T, np.nan, np.float32)
    top_ids = np.full((T, k), -1, np.int64)
    top_lp = np.full((T, k), np.nan, np.float32)
    names = GATES[c.cell]
    kept = {
        layer: LayerTrace(
            np.empty((T, len(unit_list)), np.float32),
            np.empty((T, len(unit_list)), np.float32) if c.cell == "lstm" else None,
            {g: np.empty((T, len(unit_list)), np.float32) for g in names},
        )
        for layer in layer_list
    }
    H = c.hidden_size
    state = model.zero_state(1)
    k_ = model._k
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        saved = _Saved()
        lp, state = model._forward_checked(ids[t0:t1, None], state, saved)
        lp = lp[:, 0]  # (n, V): the prediction after each token of the chunk
        for layer, lt in kept.items():
            lt.h[t0:t1] = k_.to_host(saved.hs[layer])[:, 0, unit_list]
            if lt.c is not None:
                lt.c[t0:t1] = k_.to_host(saved.cs[layer])[:, 0, unit_list]
            if names:
                acts = k_.to_host(saved.acts[layer])[:, 0]
                for g, name in enumerate(names):
                    lt.gates[name][t0:t1] = acts[:, g * H + unit_list]
        # the prediction after token t scores token t + 1
        nxt = ids[t0 + 1 : t1 + 1]
        n = len(nxt)
        rows = lp[:n].astype(np.float64)
        target = rows[np.arange(n), nxt]
        logprob[t0 + 1 : t0 + 1 + n] = target
        # rank: 1 + how many tokens are strictly likelier (ties share the better rank)
        rank[t0 + 1 : t0 + 1 + n] = 1 + np.sum(rows > target[:, None], axis=1)
        entropy[t0 + 1 : t0 + 1 + n] = -np.sum(np.exp(rows) * rows, axis=1)
        if k:
            best = np.argpartition(-lp[:n], k - 1, axis=1)[:, :k]
            order = np.take_along_axis(lp[:n], best, axis=1).argsort(axis=1, kind="stable")
            best = np.take_along_axis(best, order[:, ::-1], axis=1)
            top_ids[t0 + 1 : t0 + 1 + n] = best
            top_lp[t0 + 1 : t0 + 1 + n] = np.take_along_axis(lp[:n], best, axis=1)
    return Trace(ids, logprob, rank, entropy, top_ids, top_lp, kept, unit_list, c.cell,
                 model.vocab)  # fmt: skip


def gate_saturation(tr: Trace, thresholds: tuple[float, float] = SATURATION) -> dict:
    """{layer: {gate: (left, right)}}: for each sigmoid gate and unit kept, the fraction
    of the text's steps at which the gate is below thresholds[0] (left) and above
    thresholds[1] (right), each an (U,) float64 array."""
    lo, hi = thresholds
    if not 0.0 <= lo < hi <= 1.0:
        raise InputError(f"thresholds must satisfy 0 <= low < high <= 1; got {thresholds}")
    if not SIGMOID_GATES[tr.cell]:
        raise InputError(f"a {tr.cell} cell has no gates (lstm and gru have)")
    return {
        layer: {
            g: (np.mean(lt.gates[g] < lo, axis=0), np.mean(lt.gates[g] > hi, axis=0))
            for g in SIGMOID_GATES[tr.cell]
        }
        for layer, lt in tr.layers.items()
    }


def _token_ids(model, text_or_ids) -> np.ndarray:
    if isinstance(text_or_ids, str):
        if model.vocab is None:
            raise InputError("this model has no vocabulary: trace token ids, not text")
        ids = model.vocab.encode(text_or_ids)
    else:
        try:
            ids = np.asarray(text_or_ids)
        except Exception as e:
            raise InputError(f"cannot read token ids: {e}") from None
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise InputError(f"trace a text or a 1-D sequence of int ids; got {ids.dtype}")
        V = model.config.vocab_size
        bad = np.flatnonzero((ids < 0) | (ids >= V)) if ids.size else []
        if len(bad):
            raise InputError(f"token id {int(ids[bad[0]])} at {bad[0]} is outside [0, {V})")
    if len(ids) == 0:
        raise InputError("nothing to trace: the text or id sequence is empty")
    return np.asarray(ids, np.int64)


def _count(value, name: str, limit: int | None, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if limit is not None and value > limit:
        raise InputError(f"{name} must be at most {limit}; got {value}")
    return int(value)


def _selection(which, n: int, name: str) -> np.ndarray:
    """Indices 0..n-1 (all when which is None), checked."""
    if which is None:
        return np.arange(n)
    try:
        idx = np.asarray(which, np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be integer indices; got {which!r}") from None
    if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
        raise InputError(f"{name} must be indices in [0, {n}); got {which!r}")
    return idx
