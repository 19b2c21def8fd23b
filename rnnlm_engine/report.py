"""The inspection report: one self-contained HTML page (``rnnlm explain MODEL FILE --html``).

``render_html(data) -> str`` turns the report's data (a dict of plain lists, see
``render_html``) into a page that needs no server and fetches nothing: the data is embedded
once as JSON in ``<script type="application/json" id="data">``, a small plain script builds
the text from it (one span per token, one DOM insertion), figures are inline SVG, tables
are HTML. A Content-Security-Policy meta tag forbids every network load, so even a figure
with an external reference cannot reach out. ``write_html(path, data)`` writes it
atomically.

What the page shows: the text coloured by surprisal (bits) or GLTR rank bucket, or by one
hidden unit's activation, or by a per-token feature; hovering a token shows its
probability, rank, entropy and the model's top alternatives; clicking it colours the earlier
tokens by their attribution to it and lists the scores (click again or Escape clears).

Pure standard library: the caller converts arrays to lists (objects with ``tolist()``, such
as NumPy arrays and scalars, are converted here too).
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import math
import re

from .atomic import write_atomically
from .errors import InputError

# the page's own numbers are for reading and colouring: 4 significant digits keep a
# 5,000-token report small (a float's repr takes 18 characters)
DIGITS = 4

# no network at all: inline script and style, data: images only
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:"
)


def render_html(data: dict) -> str:
    """The report page for data, as one HTML string.

    data (lists of length T, the number of tokens; token 0 has no history):
      title: str; model: str (one line); notes: [str] (shown at the top)
      tokens: [str]; space: bool (a space between tokens: word models)
      logprob: [float | None] natural log p(token | before), None (or NaN) for token 0
      rank: [int] 1 = the model's top choice, 0 for token 0
      entropy: [float | None] of the prediction, nats
      top: [[[str, float], ...]] alternatives and their probabilities, best first
      attribution: None or {"method": str, "window": W, "scores": [[float]]}: scores[t]
        holds at most t numbers, the contributions of tokens t-len..t-1 to log p(token t)
      units: None or {"layer": int, "ids": [int], "scale": float, "values": base64 str}:
        int8 bytes, row-major (T, len(ids)); activation = byte / 127 * scale
      features: None or {name: [float | None]} (optional): more colourings of the text
      figures: {name: svg str | None}: matplotlib SVG, inlined (its XML prologue,
        comments, metadata and xmlns attributes are dropped: HTML needs none of them)
      tables: {name: [[header, ...], [cell, ...], ...]} (optional)
    Non-finite numbers become null. Raises InputError naming the first malformed field.
    """
    if not isinstance(data, dict):
        raise InputError(f"report data must be a dict, got {type(data).__name__}")
    payload = _payload(data)
    title = _text(data.get("title", "rnnlm report"), "title")
    model = _text(data.get("model", ""), "model")
    notes = [_text(n, "notes") for n in _list(data.get("notes") or [], "notes")]
    figures = data.get("figures") or {}
    if not isinstance(figures, dict):
        raise InputError(f"report figures must be a dict of SVG strings, got {figures!r:.60}")
    tables = data.get("tables") or {}
    if not isinstance(tables, dict):
        raise InputError(f"report tables must be a dict of row lists, got {tables!r:.60}")

    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        '<link rel="icon" href="data:,">\n',
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
        f"<header>\n<h1>{html.escape(title)}</h1>\n",
        f'<p class="model">{html.escape(model)}</p>\n' if model else "",
        '<p class="stats" id="stats"></p>\n',
    ]
    if notes:
        parts.append('<ul class="notes">')
        parts.extend(f"<li>{html.escape(n)}</li>" for n in notes)
        parts.append("</ul>\n")
    parts.append("</header>\n" + _CONTROLS)
    kind = "words" if payload["space"] else "chars"
    parts.append(
        f'<main>\n<div id="text" class="text {kind}"></div>\n'
        '<aside><div id="panel" class="panel"></div></aside>\n</main>\n'
        "<noscript><p>This report needs JavaScript to show the text.</p></noscript>\n"
    )
    parts.append(_figures_html(figures))
    parts.append(_tables_html(tables))
    parts.append('<div id="tip" role="tooltip"></div>\n')
    parts.append(f'<script type="application/json" id="data">{_json_for_script(payload)}')
    parts.append(f"</script>\n<script>{_JS}</script>\n</body>\n</html>\n")
    return "".join(parts)


def write_html(path, data: dict) -> None:
    """Write render_html(data) to path atomically (a crash leaves any previous file).
    Raises InputError for malformed data, ModelFileError when the file cannot be written."""
    page = render_html(data)
    try:
        encoded = page.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (surrogateescape'd bytes): show U+FFFD
        encoded = re.sub("[\ud800-\udfff]", "\ufffd", page).encode("utf-8")
    write_atomically(str(path), [encoded])


# ---------------------------------------------------------------------------------------
# validation and the embedded JSON


def _payload(data: dict) -> dict:
    """The part of data the page's script reads, validated, numbers finite and rounded."""
    tokens = [_text(t, "tokens") for t in _list(data.get("tokens"), "tokens")]
    n = len(tokens)
    out = {"tokens": tokens, "space": bool(data.get("space", True))}
    for key in ("logprob", "rank", "entropy", "top"):
        values = _clean(_list(data.get(key), key), key)
        if len(values) != n:
            raise InputError(f"report {key} has {len(values)} entries for {n} tokens")
        out[key] = values
    for t, alternatives in enumerate(out["top"]):
        for pair in _list(alternatives, f"top[{t}]"):
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise InputError(f"report top[{t}] holds {pair!r:.60}, not a [token, p] pair")
    for key in ("logprob", "entropy"):
        if any(v is not None and not isinstance(v, int | float) for v in out[key]):
            raise InputError(f"report {key} must hold numbers or None")
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in out["rank"]):
        raise InputError("report rank must hold integers >= 0 (0 for token 0)")
    out["attribution"] = _attribution(data.get("attribution"), n)
    out["units"] = _units(data.get("units"), n)
    features = data.get("features")
    if features is not None:
        if not isinstance(features, dict):
            raise InputError("report features must be None or a dict of name -> T numbers")
        out["features"] = {}
        for name, values in features.items():
            values = _clean(_list(values, f"features[{name!r}]"), "features")
            if len(values) != n:
                raise InputError(f"report feature {name!r} has {len(values)} values for {n}")
            out["features"][_text(name, "features")] = values
    else:
        out["features"] = None
    return out


