"""Hypothesis profiles, chosen with RNNLM_HYPOTHESIS_PROFILE (dev | ci | thorough).

deadline=None everywhere: the first example of a test pays Numba's JIT compilation.
"""

import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=15, **_common)
settings.register_profile("ci", max_examples=100, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=400, **_common)
settings.load_profile(os.environ.get("RNNLM_HYPOTHESIS_PROFILE", "dev"))
