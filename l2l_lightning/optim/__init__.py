"""Deployment: trained learned optimizers as ``torch.optim.Optimizer`` and Lightning callback.

* :class:`LearnedOptimizer` — use it in ``configure_optimizers``, in any plain PyTorch loop,
  or via LightningCLI (``--optimizer l2l_lightning.LearnedOptimizer --optimizer.checkpoint NAME``).
* :class:`LearnedOptimizerCallback` — swap it into a LightningModule without editing it
  (imported on first use: only it needs Lightning).
* :mod:`l2l_lightning.optim.pretrained` — export (:func:`~l2l_lightning.optim.pretrained.export`), list and
  load trained optimizers; :mod:`l2l_lightning.optim.export` is the command line
  (``python -m l2l_lightning.optim.export CKPT NAME``), hence no ``export`` name here.
* :mod:`l2l_lightning.optim.runtime` — how a step runs: chunks, threads, compile, fused;
  :mod:`~l2l_lightning.optim.state` the state dict; :mod:`~l2l_lightning.optim.routing` which net steps what.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from l2l_lightning.optim.learned import LearnedOptimizer, SkippedStepWarning
from l2l_lightning.optim.state import STATE_DTYPES
from l2l_lightning.optim.pretrained import available, load_net

__all__ = [
    "STATE_DTYPES",
    "LearnedOptimizer",
    "LearnedOptimizerCallback",
    "SkippedStepWarning",
    "available",
    "load_net",
]


def __getattr__(name: str) -> Any:
    if name == "LearnedOptimizerCallback":  # Lightning is imported only by those who use it
        from l2l_lightning.optim.callback import LearnedOptimizerCallback

        return LearnedOptimizerCallback
    raise AttributeError(f"module 'l2l_lightning.optim' has no attribute {name!r}")


if TYPE_CHECKING:
    from l2l_lightning.optim.callback import LearnedOptimizerCallback
