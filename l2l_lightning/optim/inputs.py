"""What a deployed step gives a net besides the gradient: the :class:`~l2l_lightning.nets.StepInputs` of a bucket.

A net declares what it reads (:attr:`~l2l_lightning.nets.LearnedOptimizerNet.inputs`); for a
net that declares nothing, nothing here runs.  Otherwise, per bucket of parameters (one
optimizee to the net):

* ``param``: the parameters (their local shards) before the step, flattened like the gradient;
* ``step``: each parameter's ``"step"`` count before this step (0 at its first), so a parameter
  that joined later (``add_param_group``, unfreezing) has its own clock;
* ``horizon``: each parameter's group's ``total_steps`` (checked when the group is added and when
  a state dict is loaded; one missing here is a :class:`~l2l_lightning.errors.ConfigError` before
  anything changes);
* ``loss``: the loss of ``step(closure)`` (the closure's return value) or of ``step(loss=...)``,
  as a one-element tensor.  Under DDP each rank computed the loss of its own batch, so it is
  averaged over ranks (one all-reduce of one number): every rank then steps identically, as the
  all-reduced gradients already do.  A net that reads the loss, stepped with neither, is a
  :class:`~l2l_lightning.errors.ConfigError` before anything changes: a silent stand-in
  (zero, the previous loss) would give the net an input it was never trained on.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from l2l_lightning.errors import ConfigError
from l2l_lightning.nets.base import LearnedOptimizerNet, StepInputs
from l2l_lightning.optim import sharded
from l2l_lightning.optim.state import check_total_steps


def step_loss(net: LearnedOptimizerNet, loss: Any) -> Optional[Tensor]:
    """The loss a step gives ``net`` (``None`` if it does not read one); refuse a missing or non-scalar loss."""
    if not net.inputs.loss:
        return None
    if loss is None:
        raise ConfigError(
            f"LearnedOptimizer: the net {type(net).__name__} reads the loss, but step() was called without "
            "a closure or a loss; call step(closure) (Lightning's automatic optimization does) or "
            "step(loss=loss). Nothing was changed."
        )
    loss = torch.as_tensor(loss.detach() if isinstance(loss, Tensor) else loss, dtype=torch.float32)
    if loss.numel() != 1:
        raise ConfigError(f"LearnedOptimizer: the loss given to the net must be one number, got shape {tuple(loss.shape)}")
    loss = loss.reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        loss = loss.to(_collective_device())
        torch.distributed.all_reduce(loss)
        loss = loss / torch.distributed.get_world_size()
    return loss


def _collective_device() -> torch.device:
    """Where the default process group's collectives run (CUDA for NCCL, else CPU)."""
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def bucket_inputs(
    net: LearnedOptimizerNet, params: Sequence[Tensor], steps: Sequence[Any], loss: Optional[Tensor], device: torch.device,
    horizons: Sequence[Optional[int]],
) -> Optional[StepInputs]:  # fmt: skip
    """The :class:`StepInputs` ``net`` declared, for the parameters of one bucket (``steps``: their step
    counts; ``horizons``: their groups' ``total_steps``)."""
    reads = net.inputs
    if not reads.any:
        return None
    step = horizon = None
    if reads.step:
        step = torch.stack([torch.as_tensor(s, dtype=torch.int64).to(device) for s in steps])
    if reads.horizon:
        if any(h is None for h in horizons):
            check_total_steps(net, None)  # raises: says what to pass
        horizon = torch.tensor(list(horizons), dtype=torch.int64, device=device)
    return StepInputs(
        param=torch.cat([sharded.local(p).detach().reshape(-1) for p in params]) if reads.param else None,
        step=step,
        loss=loss.to(device) if loss is not None else None,
        horizon=horizon,
    )