def _attribution(a, n: int):
    if a is None:
        return None
    if not isinstance(a, dict) or "scores" not in a:
        raise InputError("report attribution must be None or a dict with method, window, scores")
    scores = _clean(_list(a["scores"], "attribution scores"), "attribution")
    if len(scores) != n:
        raise InputError(f"report attribution has {len(scores)} score lists for {n} tokens")
    for t, row in enumerate(scores):
        if not isinstance(row, list) or len(row) > t:
            got = len(row) if isinstance(row, list) else type(row).__name__
            raise InputError(
                f"report attribution scores[{t}] must list at most {t} numbers "
                f"(the earlier tokens in the window), got {got}"
            )
    return {
        "method": _text(a.get("method", "attribution"), "attribution method"),
        "window": _clean(a.get("window"), "attribution window"),
        "scores": scores,
    }


def _units(u, n: int):
    if u is None:
        return None
    if not isinstance(u, dict) or not {"ids", "scale", "values"} <= u.keys():
        raise InputError("report units must be None or a dict with layer, ids, scale, values")
    ids = _clean(_list(u["ids"], "units ids"), "units ids")
    if not all(isinstance(i, int) for i in ids):
        raise InputError("report units ids must be integers")
    scale = _clean(u["scale"], "units scale")
    if not isinstance(scale, int | float):
        raise InputError(f"report units scale must be a finite number, got {u['scale']!r}")
    values = u["values"]
    if isinstance(values, bytes):
        values = values.decode("ascii", "replace")
    try:
        size = len(base64.b64decode(_text(values, "units values"), validate=True))
    except binascii.Error as e:
        raise InputError(f"report units values is not base64: {e}") from e
    if size != n * len(ids):
        raise InputError(
            f"report units values holds {size} bytes; expected T * len(ids) = "
            f"{n} * {len(ids)} = {n * len(ids)} int8 values"
        )
    return {
        "layer": _clean(u.get("layer", 0), "units layer"),
        "ids": ids,
        "scale": scale,
        "values": values,
    }


