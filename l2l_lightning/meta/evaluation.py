"""Held-out evaluation: the learned optimizer against tuned Adam on fixed problems, as numbers and figures.

:class:`HeldOutEvaluation` draws each stage's held-out problems once (fixed seeds, the task's
``"val"`` / ``"test"`` split, never the training stream), tunes Adam's learning rate on them
once, and turns a learned loss curve into the logged figures: mean and final losses, their
ratio to Adam's, the curve against Adam's (a figure for validation, step-indexed scalars for
test) and, for image optimizees, the pictures.  Nothing here is Lightning's: ``MetaLearner``
feeds it curves and logs what it returns, so other entry points can share it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from l2l_lightning.meta.baselines import TunedBaseline, tune_baseline
from l2l_lightning.meta.images import grid_tensor, is_image_problem, result_columns
from l2l_lightning.nets.base import LearnedOptimizerNet
from l2l_lightning.tasks.base import Problem, Task

Stage = Literal["val", "test"]


class HeldOutEvaluation:
    """The held-out problems of each stage and tuned Adam on them, drawn and tuned once (cached).

    Args:
        task: the distribution the problems are drawn from.
        num_steps: the horizon every curve covers.
        baseline_lrs: the grid Adam's learning rate is tuned on.
        draws: ``stage -> (number of draws, seed of the first)``; draw ``i`` uses ``seed + i``.
    """

    def __init__(self, task: Task, num_steps: int, baseline_lrs: tuple[float, ...], draws: dict[str, tuple[int, int]]) -> None:
        self.task, self.num_steps, self.baseline_lrs, self.draws = task, num_steps, baseline_lrs, draws
        self._problems: dict[str, list[Problem]] = {}
        self._baselines: dict[str, TunedBaseline] = {}

    def problems(self, stage: Stage, device: Any) -> list[Problem]:
        """The fixed held-out problems of ``stage``."""
        if stage not in self._problems:
            count, seed = self.draws[stage]
            with torch.inference_mode(False):  # Lightning's test loop runs in inference mode
                self._problems[stage] = [
                    self.task.sample(torch.Generator().manual_seed(seed + i), device, split=stage) for i in range(count)
                ]
        return self._problems[stage]

    def baseline(self, stage: Stage, device: Any) -> TunedBaseline:
        """Adam on the held-out problems of ``stage``, lr tuned on ``baseline_lrs``."""
        if stage not in self._baselines:
            self._baselines[stage] = tune_baseline("adam", self.problems(stage, device), self.num_steps, self.baseline_lrs)
        return self._baselines[stage]

    def scalars(self, stage: Stage, curve: Tensor, device: Any) -> dict[str, float]:
        """The figures of a learned mean loss curve next to tuned Adam's, keyed ``<stage>/<name>``."""
        adam = self.baseline(stage, device)
        mean_loss, adam_mean = curve.mean().item(), adam.curve.mean().item()
        return {
            f"{stage}/mean_loss": mean_loss,
            f"{stage}/final_loss": curve[-1].item(),
            f"{stage}/adam_mean_loss": adam_mean,
            f"{stage}/adam_final_loss": adam.curve[-1].item(),
            f"{stage}/adam_lr": adam.lr,
            f"{stage}/mean_loss_ratio_to_adam": mean_loss / adam_mean if adam_mean > 0 else math.nan,
        }

    def log_figures(self, experiment: Any, stage: Stage, curve: Tensor, net: LearnedOptimizerNet, step: int, device: Any) -> None:
        """Write the curve against Adam's, and image results, to a TensorBoard ``SummaryWriter``."""
        adam = self.baseline(stage, device)
        log_curves(experiment, stage, curve, adam, step)
        problem = self.problems(stage, device)[0]
        if is_image_problem(problem):  # neural art: references, learned result, Adam's; one row per optimizee
            columns = result_columns(problem, self.num_steps, {"learned": net}, {"adam": adam.lr})
            experiment.add_image(f"{stage}/optimizee_images", grid_tensor(columns, problem.num_optimizees), step)


def log_curves(experiment: Any, stage: Stage, curve: Tensor, adam: TunedBaseline, step: int) -> None:
    """Learned vs tuned Adam over the inner step, as a figure (val) and as step-indexed scalars (test)."""
    if stage == "test":
        for inner, (ours, theirs) in enumerate(zip(curve.tolist(), adam.curve.tolist()), start=1):
            experiment.add_scalars("test/loss_vs_inner_step", {"learned": ours, "adam": theirs}, inner)
        return
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    steps = range(1, len(curve) + 1)
    ax.semilogy(steps, curve.cpu(), label="learned (LSTM)")
    ax.semilogy(steps, adam.curve.cpu(), label=f"Adam, lr={adam.lr:g} (tuned)")
    ax.set_xlabel("inner step")
    ax.set_ylabel("mean optimizee loss")
    ax.legend()
    fig.tight_layout()
    experiment.add_figure(f"{stage}/loss_vs_inner_step", fig, step)
    plt.close(fig)
