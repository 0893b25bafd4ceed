"""``examples/cnn_with_learned_optimizer.py``: issue #20's drop-in figure, on tiny synthetic Fashion-MNIST files.

The real figure (300 and 1,500 steps on the real images) takes minutes; here the example's own
code runs a few steps on 30 random 28×28 images in Fashion-MNIST's IDX format, with an
untrained net standing in for the shipped optimizer (this folder hides the shipped files).
"""

from __future__ import annotations

import json
import math

import pytest

from l2l_lightning import LearnedOptimizer, LearnedOptimizerCallback
from tests.data.fixtures import write_mnist


@pytest.fixture
def tiny_root(tmp_path, cnn_example, monkeypatch):
    """A flat folder of the four IDX files (40 training images; 10 held out as validation)."""
    monkeypatch.setattr(cnn_example, "VAL_SIZE", 10)
    return write_mnist(tmp_path / "fashion-mnist", folder="")


def test_the_table_and_json_hold_both_optimizers_finite_numbers(cnn_example, small_net, tiny_root, tmp_path, capsys):
    out = tmp_path / "cnn.json"
    argv = ["--steps", "5,3", "--seeds", "0,1", "--data_root", str(tiny_root), "--json", str(out)]
    rows = cnn_example.main(argv, checkpoint=small_net)
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert lines[0].startswith("final train loss: mean over the last 50 steps") and "seeds 0, 1" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["5", "3"]
    assert all(line.endswith(("learned wins", "Adam wins")) for line in lines[2:])
    assert "Traceback" not in printed.err and "GPU available" not in printed.err  # quiet
    report = json.loads(out.read_text())
    assert report["seeds"] == [0, 1] and report["batch_size"] == 64
    assert [row["steps"] for row in report["horizons"]] == [5, 3]
    for row, returned in zip(report["horizons"], rows, strict=True):
        learned, adam = row["learned"], row["adam"]
        assert row["final_steps"] == row["steps"]  # shorter than 50: every step counts
        assert learned["lr"] == 1.0  # no --lr: the learned optimizer's own default
        assert len(learned["per_seed"]) == len(adam["per_seed"]) == 2
        for value in (learned["final_loss"], adam["final_loss"], *learned["per_seed"], *adam["per_seed"]):
            assert value is not None and math.isfinite(value) and value > 0
        assert adam["lr"] in [point["lr"] for point in adam["grid"]]
        assert adam["final_loss"] == min(point["final_loss"] for point in adam["grid"])
        assert {point["lr"] for point in adam["grid"]} >= set(cnn_example.ADAM_LRS)
        assert row["winner"] == ("learned" if learned["final_loss"] < adam["final_loss"] else "adam")
        assert returned["learned"]["final_loss"] == pytest.approx(learned["final_loss"])


def test_both_optimizers_start_from_the_same_weights_and_batches(cnn_example, small_net, tiny_root):
    data = cnn_example.fashion_mnist_train(tiny_root)
    adam, adam_optimizer = cnn_example.train(data, seed=3, steps=4, adam_lr=1e-3)
    learned, optimizer = cnn_example.train(data, seed=3, steps=4, callbacks=[LearnedOptimizerCallback(small_net)])
    assert isinstance(optimizer, LearnedOptimizer) and not isinstance(adam_optimizer, LearnedOptimizer)
    assert len(adam) == len(learned) == 4
    assert learned[0] == adam[0]  # the loss before any update: same initial weights, same first batch
    assert cnn_example.train(data, seed=3, steps=4, adam_lr=1e-3)[0] == adam  # deterministic


def test_adam_grid_is_extended_past_an_edge_as_l2l_compare_does(cnn_example):
    tried = []

    def score(lr):  # the larger the better: the grid grows upwards, at most 3 times by 3×
        tried.append(lr)
        return 1 / lr

    best, scores = cnn_example.tune_adam(score, cnn_example.ADAM_LRS)
    assert tried[6:] == [0.09, 0.27, 0.81] and best == 0.81 and list(scores) == sorted(tried)
    best, _ = cnn_example.tune_adam(lambda lr: abs(math.log(lr / 1e-3)), cnn_example.ADAM_LRS)
    assert best == 1e-3


def test_a_missing_dataset_is_one_clear_error_line(cnn_example, tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(SystemExit) as exit_info:
        cnn_example.main(["--steps", "5", "--data_root", str(missing)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cnn_with_learned_optimizer.py: error: Fashion-MNIST's training files not found under ")
    assert str(missing) in err and "apt-get install dataset-fashion-mnist" in err and "Traceback" not in err


@pytest.mark.parametrize("flag", [["--steps", "0"], ["--steps", "300,x"], ["--seeds", "-1"], ["--adam_lrs", "0"]])
def test_bad_lists_are_refused_by_the_parser(cnn_example, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cnn_example.main(flag)
    assert exit_info.value.code == 2 and "is not a comma-separated list of" in capsys.readouterr().err
