"""What ``l2l bench`` writes: a table, ``results.json``/``results.csv``, curves, a summary figure, TensorBoard runs.

* ``results.csv``: one row per (task, optimizer); ``results.json`` the same plus the aggregate
  per optimizer and the settings (grids, seeds, cache hits, wall time).
* ``curves/<task>.png``: each optimizer's loss at its rate (mean over seeds, smoothed with the
  task's final-loss window ``k``), and the best-tuned-Adam reference the speedup reads.
* ``summary.png``: per-task speedup over tuned Adam (range over seeds), one row per optimizer,
  with the IQM and its bootstrap 95% interval.
* ``tensorboard/<optimizer>/``: tag ``<task>/train_loss``, the same in every run, so optimizers overlay.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from l2l_lightning.bench.metrics import trailing_mean
from l2l_lightning.bench.optimizers import ADAM_REFERENCE

if TYPE_CHECKING:
    from l2l_lightning.bench.suite import BenchResult, TaskResult

#: Columns of ``results.csv`` and of the table (the table shows a subset).
CSV_COLUMNS = [
    "task", "optimizer", "steps", "k", "lr", "schedule", "final_loss", "best_baseline", "ratio_to_best_baseline", "win",
    "speedup", "adam_reaches", "speedup_low", "speedup_high", "diverged", "step_time_ratio_to_adam", "seconds_per_step",
]  # fmt: skip


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(result: "BenchResult", out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [row for task in result.tasks for row in task.rows]
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    document = {"settings": result.settings, "aggregate": result.aggregate, "results": rows}
    (out_dir / "results.json").write_text(json.dumps(_json_safe(document), indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    (out_dir / "curves").mkdir(exist_ok=True)
    for task in result.tasks:
        _plot_task(task, out_dir / "curves" / f"{task.task.name}.png")
    _plot_summary(result, out_dir / "summary.png")
    _tensorboard(result, out_dir / "tensorboard")


def _plot_task(task: "TaskResult", path: Path) -> None:
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for tuned in task.tuned:
        curve = np.nanmean(np.array([r.curve for r in tuned.runs]), axis=0) if not any(r.diverged for r in tuned.runs) else np.array(tuned.runs[0].curve)
        label = f"{tuned.contender.label} (lr {tuned.lr:g}{', diverged' if any(r.diverged for r in tuned.runs) else ''})"
        ax.plot(np.arange(1, len(curve) + 1), trailing_mean(curve, task.k), label=label, linewidth=1)
    ax.plot(np.arange(1, len(task.reference) + 1), task.reference, "k--", linewidth=1, label="best tuned Adam (speedup reference)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (trailing mean of {task.k} steps)")
    ax.set_title(task.task.name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_summary(result: "BenchResult", path: Path) -> None:
    from matplotlib import pyplot as plt

    labels = [a["optimizer"] for a in result.aggregate if a["optimizer"] not in ADAM_REFERENCE]
    names = [t.task.name for t in result.tasks]
    fig, axes = plt.subplots(len(labels), 1, figsize=(7, 0.9 + 0.32 * len(names) * len(labels) + 0.4 * len(labels)), squeeze=False, sharex=True)
    for ax, label in zip(axes[:, 0], labels):
        rows = {row["task"]: row for t in result.tasks for row in t.rows if row["optimizer"] == label}
        y = np.arange(len(names))
        value = np.array([rows[n]["speedup"] for n in names])
        low = np.array([rows[n]["speedup_low"] for n in names])
        high = np.array([rows[n]["speedup_high"] for n in names])
        floor = 1e-3  # a diverged run's speedup is 0: drawn at the axis' floor
        value, low, high = np.maximum(value, floor), np.maximum(low, floor), np.maximum(high, floor)
        colors = ["tab:red" if rows[n]["diverged"] else "tab:green" if rows[n]["win"] else "tab:blue" for n in names]
        ax.errorbar(value, y, xerr=[value - low, high - value], fmt="none", ecolor="gray", capsize=2)
        ax.scatter(value, y, c=colors, zorder=3, s=18)
        aggregate = next(a for a in result.aggregate if a["optimizer"] == label)
        ax.axvspan(max(aggregate["iqm_speedup_low"], floor), max(aggregate["iqm_speedup_high"], floor), color="orange", alpha=0.2)
        ax.axvline(max(aggregate["iqm_speedup"], floor), color="orange")
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle=":")
        ax.set_yticks(y, names, fontsize=7)
        ax.set_title(
            f"{label}: won {aggregate['won']}/{aggregate['tasks']}, diverged {aggregate['diverged']}, IQM speedup "
            f"{aggregate['iqm_speedup']:.3g} (orange; 95% CI [{aggregate['iqm_speedup_low']:.3g}, {aggregate['iqm_speedup_high']:.3g}])",
            fontsize=8,
        )
    axes[-1, 0].set_xscale("log")
    axes[-1, 0].set_xlabel("speedup over tuned Adam (log scale; 1 = as fast as tuned Adam)")
    fig.suptitle("green: beats every tuned baseline · blue: does not · red: diverged", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tensorboard(result: "BenchResult", folder: Path, points: int = 1000) -> None:
    from torch.utils.tensorboard import SummaryWriter

    labels = [a["optimizer"] for a in result.aggregate]
    for label in labels:
        with SummaryWriter(str(folder / label)) as writer:
            for task in result.tasks:
                tuned = next(t for t in task.tuned if t.contender.label == label)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # every seed diverged by then: NaN, skipped below
                    curve = np.nanmean(np.array([r.curve for r in tuned.runs]), axis=0)
                stride = max(1, len(curve) // points)
                for step in range(0, len(curve), stride):
                    if math.isfinite(curve[step]):
                        writer.add_scalar(f"{task.task.name}/train_loss", float(curve[step]), step + 1)


def format_table(result: "BenchResult") -> str:
    """The per-task figures, then the aggregate per optimizer."""
    lines = []
    for task in result.tasks:
        lines.append(f"{task.task.name} ({task.task.steps} steps; final loss = mean of the last k={task.k} steps, mean over seeds)")
        lines.append(f"  {'optimizer':<20} {'lr':>8} {'final loss':>11} {'÷ best':>8} {'speedup':>9} {'win':>4} {'div':>4} {'time÷Adam':>9}")
        for row in task.rows:
            speed = f"{row['speedup']:.3g}"
            lines.append(
                f"  {row['optimizer']:<20} {row['lr']:>8.3g} {row['final_loss']:>11.4g} {row['ratio_to_best_baseline']:>8.3g} "
                f"{speed:>9} {'yes' if row['win'] else 'no':>4} {'yes' if row['diverged'] else '-':>4} {row['step_time_ratio_to_adam']:>9.2f}"
            )
    lines.append("")
    lines.append(f"{'optimizer':<20} {'won':>7} {'IQM speedup [95% CI]':>26} {'diverged':>9} {'Adam never reaches':>19}")
    for a in result.aggregate:
        lines.append(
            f"{a['optimizer']:<20} {a['won']:>3}/{a['tasks']:<3} {a['iqm_speedup']:>9.3g} [{a['iqm_speedup_low']:.3g}, {a['iqm_speedup_high']:.3g}]"
            f"{'':>4} {a['diverged']:>9} {a['adam_never_reaches']:>19}"
        )
    lines.append("win: final loss below every tuned baseline's (other than itself); speedup: steps tuned Adam needs to reach "
                 "the final loss ÷ steps taken, or, below Adam's final loss, steps taken ÷ steps needed to reach Adam's")
    return "\n".join(lines)
