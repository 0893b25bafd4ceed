"""``l2l compare``: trained optimizers against tuned hand-designed ones, on held-out problems.

The protocol, chosen so that a win means something:

1. Each baseline's learning rate is picked on a log grid using *tuning* problems: draws on the
   task's ``"train"`` split with their own seeds.
2. Every optimizer, learned or not, then runs on the same *evaluation* problems: fresh draws
   (other seeds) on the ``"test"`` split, for ``num_steps`` steps from the same initial
   parameters.  The learned optimizers are not tuned at all.
3. Reported per optimizer: the summed loss over the steps and the final loss, each averaged
   over all evaluation optimizees (with its standard error), plus the chosen learning rate
   and the tuning score of every rate tried.

Outputs in ``out_dir``: ``results.json``, ``results.csv``, ``curves.png`` (loss vs step, log
scale, mean with an interquartile band, like the paper's figures) and one TensorBoard run per
optimizer under ``tensorboard/`` with identical tags, so the curves overlay.  For image
optimizees (neural art) also ``images.png``: the first ``image_grid`` evaluation optimizees,
their content and style, and every optimizer's result after ``num_steps`` steps.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from l2l_lightning.errors import ConfigError, check_choice, check_positive_int
from l2l_lightning.meta.baselines import BASELINES, DEFAULT_LR_GRID, run_baseline, tune_baseline
from l2l_lightning.meta.images import is_image_problem, write_image_grid
from l2l_lightning.meta.unroll import evaluate_learned
from l2l_lightning.tasks.base import Problem, Split, Task
from l2l_lightning.safe_load import check_folder
from l2l_lightning.threads import ThreadPolicy, check_threads


@dataclass
class OptimizerResult:
    """One optimizer's losses on the evaluation problems."""

    name: str
    curves: Tensor  #: ``(num_steps, num_optimizees)``: loss after each update, per optimizee
    lr: Optional[float] = None  #: the tuned learning rate (baselines only)
    tuning: dict[float, float] = field(default_factory=dict)  #: mean tuning loss per lr tried

    @property
    def summed(self) -> Tensor:
        """Summed loss over the steps, per optimizee (the paper's figure of merit)."""
        return self.curves.sum(dim=0)

    def row(self) -> dict[str, object]:
        n = self.curves.shape[1]
        summed, final = self.summed.double(), self.curves[-1].double()
        sem = (lambda x: (x.std() / math.sqrt(n)).item() if n > 1 else math.nan)
        return {
            "optimizer": self.name,
            "lr": self.lr,
            "sum_loss_mean": summed.mean().item(),
            "sum_loss_sem": sem(summed),
            "final_loss_mean": final.mean().item(),
            "final_loss_sem": sem(final),
            "num_optimizees": n,
        }


def _draw(task: Task, count: int, seed: int, split: Split, device: str) -> list[Problem]:
    return [task.sample(torch.Generator().manual_seed(seed + i), device, split=split) for i in range(count)]


