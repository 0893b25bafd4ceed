#!/usr/bin/env python
"""Neural art: cost of one inner step with the random feature network vs VGG-19.

    python benchmarks/neural_art_step.py --threads 1
    python benchmarks/neural_art_step.py --resolutions 64,128 --images 2 --vgg-weights PATH

Two timed units per (network, resolution), on ``--images`` images (optimizees) at once:

* ``loss + grad``: the optimizee's loss and its gradient: what a hand-designed optimizer
  pays per step (``l2l compare``'s baselines);
* ``meta-training``: one truncation of 20 inner steps exactly as ``MetaLearner`` runs it
  (:func:`l2l_lightning.unroll` with the paper's LSTM, then the meta-loss's backward),
  divided by 20.

VGG-19 runs with randomly initialised weights unless ``--vgg-weights`` names a file:
its cost does not depend on the weights' values, and no weights file is available offline.
Synthetic images (the cost does not depend on the pixels either).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from l2l_lightning import CoordinatewiseLSTM  # noqa: E402
from l2l_lightning.meta.unroll import unroll  # noqa: E402
from l2l_lightning.tasks.features import FeatureNet, RandomFeatures, VGG19Features, default_layers  # noqa: E402
from l2l_lightning.tasks.neural_art import NeuralArtProblem  # noqa: E402


def problem_for(net: FeatureNet, kind: str, images: int, resolution: int, channels: int) -> NeuralArtProblem:
    generator = torch.Generator().manual_seed(0)
    content = torch.rand(images, 3, resolution, resolution, generator=generator)
    style = torch.rand(3, resolution, resolution, generator=generator)
    content_layers, style_layers = default_layers(kind, channels)
    return NeuralArtProblem(net, content, style, torch.rand_like(content), content_layers, style_layers, 1.0, 10.0)


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resolutions", default="64,128")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--channels", default="32,64,128", help="the random network's layer widths")
    parser.add_argument("--vgg-weights", default="random")
    parser.add_argument("--unroll", type=int, default=20)
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)
    channels = [int(c) for c in args.channels.split(",")]
    nets = {"random": RandomFeatures(channels, seed=0), "vgg19": VGG19Features(args.vgg_weights)}
    lstm = CoordinatewiseLSTM(preprocess="log_sign", output_scale=0.1)
    rows = []
    for resolution in [int(r) for r in args.resolutions.split(",")]:
        for kind, net in nets.items():
            problem = problem_for(net, kind, args.images, resolution, len(channels))
            theta0 = problem.initial_params()

            def loss_and_grad() -> None:
                theta = theta0.clone().requires_grad_(True)
                torch.autograd.grad(problem.loss(theta, 0).sum(), theta)

            def truncation() -> None:
                result = unroll(lstm, problem, theta0, lstm.init_state(theta0.numel()), 0, args.unroll)
                result.losses.mean(1).sum().backward()

            times = common.interleaved({"grad": loss_and_grad, "meta": truncation}, args.repeats)
            rows.append([
                f"{kind}", f"{resolution}×{resolution}", f"{args.images}", f"{theta0.numel():,}",
                common.fmt_time(times["grad"]), common.fmt_time(times["meta"] / args.unroll),
            ])  # fmt: skip
    weights = "random weights" if args.vgg_weights == "random" else f"weights from {args.vgg_weights}"
    out = "\n".join([
        common.machine(),
        f"random network: channels {channels}; VGG-19: {weights}; median of {args.repeats}",
        common.table(["features", "image", "images", "pixels (θ)", "loss + grad", "meta-training, per inner step"], rows),
    ])  # fmt: skip
    print(out)
    return out


if __name__ == "__main__":
    main()
