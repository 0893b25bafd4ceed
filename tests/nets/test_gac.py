"""LSTM+GAC: what is averaged over what, the same in meta-training and deployment."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l2l_lightning import ConfigError, CoordinatewiseLSTM, GlobalAveragingLSTM, LearnedOptimizer
from l2l_lightning.nets import Layout, Segment
from l2l_lightning.optim.runtime import StepOptions, step_inplace


def _net(**kwargs) -> GlobalAveragingLSTM:
    torch.manual_seed(3)
    return GlobalAveragingLSTM(hidden_size=6, global_cells=2, preprocess="log_sign", output_scale=0.1, **kwargs)


def _layout() -> Layout:
    """Two optimizees of two tensors each (like a 2-network StackedModuleProblem)."""
    return Layout([Segment("w", (3, 4)), Segment("b", (3,))]).repeat(2)


def _run_functional(net, layout, grads):
    state = net.init_state(layout)
    updates = []
    for grad in grads:
        update, state = net(grad, state, layout)
        updates.append(update)
    return updates, state


def _grads(layout, steps=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(layout.numel, generator=generator) * 10.0 ** torch.randint(-4, 2, (1,), generator=generator) for _ in range(steps)]


def test_averaged_cells_couple_coordinates_of_one_optimizee_only():
    net, layout = _net(), _layout()
    grads = _grads(layout)
    per = layout.numel // 2
    base, _ = _run_functional(net, layout, grads)
    # change the first optimizee's gradients at the first step: from the second step on its updates
    # change everywhere (shared averages), the second optimizee's never do
    changed = [grads[0].clone()] + grads[1:]
    changed[0][:per] *= -3
    other, _ = _run_functional(net, layout, changed)
    assert not torch.allclose(base[1][1:per], other[1][1:per])  # coordinate 0 itself also changed
    assert torch.equal(base[2][per:], other[2][per:])


def test_without_averaging_coordinates_are_independent():
    """The same perturbation does not reach other coordinates of a plain LSTM: the coupling is the averaging."""
    torch.manual_seed(3)
    plain = CoordinatewiseLSTM(hidden_size=6, preprocess="log_sign")
    layout = _layout()
    grads = _grads(layout)
    changed = [grads[0].clone()] + grads[1:]
    changed[0][0] *= -3
    base, _ = _run_functional(plain, layout, grads)
    other, _ = _run_functional(plain, layout, changed)
    assert torch.equal(base[2][1:], other[2][1:])


def test_tensor_averaging_keeps_tensors_apart():
    net, layout = _net(average_over="tensor"), _layout()
    grads = _grads(layout)
    changed = [g.clone() for g in grads]
    changed[0][:12] *= -3  # the first tensor ("w" of optimizee 0) only
    base, _ = _run_functional(net, layout, grads)
    other, _ = _run_functional(net, layout, changed)
    assert torch.equal(base[2][12:], other[2][12:])
    assert not torch.allclose(base[2][1:12], other[2][1:12])


@pytest.mark.parametrize("average_over", ["optimizee", "tensor"])
@pytest.mark.parametrize("chunk_size", [5, 7, 64])
def test_the_chunked_deployment_step_computes_the_functional_step(average_over, chunk_size):
    net, layout = _net(average_over=average_over), _layout()
    grads = _grads(layout, steps=4)
    expected, expected_state = _run_functional(net, layout, grads)
    states = [net.init_state(size) for size in layout.sizes]
    for grad, update in zip(grads, expected):
        got = step_inplace(net, grad, states, layout, options=StepOptions(chunk_size=chunk_size, threads=1))
        torch.testing.assert_close(got, update, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat(states, dim=2), expected_state, rtol=1e-5, atol=1e-6)


def test_learned_optimizer_averages_over_all_param_groups_as_one_optimizee():
    net = _net()
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    params = list(model.parameters())
    optimizer = LearnedOptimizer([{"params": params[:2]}, {"params": params[2:], "lr": 1.0}], checkpoint=net)
    layout = Layout(Segment(f"p{i}", tuple(p.shape)) for i, p in enumerate(params))
    state = net.init_state(layout)
    for step in range(3):
        generator = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        before = torch.cat([p.detach().reshape(-1) for p in params])
        expected, state = net(torch.cat([p.grad.reshape(-1) for p in params]), state, layout)
        optimizer.step()
        after = torch.cat([p.detach().reshape(-1) for p in params])
        torch.testing.assert_close(after - before, expected, rtol=1e-5, atol=1e-6)


def test_meta_gradient_reaches_every_weight_through_the_averages():
    net, layout = _net(), _layout()
    update, _ = net(_grads(layout, steps=1)[0], net.init_state(layout), layout)
    update2, _ = net(_grads(layout, steps=1, seed=1)[0], net(_grads(layout, steps=1)[0], net.init_state(layout), layout)[1], layout)
    (update.square().sum() + update2.square().sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"global_cells": 0}, r"global_cells=0 must be an integer from 1 to 6 \(.*at most hidden_size=6\)"),
        ({"global_cells": 7}, "global_cells=7"),
        ({"average_over": "layer"}, "average_over='layer'; allowed: 'optimizee', 'tensor'"),
    ],
)
def test_settings_that_cannot_work_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GlobalAveragingLSTM(hidden_size=6, **{"global_cells": 2, **kwargs})


def test_a_gradient_that_does_not_match_the_layout_is_refused():
    net, layout = _net(), _layout()
    with pytest.raises(ConfigError, match="does not match its layout of 30 coordinates"):
        net(torch.randn(29), net.init_state(29), layout)


def test_spec_round_trip_keeps_the_gac_settings():
    net = _net(average_over="tensor")
    rebuilt = GlobalAveragingLSTM(**net.config)
    rebuilt.load_state_dict(net.state_dict())
    assert rebuilt.config == net.config and rebuilt.config["global_cells"] == 2
