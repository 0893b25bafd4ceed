"""The inner loop: optimize a problem with the learned optimizer for a few steps.

This is the heart of meta-training, read top to bottom::

    L_0 = f(θ_0)                                   θ_0 carried in, detached
    for k in 0 .. steps-1:
        ∇_k        = ∂L_k/∂θ_k                      detached unless second_derivatives
        g_k, h     = m_φ(∇_k, h)
        θ_{k+1}    = θ_k + g_k
        L_{k+1}    = f(θ_{k+1})                    recorded: the loss *after* each update

The returned losses ``L_1 … L_steps`` all depend on φ, so their (weighted) sum is
the truncation's meta-loss and every update, the last one included, receives a
meta-gradient.  ``L_0`` is left out because it does not depend on φ.

Cost.  Per inner step the loop does the optimizee's forward and gradient, one net
call and one add; there is no host synchronisation and no Python loop over
parameter tensors (the optimizee's parameters are one flat vector).  For a
:class:`~l2l_lightning.nets.CoordinatewiseLSTM` the state travels as per-layer
``(h, c)`` tensors (``net.forward_split``) and is joined once at the end; each cell is
one autograd node with a fused backward.  Several optimizees at once are just more
rows: :class:`~l2l_lightning.tasks.QuadraticProblem` batches its quadratics, and
:class:`StackedModuleProblem` stacks draws of an ``nn.Module`` optimizee behind one
``torch.func.vmap``.  ``benchmarks/meta_throughput.py`` measures all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

from l2l_lightning.errors import ConfigError
from l2l_lightning.tasks.base import ModuleProblem, Problem


class UnrollResult(NamedTuple):
    losses: Tensor  #: ``(steps, num_optimizees)``: loss after each update
    theta: Tensor  #: final parameters, detached
    state: Tensor  #: final optimizer state, detached


def unroll(
    net: nn.Module,
    problem: Problem,
    theta: Tensor,
    state: Tensor,
    start_step: int,
    steps: int,
    *,
    meta_grad: bool = True,
    second_derivatives: bool = False,
) -> UnrollResult:
    """Run ``steps`` inner steps of the learned optimizer ``net`` on ``problem``.

    Args:
        theta, state: where the previous truncation stopped; both are detached here,
            so no gradient ever flows across a truncation boundary.
        start_step: inner-step index of ``theta`` (selects each step's data).
        meta_grad: keep the graph from φ to the losses (meta-training).  With ``False``
            the loop runs for evaluation only and keeps no graph across steps.
        second_derivatives: also differentiate through the optimizee's gradient
            (``∂∇/∂φ``), which the paper drops; costs a double backward per step.
    """
    split = getattr(net, "forward_split", None)
    with torch.enable_grad():  # the inner gradient needs autograd even in an evaluation context
        theta = theta.detach().requires_grad_(True)
        state = state.detach()
        # CoordinatewiseLSTM: carry the state as per-layer (h, c) and join it once at the end,
        # instead of a stack (forward) and a select (backward) per inner step.
        layers = net.split_state(state) if split is not None else None
        create_graph = meta_grad and second_derivatives
        loss = problem.loss(theta, start_step)
        losses = []
        for k in range(steps):
            (grad,) = torch.autograd.grad(loss.sum(), theta, create_graph=create_graph, retain_graph=meta_grad)
            with torch.set_grad_enabled(meta_grad):
                if split is not None:
                    update, layers = split(grad, layers)
                else:
                    update, state = net(grad, state)
                theta = theta + update
            if not meta_grad:
                theta = theta.detach().requires_grad_(True)
            loss = problem.loss(theta, start_step + k + 1)
            losses.append(loss if meta_grad else loss.detach())
        if split is not None:
            state = net.join_state(layers).to(state.dtype) if steps else state
    return UnrollResult(torch.stack(losses), theta.detach(), state.detach())


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
            if not same_module or problem.layout != first.layout:
                raise ConfigError(
                    "StackedModuleProblem: every problem must share the same module and parameter layout "
                    "(draws of one task)"
                )
        self.problems = problems
        self.module = first.module
        self.layout = first.layout
        self.loss_fn = first.loss_fn
        self.num_optimizees = len(problems)
        self.size = first.layout[-1][2] if first.layout else 0  # coordinates per optimizee
        self._theta0 = torch.cat([problem.initial_params() for problem in problems])

    def initial_params(self) -> Tensor:
        return self._theta0.clone()

    def _one(self, theta: Tensor, batch: Any) -> Tensor:
        params = {name: theta[start:end].view(shape) for name, start, end, shape in self.layout}
        return self.loss_fn(functional_call(self.module, params, (batch[0],)), batch)

    def batch(self, step: int) -> Any:
        """Every problem's data for ``step``, stacked along a new leading dimension."""
        return tree_map(lambda *leaves: torch.stack(leaves), *[problem.batch(step) for problem in self.problems])

    def loss(self, theta: Tensor, step: int) -> Tensor:
        return vmap(self._one)(theta.view(self.num_optimizees, self.size), self.batch(step))


def evaluate_learned(net: nn.Module, problem: Problem, num_steps: int) -> Tensor:
    """Loss curve ``(num_steps, num_optimizees)`` of ``net`` optimizing ``problem`` from scratch."""
    # Lightning's test loop runs under inference mode, where no autograd at all is possible.
    with torch.inference_mode(False):
        theta = problem.initial_params().clone()
        state = net.init_state(theta.numel(), device=theta.device)
        return unroll(net, problem, theta, state, 0, num_steps, meta_grad=False).losses
