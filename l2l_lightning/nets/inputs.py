"""What a net may read at each step besides the gradient: :class:`Inputs` (declared) and :class:`StepInputs` (given).

A net declares what it reads as a class attribute
(:attr:`~l2l_lightning.nets.LearnedOptimizerNet.inputs`); the callers (the unroll in
meta-training, the deployment runtime) build the values of just those, so a net that reads
only the gradient is called as before and costs nothing more.  Plain data, imported by the net
interface (:mod:`~l2l_lightning.nets.base`) and the kernel contract (:mod:`~l2l_lightning.nets.kernel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor


@dataclass(frozen=True)
class Inputs:
    """What a net reads at each step besides the gradient (a class attribute of the net: :attr:`LearnedOptimizerNet.inputs`).

    Attributes:
        param: the parameters' current values, flat like the gradient.
        step: how many steps each tensor has been through before this one.
        loss: the loss at the current parameters, per optimizee (a deployed optimizer needs
            ``step(closure)`` or ``step(loss=...)`` for it).
        horizon: how many steps the run will take in all, so that the net can read the fraction
            of training done and anneal (a learned schedule, as Celo's; a deployed optimizer
            needs ``total_steps`` for it, which :class:`~l2l_lightning.LearnedOptimizerCallback`
            reads from the ``Trainer``).
    """

    param: bool = False
    step: bool = False
    loss: bool = False
    horizon: bool = False

    @property
    def any(self) -> bool:
        """Whether the net reads anything besides the gradient (then callers pass ``inputs=``)."""
        return self.param or self.step or self.loss or self.horizon


@dataclass(frozen=True)
class StepInputs:
    """The values of one step that a net declared in its :class:`Inputs` (the others are ``None``).

    Attributes:
        param: ``(n,)``, the parameters before this step, in the gradient's flat order.
        step: ``(len(layout),)`` int64, the steps each segment has taken before this one (0 at first).
        loss: ``(layout.num_optimizees,)``, the loss at ``param`` of each optimizee, detached.
        horizon: ``(len(layout),)`` int64, the steps each segment's run takes in all (positive).
    """

    param: Optional[Tensor] = None
    step: Optional[Tensor] = None
    loss: Optional[Tensor] = None
    horizon: Optional[Tensor] = None
