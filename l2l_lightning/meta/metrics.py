"""torchmetrics used by meta-training's evaluation."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class CurveMean(Metric):
    """Mean loss curve over many optimizees: ``update((num_steps, k))``, ``compute() -> (num_steps,)``.

    Sums and counts are reduced across processes, so under DDP every rank's
    held-out problems count once.
    """

    full_state_update = False

    def __init__(self, num_steps: int) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(num_steps, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, losses: Tensor) -> None:
        self.total += losses.to(self.total).sum(dim=1)
        self.count += losses.shape[1]

    def compute(self) -> Tensor:
        return (self.total / self.count).float()
