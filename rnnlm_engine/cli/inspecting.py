"""rnnlm diagnose and rnnlm explain: what a model sees in a text."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError


def cmd_diagnose(args) -> int:
    from ..explain import diagnose, format_diagnosis, read_ids
    from ..model import load

    model = load(args.model, backend=args.backend)
    ids, note = read_ids(model, args.file, args.max_tokens)
    if note and not args.quiet:
        print(f"rnnlm diagnose: {note}", file=sys.stderr)
    d = diagnose(model, ids, args.max_lag, args.positions)
    if args.json:
        print(json.dumps(d))
    else:
        for layer in d.get("saturation", {}).values():
            for s in layer.values():
                s.pop("per_unit")
        print(format_diagnosis(d))
    return 0


def cmd_explain(args) -> int:
    from ..explain import read_ids, report_data
    from ..model import load
    from ..report import write_html

    if args.window < 1 or args.max_units < 1:
        raise InputError("--window and --max-units must be at least 1")
    model = load(args.model, backend=args.backend)
    ids, note = read_ids(model, args.file, args.max_tokens)
    title = f"{Path(args.model).name} on {Path(args.file).name}"
    say = None if args.quiet else (lambda line: print(f"rnnlm explain: {line}", file=sys.stderr))
    data = report_data(model, ids, title, window=args.window, max_units=args.max_units, say=say)
    if note:
        data["notes"].insert(0, f"this page shows {note}")
    write_html(args.html, data)
    if not args.quiet:
        for n in data["notes"]:
            if "matplotlib" in n:
                print(f"rnnlm explain: {n}", file=sys.stderr)
        size = Path(args.html).stat().st_size
        print(f"wrote {args.html} ({len(ids):,} tokens, {size / 1e6:.1f} MB)", file=sys.stderr)
    return 0
