"""Sampling a token from log-probabilities: temperature, top-k, top-p (nucleus), the
plain inverse-CDF draw that a two-stage (cluster, then word) draw uses, and the
device-side draw of a backend that samples where its arrays are (cuda). Streams and
generate (stream.py) call these; every draw takes an explicit numpy Generator, so a seed
reproduces it."""

from __future__ import annotations

import numpy as np

from .errors import InputError


def generator(seed, default):
    if seed is None:
        return default
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def check_sampling(temperature, top_k, top_p) -> None:
    if not temperature > 0:
        raise InputError(f"temperature must be positive; got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) < 1):
        raise InputError(f"top_k must be a positive integer; got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1]; got {top_p!r}")


def device_sampler(k):
    """For a backend that samples where its arrays are (cuda), a function drawing one id
    from a (V,) device array with one uniform from rng, copying back only the id; None for
    the CPU, whose draws are sample_id's."""
    if not hasattr(k, "sample"):
        return None

    def draw(logprobs, temperature, top_k, top_p, rng) -> int:
        if isinstance(logprobs, np.ndarray):  # a prompt fed through feed() left it here
            logprobs = k.to_device(logprobs)
        out = k.empty((1,), np.int64)
        u = k.to_device(np.array([rng.random()]))
        V = logprobs.shape[0]
        k_limit = min(int(top_k), V) if top_k is not None else 0  # 0: no limit
        k.sample(logprobs.reshape(1, V), temperature, k_limit, top_p or 1.0, u, out)
        return int(k.to_host(out)[0])

    return draw


def sample_id(logprobs: np.ndarray, temperature, top_k, top_p, rng) -> int:
    """One draw from softmax(logprobs / temperature), restricted by top_k and top_p."""
    check_sampling(temperature, top_k, top_p)
    return draw(logprobs, temperature, top_k, top_p, rng)


def inverse_cdf(logprobs: np.ndarray, rng) -> int:
    """One draw from softmax(logprobs) by the inverse of its cumulative distribution."""
    z = logprobs.astype(np.float64)
    c = np.cumsum(np.exp(z - z.max()))
    return min(int(np.searchsorted(c, rng.random() * c[-1], side="right")), len(c) - 1)


def draw(logprobs: np.ndarray, temperature, top_k, top_p, rng) -> int:
    """sample_id without the checks of its arguments (generate checks them once)."""
    z = logprobs.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    if top_k is not None:
        order = order[: int(top_k)]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if top_p is not None:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])
