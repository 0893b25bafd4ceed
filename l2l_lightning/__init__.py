"""l2l-lightning: learned optimizers (Andrychowicz et al., 2016) for PyTorch Lightning."""

from l2l_lightning.errors import ConfigError, L2LError, NonFiniteMetaLossError
from l2l_lightning.errors import CheckpointError, DatasetError, UnsupportedGradientError
from l2l_lightning.meta import MetaLearner, evaluate_learned, unroll
from l2l_lightning.nets import CoordinatewiseLSTM, RoutedNets
from l2l_lightning.optim import LearnedOptimizer, LearnedOptimizerCallback
from l2l_lightning.tasks import CIFAR10Task, MNISTTask, ModuleProblem, NeuralArtTask, Problem, QuadraticTask, Task

__version__ = "0.1.0"

__all__ = [
    "CIFAR10Task",
    "CheckpointError",
    "ConfigError",
    "CoordinatewiseLSTM",
    "DatasetError",
    "L2LError",
    "LearnedOptimizer",
    "LearnedOptimizerCallback",
    "MNISTTask",
    "MetaLearner",
    "ModuleProblem",
    "NeuralArtTask",
    "NonFiniteMetaLossError",
    "Problem",
    "QuadraticTask",
    "RoutedNets",
    "Task",
    "UnsupportedGradientError",
    "evaluate_learned",
    "unroll",
]
