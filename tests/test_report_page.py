"""The inspection report page (rnnlm_engine.report): a self-contained HTML file, checked as
text here and driven in headless Chromium (tests/chromium.py): hovering, clicking, the unit
picker, hostile token strings, and the size and load time of a 5,000-token report.

The browser tests are skipped when no chromium is installed; .ci/run installs it.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import random
import re
import shutil

import chromium
import pytest

from rnnlm_engine.errors import InputError
from rnnlm_engine.report import inline_svg, render_html, write_html

needs_chromium = pytest.mark.skipif(chromium.CHROMIUM is None, reason=chromium.SKIP_REASON)

HOSTILE = "</script><script>alert(1)</script>"
WORDS = (
    "the model reads one token at a time and keeps a state that carries what it has seen "
    "so far ; its prediction of the next word is a distribution over the vocabulary"
).split()

SVG = """<?xml version="1.0" encoding="utf-8" standalone="no"?>
<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN"
  "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">
<svg xmlns:xlink="http://www.w3.org/1999/xlink" width="240pt" height="120pt"
 viewBox="0 0 240 120" xmlns="http://www.w3.org/2000/svg" version="1.1">
 <metadata><rdf:RDF xmlns:dc="http://purl.org/dc/elements/1.1/"></rdf:RDF></metadata>
 <!-- Created with matplotlib (https://matplotlib.org/) -->
 <defs><path id="m1" d="M 0 0 L 0 3.5"/></defs>
 <rect x="0" y="0" width="240" height="120" fill="#ffffff"/>
 <polyline points="10,110 60,70 110,80 160,30 230,20" fill="none" stroke="#1f77b4"
  stroke-width="2"/>
 <use xlink:href="#m1" x="10" y="110" style="stroke:#000"/>
 <text x="120" y="15" text-anchor="middle" font-size="11">gradient by lag</text>
</svg>
"""


def make_data(
    T: int,
    *,
    seed: int = 0,
    space: bool = True,
    window: int = 8,
    k: int = 5,
    n_units: int = 6,
    attribution: bool = True,
    tokens: list[str] | None = None,
) -> dict:
    """A synthetic report: ranks drawn so that about half land in the top 10 and a few
    beyond 1000; log-probabilities consistent with the rank; attribution decaying with
    distance; unit 0 alternates +1/-1 by token parity (scale 1), so colours are known."""
    rng = random.Random(seed)
    if tokens is None:
        tokens = [rng.choice(WORDS) for _ in range(T)]
        for t in range(7, T, 23):
            tokens[t] = "\n"
    vocab = sorted(set(WORDS) | {"<unk>", "a", "an", "of", "in"})
    logprob, rank, entropy, top, scores = [None], [0], [None], [[]], [[]]
    for t in range(1, T):
        r = min(30000, int(rng.paretovariate(0.5)))  # P(r > 10) = 0.32, P(r > 1000) = 0.03
        lp = -min(25.0, 0.5 + 1.3 * math.log(r) + rng.random())
        alts = [w for w in vocab if w != tokens[t]]
        rng.shuffle(alts)
        alts = alts[:k]
        if r <= k:
            alts[r - 1] = tokens[t]
        probs = sorted((rng.random() * 0.5 for _ in range(k)), reverse=True)
        logprob.append(lp)
        rank.append(r)
        entropy.append(0.5 + 4 * rng.random())
        top.append([[a, p] for a, p in zip(alts, probs, strict=True)])
        n = min(window, t)
        scores.append([rng.gauss(0, 1) * 0.8 ** (n - j) for j in range(n)])
    acts = bytearray()
    for t in range(T):
        for u in range(n_units):
            a = (1 if t % 2 == 0 else -1) if u == 0 else math.sin(0.3 * t + u)
            acts.append(round(a * 127) & 0xFF)
    return {
        "title": "ptb.rnnlm on test.txt <&>",
        "model": "lstm, 2 layers of 200, 10000 words",
        "tokens": tokens,
        "space": space,
        "logprob": logprob,
        "rank": rank,
        "entropy": entropy,
        "top": top,
        "attribution": (
            {"method": "input_x_gradient", "window": window, "scores": scores}
            if attribution
            else None
        ),
        "units": {
            "layer": 1,
            "ids": [3 * u + 2 for u in range(n_units)],
            "scale": 1.0,
            "values": base64.b64encode(bytes(acts)).decode("ascii"),
        },
        "features": {"position": [float(t) for t in range(T)]},
        "figures": {"saturation": None, "lag": SVG},
        "notes": ["figures left out: saturation (the model has no gates)"],
        "tables": {
            "gradient_by_lag": [["lag", "mean |dlogp/dx|"], [1, 0.5123456], [2, 0.25], [4, 1e-5]],
            "singular_values": [["matrix", "s1", "s2"], ["W_hh l0", 1.23, 0.98]],
        },
    }


def page(tmp_path, data, name="report.html") -> str:
    path = str(tmp_path / name)
    write_html(path, data)
    return path


def embedded(text: str):
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    return json.loads(m.group(1))


def assert_clean(run):
    assert run.result is not None, run.stderr[-2000:]
    assert "exception" not in run.result, run.result["exception"]
    assert run.result["errors"] == []
    assert run.result["alerts"] == []
    assert run.console == [], run.console


# ---------------------------------------------------------------------------------------
# the HTML as text


def test_page_is_self_contained_and_embeds_the_data_once(tmp_path):
    data = make_data(40)
    text = open(page(tmp_path, data), encoding="utf-8").read()
    assert not re.search(r"https?://", text), re.findall(r".{40}https?://.{40}", text)
    assert text.count('id="data"') == 1
    assert len(re.findall(r"<script\b", text)) == 2  # the data and the page's script
    assert re.search(r"<link[^>]+href=\"(?!data:)", text) is None
    got = embedded(text)
    assert got["tokens"] == data["tokens"]
    assert got["rank"] == data["rank"]
    assert got["logprob"][0] is None
    assert got["logprob"][5] == pytest.approx(data["logprob"][5], rel=1e-3)
    assert "figures" not in got and "tables" not in got  # rendered as HTML, not embedded
    assert "<title>ptb.rnnlm on test.txt &lt;&amp;&gt;</title>" in text
    assert '<table data-name="gradient_by_lag">' in text and "0.5123" in text
    assert "<svg" in text and "gradient by lag" in text


def test_hostile_strings_cannot_leave_the_json():
    data = make_data(6)
    data["tokens"][3] = HOSTILE
    data["tokens"][4] = "<!--<script>"
    data["top"][2] = [[HOSTILE, 0.5], ["a\u2028b", 0.1]]
    text = render_html(data)
    start = text.index('id="data">')
    json_text = text[start + len('id="data">') : text.index("</script>", start)]
    assert "<" not in json_text and ">" not in json_text
    got = json.loads(json_text)
    assert got["tokens"][3] == HOSTILE and got["tokens"][4] == "<!--<script>"
    assert got["top"][2][0] == [HOSTILE, 0.5]
    assert text.count("</script>") == 2


def test_inline_svg_drops_prologue_comments_metadata_and_namespaces():
    svg = inline_svg(SVG)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "http" not in svg and "xmlns" not in svg and "metadata" not in svg
    assert 'xlink:href="#m1"' in svg and "gradient by lag" in svg
    with pytest.raises(InputError, match="not an SVG"):
        inline_svg("<html>no figure</html>")


def matplotlib_svg() -> str | None:
    """A matplotlib figure as the report gets it (a line plot with markers and a legend,
    and an image, which matplotlib embeds as a data: URI), or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(5, 2.2))
    ax, im = fig.subplots(1, 2)
    ax.plot([1, 2, 3, 4], [3, 1, 2, 0.5], marker="o", label="layer 0")
    ax.set_yscale("log")
    ax.set_title("gate saturation")
    ax.legend()
    im.imshow([[0.1, 0.5, 0.9], [0.3, 0.7, 0.2]])
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()


