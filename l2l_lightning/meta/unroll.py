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
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from l2l_lightning.tasks.base import Problem


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
    with torch.enable_grad():  # the inner gradient needs autograd even in an evaluation context
        theta = theta.detach().requires_grad_(True)
        state = state.detach()
        loss = problem.loss(theta, start_step)
        losses = []
        for k in range(steps):
            (grad,) = torch.autograd.grad(
                loss.sum(), theta, create_graph=meta_grad and second_derivatives, retain_graph=meta_grad
            )
            with torch.set_grad_enabled(meta_grad):
                update, state = net(grad, state)
                theta = theta + update
            if not meta_grad:
                theta = theta.detach().requires_grad_(True)
            loss = problem.loss(theta, start_step + k + 1)
            losses.append(loss if meta_grad else loss.detach())
    return UnrollResult(torch.stack(losses), theta.detach(), state.detach())


def evaluate_learned(net: nn.Module, problem: Problem, num_steps: int) -> Tensor:
    """Loss curve ``(num_steps, num_optimizees)`` of ``net`` optimizing ``problem`` from scratch."""
    # Lightning's test loop runs under inference mode, where no autograd at all is possible.
    with torch.inference_mode(False):
        theta = problem.initial_params().clone()
        state = net.init_state(theta.numel(), device=theta.device)
        return unroll(net, problem, theta, state, 0, num_steps, meta_grad=False).losses
