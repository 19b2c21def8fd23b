"""The recurrent language model: parameters, forward pass and gradients, on a backend.

Embedding E[V, E] -> L recurrent layers (rnn / gru / lstm) -> decoder W[V, H] + bias ->
log-softmax, with PyTorch word_language_model's parameter names and shapes. A Model is
immutable after construction: its arrays are read-only, and any number of threads may
call it at once (each thread has its own work arrays; kernels release the GIL).

Memory: besides its parameters, a model keeps a second copy of each recurrent matrix (in
the layout the cell forward reads fastest); from its first forward-only call, a (V, G)
table of layer 0's input projection when that stays under 128 MB; from its first
forward call of at most 256 rows (StreamBatch), a transposed copy of the decoder.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import ModuleType

import numpy as np

from . import modelfile
from .backend import get_backend
from .config import CELLS, ModelConfig
from .errors import ConfigError, InputError, ModelFileError, ParameterError, VocabularyError
from .inputs import check_ids, check_masks, check_pair, check_state
from .optim import RowSparse
from .output import make_output
from .params import (
    as_array,
    check_sums_fit_float32,
    infer_config,
    validated_params,
)
from .state import Saved as _Saved
from .state import State
from .vocab import Vocabulary

# Forward-only passes read layer 0's input projection E[id] W_ih0^T + b_ih0 from a (V, G)
# table built on first use, instead of the embedding lookup and a (T*B, E) x (E, G)
# product per call (1.2 ms of a 28 ms scoring pass at V=10000, B=20, T=35; and the
# whole W_ih0 read per token when streaming). Built only while it stays under this size
# (32 MB for V=10000 and an LSTM of 200 units; 104 MB for 650 units).
_INPUT_TABLE_MAX_BYTES = 128 << 20


def _has_input_table(config) -> bool:
    """Whether layer 0's input projection comes from a (V, G) table (see _layer0_table)."""
    return config.vocab_size * config.gate_rows * 4 <= _INPUT_TABLE_MAX_BYTES


