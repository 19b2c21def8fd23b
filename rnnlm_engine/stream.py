"""Streams: feed tokens one at a time, read next-token probabilities, sample, snapshot.

A Stream owns its recurrent state; the Model it reads is immutable and may serve any
number of Streams in any number of threads (one Stream is not shared between threads:
``fork()`` it). Every feed is one call of the backend's ``stream_step`` kernel, which runs
the embedding and every layer for each token and the decoder and log-softmax after the
last, so feeding a chunk gives exactly what feeding its tokens one at a time gives (an
adaptive softmax: the layers' kernel, then the output's own kernel for a few rows). A call
that fails leaves the Stream as it was. ``push`` advances without the distribution: with
an adaptive softmax, a token's log-probability, the top k and a draw then need only its
head and the clusters concerned.
"""

from __future__ import annotations

import threading
import weakref
from array import array
from collections.abc import Iterator

import numpy as np

from . import sampling, streaming
from .errors import InputError, VocabularyError
from .inputs import check_state_magnitude
from .snapshot import DEFAULT_MAX_SNAPSHOT_TOKENS, Snapshot
from .state import State

# lists of ids up to this long are checked in Python (faster than numpy's checks there)
_SHORT_LIST = 64


class Stream:
    """Stateful next-token prediction over one Model. Build one with ``model.stream()``."""

    def __init__(self, model):
        self._model = model
        self._vocab = model.vocab
        self._V = model.config.vocab_size
        self._rng = np.random.default_rng()
        # every id fed, 4 bytes each (a Python list took about 36): int32 unless an id of
        # this vocabulary needs more
        self._token_type = "i" if self._V <= 1 << 31 else "q"
        self._shared = None  # (_SharedRows, weakref) while the prediction is a batch's row
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Back to the start: zero state, nothing fed."""
        c, k = self._model.config, self._model._k
        shape = (c.num_layers, 1, c.hidden_size)
        # the state lives on the model's backend (the GPU's memory for cuda)
        self._let_go()
        self._h = k.zeros(shape, np.float32)
        self._c = k.zeros(shape, np.float32) if c.cell == "lstm" else None
        # the next-token log-probabilities (V,): a host array, or on the cuda backend a
        # device array until something reads them (generate samples on the device and
        # copies back only the drawn id)
        self._logprobs = None
        # after push() (an output that reads parts of its distribution): the top layer's
        # output (1, H) on the backend, from which reads compute what they need
        self._top = None
        self._tokens = array(self._token_type)

    def snapshot(self) -> Snapshot:
        def frozen(a):
            if a is None:
                return None
            a = np.array(self._model._k.to_host(a))  # a copy, on the host
            a.flags.writeable = False
            return a

        return Snapshot(
            self._model.fingerprint(),
            frozen(self._h)[:, 0],
            None if self._c is None else frozen(self._c)[:, 0],
            frozen(self._current() if self._predicts() else None),
            _frozen(np.frombuffer(self._tokens, self._token_dtype()).copy()),
        )

    def restore(
        self, snapshot: Snapshot | bytes, max_tokens: int = DEFAULT_MAX_SNAPSHOT_TOKENS
    ) -> None:
        """Continue from a snapshot of a stream of this same model: a Snapshot, or bytes
        of Snapshot.to_bytes() read with ``Snapshot.from_bytes(snapshot, max_tokens)``
        (which refuses more than max_tokens tokens, 2**24 by default, and bounds the
        memory that reading hostile bytes takes). Raises InputError; a failed restore
        leaves the stream as it was."""
        if not isinstance(snapshot, Snapshot):
            snapshot = Snapshot.from_bytes(snapshot, max_tokens)
        if snapshot.model != self._model.fingerprint():
            raise InputError(
                "this snapshot comes from another model (its weights or config differ); "
                "restore it into a stream of the model that made it"
            )
        c = self._model.config
        if snapshot.h.shape != (c.num_layers, c.hidden_size) or (
            (snapshot.c is None) != (c.cell != "lstm")
        ):
            raise InputError("the snapshot's state does not fit this model")
        if snapshot.logprobs is not None and snapshot.logprobs.shape != (c.vocab_size,):
            raise InputError("the snapshot's log-probabilities do not fit this model")
        for name, a in (("h", snapshot.h), ("c", snapshot.c), ("logprobs", snapshot.logprobs)):
            if a is not None and not np.all(np.isfinite(a)):
                raise InputError(f"the snapshot's {name} contains NaN or infinity")
        ids = snapshot.token_ids
        if ids.size and ids.max() >= c.vocab_size:
            raise InputError("the snapshot's tokens do not fit this model's vocabulary")
        check_state_magnitude(self._model, snapshot.h[:, None, :])
        tokens = array(self._token_type)  # a copy, 4 bytes a token
        tokens.frombytes(memoryview(np.ascontiguousarray(ids, self._token_dtype())).cast("B"))
        k = self._model._k
        self._let_go()
        self._h = k.to_device(np.array(snapshot.h[:, None, :]))
        self._c = None if snapshot.c is None else k.to_device(np.array(snapshot.c[:, None, :]))
        # a copy: a Snapshot built by hand may share its array
        self._logprobs = None if snapshot.logprobs is None else _read_only(snapshot.logprobs)
        self._top = None
        self._tokens = tokens

    def fork(self) -> Stream:
        """An independent copy of this stream (for another thread, or another branch)."""
        other = Stream(self._model)
        other.restore(self.snapshot())
        return other

    @property
    def tokens(self) -> tuple[int, ...]:
        """Ids of every token fed so far."""
        return tuple(self._tokens)

    def _token_dtype(self) -> type:
        return np.intc if self._token_type == "i" else np.longlong

    # ------------------------------------------------------------------ feeding

    def feed(self, text_or_ids) -> np.ndarray:
        """Advance over the tokens of a text (encoded with the model's vocabulary) or of a
        sequence of ids; returns the log-probabilities (V,) float32 of the next token, as
        a read-only array (the stream's own, which its top, prob and sample read; no copy
        is made per token: np.array(...) of it gives a writable copy)."""
        self._advance(self._ids(text_or_ids), to_host=True)
        return self._logprobs

    def push(self, text_or_ids) -> None:
        """Advance as feed does, without computing the next-token distribution: logprob,
        prob, top, sample and generate then compute only what they need. With an adaptive
        softmax that is its head and the clusters asked about (a shortlist token's
        log-probability: the head alone; sampling: the head and the drawn cluster). A full
        softmax needs its whole distribution for any of them, and push computes it as feed
        does."""
        self._push(self._ids(text_or_ids))

    def _push(self, ids: np.ndarray) -> None:
        if not self._model._output.reads_parts:
            self._advance(ids, to_host=True)
            return
        h, c, top = streaming.layers_step(self._model, ids.reshape(-1, 1), self._h, self._c)
        self._let_go()  # only now, after the step ran: a failed call changes nothing
        self._h, self._c = h, c
        self._logprobs, self._top = None, top
        self._tokens.extend(ids.tolist())

    def _advance(self, ids: np.ndarray, to_host: bool) -> None:
        # one kernel call for the whole chunk, which computes exactly what feeding its
        # tokens one by one does, but the decoder only after the last
        args = (self._model, ids.reshape(-1, 1), self._h, self._c, to_host)
        if self._model._output.reads_parts:  # keep the top layer's output too (for draws)
            h, c, logprobs, top = streaming.step_keeping_top(*args)
        else:
            h, c, logprobs = streaming.step(*args)
            top = None
        # only now, after every step ran: a failed call changes nothing
        self._let_go()
        self._h, self._c = h, c
        if isinstance(logprobs, np.ndarray):  # a fresh (1, V) array, ours to freeze
            logprobs = _frozen(logprobs)
        self._logprobs = logprobs[0]
        self._top = top
        self._tokens.extend(ids.tolist())

    def _let_go(self) -> None:
        """Drop the StreamBatch row this stream's prediction is, if it is one (before the
        state and prediction are replaced)."""
        shared = self._shared
        if shared is not None:
            shared[0].let_go([(self, shared)])

    def _ids(self, text_or_ids) -> np.ndarray:
        V = self._V
        # the common cases first, checked in Python: the general path's numpy checks cost
        # about 10 us, a quarter of a character model's step (2x256, 47 us)
        if (type(text_or_ids) is int or isinstance(text_or_ids, np.integer)) and (
            0 <= text_or_ids < V
        ):  # one id (an int, or an argmax or a draw of numpy's)
            return np.array([text_or_ids], np.int64)
        if (
            type(text_or_ids) is list
            and 0 < len(text_or_ids) <= _SHORT_LIST
            and all(type(t) is int for t in text_or_ids)
            and 0 <= min(text_or_ids)
            and max(text_or_ids) < V
        ):  # a short list of ids
            return np.array(text_or_ids, np.int64)
        if isinstance(text_or_ids, str):
            if self._vocab is None:
                raise InputError("this model has no vocabulary: feed token ids, not text")
            # a fragment of streamed text: <eos> only where it has a newline
            ids = self._vocab.encode(text_or_ids, final_eos=False)
        else:
            try:
                ids = np.asarray(text_or_ids)
            except Exception as e:
                raise InputError(f"cannot read token ids: {e}") from None
            if ids.ndim == 0:
                ids = ids.reshape(1)
            if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
                raise InputError(
                    f"feed a text or a 1-D sequence of int ids; got {ids.dtype} {ids.shape}"
                )
            bad = np.flatnonzero((ids < 0) | (ids >= V)) if ids.size else []
            if len(bad):
                raise InputError(f"token id {int(ids[bad[0]])} at {bad[0]} is outside [0, {V})")
        if len(ids) == 0:
            raise InputError("nothing to feed: the text or id sequence is empty")
        return ids.astype(np.int64, copy=False)

    # ------------------------------------------------------------------ reading

    def _predicts(self) -> bool:
        return self._logprobs is not None or self._top is not None

    def _current(self) -> np.ndarray:
        if self._logprobs is None and self._top is not None:  # after push(): compute it now
            _, logprobs = self._model._output.rows_log_probs(self._top)
            self._logprobs = _frozen(self._model._k.to_host(logprobs))[0]
        if self._logprobs is None:
            raise InputError("feed at least one token first: the stream has no prediction yet")
        if not isinstance(self._logprobs, np.ndarray):  # still on the device
            self._logprobs = _frozen(self._model._k.to_host(self._logprobs))[...]
        return self._logprobs

    def _token_id(self, token) -> int:
        if isinstance(token, int | np.integer) and not isinstance(token, bool):
            if not 0 <= token < self._model.config.vocab_size:
                raise InputError(f"token id {token} outside the vocabulary")
            return int(token)
        if self._vocab is None:
            raise InputError("this model has no vocabulary: ask by token id")
        return self._vocab.id(token)  # raises VocabularyError, or gives <unk>'s id

    def _name(self, i: int):
        return self._vocab.token(i) if self._vocab is not None else i

    def _parts(self, clusters) -> tuple[np.ndarray, np.ndarray]:
        """An adaptive softmax's head log-probabilities (S + n,) and log p (V,) of the
        shortlist and of the given clusters (other entries unset), on the host."""
        if self._top is None:
            self._current()  # raises: no prediction yet
        out = self._model._output
        want = np.zeros(len(out.clusters), np.uint8)
        want[list(clusters)] = 1
        head, logprobs = out.rows_log_probs(self._top, want)
        k = self._model._k
        return k.to_host(head)[0], k.to_host(logprobs)[0]

    def logprob(self, token) -> float:
        """log p(token | everything fed); token is a str of the vocabulary or an id."""
        i = self._token_id(token)
        if self._logprobs is None and self._top is not None:  # after push(): a part
            cluster = self._model._output.cluster_of(i)
            return float(self._parts([cluster] if cluster >= 0 else [])[1][i])
        return float(self._current()[i])

    def prob(self, token) -> float:
        return float(np.exp(np.float64(self.logprob(token))))

    def top(self, k: int = 10) -> list[tuple]:
        """The k likeliest next tokens as [(token, probability)], likeliest first."""
        k = max(1, min(int(k), self._V))
        if self._logprobs is None and self._top is not None:  # after push(): a part
            lp, idx = self._top_parts(k)
        else:
            lp = self._current()
            idx = np.argpartition(-lp, k - 1)[:k]
        idx = idx[np.lexsort((idx, -lp[idx]))]
        return [(self._name(int(i)), float(np.exp(np.float64(lp[i])))) for i in idx]

    def _top_parts(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(log p with the shortlist and every cluster that may hold one of the k likeliest
        tokens, k candidate ids) from the head and those clusters only. A cluster's words
        are no likelier than the cluster (float32 rounding keeps p + q <= p for q <= 0),
        so a cluster below the shortlist's k-th log-probability holds none of them."""
        out = self._model._output
        head, _ = self._parts([])
        S = out.shortlist
        kth = np.partition(head[:S], S - k)[S - k] if k <= S else -np.inf
        wanted = [i for i in range(len(out.clusters)) if head[S + i] >= kth]
        _, lp = self._parts(wanted)
        ids = np.concatenate([np.arange(S)] + [np.arange(*out.clusters[i]) for i in wanted])
        return lp, ids[np.argpartition(-lp[ids], k - 1)[:k]]

    def sample(self, temperature: float = 1.0, top_k=None, top_p=None, seed=None):
        """Draw the next token (str, or id without a vocabulary); does not feed it.

        temperature > 0 scales the log-probabilities; top_k keeps the k likeliest tokens;
        top_p keeps the fewest likeliest tokens whose probabilities sum to at least p.
        seed: an int or a numpy Generator for reproducible draws (default: the stream's
        own generator)."""
        rng = sampling.generator(seed, self._rng)
        sampling.check_sampling(temperature, top_k, top_p)
        if self._in_parts(temperature, top_k, top_p):
            return self._name(self._draw_in_parts(rng))
        return self._name(sampling.draw(self._current(), temperature, top_k, top_p, rng))

    def _in_parts(self, temperature, top_k, top_p) -> bool:
        """Whether a draw goes cluster first, then word (an adaptive softmax, plain
        sampling): exactly the distribution, from the head and one cluster. A temperature,
        top_k or top_p reshape the whole distribution, which then is computed."""
        return (
            self._model._output.reads_parts
            and temperature == 1.0
            and top_k is None
            and top_p is None
        )

    def _draw_in_parts(self, rng) -> int:
        """One draw of an adaptive softmax's distribution: a head entry (a shortlist id,
        or a cluster), then a word of the cluster drawn, each by the inverse of its
        cumulative distribution (one uniform each)."""
        out = self._model._output
        S = out.shortlist
        if self._top is None:  # restored, or a StreamBatch's step: from the distribution
            lp = self._current().astype(np.float64)
            clusters = [np.log(np.exp(lp[a:b]).sum()) for a, b in out.clusters]
            head = np.concatenate([lp[:S], clusters])
        else:
            head, _ = self._parts([])
        j = sampling.inverse_cdf(head, rng)
        if j < S:
            return j
        low, high = out.clusters[j - S]
        words = lp if self._top is None else self._parts([j - S])[1]
        return low + sampling.inverse_cdf(words[low:high], rng)

    def generate(
        self,
        prompt=None,
        max_tokens: int = 100,
        stop=None,
        temperature: float = 1.0,
        top_k=None,
        top_p=None,
        seed=None,
    ) -> Iterator:
        """Feed the prompt (if any), then yield up to max_tokens sampled tokens as they are
        produced, feeding each back. stop: a string (or list of them); generation ends
        once the generated text ends with one (text models). The same seed, prompt and
        state give the same tokens."""
        rng = sampling.generator(seed, self._rng)
        if isinstance(stop, str):
            stop = [stop]
        sampling.check_sampling(temperature, top_k, top_p)
        if prompt is not None and not (isinstance(prompt, str) and prompt == ""):
            self.feed(prompt)
        if not self._predicts():
            self._current()  # raises: nothing to predict from yet
        generated: list[int] = []
        device = sampling.device_sampler(self._model._k)
        parts = self._in_parts(temperature, top_k, top_p)
        for _ in range(int(max_tokens)):
            if parts:  # the head and the drawn cluster; the next step without the rest
                i = self._draw_in_parts(rng)
                self._push(np.array([i], np.int64))
            else:
                if device is None:
                    # (the arguments were checked above)
                    i = sampling.draw(self._current(), temperature, top_k, top_p, rng)
                else:
                    i = device(self._logprobs, temperature, top_k, top_p, rng)
                self._advance(np.array([i], np.int64), to_host=device is None)
            token = self._name(i)
            yield token
            if stop and self._vocab is not None:
                generated.append(i)
                # decode everything generated so far: words need their separators
                text = self._vocab.decode(np.array(generated, np.int64))
                if any(text.rstrip("\n").endswith(s) or text.endswith(s) for s in stop):
                    return


