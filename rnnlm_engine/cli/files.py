"""Commands on model files: rnnlm info, quantize, import-torch and export-torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError
from .common import adaptive_text


def cmd_info(args) -> int:
    from ..modelfile import read_info

    info = read_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
        return 0
    for key, value in _info_lines(info):
        print(f"{key:<18}{value}")
    return 0


def cmd_quantize(args) -> int:
    from ..model import load

    model = load(args.model, backend="cpu")
    if model.weight_storage == args.kind:
        raise InputError(f"{args.model} is already an {args.kind} model")
    if Path(args.out).resolve() == Path(args.model).resolve():
        raise InputError("OUT is MODEL: write the int8 model to another file")
    quantized = model.quantize(args.kind)
    quantized.save(args.out)
    if not args.quiet:
        before, after = Path(args.model).stat().st_size, Path(args.out).stat().st_size
        print(
            f"wrote {args.out}: {args.kind}, {after / 1e6:.2f} MB "
            f"({before / after:.1f}x smaller than {args.model}, {before / 1e6:.2f} MB)",
            file=sys.stderr,
        )
    return 0


def cmd_import_torch(args) -> int:
    from .. import torch_io

    vocab = (
        torch_io.corpus_vocabulary(args.corpus)
        if args.corpus
        else torch_io.read_token_list(args.vocab)
    )
    model = torch_io.import_model(
        args.checkpoint, vocab, cell=args.cell, trust_pickle=args.trust_pickle
    )
    model.save(args.out, metadata={"imported_from": str(args.checkpoint)})
    if not args.quiet:
        c = model.config
        print(f"wrote {args.out}: {c.cell} {c.num_layers} x {c.hidden_size}, "
              f"{c.vocab_size:,} words{', tied' if c.tied else ''}", file=sys.stderr)  # fmt: skip
    return 0


def cmd_export_torch(args) -> int:
    from .. import torch_io
    from ..model import load

    model_path = Path(args.model).resolve()
    for path in (args.out, args.out + torch_io.VOCAB_SUFFIX):
        if Path(path).resolve() == model_path:
            raise InputError(f"{path} is MODEL: export to another file")
    out, vocab = torch_io.export_model(load(args.model, backend="cpu"), args.out)
    if not args.quiet:
        print(f"wrote {out}" + (f" and {vocab}" if vocab else " (no vocabulary stored)"),
              file=sys.stderr)  # fmt: skip
    return 0


def _info_lines(info: dict):
    cfg = info.get("config", {})
    yield "file", info.get("path", "")
    yield "format", ".".join(map(str, info.get("version", ())))
    yield (
        "model",
        (
            f"{cfg.get('cell')} {cfg.get('num_layers')} x {cfg.get('hidden_size')}, "
            f"embedding {cfg.get('emb_size')}"
            + (", tied" if cfg.get("tied") else "")
            + (", residual" if cfg.get("residual") else "")
            + adaptive_text(cfg.get("cutoffs"), cfg.get("div_value"))
        ),
    )
    vocab = info.get("vocab")
    if vocab:
        size = vocab.get("size")  # None: a vocabulary stored without its token list
        tokens = "tokens not listed" if size is None else f"{size:,} tokens"
        yield "vocabulary", f"{tokens} ({vocab.get('kind')})"
    else:
        yield "vocabulary", f"{cfg.get('vocab_size'):,} ids (no vocabulary stored)"
    yield "parameters", f"{info.get('parameters', 0):,}"
    storage, nbytes = info.get("storage", "float32"), info.get("weight_bytes", 0)
    per_row = " with a float32 scale per row; inference only" if storage == "int8" else ""
    yield "weights", f"{storage}{per_row}, {nbytes / 1e6:,.2f} MB"
    yield "file size", f"{info.get('file_size', 0) / 1e6:,.2f} MB"
    # metadata is any plain msgpack value the file's writer chose: show what is there
    meta = info.get("metadata", {})
    for key in ("valid_loss", "valid_ppl", "valid_bpc"):
        if key in meta:
            yield key.replace("_", " "), _number(meta[key], "{:.4f}")
    if "epochs_completed" in meta:
        yield "epochs", _number(meta["epochs_completed"], "{}")
    for key in ("engine", "created"):
        if key in meta:
            value = meta[key]
            yield key, _shown(value) if isinstance(value, str) else _repr_cut(value)
    yield "training state", "yes (a checkpoint)" if info.get("training") else "no"


def _number(value, fmt: str) -> str:
    """A metadata figure formatted, or what is there instead, said to be no number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return fmt.format(value)
    return f"{_repr_cut(value)} (not a number)"


def _shown(text: str, limit: int = 60) -> str:
    """A metadata string on one line of the terminal: control characters escaped, cut."""
    text = text if text.isprintable() else repr(text)[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def _repr_cut(value) -> str:
    """A short repr of any plain value, however large or deep."""
    import reprlib

    r = reprlib.Repr()  # (keyword arguments need Python 3.12)
    r.maxstring = r.maxother = r.maxlong = 40
    r.maxlist = r.maxdict = 4
    r.maxlevel = 2
    return r.repr(value)
