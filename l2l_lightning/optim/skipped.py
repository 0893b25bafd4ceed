"""The warning of a skipped ``LearnedOptimizer.step`` and its messages (the rules: :mod:`~l2l_lightning.optim.learned`)."""

from __future__ import annotations

import warnings


class SkippedStepWarning(UserWarning):
    """``LearnedOptimizer.step`` skipped a step (non-finite gradients or updates); nothing changed."""


def warn_skipped(reason: str, deferred: bool = False) -> None:
    """Warn the caller of ``step()`` that a step was skipped (``reason``: ``"grad"`` or ``"update"``)."""
    if reason == "grad":
        message = (
            "LearnedOptimizer: non-finite gradient (NaN/Inf); the step was skipped for all parameters "
            "and no optimizer state advanced"
        )
    else:
        message = (
            "LearnedOptimizer: the net produced a non-finite update from finite gradients; the step was "
            "skipped for all parameters (none changed), and the net states of the coordinates with a "
            "non-finite update (and the per-tensor states of their tensors) were reset to zeros"
        )
    if deferred:
        message += " (reported by a later call: on this device the check runs without a host sync)"
    # to the caller of step(): past this helper, _step_checked or _report_skipped, step,
    # no_grad's wrapper and torch's step wrapper
    warnings.warn(message, SkippedStepWarning, stacklevel=6)
