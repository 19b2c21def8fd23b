"""rnnlm score (a file or stdin; or many files into a folder, locally or on Dask) and
rnnlm generate."""

from __future__ import annotations

import codecs
import json
import math
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import dask_client


def cmd_score(args) -> int:
    from ..model import load

    many_only = ("jsonl", "buckets", "bucket_cutoffs", "min_ppl", "max_ppl", "skip_bad",
                 "scheduler")  # fmt: skip
    if args.out is None:
        given = [f"--{o.replace('_', '-')}" for o in many_only if getattr(args, o)]
        if given:
            raise InputError(f"{', '.join(given)} go with --out DIR (scoring files into it)")
        if len(args.files) > 1:
            raise InputError("several files are scored into a folder: give --out DIR")
    if args.out is not None:
        ignored = [flag for flag, given in (("--mode corpus", args.mode != "sentence"),
                   ("--log10", args.log10), ("--per-token", args.per_token)) if given]  # fmt: skip
        if ignored:
            raise InputError(
                f"{', '.join(ignored)} cannot go with --out DIR: its documents are scored "
                "line by line (sentence mode) in nats, a total per document"
            )
        if args.field != "text" and not args.jsonl:
            raise InputError("--field names a field of JSON records: it goes with --jsonl")
        return _score_files(args)
    model = load(args.model, backend=args.backend)
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


def _score_files(args) -> int:
    """rnnlm score MODEL FILES... --out DIR: see rnnlm_engine.shards. On a Dask cluster the
    workers load the model; here it is only checked (read and validated, not built)."""
    from .. import modelfile, shards
    from ..model import load

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
        from .. import distributed

        modelfile.read_info(args.model)  # a bad file: one error here, not one per task
        client = dask_client(args.scheduler)
        corpus = distributed.score_files(
            args.files, args.model, args.out, options, client=client, progress=progress,
            backend=args.backend,
        )  # fmt: skip
    else:
        model = load(args.model, backend=args.backend)
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
    from ..errors import VocabularyError

    for n, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            line = raw.decode("utf-8", errors=errors)
        except UnicodeDecodeError as e:
            raise VocabularyError(
                f"standard input: invalid UTF-8 in line {n} at byte {e.start} ({e.reason}); "
                "pass --replace-invalid to substitute U+FFFD"
            ) from None
        yield line[:-1] if line.endswith("\n") else line


def cmd_generate(args) -> int:
    from ..model import load

    model = load(args.model, backend=args.backend)
    if model.vocab is None:
        raise InputError(f"{args.model} holds no vocabulary: it cannot write text")
    stream = model.stream()
    prompt = args.prompt
    if not prompt:  # start after a line end, as a text begins
        from ..scoring import line_end_id

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
