"""Tasks as YAML: the default suite's shape, filters, and one-line errors naming the task."""

from collections import Counter

import pytest
import yaml

from l2l_lightning.bench.spec import BenchTask, default_suite, load_suite
from l2l_lightning.errors import ConfigError, DatasetError
from tests.bench.fixtures import LSQ, write_task


def test_the_default_suite_has_ten_tasks_at_the_asked_horizons_and_no_mnist_digits():
    tasks = load_suite(default_suite())
    assert len(tasks) >= 10
    horizons = Counter(t.steps for t in tasks)
    assert horizons[5000] == 2 and horizons[10_000] == 1 and horizons[1000] == len(tasks) - 3
    for path in default_suite().glob("*.yaml"):
        text = path.read_text().lower()
        assert "dataset: mnist" not in text and "datasets/mnist" not in text, path


def test_every_default_model_builds_without_data():
    for task in load_suite(default_suite()):
        if "NeuralArt" in task.model["class_path"]:
            continue  # reads photographs: exercised on fake images in test_suite.py
        model = task.build_model(0)
        assert sum(p.numel() for p in model.parameters()) < 100_000, task.name  # the CPU budget


def test_the_same_seed_builds_the_same_weights_and_leaves_the_global_generator_alone():
    import torch

    task = BenchTask("t", 10, LSQ["model"], LSQ["data"], "mse")
    state = torch.random.get_rng_state()
    a, b = task.build_model(3), task.build_model(3)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, task.build_model(4).weight)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_the_filter_takes_globs_and_names_what_it_misses(tmp_path):
    for name in ("mlp_a", "mlp_b", "cnn"):
        write_task(tmp_path, name, LSQ)
    assert [t.name for t in load_suite(tmp_path, ["mlp_*"])] == ["mlp_a", "mlp_b"]
    with pytest.raises(ConfigError, match="matches no task; tasks in .*: cnn, mlp_a, mlp_b"):
        load_suite(tmp_path, ["rnn*"])
    with pytest.raises(ConfigError, match="unknown task transformer"):
        load_suite(tmp_path, ["cnn", "transformer"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": {"class_path": "l2l_lightning.bench.models.MLP", "init_args": {"in_features": 5}}},
         "task broken: model l2l_lightning.bench.models.MLP fails to build: TypeError"),
        ({"model": {"class_path": "l2l_lightning.bench.models.Nope"}}, "task broken: model: cannot import"),
        ({"model": {"class_path": "l2l_lightning.bench.models.MLP", "init_args": {"in_features": 5, "hidden": [2], "out_features": 1, "activation": "swish"}}},
         "task broken: model .*activation='swish'; allowed"),
        ({"data": {"class_path": "l2l_lightning.bench.data.ImageClassification", "init_args": {"dataset": "mnist"}}},
         "task broken: data .*MNIST digits are reserved"),
        ({"loss": "hinge"}, "task broken: loss='hinge'"),
        ({"steps": 0}, "task broken: steps=0"),
    ],
)  # fmt: skip
def test_a_broken_task_is_named(tmp_path, change, message):
    write_task(tmp_path, "broken", {**LSQ, **change})
    with pytest.raises(ConfigError, match=message):
        task = load_suite(tmp_path)[0]
        task.build_model(0)
        task.build_data()


@pytest.mark.parametrize(
    "data, install",
    [
        ({"class_path": "l2l_lightning.bench.data.ImageClassification", "init_args": {"root": "/nonexistent"}}, "apt-get install dataset-fashion-mnist"),
        ({"class_path": "l2l_lightning.bench.data.CharText", "init_args": {"root": "/nonexistent"}}, "apt-get install fortunes"),
    ],
)
def test_a_missing_data_folder_names_the_task_and_how_to_install_it(tmp_path, data, install):
    write_task(tmp_path, "needs_data", {**LSQ, "data": data})
    with pytest.raises(DatasetError, match=f"task needs_data: .*{install}"):
        load_suite(tmp_path)[0].build_data()


def test_a_file_that_is_not_a_task_is_named(tmp_path):
    (tmp_path / "odd.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="task odd: .* must be a mapping with steps, model and data"):
        load_suite(tmp_path)
