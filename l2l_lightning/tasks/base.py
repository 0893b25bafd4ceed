"""The task API: a task is a *distribution* of optimizees.

One draw (:meth:`Task.sample`) gives a :class:`Problem`: fresh initial parameters
plus the data the optimizee is trained on.  A problem may hold several independent
optimizees at once (a batch of quadratics, say); all their coordinates live in one
flat vector ``theta`` because, for a coordinatewise optimizer, they are all just rows.

An unroll needs :meth:`Problem.loss`, the loss of *each* optimizee at ``theta`` on step
``step``'s data, and :attr:`Problem.layout`, the tensors behind ``theta`` (names, shapes,
owning module types, optimizee of each), which nets that route or average by tensor read.  The unroll differentiates the *sum*
of these losses, so every optimizee receives exactly the gradient it would get if
it were optimized alone (no hidden ``1/batch`` factor).

Ordinary ``nn.Module`` optimizees are run statelessly through
:func:`torch.func.functional_call` by :class:`ModuleProblem`, so writing a task for
your own model is a few lines: build the module, draw its initial parameters and
say which minibatch step ``t`` sees.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from l2l_lightning.torch_compat import tree_map

from l2l_lightning.data.datasets import Split
from l2l_lightning.errors import ConfigError
from l2l_lightning.nets.layout import Layout
from l2l_lightning.specs import make_spec




class Problem(ABC):
    """One draw from a task: ``num_optimizees`` independent optimizees and their data."""

    #: How many independent optimizees the flat parameter vector holds.
    num_optimizees: int = 1

    @abstractmethod
    def initial_params(self) -> Tensor:
        """The initial flat parameter vector ``theta_0`` (1-D, all optimizees concatenated)."""

    @abstractmethod
    def loss(self, theta: Tensor, step: int) -> Tensor:
        """Losses of the optimizees at ``theta`` on step ``step``'s data, shape ``(num_optimizees,)``.

        Must be differentiable in ``theta`` and must not modify it.
        """

    @property
    def layout(self) -> Layout:
        """The tensors behind ``theta``, in order (:class:`~l2l_lightning.nets.base.Layout`).

        Default: ``num_optimizees`` equal unnamed 1-D tensors, all that is known of a plain
        vector.  Problems over named parameters (:class:`ModuleProblem`) say more, which
        nets that route by name or module type (:class:`~l2l_lightning.nets.RoutedNets`) need.
        """
        if getattr(self, "_layout", None) is None:
            self._layout = Layout.flat(self.initial_params().numel(), self.num_optimizees)
        return self._layout


class Task(ABC):
    """A distribution of optimizees; subclass it and implement :meth:`sample`.

    Every draw takes an explicit generator so runs are reproducible from the seed
    and the configuration alone.
    """

    @abstractmethod
    def sample(self, generator: torch.Generator, device: torch.device | str = "cpu", split: Split = "train") -> Problem:
        """Draw one problem on ``split``'s data, tensors on ``device``, randomness from ``generator`` only."""

    @property
    def config(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}``: how to rebuild this task, as plain data.

        Checkpoints store this instead of a pickled task (which would drag data along and
        break ``torch.load(weights_only=True)``).  Like scikit-learn's ``get_params``, it
        reads each ``__init__`` argument from the attribute of the same name: store them so,
        or override this property.
        """
        init_args = {}
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if not hasattr(self, name):
                raise AttributeError(
                    f"{type(self).__name__} does not store its __init__ argument {name!r} as self.{name}; "
                    "store it, or override Task.config"
                )
            init_args[name] = getattr(self, name)
        return make_spec(type(self), init_args)


def _slices(params: dict[str, Tensor]) -> list[tuple[str, int, int, torch.Size]]:
    """``(name, start, end, shape)`` of each parameter in the flat vector."""
    slices, offset = [], 0
    for name, value in params.items():
        slices.append((name, offset, offset + value.numel(), value.shape))
        offset += value.numel()
    return slices


class ModuleProblem(Problem):
    """A problem whose optimizee is an ordinary ``nn.Module`` (one optimizee).

    Args:
        module: the architecture; its own parameters and buffers are never touched.
        params: initial parameters by name (as in ``module.named_parameters()``).
        batch: ``batch(step)`` gives the data for inner step ``step`` (e.g. a minibatch).
        loss_fn: ``loss_fn(module_output, batch)`` gives the scalar loss; the module is run as
            ``functional_call(module, params, (batch[0],))``.
    """

    num_optimizees = 1

    def __init__(
        self,
        module: nn.Module,
        params: dict[str, Tensor],
        batch: Callable[[int], Any],
        loss_fn: Callable[[Any, Any], Tensor],
    ) -> None:
        self.module = module
        self.slices = _slices(params)
        self._layout = Layout.of_module(module, params)
        self._theta0 = torch.cat([p.detach().reshape(-1) for p in params.values()])
        self.batch = batch
        self.loss_fn = loss_fn

    def initial_params(self) -> Tensor:
        return self._theta0.clone()

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Views of the flat vector shaped as the module's parameters (differentiable)."""
        return {name: theta[start:end].view(shape) for name, start, end, shape in self.slices}

    def loss(self, theta: Tensor, step: int) -> Tensor:
        batch = self.batch(step)
        output = functional_call(self.module, self.unflatten(theta), (batch[0],))
        return self.loss_fn(output, batch).reshape(1)


