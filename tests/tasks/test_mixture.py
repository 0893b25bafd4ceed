"""TaskMixture: families and settings drawn from the generator alone, augmentation that keeps the function,
bad configs refused in one line, and meta-training across problems of different sizes, resumed exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l2l_lightning import ConfigError, CoordinatewiseLSTM, FeatureMLP, TaskMixture
from l2l_lightning.meta.estimators import PES
from l2l_lightning.tasks.base import ScaledProblem, StackedModuleProblem
from tests.conftest import fit_tiny
from tests.data.fixtures import write_mnist

#: The smallest settings of every family, so a draw costs milliseconds.
TINY = {
    "mlp": {"widths": [3, 5], "depths": [1, 2], "activations": ["relu", "tanh"], "image_sizes": [8, 14], "batch_size": 4},
    "cnn": {"channels": [2], "image_sizes": [8], "batch_size": 4},
    "transformer": {"widths": [4], "context": 4, "batch_size": 2},
    "photo_autoencoder": {"patch_sizes": [2], "widths": [3], "batch_size": 2},
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, str]:
    """Fake Fashion-MNIST IDX files (flat, like Debian's), 18 small photos and a text file."""
    from PIL import Image

    base = tmp_path_factory.mktemp("mixture_data")
    write_mnist(base / "fashion", folder="")
    rng = np.random.default_rng(0)
    (base / "photos").mkdir()
    for i in range(18):
        Image.fromarray(rng.integers(0, 256, (64, 72, 3), dtype=np.uint8)).save(base / "photos" / f"p{i}.png")
    (base / "text").mkdir()
    (base / "text" / "words").write_text(" ".join(f"word{i % 97}" for i in range(2000)))
    return {"fashion_root": str(base / "fashion"), "photo_root": str(base / "photos"), "text_root": str(base / "text")}


def mixture(roots, families=None, **overrides) -> TaskMixture:
    kwargs = dict(families=TINY if families is None else families, optimizees_per_draw=2, val_size=10, **roots)
    kwargs.update(overrides)
    return TaskMixture(**kwargs)


def draw(task: TaskMixture, seed: int, split: str = "train"):
    return task.sample(torch.Generator().manual_seed(seed), split=split)


def test_draws_span_the_families_and_are_fixed_by_the_seed(roots):
    task = mixture(roots)
    sizes = {draw(task, seed).initial_params().numel() for seed in range(24)}
    assert len(sizes) >= 5  # families and settings differ from draw to draw
    for seed in (0, 7):
        a, b = draw(task, seed), draw(task, seed)
        assert torch.equal(a.initial_params(), b.initial_params())
        assert torch.equal(a.loss(a.initial_params(), 3), b.loss(b.initial_params(), 3))
    for name, settings in TINY.items():  # every family alone: two finite losses, each network its own
        problem = draw(mixture(roots, {name: settings}), 1, split="val")
        assert isinstance(problem, StackedModuleProblem) and problem.num_optimizees == 2
        losses = problem.loss(problem.initial_params(), 0)
        assert losses.shape == (2,) and torch.isfinite(losses).all() and losses[0] != losses[1], name


def test_weights_choose_the_family(roots):
    only_text = mixture(roots, {"mlp": {**TINY["mlp"], "weight": 0}, "transformer": {**TINY["transformer"], "weight": 2}})
    for seed in range(5):
        assert draw(only_text, seed).layout.segments[0].name == "embed.weight"


def test_reparametrisation_keeps_the_function_and_changes_the_scales(roots):
    plain, augmented = mixture(roots, reparam_scale=0.0), mixture(roots, reparam_scale=2.0, loss_scale=1.0)
    for seed in range(4):
        a, b = draw(plain, seed), draw(augmented, seed)
        assert isinstance(b, ScaledProblem) and not isinstance(a, ScaledProblem)
        scale = b.scale.split(b.layout.sizes)
        assert all(bool((s == s[0]).all()) for s in scale)  # one factor per tensor of each network
        torch.testing.assert_close(b.initial_params() * b.scale, a.initial_params())
        torch.testing.assert_close(b.loss(b.initial_params(), 2), a.loss(a.initial_params(), 2) * b.loss_scale)
    held_out = draw(augmented, 0, split="val")  # validation draws measure the real networks
    assert not isinstance(held_out, ScaledProblem)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(families={"mlp": {}, "resnet": {}}), "unknown family 'resnet'"),
        (dict(families={"mlp": {"weight": 0}, "cnn": {"weight": 0}}), "must sum to a positive"),
        (dict(families={"mlp": {"weight": -1}}), "mlp.weight=-1 must be a finite non-negative number"),
        (dict(families={"mlp": {"widht": [4]}}), "family 'mlp' has no setting 'widht'"),
        (dict(families={"mlp": {"activations": ["swish"]}}), "'swish'; allowed"),
        (dict(families={"cnn": {"channels": []}}), "cnn.channels=[] must list"),
        (dict(optimizees_per_draw=0), "optimizees_per_draw"),
        (dict(families={"cnn": {"image_sizes": [2]}}), "two 2×2 poolings need images of at least 4 pixels"),
    ],
)
def test_bad_mixtures_are_refused(roots, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        mixture(roots, **overrides)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.task.init_args.families", "{mlp: {}, lstm: {}}"], "unknown family 'lstm'"),
        (["--model.task.init_args.families", "{mlp: {weight: 0}}"], "must sum to a positive"),
    ],
)
def test_bad_mixture_configs_get_a_one_line_error(tmp_path, capsys, args, message):
    from l2l_lightning.cli import main
    from tests.test_cli import FAST, ROOT

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "general.yaml"), "--trainer.logger.init_args.save_dir",
              str(tmp_path), *FAST, *args])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("l2l: error: ") and message in err and "Traceback" not in err


