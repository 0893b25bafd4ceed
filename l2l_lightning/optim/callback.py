"""``LearnedOptimizerCallback``: train an existing LightningModule with a learned optimizer.

Mechanism: in ``setup("fit")``, which Lightning runs before the strategy creates the
optimizers, the callback wraps the module's ``configure_optimizers`` (on the instance
only; ``teardown`` restores it).  The wrapper calls the module's own method, keeps its
parameter groups (the same parameters, in the same groups, so frozen layers stay out)
and returns a :class:`~l2l_lightning.LearnedOptimizer` over them instead.  Because the
strategy itself builds the optimizer, this works for every strategy that calls
``configure_optimizers`` (single device, DDP, ...), and resuming from a checkpoint
loads the saved learned-optimizer state into it as usual (the restore runs after setup).

Learning-rate schedulers returned by ``configure_optimizers`` are **dropped with a
warning**: they are bound to the replaced optimizer and their learning rates are that
optimizer's (an Adam lr of 1e-3 means nothing as a multiplier of a learned update).
To schedule the learned optimizer's ``lr``, return a ``LearnedOptimizer`` and your
scheduler from ``configure_optimizers`` yourself.

The LightningModule is handed to the optimizer as ``module``, so a checkpoint with
separate nets per kind of parameter (:class:`~l2l_lightning.nets.RoutedNets`, routed by
parameter name or module type) works as it is.

A net with a learned schedule (it reads the fraction of training done) is told the run's
length: ``total_steps``, by default the Trainer's ``estimated_stepping_batches`` (from
``max_steps``, or ``max_epochs`` × batches per epoch ÷ gradient accumulation); a run without an
end (``max_steps=-1``, ``max_epochs=-1``) is then a clear error.

The module must still define ``configure_optimizers`` (Lightning checks that before any
callback runs); what it returns is only used for its parameter groups.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from l2l_lightning.errors import ConfigError, check_positive_int
from l2l_lightning.lightning_compat import split_optimizer_config
from l2l_lightning.nets.base import LearnedOptimizerNet
from l2l_lightning.optim.learned import LearnedOptimizer
from l2l_lightning.optim.routing import NamedModules
from l2l_lightning.optim.runtime import check_step_options
from l2l_lightning.optim.state import check_lr, state_dtype_name
from l2l_lightning.optim.pretrained import load_net

_MISSING = object()


class LearnedOptimizerCallback(L.Callback):
    """Replace the optimizer(s) of any LightningModule by :class:`~l2l_lightning.LearnedOptimizer`.

    Takes every option of :class:`~l2l_lightning.LearnedOptimizer` (see its arguments), with the
    same meaning and defaults; all are checked here, so a wrong name or value fails before
    training starts.

    Args:
        checkpoint: the trained net (a name, a path or a net); loaded once, here.
        lr: the learned optimizer's update multiplier, for every parameter group.
        state_dtype: the LSTM state dtype (``"float32"`` or ``"bfloat16"``).
        chunk_size, compile, fused: how the step runs (memory and speed, not results).
        module: what names the parameters for routed nets; default: the LightningModule itself.
        total_steps: the run's length, for a net with a learned schedule; default: the Trainer's
            ``estimated_stepping_batches``.  Ignored by nets that do not read it.

    Example::

        trainer = L.Trainer(callbacks=[LearnedOptimizerCallback("general")])
        trainer.fit(model)  # model.configure_optimizers() may return Adam; LearnedOptimizer is used
    """

    def __init__(
        self,
        checkpoint: Union[str, "os.PathLike[str]", LearnedOptimizerNet],
        lr: float = 1.0,
        state_dtype: Union[str, torch.dtype] = "float32",
        chunk_size: Optional[int] = None,
        compile: Union[bool, str] = "auto",
        module: Optional[NamedModules] = None,
        fused: Union[bool, str] = "auto",
        total_steps: Optional[int] = None,
    ) -> None:
        check_lr(lr)
        self.net = load_net(checkpoint)
        if total_steps is not None:
            check_positive_int("LearnedOptimizerCallback: total_steps", total_steps)
        self.total_steps = total_steps
        self.lr = lr
        chunk_size, compile, fused = check_step_options(chunk_size, compile, fused)
        #: LearnedOptimizer's keyword arguments besides the net, lr and module
        self.options = {"state_dtype": state_dtype_name(state_dtype), "chunk_size": chunk_size, "compile": compile, "fused": fused}
        self.module = module
        self._patched: Optional[tuple[L.LightningModule, Any]] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self._patched is not None:
            return
        _refuse_deepspeed(trainer.strategy)
        original = pl_module.configure_optimizers
        self._patched = (pl_module, pl_module.__dict__.get("configure_optimizers", _MISSING))

        def configure_optimizers() -> Any:
            return self._replace(original(), pl_module)

        pl_module.configure_optimizers = configure_optimizers  # type: ignore[method-assign]

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._patched is None:
            return
        module, previous = self._patched
        if previous is _MISSING:
            module.__dict__.pop("configure_optimizers", None)
        else:
            module.configure_optimizers = previous  # type: ignore[method-assign]
        self._patched = None

    def _replace(self, optim_conf: Any, pl_module: L.LightningModule) -> Any:
        if optim_conf is None:
            groups_per_optimizer = [[{"params": [p for p in pl_module.parameters() if p.requires_grad]}]]
            schedulers: list = []
        else:
            optimizers, schedulers = split_optimizer_config(optim_conf)
            groups_per_optimizer = [[{"params": list(g["params"])} for g in opt.param_groups] for opt in optimizers]
        if schedulers:
            rank_zero_warn(
                f"LearnedOptimizerCallback: dropped {len(schedulers)} learning-rate scheduler(s) returned by "
                "configure_optimizers: they belong to the replaced optimizer. To schedule the learned "
                "optimizer's lr, return LearnedOptimizer(...) and a scheduler from configure_optimizers yourself."
            )
        total_steps = self._total_steps(pl_module.trainer) if self.net.inputs.horizon else None
        learned = [
            LearnedOptimizer(
                groups, checkpoint=self.net, lr=self.lr, module=self.module or pl_module, total_steps=total_steps,
                **self.options,
            )
            for groups in groups_per_optimizer
        ]
        return learned[0] if len(learned) == 1 else learned

    def _total_steps(self, trainer: L.Trainer) -> int:
        """The run's length: ``total_steps`` if given, else the Trainer's estimate (refused if the run has no end)."""
        if self.total_steps is not None:
            return self.total_steps
        steps = trainer.estimated_stepping_batches
        if not math.isfinite(steps) or steps < 1:
            raise ConfigError(
                f"LearnedOptimizerCallback: the net {type(self.net).__name__} has a learned schedule and needs the "
                f"run's length, but the Trainer's is {steps} (max_steps={trainer.max_steps}, "
                f"max_epochs={trainer.max_epochs}); set Trainer(max_steps=...) or pass total_steps= to the callback"
            )
        return int(steps)


def _refuse_deepspeed(strategy: Any) -> None:
    """DeepSpeed wraps or replaces the optimizer and partitions its state by parameter shape, which
    the per-coordinate LSTM states do not fit; refuse it before training rather than fail (or
    silently misbehave) inside DeepSpeed.  Recognised by class name, so DeepSpeed need not be installed."""
    kinds = [cls.__name__ for cls in type(strategy).__mro__]
    if "DeepSpeedStrategy" in kinds or type(strategy).__module__.split(".")[0] == "deepspeed":
        raise ConfigError(
            f"LearnedOptimizerCallback: the {type(strategy).__name__} (DeepSpeed) strategy is not supported: DeepSpeed "
            "wraps the optimizer and shards its state, which LearnedOptimizer's LSTM states do not survive. "
            "Use a single device or strategy='ddp' (tested)."
        )
