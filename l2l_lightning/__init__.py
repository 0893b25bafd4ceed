"""l2l-lightning: learned optimizers (Andrychowicz et al., 2016) for PyTorch Lightning.

The public names below are imported on first use (PEP 562), so deploying a trained
optimizer in a plain PyTorch loop (``from l2l_lightning import LearnedOptimizer``) loads
neither Lightning nor the meta-training code, tasks, datasets or plotting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from l2l_lightning.lazy import lazy_exports
from l2l_lightning.version import __version__ as __version__

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "CIFAR10Task": "l2l_lightning.tasks",
    "CheckpointError": "l2l_lightning.errors",
    "ConfigError": "l2l_lightning.errors",
    "CoordinatewiseLSTM": "l2l_lightning.nets",
    "DatasetError": "l2l_lightning.errors",
    "FeatureLSTM": "l2l_lightning.nets",
    "FeatureMLP": "l2l_lightning.nets",
    "GlobalAveragingLSTM": "l2l_lightning.nets",
    "L2LError": "l2l_lightning.errors",
    "Layout": "l2l_lightning.nets",
    "LearnedOptimizer": "l2l_lightning.optim.learned",
    "LearnedOptimizerCallback": "l2l_lightning.optim.callback",
    "LearnedOptimizerNet": "l2l_lightning.nets",
    "MNISTTask": "l2l_lightning.tasks",
    "MetaLearner": "l2l_lightning.meta.module",
    "ModuleProblem": "l2l_lightning.tasks",
    "NeuralArtTask": "l2l_lightning.tasks",
    "NonFiniteMetaLossError": "l2l_lightning.errors",
    "Problem": "l2l_lightning.tasks",
    "QuadraticTask": "l2l_lightning.tasks",
    "RoutedNets": "l2l_lightning.nets",
    "Segment": "l2l_lightning.nets",
    "Task": "l2l_lightning.tasks",
    "TaskMixture": "l2l_lightning.tasks",
    "UnsupportedGradientError": "l2l_lightning.errors",
    "evaluate_learned": "l2l_lightning.meta.unroll",
    "unroll": "l2l_lightning.meta.unroll",
}

#: subpackages reachable as attributes after a bare ``import l2l_lightning`` (``l2l_lightning.optim.available()``),
#: imported on first use like the names above: ``meta`` loads Lightning, ``optim`` does not
_SUBPACKAGES = ("data", "meta", "nets", "optim", "tasks")

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBPACKAGES)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from l2l_lightning.errors import (
        CheckpointError, ConfigError, DatasetError, L2LError, NonFiniteMetaLossError, UnsupportedGradientError,
    )
    from l2l_lightning.meta.module import MetaLearner
    from l2l_lightning.meta.unroll import evaluate_learned, unroll
    from l2l_lightning.nets import (
        CoordinatewiseLSTM, FeatureLSTM, FeatureMLP, GlobalAveragingLSTM, Layout, LearnedOptimizerNet, RoutedNets, Segment,
    )
    from l2l_lightning.optim.callback import LearnedOptimizerCallback
    from l2l_lightning.optim.learned import LearnedOptimizer
    from l2l_lightning.tasks import (
        CIFAR10Task, MNISTTask, ModuleProblem, NeuralArtTask, Problem, QuadraticTask, Task, TaskMixture,
    )
