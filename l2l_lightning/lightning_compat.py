"""Every place l2l_lightning relies on Lightning internals, kept together.

No public hook does any of these jobs (Lightning 2.6):

* :func:`split_optimizer_config`: ``LearnedOptimizerCallback`` must read whatever a
  module's ``configure_optimizers`` returned (an optimizer, lists, dicts with
  ``lr_scheduler``, ...) to keep its parameter groups; Lightning's own parser of that
  output is the private ``lightning.pytorch.core.optimizer._configure_optimizers``.
* :data:`CHECKPOINT_HPARAMS_METHOD`: ``l2l`` must stop LightningCLI from overwriting the
  command line with a checkpoint's hyper-parameters (``l2l test --ckpt_path X
  --model.test_problems 8`` would silently test the training settings otherwise).
  LightningCLI does that in the private method named here, which ``L2LCLI`` overrides.
* :func:`resolve_ckpt_keyword`: ``l2l test --ckpt_path last`` must know, before testing,
  which file Lightning would load (Lightning only warns when there is none, then tests
  untrained weights); its resolver is the private ``_CheckpointConnector._parse_ckpt_path``.
* :func:`is_registry`: which ``--ckpt_path`` values Lightning fetches from its model registry
  rather than reading as a file (``registry`` and ``registry:…``, only with ``litmodels``
  installed): ``l2l`` checks every other value as a file.
* :data:`INSTANTIATOR_KEY` / :data:`CLI_INSTANTIATOR`: ``MetaLearner.load_from_checkpoint`` rebuilds
  the task and net from their ``{"class_path", "init_args"}`` hyper-parameters through
  LightningCLI's instantiator; Lightning's loader finds it under the private hyper-parameter
  key ``"_instantiator"`` (``lightning.pytorch.core.saving``).

``tests/test_lightning_compat.py`` checks each against the installed Lightning and fails
loudly, naming this module, when Lightning changes any of them.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import lightning as L
from lightning.pytorch.core.optimizer import _configure_optimizers
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_registry import _is_registry
from lightning_utilities.core.imports import module_available

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


def resolve_ckpt_keyword(trainer: "L.Trainer", subcommand: str, ckpt_path: str) -> Optional[str]:
    """The file Lightning's ``trainer.<subcommand>(ckpt_path=...)`` would load for ``"last"``/``"hpc"``/``"best"``.

    ``None`` where Lightning would load nothing (it warns: that warning is silenced, the caller
    raises instead); a ``ValueError`` where Lightning raises one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resolved = trainer._checkpoint_connector._parse_ckpt_path(
            TrainerFn(subcommand),
            ckpt_path,
            model_provided=True,
            model_connected=False,
        )
    return None if resolved is None else str(resolved)


def is_registry(ckpt_path: Any) -> bool:
    """Whether Lightning reads ``ckpt_path`` from its model registry, as its own checkpoint connector decides."""
    return _is_registry(ckpt_path) and module_available("litmodels")
