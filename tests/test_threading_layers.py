"""Threads on every Numba threading layer, each in a fresh process (the layer is chosen
once per process). Numba's fallback layer, workqueue, aborts the whole process when two
threads launch parallel kernels at once; the engine must serialise its launches there."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import threading
    import numpy as np
    import numba
    import rnnlm_engine as rl

    rng = np.random.default_rng(0)
    cfg = rl.ModelConfig("lstm", 31, 8, 8, 2)
    sd = {k: rng.uniform(-0.5, 0.5, s).astype(np.float32)
          for k, s in cfg.parameter_shapes().items()}
    model = rl.Model.from_state_dict(sd)
    ids = rng.integers(0, 31, (12, 3))
    want = model.forward(ids)[0]
    fed = model.stream().feed(ids[:, 0])
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(model.loss_and_grad(ids, ids)[0])
                got = model.forward(ids)[0]
                assert np.array_equal(got, want)
                stream = model.stream()  # the streaming kernel's parallel loops too
                for i in ids[:, 0]:
                    got = stream.feed(int(i))
                assert np.array_equal(got, fed)
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    assert len(set(results)) == 1, "threads disagree"
    print("layer", numba.threading_layer())
    """
)


@pytest.mark.parametrize("layer", ["workqueue", "omp", "default"])
def test_threads_on_threading_layer(layer):
    env = dict(os.environ)
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    if layer == "omp" and "No threading layer could be loaded" in proc.stderr:
        pytest.skip("numba's OpenMP layer is not available here (no libgomp)")
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    if layer != "default":
        assert f"layer {layer}" in proc.stdout
