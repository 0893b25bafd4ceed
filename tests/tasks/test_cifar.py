"""CIFAR10Task: the paper's conv net with batch norm, on tiny pickled batches (see tests/data/fixtures.py)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from l2l_lightning import CIFAR10Task, ConfigError, CoordinatewiseLSTM, LearnedOptimizer, MetaLearner, RoutedNets
from l2l_lightning.cli import main
from l2l_lightning.compare import compare
from l2l_lightning.optim.pretrained import export, load_net
from tests.conftest import tiny_learner, tiny_trainer
from tests.data.fixtures import TEST_OFFSET, write_cifar10

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def root(tmp_path):
    return write_cifar10(tmp_path / "data")


def tags(images):
    """Which example of which split each image is (pixel (0, 0) of channel 0, back to 0 … 255)."""
    return (images[:, 0, 0, 0] * 255).round().long()


def reference_net(num_classes=10):
    """The same architecture written plainly, with PyTorch's default batch norm (running stats tracked)."""
    block = lambda cin: [nn.Conv2d(cin, 16, 5, padding=2, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(
        *block(3), *block(16), *block(16), nn.Flatten(),
        nn.Linear(256, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, num_classes),
    )  # fmt: skip


def test_loss_is_the_plain_module_in_training_mode(root):
    problem = CIFAR10Task(root=str(root), val_size=4, batch_size=8).sample(torch.Generator().manual_seed(0))
    theta = problem.initial_params() + 0.1 * torch.randn(problem.initial_params().shape)
    model = reference_net().train()  # training mode: batch norm normalizes with the minibatch's statistics
    assert theta.numel() == sum(p.numel() for p in model.parameters()) == 22_682
    model.load_state_dict(problem.unflatten(theta), strict=False)  # strict=False: ours has no running stats
    images, labels = problem.batch(2)
    assert images.shape == (8, 3, 32, 32) and torch.equal(labels, tags(images) % 10)
    torch.testing.assert_close(problem.loss(theta, 2), nn.functional.cross_entropy(model(images), labels).reshape(1))


def test_problems_share_no_batch_norm_state(root):
    task = CIFAR10Task(root=str(root), val_size=4, batch_size=8)
    assert list(task.module.buffers()) == []  # no running statistics to mutate in the shared template
    a, b = (task.sample(torch.Generator().manual_seed(seed)) for seed in (0, 1))
    first = a.loss(a.initial_params(), 0)
    b.loss(b.initial_params() * 3, 0)  # another problem's step in between changes nothing
    torch.testing.assert_close(a.loss(a.initial_params(), 0), first, rtol=0, atol=0)


def test_class_subsets_have_one_output_per_class(root):
    task = CIFAR10Task(root=str(root), val_size=4, classes=[5, 3], batch_size=4)
    problem = task.sample(torch.Generator().manual_seed(0))
    assert problem.unflatten(problem.initial_params())["16.weight"].shape == (2, 32)  # last layer: 2 outputs
    for step in range(6):
        images, labels = problem.batch(step)
        assert set((tags(images) % 10).tolist()) <= {3, 5}
        assert torch.equal(labels, (tags(images) % 10 == 3).long())  # 5 -> 0, 3 -> 1: the order given


def test_splits_and_batch_norm_off(root):
    task = CIFAR10Task(root=str(root), val_size=4, batch_norm=False, conv_channels=[4], hidden_sizes=[], batch_size=4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in task.module.modules())
    names = [name for name, _ in task.module.named_parameters()]
    assert names == ["0.weight", "0.bias", "4.weight", "4.bias"]  # conv, then linear from 4×16×16 to 10
    generator = torch.Generator().manual_seed(0)
    val, test = (task.sample(generator, split=split) for split in ("val", "test"))
    assert set(tags(val.batch(0)[0]).tolist()) == {36, 37, 38, 39} and tags(test.batch(0)[0]).min() >= TEST_OFFSET


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(classes=[3]), "at least 2 distinct labels"),
        (dict(classes=[3, 3]), "at least 2 distinct labels"),
        (dict(classes=[3, 10]), r"classes entry=10 must be an integer from 0 to 9 \(a CIFAR-10 label\)"),
        (dict(conv_channels=[8] * 6), "at most 5"),
        (dict(hidden_sizes=[-1]), "hidden_sizes=-1"),
    ],
)
def test_bad_settings_are_refused_up_front(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CIFAR10Task(**kwargs)


def test_meta_training_runs_on_the_task(root, tmp_path):
    task = CIFAR10Task(root=str(root), val_size=4, conv_channels=[4, 4], hidden_sizes=[8], batch_size=8)
    learner = tiny_learner(task=task, net=CoordinatewiseLSTM(hidden_size=4, preprocess="log_sign"))
    before = [p.detach().clone() for p in learner.net.parameters()]
    tiny_trainer(tmp_path, max_steps=4).fit(learner)
    assert learner.global_step == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.net.parameters()))


