"""rnnlm demo: a small character model trained for about a minute, then a sample."""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from ..errors import InputError
from .training import split_ids


def demo_corpus() -> str:
    """Python's own help text (the pydoc topics): present in every CPython installation."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n".join(topics[k] for k in sorted(topics))


def cmd_demo(args) -> int:
    from ..model import load
    from ..train import Progress, TrainConfig, train
    from ..vocab import Vocabulary, read_text

    progress = Progress(quiet=args.quiet)
    text = read_text(args.corpus) if args.corpus else demo_corpus()
    source = args.corpus or "pydoc_data.topics (Python's help text)"
    vocab = Vocabulary.build(text, "char")
    ids = vocab.encode(text)
    train_ids, valid_ids = split_ids(ids, 0.1)
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
