"""`l2l compare`: protocol (tune on train draws, evaluate on fresh test draws), outputs, errors."""

import csv
import json

import pytest
import torch

from l2l_lightning import ConfigError, CoordinatewiseLSTM, QuadraticTask
from l2l_lightning.cli import main
from l2l_lightning.compare import compare
from tests.conftest import tiny_learner, tiny_trainer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    trainer = tiny_trainer(path.parent, max_steps=2)
    trainer.fit(tiny_learner(net=CoordinatewiseLSTM(hidden_size=4, preprocess="none", output_scale=0.05)))
    trainer.save_checkpoint(path)
    return str(path)


class SpyTask(QuadraticTask):
    """Records which split and which first W entry every draw had."""

    def __init__(self, dim: int = 3, num_problems: int = 4) -> None:
        super().__init__(dim=dim, num_problems=num_problems)
        self.draws = []

    def sample(self, generator, device="cpu", split="train"):
        problem = super().sample(generator, device, split)
        self.draws.append((split, problem.W[0, 0, 0].item()))
        return problem


def test_baselines_are_tuned_on_train_draws_and_everyone_is_evaluated_on_fresh_test_draws(checkpoint, tmp_path):
    task = SpyTask()
    results = compare(
        [f"tiny={checkpoint}"], task, num_steps=5, num_problems=3, baselines=["sgd", "adam"],
        lrs=[0.01, 0.1], tune_problems=2, out_dir=None, progress=False,
    )  # fmt: skip
    splits = [s for s, _ in task.draws]
    assert splits == ["train", "train", "test", "test", "test"]
    tune_ws, eval_ws = {w for s, w in task.draws if s == "train"}, {w for s, w in task.draws if s == "test"}
    assert not tune_ws & eval_ws  # different problems
    names = [r.name for r in results]
    assert names == ["tiny", "sgd", "adam"]
    for result in results:
        assert result.curves.shape == (5, 3 * 4)  # 5 steps, 3 draws × 4 quadratics
    assert results[0].lr is None and set(results[2].tuning) >= {0.01, 0.1}  # the grid, perhaps extended
    for result in results[1:]:
        assert result.lr == min(result.tuning, key=result.tuning.get)


def test_recipes_can_be_chosen_on_val_draws_leaving_the_test_split_unseen(checkpoint):
    task = SpyTask()
    compare([checkpoint], task, num_steps=2, num_problems=2, split="val", baselines=["sgd"], lrs=[0.1],
            tune_problems=1, out_dir=None, progress=False)  # fmt: skip
    assert [s for s, _ in task.draws] == ["train", "val", "val"]


def test_every_optimizer_starts_from_the_same_parameters(checkpoint):
    results = compare([checkpoint], QuadraticTask(dim=3, num_problems=4), num_steps=1, num_problems=1,
                      baselines=["sgd"], lrs=[1e-9], tune_problems=1, out_dir=None, progress=False)  # fmt: skip
    task = QuadraticTask(dim=3, num_problems=4)
    problem = task.sample(torch.Generator().manual_seed(30_000), split="test")
    initial = problem.loss(problem.initial_params(), 0)
    torch.testing.assert_close(results[1].curves[0], initial, rtol=1e-6, atol=1e-6)  # sgd with lr≈0 stays put


def test_outputs_table_figure_and_overlaying_tensorboard_runs(checkpoint, tmp_path):
    compare([checkpoint], QuadraticTask(dim=3, num_problems=4), num_steps=4, num_problems=2, baselines=["nag"],
            lrs=[0.01], tune_problems=1, out_dir=str(tmp_path), progress=False)  # fmt: skip
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["optimizer"] for r in rows] == ["tiny", "nag"] and rows[1]["lr"] == "0.01"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["settings"]["task"]["init_args"]["dim"] == 3 and data["results"][0]["num_optimizees"] == 8
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in ("tiny", "nag"):
        events = EventAccumulator(str(tmp_path / "tensorboard" / name))
        events.Reload()
        assert [e.step for e in events.Scalars("compare/mean_loss")] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(baselines=["adagrad"]), "unknown baselines"),
        (dict(num_problems=0), "num_problems=0"),
        (dict(lrs=[]), "lrs="),
        (dict(split="train"), "split='train'; allowed: 'test', 'val'"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        compare([], QuadraticTask(), out_dir=None, progress=False, **kwargs)


def test_command_line(checkpoint, tmp_path, capsys):
    main(["compare", "--learned", f"[mine={checkpoint}]", "--task", "l2l_lightning.QuadraticTask",
          "--task.dim", "3", "--num_steps", "3", "--num_problems", "1", "--baselines", "[adam]",
          "--lrs", "[0.1]", "--tune_problems", "1", "--out_dir", str(tmp_path), "--progress", "false"])  # fmt: skip
    out = capsys.readouterr().out
    assert "mine" in out and "adam" in out and (tmp_path / "results.json").exists()


def test_command_line_unknown_pretrained_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--learned", "[no_such_optimizer]", "--task", "l2l_lightning.QuadraticTask",
              "--out_dir", str(tmp_path), "--progress", "false"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "no_such_optimizer" in capsys.readouterr().err