class StreamBatch:
    """Advance many independent Streams of one model together, one model call per step.

    Each Stream keeps its own state and position; a step takes one token for each of any
    subset of them (streams join by being passed, and leave by not being passed), gathers
    their states, runs the model once for all, and gives each its new state. This is how a
    server serves many users.

    Up to ``blas_from - 1`` streams a step is the streaming kernel (hand-written
    matrix-vector products; the results equal feeding each Stream alone, exactly). From
    ``blas_from`` streams on it is the model's batched forward pass, whose matrix products
    go to BLAS (LSTM 2x200, V=10000: at 8 streams the kernel is faster, at 64 BLAS, 14,500
    against 9,500 tokens/s); the results then equal a lone Stream's to float32 rounding
    (the products sum in another order), not bit for bit.

    blas_from defaults to 32 on the cpu backend, except for an int8 model, whose every
    step is its int8 streaming kernel (its batched forward runs a float32 copy of the
    weights: see rnnlm_engine.quantized). On cuda every step is the streaming
    kernel, which runs any number of streams in one launch (each weight row read once for
    up to 4 streams at a time), where the batched forward would launch several kernels per
    layer.
    """

    def __init__(self, model, blas_from: int | None = None):
        self._model = model
        if blas_from is None:
            batched = model.backend == "cpu" and model.weight_storage == "float32"
            blas_from = 32 if batched else 1 << 62
        self.blas_from = blas_from

    def stream(self) -> Stream:
        """A new Stream of this batch's model (a plain Stream: it may also feed alone)."""
        return Stream(self._model)

    def step(self, pairs) -> list[np.ndarray]:
        """pairs: [(stream, token)], token a str of the vocabulary or an int id (one token
        per stream, each stream at most once). Returns each stream's next-token
        log-probabilities (V,), read-only, in the order given. If anything is invalid
        nothing moves.

        The rows are views of one (N, V) array (no copy per stream): a row kept after
        its stream moves on keeps that whole array alive; keep np.array(row) instead."""
        pairs = list(pairs)
        if not pairs:
            raise InputError("a step needs at least one (stream, token) pair")
        model = self._model
        V = model.config.vocab_size
        streams = []
        ids = np.empty(len(pairs), np.int64)
        for n, pair in enumerate(pairs):
            try:
                s, token = pair
            except (TypeError, ValueError):
                raise InputError(f"pair {n}: expected (stream, token); got {pair!r}") from None
            if not isinstance(s, Stream) or s._model is not model:
                raise InputError(f"pair {n}: not a Stream of this batch's model")
            streams.append(s)
            if type(token) is int and 0 <= token < V:  # the common case, checked at once
                ids[n] = token
            else:
                ids[n] = _one_token(s, n, token, V)
        if len({id(s) for s in streams}) != len(streams):
            raise InputError("a stream may take only one token per step")
        k = model._k
        h = k.gather_streams([s._h for s in streams])
        c = None if streams[0]._c is None else k.gather_streams([s._c for s in streams])
        if len(streams) >= self.blas_from:
            # the states are the streams' own, made by this model: no need to check them
            lp, state = model._forward_checked(ids[None, :], State(h, c))
            h_out, c_out, logprobs = state.h, state.c, lp[0]
        else:
            h_out, c_out, logprobs = streaming.step(model, ids.reshape(1, -1), h, c)
        hs = k.split_streams(h_out)
        cs = None if c_out is None else k.split_streams(c_out)
        # each stream's prediction is a read-only row of the step's (N, V) array; the rows
        # are tracked so that streams that sit out do not keep every step's array alive
        logprobs = _frozen(logprobs)
        _SharedRows.let_go_all(streams)
        shared = _SharedRows(streams)
        for n, (s, token) in enumerate(zip(streams, ids.tolist(), strict=True)):
            # views of one copy of the step's states on the cpu backend: tracked with the
            # rows, since a stream replaces its state and its prediction together
            s._h = hs[n]
            s._c = None if cs is None else cs[n]
            s._logprobs = logprobs[n]
            s._top = None  # its draws go by the distribution (as after a restore)
            s._shared = shared.held_by(s)
            s._tokens.append(token)
        return [s._logprobs for s in streams]


