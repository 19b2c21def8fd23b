"""The ``rnnlm`` command line: train, sweep, score, generate, info, quantize,
import-torch, export-torch, diagnose, explain, demo (a module per kind of command; the
arguments of all of them in parser.py).

Errors are one line on stderr (the traceback only with --debug): exit 2 for bad usage or
bad input (a missing file, an invalid setting, a defective model file), 1 for anything
else, 130 after Ctrl-C.
"""

from __future__ import annotations

import sys

from ..errors import RnnlmError
from .common import EXIT_USAGE, one_line
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives an optional positional its default when an option comes before it
    # (rnnlm score MODEL --json FILE): take FILE from what was left over
    if getattr(args, "command", None) == "score" and extra:
        files = [e for e in extra if not e.startswith("-") or e == "-"]
        if files == extra:
            args.files, extra = args.files + files, []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("rnnlm: interrupted", file=sys.stderr)
        return 130
    except (RnnlmError, OSError) as e:
        if args.debug:
            raise
        print(f"rnnlm {args.command}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a bug: say so briefly
        if args.debug:
            raise
        print(
            f"rnnlm {args.command}: internal error: {type(e).__name__}: {one_line(e)} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
