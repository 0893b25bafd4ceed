"""The field's figures: final loss, the best-tuned-Adam reference, speedup, IQM and its bootstrap interval."""

import math

import numpy as np
import pytest

from l2l_lightning.bench import metrics


def test_final_window_is_five_percent_of_the_horizon_and_at_least_one():
    assert metrics.final_window(1000) == 50
    assert metrics.final_window(10_000) == 500
    assert metrics.final_window(4) == 1


def test_trailing_mean_averages_what_there_is_before_k_steps():
    assert metrics.trailing_mean([4, 2, 6, 0], 2).tolist() == [4, 3, 4, 3]


def test_final_loss_is_the_mean_of_the_last_k_and_inf_when_diverged():
    assert metrics.final_loss([9, 1, 2, 3], 3, diverged=False) == 2
    assert metrics.final_loss([9, 1, 2, 3], 3, diverged=True) == math.inf
    assert metrics.final_loss([9, 1, math.nan, 3], 3, diverged=False) == math.inf


def test_the_adam_reference_takes_the_best_curve_at_each_step_then_a_running_minimum():
    a, b = [5, 1, 4, 4], [3, 3, 2, 6]
    assert metrics.adam_reference([a, b], 1).tolist() == [3, 1, 1, 1]
    assert metrics.adam_reference([a, [math.inf] * 4], 1).tolist() == [5, 1, 1, 1]  # a diverged curve never helps


def test_speedup_is_two_sided_and_meets_at_one():
    reference = np.array([8.0, 4.0, 2.0, 1.0])
    slow = [9.0, 8.0, 6.0, 4.0]
    assert metrics.speedup(slow, 1, 4.0, reference) == (0.5, True)  # Adam gets there at step 2 of 4: 2× slower
    assert metrics.speedup([8.0, 4.0, 2.0, 1.0], 1, 1.0, reference) == (1.0, True)  # as fast as Adam
    fast = [1.0, 0.9, 0.7, 0.5]
    assert metrics.speedup(fast, 1, 0.5, reference) == (4.0, False)  # Adam's final loss at step 1 of 4: 4× faster
    assert metrics.speedup([3.0, 1.0, 0.8, 0.5], 1, 0.5, reference) == (2.0, False)
    assert metrics.speedup(slow, 1, math.inf, reference) == (0.0, True)  # diverged


def test_the_fast_side_uses_the_same_smoothing_as_the_reference():
    reference = np.array([4.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    spiky = [3.0, 0.5, 3.0, 0.5, 0.5, 0.5]  # one good step is not "reaching" it: the trailing 2-mean first gets to 1 at step 5
    assert metrics.speedup(spiky, 2, 0.5, reference) == (6 / 5, False)


def test_iqm_is_the_mean_of_the_middle_half():
    assert metrics.iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)


def test_the_bootstrap_interval_holds_the_iqm_and_is_reproducible():
    values = [0.1, 0.3, 0.5, 0.6, 0.8, 1.0, 1.0, 2.0, 0.2, 0.4]
    low, high = metrics.iqm_interval(values)
    assert low < metrics.iqm(values) < high
    assert metrics.iqm_interval(values) == (low, high)
    assert metrics.iqm_interval([0.5]) == (0.5, 0.5)
    assert metrics.iqm_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
