"""Headless Chromium for the page tests, with no Python packages beyond the standard library.

``run(page, js)`` copies the page with two scripts added: a probe at the top of <head>
(records uncaught errors, console.error/warn, CSP violations and alert/confirm/prompt calls
before the page's own script runs) and, at the end of <body>, after the page's script, a
test body ``js`` that dispatches events and returns a JSON-able value. The wrapper writes
{"value", "exception", "errors", "alerts", "buildMs", "layoutMs"} into <pre id="test-result">;
``chromium --headless --dump-dom`` prints the DOM, from which the result is parsed. Chromium's
own console log (``--enable-logging=stderr``) is parsed too, so an error that escapes the probe
is still seen. ``screenshot(page, png, js)`` runs the same page and saves a PNG.

layoutMs: performance.now() (milliseconds since navigation start) after the page's script
and a forced layout, before the test body runs.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
    None,
)
SKIP_REASON = (
    "no chromium on PATH: the page tests need a headless browser "
    "(apt-get install chromium; .ci/run installs it)"
)

_PROBE = """<script>
window.__test = {errors: [], alerts: []};
window.addEventListener("error", function (e) {
  __test.errors.push("uncaught: " + e.message + " (line " + e.lineno + ")");
});
window.addEventListener("unhandledrejection", function (e) {
  __test.errors.push("unhandled rejection: " + e.reason);
});
document.addEventListener("securitypolicyviolation", function (e) {
  __test.errors.push("CSP: " + e.violatedDirective + " " + e.blockedURI);
});
["error", "warn"].forEach(function (level) {
  var original = console[level];
  console[level] = function () {
    __test.errors.push("console." + level + ": " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
});
window.alert = window.confirm = window.prompt = function (m) { __test.alerts.push(String(m)); };
</script>
"""

_WRAPPER = """<script>
(function () {
  document.body.offsetHeight;  // force a layout: the page is ready to look at
  var out = {buildMs: window.reportBuildMs, layoutMs: performance.now()};
  try {
    out.value = (function () {
%s
    })();
  } catch (e) {
    out.exception = String((e && e.stack) || e);
  }
  out.errors = __test.errors;
  out.alerts = __test.alerts;
  var pre = document.createElement("pre");
  pre.id = "test-result";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"""

# [pid:tid:date:INFO:CONSOLE:12] "message", source: file:///... (12)   (or CONSOLE(12)])
_CONSOLE = re.compile(r':CONSOLE[:(]?\d*\)?\] "(.*)", source: (.*?) \((\d+)\)\s*$')


@dataclass
class PageRun:
    result: dict | None  # what the wrapper wrote (None for a screenshot or when it did not)
    dom: str
    console: list[str] = field(default_factory=list)  # console messages Chromium logged
    stderr: str = ""


def instrument(page: str, js: str | None, *, result: bool = True) -> str:
    """The page's HTML with the probe after <head> and, if js, the test body before the
    last </body> (after the page's own script)."""
    head = page.index("<head>") + len("<head>")
    page = page[:head] + "\n" + _PROBE + page[head:]
    if js is not None:
        body = page.rindex("</body>")
        script = _WRAPPER % js if result else f"<script>\n{js}\n</script>\n"
        page = page[:body] + script + page[body:]
    return page


def _chromium(url: str, args: list[str], profile: str, timeout: float):
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # root (CI containers) needs it
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def _console(stderr: str) -> list[str]:
    found = []
    for line in stderr.splitlines():
        m = _CONSOLE.search(line)
        if m:
            found.append(f"{m.group(1)} ({m.group(2)}:{m.group(3)})")
    return found


def run(page_path: str, js: str | None = None, *, timeout: float = 120) -> PageRun:
    """Open an instrumented copy of the page in headless Chromium, run js after the page's
    script, and return what it found. Raises RuntimeError when Chromium fails."""
    with tempfile.TemporaryDirectory(prefix="rnnlm-chromium-") as tmp:
        with open(page_path, encoding="utf-8") as f:
            page = f.read()
        copy = os.path.join(tmp, "page.html")
        with open(copy, "w", encoding="utf-8") as f:
            f.write(instrument(page, js))
        proc = _chromium("file://" + copy, ["--dump-dom"], os.path.join(tmp, "profile"), timeout)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-3000:]}")
    m = re.search(r'<pre id="test-result">(.*?)</pre>', proc.stdout, re.S)
    result = json.loads(html.unescape(m.group(1))) if m else None
    return PageRun(result, proc.stdout, _console(proc.stderr), proc.stderr)


def screenshot(
    page_path: str,
    png_path: str,
    js: str | None = None,
    *,
    size: tuple[int, int] = (1200, 900),
    timeout: float = 120,
) -> PageRun:
    """Save a PNG of the page (size: the window, in CSS pixels) after running js in it."""
    with tempfile.TemporaryDirectory(prefix="rnnlm-chromium-") as tmp:
        with open(page_path, encoding="utf-8") as f:
            page = f.read()
        copy = os.path.join(tmp, "page.html")
        with open(copy, "w", encoding="utf-8") as f:
            f.write(instrument(page, js, result=False))
        args = [
            f"--screenshot={os.path.abspath(png_path)}",
            f"--window-size={size[0]},{size[1]}",
            "--hide-scrollbars",
        ]
        proc = _chromium("file://" + copy, args, os.path.join(tmp, "profile"), timeout)
    if proc.returncode != 0 or not os.path.exists(png_path):
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-3000:]}")
    return PageRun(None, "", _console(proc.stderr), proc.stderr)