def test_matplotlib_svg_leaves_no_urls():
    svg = matplotlib_svg()
    if svg is None:
        pytest.skip("no matplotlib (the report extra)")
    inlined = inline_svg(svg)
    assert not re.search(r"https?://", inlined), re.findall(r".{40}https?://.{40}", inlined)
    data = make_data(5)
    data["figures"] = {"saturation": svg, "lag": None}
    assert not re.search(r"https?://", render_html(data))


def test_non_finite_numbers_and_arrays_become_json():
    np = pytest.importorskip("numpy")
    data = make_data(5)
    data["logprob"] = np.array([np.nan, -1.0, -np.inf, -2.5, -0.1], dtype=np.float32)
    data["rank"] = np.array([0, 1, 2, 3, 4])
    data["entropy"] = [None, np.float32(1.5), float("nan"), 2.0, 3.0]
    got = embedded(render_html(data))
    assert got["logprob"] == [None, -1.0, None, -2.5, -0.1]
    assert got["rank"] == [0, 1, 2, 3, 4]
    assert got["entropy"] == [None, 1.5, None, 2.0, 3.0]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["logprob"].pop(), "logprob has 9 entries for 10 tokens"),
        (lambda d: d["top"].__setitem__(3, [["a"]]), r"top\[3\]"),
        (lambda d: d["rank"].__setitem__(2, -1), "rank must hold integers"),
        (lambda d: d["tokens"].__setitem__(1, 7), "tokens must be text"),
        (lambda d: d["attribution"]["scores"].__setitem__(2, [0.1, 0.2, 0.3]), r"scores\[2\]"),
        (lambda d: d["units"].__setitem__("values", "AAAA"), "expected T . len"),
        (lambda d: d["units"].__setitem__("values", "not base64!"), "not base64"),
        (lambda d: d["features"].__setitem__("x", [1.0]), "feature 'x'"),
        (lambda d: d.__setitem__("figures", {"lag": "<p>no</p>"}), "not an SVG"),
        (lambda d: d.__setitem__("logprob", "abc"), "logprob must"),
    ],
)
def test_malformed_data_is_refused(change, message):
    data = make_data(10)
    change(data)
    with pytest.raises(InputError, match=message):
        render_html(data)