class _SharedRows:
    """The rows of one StreamBatch step's (N, V) log-probabilities, which its N streams
    hold as their predictions: views, not copies. A copy per stream cost 0.3 ms of a
    3.3 ms step at 64 streams, and 1.2 of 11.6 ms at 256. On the cpu backend the streams'
    new states are likewise views of one copy (split_streams), and go with the rows.

    A stream lets go of its row when its prediction changes (feed, step, reset, restore)
    or when it dies. Once no more than a quarter of the rows are held, each stream still
    holding one gets a copy of it, and the step's array is no longer kept alive by
    streams. Streams that sit out thus keep less than four times their own rows alive,
    not the whole array of every step they took part in: with 512 idle sessions, that
    would be N times the memory.

    Streams are used from many threads (each by one). Once a stream holds a row, its
    _shared is cleared only under its block's lock, by the stream letting go or by a
    copy-out; a stream lets go before it replaces its state and prediction, so a copy-out
    never overwrites newer ones.
    """

    __slots__ = ("_lock", "_held", "_keep")

    def __init__(self, streams: list[Stream]):
        # reentrant: a stream can die (and _gone run) inside a copy-out, on this thread
        self._lock = threading.RLock()
        self._held: dict = {}  # weakref to a holding stream -> None
        self._keep = len(streams) // 4

    def held_by(self, stream: Stream) -> tuple:
        """Register stream as holding its row; returns its _shared value."""
        ref = weakref.ref(stream, self._gone)
        self._held[ref] = None
        return (self, ref)

    @staticmethod
    def let_go_all(streams: list[Stream]) -> None:
        """Every stream of a step lets go of its row, each block checked once (one by
        one, a block's last quarter of streams would be copied out just before their
        own rows are replaced)."""
        by_block: dict = {}
        for s in streams:
            shared = s._shared  # read once: another thread's copy-out may clear it
            if shared is not None:
                by_block.setdefault(shared[0], []).append((s, shared))
        for block, pairs in by_block.items():
            block.let_go(pairs)

    def let_go(self, pairs: list[tuple[Stream, tuple]]) -> None:
        """Each (stream, its _shared) lets go of its row of this block."""
        with self._lock:
            for stream, shared in pairs:
                if stream._shared is shared:  # else copied out meanwhile, by another thread
                    stream._shared = None
                    self._held.pop(shared[1], None)
            self._copy_out_if_sparse()

    def _gone(self, ref) -> None:  # a holding stream died (weakref callback)
        with self._lock:
            if ref in self._held:
                del self._held[ref]
                self._copy_out_if_sparse()

    def _copy_out_if_sparse(self) -> None:
        if len(self._held) > self._keep:
            return
        for ref in list(self._held):
            s = ref()
            if s is not None:
                s._logprobs = _read_only(s._logprobs)
                s._h, s._c = _own_state(s._h), _own_state(s._c)
                s._shared = None
        self._held.clear()


