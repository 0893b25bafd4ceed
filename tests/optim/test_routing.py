"""LearnedOptimizer with RoutedNets: each parameter is stepped by the net of its route."""

import copy

import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn

from l2l_lightning import CheckpointError, ConfigError, CoordinatewiseLSTM, LearnedOptimizer, RoutedNets
from l2l_lightning import LearnedOptimizerCallback
from tests.optim.conftest import quiet_trainer

TYPE_ROUTES = {"conv": ["type:_ConvNd", "type:BatchNorm2d"], "fc": ["type:Linear", "type:BatchNorm1d"]}


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))

    def forward(self, x):
        return self.head(self.features(x))


def routed(routes=None) -> RoutedNets:
    torch.manual_seed(7)
    nets = {
        "conv": CoordinatewiseLSTM(hidden_size=6, preprocess="log_sign", output_scale=0.01),
        "fc": CoordinatewiseLSTM(hidden_size=4, preprocess="log_sign", output_scale=0.03),
    }
    return RoutedNets(nets, routes or TYPE_ROUTES)


def backward(model, seed=0):
    torch.manual_seed(seed)
    model.zero_grad()
    model(torch.randn(6, 3, 5, 5)).square().sum().backward()


def step_with(model, optimizer, steps=2):
    for step in range(steps):
        backward(model, step)
        optimizer.step()


def test_each_parameter_is_stepped_by_its_routes_net_alone():
    nets = routed()
    model = ConvNet()
    conv = [p for name, p in model.named_parameters() if name.startswith("features")]
    fc = [p for name, p in model.named_parameters() if name.startswith("head")]
    reference = copy.deepcopy(model)
    ref_conv = [p for name, p in reference.named_parameters() if name.startswith("features")]
    ref_fc = [p for name, p in reference.named_parameters() if name.startswith("head")]

    optimizer = LearnedOptimizer(model.parameters(), checkpoint=nets, module=model)
    by_route = [
        LearnedOptimizer(ref_conv, checkpoint=nets.nets["conv"]),
        LearnedOptimizer(ref_fc, checkpoint=nets.nets["fc"]),
    ]
    for step in range(3):
        backward(model, step)
        optimizer.step()
        backward(reference, step)
        for single in by_route:
            single.step()
    for p, q in zip(conv + fc, ref_conv + ref_fc):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert optimizer.param_groups[0]["param_routes"] == ["conv"] * 4 + ["fc"] * 6
    assert [optimizer.state[p]["net_state"].shape[-1] for p in (conv[0], fc[0])] == [6, 4]  # each net's hidden size


def test_name_patterns_route_named_parameters_without_the_module():
    model = ConvNet()
    optimizer = LearnedOptimizer(
        model.named_parameters(), checkpoint=routed({"conv": ["features.*"], "fc": ["head.*"]})
    )
    assert optimizer.param_groups[0]["param_routes"] == ["conv"] * 4 + ["fc"] * 6
    before = [p.detach().clone() for p in model.parameters()]
    step_with(model, optimizer)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_group_may_name_its_route():
    model = ConvNet()
    groups = [
        {"params": model.features.parameters(), "route": "conv"},
        {"params": model.head.parameters(), "route": "fc", "lr": 0.5},
    ]
    optimizer = LearnedOptimizer(groups, checkpoint=routed())  # no names needed
    assert [g["param_routes"] for g in optimizer.param_groups] == [["conv"] * 4, ["fc"] * 6]
    step_with(model, optimizer, steps=1)
    assert all(optimizer.state[p]["step"] == 1 for p in model.parameters())
    mlp = nn.Sequential(nn.Linear(3, 2))  # no conv layer: "type:_ConvNd" matches nothing, but no pattern is used
    LearnedOptimizer([{"params": mlp.parameters(), "route": "fc"}], checkpoint=routed(), module=mlp)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda m, n: LearnedOptimizer(m.parameters(), checkpoint=n), "neither.*module=model.*named_parameters"),
        (lambda m, n: LearnedOptimizer(m.named_parameters(), checkpoint=n), "'type:_ConvNd' needs the module that owns"),
        (lambda m, n: LearnedOptimizer([{"params": m.parameters(), "route": "rnn"}], checkpoint=n), "'rnn'.*is not one of the routes"),
        (lambda m, n: LearnedOptimizer(ConvNet().parameters(), checkpoint=n, module=m), "not parameters of `module`"),
        (
            lambda m, n: LearnedOptimizer(m.parameters(), checkpoint=RoutedNets(n.nets, {"conv": ["type:_ConvNd"], "fc": ["type:Linear"]}), module=m),
            "'features.1.weight' matches no route.*BatchNorm2d",
        ),
        (
            lambda m, n: LearnedOptimizer(m.parameters(), checkpoint=RoutedNets(n.nets, {**TYPE_ROUTES, "fc": ["type:Linear", "type:BatchNorm1d", "typo.*"]}), module=m),
            "'typo.\\*'.*matched no parameter",
        ),
        (lambda m, n: LearnedOptimizer([{"params": m.parameters(), "route": "conv"}], checkpoint=n.nets["conv"]), "single CoordinatewiseLSTM"),
    ],
)  # fmt: skip
def test_routing_mistakes_are_clear_errors(make, match):
    with pytest.raises(ConfigError, match=match):
        make(ConvNet(), routed())


