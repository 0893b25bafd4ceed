"""Truncated back-propagation through time: the paper's outer-gradient estimator."""

from __future__ import annotations

from l2l_lightning.meta.estimators.base import OuterEstimator, Truncation, TruncationResult
from l2l_lightning.meta.unroll import unroll


class TruncatedBPTT(OuterEstimator):
    """Differentiate the truncation's weighted losses through the unroll (paper, Section 3).

    Biased towards short horizons (nothing flows across a truncation boundary), cheap and
    low-variance.  The returned scalar is the meta-loss itself, plus the imitation term if
    ``MetaLearner`` has one (:mod:`l2l_lightning.meta.imitation`).
    """

    differentiates_through_unroll = True

    def truncation(self, run: Truncation) -> TruncationResult:
        imitation = run.imitation
        losses, theta, state = unroll(
            run.bound, run.problem, run.theta, run.state, run.start, run.steps,
            second_derivatives=run.second_derivatives, on_step=None if imitation is None else imitation.observe,
            horizon=run.horizon,
        )  # fmt: skip
        meta_loss = run.objective(losses, run.start)
        if imitation is None:
            return TruncationResult(meta_loss, meta_loss, losses[-1].mean(), theta, state)
        term = imitation.pop_loss()
        return TruncationResult(meta_loss + term, meta_loss, losses[-1].mean(), theta, state, {"imitation": term.detach()})
