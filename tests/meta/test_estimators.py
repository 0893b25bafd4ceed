"""Outer-gradient estimators: truncated BPTT as before, PES unbiased and resumable, bad settings refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from l2l_lightning import ConfigError, CoordinatewiseLSTM, FeatureMLP, MetaLearner, QuadraticTask
from l2l_lightning.meta.estimators import PES, OuterEstimator, Truncation, TruncatedBPTT
from l2l_lightning.meta.unroll import bind, unroll
from tests.conftest import fit_tiny, tiny_learner, tiny_trainer


def _tiny():
    torch.manual_seed(0)
    net = CoordinatewiseLSTM(hidden_size=2, preprocess="none", output_scale=0.1)
    problem = QuadraticTask(dim=2, num_problems=1).sample(torch.Generator().manual_seed(3))
    return net, problem


def _objective(losses, start):
    return losses.mean(dim=1).sum()


def _exact_gradient(net, problem, num_steps):
    """d/dφ of the summed loss over the whole horizon, through everything (second derivatives too)."""
    bound = bind(net, problem)
    theta = problem.initial_params()
    result = unroll(bound, problem, theta, bound.init_state(problem.layout), 0, num_steps, second_derivatives=True)
    grads = torch.autograd.grad(result.losses.sum(), list(net.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


def _pes_estimate(estimator, net, problem, num_steps, unroll_steps):
    """One PES estimate of the whole horizon's gradient: the sum of its truncations' estimates."""
    bound = bind(net, problem)
    theta, state = problem.initial_params(), bound.init_state(problem.layout)
    total = torch.zeros(sum(p.numel() for p in net.parameters()))
    for start in range(0, num_steps, unroll_steps):
        run = Truncation(net, bound, problem, theta, state, start, unroll_steps, start == 0, _objective, num_steps)
        result = estimator.truncation(run)
        grads = torch.autograd.grad(result.loss, list(net.parameters()))
        total += torch.cat([g.reshape(-1) for g in grads])
        theta, state = result.theta, result.state
    return total


@pytest.mark.slow
def test_pes_is_unbiased_for_the_exact_meta_gradient_over_several_truncations():
    """Averaged over many samples, PES's estimate agrees with the exact gradient of the whole horizon
    (all truncations, second derivatives included) within its standard error; truncated BPTT,
    which cuts the gradient at each boundary, does not."""
    net, problem = _tiny()
    exact = _exact_gradient(net, problem, num_steps=6)
    estimator = PES(num_particles=8, sigma=1e-3)
    estimator.setup(rank=0, seed=0)
    samples = torch.stack([_pes_estimate(estimator, net, problem, 6, 2) for _ in range(300)]).double()
    mean, sem = samples.mean(0), samples.std(0) / samples.shape[0] ** 0.5
    z = (mean - exact.double()) / sem.clamp_min(1e-12)
    assert z.abs().max() < 4.5, f"max |z| = {z.abs().max():.2f}"
    assert (z.square().mean() - 1).abs() < 0.6  # the errors look like noise of the stated size, not a bias
    truncated = _pes_estimate(TruncatedBPTT(), net, problem, 6, 2)  # the same loop, BPTT's per-truncation gradients
    assert ((truncated - exact).abs() / sem.clamp_min(1e-12)).max() > 10  # the bias PES removes is real here


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_particles": 3}, r"num_particles=3 must be even \(antithetic pairs"),
        ({"num_particles": 0}, "num_particles=0"),
        ({"sigma": 0.0}, "sigma=0.0 must be a positive finite number"),
        ({"sigma": float("inf")}, "sigma=inf"),
    ],
)
def test_pes_settings_that_cannot_work_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PES(**kwargs)


def test_second_derivatives_with_pes_is_a_config_error():
    with pytest.raises(ConfigError, match="second_derivatives=true only applies to an estimator that differentiates through the unroll"):
        tiny_learner(estimator=PES(num_particles=2), second_derivatives=True)


def test_what_an_estimator_may_be_given_follows_what_it_declares_not_its_class():
    class MyBPTT(OuterEstimator):  # a new estimator, not a TruncatedBPTT subclass
        differentiates_through_unroll = True

        def truncation(self, run: Truncation):
            return TruncatedBPTT().truncation(run)

    class Blind(MyBPTT):
        differentiates_through_unroll = False

    assert tiny_learner(estimator=MyBPTT(), second_derivatives=True, imitation={"teacher": "adam", "lr": 0.01}).second_derivatives
    with pytest.raises(ConfigError, match="Blind never does"):
        tiny_learner(estimator=Blind(), second_derivatives=True)
    with pytest.raises(ConfigError, match="imitation needs an estimator that differentiates"):
        tiny_learner(estimator=Blind(), imitation={"teacher": "adam", "lr": 0.01})


def test_pes_meta_trains_and_changes_the_weights(tmp_path):
    torch.manual_seed(0)
    learner = tiny_learner(estimator=PES(num_particles=4, sigma=0.01))
    before = parameters_to_vector(learner.net.parameters()).detach().clone()
    tiny_trainer(tmp_path, max_steps=6).fit(learner)
    after = parameters_to_vector(learner.net.parameters()).detach()
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    assert learner.hparams["estimator"] == {
        "class_path": "l2l_lightning.meta.estimators.pes.PES",
        "init_args": {"num_particles": 4, "sigma": 0.01},
    }


@pytest.mark.parametrize("stop", [1, 3])
def test_pes_state_survives_checkpoint_and_resume_bit_exactly(tmp_path, stop):
    """The accumulated perturbations, every particle's optimizees and the perturbation stream resume."""

    def fit(max_steps, ckpt_path=None, save=None):
        return fit_tiny(tmp_path, max_steps, ckpt_path, save, estimator=PES(num_particles=4, sigma=0.01))

    straight = fit(6)
    fit(stop, save=tmp_path / "part.ckpt")
    saved = torch.load(tmp_path / "part.ckpt", weights_only=True)["l2l_stream"]["estimator"]  # plain data
    assert saved["xi"].shape[0] == 4 and len(saved["particles"]) == 4
    resumed = fit(6, ckpt_path=tmp_path / "part.ckpt")
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(straight.estimator._xi, resumed.estimator._xi)


