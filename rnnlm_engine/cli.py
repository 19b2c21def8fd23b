"""The ``rnnlm`` command line: train, sweep, score, generate, info, demo.

Errors are one line on stderr (the traceback only with --debug): exit 2 for bad usage or
bad input (a missing file, an invalid setting, a defective model file), 1 for anything
else, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .backend import CHOICES, ENV_VAR
from .errors import InputError, RnnlmError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: 'rnnlm train: error: ... (see rnnlm train --help)'."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _seconds(text: str) -> float:
    """'90', '90s', '5m', '1.5h' -> seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    t = text.strip().lower()
    factor = units.get(t[-1:], None)
    try:
        value = float(t[:-1] if factor else t) * (factor or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (try 90, 90s, 5m, 1h)"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a duration must be positive; got {text!r}")
    return value


def _lr_decay(text: str) -> float:
    """The factor the learning rate is multiplied by: F in (0, 1] as given, and F > 1 as
    1/F, the word_language_model habit (its lr /= 4.0 is --lr-decay 4, that is 0.25)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(
            f"must be a positive number (a factor in (0, 1], or a divisor above 1); got {text!r}"
        )
    return value if value <= 1.0 else 1.0 / value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rnnlm", description="rnnlm-engine: recurrent language models on Numba kernels"
    )
    parser.add_argument("--version", action="version", version=f"rnnlm-engine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    common.add_argument("--quiet", action="store_true", help="no progress or messages")
    computing = _Parser(add_help=False, parents=[common])  # the commands that run a model
    computing.add_argument(
        "--backend",
        choices=CHOICES,
        default=None,
        help=f"where the kernels run (default: ${ENV_VAR}, else cpu; auto: cuda if usable)",
    )

    t = sub.add_parser("train", parents=[computing], help="train a model on a text file")
    t.add_argument("--train", metavar="FILE", help="training text (UTF-8)")
    t.add_argument(
        "--valid",
        metavar="FILE",
        help="validation text (default: the last --valid-fraction of the training text)",
    )
    t.add_argument("--valid-fraction", type=float, default=0.1, metavar="F")
    t.add_argument("--out", metavar="MODEL", required=True, help="best model goes here")
    t.add_argument("--level", choices=["word", "char", "byte"], default="word")
    t.add_argument("--max-vocab", type=int, metavar="N", help="keep the N most frequent tokens")
    t.add_argument("--min-count", type=int, default=1, metavar="N")
    t.add_argument(
        "--replace-invalid",
        action="store_true",
        help="replace invalid UTF-8 with U+FFFD instead of stopping",
    )
    t.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--hidden", type=int, default=200)
    t.add_argument("--emb", type=int, default=None, help="embedding size (default: --hidden)")
    t.add_argument("--tied", action="store_true", help="tie encoder and decoder weights")
    t.add_argument(
        "--adaptive",
        metavar="CUTOFFS",
        default=None,
        help="an adaptive softmax output (PyTorch's AdaptiveLogSoftmaxWithLoss): cutoffs "
        "such as 2000,10000 (the shortlist, then the clusters' bounds, in frequency ranks), "
        "or auto: the ranks that cover 80%% and 95%% of the training tokens",
    )
    t.add_argument(
        "--div-value",
        type=float,
        default=4.0,
        metavar="D",
        help="with --adaptive: tail cluster i projects to hidden // D ** (i + 1) units (4)",
    )
    t.add_argument(
        "--residual",
        action="store_true",
        help="residual connections: each layer's output adds its input (layers above the "
        "first, and the first too when --emb equals --hidden)",
    )
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--init-range", type=float, default=0.1)
    t.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    t.add_argument("--lr", type=float, default=None, help="default: 20 (sgd), 0.002 (adam)")
    t.add_argument(
        "--lr-decay",
        type=_lr_decay,
        default=0.25,
        metavar="F",
        help="multiply the lr by F in (0, 1] on a plateau (or per --decay-start); F > 1 "
        "divides it, as word_language_model's lr /= 4 (4 is 0.25). Default 0.25",
    )
    t.add_argument(
        "--decay-start",
        type=int,
        default=None,
        metavar="EPOCH",
        help="decay the lr after every epoch from this one (default: on plateaus)",
    )
    t.add_argument("--clip", type=float, default=0.25, help="global gradient norm (0: off)")
    t.add_argument("--epochs", type=int, default=None, help="default 40 (resume: as before)")
    t.add_argument(
        "--max-time",
        type=_seconds,
        default=None,
        metavar="DURATION",
        help="stop this invocation after DURATION of training (90s, 10m, 2h), checkpoint and "
        "validate; --resume with --max-time trains that much more, without it: no limit",
    )
    t.add_argument("--batch-size", type=int, default=20)
    t.add_argument("--bptt", type=int, default=35)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--checkpoint", metavar="PATH", help="default: MODEL.ckpt")
    t.add_argument(
        "--checkpoint-every",
        type=float,
        default=None,
        metavar="MINUTES",
        help="default 10 (resume: as before)",
    )
    t.add_argument("--resume", metavar="CKPT", help="continue an interrupted run")
    t.set_defaults(func=cmd_train)

    sw = sub.add_parser(
        "sweep",
        parents=[common],
        help="choose a model: grid or random search with cross-validation, resumable",
        description="Train every setting of a grid (or --samples random draws) within a "
        "budget and rank them by validation perplexity. Rerun the same command to continue "
        "a sweep that was stopped; finished trials are not run again.",
    )
    sw.add_argument("--train", metavar="FILE", required=True, help="training text (UTF-8)")
    sw.add_argument("--valid", metavar="FILE", help="validation text (or --folds)")
    sw.add_argument("--folds", type=int, default=0, metavar="K", help="K-fold cross-validation")
    sw.add_argument("--out", metavar="DIR", required=True, help="the sweep's folder")
    sw.add_argument(
        "--grid",
        required=True,
        help="settings and their values: 'cell=lstm,gru layers=1,2 hidden=128,256'; lo:hi "
        "is a range for --samples; one value fixes a setting (any of rnnlm train's)",
    )
    sw.add_argument("--samples", type=int, metavar="N", help="N random draws instead of the grid")
    sw.add_argument("--seed", type=int, default=0, help="for --samples")
    sw.add_argument("--trial-epochs", type=int, metavar="N", help="budget per trial and fold")
    sw.add_argument("--trial-windows", type=int, metavar="N", help="budget per trial and fold")
    sw.add_argument("--trial-time", type=_seconds, metavar="DURATION", help="budget per trial")
    sw.add_argument("--max-time", type=_seconds, metavar="DURATION", help="for the whole sweep")
    sw.add_argument("--level", choices=["word", "char", "byte"], default="word")
    sw.add_argument("--max-vocab", type=int, metavar="N")
    sw.add_argument("--min-count", type=int, default=1, metavar="N")
    sw.add_argument("--replace-invalid", action="store_true")
    sw.add_argument("--retrain", action="store_true", help="retrain the best on all the text")
    sw.add_argument("--no-figure", action="store_true", help="no sweep.svg")
    sw.add_argument("--scheduler", metavar="ADDRESS", help="run the trials on this Dask cluster")
    sw.add_argument("--json", action="store_true", help="print the table as JSON lines")
    sw.set_defaults(func=cmd_sweep)

    sc = sub.add_parser("score", parents=[computing], help="score text, one line per input line")
    sc.add_argument("model", metavar="MODEL")
    sc.add_argument(
        "files", metavar="FILE", nargs="*",
        help="text, or - for stdin (the default); with --out, any number of shards",
    )  # fmt: skip
    sc.add_argument("--mode", choices=["sentence", "corpus"], default="sentence")
    sc.add_argument("--log10", action="store_true", help="log10 probabilities (as KenLM)")
    sc.add_argument("--per-token", action="store_true", help="also each token's log-prob")
    sc.add_argument("--json", action="store_true", help="one JSON object per line")
    sc.add_argument("--batch-size", type=int, default=64)
    sc.add_argument("--replace-invalid", action="store_true")
    many = sc.add_argument_group(
        "many files (--out DIR)",
        "each FILE a shard of documents (a line each; .gz and .xz read as such), scored per "
        "document into DIR/<file name>.jsonl, totals in DIR/summary.json",
    )
    many.add_argument(
        "--out",
        metavar="DIR",
        help="score the files into this folder",
    )
    many.add_argument(
        "--jsonl",
        action="store_true",
        help="the files are JSON lines, a document in each record's --field",
    )
    many.add_argument(
        "--field",
        default="text",
        help="the JSON field of the text (default text)",
    )
    many.add_argument(
        "--buckets",
        metavar="P1,P2",
        help="head / middle / tail at these percentiles of perplexity (30,60)",
    )
    many.add_argument(
        "--bucket-cutoffs",
        metavar="FILE",
        help="bucket by the perplexities of an earlier run's cutoffs.json",
    )
    many.add_argument(
        "--min-ppl",
        type=float,
        metavar="X",
        help="keep documents of perplexity >= X",
    )
    many.add_argument(
        "--max-ppl",
        type=float,
        metavar="X",
        help="keep documents of perplexity <= X",
    )
    many.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="score the files on this Dask cluster (a task a file; the dask extra)",
    )
    many.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip (and count) bad records and corrupt shards instead of stopping",
    )
    sc.set_defaults(func=cmd_score)

    g = sub.add_parser("generate", parents=[computing], help="write text sampled from a model")
    g.add_argument("model", metavar="MODEL")
    g.add_argument("--prompt", default=None, help="text to start from (default: a line end)")
    g.add_argument("--tokens", type=int, default=200, metavar="N")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", default=None, help="stop once the text ends with this")
    g.set_defaults(func=cmd_generate)

    dg = sub.add_parser(
        "diagnose",
        parents=[computing],
        help="gate saturation, gradient by lag, singular values and feature units over a text",
    )
    _model_and_text(dg, max_tokens=10_000)
    dg.add_argument("--json", action="store_true", help="machine-readable output")
    dg.add_argument("--max-lag", type=int, default=50, metavar="K",
                    help="gradient by lag for lags 0..K (default 50)")  # fmt: skip
    dg.add_argument("--positions", type=int, default=500, metavar="P",
                    help="average the gradient by lag over P positions (default 500)")  # fmt: skip
    dg.set_defaults(func=cmd_diagnose)

    ex = sub.add_parser(
        "explain", parents=[computing], help="an HTML page that shows what a model sees in a text"
    )
    _model_and_text(ex, max_tokens=5_000)
    ex.add_argument("--html", required=True, metavar="OUT", help="the page to write")
    ex.add_argument("--window", type=int, default=20, metavar="W",
                    help="attribute each token to the W tokens before it (default 20)")  # fmt: skip
    ex.add_argument("--max-units", type=int, default=256, metavar="U",
                    help="units offered by the unit picker (default 256)")  # fmt: skip
    ex.set_defaults(func=cmd_explain)

    i = sub.add_parser("info", parents=[common], help="describe a model file")
    i.add_argument("model", metavar="MODEL")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)

    qz = sub.add_parser(
        "quantize",
        parents=[common],
        help="write an int8 copy of a model (about 4x smaller, faster streams; inference only)",
    )
    qz.add_argument("model", metavar="MODEL")
    qz.add_argument("out", metavar="OUT", help="the int8 model file to write")
    qz.add_argument("--kind", choices=["int8"], default="int8",
                    help="int8: one float32 scale per weight row (default)")  # fmt: skip
    qz.set_defaults(func=cmd_quantize)

    it = sub.add_parser(
        "import-torch",
        parents=[common],
        help="a model from a PyTorch word_language_model checkpoint (needs torch)",
    )
    it.add_argument("checkpoint", metavar="CHECKPOINT", help="a state_dict, or a whole model")
    source = it.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", metavar="PATH",
                        help="the training data (a folder with train.txt, valid.txt, test.txt, "
                             "or one file): the vocabulary as word_language_model's Corpus "
                             "numbers it")  # fmt: skip
    source.add_argument("--vocab", metavar="FILE",
                        help="the tokens, one per line in id order (or its JSON)")  # fmt: skip
    it.add_argument("--out", required=True, metavar="MODEL")
    it.add_argument("--cell", choices=["lstm", "gru", "rnn"],
                    help="the cell where the file cannot say (a tanh RNN)")  # fmt: skip
    it.add_argument("--trust-pickle", action="store_true",
                    help="load a whole pickled model (torch.save(model, f)); unpickling runs "
                         "code the file names: only for a file you trust")  # fmt: skip
    it.set_defaults(func=cmd_import_torch)

    et = sub.add_parser(
        "export-torch", parents=[common],
        help="a state_dict for PyTorch's word_language_model, and the vocabulary (needs torch)",
    )  # fmt: skip
    et.add_argument("model", metavar="MODEL")
    et.add_argument("out", metavar="OUT", help="the state_dict file; the vocabulary goes to "
                    "OUT.vocab.json")  # fmt: skip
    et.set_defaults(func=cmd_export_torch)

    d = sub.add_parser(
        "demo",
        parents=[computing],
        help="train a small character model for about a minute, then sample",
    )
    d.add_argument(
        "--corpus",
        metavar="PATH",
        help="text to learn (default: Python's own help text, pydoc_data.topics)",
    )
    d.add_argument("--time", type=_seconds, default=60.0, metavar="DURATION")
    d.add_argument("--out", metavar="MODEL", default="demo.rnnlm")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--epochs", type=int, default=1000, help="stop after this many epochs")
    d.add_argument("--sample", type=int, default=400, metavar="CHARS")
    d.set_defaults(func=cmd_demo)
    return parser


def _model_and_text(p: argparse.ArgumentParser, max_tokens: int) -> None:
    """MODEL FILE --max-tokens N: the arguments of the commands that look at a model over
    a text (diagnose, explain)."""
    p.add_argument("model", metavar="MODEL")
    p.add_argument("file", metavar="FILE", help="a UTF-8 text file")
    p.add_argument("--max-tokens", type=int, default=max_tokens, metavar="N",
                   help=f"read at most the first N tokens (default {max_tokens:,})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives an optional positional its default when an option comes before it
    # (rnnlm score MODEL --json FILE): take FILE from what was left over
    if getattr(args, "command", None) == "score" and extra:
        files = [e for e in extra if not e.startswith("-") or e == "-"]
        if files == extra:
            args.files, extra = args.files + files, []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("rnnlm: interrupted", file=sys.stderr)
        return 130
    except (RnnlmError, OSError) as e:
        if args.debug:
            raise
        print(f"rnnlm {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a bug: say so briefly
        if args.debug:
            raise
        print(
            f"rnnlm {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.strerror or e}: {e.filename}"
    return " ".join(str(e).split())


# ---------------------------------------------------------------------------- train


def _split(ids: np.ndarray, fraction: float):
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--valid-fraction must be between 0 and 1; got {fraction}")
    cut = int(round(len(ids) * (1.0 - fraction)))
    return ids[:cut], ids[cut:]


# train options that shape the run: on --resume they must be left out or equal the
# checkpoint's (option name, TrainConfig field)
_RUN_OPTIONS = [
    ("cell", "cell"), ("layers", "num_layers"), ("hidden", "hidden_size"),
    ("emb", "emb_size"), ("tied", "tied"), ("residual", "residual"), ("dropout", "dropout"),
    ("init_range", "init_range"), ("optimizer", "optimizer"), ("lr", "lr"),
    ("lr_decay", "lr_decay"), ("decay_start", "decay_start"), ("clip", "clip"),
    ("batch_size", "batch_size"), ("bptt", "bptt"), ("seed", "seed"),
    ("div_value", "div_value"),
]  # fmt: skip


def _refuse_changed_settings(args, config) -> None:
    """An option given with --resume (differing from its default) must match the run."""
    if args.adaptive is not None:
        raise InputError("--resume continues a run with its own output layer: leave out --adaptive")
    defaults = build_parser().parse_args(["train", "--out", "x"])
    changed = [
        f"--{opt.replace('_', '-')} {getattr(args, opt)!r} (the run has {getattr(config, field)!r})"
        for opt, field in _RUN_OPTIONS
        if getattr(args, opt) != getattr(defaults, opt)
        and getattr(args, opt) != getattr(config, field)
    ]
    if changed:
        raise InputError(
            f"--resume continues a run with its own settings; these differ: {', '.join(changed)}"
            "; only --epochs, --max-time and --checkpoint-every may change"
        )


def _cutoffs(text: str, ids, vocab_size: int, config) -> tuple[int, ...]:
    """--adaptive's value: "auto" or increasing integers separated by commas."""
    from .output import choose_cutoffs

    if text.strip() == "auto":
        return choose_cutoffs(ids, vocab_size, config.hidden_size, config.div_value)
    try:
        cutoffs = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(
            f"--adaptive takes auto or cutoffs such as 2000,10000; got {text!r}"
        ) from None
    return cutoffs


