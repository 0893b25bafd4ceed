"""The paper's first experiment: random quadratics ``f(θ) = ‖Wθ − y‖²``."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from l2l_lightning.errors import check_choice, check_nonnegative_float, check_positive_int
from l2l_lightning.tasks.base import Problem, Split, Task


class QuadraticProblem(Problem):
    """A batch of independent quadratics; ``theta`` holds ``num_problems × dim`` coordinates."""

    def __init__(self, W: Tensor, y: Tensor, theta0: Tensor) -> None:
        self.W, self.y = W, y
        self.num_optimizees = W.shape[0]
        self._theta0 = theta0.reshape(-1)

    def initial_params(self) -> Tensor:
        return self._theta0.clone()

    def loss(self, theta: Tensor, step: int) -> Tensor:
        residual = torch.bmm(self.W, theta.view(self.y.shape).unsqueeze(-1)).squeeze(-1) - self.y
        return residual.square().sum(-1)


class QuadraticTask(Task):
    """Quadratics ``f_i(θ_i) = ‖W_i θ_i − y_i‖²``, ``num_problems`` of them per draw.

    Args:
        dim: dimension of θ (paper: 10); ``W`` is ``dim × dim``.
        num_problems: independent quadratics per draw (authors' code: 128).
        distribution: ``"normal"`` draws W and y i.i.d. N(0, 1) (paper);
            ``"uniform"`` draws them from U[0, 1) (authors' code option).
        init_std: θ₀ ~ N(0, init_std²) (authors' code: 0.01).
    """

    def __init__(
        self,
        dim: int = 10,
        num_problems: int = 128,
        distribution: Literal["normal", "uniform"] = "normal",
        init_std: float = 0.01,
    ) -> None:
        for name, value in (("dim", dim), ("num_problems", num_problems)):
            check_positive_int(f"QuadraticTask: {name}", value)
        check_choice("QuadraticTask: distribution", distribution, ("normal", "uniform"))
        self.dim = dim
        self.num_problems = num_problems
        self.distribution = distribution
        self.init_std = check_nonnegative_float("QuadraticTask: init_std", init_std)

    def sample(
        self, generator: torch.Generator, device: torch.device | str = "cpu", split: Split = "train"
    ) -> QuadraticProblem:
        draw = torch.randn if self.distribution == "normal" else torch.rand
        W = draw(self.num_problems, self.dim, self.dim, generator=generator)
        y = draw(self.num_problems, self.dim, generator=generator)
        theta0 = torch.randn(self.num_problems, self.dim, generator=generator) * self.init_std
        return QuadraticProblem(W.to(device), y.to(device), theta0.to(device))
