"""What passes between the model's calls: the recurrent State a caller carries from one
call to the next, and what a forward pass Saves for the backward (and the inspection)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class State(NamedTuple):
    """Recurrent state between calls: h (L, B, H) float32; c (L, B, H) for lstm, else None."""

    h: np.ndarray
    c: np.ndarray | None = None


class Saved:
    """What the forward pass keeps for the backward: per-layer inputs and cell outputs."""

    def __init__(self) -> None:
        self.layer_inputs: list[np.ndarray] = []
        self.xprojs: list[np.ndarray] = []
        self.hs: list[np.ndarray] = []
        self.cs: list[np.ndarray | None] = []
        self.acts: list[np.ndarray | None] = []