def _adaptive_text(cutoffs, div_value) -> str:
    if not cutoffs:
        return ""
    return f", adaptive softmax (cutoffs {', '.join(map(str, cutoffs))}; div {div_value:g})"


def cmd_train(args) -> int:
    from .modelfile import load as load_file
    from .train import Progress, TrainConfig, train
    from .vocab import Vocabulary, read_text

    progress = Progress(quiet=args.quiet)
    errors = "replace" if args.replace_invalid else "strict"
    if args.resume:
        f = load_file(args.resume)
        values = (f.training or {}).get("values", {})
        if values.get("kind") != "checkpoint":
            int8 = " (an int8 model is for inference only)" if f.scales is not None else ""
            raise InputError(f"{args.resume}: not a training checkpoint{int8}")
        # the run's settings, except those given again (max_time: none unless given)
        changes = {"max_time": args.max_time, "max_windows": None}
        if args.epochs is not None:
            changes["epochs"] = args.epochs
        if args.checkpoint_every is not None:
            changes["checkpoint_every"] = args.checkpoint_every
        try:
            config = TrainConfig.from_dict(values["train_config"] | changes)
        except (KeyError, TypeError) as e:
            raise InputError(f"{args.resume}: malformed training settings ({e})") from None
        _refuse_changed_settings(args, config)
        cli = f.metadata.get("cli", {})
        args.train = args.train or cli.get("train")
        args.valid = args.valid or cli.get("valid")
        vocab = Vocabulary.from_dict(f.vocab)
        fraction = cli.get("valid_fraction", args.valid_fraction)
    else:
        config = None
        fraction = args.valid_fraction
    if not args.train:
        raise InputError("--train FILE is required")
    text = read_text(args.train, errors=errors)
    if not args.resume:
        vocab = Vocabulary.build(
            text, args.level, max_size=args.max_vocab, min_count=args.min_count
        )
        lr = args.lr if args.lr is not None else (20.0 if args.optimizer == "sgd" else 0.002)
        config = TrainConfig(
            cell=args.cell,
            emb_size=args.emb or args.hidden,
            hidden_size=args.hidden,
            num_layers=args.layers,
            tied=args.tied,
            residual=args.residual,
            dropout=args.dropout,
            init_range=args.init_range,
            optimizer=args.optimizer,
            lr=lr,
            lr_decay=args.lr_decay,
            decay_start=args.decay_start,
            clip=args.clip,
            epochs=40 if args.epochs is None else args.epochs,
            max_time=args.max_time,
            batch_size=args.batch_size,
            bptt=args.bptt,
            seed=args.seed,
            checkpoint_every=10.0 if args.checkpoint_every is None else args.checkpoint_every,
        )
    ids = vocab.encode(text)
    if not args.resume and args.adaptive is not None:
        config = dataclasses.replace(config, div_value=args.div_value)
        cutoffs = _cutoffs(args.adaptive, ids, len(vocab), config)
        config = dataclasses.replace(config, cutoffs=cutoffs)
        config.model_config(len(vocab))  # cutoffs that do not fit this vocabulary: say so now
    if args.valid:
        train_ids, valid_ids = ids, vocab.encode(read_text(args.valid, errors=errors))
    else:
        train_ids, valid_ids = _split(ids, fraction)
    progress.message(
        f"{len(train_ids):,} training and {len(valid_ids):,} validation tokens; "
        f"{vocab.kind} vocabulary of {len(vocab):,}; {config.cell} {config.num_layers} x "
        f"{config.hidden_size}{' residual' if config.residual else ''}"
        f"{_adaptive_text(config.cutoffs, config.div_value)}, {config.optimizer} lr "
        f"{config.lr:g}"
    )
    cli_info = {
        "train": str(Path(args.train).resolve()),
        "valid": str(Path(args.valid).resolve()) if args.valid else None,
        "valid_fraction": fraction,
    }
    result = train(
        train_ids,
        valid_ids,
        vocab,
        config,
        args.out,
        checkpoint=args.checkpoint,
        resume=args.resume,
        resume_file=f if args.resume else None,  # read once, here
        progress=progress,
        extra_metadata={"cli": cli_info},
        backend=args.backend,
    )
    if result.out is not None:
        v = result.best_valid_loss
        bpc = f", {v / math.log(2):.3f} bits/char" if vocab.kind != "word" else ""
        progress.message(
            f"best validation loss {v:.4f} (perplexity {math.exp(v):.2f}{bpc}) in {result.out}"
        )
    return 130 if result.stopped == "interrupted" else 0


