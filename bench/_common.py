"""Helpers the benchmark scripts share. They run as ``python bench/<script>.py``, which
puts this folder on sys.path, so ``from _common import ...`` finds this module."""

from __future__ import annotations

import numpy as np

from rnnlm_engine.config import ModelConfig


def random_params(config: ModelConfig, rng: np.random.Generator, scale: float) -> dict:
    """Name -> float32 array, PyTorch names and shapes, uniform in +-scale."""
    return {
        name: rng.uniform(-scale, scale, size=shape).astype(np.float32)
        for name, shape in config.parameter_shapes().items()
    }


def torch_lstm_lm(torch, sd: dict, device: str = "cpu"):
    """(Embedding, LSTM, Linear): word_language_model's untied LSTM model as PyTorch
    modules on `device`, loaded with the state dict sd (PyTorch names)."""
    nn = torch.nn
    V, E = sd["encoder.weight"].shape
    H = sd["rnn.weight_hh_l0"].shape[1]
    L = sum(name.startswith("rnn.weight_hh_l") for name in sd)
    emb, rnn, dec = nn.Embedding(V, E), nn.LSTM(E, H, L), nn.Linear(H, V)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(sd["encoder.weight"]))
        for name, p in rnn.named_parameters():
            p.copy_(torch.from_numpy(sd[f"rnn.{name}"]))
        dec.weight.copy_(torch.from_numpy(sd["decoder.weight"]))
        dec.bias.copy_(torch.from_numpy(sd["decoder.bias"]))
    return emb.to(device), rnn.to(device), dec.to(device)


def restore_row_stack() -> bool:
    """Make np.row_stack exist again, if this numpy lacks it, and say so; True if it did.

    numba-cuda 0.30.4 (as on the lent GPU machines' image in 2026-11, with numpy 2.5.2)
    registers an implementation of np.row_stack, which numpy 2.5 removed, so its first
    kernel compilation fails with "module 'numpy' has no attribute 'row_stack'". The GPU
    scripts put it back as np.vstack (what it always was) for their own process, and say
    so; the library itself does not patch numpy.
    """
    if hasattr(np, "row_stack"):
        return False
    np.row_stack = np.vstack  # noqa: NPY201 (putting it back is the point)
    print(f"note: numpy {np.__version__} has no np.row_stack, which numba-cuda needs; this "
          "run puts it back as np.vstack (bench/_common.py)", flush=True)  # fmt: skip
    return True