def _own_state(a):
    """A stream's state h or c as an array of its own: the cpu backend's split_streams
    hands out views of one copy for all a step's streams (cuda's are separate arrays)."""
    if isinstance(a, np.ndarray) and a.base is not None:
        return a.copy()
    return a


def _frozen(a: np.ndarray) -> np.ndarray:
    """a, a fresh array of the caller's own, read-only: the array that owns its memory is
    frozen too, so that no view of it can be made writable again by its own flag. (numpy
    cannot stop a caller who walks .base to the owner and unfreezes it on purpose.)"""
    owner = a
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    owner.flags.writeable = False
    a.flags.writeable = False
    return a


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only copy of a's values, as a view of the frozen copy (so that its own flag
    cannot be set back): a stream's prediction, which its top, prob and sample read."""
    return _frozen(np.array(a))[...]


def _one_token(stream: Stream, n: int, token, V: int) -> int:
    """The id of pair n's token (not a plain int in range): checked, with errors naming
    the pair."""
    if isinstance(token, int | np.integer) and not isinstance(token, bool):
        if not 0 <= token < V:
            raise InputError(f"pair {n}: token id {token} is outside [0, {V})")
        return int(token)
    try:
        one = stream._ids(token if isinstance(token, str) else [token])
    except (InputError, VocabularyError) as e:
        raise type(e)(f"pair {n}: {e}") from None
    if one.shape[0] != 1:
        raise InputError(f"pair {n}: {token!r} is {one.shape[0]} tokens, not one")
    return int(one[0])