# ---------------------------------------------------------------------------- sweep


def cmd_sweep(args) -> int:
    from .sweep import Budget, format_table, parse_grid, sweep
    from .train import Progress
    from .vocab import Vocabulary, read_text

    grid = parse_grid(args.grid)
    budget = Budget(args.trial_epochs, args.trial_windows, args.trial_time)
    if not args.valid and args.folds < 2:
        raise InputError("give --valid FILE or --folds K (K >= 2) to validate the trials on")
    errors = "replace" if args.replace_invalid else "strict"
    text = read_text(args.train, errors=errors)
    vocab = Vocabulary.build(text, args.level, max_size=args.max_vocab, min_count=args.min_count)
    valid = vocab.encode(read_text(args.valid, errors=errors)) if args.valid else None
    client = _dask_client(args.scheduler) if args.scheduler else None
    progress = Progress(quiet=args.quiet)
    try:
        table = sweep(
            vocab.encode(text), vocab, grid, args.out, budget, valid_ids=valid,
            n_folds=args.folds, samples=args.samples, seed=args.seed, max_time=args.max_time,
            retrain=args.retrain, client=client, progress=progress, figure=not args.no_figure,
        )  # fmt: skip
    finally:
        if client is not None:
            client.close()
    if args.json:
        for row in table:
            print(json.dumps(row))
    else:
        print(format_table(table, grid))
    return 0


