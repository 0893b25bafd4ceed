"""Hand-designed optimizers as baselines, each with its learning rate tuned on a grid.

Baselines run the real ``torch.optim`` classes on the problem's flat parameter
vector.  Those optimizers are elementwise, so a batch of independent optimizees in
one vector is optimized exactly as if each were alone.  The curve is recorded with
the same convention as :func:`l2l_lightning.meta.unroll.unroll`: the loss *after*
each update.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from l2l_lightning.tasks.base import Problem

OptimizerFactory = Callable[[list[Tensor], float], torch.optim.Optimizer]

#: ``name -> factory(params, lr)``; other hyper-parameters at library defaults (as in the paper).
BASELINES: dict[str, OptimizerFactory] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "nag": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
}

#: Half-decade log grid from 1e-3 to 1.
DEFAULT_LR_GRID: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


class TunedBaseline(NamedTuple):
    name: str
    lr: float  #: the learning rate with the lowest mean loss
    curve: Tensor  #: ``(num_steps,)`` loss after each update, mean over optimizees and problems
    mean_losses: dict[float, float]  #: mean loss over the curve for every lr tried (inf if it diverged)


def run_baseline(name: str, lr: float, problem: Problem, num_steps: int) -> Tensor:
    """Loss curve ``(num_steps, num_optimizees)`` of baseline ``name`` at learning rate ``lr``."""
    losses = []
    with torch.inference_mode(False), torch.enable_grad():
        theta = problem.initial_params().clone().requires_grad_(True)
        optimizer = BASELINES[name]([theta], lr)
        loss = problem.loss(theta, 0)
        for step in range(num_steps):
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            loss = problem.loss(theta, step + 1)
            losses.append(loss.detach())
    return torch.stack(losses)


def tune_baseline(
    name: str,
    problems: Sequence[Problem],
    num_steps: int,
    lrs: Sequence[float] = DEFAULT_LR_GRID,
    on_run: Optional[Callable[[], object]] = None,
) -> TunedBaseline:
    """Run ``name`` at every ``lr`` on every problem; keep the lr with the lowest mean loss.

    ``on_run`` is called after each (lr, problem) run, e.g. to advance a progress bar.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; allowed: {', '.join(BASELINES)}")
    curves, scores = {}, {}
    for lr in lrs:
        runs = []
        for problem in problems:
            runs.append(run_baseline(name, lr, problem, num_steps))
            if on_run is not None:
                on_run()
        curve = torch.cat(runs, dim=1).mean(1)
        score = curve.mean().item()
        curves[lr], scores[lr] = curve, score if math.isfinite(score) else math.inf
    best = min(lrs, key=lambda lr: scores[lr])
    return TunedBaseline(name, best, curves[best], scores)
