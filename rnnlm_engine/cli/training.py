"""rnnlm train and rnnlm sweep."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import adaptive_text, dask_client


def split_ids(ids: np.ndarray, fraction: float):
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
    defaults = args.option_defaults  # the train parser's own (cli/parser.py)
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
    from ..output import choose_cutoffs

    if text.strip() == "auto":
        return choose_cutoffs(ids, vocab_size, config.hidden_size, config.div_value)
    try:
        cutoffs = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(
            f"--adaptive takes auto or cutoffs such as 2000,10000; got {text!r}"
        ) from None
    return cutoffs


def cmd_train(args) -> int:
    from ..modelfile import load as load_file
    from ..train import Progress, TrainConfig, train
    from ..vocab import Vocabulary, read_text

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
        train_ids, valid_ids = split_ids(ids, fraction)
    progress.message(
        f"{len(train_ids):,} training and {len(valid_ids):,} validation tokens; "
        f"{vocab.kind} vocabulary of {len(vocab):,}; {config.cell} {config.num_layers} x "
        f"{config.hidden_size}{' residual' if config.residual else ''}"
        f"{adaptive_text(config.cutoffs, config.div_value)}, {config.optimizer} lr "
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


def cmd_sweep(args) -> int:
    from ..sweep import Budget, format_table, parse_grid, sweep
    from ..train import Progress
    from ..vocab import Vocabulary, read_text

    grid = parse_grid(args.grid)
    budget = Budget(args.trial_epochs, args.trial_windows, args.trial_time)
    if not args.valid and args.folds < 2:
        raise InputError("give --valid FILE or --folds K (K >= 2) to validate the trials on")
    errors = "replace" if args.replace_invalid else "strict"
    text = read_text(args.train, errors=errors)
    vocab = Vocabulary.build(text, args.level, max_size=args.max_vocab, min_count=args.min_count)
    valid = vocab.encode(read_text(args.valid, errors=errors)) if args.valid else None
    client = dask_client(args.scheduler) if args.scheduler else None
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