def _dask_client(address: str):
    """A dask.distributed Client of the scheduler at address; one line if it cannot be."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise InputError(
            "--scheduler needs dask.distributed: pip install 'rnnlm-engine[dask]'"
        ) from None
    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as e:
        raise InputError(f"cannot reach the Dask scheduler at {address}: {_one_line(e)}") from None


# ---------------------------------------------------------------------------- score


def cmd_score(args) -> int:
    from .model import load

    many_only = ("jsonl", "buckets", "bucket_cutoffs", "min_ppl", "max_ppl", "skip_bad",
                 "scheduler")  # fmt: skip
    if args.out is None:
        given = [f"--{o.replace('_', '-')}" for o in many_only if getattr(args, o)]
        if given:
            raise InputError(f"{', '.join(given)} go with --out DIR (scoring files into it)")
        if len(args.files) > 1:
            raise InputError("several files are scored into a folder: give --out DIR")
    model = load(args.model, backend=args.backend)
    if args.out is not None:
        return _score_files(model, args)
    errors = "replace" if args.replace_invalid else "strict"
    file = args.files[0] if args.files else "-"
    if file == "-":
        lines = _stdin_lines(errors)
    else:
        lines = Path(file)
        if not lines.is_file():
            raise InputError(f"{file}: no such file")
    scale = 1.0 / math.log(10) if args.log10 else 1.0
    scoring = model.score(
        lines, mode=args.mode, per_token=args.per_token, batch_size=args.batch_size,
        errors=errors,
    )  # fmt: skip
    out = sys.stdout
    for r in scoring:
        if args.json:
            record = {"line": r.line, "logprob": r.logprob * scale, "tokens": r.tokens,
                      "perplexity": r.perplexity, "oov": r.oov}  # fmt: skip
            if args.per_token:
                record["token_logprobs"] = [
                    None if math.isnan(v) else float(v) * scale for v in r.token_logprobs
                ]
                record["oov_flags"] = [bool(f) for f in r.oov_flags]
            out.write(json.dumps(record) + "\n")
        else:
            fields = [f"{r.logprob * scale:.4f}", str(r.tokens), f"{r.perplexity:.4f}"]
            if args.per_token:
                fields.append(" ".join(f"{float(v) * scale:.4f}" for v in r.token_logprobs))
            out.write("\t".join(fields) + "\n")
    t = scoring.total
    if not args.quiet:
        print(
            f"{t.lines:,} lines, {t.tokens:,} tokens ({t.oov:,} OOV), log-probability "
            f"{t.logprob * scale:.4f} ({'log10' if args.log10 else 'nats'}), perplexity "
            f"{t.perplexity:.4f}",
            file=sys.stderr,
        )
    return 0


def _score_files(model, args) -> int:
    """rnnlm score MODEL FILES... --out DIR: see rnnlm_engine.shards."""
    from . import shards

    percentiles = _two_numbers(args.buckets, "--buckets") if args.buckets else None
    cutoffs = shards.read_cutoffs(args.bucket_cutoffs) if args.bucket_cutoffs else None
    options = shards.Options(
        jsonl=args.jsonl, field=args.field, skip_bad=args.skip_bad,
        errors="replace" if args.replace_invalid else "strict", min_ppl=args.min_ppl,
        max_ppl=args.max_ppl, percentiles=percentiles, cutoffs=cutoffs,
        batch_size=args.batch_size,
    )  # fmt: skip

    def progress(r):
        if not args.quiet:
            skipped = f", {r.skipped} skipped" if r.skipped else ""
            print(f"{r.shard}: {r.documents:,} documents, {r.kept:,} kept, {r.tokens:,} tokens"
                  f"{skipped} ({r.tokens / max(r.seconds, 1e-9):,.0f} tokens/s)",
                  file=sys.stderr)  # fmt: skip

    if args.scheduler:
        from . import distributed

        client = _dask_client(args.scheduler)
        corpus = distributed.score_files(
            args.files, args.model, args.out, options, client=client, progress=progress
        )
    else:
        corpus = shards.score_files(model, args.files, args.out, options, progress)
    skipped = sum(r.skipped for r in corpus.shards)
    if args.json:
        print(json.dumps({k: v for k, v in corpus.to_dict().items() if k != "shards"}))
    elif not args.quiet:
        cut = f"; bucket cutoffs {corpus.cutoffs[0]:.2f}, {corpus.cutoffs[1]:.2f}" if (
            corpus.cutoffs) else ""  # fmt: skip
        print(f"{len(corpus.shards)} files, {corpus.documents:,} documents, {corpus.tokens:,} "
              f"tokens, perplexity {corpus.perplexity:.4f}{cut}"
              f"{f'; {skipped:,} bad records or files skipped' if skipped else ''}; "
              f"{Path(args.out) / shards.SUMMARY}", file=sys.stderr)  # fmt: skip
    return 0


def _two_numbers(text: str, option: str) -> tuple[float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2:
        raise InputError(f"{option} takes two numbers such as 30,60; got {text!r}")
    return values


def _stdin_lines(errors: str):
    """Lines of standard input, decoded as UTF-8 whatever the locale (like files); read
    as bytes and decoded line by line, so that an error names its line."""
    from .errors import VocabularyError

    for n, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            line = raw.decode("utf-8", errors=errors)
        except UnicodeDecodeError as e:
            raise VocabularyError(
                f"standard input: invalid UTF-8 in line {n} at byte {e.start} ({e.reason}); "
                "pass --replace-invalid to substitute U+FFFD"
            ) from None
        yield line[:-1] if line.endswith("\n") else line


# ---------------------------------------------------------------------------- generate


def cmd_generate(args) -> int:
    from .model import load

    model = load(args.model, backend=args.backend)
    if model.vocab is None:
        raise InputError(f"{args.model} holds no vocabulary: it cannot write text")
    stream = model.stream()
    prompt = args.prompt
    if not prompt:  # start after a line end, as a text begins
        from .scoring import line_end_id

        boundary = line_end_id(model.vocab)
        if boundary is None:
            raise InputError("give --prompt: this vocabulary has no line end to start from")
        stream.feed([boundary])
        prompt = None
    else:
        sys.stdout.write(prompt)
    word = model.vocab.kind == "word"
    # bytes may split a character: decode them as they come, holding partial characters
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    vocab = model.vocab
    for token in stream.generate(
        prompt, max_tokens=args.tokens, stop=args.stop, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    ):  # fmt: skip
        i = vocab.id(token)
        if word:
            text = "\n" if i == vocab.eos_id else " " + token
        elif vocab.kind == "byte":
            text = utf8.decode(bytes([i]))
        else:
            text = vocab.decode(np.array([i]))
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


# ---------------------------------------------------------------------------- info


def cmd_diagnose(args) -> int:
    from .explain import diagnose, format_diagnosis, read_ids
    from .model import load

    model = load(args.model, backend=args.backend)
    ids, note = read_ids(model, args.file, args.max_tokens)
    if note and not args.quiet:
        print(f"rnnlm diagnose: {note}", file=sys.stderr)
    d = diagnose(model, ids, args.max_lag, args.positions)
    if args.json:
        print(json.dumps(d))
    else:
        for layer in d.get("saturation", {}).values():
            for s in layer.values():
                s.pop("per_unit")
        print(format_diagnosis(d))
    return 0


def cmd_explain(args) -> int:
    from .explain import read_ids, report_data
    from .model import load
    from .report import write_html

    if args.window < 1 or args.max_units < 1:
        raise InputError("--window and --max-units must be at least 1")
    model = load(args.model, backend=args.backend)
    ids, note = read_ids(model, args.file, args.max_tokens)
    title = f"{Path(args.model).name} on {Path(args.file).name}"
    say = None if args.quiet else (lambda line: print(f"rnnlm explain: {line}", file=sys.stderr))
    data = report_data(model, ids, title, window=args.window, max_units=args.max_units, say=say)
    if note:
        data["notes"].insert(0, f"this page shows {note}")
    write_html(args.html, data)
    if not args.quiet:
        for n in data["notes"]:
            if "matplotlib" in n:
                print(f"rnnlm explain: {n}", file=sys.stderr)
        size = Path(args.html).stat().st_size
        print(f"wrote {args.html} ({len(ids):,} tokens, {size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    from .modelfile import read_info

    info = read_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
        return 0
    for key, value in _info_lines(info):
        print(f"{key:<18}{value}")
    return 0


def cmd_quantize(args) -> int:
    from .model import load

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
    from . import torch_io

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
    from . import torch_io
    from .model import load

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
            + _adaptive_text(cfg.get("cutoffs"), cfg.get("div_value"))
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


# ---------------------------------------------------------------------------- demo


def demo_corpus() -> str:
    """Python's own help text (the pydoc topics): present in every CPython installation."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n".join(topics[k] for k in sorted(topics))


