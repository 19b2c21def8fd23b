"""Scoring shards on a Dask cluster (``rnnlm score MODEL FILES... --out DIR --scheduler
ADDRESS``; the ``dask`` extra: ``pip install 'rnnlm-engine[dask]'``).

One task per shard. A task ships the model's path, not the model: each worker process
loads a model file once (kept by path, size and modification time) and scores every shard
it is given with it (rnnlm_engine.shards.score_shard), writing that shard's output
atomically. A task that runs again (its worker was lost, and Dask reran it elsewhere)
writes the same bytes over the same file, so the output is complete, once, and the same.
The model file and the output folder must be on storage every worker reads and writes
(a shared file system), as they are on one machine. Buckets from percentiles need every
document's perplexity: the tasks return them (8 bytes a document) and the rewrite of the
outputs with each document's bucket runs as tasks too.
"""

from __future__ import annotations

import os
import threading

from . import shards
from .model import load

_lock = threading.Lock()
_models: dict = {}  # in each worker process: (path, size, mtime, backend) -> Model
_loads = 0  # model files loaded by this process (counted for the tests)


def worker_model(path: str, backend: str | None = None):
    """The model at path on backend, loaded once per process (again only if the file
    changed)."""
    global _loads
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, backend)
    with _lock:
        model = _models.get(key)
        if model is None:
            model = _models[key] = load(path, backend=backend)
            _loads += 1
    return model


def loads() -> int:
    return _loads


def _score_task(
    model_path: str, shard: str, out_dir: str, options, backend=None
) -> shards.ShardResult:
    return shards.score_shard(worker_model(model_path, backend), shard, out_dir, options)


def score_files(
    paths, model_path, out_dir, options=None, *, client=None, progress=None, backend=None
):
    """Score the shards with the model file at model_path into out_dir (see
    rnnlm_engine.shards) on the Dask cluster of ``client`` (a dask.distributed Client),
    or on this machine when client is None. backend: where each worker's kernels run
    (None: the default, rnnlm_engine.backend). Returns the CorpusResult; progress is
    called with each ShardResult as it arrives."""
    options = options or shards.Options()
    if client is None:
        model = load(model_path, backend=backend)
        return shards.score_files(model, paths, out_dir, options, progress)
    from dask.distributed import as_completed

    model_path = os.path.abspath(os.fspath(model_path))
    paths = [os.path.abspath(p) for p in shards.check_shards(paths, out_dir)]
    out_dir = os.path.abspath(os.fspath(out_dir))
    futures = {
        client.submit(_score_task, model_path, p, out_dir, options, backend, pure=False): i
        for i, p in enumerate(paths)
    }
    results: list = [None] * len(paths)
    for future in as_completed(futures):
        results[futures[future]] = r = future.result()  # a task's error is raised here
        if progress is not None:
            progress(r)

    def rewrite(outputs, cutoffs):
        client.gather(client.map(shards.add_buckets, outputs, [cutoffs] * len(outputs)))

    return shards.finish(results, out_dir, options, rewrite)
