"""The training problem stream: which problem meta-training works on, and how far it got.

:class:`ProblemStream` owns everything about the *sequence* of training problems, apart
from Lightning: the generator that draws them (each rank and each fresh run its own), the
problem being continued between truncations (:class:`Carry`), random rescaling (Lv et al.
2017), the horizon curriculum (Chen et al. 2020) and exact resume.  For resume, the current
problem itself is not stored (it may hold a dataset): the generator's state from *before*
it was drawn is, so a resumed run draws the very same problem again and continues its
optimizees from the stored parameters, net state and inner step.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from l2l_lightning.errors import ConfigError, check_positive_int
from l2l_lightning.meta.unroll import bind
from l2l_lightning.nets.base import LearnedOptimizerNet
from l2l_lightning.tasks.base import Problem, ScaledProblem, Task
from l2l_lightning.torch_compat import tree_map


@dataclass
class Carry:
    """What one truncation hands to the next: the same problem, continued."""

    problem: Problem
    bound: LearnedOptimizerNet  #: the meta-trained net bound to the problem's layout (``unroll.bind``)
    theta: Tensor
    state: Any
    step: int
    horizon: Optional[int] = None  #: the problem's own horizon, drawn from ``horizon_choices`` (else the stream's)


def _check_horizons(
    setting: str, horizons: Sequence[int], num_steps: int, unroll: int, increasing: bool = False
) -> list[int]:
    """``horizons`` as a list if it is a non-empty list of multiples of ``unroll`` up to ``num_steps``
    (strictly increasing if ``increasing``), else a :class:`ConfigError` naming ``setting``."""
    horizons = list(horizons)
    for h in horizons:
        check_positive_int(f"MetaLearner: {setting} entry", h)
    ordered = not increasing or horizons == sorted(set(horizons))
    if not horizons or any(h % unroll or h > num_steps for h in horizons) or not ordered:
        raise ConfigError(
            f"MetaLearner: {setting}={horizons!r} must be a non-empty list of {'strictly increasing ' if increasing else ''}"
            f"multiples of unroll={unroll}, none longer than num_steps={num_steps}"
        )
    return horizons


def check_horizon_choices(
    choices: Optional[Sequence[int]], num_steps: int, unroll: int, curriculum: Optional[Sequence[int]]
) -> Optional[list[int]]:
    """The horizons a training problem's own is drawn from (``None``: every problem runs the stream's)."""
    if choices is None:
        return None
    if curriculum is not None:
        raise ConfigError("MetaLearner: give horizon_choices or horizon_curriculum, not both")
    return _check_horizons("horizon_choices", choices, num_steps, unroll)


def check_curriculum(horizons: Optional[Sequence[int]], num_steps: int, unroll: int) -> list[int]:
    """The horizons meta-training goes through: the curriculum's, then ``num_steps``."""
    if horizons is None:
        return [num_steps]
    horizons = _check_horizons("horizon_curriculum", horizons, num_steps, unroll, increasing=True)
    return horizons if horizons[-1] == num_steps else [*horizons, num_steps]


