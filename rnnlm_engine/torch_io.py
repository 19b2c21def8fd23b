"""PyTorch word_language_model checkpoints in and out (``rnnlm import-torch`` and
``rnnlm export-torch``); torch is an optional extra (``pip install 'rnnlm-engine[torch]'``).

Import reads what word_language_model's ``main.py`` writes: a state_dict
(``torch.save(model.state_dict(), f)``), or the whole model (``torch.save(model, f)``, its
default). A state_dict loads with ``torch.load(..., weights_only=True)``, which builds
tensors and plain containers only. A whole model is a pickle, and unpickling runs whatever
code the file names: it loads only when the caller says it trusts the file
(``trust_pickle``), and then needs word_language_model's ``model.py`` importable, as
torch itself does. The parameter names and shapes are the engine's own (DESIGN.md), so the
weights go in as they are; the cell comes from the whole model's ``rnn_type``, or from the
shapes (4 or 3 gate blocks: LSTM or GRU; one: a tanh RNN, which only the caller can tell
from a ReLU one, by ``cell="rnn"``); tying from decoder.weight being encoder.weight.

The vocabulary: word_language_model keeps none in its checkpoint; its ``Corpus`` numbers
the words of train.txt, valid.txt and test.txt in order of first appearance, each line's
words followed by "<eos>". ``corpus_vocabulary`` rebuilds exactly that; ``read_token_list``
reads one token per line (or a vocabulary's JSON, as export writes it).

Export writes the state_dict (float32 tensors, word_language_model's names; a tied model
lists decoder.weight too, as torch's state_dict does) and the vocabulary beside it as
JSON (``{"kind": ..., "tokens": [...]}``), for a plain float32 model: word_language_model
has no adaptive softmax or residual layers, and an int8 model is refused (dequantize it).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError, ModelFileError, ParameterError, VocabularyError
from .model import Model
from .vocab import EOS, Vocabulary, read_text

TORCH_EXTRA = "pip install 'rnnlm-engine[torch]'"
# word_language_model's rnn_type -> the engine's cell
RNN_TYPES = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn"}
VOCAB_SUFFIX = ".vocab.json"


def torch_module():
    """torch, or a ConfigError naming the extra that brings it."""
    try:
        import torch
    except ImportError:
        raise ConfigError(f"PyTorch checkpoints need torch: {TORCH_EXTRA}") from None
    return torch


def read_checkpoint(path, *, trust_pickle: bool = False) -> tuple[dict, dict]:
    """(name -> float32 array, what the file says of the architecture: {"cell": ...}
    for a whole model) of a word_language_model checkpoint. Raises InputError for a file
    that is no such checkpoint, or a whole model without trust_pickle."""
    torch = torch_module()
    shown = os.fsdecode(os.fspath(path))
    if not Path(shown).is_file():
        raise InputError(f"{shown}: no such file")
    try:
        with warnings.catch_warnings():  # torch's advice on pickles: ours is below
            warnings.simplefilter("ignore")
            obj = torch.load(shown, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        if not trust_pickle:
            raise InputError(
                f"{shown} does not load as a state_dict with weights_only=True "
                f"({_first_line(e)}). If it is a whole model saved by word_language_model's "
                "main.py (torch.save(model, f)), it is a pickle, and loading it runs any "
                "code it names: pass --trust-pickle (trust_pickle=True) only for a file "
                "you trust, with word_language_model's model.py importable"
            ) from None
        obj = _load_pickle(torch, shown)
    hints = {}
    if isinstance(obj, torch.nn.Module):
        rnn_type = getattr(obj, "rnn_type", None)
        if rnn_type not in RNN_TYPES:
            raise InputError(
                f"{shown}: a model of type {rnn_type!r} ({type(obj).__name__}); the engine "
                f"imports word_language_model's RNNModel with rnn_type {', '.join(RNN_TYPES)}"
            )
        hints["cell"] = RNN_TYPES[rnn_type]
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a common wrapping: {"state_dict": ..., "epoch": ...}
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise InputError(f"{shown}: not a state_dict (a map of names to tensors)")
    state = {}
    for name, tensor in obj.items():
        if not tensor.is_floating_point():
            raise InputError(f"{shown}: tensor {name!r} is {tensor.dtype}, not floating point")
        state[name] = tensor.detach().to("cpu", torch.float32).contiguous().numpy().copy()
    return state, hints


def _load_pickle(torch, shown: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(shown, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as e:
        raise InputError(
            f"{shown}: the pickled model needs its class ({_first_line(e)}): run where "
            "word_language_model's model.py can be imported (its folder, or PYTHONPATH)"
        ) from None
    except Exception as e:
        raise InputError(f"{shown}: not a PyTorch checkpoint ({_first_line(e)})") from None


def import_model(
    path, vocab: Vocabulary | None, *, cell: str | None = None, trust_pickle: bool = False,
    backend: str | None = None,
) -> Model:  # fmt: skip
    """A Model of a word_language_model checkpoint (see the module docstring)."""
    shown = os.fsdecode(os.fspath(path))
    state, hints = read_checkpoint(path, trust_pickle=trust_pickle)
    _check_architecture(shown, state)
    cell = _cell(shown, state, hints.get("cell"), cell)
    tied = "decoder.weight" in state and np.array_equal(
        state["decoder.weight"], state.get("encoder.weight")
    )
    try:
        return Model.from_state_dict(state, cell=cell, tied=tied, backend=backend, vocab=vocab)
    except (ConfigError, ParameterError) as e:
        raise InputError(f"{shown}: {e}") from None


def _check_architecture(shown: str, state: dict) -> None:
    """word_language_model's RNNModel names only; its TransformerModel (or anything else)
    is another architecture."""
    known = ("encoder.weight", "decoder.weight", "decoder.bias")
    other = [n for n in state if n not in known and not n.startswith("rnn.")]
    if other or "rnn.weight_hh_l0" not in state:
        shown_names = ", ".join(repr(n) for n in (other or list(state))[:4])
        raise InputError(
            f"{shown}: not word_language_model's RNNModel (LSTM, GRU or tanh RNN): it has "
            f"{shown_names}{' ...' if len(other or state) > 4 else ''}"
        )


def _cell(shown: str, state: dict, from_file: str | None, given: str | None) -> str:
    G, H = state["rnn.weight_hh_l0"].shape if state["rnn.weight_hh_l0"].ndim == 2 else (0, 1)
    by_shape = {4 * H: "lstm", 3 * H: "gru", H: "rnn"}.get(G)
    cell = given or from_file or by_shape
    if given and from_file and given != from_file:
        raise InputError(f"{shown}: the model is {from_file}, not {given}")
    if cell is None or (by_shape is not None and cell != by_shape):
        raise InputError(f"{shown}: rnn.weight_hh_l0 of shape {(G, H)} fits no cell {cell or ''}")
    if cell == "rnn" and not (given or from_file):
        raise InputError(
            f"{shown}: a plain RNN's state_dict does not say tanh or relu: pass --cell rnn "
            "(cell='rnn') for RNN_TANH (the engine has no relu RNN)"
        )
    return cell


def corpus_vocabulary(path) -> Vocabulary:
    """word_language_model's Corpus dictionary: the words of train.txt, valid.txt and
    test.txt of a folder (or of one file), in order of first appearance, each line's words
    followed by "<eos>"."""
    path = Path(path)
    files = [path / f"{s}.txt" for s in ("train", "valid", "test")] if path.is_dir() else [path]
    files = [f for f in files if f.is_file()]
    if not files:
        raise InputError(f"{path}: no train.txt, valid.txt or test.txt (or no such file)")
    seen: dict[str, None] = {}
    for f in files:
        try:  # as Corpus.tokenize reads it: text mode, UTF-8, line by line
            with open(f, encoding="utf8") as lines:
                for line in lines:
                    for word in line.split() + [EOS]:
                        seen.setdefault(word, None)
        except UnicodeDecodeError as e:
            raise InputError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return Vocabulary("word", list(seen))


def read_token_list(path) -> Vocabulary:
    """A vocabulary from a file: JSON as export writes it ({"kind", "tokens"}, or a list of
    tokens), else one word per line (id = line number; "<eos>" must be one of them)."""
    shown = os.fsdecode(os.fspath(path))
    text = read_text(shown)
    if shown.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise VocabularyError(f"{shown}: not JSON ({e})") from None
        if isinstance(data, list):
            data = {"kind": "word", "tokens": data}
        return Vocabulary.from_dict(data)
    return Vocabulary("word", [line.strip() for line in text.splitlines() if line.strip()])


def export_model(model: Model, out) -> tuple[str, str | None]:
    """Write model's state_dict for torch.load at out and its vocabulary (if any) at
    out + VOCAB_SUFFIX; returns the two paths. Refuses what word_language_model's RNNModel
    cannot hold."""
    torch = torch_module()
    c = model.config
    if model.weight_storage != "float32":
        raise ConfigError("export-torch writes float32 weights: dequantize the int8 model first")
    if c.adaptive or c.residual:
        what = "adaptive softmax" if c.adaptive else "residual layers"
        raise ConfigError(
            f"word_language_model's RNNModel has no {what}: this model cannot be exported to it"
        )
    out = os.fsdecode(os.fspath(out))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.state_dict().items()}
    _save_atomically(lambda f: torch.save(state, f), out)
    vocab_path = None
    if model.vocab is not None:
        vocab_path = out + VOCAB_SUFFIX
        data = json.dumps(model.vocab.to_dict(), ensure_ascii=False).encode()
        _save_atomically(lambda f: f.write(data), vocab_path)
    return out, vocab_path


def _save_atomically(write, path: str) -> None:
    import io

    from .atomic import write_atomically

    buffer = io.BytesIO()
    write(buffer)
    try:
        write_atomically(path, [buffer.getvalue()])
    except OSError as e:
        raise ModelFileError(f"cannot write {path}: {e}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
