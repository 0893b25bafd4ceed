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

``m_φ`` may be several nets sharing nothing (:class:`~l2l_lightning.nets.RoutedNets`, e.g.
one for conv and one for fully connected parameters): :func:`bind` ties them to the
problem's parameter layout, and the bound nets are called like a single one.

Cost.  Per inner step the loop does the optimizee's forward and gradient, one net
call and one add; there is no host synchronisation and no Python loop over
parameter tensors (the optimizee's parameters are one flat vector).  For a
:class:`~l2l_lightning.nets.CoordinatewiseLSTM` the state travels as per-layer
``(h, c)`` tensors (``net.forward_split``) and is joined once at the end; each cell is
one autograd node with a fused backward.  Several optimizees at once are just more
rows: :class:`~l2l_lightning.tasks.QuadraticProblem` batches its quadratics, and
:class:`~l2l_lightning.tasks.StackedModuleProblem` stacks draws of an ``nn.Module``
optimizee behind one ``torch.func.vmap``.  ``benchmarks/meta_throughput.py`` measures all of it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from l2l_lightning.errors import ConfigError
from l2l_lightning.tasks.base import Problem


class UnrollResult(NamedTuple):
    losses: Tensor  #: ``(steps, num_optimizees)``: loss after each update
    theta: Tensor  #: final parameters, detached
    state: Any  #: final optimizer state (a tensor, or a tuple of them for routed nets), detached


def bind(net: nn.Module, problem: Problem, device: Any = None) -> Any:
    """The net as the unroll applies it to ``problem``'s flat parameters.

    A single coordinatewise net applies as it is.  :class:`~l2l_lightning.nets.RoutedNets`
    (separate nets for, e.g., conv and fully connected parameters) is bound to the
    problem's parameter names and module types: a :class:`~l2l_lightning.tasks.ModuleProblem`
    (or a :class:`~l2l_lightning.tasks.StackedModuleProblem`, whose optimizees repeat one layout).
    """
    if not callable(getattr(net, "bind", None)):
        return net
    layout = getattr(problem, "layout", None)
    if layout is None:
        raise ConfigError(
            f"{type(net).__name__} routes parameters by name or module type, but {type(problem).__name__} "
            "has no named parameters (only ModuleProblem optimizees have); use a single net for this task"
        )
    segments = [(name, end - start) for name, start, end, _ in layout] * problem.num_optimizees
    return net.bind(segments, getattr(problem, "module", None), device=device)


def unroll(
    net: Any,
    problem: Problem,
    theta: Tensor,
    state: Any,
    start_step: int,
    steps: int,
    *,
    meta_grad: bool = True,
    second_derivatives: bool = False,
) -> UnrollResult:
    """Run ``steps`` inner steps of the learned optimizer ``net`` on ``problem``.

    Args:
        net: a coordinatewise net, or routed nets bound to ``problem`` (:func:`bind`).
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
        state = tree_map(Tensor.detach, state)
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
        if split is not None and steps:
            state = tree_map(lambda new, old: new.to(old.dtype), net.join_state(layers), state)
    return UnrollResult(torch.stack(losses), theta.detach(), tree_map(Tensor.detach, state))


def evaluate_learned(net: nn.Module, problem: Problem, num_steps: int) -> Tensor:
    """Loss curve ``(num_steps, num_optimizees)`` of ``net`` optimizing ``problem`` from scratch."""
    # Lightning's test loop runs under inference mode, where no autograd at all is possible.
    with torch.inference_mode(False):
        theta = problem.initial_params().clone()
        net = bind(net, problem, device=theta.device)
        state = net.init_state(theta.numel(), device=theta.device)
        return unroll(net, problem, theta, state, 0, num_steps, meta_grad=False).losses
