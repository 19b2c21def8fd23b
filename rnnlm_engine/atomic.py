"""Atomic file writes: a temporary file in the target's folder, fsynced, renamed over the
target, the folder fsynced. A crash or Ctrl-C at any moment leaves the previous file (or
none), never a partial one. Model files, checkpoints and a sweep's tables use it."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable

from .errors import ModelFileError


def _write_all(f, pieces: Iterable) -> None:
    for piece in pieces:
        f.write(piece)


def write_atomically(target: str, pieces: Iterable) -> None:
    """Write the byte pieces to target through a temporary file in its folder, fsynced and
    renamed over it: a crash leaves any previous file intact, never a partial one.
    Raises ModelFileError when the file cannot be written."""
    directory = os.path.dirname(os.path.abspath(target))
    base = os.path.basename(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    tmp = None
    try:
        for _ in range(100):
            candidate = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(candidate, flags, 0o666)  # the umask applies, as for open()
            except FileExistsError:
                continue
            tmp = candidate
            break
        else:
            raise FileExistsError(f"no free temporary file name in {directory}")
        with os.fdopen(fd, "wb") as f:
            if os.chmod in os.supports_fd:  # keep an existing file's permissions
                with contextlib.suppress(OSError):
                    os.chmod(f.fileno(), stat.S_IMODE(os.stat(target).st_mode))
            _write_all(f, pieces)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        _remove(tmp)
        raise ModelFileError(
            f"cannot save {target}: {e}; any previous file at that path is unchanged"
        ) from e
    except BaseException:  # Ctrl-C or a bug: leave no temporary file, keep the old file
        _remove(tmp)
        raise
    _fsync_directory(directory)


def _remove(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable, where the platform allows fsync on a folder."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
