"""A learned optimizer in a plain PyTorch training loop: no Lightning anywhere.

``LearnedOptimizer`` is an ordinary ``torch.optim.Optimizer``; importing it loads neither
Lightning nor the meta-training code, so it drops into any loop (a hand-written one as
here, Hugging Face ``Trainer(optimizers=...)``, torchtitan...).  Run::

    python examples/plain_pytorch_loop.py                        # the shipped "general" optimizer, lr 1 (as trained)
    python examples/plain_pytorch_loop.py --steps 200

It fits a small MLP to a synthetic regression problem and prints the loss every few steps.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from l2l_lightning.optim import LearnedOptimizer


def train(checkpoint: str = "general", steps: int = 100, seed: int = 0, lr: float = 1.0) -> list[float]:
    """Train the MLP for ``steps`` full-batch steps; return the loss before each step."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 10, generator=generator)
    y = x @ torch.randn(10, 1, generator=generator) + 0.1 * torch.randn(256, 1, generator=generator)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    # total_steps: the run's length, which a net with a learned schedule (general) reads; others ignore it
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=checkpoint, lr=lr, total_steps=steps)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="general", help="a shipped name or a path to a trained optimizer")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1.0, help="multiplier of the learned update (1: as meta-trained)")
    args = parser.parse_args(argv)
    losses = train(args.checkpoint, args.steps, lr=args.lr)
    for step in range(0, len(losses), max(1, len(losses) // 10)):
        print(f"step {step:4d}  loss {losses[step]:.4f}")
    print(f"final loss {losses[-1]:.4f} (started at {losses[0]:.4f})")


if __name__ == "__main__":
    main()
