"""The imitation trick: an auxiliary meta-loss towards a tuned hand-designed optimizer's updates."""

from __future__ import annotations

import functools

import pytest
import torch

from l2l_lightning import ConfigError, MetaLearner
from l2l_lightning.meta.estimators import PES
from l2l_lightning.meta.imitation import Imitation
from l2l_lightning.meta.unroll import bind, unroll
from tests.conftest import fit_tiny, tiny_learner, tiny_trainer
from tests.test_cli import run_cli


def test_the_term_is_the_relative_squared_distance_to_the_teachers_update():
    imitation = Imitation(teacher="sgd", lr=0.5, weight=2.0)
    theta, grad = torch.tensor([1.0, -2.0]), torch.tensor([0.2, 0.4])  # SGD's update: (-0.1, -0.2)
    imitation.observe(theta, grad, torch.tensor([-0.1, -0.2]))  # exactly the teacher's
    imitation.observe(theta, grad, torch.tensor([0.0, 0.0]))  # no step: distance = the teacher's norm
    assert imitation.pop_loss().item() == pytest.approx(2.0 * (0.0 + 1.0))
    assert imitation._terms == []  # popped: the next truncation starts its own sum


def test_the_teacher_keeps_its_state_across_steps_and_resets_with_the_problem():
    imitation = Imitation(teacher="nag", lr=0.1)
    theta, grad = torch.zeros(3), torch.ones(3)
    first = imitation._teacher_update(theta, grad)
    second = imitation._teacher_update(theta, grad)  # momentum: a longer step for the same gradient
    assert (second.abs() > first.abs()).all()
    imitation.reset()
    assert torch.equal(imitation._teacher_update(theta, grad), first)


def test_meta_training_with_imitation_moves_the_updates_towards_the_teacher(tmp_path):
    """With a large weight the term dominates: the learned updates end much closer to SGD's."""

    def distance(learner):
        problem = learner.task.sample(torch.Generator().manual_seed(123), "cpu", split="val")
        net = bind(learner.net, problem)
        probe = Imitation(teacher="sgd", lr=0.05, weight=1.0)
        theta = problem.initial_params()
        unroll(net, problem, theta, net.init_state(problem.layout), 0, 4, meta_grad=False, on_step=probe.observe)
        return probe.pop_loss().item()

    learner = tiny_learner(
        imitation=Imitation(teacher="sgd", lr=0.05, weight=100.0),
        meta_optimizer=functools.partial(torch.optim.Adam, lr=0.03),
    )
    before = distance(learner)
    tiny_trainer(tmp_path, max_steps=60).fit(learner)
    assert distance(learner) < 0.2 * before
    assert learner.hparams["imitation"] == {"teacher": "sgd", "lr": 0.05, "weight": 100.0}


@pytest.mark.parametrize("stop", [1, 3])
def test_the_teachers_state_survives_checkpoint_and_resume_bit_exactly(tmp_path, stop):
    def fit(max_steps, ckpt_path=None, save=None):
        return fit_tiny(tmp_path, max_steps, ckpt_path, save, imitation=Imitation(teacher="adam", lr=0.1, weight=1.0))

    straight = fit(6)
    fit(stop, save=tmp_path / "part.ckpt")
    saved = torch.load(tmp_path / "part.ckpt", weights_only=True)  # plain data only
    assert "optimizer" in saved["l2l_stream"]["imitation"]
    resumed = fit(6, ckpt_path=tmp_path / "part.ckpt")
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), name
    assert isinstance(MetaLearner.load_from_checkpoint(tmp_path / "part.ckpt").imitation, Imitation)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 1.0}, "imitation needs a teacher"),
        ({"teacher": "lbfgs", "lr": 1.0}, "imitation needs a teacher: one of"),
        ({"teacher": "adam"}, r"imitation.lr=None must be a positive finite number \(the teacher's tuned learning rate\)"),
        ({"teacher": "adam", "lr": float("inf")}, "imitation.lr=inf"),
        ({"teacher": "adam", "lr": 0.1, "weight": 0}, "imitation.weight=0"),
    ],
)
def test_settings_that_cannot_work_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tiny_learner(imitation=Imitation(**kwargs))


def test_imitation_with_pes_is_a_config_error():
    with pytest.raises(ConfigError, match="imitation needs an estimator that differentiates through the updates"):
        tiny_learner(estimator=PES(num_particles=2), imitation=Imitation(teacher="adam", lr=0.1))


def test_from_yaml_and_without_a_teacher_a_one_line_cli_error(tmp_path, capsys):
    run_cli(["--model.imitation.teacher", "nag", "--model.imitation.lr", "0.01", "--test_after_fit", "false"], tmp_path)
    (last,) = tmp_path.glob("quadratic/version_0/checkpoints/last.ckpt")
    assert MetaLearner.load_from_checkpoint(last).imitation == Imitation(teacher="nag", lr=0.01)
    capsys.readouterr()  # the successful run's warnings
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--model.imitation.lr", "0.01"], tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("l2l: error: ") and "imitation needs a teacher" in err and "Traceback" not in err
