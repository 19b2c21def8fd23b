"""PTB word level, the "small" configuration of Zaremba et al. (2014), trained by the engine,
with PyTorch CPU trained on the same configuration in the same run for a throughput ratio.

    python bench/train_ptb.py                     # 13 engine epochs + 1 PyTorch epoch
    python bench/train_ptb.py --epochs 1          # throughput only
    python bench/train_ptb.py --no-torch

Configuration (Zaremba et al. 2014, "small"; TensorFlow's PTB tutorial SmallConfig): LSTM
2 x 200, embedding 200, no dropout, every weight uniform in +-0.1, BPTT 20, batch 20, 13
epochs, SGD with lr 1 halved after every epoch from the 4th, gradients clipped at global
norm 5. Their loss is summed over the 20 time steps and averaged over the batch; ours (and
PyTorch's here) is averaged over all tokens, 20 times smaller, so the same updates need
lr 20 and clip 0.25. Validation and test perplexity are measured as the paper does, with
the state carried through the whole text (batch 1), and also at batch 10 as PyTorch's
word_language_model measures them.

PyTorch runs the same loop (word_language_model's RNNModel, the same initialisation, plain
SGD, clip_grad_norm_, hidden state carried and detached between windows) for
--torch-epochs epochs, with torch.set_num_threads equal to numba's thread count. Its
tokens/s is timed over the training windows only, as the engine's is.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from rnnlm_engine.model import load
from rnnlm_engine.train import Progress, TrainConfig, batchify, evaluate, train
from rnnlm_engine.vocab import Vocabulary, read_text

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ptb"

CONFIG = TrainConfig(
    cell="lstm", emb_size=200, hidden_size=200, num_layers=2, dropout=0.0, init_range=0.1,
    optimizer="sgd", lr=20.0, lr_decay=0.5, decay_start=4, clip=0.25, epochs=13,
    batch_size=20, bptt=20, eval_batch_size=10, seed=1, checkpoint_every=10.0,
)  # fmt: skip


def torch_epochs(torch, vocab_size, train_ids, valid_ids, config: TrainConfig, epochs: int):
    """[(tokens/s, seconds, valid perplexity at batch 10)] per epoch of the PyTorch loop."""
    nn, F = torch.nn, torch.nn.functional
    torch.manual_seed(config.seed)

    class RNNModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Embedding(vocab_size, config.emb_size)
            self.rnn = nn.LSTM(config.emb_size, config.hidden_size, config.num_layers)
            self.decoder = nn.Linear(config.hidden_size, vocab_size)

        def forward(self, ids, hidden):
            out, hidden = self.rnn(self.encoder(ids), hidden)
            return self.decoder(out), hidden

    model = RNNModel()
    for p in model.parameters():
        nn.init.uniform_(p, -config.init_range, config.init_range)
    data = torch.from_numpy(batchify(train_ids, config.batch_size))
    valid = torch.from_numpy(batchify(valid_ids, config.eval_batch_size))
    lr, out = config.lr, []
    for epoch in range(1, epochs + 1):
        hidden, tokens = None, 0
        t0 = time.perf_counter()
        for i in range(0, data.shape[0] - 1, config.bptt):
            seq = min(config.bptt, data.shape[0] - 1 - i)
            inputs, targets = data[i : i + seq], data[i + 1 : i + 1 + seq]
            if hidden is not None:
                hidden = tuple(h.detach() for h in hidden)
            model.zero_grad()
            logits, hidden = model(inputs, hidden)
            loss = F.cross_entropy(logits.view(-1, vocab_size), targets.reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
            tokens += inputs.numel()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            hidden, total, n = None, 0.0, 0
            for i in range(0, valid.shape[0] - 1, 256):
                j = min(valid.shape[0] - 1, i + 256)
                logits, hidden = model(valid[i:j], hidden)
                total += F.cross_entropy(
                    logits.view(-1, vocab_size), valid[i + 1 : j + 1].reshape(-1), reduction="sum"
                ).item()
                n += (j - i) * valid.shape[1]
        out.append((tokens / seconds, seconds, math.exp(total / n)))
        print(
            f"torch epoch {epoch}: {tokens / seconds:,.0f} tokens/s, {seconds:.0f} s, "
            f"valid perplexity {math.exp(total / n):.2f} (batch 10)",
            flush=True,
        )
        if epoch >= (config.decay_start or 10**9):
            lr *= config.lr_decay
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help=f"PTB folder (default {DATA})")
    ap.add_argument("--epochs", type=int, default=13)
    ap.add_argument("--torch-epochs", type=int, default=1)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="model file (default: a temp dir)")
    args = ap.parse_args(argv)

    texts = {s: read_text(args.data / f"ptb.{s}.txt") for s in ("train", "valid", "test")}
    vocab = Vocabulary.build(texts["train"], "word")
    ids = {s: vocab.encode(t) for s, t in texts.items()}
    threads = numba.get_num_threads()
    print(
        f"PTB: {len(vocab):,} words; {', '.join(f'{s} {len(i):,}' for s, i in ids.items())} "
        f"tokens; {threads} threads; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    config = TrainConfig.from_dict(CONFIG.to_dict() | {"epochs": args.epochs})

    torch_runs = []
    if not args.no_torch and args.torch_epochs > 0:
        try:
            import torch
        except ImportError as e:
            print(f"torch skipped: {e}")
        else:
            torch.set_num_threads(threads)
            print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
            torch_runs = torch_epochs(torch, len(vocab), ids["train"], ids["valid"], config,
                                      args.torch_epochs)  # fmt: skip

    folder = tempfile.mkdtemp(prefix="ptb-small-")
    out = args.out or Path(folder) / "ptb_small.rnnlm"
    t0 = time.perf_counter()
    result = train(ids["train"], ids["valid"], vocab, config, out, progress=Progress())
    wall = time.perf_counter() - t0
    model = load(out)
    test1 = math.exp(evaluate(model, batchify(ids["test"], 1)))
    test10 = math.exp(evaluate(model, batchify(ids["test"], 10)))
    valid1 = math.exp(evaluate(model, batchify(ids["valid"], 1)))

    print("\nengine, per epoch")
    print(
        f"{'epoch':>5} {'lr':>8} {'train ppl':>10} {'valid ppl (b10)':>16} {'seconds':>8} "
        f"{'tokens/s':>9}"
    )
    for e in result.history:
        print(
            f"{e['epoch']:>5} {e['lr']:>8.4g} {math.exp(e['train_loss']):>10.2f} "
            f"{math.exp(e['valid_loss']):>16.2f} {e['seconds']:>8.1f} "
            f"{e['tokens_per_s'] or 0:>9,.0f}"
        )
    rates = [e["tokens_per_s"] for e in result.history if e.get("tokens_per_s")]
    print(
        f"\nbest model: valid perplexity {valid1:.2f} (batch 1), test perplexity "
        f"{test1:.2f} (batch 1, as the paper), {test10:.2f} (batch 10)"
    )
    print(
        f"wall time {wall / 60:.1f} min for {len(result.history)} epochs (validation "
        f"included); engine median {np.median(rates):,.0f} tokens/s"
    )
    if torch_runs:
        t_rate = torch_runs[0][0]
        print(
            f"throughput, epoch 1 side by side: engine {rates[0]:,.0f} tokens/s, torch "
            f"{t_rate:,.0f} tokens/s: engine/torch = {rates[0] / t_rate:.2f}x "
            f"(median engine epoch {np.median(rates) / t_rate:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
