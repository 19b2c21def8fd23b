"""The fused log-softmax + cross-entropy entry points that need a word of Python first."""

from __future__ import annotations

import numba

from . import _jit


def xent_forward_backward(logits, bias, targets, scale, nll, dbias):
    """nll (N,) = -log softmax(logits + bias)[n, targets[n]]; logits (N, V) is overwritten
    with scale * (softmax - onehot(targets)); dbias (V,) receives its column sums."""
    _jit.xent_forward_backward(logits, bias, targets, scale, nll, dbias, numba.get_num_threads())