def test_pes_from_yaml(tmp_path):
    from l2l_lightning.cli import main
    from tests.test_cli import CONFIG, FAST

    main(["fit", "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST,
          "--model.second_derivatives", "false", "--model.estimator", "l2l_lightning.meta.estimators.PES",
          "--model.estimator.init_args.num_particles", "2", "--test_after_fit", "false"])  # fmt: skip
    (last,) = tmp_path.glob("quadratic/version_0/checkpoints/last.ckpt")
    learner = MetaLearner.load_from_checkpoint(last)
    assert isinstance(learner.estimator, PES) and learner.estimator.num_particles == 2


def test_log_loss_transform_is_the_mean_log_loss():
    learner = tiny_learner(loss_transform="log")
    losses = torch.tensor([[1.0, 4.0], [2.0, 8.0]])
    expected = (torch.log(losses).mean(dim=1) * learner.loss_weights[:2]).sum()
    torch.testing.assert_close(learner.objective(losses, 0), expected)
    with pytest.raises(ConfigError, match="loss_transform='sqrt'; allowed: 'none', 'log'"):
        tiny_learner(loss_transform="sqrt")


# ------------------------------------------------------------------------ training tricks
def test_a_scaled_problem_is_the_same_problem_in_rescaled_coordinates():
    from l2l_lightning.tasks.base import ScaledProblem

    problem = QuadraticTask(dim=3, num_problems=2).sample(torch.Generator().manual_seed(0))
    scale = torch.tensor([0.1, 1.0, 10.0] * 2)
    scaled = ScaledProblem(problem, scale)
    torch.testing.assert_close(scaled.loss(scaled.initial_params(), 0), problem.loss(problem.initial_params(), 0))
    theta = scaled.initial_params().requires_grad_(True)
    (grad,) = torch.autograd.grad(scaled.loss(theta, 0).sum(), theta)
    base = problem.initial_params().requires_grad_(True)
    (base_grad,) = torch.autograd.grad(problem.loss(base, 0).sum(), base)
    torch.testing.assert_close(grad, base_grad * scale)  # gradients scaled by c: what the net must not rely on
    assert scaled.layout == problem.layout and scaled.num_optimizees == 2


