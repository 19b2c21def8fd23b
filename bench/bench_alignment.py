"""Why the CPU backend aligns its float32 arrays: one streaming step with the weights and
the state at 0, 16 and 32 bytes past a cache line, side by side.

    python bench/bench_alignment.py     # about a minute on the 2-core build machine

The same kernel (``_stream.stream_step``) runs on the same values, copied to three offsets;
the three copies take turns in blocks of 40 calls, so that a slow phase of the machine
hits them alike. numpy's own allocations are 16 bytes past a line or worse; the CPU
backend's ``to_device`` and ``stack`` align to 64 bytes, and the kernel copies the state
into its own (Numba: 32-byte aligned) buffers.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from _common import random_params

from rnnlm_engine import Model, ModelConfig, streaming
from rnnlm_engine.kernels.cpu import _stream

# (name, V, H, blocks of 40 calls per offset)
MODELS = [
    ("char 2x256", 65, 256, 40),
    ("word 2x200", 10000, 200, 40),
    ("word 2x650", 10000, 650, 8),
]
OFFSETS = (0, 16, 32)


def at_offset(a: np.ndarray, offset: int, keep: list) -> np.ndarray:
    """A copy of a whose data starts `offset` bytes past a 64-byte boundary."""
    raw = np.empty(a.size + 32, a.dtype)
    keep.append(raw)
    start = (-raw.ctypes.data % 64 + offset) // a.itemsize
    out = raw[start : start + a.size].reshape(a.shape)
    out[...] = a
    return out


def step_args(model: Model, offset: int, keep: list) -> tuple:
    c = model.config
    L, H, G, V = c.num_layers, c.hidden_size, c.gate_rows, c.vocab_size
    w = {k: at_offset(v, offset, keep) for k, v in streaming.streaming_weights(model).items()}
    rng = np.random.default_rng(0)

    def new(shape, values=None):
        return at_offset(np.zeros(shape, np.float32) if values is None else values, offset, keep)

    state = rng.uniform(-1, 1, (L, 1, H)).astype(np.float32)
    return (
        _stream.STREAM_CELLS["lstm"], np.zeros(L, np.uint8), np.array([[3]], np.int64),
        *(w[name] for name in streaming._ORDER), new(state.shape, state),
        new(state.shape, state), new((L, 1, H)), new((L, 1, H)), new((1, G)), new((1, G)),
        new((1, V)), new((1, V)),
    )  # fmt: skip


def main() -> int:
    print("one streaming step (us, p50), weights and state at each offset past a cache line")
    print(f"{'model':<12}" + "".join(f"{f'+{o} B':>10}" for o in OFFSETS))
    for name, V, H, blocks in MODELS:
        config = ModelConfig("lstm", V, H, H, 2)
        model = Model.from_state_dict(random_params(config, np.random.default_rng(1), 0.1))
        keep: list = []
        args = {o: step_args(model, o, keep) for o in OFFSETS}
        first = {}
        for o, a in args.items():
            _stream.stream_step(*a)
            first[o] = a[-1].copy()
        assert all(np.array_equal(first[0], v) for v in first.values())  # same bits
        times = {o: [] for o in OFFSETS}
        for _ in range(blocks):
            for o, a in args.items():
                for _ in range(10):
                    _stream.stream_step(*a)
                for _ in range(40):
                    t0 = time.perf_counter()
                    _stream.stream_step(*a)
                    times[o].append(time.perf_counter() - t0)
        print(f"{name:<12}" + "".join(f"{np.median(times[o]) * 1e6:>10.1f}" for o in OFFSETS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
