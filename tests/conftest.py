"""Shared fixtures: tiny problems and trainers that run in well under a second."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from l2l_lightning import CoordinatewiseLSTM, MetaLearner, QuadraticTask
from l2l_lightning.nets import LearnedOptimizerNet


def tiny_learner(**overrides) -> MetaLearner:
    kwargs = dict(
        task=QuadraticTask(dim=3, num_problems=4),
        net=CoordinatewiseLSTM(hidden_size=4, preprocess="none"),
        num_steps=4,
        unroll=2,
        truncations_per_epoch=4,
        baseline_lrs=(0.01, 0.1),
    )
    kwargs.update(overrides)
    return MetaLearner(**kwargs)


class MinimalNet(LearnedOptimizerNet):
    """``inner`` seen only through the three methods a net must implement: the base class's generic paths."""

    coordinate_dim = 2

    def __init__(self, inner: LearnedOptimizerNet) -> None:
        super().__init__()
        self.inner = inner

    @property
    def config(self) -> dict:
        return {}

    def state_shape(self, n: int) -> tuple[int, ...]:
        return self.inner.state_shape(n)

    def forward(self, grad, state, layout=None):
        return self.inner(grad, state, layout)


def fit_tiny(tmp_path, max_steps: int, ckpt_path=None, save=None, **learner_overrides) -> MetaLearner:
    """A tiny meta-training run from seed 0 (optionally resumed from ``ckpt_path``, then saved to ``save``)."""
    torch.manual_seed(0)
    learner = tiny_learner(**learner_overrides)
    trainer = tiny_trainer(tmp_path, max_steps=max_steps, enable_checkpointing=False)
    trainer.fit(learner, ckpt_path=ckpt_path)
    if save is not None:
        trainer.save_checkpoint(save)
    return learner


def tiny_trainer(tmp_path, **overrides) -> L.Trainer:
    kwargs = dict(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        max_steps=6,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """The tests' tensors are tiny: on a 2-core machine shared with other work, OpenMP threads
    only add waiting (a barrier per op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
