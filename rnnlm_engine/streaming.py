"""A model's streaming step: T tokens for N streams in one call of the backend's fused
``stream_step`` kernel (every layer, then the decoder and log-softmax after the last), and
the weights stacked as that kernel takes them; for an output layer the kernel does not
compute (the adaptive softmax), the layers' kernel ``stream_layers`` and then the output's
own kernel for a few rows. ``layers_step`` stops before the output: a stream that reads
one token's log-probability or samples asks the adaptive softmax for only what it needs.

Streams and StreamBatch call ``step``; it reads the model's parameters, derived-value
cache and per-thread workspace (model._params, _cached, _ws), as output.py does.
"""

from __future__ import annotations

import numpy as np


def step(model, ids: np.ndarray, h: np.ndarray, c: np.ndarray | None, to_host=True):
    """T streaming steps for N streams: ids (T, N) int64 (checked by the caller), state
    h, c (L, N, H) on the backend -> (new h, new c on the backend, logprobs (N, V) after
    the last step, on the host unless to_host is False), all fresh arrays: the state
    given is never modified."""
    if not model._output.streams_fused:
        return _step_unfused(model, ids, h, c, to_host)
    k = model._k
    cell, residual, weights, c0, gx, gh, logits = _prepared(model, ids.shape[1])
    h_out = k.empty(c0.shape, np.float32)
    c_out = k.empty(c0.shape, np.float32)
    logprobs = k.empty(logits.shape, np.float32)
    k.stream_step(
        cell, residual, k.to_device(ids), *weights, h, (c0 if c is None else c), h_out,
        c_out, gx, gh, logits, logprobs,
    )  # fmt: skip
    return (
        h_out,
        (c_out if c is not None else None),
        (k.to_host(logprobs) if to_host else logprobs),
    )


def _prepared(model, N: int) -> tuple:
    """(cell, residual, weights, c0, gx, gh, logits): the kernels' prepared arguments and
    the calling thread's scratch for N streams. The per-token path: its Python around the
    kernel is kept short (prepared argument tuples instead of lookups per call: char LSTM
    2x256, 35 -> 32 us a token)."""
    args = model._cached("stream_args", lambda: _build_stream_args(model))
    kept = model._ws.stream_scratch
    if kept is None or kept[0] != N:
        kept = model._ws.stream_scratch = (N, _build_stream_scratch(model, N))
    return (*args, *kept[1])


def _step_unfused(model, ids: np.ndarray, h, c, to_host: bool):
    """step() for an output the fused streaming kernel does not compute (the adaptive
    softmax): the layers' streaming kernel, then the output's distribution of the rows."""
    return step_keeping_top(model, ids, h, c, to_host)[:3]


def step_keeping_top(model, ids: np.ndarray, h, c, to_host: bool):
    """_step_unfused, and the top layer's output (N, H) too (a stream that reads parts of
    an adaptive softmax keeps it for its draws)."""
    h_out, c_out, top = layers_step(model, ids, h, c)
    _, logprobs = model._output.rows_log_probs(top)
    return h_out, c_out, (model._k.to_host(logprobs) if to_host else logprobs), top


def layers_step(model, ids: np.ndarray, h, c):
    """step() without the output layer: (new h, new c, the top layer's output (N, H)
    after the last step), fresh arrays on the backend (the backend's stream_layers)."""
    k = model._k
    cell, residual, weights, c0, gx, gh, _ = _prepared(model, ids.shape[1])
    h_out = k.empty(c0.shape, np.float32)
    c_out = k.empty(c0.shape, np.float32)
    top = k.empty((ids.shape[1], c0.shape[2]), np.float32)
    k.stream_layers(
        cell, residual, k.to_device(ids), *weights[:_LAYER_WEIGHTS], h,
        (c0 if c is None else c), h_out, c_out, gx, gh, top,
    )  # fmt: skip
    return h_out, (c_out if c is not None else None), top


# the streaming kernels' weight arguments in order: the layers', then the decoder's
_ORDER = ("table", "emb", "s_emb", "w_ih0", "s_ih0", "w_ih", "s_ih", "b_ih", "w_hh", "s_hh",
          "b_hh", "w_dec", "s_dec", "b_dec")  # fmt: skip
_LAYER_WEIGHTS = 11


def _build_stream_args(model) -> tuple:
    """(cell id, residual flags (L,) uint8 on the backend, the weights in the streaming
    kernel's argument order (_ORDER): the layers' eleven, then the decoder's three where
    the kernel computes the output)."""
    k, c = model._k, model.config
    w = streaming_weights(model)
    residual = k.to_device(np.array(c.residual_layers, np.uint8))
    return k.STREAM_CELLS[c.cell], residual, tuple(w[name] for name in _ORDER if name in w)


def _build_stream_scratch(model, N: int) -> tuple:
    """The streaming kernel's scratch for N streams: (c0 (L, N, H), the state c of the
    cells that have none; gx, gh (N, G); logits (N, V))."""
    k, c = model._k, model.config
    L, H, G, V = c.num_layers, c.hidden_size, c.gate_rows, c.vocab_size
    shapes = ((L, N, H), (N, G), (N, G), (N, V))
    return tuple(k.empty(shape, np.float32) for shape in shapes)


def streaming_weights(model) -> dict:
    """The weights stacked as the streaming kernel takes them (built once)."""
    return model._cached("stream_weights", lambda: _build_streaming_weights(model))


def _build_streaming_weights(model) -> dict:
    """The layers' matrices stacked, with their scales (model._scale: (rows,) for an int8
    matrix, (0,) for a float32 one), and the output's where the kernel computes it."""
    k, p, c = model._k, model._params, model.config
    L, G, H = c.num_layers, c.gate_rows, c.hidden_size
    table = model._layer0_table()
    w_ih_names = [f"rnn.weight_ih_l{layer}" for layer in range(1, L)]
    w_hh_names = [f"rnn.weight_hh_l{layer}" for layer in range(L)]
    dtype = p["rnn.weight_hh_l0"].dtype
    if L > 1:
        w_ih = k.stack([p[name] for name in w_ih_names])
        s_ih = k.stack([model._scale(name) for name in w_ih_names])
    else:
        w_ih = k.empty((0, G, H), dtype)
        s_ih = k.empty((0, G), np.float32)
    built = {
        "table": table if table is not None else k.empty((0, G), np.float32),
        "emb": p["encoder.weight"],
        "s_emb": model._scale("encoder.weight"),
        "w_ih0": p["rnn.weight_ih_l0"],
        "s_ih0": model._scale("rnn.weight_ih_l0"),
        "w_ih": w_ih,
        "s_ih": s_ih,
        "b_ih": k.stack([p[f"rnn.bias_ih_l{i}"] for i in range(L)]),
        "w_hh": k.stack([p[name] for name in w_hh_names]),
        "s_hh": k.stack([model._scale(name) for name in w_hh_names]),
        "b_hh": k.stack([p[f"rnn.bias_hh_l{i}"] for i in range(L)]),
    }
    if model._output.streams_fused:
        built |= model._output.stream_weights()
    for a in built.values():
        k.freeze(a)
    return built