class ProblemStream:
    """The training problems of one rank, drawn from ``task``, each continued for the current horizon.

    Args:
        task: the distribution of training problems (its ``"train"`` split).
        random_scaling: ``s > 0`` rescales each problem's parameters by ``exp(U[-s, s])``; 0: off.
        horizons: the curriculum's horizons, then ``num_steps`` (:func:`check_curriculum`).
        choices: draw each problem's own horizon from these (:func:`check_horizon_choices`), so a
            net that reads the fraction of training done meets runs of several lengths.
    """

    def __init__(self, task: Task, random_scaling: float, horizons: list[int], choices: Optional[list[int]] = None) -> None:
        self.task = task
        self.random_scaling = random_scaling
        self.horizons = horizons
        self.choices = choices
        self.stage, self.stage_best = 0, math.inf
        self.generator: Optional[torch.Generator] = None
        self.carry: Optional[Carry] = None
        self.draw_state: Optional[Tensor] = None  #: the generator's state before the current problem was drawn

    @property
    def horizon(self) -> int:
        """Inner steps per training problem now: ``num_steps``, or the current curriculum stage's."""
        return self.horizons[self.stage]

    def horizon_of(self, carry: Carry) -> int:
        """Inner steps ``carry``'s problem runs: its own drawn horizon, else the stream's now."""
        return self.horizon if carry.horizon is None else carry.horizon

    def _draw_with_horizon(self, device: torch.device) -> tuple[Problem, Optional[int]]:
        """The next problem and its own horizon (``None`` without ``choices``: no draw, the stream is as
        before); one place, so a resume re-draws both in the same order."""
        problem = self.draw(device)
        if not self.choices:
            return problem, None
        return problem, self.choices[int(torch.randint(len(self.choices), (), generator=self.generator))]

    def start(self, seed: int) -> None:
        """A fresh stream (each rank, and each run not resumed exactly, draws its own)."""
        self.generator = torch.Generator().manual_seed(seed % 2**63)
        self.carry = None

    def draw(self, device: torch.device) -> Problem:
        """The next training problem of the stream (randomly rescaled if ``random_scaling``)."""
        problem = self.task.sample(self.generator, device, split="train")
        if self.random_scaling:
            theta = problem.initial_params()
            u = torch.rand(theta.shape, generator=self.generator, dtype=torch.float64) * 2 - 1
            problem = ScaledProblem(problem, (u * self.random_scaling).exp().to(theta.dtype).to(theta.device))
        return problem

    def next_carry(self, net: LearnedOptimizerNet, device: torch.device) -> tuple[Carry, bool]:
        """The problem to continue: the carried one, or a fresh draw once it lived its horizon (then ``True``)."""
        carry = self.carry
        if carry is not None and carry.step < self.horizon_of(carry):
            return carry, False
        self.draw_state = self.generator.get_state()  # to re-draw this problem on resume
        problem, horizon = self._draw_with_horizon(device)
        theta = problem.initial_params()
        bound = bind(net, problem)
        return Carry(problem, bound, theta, bound.init_state(problem.layout, device=device), 0, horizon), True

    def advance_curriculum(self, val_mean_loss: float) -> None:
        """Move to the next horizon when a validation does not improve on the current stage's best."""
        if self.stage + 1 >= len(self.horizons):
            return
        if val_mean_loss < self.stage_best:
            self.stage_best = val_mean_loss
            return
        self.stage, self.stage_best = self.stage + 1, math.inf

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is, as plain tensors and numbers (``weights_only`` loads it)."""
        stream: dict[str, Any] = {"generator": self.generator.get_state()}
        carry = self.carry
        if carry is not None and self.draw_state is not None:
            stream.update(
                draw_generator=self.draw_state.clone(),
                theta=carry.theta.detach().cpu().clone(),
                state=tree_map(lambda t: t.detach().cpu().clone(), carry.state),
                step=int(carry.step),
            )
        stream["curriculum"] = [self.stage, self.stage_best]
        return stream

    def load_state_dict(self, stream: dict[str, Any], net: LearnedOptimizerNet, device: torch.device) -> None:
        """Continue the stream of :meth:`state_dict` exactly (a fresh problem, with a warning, if the task changed)."""
        self.generator = torch.Generator()
        self.carry = None
        if "curriculum" in stream:
            self.stage, self.stage_best = int(stream["curriculum"][0]), float(stream["curriculum"][1])
        if "theta" not in stream:
            self.generator.set_state(stream["generator"])
            return
        self.generator.set_state(stream["draw_generator"])
        self.draw_state = stream["draw_generator"].clone()
        problem, horizon = self._draw_with_horizon(device)
        theta = stream["theta"].to(device)
        if not torch.equal(self.generator.get_state(), stream["generator"]) or (
            problem.initial_params().shape != theta.shape
        ):
            warnings.warn(
                "resuming: the checkpoint's current problem cannot be drawn again with this task (its settings "
                "differ from the run that saved it); starting a fresh problem, so this resume is not exact"
            )
            self.generator.set_state(stream["generator"])
            return
        state = tree_map(lambda t: t.to(device), stream["state"])
        self.carry = Carry(problem, bind(net, problem), theta, state, int(stream["step"]), horizon)
