"""A model over a text, explained: the diagnosis (``rnnlm diagnose``) and the report page's
data (``rnnlm explain --html``), built from the inspection tools.

``diagnose(model, ids)`` -> a dict of plain numbers (JSON-ready): the perplexity; per layer
and sigmoid gate the saturation (the mean fraction of steps below 0.1 and above 0.9, and
the units saturated more than half the time); the gradient by lag with each layer's reach
(the largest lag whose mean gradient norm is at least 1% of the largest); the recurrent
matrices' largest singular values; and, for a model with a vocabulary, the units that
correlate most with the built-in features (line position, quotes, bracket depth).
``format_diagnosis`` prints it as tables.

``report_data(model, ids, ...)`` -> the dict rnnlm_engine.report.render_html draws.

Figures (gate saturation, gradient by lag) are matplotlib's SVG: the `report` extra.
Without it they are left out and a note names the extra.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from .attribution import attributions, gradient_by_lag
from .errors import InputError
from .inspection import (
    FEATURES,
    SIGMOID_GATES,
    feature,
    find_units,
    gate_saturation,
    token_strings,
)
from .scoring import perplexity
from .state import State

REPORT_EXTRA = "pip install 'rnnlm-engine[report]'"
LAG_REACH = 0.01  # a layer "listens" as far back as its gradient is 1% of its largest
LAGS_SHOWN = (0, 1, 2, 5, 10, 20, 50, 100, 200)


def diagnose(model, ids, max_lag: int = 50, positions: int = 500, trace=None) -> dict:
    """The diagnosis of model over ids (see the module docstring). trace: a Trace of ids
    with every layer and unit kept (to spare a second pass), or None."""
    ids = np.asarray(ids, np.int64)
    if len(ids) < 3:
        raise InputError(f"the text has {len(ids)} tokens: a diagnosis needs at least 3")
    tr = trace if trace is not None else model.trace(ids, top_k=0)
    c = model.config
    out: dict = {
        "model": _describe(model),
        "tokens": int(len(ids)),
        "perplexity": perplexity(float(np.sum(tr.logprob[1:], dtype=np.float64)), len(ids) - 1),
    }
    if SIGMOID_GATES[c.cell]:
        sat = gate_saturation(tr)
        out["saturation"] = {
            str(layer): {
                g: {
                    "left": float(left.mean()),
                    "right": float(right.mean()),
                    "units_left": int(np.sum(left > 0.5)),
                    "units_right": int(np.sum(right > 0.5)),
                    "per_unit": [left.tolist(), right.tolist()],
                }
                for g, (left, right) in gates.items()
            }
            for layer, gates in sat.items()
        }
    lag = min(max_lag, len(ids) - 2)
    prof = gradient_by_lag(model, ids, lag, positions)
    out["gradient_by_lag"] = {
        "max_lag": lag,
        "positions": int(len(prof.positions)),
        "norms": prof.norms.tolist(),
        "reach": prof.reach(LAG_REACH),
    }
    out["singular_values"] = {str(k): v for k, v in prof.singular_values.items()}
    if model.vocab is not None:
        out["units"] = {
            name: [
                {"layer": m.layer, "unit": m.unit, "state": m.state, "r": m.r}
                for m in find_units(tr, name, top=3)
            ]
            for name in FEATURES
            if np.ptp(feature(tr, name)) > 0  # a feature the text never varies
        }
    return out


def format_diagnosis(d: dict) -> str:
    """The diagnosis as plain-text tables for a terminal."""
    lines = [f"{d['model']}", f"{d['tokens']:,} tokens, perplexity {d['perplexity']:.2f}", ""]
    if "saturation" in d:
        lines.append("gate saturation (mean fraction of steps < 0.1 / > 0.9; units > half)")
        lines.append(
            f"{'layer':>5} {'gate':>4} {'left':>7} {'right':>7} {'units L':>8} {'units R':>8}"
        )
        for layer, gates in d["saturation"].items():
            for g, s in gates.items():
                lines.append(
                    f"{layer:>5} {g:>4} {s['left']:>7.3f} {s['right']:>7.3f} "
                    f"{s['units_left']:>8} {s['units_right']:>8}"
                )
        lines.append("")
    lag = d["gradient_by_lag"]
    shown = [k for k in LAGS_SHOWN if k <= lag["max_lag"]]
    lines.append(
        f"gradient by lag: mean |d log p(x_t) / d h_(t-1-k)| over {lag['positions']} "
        f"positions; reach: the last lag at >= {LAG_REACH:.0%} of the largest"
    )
    lines.append(f"{'layer':>5} " + " ".join(f"{'k=' + str(k):>9}" for k in shown) + "    reach")
    for layer, row in enumerate(lag["norms"]):
        cells = " ".join(f"{row[k]:>9.3g}" for k in shown)
        lines.append(f"{layer:>5} {cells} {lag['reach'][layer]:>8}")
    lines.append("")
    lines.append("largest singular value of each recurrent matrix (and of its gate blocks)")
    for layer, row in d["singular_values"].items():
        cells = ", ".join(f"{g} {v:.3f}" for g, v in row.items() if g != "all")
        lines.append(f"{layer:>5} {row['all']:.3f}" + (f"  ({cells})" if cells else ""))
    if d.get("units"):
        lines.append("")
        lines.append("units that track a feature (Pearson r)")
        for name, found in d["units"].items():
            cells = ", ".join(
                f"layer {m['layer']} {m['state']}[{m['unit']}] r={m['r']:+.3f}" for m in found
            )
            lines.append(f"  {name:<14} {cells}")
    return "\n".join(lines)


def read_ids(model, path, max_tokens: int) -> tuple[np.ndarray, str | None]:
    """The first max_tokens tokens of a UTF-8 text file in the model's vocabulary, and a
    note if the text was longer (or None)."""
    from .vocab import read_text

    if model.vocab is None:
        raise InputError("this model file has no vocabulary: it cannot read text")
    if max_tokens < 3:
        raise InputError(f"--max-tokens must be at least 3; got {max_tokens}")
    ids = model.vocab.encode(read_text(path))
    if len(ids) == 0:
        raise InputError(f"{path}: the text is empty")
    if len(ids) <= max_tokens:
        return ids, None
    return ids[:max_tokens], f"the first {max_tokens:,} of the text's {len(ids):,} tokens"


def report_data(model, ids, title: str, window: int = 20, max_units: int = 256,
                max_lag: int = 50, positions: int = 300, say=None) -> dict:  # fmt: skip
    """The report page's data for model over ids (see rnnlm_engine.report.render_html):
    predictions, input x gradient attributions over `window` tokens, the top layer's units
    (at most max_units: those that track a feature first, then the most varying), the
    figures and the diagnosis' tables. say: None, or a function given a line at the start
    of each stage (long texts take a while)."""
    say = say or (lambda line: None)
    ids = np.asarray(ids, np.int64)
    say(f"tracing {len(ids):,} tokens")
    tr = model.trace(ids, top_k=5)
    c = model.config
    if model.vocab is not None:
        tokens = token_strings(tr)
        words = [model.vocab.token(i) for i in range(c.vocab_size)]
        words = ["\n" if i == model.vocab.eos_id else w for i, w in enumerate(words)]
    else:
        tokens = [str(i) for i in ids.tolist()]
        words = [str(i) for i in range(c.vocab_size)]
    layers = range(c.num_layers)
    states = State(
        np.stack([tr.layers[k].h for k in layers]),
        np.stack([tr.layers[k].c for k in layers]) if c.cell == "lstm" else None,
    )
    say(f"attributing each token to the {window} before it")
    scores = attributions(model, ids, window, states)
    say(f"gradient by lag over {positions} positions, and the diagnosis")
    diag = diagnose(model, ids, max_lag, positions, trace=tr)
    top_layer = c.num_layers - 1
    h = tr.layers[top_layer].h
    chosen = [m["unit"] for found in diag.get("units", {}).values() for m in found
              if m["layer"] == top_layer and m["state"] == "h"]  # fmt: skip
    for u in np.argsort(-h.var(axis=0), kind="stable"):
        if len(chosen) >= max_units:
            break
        chosen.append(int(u))
    chosen = list(dict.fromkeys(chosen))[:max_units]
    chosen.sort()
    values = h[:, chosen]
    scale = float(np.abs(values).max()) or 1.0
    q = np.clip(np.rint(values / scale * 127), -127, 127).astype(np.int8)
    notes = []
    if len(chosen) < c.hidden_size:
        notes.append(
            f"the unit picker offers {len(chosen)} of the top layer's {c.hidden_size} units: "
            "those that track a feature, then those that vary most"
        )
    say("figures")
    figures = {"saturation": saturation_svg(diag), "lag": lag_svg(diag)}
    if any(f is None for f in figures.values()) and not _have_matplotlib():
        notes.append(f"figures left out: they need matplotlib ({REPORT_EXTRA})")
    features = None
    if model.vocab is not None:
        features = {name: feature(tr, name).tolist() for name in FEATURES}
    return {
        "title": title,
        "model": diag["model"],
        "notes": notes,
        "tokens": tokens,
        "space": model.vocab is not None and model.vocab.kind == "word",
        "logprob": tr.logprob.tolist(),
        "rank": tr.rank.tolist(),
        "entropy": tr.entropy.tolist(),
        "top": [
            [[words[i], math.exp(v)] for i, v in zip(row_i, row_v, strict=True) if i >= 0]
            for row_i, row_v in zip(tr.top_ids.tolist(), tr.top_logprobs.tolist(), strict=True)
        ],
        "attribution": {
            "method": "input_x_gradient",
            "window": window,
            "scores": [s.tolist() for s in scores],
        },  # fmt: skip
        "units": {
            "layer": top_layer,
            "ids": chosen,
            "scale": scale,
            "values": base64.b64encode(q.tobytes()).decode("ascii"),
        },  # fmt: skip
        "features": features,
        "figures": figures,
        "tables": _tables(diag),
    }


# ---------------------------------------------------------------------------- figures


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _svg(fig, plt) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    return buf.getvalue()


def saturation_svg(diag: dict) -> str | None:
    """Karpathy et al.'s figure: per layer, one point per sigmoid gate unit at (fraction of
    steps left-saturated, fraction right-saturated). None without matplotlib or gates."""
    plt = _pyplot()
    sat = diag.get("saturation")
    if plt is None or not sat:
        return None
    fig, axes = plt.subplots(1, len(sat), figsize=(3.4 * len(sat), 3.4), squeeze=False)
    for ax, (layer, gates) in zip(axes[0], sat.items(), strict=True):
        for g, s in gates.items():
            left, right = s["per_unit"]
            ax.scatter(left, right, s=8, alpha=0.6, label=f"{g} gate")
        ax.plot([0, 1], [1, 0], color="0.8", lw=0.8, zorder=0)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=f"layer {layer}",
               xlabel="fraction left-saturated (< 0.1)")  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction right-saturated (> 0.9)")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _svg(fig, plt)


def lag_svg(diag: dict) -> str | None:
    """The mean gradient norm by lag, one curve per layer, on a log scale."""
    plt = _pyplot()
    if plt is None:
        return None
    lag = diag["gradient_by_lag"]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for layer, row in enumerate(lag["norms"]):
        row = np.asarray(row)
        ax.plot(np.arange(len(row)), np.where(row > 0, row, np.nan), label=f"layer {layer}")
    ax.set_yscale("log")
    ax.set(xlabel="lag k (steps before the predicting state)",
           ylabel="mean |d log p / d h|", title="gradient by lag")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _svg(fig, plt)


# ---------------------------------------------------------------------------- helpers


def _describe(model) -> str:
    c = model.config
    kind = model.vocab.kind if model.vocab is not None else "id"
    extras = (", tied" if c.tied else "") + (", residual" if c.residual else "")
    extras += ", int8 weights" if model.weight_storage == "int8" else ""
    return (
        f"{c.cell} {c.num_layers} x {c.hidden_size} (embedding {c.emb_size}), "
        f"{kind} vocabulary of {c.vocab_size:,}{extras}"
    )


def _tables(diag: dict) -> dict:
    lag = diag["gradient_by_lag"]
    shown = [k for k in LAGS_SHOWN if k <= lag["max_lag"]]
    tables = {
        "gradient by lag (mean gradient norm on each layer's state, k steps back)": [
            ["layer"] + [f"k={k}" for k in shown] + ["reach"]
        ]
        + [
            [layer] + [f"{row[k]:.3g}" for k in shown] + [lag["reach"][layer]]
            for layer, row in enumerate(lag["norms"])
        ],
        "largest singular value of the recurrent matrices": [
            ["layer"] + list(next(iter(diag["singular_values"].values())).keys())
        ]
        + [
            [layer] + [f"{v:.3f}" for v in row.values()]
            for layer, row in diag["singular_values"].items()
        ],
    }
    if "saturation" in diag:
        tables["gate saturation (mean fraction of steps; units saturated over half the time)"] = [
            ["layer", "gate", "< 0.1", "> 0.9", "units < 0.1", "units > 0.9"]
        ] + [
            [layer, g, f"{s['left']:.3f}", f"{s['right']:.3f}", s["units_left"], s["units_right"]]
            for layer, gates in diag["saturation"].items()
            for g, s in gates.items()
        ]
    if diag.get("units"):
        tables["units that track a feature"] = [["feature", "layer", "state", "unit", "r"]] + [
            [name, m["layer"], m["state"], m["unit"], f"{m['r']:+.3f}"]
            for name, found in diag["units"].items()
            for m in found
        ]
    return tables
