"""Tasks: distributions of optimizees (see :mod:`l2l_lightning.tasks.base` for the API)."""

from l2l_lightning.tasks.base import ModuleProblem, Problem, Split, StackedModuleProblem, Task
from l2l_lightning.tasks.cifar import CIFAR10Task
from l2l_lightning.tasks.classification import ImageClassificationTask
from l2l_lightning.tasks.mixture import TaskMixture
from l2l_lightning.tasks.mnist import MNISTTask
from l2l_lightning.tasks.neural_art import NeuralArtProblem, NeuralArtTask
from l2l_lightning.tasks.quadratic import QuadraticProblem, QuadraticTask

__all__ = [
    "CIFAR10Task",
    "ImageClassificationTask",
    "MNISTTask",
    "ModuleProblem",
    "NeuralArtProblem",
    "NeuralArtTask",
    "Problem",
    "QuadraticProblem",
    "QuadraticTask",
    "Split",
    "StackedModuleProblem",
    "Task",
    "TaskMixture",
]
