"""Numba's disk cache for the CPU kernels, keyed on all of this folder's files together.

Numba keys a function's cached machine code on its own source file only: a helper that a
kernel of another file inlines (``_exp``, ``_log_softmax_row``) could change and leave
that kernel's stale code in the cache. So the kernels live in rooms by concept (cells,
element-wise and softmax, streaming, the adaptive softmax: the same rooms as the CUDA
backend's), and for the functions of this folder the stamp that Numba compares is a hash
of every ``.py`` file here: a change to any of them recompiles them all, as if they were
one file.

The hook is Numba's list of cache locators (``CacheImpl._locator_classes``): each
locator here is Numba's own (a ``NUMBA_CACHE_DIR``, the source tree's ``__pycache__``,
or the user-wide directory when the tree is read-only, as for a wheel installed by
root), in Numba's order, with the stamp replaced. It must be installed before the first
kernel module is imported: kernels/cpu/__init__.py does that.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from numba.core import caching

_FOLDER = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=8)
def _stamp(stats: tuple) -> bytes:
    """sha256 over the names and contents of the folder's files (memoized on their
    (name, mtime, size), so that a file changed while a process runs is hashed again)."""
    h = hashlib.sha256()
    for name, _, _ in stats:
        h.update(name.encode())
        h.update((_FOLDER / name).read_bytes())
    return h.digest()


def folder_stamp() -> bytes:
    stats = []
    for path in sorted(_FOLDER.glob("*.py")):
        st = path.stat()
        stats.append((path.name, st.st_mtime_ns, st.st_size))
    return _stamp(tuple(stats))


class _FolderStamp:
    """A locator mixin: for functions of this folder only, the stamp is the folder's."""

    @classmethod
    def from_function(cls, py_func, py_file):
        if Path(py_file).resolve().parent != _FOLDER:
            return None
        return super().from_function(py_func, py_file)

    def get_source_stamp(self):
        return folder_stamp()


def _stamped(base):
    return type(f"Folder{base.__name__}", (_FolderStamp, base), {})


def install() -> None:
    """Put the stamped locators first in Numba's list (once)."""
    classes = caching.CacheImpl._locator_classes
    if any(issubclass(c, _FolderStamp) for c in classes):
        return
    bases = (
        caching.UserProvidedCacheLocator,
        caching.InTreeCacheLocator,
        caching.UserWideCacheLocator,
    )
    classes[0:0] = [_stamped(b) for b in bases]
