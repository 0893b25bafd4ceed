"""Fixtures for the deployment tests: small nets built on the fly, never shipped files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import lightning as L
import pytest
import torch

from l2l_lightning import CoordinatewiseLSTM, MetaLearner, QuadraticTask
from l2l_lightning.optim import pretrained

REPO = Path(__file__).resolve().parents[2]


def quiet_trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


@pytest.fixture(scope="session")
def meta_trained(tmp_path_factory) -> tuple[CoordinatewiseLSTM, Path]:
    """A net meta-trained for 100 truncations on quadratics (log_sign, so it is scale-robust).

    Returns the net and the MetaLearner checkpoint it came from.  About 2 s on one core;
    tests check that this net really reduces an MLP's loss where an untrained one does not.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        L.seed_everything(0, verbose=False)
        module = MetaLearner(
            QuadraticTask(dim=10, num_problems=32),
            net=CoordinatewiseLSTM(preprocess="log_sign", output_scale=0.1),
            num_steps=100,
            unroll=20,
            truncations_per_epoch=100,
        )
        trainer = quiet_trainer(max_steps=100, limit_val_batches=0, gradient_clip_val=1.0)
        trainer.fit(module)
        ckpt = tmp_path_factory.mktemp("meta") / "quadratic.ckpt"
        trainer.save_checkpoint(ckpt)
    finally:
        torch.set_num_threads(threads)
    return module.net.eval(), ckpt


@pytest.fixture
def trained_net(meta_trained) -> CoordinatewiseLSTM:
    return meta_trained[0]


@pytest.fixture
def small_net() -> CoordinatewiseLSTM:
    """An untrained net: enough for tests of mechanics (its updates are arbitrary but deterministic)."""
    torch.manual_seed(1234)
    return CoordinatewiseLSTM(hidden_size=8, num_layers=2, preprocess="log_sign", output_scale=0.01)


#: The real shipped-optimizer directory, captured before any test redirects it.
SHIPPED_DIR = pretrained.PRETRAINED_DIR


@pytest.fixture(autouse=True)
def pretrained_dir(tmp_path, monkeypatch) -> Path:
    """Point the shipped-optimizer directory at an empty temporary one, for every test here.

    Tests never write into (or depend on) the package's real ``pretrained/`` directory.
    """
    directory = tmp_path / "pretrained"
    directory.mkdir()
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", directory)
    return directory


def _import_example(name: str) -> ModuleType:
    """``examples/<name>.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def example() -> ModuleType:
    """``examples/mlp_with_learned_optimizer.py`` imported as a module."""
    return _import_example("mlp_with_learned_optimizer")


@pytest.fixture(scope="session")
def cnn_example() -> ModuleType:
    """``examples/cnn_with_learned_optimizer.py`` imported as a module."""
    return _import_example("cnn_with_learned_optimizer")
