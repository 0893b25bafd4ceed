"""``MetaLearner(init_from=...)``: fine-tuning a trained optimizer."""

from __future__ import annotations

import pytest
import torch

from l2l_lightning import ConfigError, CoordinatewiseLSTM, MetaLearner
from l2l_lightning.optim.pretrained import export, load_net
from tests.conftest import fit_tiny, tiny_learner, tiny_trainer


@pytest.fixture
def trained_file(tmp_path):
    """An exported tiny optimizer whose weights differ from a fresh net's."""
    fit_tiny(tmp_path, max_steps=3, save=tmp_path / "run.ckpt")
    return export(tmp_path / "run.ckpt", tmp_path / "tiny.pt")


def _weights(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_fine_tuning_starts_from_the_files_weights_and_trains_them(tmp_path, trained_file):
    expected = _weights(load_net(trained_file))
    learner = tiny_learner(init_from=str(trained_file))
    start = _weights(learner.net)
    assert start.keys() == expected.keys()
    assert all(torch.equal(start[k], expected[k]) for k in expected)
    assert all(p.requires_grad for p in learner.net.parameters())
    tiny_trainer(tmp_path, max_steps=2).fit(learner)
    assert any(not torch.equal(learner.net.state_dict()[k], start[k]) for k in start)


def test_without_a_net_the_files_own_net_is_fine_tuned(trained_file):
    learner = tiny_learner(net=None, init_from=str(trained_file))
    assert learner.net.spec == load_net(trained_file).spec
    assert learner.net.training and all(p.requires_grad for p in learner.net.parameters())


def test_a_net_that_does_not_match_the_file_is_a_config_error(trained_file):
    with pytest.raises(ConfigError, match="init_from=.*holds.*but model.net is"):
        tiny_learner(net=CoordinatewiseLSTM(hidden_size=5, preprocess="none"), init_from=str(trained_file))


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="init_from=.*no such file"):
        tiny_learner(init_from=str(tmp_path / "missing.pt"))


def test_a_fine_tuned_checkpoint_loads_after_its_source_file_is_gone(tmp_path, trained_file):
    learner = tiny_learner(init_from=str(trained_file))
    trainer = tiny_trainer(tmp_path, max_steps=2, enable_checkpointing=False)
    trainer.fit(learner)
    trainer.save_checkpoint(tmp_path / "tuned.ckpt")
    trained_file.unlink()
    loaded = MetaLearner.load_from_checkpoint(tmp_path / "tuned.ckpt", task=learner.task)
    assert all(torch.equal(a, b) for a, b in zip(loaded.net.state_dict().values(), learner.net.state_dict().values()))
