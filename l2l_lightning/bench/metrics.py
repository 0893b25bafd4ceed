"""The field's figures of merit for one task and across the suite.

* **Final loss**: the mean training loss of the last ``k`` steps (``k`` = :func:`final_window`
  of the horizon), averaged over seeds; a diverged run's is ``inf``.
* **Speedup over tuned Adam** (google/learned_optimization's normalizer): every tuned Adam
  curve (constant and cosine, every rate and seed) is smoothed with the same trailing ``k``-step
  mean; the reference is their minimum at each step, made monotone by a running minimum.  The
  speedup is two-sided, so that it can exceed 1 (VeLO's and Celo's reading: "how many times
  fewer steps than tuned Adam"): when the run ends *above* tuned Adam's final loss, it is the
  first step at which the reference reaches the run's final loss, divided by the run's steps
  (< 1); when the run ends at or below it, it is the run's steps divided by the first step at
  which the run's own smoothed running minimum reaches tuned Adam's final loss (≥ 1).  Both
  halves meet at 1; ``adam_reaches`` says which half applies.
* **Aggregate**: fraction of tasks won, interquartile mean (IQM, as in rliable) of the per-task
  speedups with a percentile-bootstrap 95% interval over tasks, and the count of diverged tasks.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def final_window(steps: int, fraction: float = 0.05) -> int:
    """``k``: how many last steps the final loss averages (5% of the horizon, at least 1)."""
    return max(1, round(steps * fraction))


def trailing_mean(curve: Sequence[float], k: int) -> np.ndarray:
    """Mean of the last ``k`` values at each step (of all values so far in the first ``k`` steps)."""
    values = np.asarray(curve, dtype=float)
    sums = np.cumsum(values)
    out = sums.copy()
    with np.errstate(invalid="ignore"):  # after a divergence (NaN/inf) the mean is NaN, as it should be
        out[k:] = sums[k:] - sums[:-k]
    return out / np.minimum(np.arange(1, len(values) + 1), k)


def final_loss(curve: Sequence[float], k: int, diverged: bool) -> float:
    if diverged:
        return math.inf
    tail = np.asarray(curve[-k:], dtype=float)
    return float(tail.mean()) if np.isfinite(tail).all() else math.inf


def adam_reference(curves: Sequence[Sequence[float]], k: int) -> np.ndarray:
    """Best tuned Adam at every step: per-curve trailing ``k``-mean, minimum across curves, running minimum."""
    smoothed = np.stack([trailing_mean(c, k) for c in curves])
    smoothed[~np.isfinite(smoothed)] = np.inf
    return np.minimum.accumulate(smoothed.min(axis=0))


def speedup(curve: Sequence[float], k: int, final: float, reference: np.ndarray) -> tuple[float, bool]:
    """``(speedup, adam_reaches)`` of a run (``curve``, final loss ``final``) against the Adam reference.

    ``adam_reaches`` is False when the run ends below tuned Adam's final loss; the speedup is then
    how many times fewer steps the run needed to get to Adam's final loss.
    """
    steps = len(reference)
    if not math.isfinite(final):
        return 0.0, True
    target = reference[-1]
    if final >= target:
        return (int(np.nonzero(reference <= final)[0][0]) + 1) / steps, True
    own = trailing_mean(curve, k)
    own[~np.isfinite(own)] = np.inf
    first = int(np.nonzero(np.minimum.accumulate(own) <= target)[0][0])
    return steps / (first + 1), False


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (scipy's 25%-trimmed mean)."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(values, dtype=float), 0.25))


def iqm_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the IQM over tasks (``scipy.stats.bootstrap``; rliable's method, without its dependencies)."""
    from scipy.stats import bootstrap, trim_mean

    data = np.asarray(values, dtype=float)
    if len(data) < 2 or np.ptp(data) == 0:
        return (float(data.min()), float(data.max())) if len(data) else (math.nan, math.nan)
    result = bootstrap(
        (data,), lambda x, axis: trim_mean(x, 0.25, axis=axis), confidence_level=confidence,
        n_resamples=resamples, method="percentile", random_state=np.random.default_rng(seed),
    )  # fmt: skip
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)
