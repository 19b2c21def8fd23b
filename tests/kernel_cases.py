"""What the kernel tests of both backends share: the cells, their tolerances, random
inputs and the error measure (imported by tests/test_kernels_cpu.py and the
tests/test_cuda_*.py files; pytest puts this folder on sys.path)."""

import numpy as np

from rnnlm_engine import oracle

CELLS = ["rnn", "gru", "lstm"]
GATES = {"rnn": 1, "gru": 3, "lstm": 4}

# Cell tolerances, from float32 rounding (unit roundoff u = 6e-8):
# - one step: a dot product of K <= 128 terms in float32 has error ~ sqrt(K) u |terms|,
#   about 1e-6 relative, and each activation adds a few ulps;
# - through time: the backward pass carries those errors through Jacobians over up to 40
#   steps; with recurrent weights up to 2/sqrt(H) they stay bounded. Over 1,500 draws of
#   the CPU tests' strategies (bench/kernel_error_sweep.py; bench/RESULTS.md) the worst
#   errors were 7.5e-7 (forward) and 9.5e-6 (gradients): the bounds keep a 10x margin.
FWD_TOL = 1e-5
GRAD_TOL = 1e-4
GRAD_FLOOR = 1e-2  # gradients are judged relative to at least 1e-2 max|dhs|


def rel_err(got, want, floor: float = 0.0) -> float:
    """oracle.normwise_error, after checking that the kernel wrote every element."""
    assert np.all(np.isfinite(got)), "kernel left NaN (unwritten element) or inf"
    return oracle.normwise_error(got, want, floor)


def f32(rng, shape, scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def cell_inputs(rng, cell, T, B, H, w_scale, x_scale):
    """The arguments of a cell forward: input projections, recurrent weights scaled by
    1/sqrt(H) (bounded Jacobians), biases and an initial state."""
    G = GATES[cell] * H
    return dict(
        xproj=f32(rng, (T, B, G), x_scale),
        w_hh=(rng.uniform(-1, 1, (G, H)) * w_scale / np.sqrt(H)).astype(np.float32),
        b_hh=f32(rng, G, 0.5),
        h0=rng.uniform(-1, 1, (B, H)).astype(np.float32),
        c0=f32(rng, (B, H), 2.0) if cell == "lstm" else None,
    )
