"""Your own learned optimizer: a per-coordinate MLP over momentum features, in about thirty lines.

The shape of google/learned_optimization's small per-parameter MLP optimizers: each
coordinate keeps momenta at a few decay rates and a second moment; an MLP shared by all
coordinates reads them (normalised by the second moment) and outputs a direction and a
log step size.  Meta-train it with ``l2l fit --config configs/quadratic.yaml --model.net
per_coordinate_mlp.PerCoordinateMLP`` (with ``examples/`` on ``PYTHONPATH``), ship it with
``l2l-export`` and deploy it with ``LearnedOptimizer(..., checkpoint="mine.pt")``.
"""

from __future__ import annotations

import torch
from torch import nn

from l2l_lightning.nets import LearnedOptimizerNet


class PerCoordinateMLP(LearnedOptimizerNet):
    """Momenta at ``decays`` and a second moment per coordinate; an MLP maps them to the update."""

    coordinate_dim = 1  # the state is (features, n): coordinates along dim 1

    def __init__(self, hidden_size: int = 32, decays: tuple[float, ...] = (0.5, 0.9, 0.99), step_scale: float = 0.01):
        super().__init__()
        self.hidden_size, self.decays, self.step_scale = hidden_size, tuple(decays), step_scale
        self.mlp = nn.Sequential(nn.Linear(len(self.decays) + 1, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 2))
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)  # start with tiny steps
        nn.init.zeros_(self.mlp[-1].bias)

    @property
    def config(self) -> dict:
        return {"hidden_size": self.hidden_size, "decays": list(self.decays), "step_scale": self.step_scale}

    def state_shape(self, n: int) -> tuple[int, ...]:
        return (len(self.decays) + 1, n)  # momenta, then the second moment

    def forward(self, grad: torch.Tensor, state: torch.Tensor, layout=None) -> tuple[torch.Tensor, torch.Tensor]:
        decays = torch.tensor(self.decays, dtype=grad.dtype, device=grad.device).unsqueeze(1)
        momenta = decays * state[:-1] + (1 - decays) * grad
        second = 0.99 * state[-1] + 0.01 * grad.square()
        features = torch.cat((grad.unsqueeze(0), momenta)) * torch.rsqrt(second + 1e-12)
        direction, log_step = self.mlp(features.t()).unbind(1)
        update = -self.step_scale * direction * torch.exp(log_step)
        return update, torch.cat((momenta, second.unsqueeze(0)))
