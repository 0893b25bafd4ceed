#!/usr/bin/env python
"""Which learning rate to try with each shipped optimizer on a network of your own (the README's table).

    python benchmarks/lr_ranges.py                  # 300 steps, seed 0: a few minutes on one core
    python benchmarks/lr_ranges.py --steps 1000 --seeds 0,1

Two small Fashion-MNIST classifiers that no shipped optimizer was trained on (a 784-64-10 ReLU
MLP, a 2-conv CNN), minibatches of 128 training images, ``--steps`` steps from PyTorch's
default initialisation; the figure is the cross-entropy on 2,000 test images afterwards
(mean over ``--seeds``).  Each shipped optimizer runs at every ``lr`` of its grid, tuned Adam
beside them for scale.  Fashion-MNIST only: the MNIST digits are never used to tune anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

from l2l_lightning.data.readers import read_idx  # noqa: E402
from l2l_lightning.optim import LearnedOptimizer  # noqa: E402

DATA = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
GRIDS = {
    "adam": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    "fashion_mnist": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
    "neural_art": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
    "quadratic": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 49, 10),
    )  # fmt: skip


NETS: dict[str, Callable[[], nn.Module]] = {"MLP 784-64-10": mlp, "CNN 8-16 conv": cnn}


def images(split: str, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(DATA / f"{prefix}-images-idx3-ubyte.gz")[:count].float().div(255).unsqueeze(1)
    return x, read_idx(DATA / f"{prefix}-labels-idx1-ubyte.gz")[:count].long()


def test_loss(make: Callable[[], nn.Module], optimizer: str, lr: float, steps: int, seed: int, data) -> float:
    (x, y), (x_test, y_test) = data
    torch.manual_seed(seed)
    model = make()
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = LearnedOptimizer(model.parameters(), checkpoint=optimizer, lr=lr)
    batches = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(x), (128,), generator=batches)
        opt.zero_grad()
        F.cross_entropy(model(x[index]), y[index]).backward()
        opt.step()
    with torch.no_grad():
        loss = F.cross_entropy(model(x_test), y_test).item()
    return loss if loss == loss else float("inf")  # NaN: diverged


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0", help="comma-separated; the figure is their mean")
    parser.add_argument("--optimizers", default=",".join(GRIDS), help="comma-separated subset of " + ", ".join(GRIDS))
    args = parser.parse_args(argv)
    common.setup_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    data = (images("train"), images("test", 2000))
    rows = []
    for optimizer in args.optimizers.split(","):
        for lr in GRIDS[optimizer]:
            losses = [sum(test_loss(make, optimizer, lr, args.steps, seed, data) for seed in seeds) / len(seeds)
                      for make in NETS.values()]  # fmt: skip
            rows.append([optimizer, f"{lr:g}", *(f"{loss:.3f}" for loss in losses)])
    out = common.report(
        f"lr_ranges — test cross-entropy after {args.steps} steps (Fashion-MNIST, batch 128, seeds {args.seeds})",
        common.machine("cpu"),
        ["optimizer", "lr", *NETS],
        rows,
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
