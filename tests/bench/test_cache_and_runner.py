"""One training run (deterministic, divergence recorded) and the cache of runs (version-checked)."""

import math

import torch

from l2l_lightning.bench.cache import RunCache
from l2l_lightning.bench.optimizers import DEFAULT_GRIDS, baseline, contender
from l2l_lightning.bench.runner import Run, train
from l2l_lightning.bench.spec import BenchTask
from tests.bench.fixtures import LSQ

TASK = BenchTask("lsq", 30, LSQ["model"], LSQ["data"], "mse")


def test_a_run_is_deterministic_and_its_seed_matters():
    adam = baseline("adam", DEFAULT_GRIDS)
    a, b = train(TASK, adam, 0.01, seed=0), train(TASK, adam, 0.01, seed=0)
    assert a.curve == b.curve and len(a.curve) == 30 and not a.diverged
    assert train(TASK, adam, 0.01, seed=1).curve != a.curve


def test_every_optimizer_sees_the_same_first_loss_on_a_seed():
    firsts = {train(TASK, baseline(name, DEFAULT_GRIDS), 0.01, seed=2, steps=2).curve[0] for name in ("adam", "nag", "adamw")}
    assert len(firsts) == 1


def test_a_diverging_run_is_recorded_as_diverged_not_raised():
    run = train(TASK, baseline("nag", DEFAULT_GRIDS), 1e4, seed=0)
    assert run.diverged and math.isnan(run.curve[-1]) and len(run.curve) == 30


def test_cosine_decays_the_rate_to_zero_over_the_task():
    adam = baseline("adam_cosine", DEFAULT_GRIDS)
    optimizer = adam.factory([torch.nn.Parameter(torch.zeros(1))], 0.1, 100)
    from l2l_lightning.bench.optimizers import scheduler

    schedule = scheduler(optimizer, adam.schedule, 10)
    for _ in range(10):
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] < 1e-12


def test_a_learned_optimizer_runs_at_its_shipped_rate_and_at_asked_ones():
    runs = contender("fashion_mnist", DEFAULT_GRIDS, [0.5])
    assert [(c.label, c.lrs, c.tuned) for c in runs] == [("fashion_mnist", [1.0], False), ("fashion_mnist@0.5", [0.5], False)]
    assert runs[0].identity.startswith("learned:")
    assert not train(TASK, runs[0], 1.0, seed=0, steps=5).diverged
    torch_class = contender("sgd=torch.optim.SGD", DEFAULT_GRIDS, [])[0]
    assert torch_class.label == "sgd" and torch_class.tuned and torch_class.lrs == DEFAULT_GRIDS["torch"]


def test_the_cache_returns_a_run_and_ignores_another_versions_entry_with_a_note(tmp_path):
    notes = []
    run = Run([1.0, 0.5], False, [0.01, 0.01])
    old = RunCache(tmp_path, notes.append, version="0.0.1")
    old.put("task", "baseline:adam", "constant", 0.01, 0, run)
    assert old.get("task", "baseline:adam", "constant", 0.01, 0) == run
    assert old.get("task", "baseline:adam", "constant", 0.01, 1) is None  # another seed: another entry
    new = RunCache(tmp_path, notes.append, version="0.0.2")
    assert new.get("task", "baseline:adam", "constant", 0.01, 0) is None
    assert new.get("task", "baseline:adam", "constant", 0.01, 0) is None
    assert notes == ["note: cached runs from l2l-lightning 0.0.1 are ignored (this is 0.0.2); they are run again"]
    new.put("task", "baseline:adam", "constant", 0.01, 0, run)
    assert new.get("task", "baseline:adam", "constant", 0.01, 0) == run


def test_a_dotted_file_name_is_a_learned_optimizer_not_a_class_path(tmp_path, monkeypatch):
    import shutil

    from l2l_lightning.optim.pretrained import path_of

    monkeypatch.chdir(tmp_path)
    shutil.copy(path_of("quadratic"), tmp_path / "my.optimizer")
    mine = contender("my.optimizer", DEFAULT_GRIDS, [])[0]
    assert not mine.tuned and mine.identity == contender("quadratic", DEFAULT_GRIDS, [])[0].identity


def test_a_learned_schedule_is_told_the_task_length(tmp_path):
    from l2l_lightning import FeatureMLP
    from l2l_lightning.safe_load import atomic_save
    from l2l_lightning.serialization import FORMAT, FORMAT_VERSION

    net = FeatureMLP(schedule=True)
    atomic_save({"format": FORMAT, "format_version": FORMAT_VERSION, **net.spec, "state_dict": net.state_dict(), "metadata": {}},
                tmp_path / "scheduled.pt")  # fmt: skip
    (scheduled,) = contender(str(tmp_path / "scheduled.pt"), DEFAULT_GRIDS, [])
    optimizer = scheduled.factory([torch.nn.Parameter(torch.zeros(3))], 1.0, TASK.steps)
    assert optimizer.param_groups[0]["total_steps"] == TASK.steps
    assert not train(TASK, scheduled, 1.0, seed=0, steps=5).diverged
