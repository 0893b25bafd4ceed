"""MetaLearner: horizon and truncations, bad input, non-finite meta-losses, determinism, checkpoints."""

import math

import pytest
import torch

from l2l_lightning import ConfigError, CoordinatewiseLSTM, MetaLearner, NonFiniteMetaLossError, QuadraticTask
from l2l_lightning.tasks.quadratic import QuadraticProblem
from tests.conftest import fit_tiny, tiny_learner, tiny_trainer


def test_one_training_step_is_one_truncation_and_the_horizon_resets(tmp_path):
    learner = tiny_learner(num_steps=6, unroll=2)
    seen = []

    class Spy(torch.nn.Module):
        pass

    original = learner.training_step

    def spy(batch, batch_idx):
        out = original(batch, batch_idx)
        seen.append((id(learner.stream.carry.problem), learner.stream.carry.step))
        return out

    learner.training_step = spy
    tiny_trainer(tmp_path, max_steps=7).fit(learner)
    steps = [s for _, s in seen]
    assert steps == [2, 4, 6, 2, 4, 6, 2]
    problems = [p for p, _ in seen]
    assert problems[0] == problems[1] == problems[2] != problems[3] == problems[4] == problems[5] != problems[6]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_steps=100, unroll=30), "num_steps=100 is not a multiple of unroll=30"),
        (dict(unroll=0), "unroll=0 must be a positive integer"),
        (dict(num_steps=-5), "num_steps=-5"),
        (dict(truncations_per_epoch=0), "truncations_per_epoch"),
        (dict(val_problems=0), "val_problems"),
        (dict(loss_weights="quadratic"), "'uniform', 'increasing'"),
        (dict(loss_weights=[1.0, 2.0]), "num_steps=4"),
        (dict(baseline_lrs=[]), "baseline_lrs"),
        (dict(task="quadratic"), "must be an l2l_lightning.tasks.Task"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tiny_learner(**kwargs)


def test_loss_weights():
    learner = tiny_learner(loss_weights="increasing")
    torch.testing.assert_close(learner.loss_weights, torch.tensor([0.25, 0.5, 0.75, 1.0]))
    learner = tiny_learner(loss_weights=[0.0, 0.0, 1.0, 2.0])
    assert learner.loss_weights.tolist() == [0.0, 0.0, 1.0, 2.0]


class PoisonedTask(QuadraticTask):
    """Quadratics whose loss is NaN while ``poisoned`` is set."""

    poisoned = False

    def sample(self, generator, device="cpu", split="train"):
        problem = super().sample(generator, device, split)
        task = self

        class Poisoned(QuadraticProblem):
            def loss(self, theta, step):
                value = super().loss(theta, step)
                return value * math.nan if task.poisoned else value

        return Poisoned(problem.W, problem.y, problem.initial_params())


def test_a_nonfinite_meta_loss_is_skipped_counted_and_never_reaches_the_weights(tmp_path):
    import lightning as L

    task = PoisonedTask(dim=3, num_problems=4)
    snapshots = {}

    class PoisonSteps2And3(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            task.poisoned = trainer.global_step in (2, 3)
            snapshots[trainer.global_step] = (
                [p.detach().clone() for p in module.net.parameters()],
                [s["step"].clone() for s in trainer.optimizers[0].state.values()],
            )

    learner = tiny_learner(task=task, max_nonfinite_in_row=3)
    trainer = tiny_trainer(tmp_path, max_steps=6, callbacks=[PoisonSteps2And3()])
    with pytest.warns(UserWarning, match="skipped: non-finite meta-loss"):
        trainer.fit(learner)
    assert learner._skipped == 2 and trainer.callback_metrics["meta/skipped_steps"] == 2
    weights_2, adam_steps_2 = snapshots[2]
    weights_4, adam_steps_4 = snapshots[4]
    assert all(torch.equal(a, b) for a, b in zip(weights_2, weights_4))  # two skipped steps changed nothing
    assert adam_steps_2 == adam_steps_4 and adam_steps_2[0] == 2  # not even Adam's step count
    assert any(not torch.equal(a, b) for a, b in zip(weights_4, learner.net.parameters()))  # then training resumed
    assert all(torch.isfinite(p).all() for p in learner.net.parameters())


def test_too_many_nonfinite_in_a_row_stops_with_a_clear_error(tmp_path):
    task = PoisonedTask(dim=3, num_problems=4)
    task.poisoned = True
    learner = tiny_learner(task=task, max_nonfinite_in_row=3)
    weights = [p.detach().clone() for p in learner.net.parameters()]
    trainer = tiny_trainer(tmp_path, max_steps=10)
    with pytest.warns(UserWarning), pytest.raises(NonFiniteMetaLossError, match="3 meta-steps in a row"):
        trainer.fit(learner)
    assert all(torch.equal(a, b) for a, b in zip(weights, learner.net.parameters()))


def _train(tmp_path, seed):
    import lightning as L

    L.seed_everything(seed)
    learner = tiny_learner()
    tiny_trainer(tmp_path, max_steps=8).fit(learner)
    return [p.detach().clone() for p in learner.net.parameters()]


def test_two_runs_with_the_same_seed_give_identical_weights(tmp_path):
    a = _train(tmp_path / "a", 7)
    b = _train(tmp_path / "b", 7)
    c = _train(tmp_path / "c", 8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))


def test_validation_logs_learned_and_tuned_adam(tmp_path):
    learner = tiny_learner(val_problems=2)
    trainer = tiny_trainer(tmp_path, max_steps=4, limit_val_batches=None, check_val_every_n_epoch=1)
    trainer.fit(learner)
    metrics = trainer.callback_metrics
    for key in ("val/mean_loss", "val/final_loss", "val/adam_mean_loss", "val/adam_lr", "val/mean_loss_ratio_to_adam"):
        assert key in metrics, key
    assert metrics["val/adam_lr"] in (0.01, 0.1)
    ratio = metrics["val/mean_loss"] / metrics["val/adam_mean_loss"]
    assert math.isclose(ratio, metrics["val/mean_loss_ratio_to_adam"], rel_tol=1e-5)


def test_heldout_problems_never_come_from_the_training_stream():
    learner = tiny_learner(val_seed=5, test_seed=6, val_problems=2)
    val, test = learner.heldout_problems("val"), learner.heldout_problems("test")
    assert len(val) == 2 and not torch.equal(val[0].W, test[0].W) and not torch.equal(val[0].W, val[1].W)
    assert torch.equal(val[0].W, QuadraticTask(dim=3, num_problems=4).sample(torch.Generator().manual_seed(5)).W)


def test_load_from_checkpoint_gives_back_the_net(tmp_path):
    net = CoordinatewiseLSTM(hidden_size=6, num_layers=1, preprocess="clamped", p=5.0, output_scale=0.5)
    learner = tiny_learner(net=net)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(learner)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = MetaLearner.load_from_checkpoint(tmp_path / "m.ckpt").net
    assert loaded.config == net.config
    for a, b in zip(loaded.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)


def test_loading_a_foreign_checkpoint_says_what_is_wrong(tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringModel

    trainer = tiny_trainer(tmp_path, max_steps=1)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "boring.ckpt")
    with pytest.raises(ConfigError, match="not a checkpoint of l2l_lightning.MetaLearner"):
        MetaLearner.load_from_checkpoint(tmp_path / "boring.ckpt")


@pytest.mark.parametrize("stop", [1, 3, 4])
def test_meta_training_resumes_bit_exactly_at_any_truncation_boundary(tmp_path, stop):
    """6 meta-steps straight == `stop` steps, a checkpoint, then resumed to 6 (num_steps=4, unroll=2:
    step 3 stops halfway through the second problem, step 4 between problems)."""

    def fit(max_steps, ckpt_path=None, save=None):
        return fit_tiny(tmp_path, max_steps, ckpt_path, save)

    straight = fit(6)
    fit(stop, save=tmp_path / "part.ckpt")
    stream = torch.load(tmp_path / "part.ckpt", weights_only=True)["l2l_stream"]  # plain data only
    assert stream["step"] == (2 * stop - 1) % 4 + 1
    resumed = fit(6, ckpt_path=tmp_path / "part.ckpt")
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(straight.stream.carry.theta, resumed.stream.carry.theta)


def test_resuming_with_another_task_warns_and_starts_a_fresh_problem(tmp_path):
    torch.manual_seed(0)
    trainer = tiny_trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    trainer.fit(tiny_learner())
    trainer.save_checkpoint(tmp_path / "part.ckpt")
    other = tiny_learner(task=QuadraticTask(dim=5, num_problems=4))
    with pytest.warns(UserWarning, match="cannot be drawn again with this task.*not exact"):
        tiny_trainer(tmp_path, max_steps=2, enable_checkpointing=False).fit(other, ckpt_path=tmp_path / "part.ckpt")
    assert other.stream.carry.theta.shape == other.task.sample(torch.Generator().manual_seed(0)).initial_params().shape


@pytest.mark.parametrize("max_steps", [6, 5])  # 5: stops between two validations
def test_last_ckpt_holds_the_latest_state_not_the_best(tmp_path, max_steps):
    """Lightning's ``save_last`` writes only with a new best; resuming from that would repeat steps."""
    learner = tiny_learner(truncations_per_epoch=2, val_problems=1)
    trainer = tiny_trainer(tmp_path, max_steps=max_steps, limit_val_batches=None)
    trainer.fit(learner)
    (last,) = tmp_path.glob("**/last.ckpt")
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == max_steps
    for name, value in learner.state_dict().items():
        assert torch.equal(saved["state_dict"][name], value), name
    best = trainer.checkpoint_callback
    assert saved["callbacks"][best.state_key]["best_model_path"] == best.best_model_path
