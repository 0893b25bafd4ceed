"""Truncation semantics and the meta-gradient."""

import torch

from l2l_lightning import CoordinatewiseLSTM, QuadraticTask, unroll


def _setup(seed=0):
    torch.manual_seed(seed)
    net = CoordinatewiseLSTM(preprocess="none", output_scale=0.1)
    problem = QuadraticTask(dim=4, num_problems=3).sample(torch.Generator().manual_seed(seed))
    theta = problem.initial_params()
    return net, problem, theta, net.init_state(theta.numel())


def _meta_grad(net, losses):
    return torch.autograd.grad(losses.sum(), list(net.parameters()))


def test_values_carry_over_between_truncations():
    net, problem, theta, state = _setup()
    whole = unroll(net, problem, theta, state, 0, 6)
    first = unroll(net, problem, theta, state, 0, 3)
    second = unroll(net, problem, first.theta, first.state, 3, 3)
    torch.testing.assert_close(torch.cat([first.losses, second.losses]), whole.losses)
    torch.testing.assert_close(second.theta, whole.theta)
    torch.testing.assert_close(second.state, whole.state)


def test_no_gradient_flows_across_a_truncation_boundary():
    net, problem, theta, state = _setup()
    first = unroll(net, problem, theta, state, 0, 3)
    assert first.theta.grad_fn is None and first.state.grad_fn is None and not first.theta.requires_grad
    second = unroll(net, problem, first.theta, first.state, 3, 3)
    # the meta-gradient of the second truncation equals the one from the same values with no history at all
    fresh = unroll(net, problem, first.theta.clone(), first.state.clone(), 3, 3)
    truncated = _meta_grad(net, second.losses)
    for a, b in zip(truncated, _meta_grad(net, fresh.losses)):
        torch.testing.assert_close(a, b)
    # while an untruncated unroll over the same steps gives a different one
    whole = unroll(net, problem, theta, state, 0, 6)
    joined = _meta_grad(net, whole.losses[3:])
    assert any(not torch.allclose(a, b) for a, b in zip(joined, truncated))


def test_losses_are_taken_after_each_update_so_the_last_update_is_trained():
    net, problem, theta, state = _setup()
    result = unroll(net, problem, theta, state, 0, 1)
    assert result.losses.shape == (1, 3)
    assert not torch.allclose(result.losses[0], problem.loss(theta, 0))  # it is f(θ_1), not f(θ_0)
    grads = _meta_grad(net, result.losses)
    assert all(g.abs().sum() > 0 for g in grads)


def test_second_derivatives_change_the_meta_gradient():
    net, problem, theta, state = _setup()
    plain = _meta_grad(net, unroll(net, problem, theta, state, 0, 4).losses)
    full = _meta_grad(net, unroll(net, problem, theta, state, 0, 4, second_derivatives=True).losses)
    assert any(not torch.allclose(a, b) for a, b in zip(plain, full))


def test_second_derivatives_gradient_is_the_true_gradient():
    """With second derivatives the meta-gradient is exact: check it against finite differences."""
    net, problem, theta, state = _setup()
    net = net.double()
    state = state.double()
    theta = theta.double()
    problem.W, problem.y = problem.W.double(), problem.y.double()
    grads = _meta_grad(net, unroll(net, problem, theta, state, 0, 3, second_derivatives=True).losses)
    param, grad = net.output.bias, grads[-1]
    eps = 1e-6
    with torch.no_grad():
        param += eps
        up = unroll(net, problem, theta, state, 0, 3, meta_grad=False).losses.sum()
        param -= 2 * eps
        down = unroll(net, problem, theta, state, 0, 3, meta_grad=False).losses.sum()
        param += eps
    torch.testing.assert_close(grad, ((up - down) / (2 * eps)).reshape(1), rtol=1e-5, atol=1e-8)


def test_evaluation_mode_keeps_no_graph():
    net, problem, theta, state = _setup()
    result = unroll(net, problem, theta, state, 0, 5, meta_grad=False)
    assert result.losses.grad_fn is None and not result.losses.requires_grad
    torch.testing.assert_close(result.losses, unroll(net, problem, theta, state, 0, 5).losses.detach())
