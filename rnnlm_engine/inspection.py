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

``find_units(trace, feature)``: the units whose state best correlates (Pearson) with a
per-token feature: one built in (``FEATURES``: the position in the line, inside double
quotes, the bracket depth), computed from the tokens' strings, or any (T,) array.

``match_spans(trace, span, threshold)``: LSTMVis's query (Strobelt et al. 2018): the
units that are on (at or above the threshold) over the whole span, and the other spans of
the text where those units are on together.

Gradients (attributions, the gradient by lag) live in rnnlm_engine.attribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

# gate names in the order of each cell's saved activations (kernels: acts (T, B, 4H))
GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn": ()}
SIGMOID_GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z"), "rnn": ()}
SATURATION = (0.1, 0.9)
FEATURES = ("line_position", "in_quotes", "bracket_depth")
_OPEN, _CLOSE, _QUOTES = "([{", ")]}", '"\u201c\u201d'


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
    from .state import Saved as _Saved

    model = model._batch_model()
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
        for layer in layer_list.tolist()
    }
    H = c.hidden_size
    state = model.zero_state(1)
    k_ = model._k
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        saved = _Saved()
        top, state = model._forward_layers(ids[t0:t1, None], state, saved)
        for layer, lt in kept.items():
            lt.h[t0:t1] = k_.to_host(saved.hs[layer])[:, 0, unit_list]
            if lt.c is not None:
                lt.c[t0:t1] = k_.to_host(saved.cs[layer])[:, 0, unit_list]
            if names:
                acts = k_.to_host(saved.acts[layer])[:, 0]
                for g, name in enumerate(names):
                    lt.gates[name][t0:t1] = acts[:, g * H + unit_list]
        # the prediction after token t scores token t + 1: the decoder's kernel gives each
        # row's figures without writing the (n, V) log-probabilities
        nxt = ids[t0 + 1 : t1 + 1]
        n = len(nxt)
        if n == 0:
            continue
        targets = k_.to_device(np.ascontiguousarray(nxt))
        lp, ent, rk, ti, tv = model._output.prediction_stats(top[:n], targets, k)
        sl = slice(t0 + 1, t0 + 1 + n)
        logprob[sl], entropy[sl], rank[sl], top_ids[sl], top_lp[sl] = lp, ent, rk, ti, tv
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


@dataclass(frozen=True)
class UnitMatch:
    """A unit of one layer's state ("h", or "c" for lstm) and its correlation r with a
    feature over the text."""

    layer: int
    unit: int
    state: str
    r: float


@dataclass(frozen=True)
class SpanMatch:
    """Tokens [start, end) where the query's units are on together; `on`: the mean
    fraction of the units on over the span."""

    start: int
    end: int
    on: float


def token_strings(tr: Trace) -> list[str]:
    """The tokens as they read in the text: a word vocabulary's "<eos>" is "\n"."""
    words = tr.words()
    eos = tr.vocab.eos_id
    return ["\n" if i == eos else w for i, w in zip(tr.tokens.tolist(), words, strict=True)]


def feature(tr: Trace, name: str) -> np.ndarray:
    """A built-in per-token feature (T,) float64 from the tokens' strings:
    line_position: tokens since the last line end (0 for a line's first token, and for the
    line end itself: it starts the next); in_quotes: 1 inside double quotes (a token that
    holds one toggles, counted as inside), else 0; bracket_depth: ( [ { open, ) ] } close,
    never below 0, a closing token counted at the inner depth."""
    if name not in FEATURES:
        raise InputError(
            f"feature must be one of {', '.join(FEATURES)} or a (T,) array; got {name!r}"
        )
    out = np.zeros(len(tr))
    pos = quote = depth = 0
    for t, s in enumerate(token_strings(tr)):
        if name == "line_position":
            out[t] = pos
            pos = 0 if "\n" in s else pos + 1
        elif name == "in_quotes":
            flips = sum(s.count(q) for q in _QUOTES)
            out[t] = 1.0 if (quote or flips) else 0.0
            quote = (quote + flips) % 2
        else:
            opened = sum(s.count(b) for b in _OPEN)
            closed = sum(s.count(b) for b in _CLOSE)
            out[t] = depth + opened if opened else depth
            depth = max(0, depth + opened - closed)
    return out


