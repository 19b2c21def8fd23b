"""What every rnnlm command shares: one-line errors and their exit code, the
parser class that prints them, a Dask client, the text that names an output layer."""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: 'rnnlm train: error: ... (see rnnlm train --help)'."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.strerror or e}: {e.filename}"
    return " ".join(str(e).split())


def dask_client(address: str):
    """A dask.distributed Client of the scheduler at address; one line if it cannot be."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise InputError(
            "--scheduler needs dask.distributed: pip install 'rnnlm-engine[dask]'"
        ) from None
    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as e:
        raise InputError(f"cannot reach the Dask scheduler at {address}: {one_line(e)}") from None


def adaptive_text(cutoffs, div_value) -> str:
    if not cutoffs:
        return ""
    return f", adaptive softmax (cutoffs {', '.join(map(str, cutoffs))}; div {div_value:g})"