def test_separate_conv_and_fc_nets_meta_train_reload_and_deploy(root, tmp_path):
    """The paper's CIFAR-10 setting end to end: meta-train two routed LSTMs, reload, export, deploy."""
    task = CIFAR10Task(root=str(root), val_size=8, conv_channels=[4, 4], hidden_sizes=[8], batch_size=8)
    routes = {"conv": ["type:_ConvNd", "type:BatchNorm2d"], "fc": ["type:Linear", "type:BatchNorm1d"]}
    nets = {"conv": CoordinatewiseLSTM(hidden_size=4, preprocess="log_sign"), "fc": CoordinatewiseLSTM(hidden_size=3)}
    learner = tiny_learner(task=task, net=RoutedNets(nets, routes))
    before = {name: p.detach().clone() for name, p in learner.net.named_parameters()}
    trainer = tiny_trainer(tmp_path, max_steps=4)
    trainer.fit(learner)
    changed = {name.split(".")[1] for name, p in learner.net.named_parameters() if not torch.equal(before[name], p)}
    assert changed == {"conv", "fc"}  # both nets received meta-gradients

    ckpt = tmp_path / "routed.ckpt"
    trainer.save_checkpoint(ckpt)
    reloaded = MetaLearner.load_from_checkpoint(ckpt)
    assert isinstance(reloaded.net, RoutedNets) and reloaded.net.routes == routes
    assert reloaded.net.nets["fc"].hidden_size == 3
    exported = export(ckpt, tmp_path / "cifar.pt")

    model = reference_net()  # a plain nn.Sequential: routed by its module types
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=exported, module=model)
    routes_of = dict(zip((name for name, _ in model.named_parameters()), optimizer.param_groups[0]["param_routes"]))
    assert routes_of["0.weight"] == routes_of["1.bias"] == "conv" and routes_of["13.weight"] == routes_of["14.weight"] == "fc"
    images, labels = task.sample(torch.Generator().manual_seed(0)).batch(0)
    nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    hidden = {name: optimizer.state[p]["net_state"].shape[-1] for name, p in model.named_parameters()}
    assert hidden["0.weight"] == 4 and hidden["16.weight"] == 3  # each stepped by its own net (hidden 4 / 3)
    assert load_net(exported).config == reloaded.net.config
    (result,) = compare([str(exported)], task, num_steps=3, num_problems=2, baselines=[], out_dir=None, progress=False)
    assert result.curves.shape == (3, 2) and torch.isfinite(result.curves).all()  # l2l compare binds per network


def test_the_config_file_runs_end_to_end_and_routing_typos_are_one_line_errors(root, tmp_path, capsys):
    fast = ["--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false", "--model.num_steps", "4",
            "--model.unroll", "2", "--model.truncations_per_epoch", "2", "--model.val_problems", "1",
            "--model.test_problems", "1", "--model.baseline_lrs", "[0.1]",
            "--trainer.logger.init_args.save_dir", str(tmp_path)]  # fmt: skip
    small = ["--model.task.init_args.root", str(root), "--model.task.init_args.val_size", "8",
             "--model.task.init_args.batch_size", "8", "--model.task.init_args.conv_channels", "[4, 4]",
             "--model.task.init_args.hidden_sizes", "[8]"]  # fmt: skip
    config = ["fit", "--config", str(CONFIGS / "cifar10.yaml"), *fast, *small]
    main(config)
    assert "test/mean_loss" in capsys.readouterr().out
    typo = '{conv: ["type:_ConvNd", "type:BatchNorm2d"], fc: ["type:Linear", "type:BatchNorm1D"]}'
    with pytest.raises(SystemExit) as exit_info:
        main([*config, "--model.net.init_args.routes", typo])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "l2l: error: RoutedNets: parameter '10.weight' matches no route" in err and "its module is a BatchNorm1d" in err
    assert "Traceback" not in err
