#!/usr/bin/env python
"""Deployment step of the feature nets (MLP and LSTM heads) next to the paper's LSTM and Adam, in one run.

    python benchmarks/feature_step.py                      # 1M parameters
    python benchmarks/feature_step.py --sizes 100k,1M,10M --threads 2 --with-compiled

The models and gradients are ``step_overhead.py``'s (two square ``nn.Linear`` layers, fixed
random gradients; only the optimizer step is timed).  Interleaved round-robin in one process,
so every candidate sees the same background load, it times ``LearnedOptimizer.step`` with
:class:`~l2l_lightning.FeatureMLP` (default settings: hidden 32 × 2, momenta and Adafactor
statistics at 3 decays; the chunked two-pass runtime), with :class:`~l2l_lightning.FeatureLSTM`
(the same features, an LSTM head of one layer of 16), with the paper's LSTM (2 × 20, ``log_sign``) and
``torch.optim.Adam``, and reports the feature nets' times as ratios to the paper LSTM's and Adam's.  Memory per parameter is every optimizer state tensor (per-coordinate and per-tensor)
divided by the parameter count.  ``--with-compiled`` also times the feature MLP with
``compile=True`` (it has no pure chunk form yet, so this measures only the fallback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from step_overhead import make_model, parse_size  # noqa: E402

from l2l_lightning import CoordinatewiseLSTM, FeatureLSTM, LearnedOptimizer  # noqa: E402
from l2l_lightning.optim.pretrained import load_net  # noqa: E402


def state_bytes(optimizer: LearnedOptimizer) -> int:
    """Bytes of every state tensor the optimizer keeps (net state and per-tensor state; not the step count)."""
    return sum(v.nbytes for s in optimizer.state.values() for k, v in s.items() if k != "step")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M", help="parameter counts, e.g. 100k,1M")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per candidate (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--with-compiled", action="store_true", help="also time the feature MLP with compile=True")
    args = parser.parse_args(argv)
    threads = common.setup_threads(args.threads)
    where = common.machine("cpu")
    torch.manual_seed(0)
    lstm_net = CoordinatewiseLSTM(hidden_size=20, num_layers=2, preprocess="log_sign", p=10.0, output_scale=0.1)
    # the shipped `general` (a FeatureMLP of 32×2 units with a learned schedule): what users deploy
    feature_net, feature_lstm_net = load_net("general"), FeatureLSTM()
    rows = []
    for label in args.sizes.split(","):
        params = make_model(parse_size(label), "cpu", seed=0)
        n = sum(p.numel() for p in params)
        features = LearnedOptimizer(params, feature_net, compile=False, total_steps=1000)
        feature_lstm = LearnedOptimizer(params, feature_lstm_net, compile=False)
        lstm = LearnedOptimizer(params, lstm_net, compile=False)
        adam = torch.optim.Adam(params, lr=1e-3)
        fns = {"features": features.step, "feature_lstm": feature_lstm.step, "lstm": lstm.step, "adam": adam.step}
        if args.with_compiled:
            fns["compiled"] = LearnedOptimizer(params, feature_net, compile=True, total_steps=1000).step
        times = common.interleaved(fns, args.repeats)
        row = [
            f"{label.strip()} ({n:,})",
            common.fmt_time(times["features"]),
            common.fmt_time(times["feature_lstm"]),
            common.fmt_time(times["lstm"]),
            common.fmt_time(times["adam"]),
            f"**{times['features'] / times['lstm']:.2f}×** / {times['features'] / times['adam']:.2g}×",
            f"**{times['feature_lstm'] / times['lstm']:.2f}×** / {times['feature_lstm'] / times['adam']:.2g}×",
            f"{state_bytes(features) / n:.1f} B / {state_bytes(feature_lstm) / n:.0f} B / {state_bytes(lstm) / n:.0f} B",
        ]
        if args.with_compiled:
            row.append(f"{common.fmt_time(times['compiled'])} ({times['features'] / times['compiled']:.2f}×)")
        rows.append(row)
    header = [
        "parameters", "FeatureMLP (`general`) step", "FeatureLSTM step", "paper LSTM step", "Adam step",
        "FeatureMLP ÷ LSTM / ÷ Adam", "FeatureLSTM ÷ LSTM / ÷ Adam", "state / param: MLP / FeatureLSTM / LSTM",
    ] + (["compiled (eager / compiled)"] if args.with_compiled else [])  # fmt: skip
    out = common.report(
        f"Feature nets' deployment step vs the paper's LSTM and Adam (CPU, {threads} thread(s), median of {args.repeats})",
        where,
        header,
        rows,
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