def test_write_html_is_atomic_and_utf8(tmp_path):
    data = make_data(5)
    data["tokens"][2] = "caf\u00e9 \udcff"  # a lone surrogate becomes U+FFFD
    path = tmp_path / "r.html"
    path.write_text("old")
    write_html(str(path), data)
    assert os.listdir(tmp_path) == ["r.html"]
    assert embedded(path.read_text(encoding="utf-8"))["tokens"][2] == "caf\u00e9 \ufffd"


def test_an_empty_text_renders():
    data = make_data(1)
    for key in ("tokens", "logprob", "rank", "entropy", "top"):
        data[key] = []
    data["attribution"]["scores"] = []
    data["units"]["values"] = ""
    data["features"] = None
    assert "<main>" in render_html(data)


# ---------------------------------------------------------------------------------------
# in the browser

# one run drives everything on a 60-token page; the tests below read its result
INTERACT = r"""
const toks = [...document.querySelectorAll("#text .tok")];
const tip = document.getElementById("tip"), panel = document.getElementById("panel");
const bg = () => toks.map((s) => getComputedStyle(s).backgroundColor);
const fire = (el, type) => el.dispatchEvent(new MouseEvent(type, {bubbles: true}));
const wins = () => toks.flatMap((s, i) => (s.classList.contains("win") ? [i] : []));
const r = {count: toks.length, texts: toks.map((s) => s.textContent), surprisal: bg()};
r.stats = document.getElementById("stats").textContent;
r.legend0 = document.getElementById("legend").innerText;
fire(toks[20], "mouseover");
r.tip = tip.innerText;
r.tipShown = getComputedStyle(tip).display !== "none";
r.tipTop = tip.getBoundingClientRect().top;
r.tokBottom = toks[20].getBoundingClientRect().bottom;
fire(toks[0], "mouseover");
r.tip0 = tip.innerText;
fire(toks[20], "click");
r.win = wins();
r.winBg = r.win.map((i) => getComputedStyle(toks[i]).backgroundColor);
r.otherBg = getComputedStyle(toks[5]).backgroundColor;
r.selected = toks[20].classList.contains("sel");
r.panel = panel.innerText;
r.panelScores = [...panel.querySelectorAll(".scores tr")].map((tr) => tr.lastChild.textContent);
r.legendAttr = document.getElementById("legend").innerText;
fire(toks[15], "mouseover");
r.tipInWindow = tip.innerText;
fire(toks[20], "click");
r.winAfterSecondClick = wins();
r.panelAfter = panel.innerText;
r.afterClear = bg();
fire(toks[30], "click");
r.win30 = wins();
document.dispatchEvent(new KeyboardEvent("keydown", {key: "Escape", bubbles: true}));
r.winAfterEscape = wins();
const unit = document.getElementById("unit");
r.unitOptions = [...unit.options].map((o) => o.textContent);
unit.value = "0";
unit.dispatchEvent(new Event("change"));
r.mode = document.getElementById("mode").value;
r.unit0 = bg();
r.legendUnit = document.getElementById("legend").innerText;
fire(toks[20], "mouseover");
r.tipUnit = tip.innerText;
unit.value = "1";
unit.dispatchEvent(new Event("change"));
r.unit1 = bg();
const mode = document.getElementById("mode");
mode.value = "rank";
mode.dispatchEvent(new Event("change"));
r.rankBg = bg();
r.legendRank = document.getElementById("legend").innerText;
mode.value = "feature:position";
mode.dispatchEvent(new Event("change"));
r.featureBg = bg();
r.lineTops = toks.map((s) => Math.round(s.getBoundingClientRect().top));
r.figures = document.querySelectorAll("figure svg").length;
r.tables = document.querySelectorAll(".tabs table").length;
return r;
"""


