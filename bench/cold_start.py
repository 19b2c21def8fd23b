"""Time from a new process to the first results, with a cold and with a warm JIT cache.

    python bench/cold_start.py

Runs the same small script twice in fresh processes that share a new, empty
NUMBA_CACHE_DIR: the first run compiles every kernel it uses (cold), the second loads them
from the cache (warm). Prints the import time; the time from before `import rnnlm_engine`
to the first streamed token (load a model file of an LSTM 2x200 with V=10000, make a
Stream, feed one token); then the first forward and the first loss_and_grad.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

SCRIPT = """
import sys, time
t0 = time.perf_counter()
import numpy as np
import rnnlm_engine as rl
t1 = time.perf_counter()
rl.load(sys.argv[1]).stream().feed([0])
t_token = time.perf_counter()
rng = np.random.default_rng(0)
cfg = rl.ModelConfig("lstm", 50, 16, 16, 2)
sd = {k: rng.uniform(-0.1, 0.1, s).astype(np.float32) for k, s in cfg.parameter_shapes().items()}
m = rl.Model.from_state_dict(sd)
ids = rng.integers(0, 50, (5, 2))
m.forward(ids)
t2 = time.perf_counter()
m.loss_and_grad(ids, ids)
t3 = time.perf_counter()
print(f"{t1 - t0:.2f} {t_token - t0:.2f} {t2 - t_token:.2f} {t3 - t2:.2f}")
"""


def main() -> None:
    import numpy as np

    import rnnlm_engine as rl

    with tempfile.TemporaryDirectory() as cache:
        config = rl.ModelConfig("lstm", 10000, 200, 200, 2)
        rng = np.random.default_rng(0)
        sd = {k: rng.uniform(-0.1, 0.1, s).astype(np.float32)
              for k, s in config.parameter_shapes().items()}  # fmt: skip
        path = os.path.join(cache, "model.rnnlm")
        rl.Model.from_state_dict(sd).save(path)
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        print(
            f"{'cache':<6}{'import s':>10}{'import to 1st token s':>23}{'1st forward s':>15}"
            f"{'1st loss_and_grad s':>21}"
        )
        for label in ("cold", "warm"):
            out = subprocess.run(
                [sys.executable, "-c", SCRIPT, path], env=env, capture_output=True, text=True,
                check=True,
            ).stdout.split()  # fmt: skip
            print(f"{label:<6}{out[0]:>10}{out[1]:>23}{out[2]:>15}{out[3]:>21}")


if __name__ == "__main__":
    main()
