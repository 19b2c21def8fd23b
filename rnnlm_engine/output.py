"""The output layer: from the top recurrent layer's outputs to next-token probabilities
(and, for the adaptive softmax, choose_cutoffs: cutoffs from a text's token frequencies).

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
  stream_weights() -> the arrays the fused streaming kernel takes for the output, where
      streams_fused (else streams run the layers' kernel, then rows_log_probs)
  check_sums(params, x_bound, check, row_l1)  the float32 overflow bound of its logits
      (row_l1(name): the L1 norms of a matrix's rows, in float64; params: the biases)
  reads_parts: whether a stream's reads (a token's log-probability, the top k, a draw)
      can take parts of the distribution; the adaptive softmax's rows_log_probs(top,
      want) then gives the head and the clusters wanted, and cluster_of(id) says which
"""

from __future__ import annotations

import weakref

import numpy as np

from .errors import ConfigError

# Logits block size for forward-only passes: bounds the memory of a long (T, B) window.
# Blocks of 8M floats (32 MB; 838 rows at V=10000) are as fast as one block here; small,
# cache-sized blocks were slower (26 ms against 20 ms for 700 rows, V=10000), because the
# decoder product loses efficiency on few rows.
_DECODE_BLOCK_FLOATS = 1 << 23
# Forward passes over at most this many rows decode through a (H, V) copy of the decoder.
_DECODE_T_MAX_ROWS = 256
# The adaptive softmax's full distribution of at most this many rows is one call of the
# backend's adaptive_log_probs kernel (streams); more rows go to the batch kernels (BLAS).
_ROWS_KERNEL_MAX = 16


class FullSoftmax:
    """The decoder and a softmax over the whole vocabulary (see the module docstring).

    It reads the model's parameters, work arrays and derived-value cache through the model
    object it is given (model._k, _params, _work, _cached), so that a training update, which
    clears the model's derived values, clears its transposed copy of W too."""

    # the fused streaming kernel (kernels' stream_step) computes this output itself
    streams_fused = True
    # a stream's reads (one token's log-probability, the top k, a draw) need the whole
    # distribution (its normaliser): nothing to gain from computing parts of it
    reads_parts = False

    def __init__(self, model) -> None:
        # a proxy: the model owns its output, and a strong reference back would make a
        # cycle that only the cyclic garbage collector frees (a dropped model's weights
        # would stay until it runs)
        self._m = weakref.proxy(model)
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
        return _softmax_gradient(np.asarray(top_rows, np.float64) @ w.T + bias, targets, w)

    def stream_weights(self) -> dict:
        m = self._m
        return {
            "w_dec": m._params[self.weight_name],
            "s_dec": m._scale(self.weight_name),
            "b_dec": m._params["decoder.bias"],
        }

    def check_sums(self, params: dict, x_bound: float, check, row_l1) -> None:
        w = row_l1(self.weight_name)
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


