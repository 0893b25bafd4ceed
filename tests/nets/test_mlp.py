"""FeatureMLP and FeatureLSTM: their two forms agree, they start like small-lr Adam, their options do what they say,
they meta-train."""

from __future__ import annotations

import pytest
import torch

from l2l_lightning import ConfigError, QuadraticTask
from l2l_lightning.meta.unroll import bind, unroll
from l2l_lightning.nets import FeatureLSTM, FeatureMLP, Layout, LearnedOptimizerNet, RoutedNets, Segment, StepInputs
from l2l_lightning.nets.mlp_kernel import TIMESCALES, matrix_view, time_features
from l2l_lightning.optim.runtime import StepOptions, step_inplace
from tests.conftest import fit_tiny

LAYOUT = Layout([Segment("w", (5, 7)), Segment("b", (5,)), Segment("s", ()), Segment("conv", (3, 2, 2, 2))])


NETS = [FeatureMLP, FeatureLSTM]


def _random_net(net_class: type = FeatureMLP, **settings) -> FeatureMLP:
    torch.manual_seed(0)
    net = net_class(hidden_size=8, **settings) if net_class is FeatureMLP else net_class(hidden_size=8, num_layers=2, **settings)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)  # every path of the net in use, not just the skip
    return net


def _inputs(param: torch.Tensor, step: int, layout: Layout = LAYOUT) -> StepInputs:
    return StepInputs(param=param, step=torch.full((len(layout),), step, dtype=torch.long))


@pytest.mark.parametrize("net_class", NETS)
@pytest.mark.parametrize("chunk_size", [7, 4096])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_deployment_kernel_matches_the_differentiable_forward(net_class, chunk_size, state_dtype):
    """The chunked two-pass step (pieces of small tensors packed, a big one cut) equals forward."""
    net, n = _random_net(net_class), LAYOUT.numel
    coordinates, tensors = net.init_state(LAYOUT, dtype=state_dtype)
    states = [s.clone() for s in coordinates.split(LAYOUT.sizes, dim=1)]
    tensor_states = [t.clone() for t in tensors]
    param = torch.randn(n)
    for step in range(4):
        grad = torch.randn(n) * (step + 1)
        update, (coordinates, tensors) = net(grad, (coordinates, tensors), LAYOUT, inputs=_inputs(param, step))
        deployed = step_inplace(
            net, grad, states, LAYOUT, tensor_states=tensor_states, inputs=_inputs(param, step),
            options=StepOptions(chunk_size=chunk_size),
        )  # fmt: skip
        torch.testing.assert_close(deployed, update, rtol=1e-5, atol=1e-9)
        for mine, theirs in zip(states, coordinates.split(LAYOUT.sizes, dim=1)):
            torch.testing.assert_close(mine, theirs, rtol=1e-2 if state_dtype == torch.bfloat16 else 1e-5, atol=1e-6)
        for mine, theirs in zip(tensor_states, tensors):
            torch.testing.assert_close(mine, theirs, rtol=1e-2 if state_dtype == torch.bfloat16 else 1e-5, atol=1e-12)
        param = param + update


@pytest.mark.parametrize("net_class", NETS)
def test_untrained_net_steps_like_small_lr_adam(net_class):
    """The first step of an untrained net is −step_mult · sign(g) (Adam's first step, normalised per tensor)."""
    net = net_class(step_mult=0.01)
    grad = torch.randn(LAYOUT.numel)
    update, _ = net(grad, net.init_state(LAYOUT), LAYOUT, inputs=_inputs(torch.randn(LAYOUT.numel), 0))
    torch.testing.assert_close(update, -0.01 * grad.sign(), rtol=1e-4, atol=1e-7)


def test_tanh_output_bounds_every_coordinate_and_mup_divides_by_fan_in():
    grad, param = torch.randn(LAYOUT.numel) * 1e3, torch.randn(LAYOUT.numel)
    state = FeatureMLP().init_state(LAYOUT)
    bounded = FeatureMLP(output="tanh")
    with torch.no_grad():
        bounded.skip.mul_(1e6)
    update, _ = bounded(grad, state, LAYOUT, inputs=_inputs(param, 0))
    assert update.abs().max() <= bounded.step_mult * (1 + 1e-6)
    plain, mup = _random_net(), _random_net(scaling="mup")
    u_plain, _ = plain(grad, state, LAYOUT, inputs=_inputs(param, 3))
    u_mup, _ = mup(grad, state, LAYOUT, inputs=_inputs(param, 3))
    offsets = [0, 35, 40, 41, 65]
    for (start, end), segment in zip(zip(offsets, offsets[1:]), LAYOUT):
        fan_in = matrix_view(segment.shape)[1] if len(segment.shape) >= 2 else 1
        torch.testing.assert_close(u_mup[start:end], u_plain[start:end] / fan_in)


