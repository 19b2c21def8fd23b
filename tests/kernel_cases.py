"""What the kernel tests of both backends share: the cells, their tolerances, random
inputs, the float64 reference run and the error measures (imported by
tests/test_kernels_cpu.py and the tests/test_cuda_*.py files; pytest puts this folder on
sys.path)."""

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
# States are judged relative to at least FWD_FLOOR: the CPU's tanh has an absolute error
# near 0 of a float32 rounding of 1 (6e-8, see kernels/cpu/_math.py _tanh), so a window
# whose every state is near 0 (T = B = H = 1, a closed output gate: |h| = 2e-7) has no
# relative accuracy to judge; 1e-5 of 0.02 is 2e-7, 3x that absolute error.
FWD_FLOOR = 0.02


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


def cell_case(rng, cell, T, B, H, w_scale, x_scale):
    """cell_inputs, then the incoming gradients: dhs (T, B, H) and, for an lstm, dcT."""
    inp = cell_inputs(rng, cell, T, B, H, w_scale, x_scale)
    dhs = f32(rng, (T, B, H))
    dcT = f32(rng, (B, H)) if cell == "lstm" else None
    return inp, dhs, dcT


def oracle_forward(cell, inp):
    """The float64 oracle's forward on float32 inputs: (hs, cs or None, cache)."""
    i64 = {k: (None if v is None else v.astype(np.float64)) for k, v in inp.items()}
    with np.errstate(over="ignore"):  # saturated gates: exp(1e4) is inf, the gate exact
        hs, _, _, cache = oracle.CELL_FORWARD[cell](
            i64["xproj"], i64["w_hh"], i64["b_hh"], i64["h0"], i64["c0"]
        )
    cs = np.stack([step[6] for step in cache["steps"]]) if cell == "lstm" else None
    return hs, cs, cache


def oracle_cell(cell, inp, dhs, dcT):
    """The float64 oracle's forward and backward: (hs, cs or None, gradients)."""
    hs, cs, cache = oracle_forward(cell, inp)
    grads = oracle.CELL_BACKWARD[cell](
        cache,
        dhs.astype(np.float64),
        None if dcT is None else dcT.astype(np.float64),
        inp["w_hh"].astype(np.float64),
    )
    return hs, cs, grads


def check_grads(got, want, dhs):
    """Each cell gradient (dxproj, dw_hh, db_hh, dh0, dc0) within GRAD_TOL of the oracle's.

    Near saturation, 1 - tanh(x)^2 is computed from an h that carries a few ulps of
    absolute error (~2e-7), so the gradient through it has an absolute error of ~3e-7 |dh|
    (seen: T=B=H=1, x_scale 8: 1.5151e-5 against 1.5240e-5), and through a fully
    saturated gate it is 0 against ~1e-15. Gradients are judged relative to at least
    GRAD_FLOOR of the incoming gradient: an absolute error of 1e-6 |dh| is always accepted.
    """
    floor = GRAD_FLOOR * float(np.max(np.abs(dhs)))
    for name, g, w in zip(("dxproj", "dw_hh", "db_hh", "dh0", "dc0"), got, want, strict=True):
        if w is None:
            assert g is None, name
            continue
        assert rel_err(g, w, floor) < GRAD_TOL, name