def find_units(tr: Trace, what, top: int = 10, states=("h", "c")) -> list[UnitMatch]:
    """The `top` units (of the layers and units the trace kept, in each of `states`) whose
    activation correlates most with `what`: a name in FEATURES or a (T,) array of numbers;
    sorted by |r|, the largest first. Units constant over the text have r = 0."""
    if isinstance(what, str):
        values = feature(tr, what)
    else:
        try:
            values = np.asarray(what, np.float64)
        except (TypeError, ValueError):
            raise InputError(f"a feature must be a name or (T,) numbers; got {what!r}") from None
        if values.shape != (len(tr),) or not np.all(np.isfinite(values)):
            raise InputError(
                f"a feature array must be ({len(tr)},) finite numbers, one per token; got "
                f"shape {values.shape}"
            )
    top = _count(top, "top", None, minimum=1)
    bad = [s for s in states if s not in ("h", "c")]
    if bad or not states:
        raise InputError(f'states must be some of "h" and "c"; got {states!r}')
    f = values - values.mean()
    fn = np.sqrt(np.sum(f * f))
    found = []
    for layer, lt in tr.layers.items():
        for name in states:
            a = lt.h if name == "h" else lt.c
            if a is None:
                continue
            x = np.asarray(a, np.float64)
            x = x - x.mean(axis=0)
            xn = np.sqrt(np.sum(x * x, axis=0))
            with np.errstate(invalid="ignore", divide="ignore"):
                r = np.where((xn > 0) & (fn > 0), (f @ x) / (xn * fn), 0.0)
            found += [
                UnitMatch(layer, int(u), name, float(v)) for u, v in zip(tr.units, r, strict=True)
            ]
    found.sort(key=lambda m: -abs(m.r))
    return found[:top]


def match_spans(
    tr: Trace, span: tuple[int, int], threshold: float, units=None, layer: int | None = None,
    state: str = "h", min_fraction: float = 1.0, top: int = 20,
) -> tuple[np.ndarray, list[SpanMatch]]:  # fmt: skip
    """LSTMVis's query. span: tokens [start, end) of the text; layer: a kept layer (default
    the top one kept); units: the units to match (indices into the kept units' ids; default
    the units at or above `threshold` at every step of the span). Returns (the units, the
    other spans where at least `min_fraction` of them are on at every step), the spans
    closest in length to the query first, at most `top`."""
    layer = max(tr.layers) if layer is None else layer
    if layer not in tr.layers:
        raise InputError(f"layer {layer!r} was not kept in this trace (kept: {sorted(tr.layers)})")
    a = tr.layers[layer].h if state == "h" else tr.layers[layer].c
    if a is None or state not in ("h", "c"):
        raise InputError(f'state must be "h" (or "c" for lstm); got {state!r}')
    try:
        start, end = (int(v) for v in span)
    except (TypeError, ValueError):
        raise InputError(f"span must be (start, end) token indices; got {span!r}") from None
    if not 0 <= start < end <= len(tr):
        raise InputError(f"span must satisfy 0 <= start < end <= {len(tr)}; got {span!r}")
    if not 0.0 < min_fraction <= 1.0:
        raise InputError(f"min_fraction must be in (0, 1]; got {min_fraction!r}")
    on = a >= threshold  # (T, U)
    if units is None:
        chosen = np.flatnonzero(on[start:end].all(axis=0))
        if chosen.size == 0:
            raise InputError(
                f"no unit of layer {layer} is at or above {threshold} over the whole span "
                f"[{start}, {end}): lower the threshold or give the units"
            )
        chosen = tr.units[chosen]
    else:
        chosen = np.asarray(units, np.int64).reshape(-1)
    where = {int(u): i for i, u in enumerate(tr.units)}
    missing = [int(u) for u in chosen if int(u) not in where]
    if missing or chosen.size == 0:
        raise InputError(f"units must be units the trace kept; {missing or 'none'} are not")
    frac = on[:, [where[int(u)] for u in chosen]].mean(axis=1)
    good = np.concatenate([[False], frac >= min_fraction - 1e-12, [False]])
    edges = np.flatnonzero(np.diff(good.astype(np.int8)))
    found = [
        SpanMatch(int(s), int(e), float(frac[s:e].mean()))
        for s, e in zip(edges[::2], edges[1::2], strict=True)
        if e <= start or s >= end  # not the query itself
    ]
    n = end - start
    found.sort(key=lambda m: (abs((m.end - m.start) - n), -m.on, m.start))
    return chosen, found[: _count(top, "top", None, minimum=1)]


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