def test_state_is_16_bytes_per_coordinate_and_vectors_are_not_factored():
    net = FeatureMLP()
    assert net.state_shape(1000) == (4, 1000)  # 3 momenta and a second moment: 16 B in float32 (LSTM: 320 B)
    assert FeatureLSTM().state_shape(10) == (4 + 2 * 16, 10)  # + (h, c) of one layer of 16: 144 B
    assert FeatureLSTM(num_layers=2).state_shape(10) == (4 + 2 * 2 * 16, 10)
    assert net.tensor_state_shape(Segment("w", (64, 3, 3, 3))) == (3, 64 + 27)  # rows + columns per decay
    assert net.tensor_state_shape(Segment("b", (10,))) == (3, 10 + 1)  # per coordinate: the non-factored fallback
    assert net.tensor_state_shape(Segment("s", ())) == (3, 2)


def test_settings_are_checked_and_round_trip_through_the_spec():
    net = FeatureMLP(hidden_size=4, momentum_decays=[0.1, 0.5, 0.9], scaling="mup", output="tanh")
    rebuilt = LearnedOptimizerNet.from_spec(net.spec, "test")
    assert rebuilt.config == net.config and isinstance(rebuilt, FeatureMLP)
    for bad in ({"scaling": "mu"}, {"output": "clip"}, {"momentum_decays": [1.0]}, {"hidden_size": 0},
                {"adafactor_decays": [0.9, 0.99], "momentum_decays": [0.9]}, {"step_mult": -1.0}):  # fmt: skip
        with pytest.raises(ConfigError):
            FeatureMLP(**bad)


def test_reads_param_and_step_and_refuses_to_run_without_them():
    net = FeatureMLP()
    assert net.inputs.param and net.inputs.step and not net.inputs.loss and not net.coordinatewise
    with pytest.raises(ConfigError, match="pass inputs"):
        net(torch.randn(LAYOUT.numel), net.init_state(LAYOUT), LAYOUT)


def test_routing_a_net_with_inputs_is_refused():
    with pytest.raises(ConfigError, match="not supported yet"):
        RoutedNets(nets={"all": FeatureMLP()}, routes={"all": ["*"]})


@pytest.mark.parametrize("net_class", NETS)
def test_meta_gradient_reaches_the_output_through_an_unroll(net_class):
    task = QuadraticTask(dim=4, num_problems=3)
    problem = task.sample(torch.Generator().manual_seed(0))
    net = net_class(hidden_size=8)
    bound = bind(net, problem)
    theta = problem.initial_params()
    losses, _, state = unroll(bound, problem, theta, bound.init_state(problem.layout), 0, 3)
    losses.sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    output = net.layers[-1] if isinstance(net, FeatureMLP) else net.output_layer
    assert output.weight.grad.abs().sum() > 0  # the zero output layer learns first, then the rest
    assert isinstance(state, tuple) and len(state[1]) == len(problem.layout)


@pytest.mark.parametrize("net_class", NETS)
def test_meta_training_resumes_bit_exactly_with_per_tensor_state(tmp_path, net_class):
    """Stopped halfway through a problem (its per-tensor state in the checkpoint's carry) and resumed: as straight."""

    def net() -> FeatureMLP:
        torch.manual_seed(0)
        return net_class(hidden_size=4)

    straight = fit_tiny(tmp_path, 4, net=net())
    fit_tiny(tmp_path, 3, save=tmp_path / "part.ckpt", net=net())
    resumed = fit_tiny(tmp_path, 4, ckpt_path=tmp_path / "part.ckpt", net=net())
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(straight.stream.carry.theta, resumed.stream.carry.theta)


def _scheduled_inputs(param: torch.Tensor, step: int, horizon: int, layout: Layout = LAYOUT) -> StepInputs:
    per_segment = torch.full((len(layout),), step, dtype=torch.long)
    return StepInputs(param=param, step=per_segment, horizon=torch.full_like(per_segment, horizon))


