"""Tasks: distributions of optimizees (see :mod:`l2l_lightning.tasks.base` for the API)."""

from l2l_lightning.tasks.base import ModuleProblem, Problem, Split, Task
from l2l_lightning.tasks.quadratic import QuadraticProblem, QuadraticTask

__all__ = ["ModuleProblem", "Problem", "QuadraticProblem", "QuadraticTask", "Split", "Task"]