@pytest.fixture(scope="module")
def interaction(tmp_path_factory):
    if chromium.CHROMIUM is None:
        pytest.skip(chromium.SKIP_REASON)
    data = make_data(60, seed=3)
    data["figures"]["saturation"] = matplotlib_svg()  # None without matplotlib
    run = chromium.run(page(tmp_path_factory.mktemp("page"), data), INTERACT)
    return data, run


def rgb(css: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", css)[:3])


def test_browser_no_errors_and_one_element_per_token(interaction):
    data, run = interaction
    assert_clean(run)
    r = run.result["value"]
    assert r["count"] == len(data["tokens"])
    expected = [t.replace("\n", "\u21b5\n") for t in data["tokens"]]
    assert r["texts"] == expected
    assert r["stats"].startswith("60 tokens")
    assert "bits" in r["legend0"]
    assert r["figures"] == sum(f is not None for f in data["figures"].values())
    assert r["tables"] == 2


def test_browser_surprisal_colours_follow_the_log_probability(interaction):
    data, run = interaction
    r = run.result["value"]
    assert r["surprisal"][0] == "rgba(0, 0, 0, 0)"  # token 0: no prediction, no colour
    # greener-blue channel falls as surprisal rises: compare the likeliest and least likely
    lp = data["logprob"]
    best = max(range(1, 60), key=lambda t: lp[t])
    worst = min(range(1, 60), key=lambda t: lp[t])
    assert rgb(r["surprisal"][best])[2] > rgb(r["surprisal"][worst])[2]


def test_browser_hover_shows_probability_rank_and_alternatives(interaction):
    data, run = interaction
    r = run.result["value"]
    assert r["tipShown"] and r["tipTop"] >= r["tokBottom"] - 1
    tip = r["tip"]
    assert re.search(rf"rank\s+{data['rank'][20]}\b", tip), tip
    first_alternative = data["top"][20][0][0].replace(" ", "\u2423")
    assert first_alternative in tip and "top alternatives" in tip
    assert "probability" in tip and "entropy" in tip
    assert "no history" in r["tip0"]


def test_browser_click_shows_the_attribution_window(interaction):
    data, run = interaction
    r = run.result["value"]
    scores = data["attribution"]["scores"][20]
    assert r["selected"]
    assert r["win"] == list(range(20 - len(scores), 20))
    # coloured by sign: blue for the largest positive score, red for the most negative
    top = max(range(len(scores)), key=lambda k: scores[k])
    low = min(range(len(scores)), key=lambda k: scores[k])
    assert rgb(r["winBg"][top])[2] > rgb(r["winBg"][top])[0]
    assert rgb(r["winBg"][low])[0] > rgb(r["winBg"][low])[2]
    assert r["otherBg"] == "rgba(0, 0, 0, 0)"  # tokens outside the window lose their colour
    assert len(r["panelScores"]) == len(scores)
    for shown, s in zip(r["panelScores"], scores, strict=True):
        assert float(shown) == pytest.approx(s, rel=6e-3), (shown, s)
        assert shown.startswith("+") == (s > 0)
    assert "input x gradient" in r["panel"] and "attribution" in r["legendAttr"]
    assert "attribution" in r["tipInWindow"]


def test_browser_click_again_and_escape_clear(interaction):
    data, run = interaction
    r = run.result["value"]
    assert r["winAfterSecondClick"] == [] and "Hover a token" in r["panelAfter"]
    assert r["afterClear"] == r["surprisal"]
    assert r["win30"] == list(range(30 - len(data["attribution"]["scores"][30]), 30))
    assert r["winAfterEscape"] == []


def test_browser_unit_picker_recolours_the_text(interaction):
    data, run = interaction
    r = run.result["value"]
    assert r["unitOptions"][0] == "unit 2 (layer 1)" and len(r["unitOptions"]) == 6
    assert r["mode"] == "unit"
    assert r["unit0"] != r["surprisal"] and r["unit1"] != r["unit0"]
    even, odd = rgb(r["unit0"][10]), rgb(r["unit0"][11])  # unit 0: +1 even, -1 odd
    assert even[2] > even[0] and odd[0] > odd[2]
    assert "unit 2" in r["legendUnit"] and "unit 2" in r["tipUnit"]


def test_browser_rank_mode_uses_gltr_buckets(interaction):
    data, run = interaction
    r = run.result["value"]
    colours = {10: (173, 255, 128), 100: (255, 234, 128), 1000: (255, 146, 128)}
    for t in range(1, 60):
        rank = data["rank"][t]
        want = next((c for limit, c in colours.items() if rank <= limit), (229, 176, 255))
        assert rgb(r["rankBg"][t]) == want, (t, rank)
    assert "top 10 (" in r["legendRank"] and "rest (" in r["legendRank"]
    assert r["featureBg"] != r["rankBg"]


def test_browser_newline_tokens_break_the_line(interaction):
    data, run = interaction
    tops = run.result["value"]["lineTops"]
    assert data["tokens"][7] == "\n"
    assert tops[8] > tops[7]


@needs_chromium
def test_browser_hostile_tokens_stay_text(tmp_path):
    tokens = list("ab") + [HOSTILE, "<img src=x onerror=alert(2)>", "&amp;", '"q"', " ", "\n"]
    data = make_data(len(tokens), tokens=tokens, space=False, attribution=False)
    data["title"] = HOSTILE
    data["notes"] = ["<b>bold?</b>"]
    js = r"""
    const toks = [...document.querySelectorAll("#text .tok")];
    toks[3].dispatchEvent(new MouseEvent("click", {bubbles: true}));
    return {texts: toks.map((s) => s.textContent), scripts: document.scripts.length,
            imgs: document.images.length, bold: document.querySelectorAll("b").length,
            title: document.title, panel: document.getElementById("panel").innerText};
    """
    run = chromium.run(page(tmp_path, data), js)
    assert_clean(run)
    r = run.result["value"]
    assert r["texts"][2:6] == tokens[2:6]
    assert r["scripts"] == 4  # the probe, the data, the page's script, the test's
    assert r["imgs"] == 0 and r["bold"] == 0
    assert r["title"] == HOSTILE
    assert "Attribution is not available" in r["panel"]


@needs_chromium
def test_browser_5000_tokens_small_and_fast(tmp_path):
    data = make_data(5000, seed=1, window=20, k=10, n_units=64)
    path = page(tmp_path, data)
    size = os.path.getsize(path)
    run = chromium.run(path, "return document.querySelectorAll('#text .tok').length;")
    assert_clean(run)
    r = run.result
    print(
        f"\n5,000 tokens (top 10, window 20, 64 units): {size / 1e6:.2f} MB; "
        f"script done {r['buildMs']:.0f} ms, laid out {r['layoutMs']:.0f} ms after navigation"
    )
    assert r["value"] == 5000
    assert size < 5e6
    assert r["buildMs"] < 2000 and r["layoutMs"] < 2000


@needs_chromium
def test_browser_screenshot(tmp_path):
    """A realistic page with a token clicked and another hovered. Set
    RNNLM_REPORT_SCREENSHOT=/tmp/report.png to keep a copy to look at."""
    data = make_data(400, seed=7)
    data["figures"]["saturation"] = matplotlib_svg()
    path = page(tmp_path, data)
    png = tmp_path / "report.png"
    js = r"""
    const toks = document.querySelectorAll("#text .tok");
    toks[40].dispatchEvent(new MouseEvent("click", {bubbles: true}));
    toks[25].dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
    """
    run = chromium.screenshot(path, str(png), js)
    assert run.console == []
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    keep = os.environ.get("RNNLM_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(png, keep)