def test_random_scaling_rescales_training_problems_only(tmp_path):
    learner = tiny_learner(random_scaling=2.0)
    learner.stream.generator = torch.Generator().manual_seed(0)
    problem = learner.stream.draw(learner.device)
    assert type(problem).__name__ == "ScaledProblem"
    assert problem.scale.min() >= torch.exp(torch.tensor(-2.0)) and problem.scale.max() <= torch.exp(torch.tensor(2.0))
    assert problem.scale.std() > 0.3  # really random per coordinate
    assert all(type(p).__name__ == "QuadraticProblem" for p in learner.heldout_problems("val"))
    tiny_trainer(tmp_path, max_steps=4).fit(learner)  # trains
    with pytest.raises(ConfigError, match="random_scaling=-1 must be a number in"):
        tiny_learner(random_scaling=-1)


def test_the_horizon_curriculum_lengthens_when_validation_stops_improving():
    learner = tiny_learner(num_steps=8, unroll=2, horizon_curriculum=[2, 4])
    assert learner.horizon == 2
    learner.stream.advance_curriculum(5.0)  # first validation of the stage: its best so far
    learner.stream.advance_curriculum(4.0)  # improved: stay
    assert learner.horizon == 2
    learner.stream.advance_curriculum(4.5)  # no improvement: next stage
    assert learner.horizon == 4
    learner.stream.advance_curriculum(3.0)
    learner.stream.advance_curriculum(3.0)
    assert learner.horizon == 8  # then num_steps, for good
    learner.stream.advance_curriculum(9.0)
    assert learner.horizon == 8


def test_horizon_choices_give_each_problem_its_own_horizon_and_resume_exactly(tmp_path):
    """Each problem runs a horizon drawn from the choices (what a scheduled net reads), and a run stopped
    inside a problem continues it to that problem's own horizon, exactly."""

    def net() -> FeatureMLP:
        torch.manual_seed(0)
        return FeatureMLP(hidden_size=4, schedule=True)

    learner = tiny_learner(net=net(), num_steps=8, unroll=2, horizon_choices=[2, 4, 8])
    learner.stream.start(0)
    horizons = []
    for _ in range(40):
        carry, fresh = learner.stream.next_carry(learner.net, learner.device)
        if fresh:
            horizons.append(learner.stream.horizon_of(carry))
        learner.stream.carry = replace(carry, step=carry.step + 2)
    assert set(horizons) == {2, 4, 8}
    straight = fit_tiny(tmp_path, 9, net=net(), num_steps=8, unroll=2, horizon_choices=[2, 4, 8])
    fit_tiny(tmp_path, 5, save=tmp_path / "part.ckpt", net=net(), num_steps=8, unroll=2, horizon_choices=[2, 4, 8])
    resumed = fit_tiny(tmp_path, 9, ckpt_path=tmp_path / "part.ckpt", net=net(), num_steps=8, unroll=2, horizon_choices=[2, 4, 8])
    for a, b in zip(straight.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)
    assert straight.stream.carry.horizon == resumed.stream.carry.horizon
    for bad, message in (([3], "multiples of unroll"), ([16], "none longer"), ([], "non-empty"), ([0], "positive")):
        with pytest.raises(ConfigError, match=message):
            tiny_learner(num_steps=8, unroll=2, horizon_choices=bad)
    with pytest.raises(ConfigError, match="not both"):
        tiny_learner(num_steps=8, unroll=2, horizon_choices=[2], horizon_curriculum=[2, 4])


@pytest.mark.parametrize(
    "curriculum", [[3, 4], [4, 2], [2, 2], [2, 10], []],
)
def test_a_curriculum_that_cannot_work_is_a_config_error(curriculum):
    with pytest.raises(ConfigError, match="horizon_curriculum=.*strictly increasing multiples of unroll=2.*num_steps=8"):
        tiny_learner(num_steps=8, unroll=2, horizon_curriculum=curriculum)


def test_a_curriculum_run_draws_problems_of_the_current_horizon(tmp_path):
    torch.manual_seed(0)
    learner = tiny_learner(num_steps=8, unroll=2, horizon_curriculum=[2])
    tiny_trainer(tmp_path, max_steps=3).fit(learner)
    assert learner.stream.carry.step == 2  # each problem lived 2 inner steps (one truncation) at stage 0
