"""Imitation of a tuned hand-designed optimizer, an auxiliary meta-loss (Chen et al. 2020).

"Training stronger baselines for learning to optimize" adds to the meta-loss a term that
pulls the learned update towards what a good hand-designed optimizer (the *teacher*) would
do at the same point.  The teacher runs on the learned optimizer's own trajectory: at every
inner step it sees the same gradient and keeps its own state (momentum, second moments)
across the problem's truncations, so its update is the one it would take from where the
learned optimizer is, not from a trajectory of its own.

The term of a truncation is ``weight · Σ_k ‖g_k − u_k‖² / ‖u_k‖²`` over its inner steps,
``g_k`` the learned update and ``u_k`` the teacher's (a constant).  Dividing by ``‖u_k‖²``
makes it scale-free, so one ``weight`` means the same on a quadratic and on an MLP: 1 is
"as costly as taking no step at all".  The teacher is a real ``torch.optim`` optimizer
(:data:`~l2l_lightning.meta.baselines.BASELINES`) with the learning rate the user tuned for
it, e.g. the one ``l2l compare`` reports.

Only :class:`~l2l_lightning.meta.estimators.TruncatedBPTT` can use it: the term needs the
learned update's gradient, which evolution strategies never compute.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from l2l_lightning.errors import ConfigError, check_positive_float
from l2l_lightning.meta.baselines import BASELINES


@dataclass
class Imitation:
    """The imitation setting: ``teacher`` (``sgd``, ``nag``, ``rmsprop`` or ``adam``) at its tuned ``lr``.

    In YAML::

        model:
          imitation: {teacher: nag, lr: 1.0, weight: 0.1}
    """

    teacher: Optional[str] = None
    lr: Optional[float] = None
    weight: float = 0.1

    def __post_init__(self) -> None:
        self.reset()

    def check(self) -> None:
        """Refuse settings that cannot work, with what is allowed (``MetaLearner`` calls it).

        Not in ``__post_init__``: jsonargparse builds the dataclass while parsing, and an error
        raised there would reach the user wrapped in its type-union message.
        """
        if self.teacher not in BASELINES:
            raise ConfigError(
                f"MetaLearner: imitation.teacher={self.teacher!r}; imitation needs a teacher: one of "
                f"{sorted(BASELINES)}, with its tuned lr (e.g. from `l2l compare`)"
            )
        self.lr = check_positive_float("MetaLearner: imitation.lr", self.lr, " (the teacher's tuned learning rate)")
        self.weight = check_positive_float("MetaLearner: imitation.weight", self.weight)

    @property
    def config(self) -> dict[str, Any]:
        """The settings as plain data (checkpoints store them so)."""
        return asdict(self)

    # ---------------------------------------------------------------- the teacher
    def reset(self) -> None:
        """Forget the teacher's state: a new problem starts."""
        self._param: Optional[Tensor] = None
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self._terms: list[Tensor] = []
        self._pending: Optional[dict[str, Any]] = None  #: a checkpoint's teacher state, applied at the next step

    def _teacher_update(self, theta: Tensor, grad: Tensor) -> Tensor:
        """The teacher's step from ``theta`` with gradient ``grad``, advancing its state."""
        if self._param is None or self._param.shape != theta.shape:
            self._param = torch.zeros_like(theta, requires_grad=True)
            self._optimizer = BASELINES[self.teacher]([self._param], self.lr)  # type: ignore[index,arg-type]
            if self._pending is not None:  # resumed: the teacher's state for this very problem
                self._optimizer.load_state_dict(self._pending)
            self._pending = None
        with torch.no_grad():
            self._param.copy_(theta)
            self._param.grad = grad.detach().clone()
            self._optimizer.step()  # type: ignore[union-attr]
            return self._param - theta

    def observe(self, theta: Tensor, grad: Tensor, update: Tensor) -> None:
        """One inner step: the learned ``update`` taken at ``theta`` with gradient ``grad``."""
        teacher = self._teacher_update(theta.detach(), grad)
        scale = teacher.pow(2).sum().clamp_min(torch.finfo(teacher.dtype).tiny)
        self._terms.append((update - teacher).pow(2).sum() / scale)

    def pop_loss(self) -> Tensor:
        """``weight · Σ_k`` of the steps observed since the last call (the truncation's term)."""
        terms, self._terms = self._terms, []
        return self.weight * torch.stack(terms).sum()

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The teacher's state for the carried problem (plain tensors: ``weights_only`` loads it)."""
        if self._optimizer is not None:
            return {"optimizer": self._optimizer.state_dict()}
        return {} if self._pending is None else {"optimizer": self._pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after the carried problem is drawn again on resume)."""
        self.reset()
        self._pending = state.get("optimizer")