def test_a_group_that_cannot_be_routed_is_not_added():
    model = ConvNet()
    optimizer = LearnedOptimizer(model.features.parameters(), checkpoint=routed(), module=model)
    with pytest.raises(ConfigError, match="not parameters of `module`"):
        optimizer.add_param_group({"params": list(ConvNet().head.parameters())})
    assert len(optimizer.param_groups) == 1
    optimizer.add_param_group({"params": list(model.head.parameters())})  # BaseFinetuning's way: routed by module
    assert optimizer.param_groups[1]["param_routes"] == ["fc"] * 6


def test_state_dict_round_trip_and_refusal_of_a_different_routing():
    nets = routed()
    model = ConvNet()
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=nets, module=model)
    step_with(model, optimizer)
    saved = copy.deepcopy(optimizer.state_dict())
    assert saved["l2l_net"]["class_path"] == "l2l_lightning.nets.routed.RoutedNets"

    resumed = LearnedOptimizer(model.parameters(), checkpoint=nets, module=model)
    resumed.load_state_dict(saved)
    for p in model.parameters():
        torch.testing.assert_close(resumed.state[p]["net_state"], optimizer.state[p]["net_state"], rtol=0, atol=0)

    swapped = {"conv": ["type:_ConvNd", "type:BatchNorm2d", "head.1.*"], "fc": ["type:Linear", "type:BatchNorm1d"]}
    other = LearnedOptimizer(model.parameters(), checkpoint=RoutedNets(nets.nets, swapped), module=model)
    with pytest.raises(CheckpointError, match="belongs to a different net"):
        other.load_state_dict(saved)
    # the same net, but every parameter sent to "conv" by hand: its states would run under the wrong net
    by_hand = LearnedOptimizer([{"params": model.parameters(), "route": "conv"}], checkpoint=nets)
    with pytest.raises(CheckpointError, match=r"was routed \[.*'fc'\] when saved, but is routed \['conv'(, 'conv')*\] now"):
        by_hand.load_state_dict(saved)
    assert by_hand.state == {}  # nothing was loaded


class ConvBoring(BoringModel):
    """BoringModel with a conv front end, so both routes have parameters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1)

    def forward(self, x):
        return self.layer(self.conv(x.unsqueeze(1)).squeeze(1))


def test_the_callback_routes_a_lightning_modules_parameters(tmp_path):
    model = ConvBoring()
    nets = routed({"conv": ["type:_ConvNd"], "fc": ["type:Linear"]})
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, default_root_dir=tmp_path, callbacks=[LearnedOptimizerCallback(nets)])
    with pytest.warns(UserWarning, match="dropped 1 learning-rate scheduler"):  # BoringModel returns a StepLR
        trainer.fit(model)
    (optimizer,) = trainer.optimizers
    assert optimizer.param_groups[0]["param_routes"] == ["fc", "fc", "conv", "conv"]  # layer.*, then conv.*
    assert optimizer.state[model.conv.weight]["net_state"].shape[-1] == 6 and optimizer.state[model.layer.weight]["step"] == 2


def test_lightning_cli_routes_through_the_callback_and_explains_why_optimizer_cannot(tmp_path, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    from l2l_lightning.optim.pretrained import export

    nets = routed({"conv": ["type:_ConvNd"], "fc": ["type:Linear"]})
    learner_ckpt = tmp_path / "routed.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in nets.state_dict().items()}, "l2l_net": nets.spec,
                "global_step": 0}, learner_ckpt)  # fmt: skip
    exported = export(learner_ckpt, tmp_path / "routed.pt")
    monkeypatch.setattr("sys.argv", ["app.py"])
    quiet = ["--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--trainer.logger=false",
             "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
             f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    callback = ["--trainer.callbacks+=l2l_lightning.LearnedOptimizerCallback", f"--trainer.callbacks.checkpoint={exported}"]
    with pytest.warns(UserWarning, match="dropped 1 learning-rate scheduler"):
        cli = LightningCLI(ConvBoring, save_config_callback=None, args=["fit", *callback, *quiet])
    assert cli.trainer.optimizers[0].param_groups[0]["param_routes"] == ["fc", "fc", "conv", "conv"]
    optimizer = ["--optimizer=l2l_lightning.LearnedOptimizer", f"--optimizer.checkpoint={exported}"]
    with pytest.raises(ConfigError, match="use --trainer.callbacks\\+=l2l_lightning.LearnedOptimizerCallback"):
        LightningCLI(ConvBoring, save_config_callback=None, args=["fit", *optimizer, *quiet])
