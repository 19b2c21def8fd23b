"""Optimizers and gradient clipping for training, on the model's backend kernels.

Each optimizer updates a dict of parameter arrays in place from a dict of gradients with
the same names, and exposes its state as (tensors, values) for checkpoints, so that a
resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class RowSparse:
    """A gradient that is zero outside some rows of its (V, E) parameter: an embedding's,
    which a window touches at its own tokens only (700 of WikiText-2's 33,278 rows for
    batch 20 x BPTT 35). rows (n,) int64, unique, and values (n, E) on the backend.

    Clipping and SGD on it are exact, and skip the zero rows: a dense one costs five passes
    over a (V, E) array per window (zero, scatter, norm, scale, update; 26 MB for
    WikiText-2's 2 x 200 model). Optimizers whose state moves for zero gradients too (Adam)
    take the dense one (``takes_row_sparse`` is False)."""

    rows: np.ndarray
    values: np.ndarray


def _flat(a) -> np.ndarray:
    # a view: parameters and gradients are C-contiguous; a RowSparse's zero rows add
    # nothing to a norm and stay zero when scaled
    return (a.values if isinstance(a, RowSparse) else a).reshape(-1)


def grad_norm(k: ModuleType, grads: dict[str, np.ndarray]) -> float:
    """The global L2 norm of all the gradients together, summed in float64 by the backend's
    sum_of_squares kernel (device arrays stay on the device; one float comes back per
    gradient). inf or NaN when a gradient is not finite."""
    return float(np.sqrt(sum(k.sum_of_squares(_flat(g)) for g in grads.values())))


def clips(norm: float, max_norm: float) -> bool:
    """Whether clip_grad_norm(..., max_norm) scales gradients whose global norm is `norm`:
    torch's test, factor max_norm / (norm + 1e-6) below 1. Never when max_norm is 0 (the
    training loop's "no clipping")."""
    return max_norm > 0 and max_norm / (norm + 1e-6) < 1.0


def clip_grad_norm(k: ModuleType, grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale every gradient in place so that their global L2 norm is at most max_norm, as
    torch.nn.utils.clip_grad_norm_ does (factor max_norm / (norm + 1e-6) when below 1).
    Returns the norm before clipping (inf or NaN when a gradient is not finite)."""
    norm = grad_norm(k, grads)
    factor = max_norm / (norm + 1e-6)
    if factor < 1.0:
        for g in grads.values():
            k.scale_inplace(_flat(g), factor)
    return norm


class SGD:
    """Plain stochastic gradient descent: p -= lr * g."""

    name = "sgd"
    takes_row_sparse = True

    def __init__(self, k: ModuleType, lr: float):
        if not lr > 0:
            raise ConfigError(f"learning rate must be positive; got {lr!r}")
        self.k, self.lr = k, float(lr)

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        for name, p in params.items():
            g = grads[name]
            if isinstance(g, RowSparse):
                self.k.sgd_update_rows(p, g.rows, g.values, self.lr)
            else:
                self.k.sgd_update(_flat(p), _flat(g), self.lr)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {}, {"name": self.name, "lr": self.lr}

    def load_state(self, tensors: dict[str, np.ndarray], values: dict) -> None:
        self.lr = float(values["lr"])


class Adam:
    """torch.optim.Adam (no weight decay, no amsgrad): the same update, float32 moments."""

    name = "adam"
    takes_row_sparse = False  # its moments decay on rows with a zero gradient too

    def __init__(
        self,
        k: ModuleType,
        lr: float,
        shapes: dict[str, tuple],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        if not lr > 0:
            raise ConfigError(f"learning rate must be positive; got {lr!r}")
        self.k, self.lr, self.betas, self.eps = k, float(lr), betas, eps
        self.steps = 0
        self.m = {name: k.zeros(shape, np.float32) for name, shape in shapes.items()}
        self.v = {name: k.zeros(shape, np.float32) for name, shape in shapes.items()}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.steps += 1
        b1, b2 = self.betas
        for name, p in params.items():
            self.k.adam_update(
                _flat(p),
                _flat(grads[name]),
                _flat(self.m[name]),
                _flat(self.v[name]),
                self.lr,
                b1,
                b2,
                self.eps,
                self.steps,
            )

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        tensors = {f"adam.m.{n}": a for n, a in self.m.items()}
        tensors |= {f"adam.v.{n}": a for n, a in self.v.items()}
        values = {"name": self.name, "lr": self.lr, "steps": self.steps}
        values |= {"beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps}
        return tensors, values

    def load_state(self, tensors: dict[str, np.ndarray], values: dict) -> None:
        self.lr, self.steps = float(values["lr"]), int(values["steps"])
        k = self.k

        def moments(key):  # a checkpoint's host array, or a rollback's backend array
            a = tensors[key]
            if tuple(a.shape) != tuple(self.m[key.split(".", 2)[2]].shape):
                # (numpy would broadcast a wrong shape silently): the caller names the file
                raise ValueError(f"{key} has shape {tuple(a.shape)}")
            return a if k.is_array(a) else k.to_device(np.asarray(a))

        for name in self.m:
            k.copy(self.m[name], moments(f"adam.m.{name}"))
            k.copy(self.v[name], moments(f"adam.v.{name}"))


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(name: str, k: ModuleType, lr: float, shapes: dict[str, tuple]):
    if name == "sgd":
        return SGD(k, lr)
    if name == "adam":
        return Adam(k, lr, shapes)
    raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
