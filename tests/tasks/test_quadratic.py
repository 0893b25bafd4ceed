import pytest
import torch

from l2l_lightning import ConfigError, QuadraticTask
from l2l_lightning.tasks.quadratic import QuadraticProblem


def test_each_problem_gets_its_own_undivided_gradient():
    problem = QuadraticTask(dim=5, num_problems=6).sample(torch.Generator().manual_seed(1))
    theta = problem.initial_params().requires_grad_(True)
    (batched,) = torch.autograd.grad(problem.loss(theta, 0).sum(), theta)
    for i in range(6):
        alone = QuadraticProblem(problem.W[i : i + 1], problem.y[i : i + 1], problem.initial_params().view(6, 5)[i])
        t = alone.initial_params().requires_grad_(True)
        (grad,) = torch.autograd.grad(alone.loss(t, 0).sum(), t)
        torch.testing.assert_close(batched.view(6, 5)[i], grad)
        # and it is the analytic gradient 2 Wᵀ(Wθ − y)
        W, y, th = problem.W[i], problem.y[i], t.detach()
        torch.testing.assert_close(grad, 2 * W.T @ (W @ th - y))


def test_loss_is_the_squared_residual_per_problem():
    problem = QuadraticTask(dim=3, num_problems=2).sample(torch.Generator().manual_seed(0))
    theta = torch.randn(6)
    expected = torch.stack([((problem.W[i] @ theta.view(2, 3)[i] - problem.y[i]) ** 2).sum() for i in range(2)])
    torch.testing.assert_close(problem.loss(theta, 0), expected)


def test_draws_are_reproducible_from_the_generator_alone():
    task = QuadraticTask()
    a = task.sample(torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG must not matter
    b = task.sample(torch.Generator().manual_seed(3))
    c = task.sample(torch.Generator().manual_seed(4))
    assert torch.equal(a.W, b.W) and torch.equal(a.initial_params(), b.initial_params())
    assert not torch.equal(a.W, c.W)


def test_distributions_and_init_scale():
    g = torch.Generator().manual_seed(0)
    normal = QuadraticTask(num_problems=512).sample(g)
    uniform = QuadraticTask(num_problems=512, distribution="uniform").sample(g)
    assert normal.W.min() < 0 and abs(normal.W.std().item() - 1) < 0.05
    assert uniform.W.min() >= 0 and uniform.W.max() < 1
    assert abs(normal.initial_params().std().item() - 0.01) < 0.001
    assert normal.num_optimizees == 512 and normal.initial_params().shape == (5120,)


def test_initial_params_are_a_copy():
    problem = QuadraticTask().sample(torch.Generator().manual_seed(0))
    problem.initial_params().add_(1.0)
    assert problem.initial_params().abs().max() < 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=0), "dim=0"),
        (dict(num_problems=-2), "num_problems=-2"),
        (dict(distribution="gauss"), "'normal', 'uniform'"),
        (dict(init_std=-1.0), "init_std"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuadraticTask(**kwargs)
