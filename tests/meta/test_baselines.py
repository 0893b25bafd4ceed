"""Baselines' learning-rate search: the best rate on the grid, the grid extended past an edge."""

import math

import pytest
import torch

from l2l_lightning import QuadraticTask
from l2l_lightning.meta.baselines import run_baseline, tune_baseline


@pytest.fixture
def problems():
    task = QuadraticTask(dim=5, num_problems=8)
    return [task.sample(torch.Generator().manual_seed(seed)) for seed in range(2)]


def mean_loss(name, lr, problems, steps=20):
    return torch.cat([run_baseline(name, lr, p, steps) for p in problems], dim=1).mean().item()


def test_picks_the_rate_with_the_lowest_mean_loss_and_reports_every_rate(problems):
    grid = [1e-3, 1e-2, 1e-1, 1.0]
    tuned = tune_baseline("adam", problems, 20, grid)
    assert list(tuned.mean_losses) == grid  # the best is inside the grid: nothing added
    for lr in grid:
        assert tuned.mean_losses[lr] == pytest.approx(mean_loss("adam", lr, problems))
    assert tuned.lr == min(grid, key=tuned.mean_losses.get) and grid[0] < tuned.lr < grid[-1]
    assert tuned.curve.shape == (20,)
    torch.testing.assert_close(tuned.curve.mean().item(), tuned.mean_losses[tuned.lr])


def test_a_best_rate_at_the_top_edge_extends_the_grid_upwards(problems):
    calls = []
    tuned = tune_baseline("adam", problems, 20, [1e-4, 1e-3], on_extend=calls.append, extend=2)
    assert calls == pytest.approx([1e-2, 1e-1])  # by the ratio of the two outermost rates
    assert list(tuned.mean_losses) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    assert tuned.lr == pytest.approx(1e-1)  # still improving when the limit was hit: reported as tried


def test_diverging_rates_extend_the_grid_downwards(problems):
    tuned = tune_baseline("sgd", problems, 20, [1.0, 3.0], extend=4)
    rates = sorted(tuned.mean_losses)  # 1 ÷ 3, again and again, until a rate converges
    assert rates[0] < 1.0 and rates[-2:] == [1.0, 3.0] and math.isinf(tuned.mean_losses[1.0])
    assert rates[:-2] == pytest.approx([3.0 ** -k for k in range(len(rates) - 2, 0, -1)])
    assert tuned.lr == min(tuned.mean_losses, key=tuned.mean_losses.get)
    assert math.isfinite(tuned.mean_losses[tuned.lr])  # extending down found rates that converge


def test_unknown_baseline(problems):
    with pytest.raises(ValueError, match="unknown baseline 'adagrad'"):
        tune_baseline("adagrad", problems, 5)
