"""Optimizees that are pictures: what they look like after an optimizer ran on them.

A problem is an *image problem* when it offers ``to_images(theta)`` (the optimizees
at ``theta`` as ``(K, 3, H, W)`` images in ``[0, 1]``) and ``references()`` (named
images ``(K, 3, H, W)`` the optimizees are made from, e.g. content and style), as
:class:`~l2l_lightning.tasks.NeuralArtProblem` does.  For those, ``l2l compare``
saves a grid (one row per optimizee: the references, then each optimizer's result)
and validation shows the learned optimizer's result in TensorBoard.

The runs here repeat a curve run to get its final parameters; they are only done
for the few problems that are drawn, so the curve code stays untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from l2l_lightning.meta.baselines import final_params
from l2l_lightning.meta.unroll import run_learned
from l2l_lightning.tasks.base import Problem


def is_image_problem(problem: Any) -> bool:
    """Whether ``problem`` can be drawn as pictures (has ``to_images`` and ``references``)."""
    return callable(getattr(problem, "to_images", None)) and callable(getattr(problem, "references", None))


def result_columns(
    problem: Problem, num_steps: int, learned: Mapping[str, nn.Module], baselines: Mapping[str, float]
) -> dict[str, Tensor]:
    """Column name -> images ``(K, 3, H, W)``: the references, then each optimizer's result."""
    columns = dict(problem.references())
    for label, net in learned.items():
        columns[label] = problem.to_images(run_learned(net, problem, num_steps).theta)
    for name, lr in baselines.items():
        columns[f"{name} (lr {lr:g})"] = problem.to_images(final_params(name, lr, problem, num_steps))
    return columns


def grid_tensor(columns: Mapping[str, Tensor], rows: int) -> Tensor:
    """``(3, rows·H, C·W)``: the first ``rows`` images of every column, side by side (for TensorBoard)."""
    return torch.cat([torch.cat([images[i].cpu() for images in columns.values()], dim=2) for i in range(rows)], dim=1)


def save_image_grid(rows: Sequence[Mapping[str, Tensor]], path: Path, title: str = "") -> None:
    """A PNG with one row per optimizee (``rows[i]``: column name -> ``(3, H, W)``), columns labelled."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(rows[0])
    fig, axes = plt.subplots(len(rows), len(names), figsize=(1.9 * len(names), 1.9 * len(rows) + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        for c, name in enumerate(names):
            ax = axes[r][c]
            ax.imshow(row[name].detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_image_grid(
    problems: Sequence[Problem],
    learned: Mapping[str, nn.Module],
    baselines: Mapping[str, float],
    num_steps: int,
    count: int,
    path: Path,
) -> None:
    """``path``: the first ``count`` optimizees of ``problems``, each optimizer's result after ``num_steps``."""
    rows: list[dict[str, Tensor]] = []
    for problem in problems:
        columns = result_columns(problem, num_steps, learned, baselines)
        for i in range(problem.num_optimizees):
            rows.append({name: images[i] for name, images in columns.items()})
        if len(rows) >= count:
            break
    save_image_grid(rows[:count], path, title=f"after {num_steps} steps (baselines at their tuned learning rates)")
