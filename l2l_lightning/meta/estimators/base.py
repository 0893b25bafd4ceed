"""The outer-gradient estimator seam: how one truncation's meta-gradient is estimated.

``MetaLearner`` is the Lightning wiring (the carried optimizees, logging, checkpoints,
the meta-optimizer step); what it asks of an estimator is one thing per truncation:
continue the current optimizees for ``steps`` inner steps and return a scalar whose
gradient with respect to the net's weights is the meta-gradient estimate.  Lightning
back-propagates that scalar, so clipping, accumulation, DDP averaging and the skipping of
non-finite steps work for every estimator alike.

* :class:`~l2l_lightning.meta.estimators.TruncatedBPTT` (the paper's): differentiate the
  truncation's weighted losses through the unroll; the scalar is the meta-loss itself.
* :class:`~l2l_lightning.meta.estimators.PES` (Vicol, Metz, Sohl-Dickstein 2021): antithetic
  perturbations of the weights, accumulated across truncations; the scalar is a surrogate
  ``Σ ĝ · φ`` whose gradient is the (unbiased) estimate ``ĝ``.

An estimator that keeps state across truncations (PES's accumulated perturbations and
its particles' optimizees) gives it to checkpoints as plain tensors
(:meth:`OuterEstimator.state_dict`), so resuming a run continues it exactly.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from torch import Tensor

from l2l_lightning.nets.base import LearnedOptimizerNet
from l2l_lightning.specs import make_spec
from l2l_lightning.tasks.base import Problem

if TYPE_CHECKING:
    from l2l_lightning.meta.imitation import Imitation

#: ``objective(losses, start) -> scalar``: the meta-loss of a truncation's ``(steps, optimizees)``
#: losses starting after inner step ``start`` (weights and transform are ``MetaLearner``'s settings).
Objective = Callable[[Tensor, int], Tensor]


@dataclass
class Truncation:
    """One truncation to run: the carried optimizees and what to run them with."""

    net: LearnedOptimizerNet  #: the net being meta-trained (its parameters are φ)
    bound: LearnedOptimizerNet  #: ``net`` bound to ``problem``'s layout
    problem: Problem
    theta: Tensor  #: the optimizees' parameters where the previous truncation stopped
    state: Any  #: the net's state for them
    start: int  #: the inner step ``theta`` is at
    steps: int  #: inner steps to run
    fresh: bool  #: ``problem`` was just drawn (``start == 0``): per-problem state starts anew
    objective: Objective
    horizon: int  #: the inner steps ``problem`` is trained for in all (``unroll(horizon=)``)
    second_derivatives: bool = False
    imitation: Optional["Imitation"] = None  #: an auxiliary term on the updates (TruncatedBPTT only)


@dataclass
class TruncationResult:
    """What a truncation gives back to ``MetaLearner``."""

    loss: Tensor  #: the scalar to back-propagate: its gradient w.r.t. φ is the meta-gradient estimate
    meta_loss: Tensor  #: the truncation's meta-loss at the current φ (logged as ``meta/loss``)
    final_loss: Tensor  #: mean optimizee loss after the truncation's last step (``meta/final_loss``)
    theta: Tensor  #: the carried optimizees' parameters now (detached)
    state: Any  #: their net state now (detached)
    extra: dict[str, Tensor] = field(default_factory=dict)  #: more figures to log, as ``meta/<name>``


class OuterEstimator(ABC):
    """How a truncation's meta-gradient is estimated (see the module docstring).

    Store each ``__init__`` argument as an attribute of the same name: checkpoints record
    an estimator by its class path and those arguments (:attr:`config`), as tasks are.

    An estimator declares what it supports, so ``MetaLearner`` asks it instead of testing its class:
    """

    #: Whether the meta-gradient is back-propagated through the unrolled updates.  Only then do
    #: ``second_derivatives`` (through the optimizee's gradient) and ``imitation`` (a term on the
    #: updates) reach the meta-gradient; ``MetaLearner`` refuses them for an estimator without it.
    differentiates_through_unroll: bool = False

    @abstractmethod
    def truncation(self, run: Truncation) -> TruncationResult:
        """Run one truncation and return the scalar to back-propagate and where the optimizees are."""

    def setup(self, rank: int, seed: int) -> None:
        """Called when meta-training starts: this process's rank and a seed for any randomness of its own."""

    def state_dict(self) -> dict[str, Any]:
        """State carried across truncations, as plain tensors and numbers (empty: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], device: Any) -> None:
        """Restore :meth:`state_dict` onto ``device`` (on resume, after the carried problem is drawn again)."""

    def reset(self) -> None:
        """Forget per-problem state (the carried problem was dropped, e.g. after a non-finite step)."""

    @property
    def config(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}`` read from the ``__init__`` arguments' attributes."""
        init_args = {
            name: getattr(self, name)
            for name, param in inspect.signature(type(self).__init__).parameters.items()
            if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        }
        return make_spec(type(self), init_args)