def _clean(x, what: str):
    """A JSON-ready copy: tuples to lists, floats rounded, non-finite floats to None,
    objects with tolist() (NumPy arrays and scalars) converted."""
    if x is None or isinstance(x, bool | int | str):
        return x
    if isinstance(x, float):
        return float(f"{x:.{DIGITS}g}") if math.isfinite(x) else None
    if isinstance(x, list | tuple):
        return [_clean(v, what) for v in x]
    if isinstance(x, dict):
        return {str(k): _clean(v, what) for k, v in x.items()}
    if hasattr(x, "tolist"):
        return _clean(x.tolist(), what)
    raise InputError(f"report {what}: cannot put a {type(x).__name__} in the page")


def _list(x, what: str) -> list:
    if hasattr(x, "tolist") and not isinstance(x, list | tuple):
        x = x.tolist()
    if not isinstance(x, list | tuple):
        raise InputError(f"report {what} must be a list, got {type(x).__name__}")
    return list(x)


def _text(x, what: str) -> str:
    if not isinstance(x, str):
        raise InputError(f"report {what} must be text, got {type(x).__name__}")
    return x


def _json_for_script(payload: dict) -> str:
    """JSON that cannot end its <script> element early: '<', '>' and '&' occur only
    inside JSON strings, where their \\u escapes mean the same characters."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


# ---------------------------------------------------------------------------------------
# figures and tables (rendered here, not in the JSON: the data is embedded once)

_XML_JUNK = re.compile(r"<!--.*?-->|<metadata\b.*?</metadata>|<\?.*?\?>|<!DOCTYPE[^>]*>", re.S)
_XMLNS = re.compile(r"\s+xmlns(?::[\w.-]+)?\s*=\s*(?:\"[^\"]*\"|'[^']*')")


def inline_svg(svg: str) -> str:
    """An SVG document as an element to put inside HTML: from <svg to </svg>, without the
    XML prologue, comments, metadata and xmlns attributes (the HTML parser puts <svg> in
    the SVG namespace by itself, and they are where matplotlib writes its URLs)."""
    svg = _text(svg, "figure")
    start, end = svg.find("<svg"), svg.rfind("</svg>")
    if start < 0 or end < start:
        raise InputError("report figure is not an SVG document (no <svg>...</svg>)")
    svg = svg[start : end + len("</svg>")]
    return _XMLNS.sub("", _XML_JUNK.sub("", svg))


def _figures_html(figures: dict) -> str:
    shown = [(name, svg) for name, svg in figures.items() if svg is not None]
    if not shown:
        return ""
    parts = ['<section class="figures">\n<h2>Figures</h2>\n<div class="figs">\n']
    for name, svg in shown:
        caption = html.escape(str(name).replace("_", " "))
        parts.append(
            f'<figure data-name="{html.escape(str(name))}"><figcaption>{caption}</figcaption>'
            f"{inline_svg(svg)}</figure>\n"
        )
    parts.append("</div>\n</section>\n")
    return "".join(parts)


def _cell(x, tag: str) -> str:
    if isinstance(x, bool) or x is None:
        return f"<{tag}>{html.escape(str(x))}</{tag}>"
    if isinstance(x, int | float) or hasattr(x, "tolist"):
        x = x.tolist() if hasattr(x, "tolist") else x
        shown = f"{x:.4g}" if isinstance(x, float) else str(x)
        return f'<{tag} class="num">{html.escape(shown)}</{tag}>'
    return f"<{tag}>{html.escape(str(x))}</{tag}>"


def _tables_html(tables: dict) -> str:
    if not tables:
        return ""
    parts = ['<section class="tables">\n<h2>Tables</h2>\n<div class="tabs">\n']
    for name, rows in tables.items():
        rows = [_list(r, f"table {name!r} row") for r in _list(rows, f"table {name!r}")]
        parts.append(f'<table data-name="{html.escape(str(name))}">')
        parts.append(f"<caption>{html.escape(str(name).replace('_', ' '))}</caption>")
        if rows:
            parts.append("<thead><tr>" + "".join(_cell(h, "th") for h in rows[0]))
            parts.append("</tr></thead>")
        parts.append("<tbody>")
        for row in rows[1:]:
            parts.append("<tr>" + "".join(_cell(c, "td") for c in row) + "</tr>")
        parts.append("</tbody></table>\n")
    parts.append("</div>\n</section>\n")
    return "".join(parts)


# ---------------------------------------------------------------------------------------
# the page: style, controls and script

_CONTROLS = """<div class="controls">
<label>Colour by <select id="mode">
<option value="surprisal">surprisal (bits)</option>
<option value="rank">rank (GLTR buckets)</option>
<option value="none">nothing</option>
</select></label>
<label>Unit <select id="unit"></select></label>
<div id="legend" class="legend"></div>
</div>
"""

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,
sans-serif;color:#1b1b1b;background:#fff}
header{padding:14px 24px 10px;border-bottom:1px solid #ddd}
h1{font-size:20px;margin:0 0 4px;font-weight:600}
h2{font-size:16px;margin:18px 0 8px}
h3{font-size:14px;margin:12px 0 4px}
.model,.stats{color:#555;margin:2px 0;font-size:13px}
.notes{margin:6px 0 0;padding-left:18px;color:#8a5300;font-size:13px}
.controls{position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:8px 20px;
align-items:center;padding:8px 24px;background:#f6f6f6;border-bottom:1px solid #ddd;
font-size:13px}
.controls select{font:inherit;margin-left:4px}
.legend{display:flex;flex-wrap:wrap;align-items:center;gap:6px 10px;color:#333}
.bar{display:inline-block;width:160px;height:12px;border:1px solid #aaa;border-radius:2px;
vertical-align:-2px}
.sw{display:inline-block;width:13px;height:13px;border:1px solid #aaa;border-radius:2px;
vertical-align:-2px;margin-right:4px}
main{display:grid;grid-template-columns:minmax(0,1fr) 340px;gap:24px;padding:16px 24px}
.text{white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.9;font-size:15.5px;
max-width:78em}
.text.chars{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;
font-size:14px}
.tok{border-radius:2px;cursor:pointer;padding:2px 0}
.tok:hover{outline:1px solid #333}
.tok.empty{color:#999}
.tok.sel{outline:2px solid #000;outline-offset:1px}
.text.attr .tok:not(.win):not(.sel){background:transparent!important;color:#9a9a9a}
.panel{position:sticky;top:56px;max-height:calc(100vh - 72px);overflow:auto;
background:#fafafa;border:1px solid #ddd;border-radius:6px;padding:10px 12px;font-size:13px}
.muted{color:#777}
.head{font-size:15px;margin-bottom:4px}
.tokname{font-weight:600;background:#eee;border-radius:3px;padding:0 4px;
white-space:pre-wrap}
.pos{color:#888;font-size:12px}
table{border-collapse:collapse;font-size:13px}
th,td{padding:1px 8px 1px 0;text-align:left;vertical-align:top}
.kv th{font-weight:normal;color:#666}
.num{text-align:right;font-variant-numeric:tabular-nums}
.alts td,.scores td{border-bottom:1px solid #eee}
.alts tr.hit td{font-weight:600}
.scores .t{white-space:pre;border-radius:2px;padding:0 3px}
#tip{position:absolute;z-index:3;display:none;max-width:340px;background:#fff;
border:1px solid #999;border-radius:5px;box-shadow:0 3px 10px rgba(0,0,0,.18);
padding:8px 10px;font-size:13px;pointer-events:none}
section{padding:0 24px 16px}
.figs,.tabs{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}
figure{margin:0;max-width:100%}
figcaption{font-size:13px;color:#555;margin-bottom:4px}
figure svg{max-width:100%;height:auto}
.tabs table{border:1px solid #ddd}
.tabs caption{text-align:left;font-size:13px;color:#555;padding-bottom:4px}
.tabs th,.tabs td{padding:2px 8px;border-bottom:1px solid #eee}
.tabs thead th{background:#f3f3f3}
@media (max-width:900px){main{grid-template-columns:1fr}.panel{position:static}}
"""

