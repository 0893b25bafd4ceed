"""Hand-designed optimizers as baselines, each with its learning rate tuned on a grid.

Baselines run the real ``torch.optim`` classes on the problem's flat parameter
vector.  Those optimizers are elementwise, so a batch of independent optimizees in
one vector is optimized exactly as if each were alone.  The curve is recorded with
the same convention as :func:`l2l_lightning.meta.unroll.unroll`: the loss *after*
each update.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

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


def _optimize(name: str, lr: float, problem: Problem, num_steps: int) -> tuple[Tensor, Tensor]:
    """``(curve, final θ)`` of baseline ``name`` at learning rate ``lr`` from ``problem``'s θ₀."""
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
    return torch.stack(losses), theta.detach()


def run_baseline(name: str, lr: float, problem: Problem, num_steps: int) -> Tensor:
    """Loss curve ``(num_steps, num_optimizees)`` of baseline ``name`` at learning rate ``lr``."""
    return _optimize(name, lr, problem, num_steps)[0]


def final_params(name: str, lr: float, problem: Problem, num_steps: int) -> Tensor:
    """θ after ``num_steps`` steps of baseline ``name`` at ``lr`` (e.g. to look at an image optimizee)."""
    return _optimize(name, lr, problem, num_steps)[1]


def next_rate_past_edge(scores: Mapping[float, float]) -> Optional[float]:
    """The rate to try next when the best of ``scores`` (lr -> loss, lower is better) is at an edge, else ``None``.

    A best rate at the edge of the grid only says the grid was too narrow: the next rate lies
    one step (the ratio of the two outermost rates) past that edge, downwards when every rate
    diverged (all scores infinite).  Shared by :func:`tune_baseline` and ``l2l bench``'s tuning.
    """
    grid = sorted(scores)
    if len(grid) < 2:
        return None
    best = min(grid, key=lambda lr: scores[lr])
    if not math.isfinite(scores[best]) or best == grid[0]:  # every rate diverged, or the smallest is best
        return grid[0] ** 2 / grid[1]
    if best == grid[-1]:
        return grid[-1] ** 2 / grid[-2]
    return None


def tune_baseline(
    name: str,
    problems: Sequence[Problem],
    num_steps: int,
    lrs: Sequence[float] = DEFAULT_LR_GRID,
    on_run: Optional[Callable[[], object]] = None,
    extend: int = 3,
    on_extend: Optional[Callable[[float], object]] = None,
) -> TunedBaseline:
    """Run ``name`` at every ``lr`` on every problem; keep the lr with the lowest mean loss.

    A best rate at the edge of the grid only says the grid was too narrow, so the grid
    is then extended geometrically past that edge (by the ratio of its two outermost
    rates; downwards if every rate diverged), one rate at a time, until the best is
    inside it or ``extend`` rates have been added; :attr:`TunedBaseline.mean_losses`
    lists every rate tried.

    ``on_run`` is called after each (lr, problem) run, e.g. to advance a progress bar;
    ``on_extend(lr)`` before the runs of each added rate.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; allowed: {', '.join(BASELINES)}")
    curves: dict[float, Tensor] = {}
    scores: dict[float, float] = {}

    def evaluate(lr: float) -> None:
        runs = []
        for problem in problems:
            runs.append(run_baseline(name, lr, problem, num_steps))
            if on_run is not None:
                on_run()
        curves[lr] = torch.cat(runs, dim=1).mean(1)
        score = curves[lr].mean().item()
        scores[lr] = score if math.isfinite(score) else math.inf

    for lr in lrs:
        evaluate(lr)
    for _ in range(extend if len(set(lrs)) > 1 else 0):
        lr = next_rate_past_edge(scores)
        if lr is None:
            break
        if on_extend is not None:
            on_extend(lr)
        evaluate(lr)
    best = min(sorted(scores), key=lambda lr: scores[lr])  # ties (all diverged): the smallest rate
    return TunedBaseline(name, best, curves[best], dict(sorted(scores.items())))
