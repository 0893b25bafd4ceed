"""A user's own net (``examples/per_coordinate_mlp.py``, shown in the README) through every door:
YAML ``class_path`` for ``l2l fit``, resume, export, and ``LearnedOptimizer`` by path."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from l2l_lightning import CheckpointError, LearnedOptimizer, MetaLearner, QuadraticTask
from l2l_lightning.cli import main
from l2l_lightning.optim.pretrained import export
from tests.conftest import tiny_trainer

from tests.test_cli import CONFIG, FAST, ROOT

_STEPS = FAST.index("--trainer.max_steps")  # each run below sets its own
FAST = [*FAST[:_STEPS], *FAST[_STEPS + 2 :], "--model.task.init_args.num_problems", "8"]


@pytest.fixture
def own_net(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.setenv("L2L_ALLOWED_MODULES", "per_coordinate_mlp")  # files may name this module's classes
    from per_coordinate_mlp import PerCoordinateMLP

    return PerCoordinateMLP


def test_it_meta_trains(own_net, tmp_path):
    torch.manual_seed(0)
    learner = MetaLearner(task=QuadraticTask(dim=3, num_problems=8), net=own_net(hidden_size=8), num_steps=4, unroll=2)
    before = [p.detach().clone() for p in learner.net.parameters()]
    tiny_trainer(tmp_path, max_steps=6).fit(learner)
    after = list(learner.net.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert all(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.slow
def test_from_yaml_resumed_exported_and_deployed_by_path(own_net, tmp_path, monkeypatch):
    args = ["fit", "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST,
            "--model.net", "per_coordinate_mlp.PerCoordinateMLP", "--model.net.init_args.hidden_size", "8"]  # fmt: skip
    main([*args, "--trainer.max_steps", "3", "--test_after_fit", "false"])
    (last,) = tmp_path.glob("quadratic/version_0/checkpoints/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["l2l_net"] == {
        "class_path": "per_coordinate_mlp.PerCoordinateMLP",
        "init_args": {"hidden_size": 8, "decays": [0.5, 0.9, 0.99], "step_scale": 0.01},
    }

    main([*args, "--trainer.max_steps", "5", "--ckpt_path", str(last), "--test_after_fit", "false"])
    resumed = torch.load(tmp_path / "quadratic/version_1/checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == 5

    exported = export(tmp_path / "quadratic/version_1/checkpoints/last.ckpt", tmp_path / "mine.pt")
    monkeypatch.delenv("L2L_ALLOWED_MODULES")
    with pytest.raises(CheckpointError, match="L2L_ALLOWED_MODULES=per_coordinate_mlp"):
        LearnedOptimizer(nn.Linear(3, 2).parameters(), checkpoint=str(exported))  # a file names it: not imported
    monkeypatch.setenv("L2L_ALLOWED_MODULES", "per_coordinate_mlp")
    model = nn.Linear(3, 2)
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=str(exported))
    assert isinstance(optimizer.net, own_net)
    params = list(model.parameters())
    state = optimizer.net.init_state(sum(p.numel() for p in params))
    for step in range(3):
        generator = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        before = torch.cat([p.detach().reshape(-1) for p in params])
        expected, state = optimizer.net(torch.cat([p.grad.reshape(-1) for p in params]), state)
        optimizer.step()
        torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in params]) - before, expected)
    assert optimizer.state[params[0]]["net_state"].shape == (4, 6)  # the net's own state shape, per parameter
    again = LearnedOptimizer(model.parameters(), checkpoint=str(exported))
    again.load_state_dict(optimizer.state_dict())
    assert torch.equal(again.state[params[0]]["net_state"], optimizer.state[params[0]]["net_state"])


def test_the_readme_shows_the_example_verbatim():
    """The README's thirty lines are the tested file's, not a drifting copy."""
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "examples" / "per_coordinate_mlp.py").read_text()
    start = "class PerCoordinateMLP(LearnedOptimizerNet):"
    shown = readme[readme.index(start) : readme.index("```", readme.index(start))].strip()
    assert shown == example[example.index(start) :].strip()
    assert len(shown.splitlines()) <= 35
