"""The inner loop: optimize a problem with the learned optimizer for a few steps.

This is the heart of meta-training, read top to bottom::

    L_0 = f(θ_0)                                   θ_0 carried in, detached
    for k in 0 .. steps-1:
        ∇_k        = ∂L_k/∂θ_k                      detached unless second_derivatives
        g_k, h     = m_φ(∇_k, h [, θ_k, k, L_k])   the extras only for nets that declare them
        θ_{k+1}    = θ_k + g_k
        L_{k+1}    = f(θ_{k+1})                    recorded: the loss *after* each update

The returned losses ``L_1 … L_steps`` all depend on φ, so their (weighted) sum is
the truncation's meta-loss and every update, the last one included, receives a
meta-gradient.  ``L_0`` is left out because it does not depend on φ.

The net sees the problem's :attr:`~l2l_lightning.tasks.Problem.layout` (which rows are
which tensor of which optimizee): and a net that declares :attr:`~l2l_lightning.nets.LearnedOptimizerNet.inputs` is also given
the parameters ``θ_k``, the inner step index ``k`` and the loss ``L_k`` (detached), nothing
else.  :func:`bind` ties the net to the layout once per drawn problem,
so nets that route tensors to separate nets (:class:`~l2l_lightning.nets.RoutedNets`) or
average over them (:class:`~l2l_lightning.nets.GlobalAveragingLSTM`) work like the plain LSTM.

Cost.  Per inner step the loop does the optimizee's forward and gradient, one net
call and one add; there is no host synchronisation and no Python loop over
parameter tensors (the optimizee's parameters are one flat vector).  The state travels
in the net's carried form (``net.split_state``; per-layer ``(h, c)`` tensors for the
LSTM, see :meth:`~l2l_lightning.nets.LearnedOptimizerNet.forward_split`) and is joined
once at the end; each LSTM cell is one autograd node with a fused backward.  Several optimizees at once are just more
rows: :class:`~l2l_lightning.tasks.QuadraticProblem` batches its quadratics, and
:class:`~l2l_lightning.tasks.StackedModuleProblem` stacks draws of an ``nn.Module``
optimizee behind one ``torch.func.vmap``.  ``benchmarks/meta_throughput.py`` measures all of it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor
from l2l_lightning.torch_compat import tree_map

from l2l_lightning.errors import ConfigError
from l2l_lightning.nets.base import LearnedOptimizerNet, StepInputs
from l2l_lightning.nets.layout import Layout
from l2l_lightning.tasks.base import Problem


class UnrollResult(NamedTuple):
    losses: Tensor  #: ``(steps, num_optimizees)``: loss after each update
    theta: Tensor  #: final parameters, detached
    state: Any  #: final optimizer state (the net's state for the problem's layout), detached


def bind(net: LearnedOptimizerNet, problem: Problem) -> LearnedOptimizerNet:
    """``net`` as applied to ``problem``'s parameters (its layout); a layout the net cannot use is a ``ConfigError``."""
    return net.bind(problem.layout)


def unroll(
    net: LearnedOptimizerNet,
    problem: Problem,
    theta: Tensor,
    state: Any,
    start_step: int,
    steps: int,
    *,
    meta_grad: bool = True,
    second_derivatives: bool = False,
    on_step: Optional[Callable[[Tensor, Tensor, Tensor], None]] = None,
    horizon: Optional[int] = None,
) -> UnrollResult:
    """Run ``steps`` inner steps of the learned optimizer ``net`` on ``problem``.

    Args:
        net: a learned-optimizer net bound to ``problem`` (:func:`bind`).
        theta, state: where the previous truncation stopped; both are detached here,
            so no gradient ever flows across a truncation boundary.
        start_step: inner-step index of ``theta`` (selects each step's data).
        meta_grad: keep the graph from φ to the losses (meta-training).  With ``False``
            the loop runs for evaluation only and keeps no graph across steps.
        second_derivatives: also differentiate through the optimizee's gradient
            (``∂∇/∂φ``), which the paper drops; costs a double backward per step.
        on_step: called as ``on_step(θ_k, ∇_k, g_k)`` at every inner step, before the update
            is applied (e.g. :class:`~l2l_lightning.meta.imitation.Imitation` compares ``g_k``
            with a teacher's update); ``g_k`` keeps its graph to φ.
        horizon: the inner steps ``problem`` is trained for in all (for a net that reads the
            fraction of training done, :attr:`~l2l_lightning.nets.Inputs.horizon`).
    """
    layout = problem.layout
    with torch.enable_grad():  # the inner gradient needs autograd even in an evaluation context
        theta = theta.detach().requires_grad_(True)
        state = tree_map(Tensor.detach, state)
        # Carry the state in the net's cheaper form (the LSTM: per-layer (h, c)) and join it once
        # at the end, instead of a stack (forward) and a select (backward) per inner step.
        carried = net.split_state(state)
        create_graph = meta_grad and second_derivatives
        loss = problem.loss(theta, start_step)
        losses = []
        for k in range(steps):
            (grad,) = torch.autograd.grad(loss.sum(), theta, create_graph=create_graph, retain_graph=meta_grad)
            with torch.set_grad_enabled(meta_grad):
                inputs = step_inputs(net, layout, theta, start_step + k, loss, horizon)
                if inputs is None:
                    update, carried = net.forward_split(grad, carried, layout)
                else:
                    update, carried = net.forward_split(grad, carried, layout, inputs=inputs)
                if on_step is not None:
                    on_step(theta, grad, update)
                theta = theta + update
            if not meta_grad:
                theta = theta.detach().requires_grad_(True)
            loss = problem.loss(theta, start_step + k + 1)
            losses.append(loss if meta_grad else loss.detach())
        if steps:
            state = tree_map(lambda new, old: new.to(old.dtype), net.join_state(carried), state)
    return UnrollResult(torch.stack(losses), theta.detach(), tree_map(Tensor.detach, state))


def step_inputs(
    net: LearnedOptimizerNet, layout: Layout, theta: Tensor, step: int, loss: Tensor, horizon: Optional[int] = None
) -> Optional[StepInputs]:
    """What ``net`` declared it reads at inner step ``step`` (``None`` for a net that reads only the gradient)."""
    reads = net.inputs
    if not reads.any:
        return None
    if reads.horizon and horizon is None:
        raise ConfigError(f"{type(net).__name__} reads the fraction of training done: unroll(..., horizon=) is needed")
    per_segment = functools.partial(torch.full, (len(layout),), dtype=torch.int64, device=theta.device)
    return StepInputs(
        param=theta if reads.param else None,
        step=per_segment(step) if reads.step else None,
        loss=loss.detach().reshape(-1) if reads.loss else None,
        horizon=per_segment(horizon) if reads.horizon else None,
    )


def run_learned(net: LearnedOptimizerNet, problem: Problem, num_steps: int) -> UnrollResult:
    """``net`` optimizing ``problem`` from scratch for ``num_steps`` steps, no meta-gradient kept."""
    # Lightning's test loop runs under inference mode, where no autograd at all is possible.
    with torch.inference_mode(False):
        theta = problem.initial_params().clone()
        net = bind(net, problem)
        state = net.init_state(problem.layout, device=theta.device)
        return unroll(net, problem, theta, state, 0, num_steps, meta_grad=False, horizon=num_steps)


def evaluate_learned(net: LearnedOptimizerNet, problem: Problem, num_steps: int) -> Tensor:
    """Loss curve ``(num_steps, num_optimizees)`` of ``net`` optimizing ``problem`` from scratch."""
    return run_learned(net, problem, num_steps).losses