def cmd_demo(args) -> int:
    from .model import load
    from .train import Progress, TrainConfig, train
    from .vocab import Vocabulary, read_text

    progress = Progress(quiet=args.quiet)
    text = read_text(args.corpus) if args.corpus else demo_corpus()
    source = args.corpus or "pydoc_data.topics (Python's help text)"
    vocab = Vocabulary.build(text, "char")
    ids = vocab.encode(text)
    train_ids, valid_ids = _split(ids, 0.1)
    config = TrainConfig(
        cell="lstm",
        emb_size=64,
        hidden_size=256,
        num_layers=1,
        optimizer="adam",
        lr=0.003,
        lr_decay=0.5,
        clip=1.0,
        epochs=args.epochs,
        max_time=args.time,
        batch_size=32,
        bptt=64,
        eval_batch_size=32,
        seed=args.seed,
        checkpoint_every=0.0,
        init_range=0.08,
    )
    print(
        f"rnnlm demo: a character-level LSTM 1 x 256 learns {source}: {len(ids):,} "
        f"characters, {len(vocab)} distinct; training for {args.time:.0f} s",
        file=sys.stderr,
    )
    t0 = time.monotonic()
    result = train(
        train_ids,
        valid_ids,
        vocab,
        config,
        args.out,
        checkpoint=False,
        progress=progress,
        backend=args.backend,
    )
    if result.out is None:
        raise InputError("the demo trained too briefly to validate once; give more --time")
    bpc = result.best_valid_loss / math.log(2)
    print(
        f"validation: {bpc:.3f} bits per character after {time.monotonic() - t0:.0f} s "
        f"(the model is in {result.out})"
    )
    model = load(result.out, backend=args.backend)
    # a prompt the vocabulary can encode: "The " when it can, else the text's first word
    prompt = "The " if all(ch in vocab for ch in "The ") else text.split(maxsplit=1)[0]
    stream = model.stream()
    for _ in stream.generate(prompt, max_tokens=args.sample, temperature=0.8, seed=args.seed):
        pass
    print("\nsample (temperature 0.8):\n")
    print(vocab.decode(np.array(stream.tokens, np.int64)))  # the prompt and what followed
    return 0


if __name__ == "__main__":
    sys.exit(main())
