"""The whole bench on a tiny suite (every model family, fake data): outputs, cache, resume, bad input."""

import csv
import json

import pytest

from l2l_lightning.bench import suite as suite_module
from l2l_lightning.bench.suite import bench
from l2l_lightning.cli import main
from tests.bench.fixtures import LSQ, make_suite, write_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    return make_suite(tmp_path_factory.mktemp("bench"))


def test_quick_bench_writes_every_output_and_a_second_run_is_all_cache(tiny_suite, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    kwargs = dict(optimizers=["quadratic", "torch.optim.RMSprop"], suite=str(tiny_suite), quick=True, out_dir=str(out), cache_dir=str(cache), progress=False)
    result = bench(**kwargs)
    names = sorted(t.task.name for t in result.tasks)
    assert names == ["art", "autoencoder", "cnn_bn", "lm", "lsq", "mlp"]
    labels = ["adam", "adam_cosine", "nag", "adamw", "quadratic", "RMSprop"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == len(names) * len(labels)
    document = json.loads((out / "results.json").read_text())
    assert [a["optimizer"] for a in document["aggregate"]] == labels
    row = next(r for r in document["results"] if r["optimizer"] == "quadratic")
    for key in ("final_loss", "k", "ratio_to_best_baseline", "speedup", "adam_reaches", "win", "diverged", "step_time_ratio_to_adam"):
        assert key in row
    assert row["lr"] == 1.0 and not row["tuned"]
    adam = [r for r in document["results"] if r["optimizer"] == "adam"]
    assert all(r["step_time_ratio_to_adam"] == 1.0 for r in adam)
    assert all(len(r["scores_per_lr"]) >= 3 for r in adam)  # quick: every other rate of the 6-rate grid (+ extensions)
    aggregate = document["aggregate"][4]
    assert aggregate["iqm_speedup_low"] <= aggregate["iqm_speedup"] <= aggregate["iqm_speedup_high"]
    assert sorted(p.name for p in (out / "curves").iterdir()) == [f"{n}.png" for n in names]
    assert (out / "summary.png").stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for label in labels:
        runs = EventAccumulator(str(next((out / "tensorboard" / label).iterdir()))).Reload()
        tags.add(tuple(sorted(runs.Tags()["scalars"])))
    assert tags == {tuple(sorted(f"{n}/train_loss" for n in names))}  # one tag per task, the same in every run: they overlay
    made = document["settings"]["runs_made"]
    assert made > 0 and document["settings"]["cache_hits"] == 0

    again = bench(**kwargs)
    assert again.settings["runs_made"] == 0 and again.settings["cache_hits"] == made
    assert [r["final_loss"] for t in again.tasks for r in t.rows] == [r["final_loss"] for t in result.tasks for r in t.rows]


def test_an_interrupted_bench_resumes_without_redoing_finished_runs(tmp_path, monkeypatch):
    suite = tmp_path / "suite"
    write_task(suite, "lsq", LSQ)
    kwargs = dict(optimizers=[], suite=str(suite), quick=True, out_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), progress=False)
    real_train, calls = suite_module.train, []

    def interrupted(*args, **kw):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(1)
        return real_train(*args, **kw)

    monkeypatch.setattr(suite_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench(**kwargs)
    monkeypatch.setattr(suite_module, "train", real_train)
    result = bench(**kwargs)
    assert result.settings["cache_hits"] == 5


def test_a_diverging_optimizer_is_flagged_and_the_bench_goes_on(tmp_path):
    suite = tmp_path / "suite"
    write_task(suite, "lsq", LSQ)
    write_task(suite, "lsq2", {**LSQ, "steps": 30})
    result = bench(
        optimizers=["torch.optim.SGD"], grids={"torch": [1e4, 1e5]}, suite=str(suite), quick=True, out_dir=None,
        no_cache=True, progress=False,
    )  # fmt: skip
    rows = [row for t in result.tasks for row in t.rows if row["optimizer"] == "SGD"]
    assert len(rows) == 2 and all(row["diverged"] and row["speedup"] == 0 and not row["win"] for row in rows)
    assert next(a for a in result.aggregate if a["optimizer"] == "SGD")["diverged"] == 2


def test_the_command_prints_the_table(tiny_suite, tmp_path, capsys):
    main(["bench", "--quick", "--optimizers", "[neural_art]", "--suite", str(tiny_suite), "--tasks", "lsq,m*",
          "--out_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), "--progress", "false"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "lsq (30 steps; final loss = mean of the last k=2 steps" in printed and "mlp (30 steps" in printed
    assert "IQM speedup [95% CI]" in printed and "neural_art" in printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optimizers", "[no_such_optimizer]"], "unknown optimizer 'no_such_optimizer'"),
        (["--optimizers", "[torch.optim.Nope]"], "unknown optimizer 'torch.optim.Nope'"),
        (["--tasks", "[rnn*]"], "--tasks rnn\\* matches no task"),
        (["--out_dir", "{file}/out"], "out_dir .* is not writable"),
        (["--baselines", "[nag]"], "has no Adam"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    suite = tmp_path / "suite"
    write_task(suite, "lsq", LSQ)
    (tmp_path / "file").write_text("")
    args = [a.replace("{file}", str(tmp_path / "file")) for a in args]
    with pytest.raises(SystemExit) as exit:
        main(["bench", "--quick", "--suite", str(suite), "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out"), *args])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("l2l: error: ")
    import re

    assert re.search(message, error), error


def test_a_task_that_fails_to_build_is_named_before_any_run(tmp_path, capsys):
    suite = tmp_path / "suite"
    write_task(suite, "good", LSQ)
    write_task(suite, "bad", {**LSQ, "data": {"class_path": "l2l_lightning.bench.data.CharText", "init_args": {"root": str(tmp_path / "none")}}})
    with pytest.raises(SystemExit):
        main(["bench", "--quick", "--suite", str(suite), "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert error.startswith("l2l: error: task bad: text folder") and "apt-get install fortunes" in error
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.json"))


def test_print_config_lists_every_setting(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--print_config"])
    printed = capsys.readouterr().out
    for key in ("optimizers:", "suite:", "tasks:", "baselines:", "grids:", "seeds:", "learned_lrs:", "out_dir:", "cache_dir:"):
        assert key in printed
