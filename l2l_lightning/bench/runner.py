"""One benchmark run: an ordinary PyTorch training loop of one task with one optimizer, lr, seed and schedule.

The loop is what a user writes: ``zero_grad``, forward, loss, ``backward``, ``step`` (and the
scheduler's step).  The recorded curve is the training loss of each step's minibatch, before
that step's update.  A run whose loss turns non-finite, or exceeds :data:`DIVERGENCE_FACTOR`
times its first loss, stops there and is recorded as diverged (the rest of its curve is NaN):
the bench goes on.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch

from l2l_lightning.bench.optimizers import Contender, scheduler
from l2l_lightning.bench.spec import BenchTask

#: A loss this many times the first one counts as divergence.
DIVERGENCE_FACTOR = 1e3


@dataclass
class Run:
    """The outcome of one training run."""

    curve: list[float]  #: training loss per step (NaN after a divergence)
    diverged: bool
    seconds_per_step: list[float]  #: wall time of each full iteration (batch, forward, backward, step)

    def to_json(self) -> dict:
        return {"curve": self.curve, "diverged": self.diverged, "seconds_per_step": self.seconds_per_step}

    @classmethod
    def from_json(cls, data: dict) -> "Run":
        return cls([float(x) for x in data["curve"]], bool(data["diverged"]), [float(x) for x in data["seconds_per_step"]])


def _data_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * (seed + 1))  # not the model's stream: other draws, same seed


def train(task: BenchTask, contender: Contender, lr: float, seed: int, steps: int | None = None) -> Run:
    """Train ``task``'s model from ``seed``'s initial weights with ``contender`` at ``lr`` for ``steps`` (default: the task's)."""
    steps = task.steps if steps is None else steps
    model = task.build_model(seed).train()
    data, loss_fn = task.build_data(), task.loss_fn()
    generator = _data_generator(seed)
    optimizer = contender.factory([p for p in model.parameters() if p.requires_grad], lr, task.steps)
    schedule = scheduler(optimizer, contender.schedule, task.steps)
    curve, times, diverged, first = [], [], False, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a learned optimizer skipping a non-finite step: the curve shows it
        for _ in range(steps):
            start = time.perf_counter()
            inputs, targets = data.batch(generator)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets)
            value = loss.item()
            first = value if first is None else first
            if not math.isfinite(value) or abs(value) > DIVERGENCE_FACTOR * max(abs(first), 1e-12):
                diverged = True
                break
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            times.append(time.perf_counter() - start)
            curve.append(value)
    curve += [math.nan] * (steps - len(curve))
    return Run(curve, diverged, times)