NETS = {"lstm": lambda: CoordinatewiseLSTM(hidden_size=4), "feature_mlp": lambda: FeatureMLP(hidden_size=4, hidden_layers=1)}


def pes_mixture_run(tmp_path, roots, net, max_steps, ckpt_path=None, save=None):
    """Meta-training with PES on the mixture: 4 inner steps per problem, truncations of 2 (the net built from seed 0)."""
    torch.manual_seed(0)
    return fit_tiny(
        tmp_path, max_steps, ckpt_path, save, task=mixture(roots), net=NETS[net](), estimator=PES(num_particles=2, sigma=0.01)
    )


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("stop", [3, 4])
def test_meta_training_across_sizes_with_pes_resumes_bit_exactly(tmp_path, roots, stop, net, monkeypatch):
    """Problems of different architectures follow each other in one run (per-coordinate and, for the
    feature MLP, per-tensor state started afresh for each); a run stopped at a truncation boundary
    (3: halfway through a problem, 4: between problems) and resumed follows the straight one."""
    sizes = []
    original = StackedModuleProblem.__init__

    def spy(self, problems):
        original(self, problems)
        sizes.append(self.initial_params().numel())

    monkeypatch.setattr(StackedModuleProblem, "__init__", spy)
    straight = pes_mixture_run(tmp_path, roots, net, 8)
    assert len(set(sizes)) > 1  # the net met problems of different sizes in one run
    pes_mixture_run(tmp_path, roots, net, stop, save=tmp_path / "part.ckpt")
    resumed = pes_mixture_run(tmp_path, roots, net, 8, ckpt_path=tmp_path / "part.ckpt")
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(straight.stream.carry.theta, resumed.stream.carry.theta)
    assert torch.equal(straight.estimator._xi, resumed.estimator._xi)


def test_general_config_meta_trains_end_to_end(tmp_path, roots, capsys):
    """``l2l fit --config configs/general.yaml`` at tiny sizes on fake data: PES on the mixture,
    validation on mixture draws, checkpoints holding the stream, then test."""
    import json

    from l2l_lightning.cli import main
    from tests.test_cli import FAST, ROOT

    data = [arg for key, value in roots.items() for arg in (f"--model.task.init_args.{key}", value)]
    main(["fit", "--config", str(ROOT / "configs" / "general.yaml"), "--trainer.logger.init_args.save_dir", str(tmp_path),
          *FAST, *data, "--model.task.init_args.families", json.dumps(TINY), "--model.task.init_args.val_size", "10",
          "--model.val_problems", "2", "--model.test_problems", "1", "--model.estimator.init_args.num_particles", "2"])  # fmt: skip
    (last,) = tmp_path.glob("general/version_0/checkpoints/last.ckpt")
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 3 and saved["hyper_parameters"]["task"]["class_path"] == "l2l_lightning.tasks.mixture.TaskMixture"
    assert "xi" in saved["l2l_stream"]["estimator"] and "test/mean_loss" in capsys.readouterr().out
