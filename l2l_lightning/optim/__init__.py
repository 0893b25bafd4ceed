"""Deployment: trained learned optimizers as ``torch.optim.Optimizer`` and Lightning callback.

* :class:`LearnedOptimizer` — use it in ``configure_optimizers`` or via LightningCLI
  (``--optimizer l2l_lightning.LearnedOptimizer --optimizer.checkpoint NAME``).
* :class:`LearnedOptimizerCallback` — swap it into a LightningModule without editing it.
* :mod:`l2l_lightning.optim.pretrained` — export (:func:`~l2l_lightning.optim.pretrained.export`), list and
  load trained optimizers; :mod:`l2l_lightning.optim.export` is the command line
  (``python -m l2l_lightning.optim.export CKPT NAME``), hence no ``export`` name here.
"""

from l2l_lightning.optim.callback import LearnedOptimizerCallback
from l2l_lightning.optim.learned import STATE_DTYPES, LearnedOptimizer, SkippedStepWarning
from l2l_lightning.optim.pretrained import available, load_net

__all__ = [
    "STATE_DTYPES",
    "LearnedOptimizer",
    "LearnedOptimizerCallback",
    "SkippedStepWarning",
    "available",
    "load_net",
]