class StackedModuleProblem(Problem):
    """Several :class:`~l2l_lightning.tasks.base.ModuleProblem` draws of one architecture, as one problem.

    Their parameters are concatenated (``theta`` = ``[θ_1, θ_2, …]``, optimizee-major),
    so for the coordinatewise net they are just more rows, and their losses come from a
    single :func:`torch.func.vmap` over ``functional_call``: one batched forward and
    backward instead of one per optimizee.  Each keeps its own data: step ``t`` stacks
    every problem's ``batch(t)``.  ``loss`` returns the ``(K,)`` losses, each optimizee's
    gradient is its own (the unroll differentiates their sum).

    All problems must share the architecture (the same module, or modules printing the
    same) and parameter layout; the first problem's module and ``loss_fn`` serve them all.
    """

    def __init__(self, problems: Sequence[ModuleProblem]) -> None:
        problems = list(problems)
        if not problems:
            raise ConfigError("StackedModuleProblem needs at least one problem")
        first = problems[0]
        for problem in problems[1:]:
            same_module = problem.module is first.module or repr(problem.module) == repr(first.module)
            if not same_module or problem.slices != first.slices:
                raise ConfigError(
                    "StackedModuleProblem: every problem must share the same module and parameter layout "
                    "(draws of one task)"
                )
        self.problems = problems
        self.module = first.module
        self.slices = first.slices
        self._layout = first.layout.repeat(len(problems))
        self.loss_fn = first.loss_fn
        self.num_optimizees = len(problems)
        self.size = first.slices[-1][2] if first.slices else 0  # coordinates per optimizee
        self._theta0 = torch.cat([problem.initial_params() for problem in problems])

    def initial_params(self) -> Tensor:
        return self._theta0.clone()

    def _one(self, theta: Tensor, batch: Any) -> Tensor:
        params = {name: theta[start:end].view(shape) for name, start, end, shape in self.slices}
        return self.loss_fn(functional_call(self.module, params, (batch[0],)), batch)

    def batch(self, step: int) -> Any:
        """Every problem's data for ``step``, stacked along a new leading dimension."""
        return tree_map(lambda *leaves: torch.stack(leaves), *[problem.batch(step) for problem in self.problems])

    def loss(self, theta: Tensor, step: int) -> Tensor:
        return vmap(self._one)(theta.view(self.num_optimizees, self.size), self.batch(step))


class ScaledProblem(Problem):
    """``problem`` with its parameters rescaled coordinatewise: ``f(c ⊙ θ)`` from ``θ₀ / c``.

    The random scaling of Lv, Jiang, Li 2017 ("Learning gradient descent: better
    generalization and longer horizons"): the optimizee follows the same trajectory in
    ``c ⊙ θ``, but its gradients are scaled by ``c`` and its parameters by ``1/c``, so an
    optimizer meta-trained on many ``c`` cannot rely on the scale of one task's gradients.
    """

    def __init__(self, problem: Problem, scale: Tensor) -> None:
        self.problem, self.scale = problem, scale
        self.num_optimizees = problem.num_optimizees

    def initial_params(self) -> Tensor:
        return self.problem.initial_params() / self.scale

    def loss(self, theta: Tensor, step: int) -> Tensor:
        return self.problem.loss(theta * self.scale, step)

    @property
    def layout(self) -> Layout:
        return self.problem.layout
