"""Persistent evolution strategies (Vicol, Metz, Sohl-Dickstein 2021), an unbiased outer-gradient estimator.

Truncated BPTT sees only the losses of the current truncation and treats the optimizee
state it starts from as a constant, so it is biased towards greedy, short-horizon
optimizers (the "sprinters" of the paper's MNIST experiment).  Evolution strategies
estimate the gradient of the *smoothed* objective ``E_ε L(φ + ε)`` from loss values alone;
PES makes that unbiased across truncations: each particle keeps its own optimizees, run
with its own perturbed weights ``φ + ε_t``, and accumulates its perturbations
``ξ = Σ_t ε_t`` since its problem was drawn.  The estimate after a truncation is

    ĝ = 1 / (K σ²) · Σ_k ξ_k · L_k

with ``L_k`` the particle's meta-loss on this truncation.  Particles come in antithetic
pairs (``+ε``, ``−ε``, hence ``ξ⁻ = −ξ⁺``), which removes the ``L``-baseline term of the
variance.  Summed over a problem's truncations, ``ĝ`` is an unbiased estimate of the
gradient of the smoothed total meta-loss, second derivatives included (ES never
differentiates); ``tests/meta/test_estimators.py`` checks it against the exact gradient.

Costs: ``K`` forward-only unrolls per truncation plus one at ``φ`` itself (the carried
optimizees ``MetaLearner`` logs and checkpoints), no backward.  State across truncations
(saved in checkpoints as plain tensors): ``ξ``, every particle's parameters and net state,
and the perturbation generator.  Under DDP each rank draws its own perturbations and DDP
averages the estimates: more particles.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from l2l_lightning.torch_compat import tree_map

from l2l_lightning.errors import ConfigError, check_int_range, check_positive_float
from l2l_lightning.meta.estimators.base import OuterEstimator, Truncation, TruncationResult
from l2l_lightning.meta.unroll import unroll
from l2l_lightning.nets.base import LearnedOptimizerNet


class PES(OuterEstimator):
    """Persistent evolution strategies with antithetic pairs (see the module docstring).

    Args:
        num_particles: perturbed copies of the optimizees, an even number (antithetic pairs).
        sigma: standard deviation of each weight's perturbation per truncation.
    """

    def __init__(self, num_particles: int = 8, sigma: float = 0.01) -> None:
        pairs = " (antithetic pairs: +ε and −ε)"
        check_int_range("PES: num_particles", num_particles, 2, what=f", and even{pairs}")
        if num_particles % 2:
            raise ConfigError(f"PES: num_particles={num_particles!r} must be even{pairs}")
        check_positive_float("PES: sigma", sigma, " (the perturbations' std)")
        self.num_particles = num_particles
        self.sigma = float(sigma)
        self._generator = torch.Generator().manual_seed(0)
        self._xi: Optional[Tensor] = None  #: ``(K, P)`` accumulated perturbations since the problem was drawn
        self._particles: Optional[list[tuple[Tensor, Any]]] = None  #: each particle's (θ, net state)
        self._copy: Optional[tuple[LearnedOptimizerNet, LearnedOptimizerNet]] = None  #: (net, its perturbable copy)

    def setup(self, rank: int, seed: int) -> None:
        self._generator = torch.Generator().manual_seed((seed + 7_919 * rank) % 2**63)
        self.reset()

    def reset(self) -> None:
        self._xi, self._particles = None, None

    def _perturbable(self, net: LearnedOptimizerNet) -> LearnedOptimizerNet:
        """A frozen copy of ``net`` whose weights are overwritten with each particle's ``φ + ε``."""
        if self._copy is None or self._copy[0] is not net:
            self._copy = (net, copy.deepcopy(net).requires_grad_(False))
        return self._copy[1]

    def truncation(self, run: Truncation) -> TruncationResult:
        params = list(run.net.parameters())
        phi = parameters_to_vector(params).detach()
        k, sigma = self.num_particles, self.sigma
        if run.fresh or self._xi is None or self._particles is None:
            self._xi = phi.new_zeros(k, phi.numel())
            start = (run.theta.detach(), tree_map(Tensor.detach, run.state))
            self._particles = [start] * k
        half = torch.randn(k // 2, phi.numel(), generator=self._generator, dtype=phi.dtype).to(phi.device) * sigma
        eps = torch.cat((half, -half))
        self._xi += eps
        perturbed = self._perturbable(run.net)
        losses, particles = [], []
        for index, (theta, state) in enumerate(self._particles):
            with torch.no_grad():
                vector_to_parameters(phi + eps[index], perturbed.parameters())
            result = unroll(
                perturbed.bind(run.problem.layout), run.problem, theta, state, run.start, run.steps, meta_grad=False,
                horizon=run.horizon,
            )
            losses.append(run.objective(result.losses, run.start))
            particles.append((result.theta, result.state))
        self._particles = particles
        estimate = (self._xi * torch.stack(losses).unsqueeze(1)).sum(0) / (k * sigma**2)
        central = unroll(run.bound, run.problem, run.theta, run.state, run.start, run.steps, meta_grad=False, horizon=run.horizon)
        surrogate = sum((g.view_as(p) * p).sum() for g, p in zip(estimate.split([p.numel() for p in params]), params))
        meta_loss = run.objective(central.losses, run.start)
        return TruncationResult(surrogate, meta_loss, central.losses[-1].mean(), central.theta, central.state)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"generator": self._generator.get_state()}
        if self._xi is not None and self._particles is not None:
            state["xi"] = self._xi.detach().cpu().clone()
            state["particles"] = [
                (theta.detach().cpu().clone(), tree_map(lambda t: t.detach().cpu().clone(), net_state))
                for theta, net_state in self._particles
            ]
        return state

    def load_state_dict(self, state: dict[str, Any], device: Any) -> None:
        self._generator.set_state(state["generator"])
        if "xi" not in state:
            self.reset()
            return
        if state["xi"].shape[0] != self.num_particles:
            raise ConfigError(
                f"PES: the checkpoint has {state['xi'].shape[0]} particles, this run num_particles={self.num_particles}; "
                "resume with the same estimator settings"
            )
        self._xi = state["xi"].to(device)
        self._particles = [(t.to(device), tree_map(lambda s: s.to(device), s)) for t, s in state["particles"]]
