"""The rnnlm command line's arguments: one subparser per command, each pointing at the
function that runs it."""

from __future__ import annotations

import argparse
import math

from .. import __version__
from ..backend import CHOICES, ENV_VAR
from .common import Parser
from .demo import cmd_demo
from .files import cmd_export_torch, cmd_import_torch, cmd_info, cmd_quantize
from .inspecting import cmd_diagnose, cmd_explain
from .scoring import cmd_generate, cmd_score
from .training import cmd_sweep, cmd_train


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
    parser = Parser(
        prog="rnnlm", description="rnnlm-engine: recurrent language models on Numba kernels"
    )
    parser.add_argument("--version", action="version", version=f"rnnlm-engine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    common.add_argument("--quiet", action="store_true", help="no progress or messages")
    computing = Parser(add_help=False, parents=[common])  # the commands that run a model
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
    # --resume compares the options given with their defaults (cli/training.py)
    t.set_defaults(func=cmd_train, option_defaults=t.parse_args(["--out", "x"]))

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
