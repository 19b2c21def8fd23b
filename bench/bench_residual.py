"""Residual connections through depth: a 4-layer LSTM on PTB (word level) trained with and
without them, side by side in one run, on the same budget of training windows, the same
seed and the same data; validation perplexity and gradient norms through depth.

    python bench/bench_residual.py                    # 1000 windows a model (~5 min quiet)
    python bench/bench_residual.py --windows 100      # a quick look

Setup: LSTM 4 x 200, embedding 200 (so layer 0 is residual too: with --residual every
layer's output is its cell's h plus its input), untied, weights uniform in +-0.1, dropout
0.1, batch 20, BPTT 35, SGD lr 20 with gradients clipped at global norm 0.25 (as
bench/train_ptb.py, on the mean loss). Both models start from the same weights (a residual
model has no parameters of its own, so the seed draws the same arrays) and see the same
dropout masks.

The budget is a number of training windows (--windows), not a wall time, so the
comparison stays fair on a loaded machine: each model trains on the first `windows`
windows of the batchified training text, walked down the columns with the state carried,
exactly as rnnlm_engine.train does (this script drives Model.loss_and_grad, clipping and
the optimizer itself, to record the gradients of the windows it trains on).
Validation perplexity is on the whole of PTB valid at batch 10, as train() validates.

Gradient norms, two kinds:
- through depth (the "probe"): on P fixed windows spread over the training text, each from
  a zero state, without dropout and without updating, the L2 norm of the gradient of the
  mean loss with respect to each layer's input, a (T*B, width) array: the embeddings
  (layer 0's input), the outputs of layers 0-2 (the inputs of layers 1-3) and the output of
  layer 3 (the decoder's input). Measured at the initial weights (the start) and at the
  trained weights (the end); averaged over the P windows. A subclass of Model records the
  gradient arriving at each layer's output in _layer_backward.
- of the parameters: ||d loss / d rnn.weight_ih_l{k}|| and ||d loss / d rnn.weight_hh_l{k}||
  (before clipping) averaged over the first and the last K training windows (dropout on).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np

from rnnlm_engine.model import Model
from rnnlm_engine.optim import clip_grad_norm, make_optimizer
from rnnlm_engine.train import TrainConfig, batchify, evaluate, initial_parameters
from rnnlm_engine.vocab import Vocabulary, read_text

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ptb"

CONFIG = TrainConfig(
    cell="lstm", emb_size=200, hidden_size=200, num_layers=4, dropout=0.1, init_range=0.1,
    optimizer="sgd", lr=20.0, clip=0.25, batch_size=20, bptt=35, eval_batch_size=10, seed=1,
)  # fmt: skip


class DepthProbeModel(Model):
    """A Model that, while ``probe`` is a dict, records the L2 norm of the gradient arriving
    at each layer's output ("out{k}") and at layer 0's input ("emb"), the embeddings.
    Only the probe passes (no dropout) set it; the gradients themselves are unchanged."""

    probe: dict | None = None

    def _layer_backward(self, layer, dx, state, saved, grads):
        if self.probe is not None:
            self.probe[f"out{layer}"] = _norm(self._k.to_host(dx))
        dx_in = super()._layer_backward(layer, dx, state, saved, grads)
        if self.probe is not None and layer == 0:
            d_emb = self._k.to_host(dx_in)
            if self.config.residual_layers[0]:  # loss_and_grad adds the skip path after this
                d_emb = d_emb + self._k.to_host(dx)
            self.probe["emb"] = _norm(d_emb)
        return dx_in


def _norm(a) -> float:
    return float(np.sqrt(np.sum(np.square(a, dtype=np.float64))))


def probe_depth(model: DepthProbeModel, data: np.ndarray, starts: list[int], bptt: int) -> dict:
    """Mean over the probe windows of each depth's input-gradient norm and of each
    parameter's gradient norm (no dropout, zero state, no update)."""
    sums: dict[str, float] = {}
    for i in starts:
        model.probe = {}
        try:
            _, grads, _ = model.loss_and_grad(data[i : i + bptt], data[i + 1 : i + 1 + bptt])
            record = dict(model.probe)
        finally:
            model.probe = None
        record |= {name: _norm(model._k.to_host(g)) for name, g in grads.items()}
        for key, v in record.items():
            sums[key] = sums.get(key, 0.0) + v
    return {key: v / len(starts) for key, v in sums.items()}


