"""Truncation semantics and the meta-gradient."""

import pytest
import torch

from l2l_lightning import CoordinatewiseLSTM, QuadraticTask, unroll
from tests.conftest import MinimalNet


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




def test_the_split_state_path_equals_the_generic_path():
    net, problem, theta, state = _setup()
    fast = unroll(net, problem, theta, state, 0, 5)
    plain = unroll(MinimalNet(net), problem, theta, state, 0, 5)
    torch.testing.assert_close(fast.losses, plain.losses, rtol=0, atol=0)
    torch.testing.assert_close(fast.state, plain.state, rtol=0, atol=0)
    for a, b in zip(_meta_grad(net, fast.losses), _meta_grad(net, plain.losses)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_the_unroll_does_not_modify_the_state_it_was_given():
    net, problem, theta, state = _setup()
    state = torch.randn_like(state)
    before = state.clone()
    unroll(net, problem, theta, state, 0, 3)
    unroll(net, problem, theta, state, 0, 3, meta_grad=False)
    assert torch.equal(state, before)


def _mlp_problems(count):
    from torch import nn

    from l2l_lightning import ModuleProblem

    module = nn.Sequential(nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3))
    problems = []
    for seed in range(count):
        generator = torch.Generator().manual_seed(seed)
        params = {name: torch.randn(p.shape, generator=generator) * 0.5 for name, p in module.named_parameters()}
        xs, ys = torch.randn(4, 8, 6, generator=generator), torch.randint(0, 3, (4, 8), generator=generator)
        problems.append(
            ModuleProblem(
                module,
                params,
                lambda step, xs=xs, ys=ys: (xs[step % 4], ys[step % 4]),
                lambda out, b: torch.nn.functional.cross_entropy(out, b[1]),
            )
        )
    return problems


def test_stacked_module_problems_are_the_same_optimizees_unrolled_together():
    from l2l_lightning.tasks import StackedModuleProblem

    torch.manual_seed(0)
    net = CoordinatewiseLSTM(hidden_size=6, preprocess="log_sign")
    problems = _mlp_problems(3)
    stacked = StackedModuleProblem(problems)
    assert stacked.num_optimizees == 3
    theta = stacked.initial_params()
    together = unroll(net, stacked, theta, net.init_state(theta.numel()), 0, 4)
    grads_together = _meta_grad(net, together.losses)
    alone_grads = None
    for k, problem in enumerate(problems):
        t = problem.initial_params()
        alone = unroll(net, problem, t, net.init_state(t.numel()), 0, 4)
        torch.testing.assert_close(together.losses[:, k], alone.losses[:, 0], rtol=1e-5, atol=1e-6)
        grads = _meta_grad(net, alone.losses)
        alone_grads = grads if alone_grads is None else [a + b for a, b in zip(alone_grads, grads)]
    for a, b in zip(grads_together, alone_grads):  # the meta-gradient of the sum is the sum of meta-gradients
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_stacked_module_problem_refuses_different_architectures():
    from torch import nn

    from l2l_lightning import ConfigError, ModuleProblem
    from l2l_lightning.tasks import StackedModuleProblem

    first = _mlp_problems(1)[0]
    other = ModuleProblem(nn.Linear(2, 2), {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, lambda s: None, None)
    with pytest.raises(ConfigError, match="same module and parameter layout"):
        StackedModuleProblem([first, other])
    with pytest.raises(ConfigError, match="at least one"):
        StackedModuleProblem([])


def _layer_routed_nets():
    from l2l_lightning import RoutedNets

    torch.manual_seed(3)
    return RoutedNets(
        {"first": CoordinatewiseLSTM(hidden_size=5, preprocess="log_sign"), "last": CoordinatewiseLSTM(hidden_size=3)},
        {"first": ["0.*"], "last": ["type:Linear"]},  # first match wins: layer 2 falls through to "last"
    )


def test_routed_nets_step_each_layer_with_its_own_net():
    from l2l_lightning.meta.unroll import bind

    routed = _layer_routed_nets()
    problem = _mlp_problems(1)[0]
    theta = problem.initial_params()
    bound = bind(routed, problem)
    state = bound.init_state(theta.numel())
    assert [s.shape for s in state] == [(2, 2, 35, 5), (2, 2, 18, 3)]  # Linear(6, 5): 35 coordinates; Linear(5, 3): 18
    result = unroll(bound, problem, theta, state, 0, 3)
    # the same three steps by hand, each layer's coordinates through its own net
    first, last = routed.nets["first"], routed.nets["last"]
    t, s_first, s_last = theta.clone().requires_grad_(True), state[0], state[1]
    for k in range(3):
        (grad,) = torch.autograd.grad(problem.loss(t, k).sum(), t)
        u_first, s_first = first(grad[:35], s_first)
        u_last, s_last = last(grad[35:], s_last)
        t = (t + torch.cat([u_first, u_last])).detach().requires_grad_(True)
        torch.testing.assert_close(result.losses[k], problem.loss(t, k + 1).detach())
    torch.testing.assert_close(result.state[1], s_last.detach())
    grads = _meta_grad(routed, result.losses)
    assert all(g.abs().sum() > 0 for g in grads)  # the meta-gradient reaches both nets


def test_routed_nets_on_stacked_problems_match_each_problem_alone():
    from l2l_lightning.meta.unroll import bind
    from l2l_lightning.tasks import StackedModuleProblem

    routed = _layer_routed_nets()
    problems = _mlp_problems(3)
    stacked = StackedModuleProblem(problems)
    theta = stacked.initial_params()
    bound = bind(routed, stacked)
    together = unroll(bound, stacked, theta, bound.init_state(theta.numel()), 0, 4)
    for k, problem in enumerate(problems):
        t = problem.initial_params()
        alone_net = bind(routed, problem)
        alone = unroll(alone_net, problem, t, alone_net.init_state(t.numel()), 0, 4)
        torch.testing.assert_close(together.losses[:, k], alone.losses[:, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(together.theta[k * 53 : (k + 1) * 53], alone.theta, rtol=1e-5, atol=1e-6)


def test_routed_nets_need_named_parameters():
    from l2l_lightning import ConfigError
    from l2l_lightning.meta.unroll import bind

    _, problem, _, _ = _setup()
    with pytest.raises(ConfigError, match="needs the module that owns 'theta'.*ModuleProblem"):
        bind(_layer_routed_nets(), problem)
