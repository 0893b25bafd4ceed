"""MNISTTask: the paper's MLP optimizee on tiny IDX files (see tests/data/fixtures.py for how images are tagged)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from l2l_lightning import ConfigError, CoordinatewiseLSTM, DatasetError, MNISTTask
from l2l_lightning.cli import main
from tests.conftest import tiny_learner, tiny_trainer
from tests.data.fixtures import SIZES, TEST_OFFSET, write_mnist

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def root(tmp_path):
    return write_mnist(tmp_path / "data")


def tags(images):
    """Which example of which split each image is (pixel (0, 0), scaled back to 0 … 255)."""
    return (images.reshape(len(images), -1)[:, 0] * 255).round().long()


def test_loss_is_the_cross_entropy_of_the_plain_module(root):
    task = MNISTTask(root=str(root), val_size=8, hidden_sizes=[6, 5], activation="tanh", batch_size=8)
    problem = task.sample(torch.Generator().manual_seed(0))
    theta = torch.randn_like(problem.initial_params())
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 10))
    assert theta.numel() == sum(p.numel() for p in model.parameters())
    model.load_state_dict(problem.unflatten(theta))
    images, labels = problem.batch(3)
    assert images.shape == (8, 28, 28) and images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1
    assert torch.equal(labels, tags(images) % 10)  # images and labels stay paired
    torch.testing.assert_close(problem.loss(theta, 3), nn.functional.cross_entropy(model(images), labels).reshape(1))


def seen(problem, steps=20):
    """Every example the problem's first ``steps`` minibatches hold."""
    return set(torch.cat([tags(problem.batch(step)[0]) for step in range(steps)]).tolist())


def test_each_split_sees_only_its_own_images(root):
    task = MNISTTask(root=str(root), val_size=8, batch_size=4)
    draw = {split: task.sample(torch.Generator().manual_seed(0), split=split) for split in ("train", "val", "test")}
    assert seen(draw["train"]) == set(range(32))  # the training file but its last val_size images
    assert seen(draw["val"]) == set(range(32, 40))
    assert seen(draw["test"]) == set(range(TEST_OFFSET, TEST_OFFSET + SIZES["test"]))
    with pytest.raises(ConfigError, match="split='valid'"):
        task.sample(torch.Generator(), split="valid")


def test_each_epoch_is_a_fresh_permutation_cut_into_minibatches(root):
    problem = MNISTTask(root=str(root), val_size=8, batch_size=8).sample(torch.Generator().manual_seed(0))
    epochs = [torch.cat([tags(problem.batch(e * 4 + i)[0]) for i in range(4)]) for e in range(2)]  # 32 images, 4 batches
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(32))
    assert not torch.equal(epochs[0], epochs[1])
    assert torch.equal(tags(problem.batch(2)[0]), epochs[0][16:24])  # random access: step 2 again, same batch


