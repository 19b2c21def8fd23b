"""The output layer: from the top recurrent layer's outputs to next-token probabilities.

One contract that every output layer meets, so that the model, streams, scoring and the
inspection call it and never ask which output they have (the adaptive softmax, issue 12,
is the second). ``FullSoftmax`` is the decoder W (V, H) plus bias and a softmax over the
whole vocabulary (word_language_model's ``decoder``; tied: W is the encoder's matrix).

The contract, top (N, H) float32 on the backend, targets (N,) int64:
  log_probs(top) -> (N, V) log-probabilities, on the host
  target_nll(top, targets, nll)          nll (N,) = -log p(targets), without writing (N, V)
  loss_and_backward(top, targets, scale) -> (nll (N,), grads {name: array}, dtop (N, H)):
      the gradient of scale * sum(nll) on the layer's own parameters and on top
  prediction_stats(top, targets, k) -> host arrays (log p(targets), entropy, rank, the top
      k ids and log-probabilities), each row's figures without writing (N, V)
  target_gradient(top_rows, targets) -> (log p(targets), d log p(target) / d top) on the
      host, in float64 (attributions)
  stream_weights() -> the arrays the fused streaming kernel takes for the output
  check_sums(params, x_bound, check)     the float32 overflow bound of its logits
"""

from __future__ import annotations

import numpy as np

# Logits block size for forward-only passes: bounds the memory of a long (T, B) window.
# Blocks of 8M floats (32 MB; 838 rows at V=10000) are as fast as one block here; small,
# cache-sized blocks were slower (26 ms against 20 ms for 700 rows, V=10000), because the
# decoder product loses efficiency on few rows.
_DECODE_BLOCK_FLOATS = 1 << 23
# Forward passes over at most this many rows decode through a (H, V) copy of the decoder.
_DECODE_T_MAX_ROWS = 256


class FullSoftmax:
    """The decoder and a softmax over the whole vocabulary (see the module docstring).

    It reads the model's parameters, work arrays and derived-value cache through the model
    object it is given (model._k, _params, _work, _cached), so that a training update, which
    clears the model's derived values, clears its transposed copy of W too."""

    def __init__(self, model) -> None:
        self._m = model
        c = model.config
        self.weight_name = "encoder.weight" if c.tied else "decoder.weight"

    # -------------------------------------------------------------------- the contract

    def log_probs(self, top) -> np.ndarray:
        m = self._m
        k, V = m._k, m.config.vocab_size
        out = k.empty((top.shape[0], V), np.float32)
        bias = m._params["decoder.bias"]
        for r0, r1, logits in self._decode_blocks(top):
            k.log_softmax(logits, bias, self._shift(logits), out[r0:r1])
        return k.to_host(out)

    def target_nll(self, top, targets, nll) -> None:
        m = self._m
        p = m._params
        m._k.decode_xent(top, p[self.weight_name], p["decoder.bias"], targets, nll, m._work)

    def loss_and_backward(self, top, targets, scale: float):
        m = self._m
        k, p, c = m._k, m._params, m.config
        N = top.shape[0]
        logits = m._work("logits", (N, c.vocab_size))
        w = p[self.weight_name]
        k.matmul(top, w, out=logits, trans_b=True)
        nll = m._work("nll", (N,))
        d_bias = k.empty(c.vocab_size, np.float32)
        k.xent_forward_backward(
            logits, p["decoder.bias"], targets, self._shift(logits), scale, nll, d_bias
        )
        dlogits = logits  # overwritten in place by the kernel
        d_w = k.empty((c.vocab_size, c.hidden_size), np.float32)
        k.matmul(dlogits, top, out=d_w, trans_a=True)
        dtop = k.matmul(dlogits, w, out=m._work("dtop", (N, c.hidden_size)))
        return nll, {self.weight_name: d_w, "decoder.bias": d_bias}, dtop

    def prediction_stats(self, top, targets, top_k: int):
        m = self._m
        k = m._k
        n = top.shape[0]
        figures = (k.empty(n, np.float32), k.empty(n, np.float32), k.empty(n, np.int64),
                   k.empty((n, top_k), np.int64), k.empty((n, top_k), np.float32))  # fmt: skip
        bias = m._params["decoder.bias"]
        for r0, r1, logits in self._decode_blocks(top):
            rows = tuple(a[r0:r1] for a in figures)
            k.prediction_stats(logits, bias, self._shift(logits), targets[r0:r1], *rows)
        return tuple(k.to_host(a) for a in figures)

    def target_gradient(self, top_rows: np.ndarray, targets) -> tuple[np.ndarray, np.ndarray]:
        k = self._m._k
        w = np.asarray(k.to_host(self._m._params[self.weight_name]), np.float64)
        bias = np.asarray(k.to_host(self._m._params["decoder.bias"]), np.float64)
        logits = np.asarray(top_rows, np.float64) @ w.T + bias
        logits -= logits.max(axis=1, keepdims=True)
        logz = np.log(np.sum(np.exp(logits), axis=1))
        rows = np.arange(len(targets))
        p = np.exp(logits - logz[:, None])
        return logits[rows, targets] - logz, w[targets] - p @ w

    def stream_weights(self) -> dict:
        p = self._m._params
        return {"w_dec": p[self.weight_name], "b_dec": p["decoder.bias"]}

    def check_sums(self, params: dict, x_bound: float, check) -> None:
        w = np.abs(params[self.weight_name].astype(np.float64)).sum(axis=1)
        check([self.weight_name, "decoder.bias"],
              w * x_bound + np.abs(params["decoder.bias"].astype(np.float64)))  # fmt: skip

    # -------------------------------------------------------------------- internals

    def _shift(self, logits):
        """The softmax kernels' per-row shift for these logits (finite: the parameters'
        bounds, checked at construction, keep every logit finite)."""
        m = self._m
        shift = m._work("shift", (logits.shape[0],))
        m._k.row_shift(logits, m._params["decoder.bias"], shift)
        return shift

    def _decode_blocks(self, top):
        """Yield (r0, r1, logits of rows r0:r1) block by block, for passes that need no
        gradient, so that memory stays bounded however long the window."""
        m = self._m
        k, V = m._k, m.config.vocab_size
        N = top.shape[0]
        rows = max(1, min(N, _DECODE_BLOCK_FLOATS // V))
        buf = m._work("logits", (rows, V))
        # few rows (a StreamBatch step): BLAS repacks all of W for every product, which
        # costs more than the product itself; a (H, V) copy needs no repacking (64 rows,
        # V=10000, H=200: 1.6 ms against 2.5 ms); many rows amortise the packing
        transposed = N > _DECODE_T_MAX_ROWS
        w = m._params[self.weight_name] if transposed else self._decoder_t()
        for r0 in range(0, N, rows):
            r1 = min(N, r0 + rows)
            logits = buf[: r1 - r0]
            k.matmul(top[r0:r1], w, out=logits, trans_b=transposed)
            yield r0, r1, logits

    def _decoder_t(self):
        """A C-contiguous (H, V) copy of the decoder matrix (built once, on first use)."""
        m = self._m

        def build():
            k = m._k
            host = k.to_host(m._params[self.weight_name])
            return k.freeze(k.to_device(np.ascontiguousarray(host.T)))

        return m._cached("decoder_t", build)
