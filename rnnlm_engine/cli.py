"""The ``rnnlm`` command line (the commands arrive with the training and streaming issues)."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rnnlm", description="rnnlm-engine: recurrent language models on Numba kernels"
    )
    parser.add_argument("--version", action="version", version=f"rnnlm-engine {__version__}")
    parser.parse_args(argv)
    print(f"rnnlm-engine {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