def test_progress_features_are_powers_of_the_clamped_fraction_done():
    step, horizon = torch.tensor([0, 5, 10, 40]), torch.tensor([10, 10, 10, 10])
    progress = time_features(step, torch.float64, horizon)[:, len(TIMESCALES) :]
    expected = torch.tensor([[0.0] * 3, [0.5, 0.25, 0.0625], [1.0] * 3, [1.0] * 3], dtype=torch.float64)
    torch.testing.assert_close(progress, expected)  # past the horizon it stays at the end
    assert time_features(step, torch.float64).shape == (4, len(TIMESCALES))  # no horizon: the step embeddings only


@pytest.mark.parametrize("net_class", NETS)
def test_a_scheduled_net_reads_the_horizon_and_deployment_matches_forward(net_class):
    net, n = _random_net(net_class, schedule=True), LAYOUT.numel
    assert net.inputs.horizon and net.config["schedule"] is True
    assert "schedule" not in _random_net(net_class).config  # off: the spec of files from before it, unchanged
    coordinates, tensors = net.init_state(LAYOUT)
    states, tensor_states = [s.clone() for s in coordinates.split(LAYOUT.sizes, dim=1)], [t.clone() for t in tensors]
    param, grad = torch.randn(n), torch.randn(n)
    early, _ = net(grad, (coordinates, tensors), LAYOUT, inputs=_scheduled_inputs(param, 3, 1000))
    late, _ = net(grad, (coordinates, tensors), LAYOUT, inputs=_scheduled_inputs(param, 3, 4))
    assert not torch.allclose(early, late)  # the same step of a shorter run is further through it
    deployed = step_inplace(
        net, grad, states, LAYOUT, tensor_states=tensor_states, inputs=_scheduled_inputs(param, 3, 4),
        options=StepOptions(chunk_size=7),
    )  # fmt: skip
    torch.testing.assert_close(deployed, late, rtol=1e-5, atol=1e-9)
    with pytest.raises(ConfigError, match="horizon"):
        net(grad, (coordinates, tensors), LAYOUT, inputs=_inputs(param, 3))


@pytest.mark.parametrize("net_class", NETS)
def test_without_normalisation_the_features_are_raw_and_deployment_matches_forward(net_class):
    net, raw = _random_net(net_class), _random_net(net_class, normalise=False)
    assert raw.config["normalise"] is False and "normalise" not in net.config
    param, grad = torch.randn(LAYOUT.numel), torch.randn(LAYOUT.numel) * 1e3
    normalised, _ = net(grad, net.init_state(LAYOUT), LAYOUT, inputs=_inputs(param, 0))
    update, _ = raw(grad, raw.init_state(LAYOUT), LAYOUT, inputs=_inputs(param, 0))
    assert not torch.allclose(update, normalised)  # the same weights read other inputs
    coordinates, tensors = raw.init_state(LAYOUT)
    deployed = step_inplace(
        raw, grad, [s.clone() for s in coordinates.split(LAYOUT.sizes, dim=1)], LAYOUT,
        tensor_states=[t.clone() for t in tensors], inputs=_inputs(param, 0), options=StepOptions(chunk_size=7),
    )  # fmt: skip
    torch.testing.assert_close(deployed, update, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("net_class", NETS)
def test_warm_start_adds_a_schedule_without_changing_a_step(net_class):
    trained = _random_net(net_class, output="tanh")
    scheduled = net_class(**{**trained.config, "schedule": True})
    assert scheduled.warm_start(trained)
    state, new_state = trained.init_state(LAYOUT), scheduled.init_state(LAYOUT)
    param = torch.randn(LAYOUT.numel)
    for step in range(3):  # with its progress weights at zero, the scheduled net steps as the trained one
        grad = torch.randn(LAYOUT.numel)
        update, state = trained(grad, state, LAYOUT, inputs=_inputs(param, step))
        new_update, new_state = scheduled(grad, new_state, LAYOUT, inputs=_scheduled_inputs(param, step, 5))
        torch.testing.assert_close(new_update, update, rtol=1e-5, atol=1e-9)  # a wider matmul: rounding only
        param = param + update
    assert not scheduled.warm_start(_random_net(net_class, output="linear"))  # other settings: no warm start
    assert not net_class(**trained.config).warm_start(trained)  # nothing to add