class AdaptiveSoftmax:
    """PyTorch's nn.AdaptiveLogSoftmaxWithLoss (Grave et al. 2017) under the same contract.

    The head (W_h (C + n, H), bias optional) scores the shortlist, ids below C = cutoffs[0],
    and one logit per tail cluster; cluster i scores its ids [low_i, high_i) through a
    projection P_i (u_i, H) and a map O_i (w_i, u_i), neither with a bias. log p(w) of a
    tail word = the head's log-probability of its cluster + the cluster's of w. Built from
    the backend's kernels (products, the softmax and cross-entropy kernels with a zero bias,
    row gathers and scatter-adds), so it runs on either backend. Training and scoring
    compute a tail only for the rows whose targets fall in it, as PyTorch does; the full
    distribution (log_probs) computes every tail for every row.
    """

    # streams run the layers with the batch kernels, then log_probs (streaming._step_unfused):
    # the fused streaming kernel has a full softmax built in
    streams_fused = False
    # a stream reads one token's log-probability from the head and at most its cluster,
    # and draws the cluster from the head and then the word (rows_log_probs's want)
    reads_parts = True

    def __init__(self, model) -> None:
        self._m = weakref.proxy(model)  # as FullSoftmax's
        c = model.config
        self.shortlist = c.cutoffs[0]
        bounds = [*c.cutoffs, c.vocab_size]
        self.clusters = list(zip(bounds[:-1], bounds[1:], strict=True))
        self.head_size = self.shortlist + len(self.clusters)

    # -------------------------------------------------------------------- the contract

    def log_probs(self, top) -> np.ndarray:
        N = top.shape[0]
        if N <= _ROWS_KERNEL_MAX:  # few rows: one kernel call
            return self._m._k.to_host(self.rows_log_probs(top)[1])
        m = self._m
        k = m._k
        out = np.empty((N, m.config.vocab_size), np.float32)
        head_lp = self._log_softmax(self._head_logits(top), self._head_bias())
        out[:, : self.shortlist] = head_lp[:, : self.shortlist]
        for i, (low, high) in enumerate(self.clusters):
            proj = k.matmul(top, m._params[f"decoder.tail.{i}.0.weight"], trans_b=True)
            logits = k.matmul(proj, m._params[f"decoder.tail.{i}.1.weight"], trans_b=True)
            lp = self._log_softmax(logits, self._zeros(high - low))
            out[:, low:high] = lp + head_lp[:, self.shortlist + i, None]
        return out

    def target_nll(self, top, targets, nll) -> None:
        k = self._m._k
        t = np.asarray(k.to_host(targets))
        gather, rows = self._split(t)
        head = self._head_logits(top)
        head_nll = k.empty(top.shape[0], np.float32)
        bias = self._head_bias()
        k.xent_forward(head, bias, k.to_device(gather), self._shift(head, bias), head_nll)
        total = np.array(k.to_host(head_nll), np.float32)
        for i, r in enumerate(rows):
            if len(r):
                out, _ = self._tail(top, i, r)
                part = k.empty(len(r), np.float32)
                rel = k.to_device(t[r] - self.clusters[i][0])
                zeros = self._zeros(out.shape[1])
                k.xent_forward(out, zeros, rel, self._shift(out, zeros), part)
                total[r] += k.to_host(part)
        k.copy(nll, total)

    def loss_and_backward(self, top, targets, scale: float):
        m = self._m
        k, p, c = m._k, m._params, m.config
        N, H = top.shape
        t = np.asarray(k.to_host(targets))
        gather, rows = self._split(t)
        head = self._head_logits(top)
        head_nll = k.empty(N, np.float32)
        d_bias = k.empty(self.head_size, np.float32)
        bias = self._head_bias()
        shift = self._shift(head, bias)
        k.xent_forward_backward(head, bias, k.to_device(gather), shift, scale, head_nll, d_bias)
        dhead = head  # overwritten in place by the kernel
        grads = {"decoder.head.weight": k.matmul(dhead, top, trans_a=True)}
        if c.head_bias:
            grads["decoder.head.bias"] = d_bias
        dtop = k.matmul(dhead, p["decoder.head.weight"], out=m._work("dtop", (N, H)))
        total = np.array(k.to_host(head_nll), np.float32)
        for i, r in enumerate(rows):
            w0, w1 = p[f"decoder.tail.{i}.0.weight"], p[f"decoder.tail.{i}.1.weight"]
            if not len(r):  # no target in this cluster: no gradient on its weights
                grads[f"decoder.tail.{i}.0.weight"] = k.zeros(w0.shape, np.float32)
                grads[f"decoder.tail.{i}.1.weight"] = k.zeros(w1.shape, np.float32)
                continue
            out, (x, proj, r_dev) = self._tail(top, i, r)
            part = k.empty(len(r), np.float32)
            zeros = self._zeros(out.shape[1])
            scratch = k.empty(out.shape[1], np.float32)  # the zero bias's gradient: unused
            rel = k.to_device(t[r] - self.clusters[i][0])
            k.xent_forward_backward(out, zeros, rel, self._shift(out, zeros), scale, part, scratch)
            total[r] += k.to_host(part)
            dout = out
            grads[f"decoder.tail.{i}.1.weight"] = k.matmul(dout, proj, trans_a=True)
            dproj = k.matmul(dout, w1)
            grads[f"decoder.tail.{i}.0.weight"] = k.matmul(dproj, x, trans_a=True)
            k.embedding_backward(r_dev, k.matmul(dproj, w0), dtop)  # dtop[r] += dproj P_i
        return k.to_device(total), grads, dtop

    def prediction_stats(self, top, targets, top_k: int):
        """From the full log-probabilities, rows in blocks: they are normalised already,
        so the kernel's log-normaliser is 0 up to rounding (and is subtracted anyway)."""
        m = self._m
        k, V = m._k, m.config.vocab_size
        n = top.shape[0]
        figures = (np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.int64),
                   np.empty((n, top_k), np.int64), np.empty((n, top_k), np.float32))  # fmt: skip
        zeros = self._zeros(V)
        rows = max(1, _DECODE_BLOCK_FLOATS // V)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            lp = k.to_device(self.log_probs(top[r0:r1]))
            out = tuple(k.empty(a[r0:r1].shape, a.dtype) for a in figures)
            k.prediction_stats(lp, zeros, self._shift(lp, zeros), targets[r0:r1], *out)
            for a, b in zip(figures, out, strict=True):
                a[r0:r1] = k.to_host(b)
        return figures

    def target_gradient(self, top_rows: np.ndarray, targets) -> tuple[np.ndarray, np.ndarray]:
        k, p = self._m._k, self._m._params

        def w(name):
            return np.asarray(k.to_host(p[name]), np.float64)

        x = np.asarray(top_rows, np.float64)
        targets = np.asarray(targets)
        gather, rows = self._split(targets)
        logp, grad = _softmax_gradient(x @ w("decoder.head.weight").T + self._head_bias_host(),
                                       gather, w("decoder.head.weight"))  # fmt: skip
        for i, r in enumerate(rows):
            if len(r):
                w0, w1 = w(f"decoder.tail.{i}.0.weight"), w(f"decoder.tail.{i}.1.weight")
                lp, g = _softmax_gradient(
                    (x[r] @ w0.T) @ w1.T, targets[r] - self.clusters[i][0], w1
                )
                logp[r] += lp
                grad[r] += g @ w0  # through the projection
        return logp, grad

    def stream_weights(self) -> dict:
        raise ConfigError("the fused streaming kernel has no adaptive softmax (see streaming.step)")

    # ------------------------------------------------------- reads of a few rows (streams)

    def rows_log_probs(self, top, want=None):
        """The backend's adaptive_log_probs kernel on the rows of top (a few: streams):
        (head (N, S + n): the head's log-probabilities, shortlist then clusters; out
        (N, V): log p of the shortlist and of the clusters i with want[i], default all;
        the other columns unwritten), fresh arrays on the backend."""
        m = self._m
        k = m._k
        N = top.shape[0]
        head_t, head_b, projs, outs_t = self._rows_weights()
        want = np.ones(len(self.clusters), np.uint8) if want is None else want
        head = k.empty((N, self.head_size), np.float32)
        out = k.empty((N, m.config.vocab_size), np.float32)
        k.adaptive_log_probs(top, head_t, head_b, projs, outs_t, want, head, out)
        return head, out

    def cluster_of(self, token: int) -> int:
        """The tail cluster of an id, or -1 for the shortlist's."""
        for i, (low, high) in enumerate(self.clusters):
            if low <= token < high:
                return i
        return -1

    def _rows_weights(self):
        """(head^T (H, S + n), the head's bias or zeros, the projections, the maps
        transposed): adaptive_log_probs's weights, built once."""
        m = self._m

        def build():
            # float32 weights (an int8 model's dequantized: model._dequantized)
            k, weight = m._k, m._dequantized

            def transposed(name):
                host = np.ascontiguousarray(k.to_host(weight(name)).T)
                return k.freeze(k.to_device_aligned(host))

            n = len(self.clusters)
            return (
                transposed("decoder.head.weight"),
                self._head_bias(),
                tuple(weight(f"decoder.tail.{i}.0.weight") for i in range(n)),
                tuple(transposed(f"decoder.tail.{i}.1.weight") for i in range(n)),
            )

        return m._cached("adaptive_rows", build)

    def check_sums(self, params: dict, x_bound: float, check, row_l1) -> None:
        bias = params.get("decoder.head.bias")
        head = row_l1("decoder.head.weight") * x_bound
        check(["decoder.head.weight"], head + (0.0 if bias is None else np.abs(bias)))
        for i in range(len(self.clusters)):
            p0, p1 = f"decoder.tail.{i}.0.weight", f"decoder.tail.{i}.1.weight"
            proj = float(np.max(row_l1(p0))) * x_bound
            check([p0], np.array([proj]))
            check([p0, p1], row_l1(p1) * proj)

    # -------------------------------------------------------------------- internals

    def _split(self, t: np.ndarray):
        """(the head's targets: the word or its cluster's logit, each cluster's rows)."""
        gather = np.array(t, np.int64)
        rows = []
        for i, (low, high) in enumerate(self.clusters):
            r = np.flatnonzero((t >= low) & (t < high))
            gather[r] = self.shortlist + i
            rows.append(r)
        return gather, rows

    def _head_logits(self, top):
        # work arrays, not fresh ones: a fresh array's first writes fault page by page
        # (see model._Workspace)
        m = self._m
        out = m._work("head_logits", (top.shape[0], self.head_size))
        return m._k.matmul(top, m._params["decoder.head.weight"], out=out, trans_b=True)

    def _head_bias(self):
        p = self._m._params
        return p["decoder.head.bias"] if "decoder.head.bias" in p else self._zeros(self.head_size)

    def _head_bias_host(self):
        return np.asarray(self._m._k.to_host(self._head_bias()), np.float64)

    def _zeros(self, n: int):
        """A zero bias of n entries on the backend (the kernels take a bias; these have none)."""
        m = self._m
        return m._cached(f"zeros{n}", lambda: m._k.freeze(m._k.zeros(n, np.float32)))

    def _shift(self, logits, bias):
        shift = self._m._k.empty(logits.shape[0], np.float32)
        self._m._k.row_shift(logits, bias, shift)
        return shift

    def _log_softmax(self, logits, bias) -> np.ndarray:
        k = self._m._k
        out = k.empty(logits.shape, np.float32)
        k.log_softmax(logits, bias, self._shift(logits, bias), out)
        return k.to_host(out)

    def _tail(self, top, i: int, r: np.ndarray):
        """Cluster i's logits for the rows r of top, and (those rows, their projection,
        r on the backend)."""
        m = self._m
        k, p = m._k, m._params
        r_dev = k.to_device(np.ascontiguousarray(r, np.int64))
        N, n = top.shape[0], len(r)
        w0, w1 = p[f"decoder.tail.{i}.0.weight"], p[f"decoder.tail.{i}.1.weight"]
        # the first n rows of work arrays sized for every row (their shapes stay put)
        x = m._work(f"tail{i}_x", (N, top.shape[1]))[:n]
        k.embedding_forward(top, r_dev, x)  # a gather of rows
        proj = k.matmul(x, w0, out=m._work(f"tail{i}_proj", (N, w0.shape[0]))[:n], trans_b=True)
        out = k.matmul(proj, w1, out=m._work(f"tail{i}_out", (N, w1.shape[0]))[:n], trans_b=True)
        return out, (x, proj, r_dev)


def _softmax_gradient(logits: np.ndarray, targets, w: np.ndarray):
    """float64 (log softmax(logits)[targets], its gradient on the input x of logits = x W^T
    (+ bias): W[target] - p W)."""
    logits = logits - logits.max(axis=1, keepdims=True)
    logz = np.log(np.sum(np.exp(logits), axis=1))
    rows = np.arange(len(targets))
    p = np.exp(logits - logz[:, None])
    return logits[rows, targets] - logz, w[targets] - p @ w


# --adaptive auto: the shortlist holds the words that make this share of the training text,
# the first cluster the next up to the second share (Grave et al. 2017 put the head over
# the few most frequent words, which take most of the text: Zipf's law)
AUTO_COVERAGE = (0.8, 0.95)


def choose_cutoffs(ids: np.ndarray, vocab_size: int, hidden_size: int, div_value: float = 4.0):
    """Adaptive-softmax cutoffs for a text of ids (frequency ranks): the number of most
    frequent ids that make AUTO_COVERAGE of its tokens, each a cutoff where it leaves a
    tail (below vocab_size) that the projection can reach (hidden_size // div_value ** i
    >= 1). Raises ConfigError when none is left (a small vocabulary gains nothing)."""
    # in id order: the ids are the vocabulary's frequency ranks, and a cutoff splits ids
    counts = np.bincount(np.asarray(ids, np.int64), minlength=vocab_size)
    covered = np.cumsum(counts) / max(1, counts.sum())
    cutoffs: list[int] = []
    for share in AUTO_COVERAGE:
        c = int(np.searchsorted(covered, share) + 1)
        c = max(c, 1)
        if c < vocab_size and (not cutoffs or c > cutoffs[-1]):
            if int(hidden_size // div_value ** (len(cutoffs) + 1)) >= 1:
                cutoffs.append(c)
    if not cutoffs:
        raise ConfigError(
            f"--adaptive auto found no cutoff for a vocabulary of {vocab_size}: its most "
            f"frequent tokens cover the text; use a full softmax (no --adaptive)"
        )
    return tuple(cutoffs)


def make_output(model):
    """The output layer of model's config: AdaptiveSoftmax with cutoffs, else FullSoftmax."""
    return AdaptiveSoftmax(model) if model.config.adaptive else FullSoftmax(model)
