import pytest
import torch
from torch import nn

from l2l_lightning import ConfigError, CoordinatewiseLSTM
from l2l_lightning.nets.routed import RoutedNets


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))


def _layout(model):
    return [(n, p.numel()) for n, p in model.named_parameters()]


def _routed():
    return RoutedNets(
        nets={"conv": CoordinatewiseLSTM(hidden_size=5), "fc": CoordinatewiseLSTM(hidden_size=3, preprocess="none")},
        routes={"conv": ["type:_ConvNd", "type:BatchNorm2d"], "fc": ["type:Linear", "type:BatchNorm1d"]},
    )


def test_routes_by_module_type_including_base_classes():
    model = ConvNet()
    assignment = _routed().assign([n for n, _ in _layout(model)], model)
    assert assignment == {
        "features.0.weight": "conv", "features.0.bias": "conv", "features.1.weight": "conv", "features.1.bias": "conv",
        "head.1.weight": "fc", "head.1.bias": "fc", "head.2.weight": "fc", "head.2.bias": "fc",
        "head.3.weight": "fc", "head.3.bias": "fc",
    }  # fmt: skip


def test_routes_by_name_pattern_first_match_wins():
    routed = RoutedNets({"a": CoordinatewiseLSTM(), "b": CoordinatewiseLSTM()}, {"a": ["head.3.*"], "b": ["*"]})
    assignment = routed.assign([n for n, _ in _layout(ConvNet())])
    assert assignment["head.3.weight"] == "a" and assignment["features.0.weight"] == "b"


def test_bound_nets_apply_each_net_to_its_own_coordinates():
    model = ConvNet()
    routed = _routed()
    bound = routed.bind(_layout(model), model)
    n = sum(p.numel() for p in model.parameters())
    grad = torch.randn(n)
    state = bound.init_state(n)
    update, new_state = bound(grad, state)
    conv_n = sum(p.numel() for name, p in model.named_parameters() if name.startswith("features"))
    conv_update, _ = routed.nets["conv"](grad[:conv_n], routed.nets["conv"].init_state(conv_n))
    fc_update, _ = routed.nets["fc"](grad[conv_n:], routed.nets["fc"].init_state(n - conv_n))
    torch.testing.assert_close(update, torch.cat([conv_update, fc_update]))
    assert [s.shape[2] for s in new_state] == [conv_n, n - conv_n]


def test_meta_gradient_reaches_both_nets():
    model = ConvNet()
    routed = _routed()
    bound = routed.bind(_layout(model), model)
    n = sum(p.numel() for p in model.parameters())
    update, _ = bound(torch.randn(n), bound.init_state(n))
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
        routed.assign([n for n, _ in _layout(model)], model)


def test_a_pattern_matching_nothing_is_an_error():
    routed = RoutedNets({"a": CoordinatewiseLSTM()}, {"a": ["*", "typo.*"]})
    with pytest.raises(ConfigError, match="typo"):
        routed.assign(["x.weight"])


def test_type_patterns_need_the_module():
    with pytest.raises(ConfigError, match="needs the optimizee module"):
        _routed().assign(["features.0.weight"])


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


def test_unbound_use_is_refused():
    with pytest.raises(TypeError, match="bind"):
        _routed()(torch.randn(3), None)


class PlainNet(nn.Module):
    """A coordinatewise net with only the basic interface (no forward_split / split_state)."""

    def __init__(self):
        super().__init__()
        self.inner = CoordinatewiseLSTM(hidden_size=3, preprocess="none")

    def init_state(self, n, device=None, dtype=None):
        return self.inner.init_state(n, device=device, dtype=dtype)

    def state_shape(self, n):
        return self.inner.state_shape(n)

    def forward(self, grad, state):
        return self.inner(grad, state)


def test_a_net_without_forward_split_is_called_plainly():
    model = ConvNet()
    plain = PlainNet()
    routed = RoutedNets({"conv": CoordinatewiseLSTM(hidden_size=5), "fc": plain}, {"conv": ["features.*"], "fc": ["head.*"]})
    bound = routed.bind(_layout(model), model)
    n = sum(p.numel() for p in model.parameters())
    conv_n = sum(p.numel() for name, p in model.named_parameters() if name.startswith("features"))
    grad = torch.randn(n)
    update, state = bound(grad, bound.init_state(n))
    expected, expected_state = plain(grad[conv_n:], plain.init_state(n - conv_n))
    torch.testing.assert_close(update[conv_n:], expected)
    torch.testing.assert_close(state[1], expected_state)