def test_a_draw_depends_on_its_generator_only(root):
    task = MNISTTask(root=str(root), val_size=8, batch_size=8)
    a = task.sample(torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # the global RNG must not matter
    b = task.sample(torch.Generator().manual_seed(5))
    c = task.sample(torch.Generator().manual_seed(6))
    assert torch.equal(a.initial_params(), b.initial_params()) and torch.equal(a.batch(7)[0], b.batch(7)[0])
    assert not torch.equal(a.initial_params(), c.initial_params()) and not torch.equal(a.batch(0)[0], c.batch(0)[0])


def test_initialisations(root):
    normal = MNISTTask(root=str(root), val_size=8, batch_size=8).sample(torch.Generator().manual_seed(0)).initial_params()
    assert normal.numel() == 784 * 20 + 20 + 20 * 10 + 10
    assert abs(normal.std().item() - 0.01) < 0.0005 and abs(normal.mean().item()) < 0.0005
    default = MNISTTask(root=str(root), val_size=8, batch_size=8, init_std=None).sample(torch.Generator().manual_seed(0))
    first_layer = default.unflatten(default.initial_params())["1.weight"]
    bound = 1 / 784**0.5
    assert first_layer.abs().max() <= bound and first_layer.abs().max() > 0.95 * bound  # U(±1/√fan_in)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dataset="kmnist"), "dataset='kmnist'"),
        (dict(activation="gelu"), "activation='gelu'; allowed: 'sigmoid', 'relu', 'tanh'"),
        (dict(hidden_sizes=[20, 0]), "hidden_sizes=0 must be a positive integer"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(val_size=0), "val_size=0"),
        (dict(init_std=-1.0), "init_std=-1.0"),
    ],
)
def test_bad_settings_are_refused_up_front(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MNISTTask(**kwargs)


def test_config_rebuilds_the_task_without_touching_the_data(tmp_path):
    task = MNISTTask("fashion_mnist", root=str(tmp_path / "absent"), hidden_sizes=(40,), init_std=None)
    again = MNISTTask(**task.config["init_args"])  # constructing needs no files
    assert again.config == task.config and task.config["init_args"]["hidden_sizes"] == [40]
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        again.sample(torch.Generator())
    with pytest.raises(ConfigError, match="the val split under .* has 8 examples, fewer than batch_size=128"):
        MNISTTask(root=str(write_mnist(tmp_path)), val_size=8).sample(torch.Generator(), split="val")


def test_meta_training_runs_on_the_task(root, tmp_path):
    task = MNISTTask(root=str(root), val_size=8, hidden_sizes=[4], batch_size=8)
    learner = tiny_learner(task=task, net=CoordinatewiseLSTM(hidden_size=4, preprocess="log_sign"))
    before = [p.detach().clone() for p in learner.net.parameters()]
    tiny_trainer(tmp_path, max_steps=4).fit(learner)
    assert learner.global_step == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.net.parameters()))
    assert seen(learner.stream.carry.problem) <= set(range(32))
    assert seen(learner.heldout_problems("val")[0]) <= set(range(32, 40))
    assert seen(learner.heldout_problems("test")[0]) <= set(range(TEST_OFFSET, TEST_OFFSET + SIZES["test"]))


def test_the_config_file_runs_end_to_end(root, tmp_path, capsys):
    fast = ["--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false", "--model.num_steps", "4",
            "--model.unroll", "2", "--model.truncations_per_epoch", "2", "--model.val_problems", "1",
            "--model.test_problems", "1", "--model.baseline_lrs", "[0.1]"]  # fmt: skip
    small = ["--model.task.init_args.root", str(root), "--model.task.init_args.val_size", "8",
             "--model.task.init_args.batch_size", "8", "--model.task.init_args.hidden_sizes", "[4]",
             "--model.net.init_args.hidden_size", "4"]  # fmt: skip
    main(["fit", "--config", str(CONFIGS / "mnist.yaml"), "--trainer.logger.init_args.save_dir", str(tmp_path), *fast, *small])
    assert "test/mean_loss" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # no data there: one readable line, no traceback
        main(["fit", "--config", str(CONFIGS / "fashion_mnist.yaml"), "--trainer.logger.init_args.save_dir", str(tmp_path),
              *fast, "--model.task.init_args.root", str(tmp_path)])  # fmt: skip
    assert exit_info.value.code == 2
    assert "l2l: error: Fashion-MNIST's training files not found" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted((CONFIGS / "compare").glob("fashion_mnist*.yaml")), ids=lambda p: p.stem)
def test_every_fashion_mnist_compare_config_runs_end_to_end(config, tmp_path, capsys):
    """Each case of the results table runs from its file (shrunk to a few steps, on tiny IDX files)."""
    root = write_mnist(tmp_path / "data", folder="")  # flat, as Debian's dataset-fashion-mnist
    main(["compare", "--config", str(config), "--task.init_args.root", str(root), "--task.init_args.val_size", "8",
          "--task.init_args.batch_size", "8", "--num_steps", "3", "--num_problems", "1", "--tune_problems", "1",
          "--lrs", "[0.1]", "--split", "val", "--out_dir", str(tmp_path / "out"), "--progress", "false"])  # fmt: skip
    out = capsys.readouterr().out
    assert "fashion_mnist" in out and "adam" in out and (tmp_path / "out" / "results.csv").exists()