def check_device(device: str) -> None:
    """A clear error, before any work, for a device this machine lacks (torch fails mid-run otherwise)."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as error:  # no driver / not compiled with it / bad name
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"compare: device={device!r} is not available here ({first}); use --device cpu") from error


def _load_learned(learned: Sequence[str], baselines: Sequence[str], device: str) -> dict[str, torch.nn.Module]:
    """``label -> net`` of the trained optimizers to compare; two under one label would overwrite each other."""
    from l2l_lightning.optim.pretrained import load_net

    nets = {}
    for label, spec in map(labelled, learned):
        if label in nets or label in baselines:
            raise ConfigError(
                f"compare: two optimizers are labelled {label!r} (their results would overwrite each other); "
                f"label each learned one as label=spec, e.g. {label}_1={spec}"
            )
        nets[label] = load_net(spec).to(device).eval().requires_grad_(False)
    return nets


def labelled(spec: str) -> tuple[str, str]:
    """``"label=spec"`` or ``"spec"`` -> ``(label, spec)``; a path is labelled by its file stem."""
    label, sep, rest = spec.partition("=")
    if sep and label and os.sep not in label:
        return label, rest
    return (Path(spec).stem if os.sep in spec or spec.endswith((".pt", ".ckpt")) else spec), spec


def compare(
    learned: Sequence[str],
    task: Task,
    num_steps: int = 100,
    num_problems: int = 32,
    seed: int = 30_000,
    split: Literal["test", "val"] = "test",
    baselines: Sequence[str] = ("sgd", "nag", "rmsprop", "adam"),
    lrs: Sequence[float] = DEFAULT_LR_GRID,
    tune_problems: int = 4,
    tune_seed: int = 40_000,
    out_dir: Optional[str] = "compare",
    device: str = "cpu",
    progress: bool = True,
    image_grid: int = 4,
    threads: Union[str, int] = "auto",
) -> list[OptimizerResult]:
    """Compare trained optimizers with tuned baselines on held-out problems of ``task``.

    Args:
        learned: trained optimizers: pretrained names, exported files or ``MetaLearner`` checkpoints,
            each optionally labelled as ``label=spec`` (a path is otherwise labelled by its file stem).
        task: where the problems come from (e.g. ``l2l_lightning.QuadraticTask``).
        num_steps: optimization steps per problem (may differ from meta-training's horizon).
        num_problems: evaluation draws (a draw may hold several optimizees, e.g. 128 quadratics).
        seed: evaluation draw ``i`` uses ``seed + i`` on the ``split`` data split.
        split: ``"test"`` (default: report) or ``"val"``: choose between trained optimizers
            (recipes, checkpoints) on validation data, so that the test split stays unseen
            until the chosen one is reported.
        baselines: any of ``sgd``, ``nag`` (momentum 0.9, Nesterov), ``rmsprop``, ``adam``.
        lrs: the learning-rate grid each baseline is tuned on; extended past an edge when the
            best rate is there (see :func:`~l2l_lightning.meta.baselines.tune_baseline`).
        tune_problems, tune_seed: the tuning draws (``"train"`` split).
        out_dir: where to write the table, figure and TensorBoard runs (``None``: nothing written).
        image_grid: for image optimizees, how many to show in ``images.png`` (0: no grid).
        threads: intra-op CPU threads for the runs: ``"auto"`` (one thread for problems under
            :data:`~l2l_lightning.threads.SMALL_WORK_ROWS` coordinates unless ``OMP_NUM_THREADS`` or
            ``torch.set_num_threads`` chose otherwise; :mod:`l2l_lightning.threads`) or a positive
            integer; the caller's count is restored at the end.
    """
    for name, value in (("num_steps", num_steps), ("num_problems", num_problems), ("tune_problems", tune_problems)):
        check_positive_int(f"compare: {name}", value)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"compare: unknown baselines {unknown}; allowed: {', '.join(BASELINES)}")
    if not lrs or any(not lr > 0 for lr in lrs):
        raise ConfigError(f"compare: lrs={list(lrs)!r} must be a non-empty list of positive floats")
    check_choice("compare: split", split, ("test", "val"), " (tuning always uses 'train')")
    if not learned and not baselines:
        raise ConfigError("compare: nothing to compare; give --learned and/or --baselines")
    policy = ThreadPolicy(check_threads(threads, "compare: threads"))
    check_device(device)
    if out_dir is not None:
        check_folder(out_dir, "compare: out_dir")
    nets = _load_learned(learned, baselines, device)

    total = len(baselines) * (len(lrs) * tune_problems + num_problems) + len(nets) * num_problems
    bar = tqdm(total=total, desc="l2l compare", disable=not progress, unit="run")

    def extend_bar(lr: float) -> None:  # a baseline's grid is extended past an edge: more runs
        bar.total += tune_problems
        bar.refresh()

    tuning = _draw(task, tune_problems, tune_seed, "train", device)
    evaluation = _draw(task, num_problems, seed, split, device)
    policy.apply(tuning[0].initial_params().numel())
    try:
        results = _run_all(nets, baselines, tuning, evaluation, num_steps, lrs, bar, extend_bar)
        bar.close()
        if out_dir is not None:
            write_outputs(results, Path(out_dir), settings=dict(
                learned=list(learned), task=task.config, num_steps=num_steps, num_problems=num_problems, seed=seed, split=split,
                baselines=list(baselines), lrs=list(lrs), tune_problems=tune_problems, tune_seed=tune_seed,
            ))  # fmt: skip
            if image_grid > 0 and is_image_problem(evaluation[0]):
                tuned_lrs = {r.name: r.lr for r in results if r.lr is not None}
                write_image_grid(evaluation, nets, tuned_lrs, num_steps, image_grid, Path(out_dir) / "images.png")
    finally:
        policy.restore()
    return results


def _run_all(nets, baselines, tuning, evaluation, num_steps, lrs, bar, extend_bar) -> list[OptimizerResult]:  # noqa: ANN001
    """Every learned optimizer and every tuned baseline on the evaluation problems."""
    results = []
    for label, net in nets.items():
        curves = []
        for problem in evaluation:
            curves.append(evaluate_learned(net, problem, num_steps))
            bar.update()
        results.append(OptimizerResult(label, torch.cat(curves, dim=1)))
    for name in baselines:
        tuned = tune_baseline(name, tuning, num_steps, lrs, on_run=bar.update, on_extend=extend_bar)
        curves = []
        for problem in evaluation:
            curves.append(run_baseline(name, tuned.lr, problem, num_steps))
            bar.update()
        results.append(OptimizerResult(name, torch.cat(curves, dim=1), tuned.lr, tuned.mean_losses))
    return results


def write_outputs(results: Sequence[OptimizerResult], out_dir: Path, settings: dict[str, object]) -> None:
    """``results.json``, ``results.csv``, ``curves.png`` and ``tensorboard/<optimizer>/`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in results]
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tuning = {r.name: {str(lr): loss for lr, loss in r.tuning.items()} for r in results if r.tuning}
    (out_dir / "results.json").write_text(
        json.dumps({"settings": settings, "results": rows, "tuning_mean_loss_per_lr": tuning}, indent=2) + "\n"
    )
    _plot(results, out_dir / "curves.png")
    from torch.utils.tensorboard import SummaryWriter

    for result in results:
        with SummaryWriter(str(out_dir / "tensorboard" / result.name)) as writer:
            mean = result.curves.mean(dim=1)
            for step, value in enumerate(mean.tolist(), start=1):
                writer.add_scalar("compare/mean_loss", value, step)


def _plot(results: Sequence[OptimizerResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for result in results:
        curves = result.curves.double()
        steps = range(1, curves.shape[0] + 1)
        label = result.name if result.lr is None else f"{result.name} (lr {result.lr:g})"
        (line,) = ax.plot(steps, curves.mean(dim=1), label=label)
        low, high = curves.quantile(0.25, dim=1), curves.quantile(0.75, dim=1)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean; band: 25-75th percentile)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(results: Sequence[OptimizerResult]) -> str:
    """A plain-text table of the figures, best summed loss first."""
    rows = sorted((r.row() for r in results), key=lambda row: row["sum_loss_mean"])
    lines = [f"{'optimizer':<16} {'lr':>8} {'sum loss':>20} {'final loss':>20}"]
    for row in rows:
        lr = "-" if row["lr"] is None else f"{row['lr']:g}"
        lines.append(
            f"{row['optimizer']:<16} {lr:>8} {row['sum_loss_mean']:>11.4g} ± {row['sum_loss_sem']:<6.2g} "
            f"{row['final_loss_mean']:>11.4g} ± {row['final_loss_sem']:<6.2g}"
        )
    return "\n".join(lines)
