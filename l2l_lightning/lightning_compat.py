"""Every place l2l_lightning relies on Lightning internals, kept together.

No public hook does either job (Lightning 2.6):

* :func:`split_optimizer_config`: ``LearnedOptimizerCallback`` must read whatever a
  module's ``configure_optimizers`` returned (an optimizer, lists, dicts with
  ``lr_scheduler``, ...) to keep its parameter groups; Lightning's own parser of that
  output is the private ``lightning.pytorch.core.optimizer._configure_optimizers``.
* :data:`CHECKPOINT_HPARAMS_METHOD`: ``l2l`` must stop LightningCLI from overwriting the
  command line with a checkpoint's hyper-parameters (``l2l test --ckpt_path X
  --model.test_problems 8`` would silently test the training settings otherwise).
  LightningCLI does that in the private method named here, which ``L2LCLI`` overrides.

* :data:`INSTANTIATOR_KEY` / :data:`CLI_INSTANTIATOR`: ``MetaLearner.load_from_checkpoint`` rebuilds
  the task and net from their ``{"class_path", "init_args"}`` hyper-parameters through
  LightningCLI's instantiator; Lightning's loader finds it under the private hyper-parameter
  key ``"_instantiator"`` (``lightning.pytorch.core.saving``).

``tests/test_lightning_compat.py`` checks each against the installed Lightning and fails
loudly, naming this module, when Lightning changes either.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.core.optimizer import _configure_optimizers

#: The hyper-parameter under which Lightning's checkpoint loader looks for the function that builds a module.
INSTANTIATOR_KEY = "_instantiator"
#: LightningCLI's instantiator: builds ``{"class_path", "init_args"}`` arguments into objects.
CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"

#: The LightningCLI method that applies a checkpoint's hyper-parameters to the parsed config.
CHECKPOINT_HPARAMS_METHOD = "_parse_ckpt_path"


def split_optimizer_config(optim_conf: Any) -> tuple[list[Any], list[Any]]:
    """``(optimizers, lr scheduler configs)`` of a ``configure_optimizers`` return value, as Lightning reads it."""
    optimizers, schedulers, _ = _configure_optimizers(optim_conf)
    return optimizers, schedulers
