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

from typing import TYPE_CHECKING

from l2l_lightning.lazy import lazy_exports

#: public name -> the module that defines it, imported on first use (PEP 562): so that
#: ``python -m l2l_lightning.optim.pretrained`` runs a module its package has not imported
#: yet, and the callback's Lightning is imported only by those who use it.
_EXPORTS: dict[str, str] = {
    "STATE_DTYPES": "l2l_lightning.optim.state",
    "LearnedOptimizer": "l2l_lightning.optim.learned",
    "LearnedOptimizerCallback": "l2l_lightning.optim.callback",
    "SkippedStepWarning": "l2l_lightning.optim.learned",
    "available": "l2l_lightning.optim.pretrained",
    "load_net": "l2l_lightning.optim.pretrained",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from l2l_lightning.optim.callback import LearnedOptimizerCallback
    from l2l_lightning.optim.learned import LearnedOptimizer, SkippedStepWarning
    from l2l_lightning.optim.state import STATE_DTYPES
    from l2l_lightning.optim.pretrained import available, load_net