class _Workspace(threading.local):
    """Work arrays kept between calls, one set per calling thread.

    Fresh arrays of megabytes come from the operating system as untouched pages, and the
    first write to each page faults: 3,500 faults per training step of an LSTM 2x200 at
    V=65, which made the element-wise step kernels 4x slower than on reused memory. Each
    thread keeps the arrays of its latest call shape (about T*B*(V + 12H) floats for an
    LSTM); ``Model.release_workspace()`` frees the calling thread's.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        # the streaming kernel's scratch for the latest number of streams N, as
        # (N, (c0, gx, gh, logits)): only the latest, like the arrays above
        self.stream_scratch: tuple | None = None


class Model:
    """A recurrent language model. Build one with ``Model.from_state_dict``."""

    # how the weight matrices are stored: "float32", or "int8" (QuantizedModel)
    weight_storage = "float32"

    def __init__(
        self,
        config: ModelConfig,
        params: dict[str, np.ndarray],
        backend: str | None = None,
        vocab=None,
        metadata: dict | None = None,
    ):
        self._init_common(config, backend, vocab, metadata)
        host_params = validated_params(config, params)
        self._recurrent_bounds = check_sums_fit_float32(config, host_params, self._output)
        # aligned for the kernels' vector loads (the CPU copies where numpy's were not), and
        # read-only on the backend too
        self._params = {
            name: self._k.freeze(self._k.to_device_aligned(a)) for name, a in host_params.items()
        }
        # a second copy of each layer matrix that the forward products read once per step or
        # window, in the layout they prefer (on the CPU: BLAS reads W^T without repacking
        # it; LSTM, 64 rows, H=200: x W_ih^T in 116 us against 159 us). Layer 0's W_ih only
        # where no input table replaces it (then only training reads it, over many rows)
        L = config.num_layers
        first_ih = 1 if _has_input_table(config) else 0
        names = [f"rnn.weight_hh_l{i}" for i in range(L)]
        names += [f"rnn.weight_ih_l{i}" for i in range(first_ih, L)]
        self._forward_weights = {
            name: self._k.freeze(self._k.forward_layout(self._params[name])) for name in names
        }

    def _init_common(self, config: ModelConfig, backend, vocab, metadata) -> None:
        """What every model has besides its parameters (QuantizedModel shares it)."""
        if not isinstance(config, ModelConfig):
            raise ConfigError(
                f"config must be a ModelConfig; got {type(config).__name__} (a dict: "
                "ModelConfig.from_dict(d))"
            )
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ConfigError(f"metadata must be a dict; got {type(metadata).__name__}")
        if vocab is not None and len(vocab) != config.vocab_size:
            raise ConfigError(
                f"the vocabulary has {len(vocab)} tokens but the model's vocab_size is "
                f"{config.vocab_size}"
            )
        self._config = config
        self._vocab = vocab
        self._metadata = dict(metadata or {})
        self._k: ModuleType = get_backend(backend)
        self._output = make_output(self)  # the output layer's contract: see output.py
        self._ws = _Workspace()
        # what is derived from the parameters, built on first use (see _cached): the
        # layer-0 input table, the streaming weights, the transposed decoder, the fingerprint
        self._derived: dict = {}
        self._derived_lock = threading.RLock()  # a build may ask for another (reentrant)
        self._forward_weights: dict = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_state_dict(
        cls,
        state_dict: dict[str, np.ndarray],
        cell: str = "lstm",
        tied: bool = False,
        backend: str | None = None,
        vocab=None,
        residual: bool = False,
    ) -> Model:
        """Build a model from name -> array, PyTorch word_language_model names and shapes.

        The sizes are read from the arrays; ``cell``, ``tied`` and ``residual`` (see
        ModelConfig) cannot be. For a tied model ``decoder.weight`` may be absent or equal
        to ``encoder.weight``.
        Raises ConfigError or ParameterError naming what is missing or wrong.
        """
        if not isinstance(state_dict, dict):
            raise ParameterError(
                f"state_dict must be a dict of name -> array; got {type(state_dict).__name__}"
            )
        if cell not in CELLS:
            raise ConfigError(f"cell must be one of {', '.join(CELLS)}; got {cell!r}")
        if not isinstance(residual, bool):
            raise ConfigError(f"residual must be True or False; got {residual!r}")
        config = infer_config(state_dict, cell, tied, residual)
        params = dict(state_dict)
        if tied and "decoder.weight" in params:
            enc = as_array("encoder.weight", params["encoder.weight"])
            dec = as_array("decoder.weight", params.pop("decoder.weight"))
            if dec.shape != enc.shape or not np.array_equal(dec, enc, equal_nan=True):
                raise ParameterError(
                    "tied=True but decoder.weight differs from encoder.weight; "
                    "pass tied=False for a model with separate decoder weights"
                )
        return cls(config, params, backend, vocab=vocab)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Name -> float32 copy. Tied models list decoder.weight too (a copy of the
        encoder's), as PyTorch's state_dict does, so torch's load_state_dict accepts it."""
        out = {name: np.array(self._k.to_host(a)) for name, a in self._params.items()}
        if self._config.tied:
            out["decoder.weight"] = out["encoder.weight"].copy()
        return out

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def vocab(self):
        """The model's Vocabulary (from its file or given at construction), or None."""
        return self._vocab

    @property
    def metadata(self) -> dict:
        """Metadata from the model's file (training metrics, ...); empty if none."""
        return dict(self._metadata)

    def save(self, path, metadata: dict | None = None, training: dict | None = None) -> None:
        """Write the model (weights, config, vocabulary, metadata) to a model file,
        atomically: a crash during the write leaves any previous file at path intact.
        training: the state a checkpoint adds (see docs/FORMAT.md; written by train)."""
        modelfile.save(
            path,
            config=self._config,
            tensors=self._parameters(),
            vocab=None if self._vocab is None else self._vocab.to_dict(),
            metadata=self._metadata if metadata is None else metadata,
            training=training,
        )

    def quantize(self, kind: str = "int8"):
        """A new immutable int8 model of this one: every weight matrix as int8 rows with
        one float32 scale per row (symmetric, round to nearest), biases float32; about 4x
        smaller, for inference (streams run int8 kernels). See rnnlm_engine.quantized."""
        from .quantized import quantize_model

        return quantize_model(self, kind)

    def nbytes(self) -> int:
        """Bytes of the parameters as the model holds them (tied: the matrix once)."""
        return sum(int(a.nbytes) for a in self._params.values())

    def _parameters(self) -> dict[str, np.ndarray]:
        """Name -> host array of every parameter (no copies; tied: no decoder.weight)."""
        return {name: self._k.to_host(a) for name, a in self._params.items()}

    @property
    def backend(self) -> str:
        return self._k.NAME

    def __repr__(self) -> str:
        c = self._config
        return (
            f"Model({c.cell} {c.num_layers}x{c.hidden_size}, emb {c.emb_size}, "
            f"vocab {c.vocab_size}{', tied' if c.tied else ''}"
            f"{', residual' if c.residual else ''}, backend {self.backend!r})"
        )

    def _apply_update(self, update) -> None:
        """For training only (a model being trained is not shared): update(params) changes
        the parameter arrays in place; the copies derived from them are then refreshed.
        The weights are not re-checked here; ``_check_bounds()`` does that."""
        k = self._k
        arrays = list(self._params.values()) + list(self._forward_weights.values())
        for a in arrays:
            k.thaw(a)
        try:
            update(self._params)
            for name, w in self._forward_weights.items():
                k.copy(w, self._params[name])
            with self._derived_lock:
                self._derived.clear()
        finally:
            for a in arrays:
                k.freeze(a)

    def _check_bounds(self) -> None:
        """Raise ParameterError if the current weights could overflow float32 (after
        training updates: see check_sums_fit_float32)."""
        host = {name: np.asarray(self._k.to_host(a)) for name, a in self._params.items()}
        if not all(np.all(np.isfinite(a)) for a in host.values()):
            raise ParameterError("the weights contain NaN or infinity")
        self._recurrent_bounds = check_sums_fit_float32(self._config, host, self._output)

    def _batch_model(self) -> Model:
        """The model whose float32 parameters batch passes and the inspection tools
        (trace, attributions, gradients by lag) read: this one; a QuantizedModel's float32
        model of its dequantized weights. Code outside this class that reads _params,
        _output or the layers' passes asks for it first."""
        return self

    def release_workspace(self) -> None:
        """Free the work arrays this model keeps for the calling thread."""
        self._ws.arrays.clear()
        self._ws.stream_scratch = None

    def zero_state(self, batch: int) -> State:
        if isinstance(batch, bool) or not isinstance(batch, int | np.integer) or batch < 1:
            raise InputError(f"batch must be a positive integer; got {batch!r}")
        c = self._config
        shape = (c.num_layers, int(batch), c.hidden_size)
        return State(
            self._k.zeros(shape, np.float32),
            self._k.zeros(shape, np.float32) if c.cell == "lstm" else None,
        )

    # ------------------------------------------------------------------ public passes

    def forward(self, ids, state=None) -> tuple[np.ndarray, State]:
        """ids (T, B) ints in [0, V) -> (logprobs (T, B, V) float32, final State).

        logprobs[t, b] is the log-softmax of the next-token distribution after ids[t, b].
        """
        ids = check_ids(self, ids, "ids")
        state = check_state(self, state, ids.shape[1])
        return self._forward_checked(ids, state)

    def _forward_checked(
        self, ids: np.ndarray, state: State, saved: _Saved | None = None
    ) -> tuple[np.ndarray, State]:
        """forward() on ids (T, B) int64 and a State on the backend that the caller has
        checked (StreamBatch: the states of its streams, produced by this model). saved:
        a _Saved to fill with each layer's states and activations (inspection; they are
        this thread's work arrays, overwritten by its next call)."""
        T, B = ids.shape
        top, new_state = self._forward_layers(ids, state, saved)
        return self._output.log_probs(top).reshape(T, B, -1), new_state

    def token_logprobs(self, inputs, targets, state=None) -> tuple[np.ndarray, State]:
        """Scoring pass: (log p(targets[t, b] | history) as (T, B) float32, final State).

        Computes the log-normaliser of every row but never writes the (T, B, V) matrix of
        log-probabilities.
        """
        inputs, targets = check_pair(self, inputs, targets)
        state = check_state(self, state, inputs.shape[1])
        T, B = inputs.shape
        top, new_state = self._forward_layers(inputs, state, None)
        nll = self._work("nll", (T * B,))
        self._output.target_nll(top, self._k.to_device(targets.reshape(-1)), nll)
        return -self._k.to_host(nll).reshape(T, B), new_state  # negation: a fresh array

    def loss_and_grad(
        self, inputs, targets, state=None, dropout_masks=None, row_sparse=False
    ) -> tuple[float, dict, State]:
        """Mean next-token cross-entropy in nats over all T * B positions and its gradients.

        inputs, targets: (T, B) ints in [0, V). Returns (loss, grads, final State); grads
        maps each parameter name (as in ``config.parameter_shapes()``) to a float32 array;
        for tied weights the encoder's gradient holds both uses. The initial state is a
        constant (truncated BPTT): carry the returned state into the next window.

        dropout_masks: None, or the L + 1 masks of ``dropout_masks(T, B, p, rng)``: mask k
        multiplies the input of layer k (the embeddings for k = 0), mask L the top layer's
        output before the decoder (PyTorch word_language_model's dropout placement).

        row_sparse: give the embedding's gradient as an ``optim.RowSparse`` of the rows the
        inputs touch (the same values; untied models only, else it stays dense), for the
        optimizers that take one (SGD): a dense one is mostly zeros.
        """
        inputs, targets = check_pair(self, inputs, targets)
        state = check_state(self, state, inputs.shape[1])
        masks = check_masks(self, dropout_masks, *inputs.shape)
        k, c = self._k, self._config
        T, B = inputs.shape
        N = T * B
        saved = _Saved()
        top, new_state = self._forward_layers(inputs, state, saved, masks)
        targets = k.to_device(targets.reshape(-1))
        nll, grads, dx = self._output.loss_and_backward(top, targets, 1.0 / N)
        loss = float(np.sum(k.to_host(nll), dtype=np.float64) / N)
        if masks is not None:
            k.multiply(dx, masks[c.num_layers], out=dx)

        residual = c.residual_layers
        for layer in reversed(range(c.num_layers)):
            dout = dx  # the gradient on the layer's output: its cell's h (and input if residual)
            dx = self._layer_backward(layer, dout, state, saved, grads)
            if residual[layer]:
                k.add(dx, dout, out=dx)
            if masks is not None:
                k.multiply(dx, masks[layer], out=dx)

        # tied: the output's gradient on encoder.weight, which the embedding's adds to
        d_enc = grads.get("encoder.weight")
        if d_enc is None and row_sparse:
            # the same scatter into a compact array of the touched rows (a row's additions
            # in the same order as into the dense one, so the same values)
            rows, where = np.unique(inputs.reshape(-1), return_inverse=True)
            values = k.zeros((len(rows), c.emb_size), np.float32)
            k.embedding_backward(k.to_device(where.astype(np.int64)), dx, values)
            grads["encoder.weight"] = RowSparse(k.to_device(rows.astype(np.int64)), values)
        else:
            if d_enc is None:
                d_enc = k.zeros((c.vocab_size, c.emb_size), np.float32)
            k.embedding_backward(k.to_device(inputs.reshape(-1)), dx, d_enc)
            grads["encoder.weight"] = d_enc
        return loss, {name: grads[name] for name in c.parameter_shapes()}, new_state

    def dropout_masks(self, T: int, B: int, p: float, rng: np.random.Generator) -> list:
        """L + 1 inverted-dropout masks for loss_and_grad: each element is 0 with
        probability p, else 1 / (1 - p); (T, B, E) for the embeddings, (T, B, H) for the
        output of each layer. Drawn from rng in a fixed order (reproducible)."""
        for name, v in (("T", T), ("B", B)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise InputError(f"{name} must be a positive integer; got {v!r}")
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
            raise InputError(f"dropout probability must be a number in [0, 1); got {p!r}")
        c = self._config
        widths = [c.emb_size] + [c.hidden_size] * c.num_layers
        keep = np.float32(1.0 / (1.0 - p))
        masks = []
        for width in widths:
            kept = rng.random((T, B, width), dtype=np.float32) >= np.float32(p)
            masks.append(kept.astype(np.float32) * keep)
        return masks

    # ------------------------------------------------------------------ internals

    def _forward_layers(self, ids, state: State, saved: _Saved | None, masks=None, emb=None):
        """Embedding and every recurrent layer. Returns (top (T*B, H), final State).

        masks: dropout masks (flat (T*B, width) views), for training passes only. emb: the
        layer-0 inputs (T*B, E) on the backend in place of the ids' embeddings (inspection:
        attributions scale them); ids then only give (T, B)."""
        k, p, c = self._k, self._params, self._config
        T, B = ids.shape
        H, G = c.hidden_size, c.gate_rows
        table = self._layer0_table() if saved is None and emb is None else None
        residual = c.residual_layers
        ids = k.to_device(ids.reshape(-1))
        if emb is not None:
            x = emb
        elif table is None or residual[0]:  # a residual layer 0 adds the embeddings
            x = self._work("emb", (T * B, c.emb_size))
            k.embedding_forward(p["encoder.weight"], ids, x)
            if masks is not None:
                k.multiply(x, masks[0], out=x)
        h_final = k.empty((c.num_layers, B, H), np.float32)
        c_final = k.empty((c.num_layers, B, H), np.float32) if c.cell == "lstm" else None
        forward = k.CELL_FORWARD[c.cell]
        acts_width = k.ACTS_PER_HIDDEN[c.cell] * H
        for layer in range(c.num_layers):
            xproj = self._work(f"xproj{layer}", (T * B, G))
            if layer == 0 and table is not None:
                k.embedding_forward(table, ids, xproj)
            else:
                name = f"rnn.weight_ih_l{layer}"
                w_ih = self._forward_weights.get(name, p[name])
                k.matmul(x, w_ih, out=xproj, trans_b=True)
                k.add_bias(xproj, p[f"rnn.bias_ih_l{layer}"])
            hs = self._work(f"hs{layer}", (T, B, H))
            cs = self._work(f"cs{layer}", (T, B, H)) if c_final is not None else None
            acts = self._work(f"acts{layer}", (T, B, acts_width)) if acts_width else None
            c0 = state.c[layer] if state.c is not None else None
            forward(
                xproj.reshape(T, B, G),
                self._forward_weights[f"rnn.weight_hh_l{layer}"],
                p[f"rnn.bias_hh_l{layer}"],
                state.h[layer],
                c0,
                hs,
                cs,
                acts,
            )
            if saved is not None:
                saved.layer_inputs.append(x)
                saved.xprojs.append(xproj)
                saved.hs.append(hs)
                saved.cs.append(cs)
                saved.acts.append(acts)
            k.copy(h_final[layer], hs[T - 1])
            if c_final is not None:
                k.copy(c_final[layer], cs[T - 1])
            out = hs.reshape(T * B, H)
            if residual[layer]:  # output = h + input, in its own array (backward reads hs)
                out = k.add(out, x, out=self._work(f"residual{layer}", out.shape))
            x = out
            if masks is not None:  # into a copy: the cell's backward needs hs itself
                x = k.multiply(x, masks[layer + 1], out=self._work(f"dropped{layer}", x.shape))
        return x, State(h_final, c_final)

    def score(
        self,
        text_lines_or_path,
        mode: str = "sentence",
        per_token: bool = False,
        batch_size: int = 64,
        errors: str = "strict",
    ):
        """Score text: a str (a sentence, or lines separated by "\\n"), an iterable of
        lines (str), or a pathlib.Path to a UTF-8 file (a str is always text, never a file
        name). mode "sentence" scores each line from a fresh state, "corpus" carries the
        state across lines (see rnnlm_engine.scoring). Returns an iterator of LineScore
        (log-probability in nats, tokens, OOV count; per-token log-probs and OOV flags if
        per_token), with running totals in its ``total`` (tokens, logprob, perplexity)."""
        from .scoring import score

        return score(self, text_lines_or_path, mode, per_token, batch_size, errors)

    def trace(self, text_or_ids, top_k: int = 5, layers=None, units=None, chunk: int = 1024):
        """What the model computes over a text: each token's log-probability, rank and the
        entropy of the prediction before it, the top_k alternatives, and per layer the
        states (h; c for lstm) and gates (lstm i, f, g, o; gru r, z, n). layers, units:
        keep only these (memory); chunk: tokens per pass. See rnnlm_engine.inspection."""
        from .inspection import trace

        return trace(self, text_or_ids, top_k=top_k, layers=layers, units=units, chunk=chunk)

    def attribution(
        self, text_or_ids, position: int, method: str = "input_x_gradient", steps: int = 20,
        window: int | None = None,
    ):  # fmt: skip
        """How much each token before `position` contributed to log p(token at position):
        method "input_x_gradient" or "integrated_gradients" (from a zero-embedding
        baseline, `steps` midpoints); window: only the last `window` tokens before it. An
        Attribution; see rnnlm_engine.attribution."""
        from .attribution import attribution

        return attribution(self, text_or_ids, position, method, steps, window)

    def gradient_by_lag(self, text_or_ids, max_lag: int = 50, positions: int = 500):
        """The mean norm of d log p(x_t) / d h (each layer's state) k steps back, k = 0..
        max_lag, over up to `positions` positions of the text, and the largest singular
        values of the recurrent matrices: a LagProfile; see rnnlm_engine.attribution."""
        from .attribution import gradient_by_lag

        return gradient_by_lag(self, text_or_ids, max_lag, positions)

    def stream(self):
        """A new Stream: feed tokens one at a time, get next-token probabilities."""
        from .stream import Stream

        return Stream(self)

    def fingerprint(self) -> str:
        """A digest of the config and every weight (an int8 model's scales too): equal
        models, equal fingerprints (snapshots of one model's streams are refused by
        another)."""

        def build():
            import hashlib

            k = self._k
            h = hashlib.sha256(repr(sorted(self._config.to_dict().items())).encode())
            for name in sorted(self._params):
                h.update(name.encode())
                h.update(np.ascontiguousarray(k.to_host(self._params[name])).tobytes())
                h.update(np.ascontiguousarray(k.to_host(self._scale(name))).tobytes())
            return h.hexdigest()[:32]

        return self._cached("fingerprint", build)

    def _cached(self, name: str, build):
        """The derived value `name`, built by the first thread to ask (others wait for it)
        and kept until a training update clears them all."""
        value = self._derived.get(name)
        if value is None:
            with self._derived_lock:
                value = self._derived.get(name)
                if value is None:
                    value = self._derived[name] = build()
        return value

    def _has_input_table(self) -> bool:
        """Whether layer 0's input projection comes from a table (see _layer0_table)."""
        return _has_input_table(self._config)

    def _scale(self, name: str):
        """The per-row scales of parameter `name` as the streaming kernels take them: an
        empty (0,) array for a float32 matrix (QuantizedModel: its (rows,) scales)."""
        return self._cached("no_scales", lambda: self._k.freeze(self._k.empty(0, np.float32)))

    def _dequantized(self, name: str):
        """Parameter `name` as float32 on the backend (QuantizedModel: dequantized)."""
        return self._params[name]

    def _layer0_table(self):
        """The (V, G) table of layer 0's input projection for every token, or None when
        it would exceed _INPUT_TABLE_MAX_BYTES. Built once, by the first thread to ask."""
        c = self._config
        if not self._has_input_table():
            return None

        def build():
            k, w = self._k, self._dequantized
            table = k.empty((c.vocab_size, c.gate_rows), np.float32)
            k.matmul(w("encoder.weight"), w("rnn.weight_ih_l0"), out=table, trans_b=True)
            k.add_bias(table, self._params["rnn.bias_ih_l0"])
            return k.freeze(table)

        return self._cached("input_table", build)

    def _work(self, name: str, shape: tuple) -> np.ndarray:
        """The calling thread's float32 work array `name`, (re)allocated to `shape`."""
        arrays = self._ws.arrays
        a = arrays.get(name)
        if a is None or a.shape != shape:
            a = arrays[name] = self._k.empty(shape, np.float32)
        return a

    def _layer_backward(self, layer, dx, state: State, saved: _Saved, grads) -> np.ndarray:
        """dx (T*B, H): gradient on this layer's outputs -> gradient on its inputs. grads:
        the dict to put the layer's weight gradients in, or None to skip the products that
        only they need (inspection asks for gradients on states and inputs alone)."""
        k, p, c = self._k, self._params, self._config
        hs, cs, acts = saved.hs[layer], saved.cs[layer], saved.acts[layer]
        T, B, H = hs.shape
        G = c.gate_rows
        dxproj = saved.xprojs[layer].reshape(T, B, G)  # the forward's buffer, reused
        dw_hh = k.empty((G, H), np.float32)
        db_hh = k.empty(G, np.float32)
        dh0 = k.empty((B, H), np.float32)
        dc0 = k.empty((B, H), np.float32) if cs is not None else None
        c0 = state.c[layer] if state.c is not None else None
        k.CELL_BACKWARD[c.cell](
            p[f"rnn.weight_hh_l{layer}"],
            state.h[layer],
            c0,
            hs,
            cs,
            acts,
            dx.reshape(T, B, H),
            None,
            dxproj,
            dw_hh,
            db_hh,
            dh0,
            dc0,
        )
        flat = dxproj.reshape(T * B, G)
        x_in = saved.layer_inputs[layer]
        if grads is not None:
            grads[f"rnn.weight_hh_l{layer}"] = dw_hh
            grads[f"rnn.bias_hh_l{layer}"] = db_hh
            grads[f"rnn.weight_ih_l{layer}"] = k.matmul(flat, x_in, trans_a=True)
            grads[f"rnn.bias_ih_l{layer}"] = k.column_sums(flat)
        return k.matmul(
            flat, p[f"rnn.weight_ih_l{layer}"], out=self._work(f"dx{layer}", x_in.shape)
        )


def load(
    path, backend: str | None = None, *, max_header_bytes: int = modelfile.DEFAULT_MAX_HEADER_BYTES
) -> Model:
    """A Model from a model file (weights, config, vocabulary, metadata).

    max_header_bytes: a larger header (vocabulary, metadata) is refused; raise it for a
    trusted file with a vocabulary of more than about 1.5M words (see modelfile.load).
    Raises ModelFileError naming the file for any defect of the file, including weights
    that the Model itself refuses (so that a caller needs to handle one error class).
    """
    f = modelfile.load(path, max_header_bytes=max_header_bytes)
    try:
        vocab = None if f.vocab is None else Vocabulary.from_dict(f.vocab)
        if f.scales is not None:  # an int8 model file
            from .quantized import QuantizedModel

            return QuantizedModel(
                f.config, dict(f.tensors), dict(f.scales), backend, vocab=vocab,
                metadata=f.metadata,
            )  # fmt: skip
        return Model(f.config, dict(f.tensors), backend, vocab=vocab, metadata=f.metadata)
    except (ParameterError, ConfigError, VocabularyError) as e:
        raise ModelFileError(f"{path}: {e}") from None
