"""Hypothesis profiles, chosen with RNNLM_HYPOTHESIS_PROFILE (dev | ci | thorough), and
the CUDA simulator for the CUDA backend's tests.

deadline=None everywhere: the first example of a test pays Numba's JIT compilation.

CUDA tests run in numba's simulator (every GPU thread a Python thread) unless
RNNLM_TEST_CUDA_DEVICE=1, which bench/gpu_check.py sets on a GPU machine. numba reads
NUMBA_ENABLE_CUDASIM when it is first imported, so it is set here, before any test module
imports numba; an explicit setting in the environment wins.
"""

import os
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

if os.environ.get("RNNLM_TEST_CUDA_DEVICE") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=15, **_common)
settings.register_profile("ci", max_examples=100, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=400, **_common)
settings.load_profile(os.environ.get("RNNLM_HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="module")
def cuda_simulator_fixes():
    """Two adjustments to numba's CUDA simulator for a test module; nothing on a GPU.

    - The simulated threads of a block meet at every syncthreads(), and the simulator's
      block manager polls them holding the GIL: with CPython's default 5 ms switch
      interval a launch spends most of its time waiting (a 16-thread sampling launch
      took 1.4 s, against 0.3 s at 50 us; the cell tests 10x longer).
    - numba 0.68's simulator creates a block's shared array on the first call from each
      source line with an unlocked get-then-set, so two threads can each get an array of
      their own and a reduction silently loses terms (seen as a flaky sum_of_squares and
      as garbage gradients, made likely by the short interval). The method is replaced by
      the same lookup under a lock (same key: the calling file and line).
    """
    from numba import config

    if not config.ENABLE_CUDASIM:
        yield
        return
    from numba import types as numba_types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype):
        if shape == 0:  # dynamic shared memory: one buffer made before the threads start
            return original(self, shape, dtype)
        if isinstance(dtype, numba_types.Type):
            dtype = numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    interval = sys.getswitchinterval()
    kernelapi.FakeCUDAShared.array = array
    sys.setswitchinterval(5e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        kernelapi.FakeCUDAShared.array = original


@pytest.fixture
def dask_client():
    """A client of a fresh local cluster of 2 worker processes (a test may kill one)."""
    distributed = pytest.importorskip("dask.distributed", reason="needs the dask extra")
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        yield client
