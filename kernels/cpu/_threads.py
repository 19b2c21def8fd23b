"""How the CPU kernels share the threads: the lock that parallel launches take on
Numba's workqueue threading layer, and the batch kernels' one-thread rule."""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import numba

# Numba's fallback threading layer, "workqueue" (used where neither OpenMP nor TBB can be
# loaded), aborts the process when two threads launch parallel kernels at once; on it,
# every parallel launch (the step loops here, the streaming kernel) takes turns. OpenMP
# and TBB need no lock.
_WORKQUEUE_LOCK = threading.Lock()


_NO_LOCK = nullcontext()
_layer_needs_lock: bool | None = None  # known once Numba has chosen its threading layer


def _needs_lock() -> bool:
    global _layer_needs_lock
    if _layer_needs_lock is None:
        try:
            _layer_needs_lock = numba.threading_layer() == "workqueue"
        except ValueError:  # no parallel kernel has run yet: the layer is not chosen
            return True
    return _layer_needs_lock


def workqueue_lock():
    """The lock parallel launches share on the workqueue layer; elsewhere a null context."""
    return _WORKQUEUE_LOCK if _needs_lock() else _NO_LOCK


@contextmanager
def _one_thread():
    """Run the step kernels on the calling thread alone.

    They are prange loops only so that Numba compiles them without aliasing (see
    _cells.py); run on two threads, each step would end in a barrier, and with more busy
    threads than cores a barrier waits for a descheduled thread: two processes running
    these kernels side by side on 2 cores took minutes for what takes a second alone.
    numba.set_num_threads is per calling thread, so other threads are not affected.
    """
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with workqueue_lock():
            yield
    finally:
        numba.set_num_threads(n)
