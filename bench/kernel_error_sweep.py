"""Worst float32-vs-float64 errors of the CPU cell kernels over many random draws.

The tolerances in tests/test_kernels_cpu.py are set from this sweep (with a 10x margin):
    python bench/kernel_error_sweep.py --draws 1500
It draws from the same strategies as the tests (shapes, weight and input scales) and
prints the worst normwise relative error per cell for the forward and the gradients.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_kernels_cpu as t  # noqa: E402  (the tests' own input generators)

from rnnlm_engine import oracle  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1500)
    args = ap.parse_args()
    pick = np.random.default_rng(123)
    worst: dict[tuple[str, str], float] = {}
    for draw in range(args.draws):
        cell = t.CELLS[draw % 3]
        T, B, H = pick.integers(1, 41), pick.integers(1, 17), pick.integers(1, 65)
        w_scale, x_scale = pick.choice([0.5, 1.0, 2.0]), pick.choice([0.3, 1.0, 8.0])
        rng = np.random.default_rng(draw)
        inp = t.cell_inputs(rng, cell, T, B, H, w_scale, x_scale)
        dhs = t.f32(rng, (T, B, H))
        dcT = t.f32(rng, (B, H)) if cell == "lstm" else None
        hs, _, grads = t.run_cell_kernels(cell, inp, dhs, dcT)
        i64 = {k: (None if v is None else v.astype(np.float64)) for k, v in inp.items()}
        want_hs, _, _, cache = oracle.CELL_FORWARD[cell](
            i64["xproj"], i64["w_hh"], i64["b_hh"], i64["h0"], i64["c0"]
        )
        want = oracle.CELL_BACKWARD[cell](
            cache,
            dhs.astype(np.float64),
            None if dcT is None else dcT.astype(np.float64),
            i64["w_hh"],
        )
        floor = t.GRAD_FLOOR * float(np.max(np.abs(dhs)))
        grad_err = max(
            t.rel_err(g, w, floor) for g, w in zip(grads, want, strict=True) if w is not None
        )
        for key, err in (((cell, "forward"), t.rel_err(hs, want_hs)), ((cell, "grads"), grad_err)):
            worst[key] = max(worst.get(key, 0.0), err)
    print(f"worst normwise relative error over {args.draws} draws")
    print(f"{'cell':<6}{'forward':>12}{'gradients':>12}")
    for cell in t.CELLS:
        print(f"{cell:<6}{worst[(cell, 'forward')]:>12.2e}{worst[(cell, 'grads')]:>12.2e}")
    print(f"test bounds: forward {t.FWD_TOL:.0e}, gradients {t.GRAD_TOL:.0e}")


if __name__ == "__main__":
    main()
