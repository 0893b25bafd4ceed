"""The benchmark scripts run (tiny sizes, one repeat): a smoke test, never a timing test."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_step_overhead_runs(capsys):
    out = _load("step_overhead").main(["--sizes", "300,2k", "--naive-max", "2k", "--repeats", "1", "--threads", "1"])
    assert "| 2k (" in out and "naive / ours" in out
    assert "×" in [line for line in out.splitlines() if line.startswith("| 2k (")][0]
    assert capsys.readouterr().out.strip() == out.strip()


def test_feature_step_runs():
    out = _load("feature_step").main(["--sizes", "2k", "--repeats", "1", "--threads", "1"])
    row = [line for line in out.splitlines() if line.startswith("| 2k (")][0]
    assert row.count("×") == 4 and "320 B" in row


def test_meta_throughput_runs():
    out = _load("meta_throughput").main(
        ["--repeats", "1", "--threads", "1", "--quadratic-problems", "4", "--mlp", "12,5,3", "--stack", "1,2"]
    )
    assert "quadratic 4×10" in out and "12-5-3" in out and "2 stacked (vmap)" in out


def test_gpu_check_script_is_there_and_executable():
    script = BENCHMARKS / "gpu_check.sh"
    assert script.exists() and script.stat().st_mode & 0o111
    text = script.read_text()
    assert "set_sync_debug_mode" in text and "step_overhead.py" in text and "meta_throughput.py" in text
    assert "tests/optim/fsdp_worker.py" in text and (BENCHMARKS.parent / "tests" / "optim" / "fsdp_worker.py").exists()


def test_step_vs_revision_runs_against_head():
    out = _load("step_vs_revision").main(["--rev", "HEAD", "--sizes", "2k", "--repeats", "1", "--threads", "1", "--with-gac"])
    row = [line for line in out.splitlines() if line.startswith("| 2k (")][0]
    assert "| yes " in row and "×" in row  # HEAD's package steps exactly like the working tree's


@pytest.mark.slow
def test_cli_startup_runs():
    out = _load("cli_startup").main(["--rounds", "1"])
    assert "`l2l fit --help`" in out and "`l2l compare --help`" in out and "÷ import lightning" in out


def test_lr_ranges_runs():
    out = _load("lr_ranges").main(["--steps", "1", "--optimizers", "adam,fashion_mnist"])
    assert "| fashion_mnist | 0.1 " in out and "MLP 784-64-10" in out


@pytest.mark.slow
def test_import_time_runs():
    out = _load("import_time").main(["--rounds", "1"])
    assert "from l2l_lightning.optim import LearnedOptimizer" in out and "÷ import torch" in out
    assert "Inside one process: `import torch`" in out and "×** `import torch`" in out



def test_neural_art_step_runs():
    out = _load("neural_art_step").main(
        ["--repeats", "1", "--threads", "1", "--resolutions", "32", "--images", "1", "--channels", "4,8", "--unroll", "2"]
    )
    assert "| random   | 32×32" in out and "| vgg19    | 32×32" in out and "random weights" in out


@pytest.mark.slow
def test_busy_machine_runs():
    quick = "--model.val_problems 1 --model.num_steps 20 --model.unroll 10 --model.baseline_lrs [0.1] --trainer.logger false"
    out = _load("busy_machine").main(["--epochs", "1", "--truncations", "2", "--cli-args", quick, "--timeout", "300"])
    rows = [line for line in out.splitlines() if line.startswith("| old") or line.startswith("| new default")]
    assert len(rows) == 2 and all("×" in row for row in rows)
    assert "goal: the default's busy run" in out
