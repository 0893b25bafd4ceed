import pytest
import torch
from torch import nn

from l2l_lightning import ConfigError, CoordinatewiseLSTM
from l2l_lightning.nets import Layout, Segment
from tests.conftest import MinimalNet
from l2l_lightning.nets.routed import RoutedNets
from l2l_lightning.optim.runtime import step_inplace


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))


def _layout(model):
    return Layout.of_module(model)


def _names(*names):
    """Segments known by name only (no module: ``type:`` patterns cannot match them)."""
    return Layout(Segment(name, (1,)) for name in names)


def _assign(routed, layout):
    return dict(zip((s.name for s in layout), routed.routes_of(layout)))


def _routed():
    return RoutedNets(
        nets={"conv": CoordinatewiseLSTM(hidden_size=5), "fc": CoordinatewiseLSTM(hidden_size=3, preprocess="none")},
        routes={"conv": ["type:_ConvNd", "type:BatchNorm2d"], "fc": ["type:Linear", "type:BatchNorm1d"]},
    )


def test_routes_by_module_type_including_base_classes():
    model = ConvNet()
    assignment = _assign(_routed(), _layout(model))
    assert assignment == {
        "features.0.weight": "conv", "features.0.bias": "conv", "features.1.weight": "conv", "features.1.bias": "conv",
        "head.1.weight": "fc", "head.1.bias": "fc", "head.2.weight": "fc", "head.2.bias": "fc",
        "head.3.weight": "fc", "head.3.bias": "fc",
    }  # fmt: skip


def test_routes_by_name_pattern_first_match_wins():
    routed = RoutedNets({"a": CoordinatewiseLSTM(), "b": CoordinatewiseLSTM()}, {"a": ["head.3.*"], "b": ["*"]})
    assignment = _assign(routed, _layout(ConvNet()))
    assert assignment["head.3.weight"] == "a" and assignment["features.0.weight"] == "b"


def test_bound_nets_apply_each_net_to_its_own_coordinates():
    model = ConvNet()
    routed = _routed()
    bound = routed.bind(_layout(model))
    n = sum(p.numel() for p in model.parameters())
    grad = torch.randn(n)
    state = bound.init_state(_layout(model))
    update, new_state = bound(grad, state)
    conv_n = sum(p.numel() for name, p in model.named_parameters() if name.startswith("features"))
    conv_update, _ = routed.nets["conv"](grad[:conv_n], routed.nets["conv"].init_state(conv_n))
    fc_update, _ = routed.nets["fc"](grad[conv_n:], routed.nets["fc"].init_state(n - conv_n))
    torch.testing.assert_close(update, torch.cat([conv_update, fc_update]))
    assert [s.shape[2] for s in new_state] == [conv_n, n - conv_n]


def test_meta_gradient_reaches_both_nets():
    model = ConvNet()
    routed = _routed()
    bound = routed.bind(_layout(model))
    n = sum(p.numel() for p in model.parameters())
    update, _ = bound(torch.randn(n), bound.init_state(_layout(model)))
    update.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in routed.parameters())


def test_spec_round_trip():
    routed = _routed()
    rebuilt = RoutedNets(**routed.config)
    rebuilt.load_state_dict(routed.state_dict())
    assert rebuilt.config == routed.config


def test_a_parameter_left_without_a_net_is_an_error():
    routed = RoutedNets({"conv": CoordinatewiseLSTM()}, {"conv": ["type:_ConvNd"]})
    model = ConvNet()
    with pytest.raises(ConfigError, match="'features.1.weight' matches no route.*BatchNorm2d"):
        routed.routes_of(_layout(model))


def test_a_pattern_matching_nothing_is_an_error():
    routed = RoutedNets({"a": CoordinatewiseLSTM()}, {"a": ["*", "typo.*"]})
    with pytest.raises(ConfigError, match="typo"):
        routed.routes_of(_names("x.weight"))


def test_type_patterns_need_the_module():
    with pytest.raises(ConfigError, match="needs the module that owns 'features.0.weight'"):
        _routed().routes_of(_names("features.0.weight"))


@pytest.mark.parametrize(
    "nets, routes, match",
    [
        ({}, {}, "at least one net"),
        ({"a": CoordinatewiseLSTM()}, {"b": ["*"]}, "same routes"),
        ({"a": CoordinatewiseLSTM()}, {"a": "*"}, "non-empty list"),
    ],
)
def test_bad_construction(nets, routes, match):
    with pytest.raises(ConfigError, match=match):
        RoutedNets(nets, routes)


def test_use_without_a_layout_is_refused():
    with pytest.raises(ConfigError, match="needs the parameter layout"):
        _routed()(torch.randn(3), None)
    with pytest.raises(TypeError, match="bind"):
        _routed().state_shape(3)


def test_a_net_with_only_the_required_interface_is_routed_like_any_other():
    model = ConvNet()
    plain = MinimalNet(CoordinatewiseLSTM(hidden_size=3, preprocess="none"))
    routed = RoutedNets({"conv": CoordinatewiseLSTM(hidden_size=5), "fc": plain}, {"conv": ["features.*"], "fc": ["head.*"]})
    bound = routed.bind(_layout(model))
    n = sum(p.numel() for p in model.parameters())
    conv_n = sum(p.numel() for name, p in model.named_parameters() if name.startswith("features"))
    grad = torch.randn(n)
    update, state = bound(grad, bound.init_state(_layout(model)))
    expected, expected_state = plain(grad[conv_n:], plain.init_state(n - conv_n))
    torch.testing.assert_close(update[conv_n:], expected)
    torch.testing.assert_close(state[1], expected_state)


def test_a_module_that_is_not_a_learned_optimizer_net_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="Linear, not an l2l_lightning.nets.LearnedOptimizerNet.*subclass"):
        RoutedNets({"a": nn.Linear(1, 1)}, {"a": ["*"]})


def test_bound_nets_step_in_place_like_their_functional_step():
    """Deployment (per-parameter states, in place) and meta-training (functional) route alike."""
    model = ConvNet()
    routed = _routed()
    layout = _layout(model)
    bound = routed.bind(layout)
    grad = torch.randn(layout.numel)
    update, new_state = bound(grad, bound.init_state(layout))
    states = [torch.zeros(shape) for shape in bound.segment_state_shapes(layout)]
    in_place = step_inplace(bound, grad, states, layout)
    torch.testing.assert_close(in_place, update)
    for route, (net, members, sub) in zip(new_state, bound.parts):
        torch.testing.assert_close(torch.cat([states[m] for m in members], dim=2), route)
