"""A pytest plugin (``-p numpy_row_stack``) for bench/gpu_check.py's test run: the shim
of ``_common.restore_row_stack`` in the test process, before any test imports numba."""

import numpy as np

if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack  # noqa: NPY201 (putting it back is the point)