_JS = r"""
(function () {
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const T = D.tokens.length, LN2 = Math.LN2;
const $ = (id) => document.getElementById(id);
const text = $("text"), tip = $("tip"), panel = $("panel"), legend = $("legend");
const modeSel = $("mode"), unitSel = $("unit");
const WHITE = [255, 255, 255], RED = [214, 96, 77], BLUE = [67, 147, 195];
const HEAT = [[255, 255, 255], [254, 232, 200], [253, 187, 132], [239, 101, 72]];
const TEAL = [[255, 255, 255], [102, 194, 164]];
const GLTR = [[10, "top 10", "#adff80"], [100, "top 100", "#ffea80"],
              [1000, "top 1000", "#ff9280"], [Infinity, "rest", "#e5b0ff"]];

function el(tag, cls, txt) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (txt != null) e.textContent = txt;
  return e;
}
function rgb(c) { return "rgb(" + c.map(Math.round).join(",") + ")"; }
function mix(a, b, f) { return [0, 1, 2].map((k) => a[k] + (b[k] - a[k]) * f); }
function ramp(stops, f) {
  f = Math.min(Math.max(f, 0), 1) * (stops.length - 1);
  const k = Math.min(Math.floor(f), stops.length - 2);
  return rgb(mix(stops[k], stops[k + 1], f - k));
}
function diverging(v) {  // -1 red, 0 white, +1 blue
  if (v == null || v !== v) return "";
  v = Math.max(-1, Math.min(1, v));
  return rgb(v < 0 ? mix(WHITE, RED, -v) : mix(WHITE, BLUE, v));
}
function fmt(x) { return x == null ? "\u2013" : Number(x).toPrecision(3); }
function signed(x) { return x == null ? "\u2013" : (x > 0 ? "+" : "") + fmt(x); }
function vis(s) {  // whitespace made visible, for tooltips and lists
  return s === "" ? "\u2205" : s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5")
    .replace(/ /g, "\u2423");
}

// numbers for the colourings
const bits = D.logprob.map((lp) => (lp == null ? null : -lp / LN2));
const known = bits.filter((b) => b != null).sort((a, b) => a - b);
const cap = Math.max(1, Math.ceil(known.length ? known[Math.floor(0.99 * (known.length - 1))] : 1));
const bucket = (r) => (r ? GLTR.findIndex((g) => r <= g[0]) : -1);
const counts = [0, 0, 0, 0];
let sum = 0;
for (let i = 0; i < T; i++) {
  if (D.logprob[i] == null) continue;
  sum -= D.logprob[i];
  if (D.rank[i]) counts[bucket(D.rank[i])]++;
}
let U = null, nU = 0;
if (D.units) {
  nU = D.units.ids.length;
  const raw = atob(D.units.values);
  U = new Int8Array(raw.length);  // bytes 128..255 wrap to -128..-1
  for (let k = 0; k < raw.length; k++) U[k] = raw.charCodeAt(k);
}
const unitValue = (i) => (U[i * nU + Number(unitSel.value)] / 127) * D.units.scale;
const F = {};
for (const name in D.features || {}) {
  let lo = Infinity, hi = -Infinity;
  for (const x of D.features[name]) if (x != null) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
  if (lo > hi) lo = hi = 0;
  F[name] = { values: D.features[name], lo: lo, hi: hi, m: Math.max(-lo, hi) || 1 };
}

// the controls
if (D.units) {
  const opt = el("option", null, "unit activation");
  opt.value = "unit";
  modeSel.insertBefore(opt, modeSel.lastElementChild);
  D.units.ids.forEach((id, k) => {
    const o = el("option", null, "unit " + id + " (layer " + D.units.layer + ")");
    o.value = k;
    unitSel.appendChild(o);
  });
} else {
  unitSel.appendChild(el("option", null, "no units in this report"));
  unitSel.disabled = true;
}
for (const name in F) {
  const opt = el("option", null, "feature: " + name);
  opt.value = "feature:" + name;
  modeSel.insertBefore(opt, modeSel.lastElementChild);
}
let mode = "surprisal", sel = -1;

function colourOf(i) {
  if (mode === "surprisal") return bits[i] == null ? "" : ramp(HEAT, bits[i] / cap);
  if (mode === "rank") { const b = bucket(D.rank[i]); return b < 0 ? "" : GLTR[b][2]; }
  if (mode === "unit") return diverging(unitValue(i));
  if (mode.startsWith("feature:")) {
    const f = F[mode.slice(8)], v = f.values[i];
    if (v == null) return "";
    return f.lo < 0 ? diverging(v / f.m) : ramp(TEAL, (v - f.lo) / (f.hi - f.lo || 1));
  }
  return "";
}

function gradient(stops) {
  const b = el("span", "bar");
  b.style.background = "linear-gradient(to right," + stops.map(rgb).join(",") + ")";
  return b;
}
function showLegend() {
  const parts = [];
  if (sel >= 0 && D.attribution) {
    parts.push(el("span", null, "attribution: lowers p"), gradient([RED, WHITE, BLUE]),
               el("span", null, "raises p (scaled by the largest |score|)"));
  } else if (mode === "surprisal") {
    parts.push(el("span", null, "0 bits"), gradient(HEAT),
               el("span", null, "\u2265 " + cap + " bits (surprisal, \u2212log\u2082 p)"));
  } else if (mode === "rank") {
    const n = counts.reduce((a, b) => a + b, 0) || 1;
    GLTR.forEach((g, k) => {
      const s = el("span");
      const sw = el("span", "sw");
      sw.style.background = g[2];
      s.append(sw, g[1] + " (" + Math.round((100 * counts[k]) / n) + "%)");
      parts.push(s);
    });
  } else if (mode === "unit") {
    parts.push(el("span", null, "\u22121"), gradient([RED, WHITE, BLUE]),
               el("span", null, "+1  activation of unit " + D.units.ids[Number(unitSel.value)]));
  } else if (mode.startsWith("feature:")) {
    const f = F[mode.slice(8)];
    parts.push(el("span", null, fmt(f.lo < 0 ? -f.m : f.lo)),
               gradient(f.lo < 0 ? [RED, WHITE, BLUE] : TEAL),
               el("span", null, fmt(f.lo < 0 ? f.m : f.hi) + "  " + mode.slice(8)));
  }
  legend.replaceChildren(...parts);
}

function kv(table, k, v) {
  const tr = el("tr");
  tr.append(el("th", null, k), el("td", null, v));
  table.appendChild(tr);
}
function windowOf(i) {
  const sc = (D.attribution && D.attribution.scores[i]) || [];
  return { sc: sc, start: i - sc.length };
}
function details(i) {  // what the tooltip and the panel say about token i
  const box = el("div", "details"), head = el("div", "head");
  head.append(el("span", "tokname", vis(D.tokens[i])), el("span", "pos", "  token " + i));
  box.appendChild(head);
  if (D.logprob[i] == null) {
    box.appendChild(el("div", "muted", "the first token: no history, not predicted"));
    return box;
  }
  const t = el("table", "kv");
  kv(t, "probability", fmt(Math.exp(D.logprob[i])) + "   (" + fmt(bits[i]) + " bits)");
  kv(t, "rank", String(D.rank[i]));
  kv(t, "entropy", fmt(D.entropy[i]) + " nats (" +
     fmt(D.entropy[i] == null ? null : D.entropy[i] / LN2) + " bits)");
  if (mode === "unit") kv(t, "unit " + D.units.ids[Number(unitSel.value)], signed(unitValue(i)));
  if (mode.startsWith("feature:")) kv(t, mode.slice(8), fmt(F[mode.slice(8)].values[i]));
  if (sel >= 0 && i < sel) {
    const w = windowOf(sel);
    if (i >= w.start) kv(t, "attribution", signed(w.sc[i - w.start]));
  }
  box.appendChild(t);
  if (D.top[i].length) {
    box.appendChild(el("h3", null, "top alternatives"));
    const alts = el("table", "alts");
    D.top[i].forEach((pair, k) => {
      const tr = el("tr", pair[0] === D.tokens[i] ? "hit" : null);
      tr.append(el("td", "num", String(k + 1)), el("td", null, vis(pair[0])),
                el("td", "num", fmt(pair[1])));
      alts.appendChild(tr);
    });
    box.appendChild(alts);
  }
  return box;
}

function idlePanel() {
  panel.replaceChildren(el("p", "muted", "Hover a token for its probability, rank and the " +
    "model's alternatives. Click it for the attribution of the tokens before it."));
}
function applyAttr() {
  const w = windowOf(sel), A = D.attribution;
  let m = 0;
  for (const v of w.sc) if (v != null) m = Math.max(m, Math.abs(v));
  const rows = el("table", "scores");
  for (let k = 0; k < w.sc.length; k++) {
    const j = w.start + k, c = diverging(m ? w.sc[k] / m : 0);
    spans[j].classList.add("win");
    spans[j].style.backgroundColor = c;
    const tr = el("tr"), tok = el("span", "t", vis(D.tokens[j]));
    tok.style.backgroundColor = c;
    const td = el("td");
    td.appendChild(tok);
    tr.append(el("td", "num", "\u2212" + (sel - j)), td, el("td", "num", signed(w.sc[k])));
    rows.appendChild(tr);
  }
  const parts = [details(sel), el("h3", null, "Attribution")];
  if (!A) {
    parts.push(el("p", "muted", "Attribution is not available in this report."));
  } else if (!w.sc.length) {
    parts.push(el("p", "muted", "No earlier tokens to attribute to."));
  } else {
    parts.push(el("p", null, "Contribution of each of the " + w.sc.length +
      " tokens before it to log p(token) (" + A.method.replace(/_/g, " ") + ", window " +
      A.window + "). Blue raises the probability, red lowers it; colours are scaled by the " +
      "largest |score|, " + fmt(m) + "."), rows);
  }
  parts.push(el("p", "muted", "Click the token again or press Escape to clear."));
  panel.replaceChildren(...parts);
  showLegend();
}
function unmark() {
  const w = windowOf(sel);
  spans[sel].classList.remove("sel");
  for (let j = w.start; j < sel; j++) {
    spans[j].classList.remove("win");
    spans[j].style.backgroundColor = colourOf(j);
  }
}
function select(i) {
  if (sel === i) { clearSel(); return; }
  if (sel >= 0) unmark();
  sel = i;
  spans[i].classList.add("sel");
  text.classList.add("attr");
  applyAttr();
}
function clearSel() {
  if (sel < 0) return;
  unmark();
  sel = -1;
  text.classList.remove("attr");
  idlePanel();
  showLegend();
}
function paint() {
  for (let i = 0; i < T; i++) spans[i].style.backgroundColor = colourOf(i);
  if (sel >= 0) applyAttr(); else showLegend();
}

function showTip(i, s) {
  tip.replaceChildren(details(i));
  tip.style.display = "block";
  const r = s.getBoundingClientRect(), w = tip.offsetWidth, h = tip.offsetHeight;
  const sx = window.scrollX, sy = window.scrollY;
  let x = r.left + sx, y = r.bottom + sy + 6;
  x = Math.max(sx + 4, Math.min(x, sx + document.documentElement.clientWidth - w - 4));
  if (r.bottom + h + 6 > window.innerHeight && r.top > h + 6) y = r.top + sy - h - 6;
  tip.style.left = x + "px";
  tip.style.top = y + "px";
}

// the text: one span per token, built off-document and inserted once
const spans = new Array(T), frag = document.createDocumentFragment();
for (let i = 0; i < T; i++) {
  const t = D.tokens[i], s = el("span", t === "" ? "tok empty" : "tok");
  s.dataset.i = i;
  s.textContent = t === "" ? "\u2205" : t.replace(/\n/g, "\u21b5\n");
  spans[i] = s;
  frag.appendChild(s);
  if (D.space && i + 1 < T && !t.endsWith("\n")) frag.appendChild(document.createTextNode(" "));
}
text.appendChild(frag);

text.addEventListener("mouseover", (e) => {
  const s = e.target.closest && e.target.closest(".tok");
  if (s) showTip(Number(s.dataset.i), s);
});
text.addEventListener("mouseleave", () => { tip.style.display = "none"; });
text.addEventListener("click", (e) => {
  const s = e.target.closest && e.target.closest(".tok");
  if (s) select(Number(s.dataset.i));
});
document.addEventListener("keydown", (e) => { if (e.key === "Escape") clearSel(); });
modeSel.addEventListener("change", () => { mode = modeSel.value; paint(); });
unitSel.addEventListener("change", () => { mode = modeSel.value = "unit"; paint(); });

const n = T - (D.logprob.filter((x) => x == null).length);
$("stats").textContent = T + " tokens" + (n ? " \u00b7 " + fmt(sum / n / LN2) +
  " bits per token \u00b7 perplexity " + fmt(Math.exp(sum / n)) + " \u00b7 " +
  Math.round((100 * counts[0]) / n) + "% in the model's top 10" : "");
idlePanel();
paint();
window.reportBuildMs = performance.now();
})();
"""