def train_one(config: TrainConfig, vocab_size: int, data, valid, windows: int, keep: int,
              probe_starts: list[int]) -> dict:  # fmt: skip
    """Train one model for `windows` windows; its figures."""
    rng = np.random.default_rng(config.seed)
    mconf = config.model_config(vocab_size)
    model = DepthProbeModel(mconf, initial_parameters(mconf, config.init_range, rng))
    optimizer = make_optimizer(config.optimizer, model._k, config.lr, mconf.parameter_shapes())
    k, T, B = model._k, config.bptt, config.batch_size
    result = {"probe_start": probe_depth(model, data, probe_starts, T)}

    weight_names = [f"rnn.weight_{w}_l{i}" for i in range(config.num_layers) for w in ("ih", "hh")]
    first, last, losses, norms = [], [], [], []
    hidden, status = None, "ok"
    t0 = time.perf_counter()
    for w in range(windows):
        i = w * T
        inputs, targets = data[i : i + T], data[i + 1 : i + 1 + T]
        masks = model.dropout_masks(T, B, config.dropout, rng) if config.dropout > 0 else None
        with np.errstate(over="ignore", invalid="ignore"):
            loss, grads, hidden = model.loss_and_grad(inputs, targets, hidden, masks)
        if w < keep or w >= windows - keep:
            (first if w < keep else last).append(
                {name: _norm(k.to_host(grads[name])) for name in weight_names}
            )
        norm = clip_grad_norm(k, grads, config.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            status = f"diverged at window {w + 1} (loss {loss})"
            break
        model._apply_update(lambda p, g=grads: optimizer.step(p, g))
        losses.append(loss)
        norms.append(norm)
    seconds = time.perf_counter() - t0
    result |= {"status": status, "seconds": seconds, "windows": len(losses)}
    result["tokens_per_s"] = len(losses) * T * B / seconds
    result["train_loss_last"] = float(np.mean(losses[-keep:])) if losses else math.nan
    result["losses"] = losses
    result["clip_norm_first"] = float(np.mean(norms[:keep])) if norms else math.nan
    result["clip_norm_last"] = float(np.mean(norms[-keep:])) if norms else math.nan
    result["weights_first"] = {n: float(np.mean([r[n] for r in first])) for n in weight_names}
    result["weights_last"] = {
        n: float(np.mean([r[n] for r in last])) if last else math.nan for n in weight_names
    }
    if status == "ok":
        model._check_bounds()
        t1 = time.perf_counter()
        result["valid_ppl"] = math.exp(evaluate(model, valid))
        result["valid_seconds"] = time.perf_counter() - t1
        result["probe_end"] = probe_depth(model, data, probe_starts, T)
    else:
        result["valid_ppl"] = math.nan
        result["probe_end"] = {}
    return result


def warm_up(config: TrainConfig, vocab_size: int, data: np.ndarray, valid: np.ndarray) -> None:
    """Compile every kernel both runs use (plain and residual, with dropout, the optimizer,
    validation) on two windows of a throwaway model, so neither run's time includes it."""
    T, B = config.bptt, config.batch_size
    for residual in (False, True):
        c = TrainConfig.from_dict(config.to_dict() | {"residual": residual})
        rng = np.random.default_rng(0)
        mconf = c.model_config(vocab_size)
        model = Model(mconf, initial_parameters(mconf, c.init_range, rng))
        opt = make_optimizer(c.optimizer, model._k, c.lr, mconf.parameter_shapes())
        masks = model.dropout_masks(T, B, max(c.dropout, 0.1), rng)
        _, grads, _ = model.loss_and_grad(data[:T], data[1 : T + 1], None, masks)
        clip_grad_norm(model._k, grads, c.clip)
        model._apply_update(lambda p, g=grads, o=opt: o.step(p, g))
        model.token_logprobs(valid[:T], valid[1 : T + 1])


def depth_rows(num_layers: int) -> list[tuple[str, str]]:
    """(label, probe key), from the top of the stack down to the embeddings."""
    rows = [(f"d/d output of layer {num_layers - 1} (decoder input)", f"out{num_layers - 1}")]
    for k in reversed(range(1, num_layers)):
        rows.append((f"d/d input of layer {k} (output of {k - 1})", f"out{k - 1}"))
    rows.append(("d/d input of layer 0 (embeddings)", "emb"))
    return rows


def print_tables(config: TrainConfig, runs: dict[str, dict], probe_windows: int, keep: int):
    names = list(runs)
    plain, res = runs[names[0]], runs[names[1]]
    L = config.num_layers

    def fmt(v, spec):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    print("\nsummary")
    print(f"{'':34} {names[0]:>14} {names[1]:>14} {'res/plain':>10}")
    rows = [
        ("status", plain["status"], res["status"], None, "s"),
        ("windows trained", plain["windows"], res["windows"], None, ",d"),
        ("valid perplexity (all, batch 10)", plain["valid_ppl"], res["valid_ppl"], True, ".2f"),
        ("train ppl, last windows", math.exp(plain["train_loss_last"]),
         math.exp(res["train_loss_last"]), True, ".2f"),
        ("global grad norm, first windows", plain["clip_norm_first"], res["clip_norm_first"],
         True, ".4f"),
        ("global grad norm, last windows", plain["clip_norm_last"], res["clip_norm_last"],
         True, ".4f"),
        ("training seconds", plain["seconds"], res["seconds"], True, ".0f"),
        ("tokens/s", plain["tokens_per_s"], res["tokens_per_s"], True, ",.0f"),
    ]  # fmt: skip
    for label, a, b, ratio, spec in rows:
        r = fmt(b / a, ".3f") if ratio and a and b == b and a == a else ""
        print(f"{label:34} {fmt(a, spec):>14} {fmt(b, spec):>14} {r:>10}")

    windows = max(len(plain["losses"]), len(res["losses"]))
    print("\ntraining perplexity by stretch of windows (dropout on)")
    print(f"{'windows':34} {names[0]:>14} {names[1]:>14} {'res/plain':>10}")
    chunk = max(1, math.ceil(windows / 5))
    for lo in range(0, windows, chunk):
        hi = min(windows, lo + chunk)
        a, b = (
            math.exp(np.mean(run["losses"][lo:hi])) if len(run["losses"]) >= hi else math.nan
            for run in (plain, res)
        )
        print(f"{f'{lo + 1}-{hi}':34} {fmt(a, '.2f'):>14} {fmt(b, '.2f'):>14} "
              f"{fmt(b / a, '.3f'):>10}")  # fmt: skip

    for when in ("start", "end"):
        p, r = plain[f"probe_{when}"], res[f"probe_{when}"]
        weights = "initial weights" if when == "start" else "trained weights"
        print(
            f"\ngradient norm through depth at the {when} ({weights}; mean over "
            f"{probe_windows} windows, no dropout); x top: relative to the decoder input's"
        )
        print(f"{'':44} {names[0]:>10} {'x top':>6} {names[1]:>10} {'x top':>6} {'res/plain':>9}")
        top = f"out{L - 1}"
        for label, key in depth_rows(L):
            a, b = p.get(key, math.nan), r.get(key, math.nan)
            print(
                f"{label:44} {fmt(a, '.3e'):>10} {fmt(a / p.get(top, math.nan), '.3f'):>6} "
                f"{fmt(b, '.3e'):>10} {fmt(b / r.get(top, math.nan), '.3f'):>6} "
                f"{fmt(b / a, '.2f'):>9}"
            )
        print(f"{'parameter gradient norms':44}")
        for i in reversed(range(L)):
            for w in ("ih", "hh"):
                key = f"rnn.weight_{w}_l{i}"
                top_key = f"rnn.weight_{w}_l{L - 1}"
                a, b = p.get(key, math.nan), r.get(key, math.nan)
                print(
                    f"{'  ' + key:44} {fmt(a, '.3e'):>10} "
                    f"{fmt(a / p.get(top_key, math.nan), '.3f'):>6} {fmt(b, '.3e'):>10} "
                    f"{fmt(b / r.get(top_key, math.nan), '.3f'):>6} {fmt(b / a, '.2f'):>9}"
                )

    print(
        f"\nparameter gradient norms during training (before clipping, dropout on), mean over "
        f"the first and the last {keep} windows"
    )
    print(f"{'':22} {names[0] + ' first':>14} {'last':>10} {names[1] + ' first':>14} {'last':>10}")
    for i in reversed(range(L)):
        for w in ("ih", "hh"):
            key = f"rnn.weight_{w}_l{i}"
            print(
                f"{key:22} {fmt(plain['weights_first'][key], '.3e'):>14} "
                f"{fmt(plain['weights_last'][key], '.3e'):>10} "
                f"{fmt(res['weights_first'][key], '.3e'):>14} "
                f"{fmt(res['weights_last'][key], '.3e'):>10}"
            )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help=f"PTB folder (default {DATA})")
    ap.add_argument("--windows", type=int, default=1000, help="training windows per model")
    ap.add_argument("--layers", type=int, default=CONFIG.num_layers)
    ap.add_argument("--size", type=int, default=CONFIG.hidden_size, help="embedding = hidden")
    ap.add_argument("--dropout", type=float, default=CONFIG.dropout)
    ap.add_argument("--optimizer", choices=("sgd", "adam"), default=CONFIG.optimizer)
    ap.add_argument("--lr", type=float, default=None, help="default: 20 (sgd), 0.002 (adam)")
    ap.add_argument("--probe-windows", type=int, default=8)
    ap.add_argument("--keep", type=int, default=20, help="first/last windows to average")
    ap.add_argument("--seed", type=int, default=CONFIG.seed)
    args = ap.parse_args(argv)

    lr = args.lr if args.lr is not None else (20.0 if args.optimizer == "sgd" else 0.002)
    config = TrainConfig.from_dict(
        CONFIG.to_dict()
        | {"num_layers": args.layers, "emb_size": args.size, "hidden_size": args.size,
           "dropout": args.dropout, "optimizer": args.optimizer, "lr": lr, "seed": args.seed}
    )  # fmt: skip
    texts = {s: read_text(args.data / f"ptb.{s}.txt") for s in ("train", "valid")}
    vocab = Vocabulary.build(texts["train"], "word")
    ids = {s: vocab.encode(t) for s, t in texts.items()}
    data = batchify(ids["train"], config.batch_size)
    valid = batchify(ids["valid"], config.eval_batch_size)
    T = config.bptt
    available = (data.shape[0] - 1) // T
    if not 1 <= args.windows <= available:
        ap.error(f"--windows must be in [1, {available}] (one epoch of full windows)")
    keep = max(1, min(args.keep, args.windows // 2))
    step = (data.shape[0] - 1 - T) // args.probe_windows
    probe_starts = [j * step for j in range(args.probe_windows)]

    print(
        f"PTB: {len(vocab):,} words; train {len(ids['train']):,}, valid {len(ids['valid']):,} "
        f"tokens; {numba.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"LSTM {config.num_layers} x {config.hidden_size}, emb {config.emb_size}, dropout "
        f"{config.dropout}, {config.optimizer} lr {config.lr:g}, clip {config.clip}, batch "
        f"{config.batch_size}, bptt {T}; budget {args.windows} windows "
        f"({args.windows * T * config.batch_size:,} tokens, "
        f"{args.windows / available:.0%} of an epoch) per model, seed {config.seed}",
        flush=True,
    )
    t0 = time.perf_counter()
    warm_up(config, len(vocab), data, valid)
    print(f"kernels compiled or loaded from the cache in {time.perf_counter() - t0:.0f} s")
    runs = {}
    for label, residual in (("plain", False), ("residual", True)):
        c = TrainConfig.from_dict(config.to_dict() | {"residual": residual})
        layers = c.model_config(len(vocab)).residual_layers
        print(f"training {label} (residual layers {list(layers)})...", flush=True)
        runs[label] = train_one(c, len(vocab), data, valid, args.windows, keep, probe_starts)
        r = runs[label]
        print(
            f"  {r['status']}: {r['windows']} windows in {r['seconds']:.0f} s "
            f"({r['tokens_per_s']:,.0f} tokens/s), valid perplexity {r['valid_ppl']:.2f}; "
            f"load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    print_tables(config, runs, args.probe_windows, keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
