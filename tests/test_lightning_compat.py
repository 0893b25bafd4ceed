"""The Lightning internals l2l_lightning relies on (``l2l_lightning/lightning_compat.py``) still behave as assumed.

If one of these fails after a Lightning upgrade, fix ``lightning_compat.py`` (and only it).
"""

from __future__ import annotations

import inspect

import torch
from lightning.pytorch.cli import LightningCLI
from torch import nn

from l2l_lightning.cli import L2LCLI
import importlib

from lightning.pytorch.core import saving

from l2l_lightning.lightning_compat import CHECKPOINT_HPARAMS_METHOD, CLI_INSTANTIATOR, INSTANTIATOR_KEY, split_optimizer_config


def test_lightning_cli_still_applies_checkpoint_hparams_in_the_method_l2l_overrides():
    method = getattr(LightningCLI, CHECKPOINT_HPARAMS_METHOD, None)
    assert method is not None, (
        f"LightningCLI.{CHECKPOINT_HPARAMS_METHOD} is gone: l2l test --ckpt_path would let the checkpoint's "
        "hyper-parameters override the command line again; update l2l_lightning/lightning_compat.py"
    )
    assert "hyper_parameters" in inspect.getsource(method), "it no longer reads the checkpoint's hyper-parameters"
    assert "_run_subcommand" in inspect.getsource(LightningCLI) and CHECKPOINT_HPARAMS_METHOD in inspect.getsource(
        LightningCLI.__init__
    ), f"LightningCLI.__init__ no longer calls {CHECKPOINT_HPARAMS_METHOD}"
    assert getattr(L2LCLI, CHECKPOINT_HPARAMS_METHOD) is L2LCLI._ignore_checkpoint_hparams


def test_configure_optimizers_output_is_still_parsed_as_assumed():
    model = nn.Linear(2, 2)
    adam = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(adam, step_size=1)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    assert split_optimizer_config(adam) == ([adam], [])
    optimizers, schedulers = split_optimizer_config({"optimizer": adam, "lr_scheduler": scheduler})
    assert optimizers == [adam] and schedulers == [scheduler]
    optimizers, schedulers = split_optimizer_config(([adam, sgd], [scheduler]))
    assert optimizers == [adam, sgd] and len(schedulers) == 1


def test_the_checkpoint_loader_still_builds_modules_with_the_instantiator_named_in_the_hparams():
    assert f'"{INSTANTIATOR_KEY}"' in inspect.getsource(saving), (
        f"lightning.pytorch.core.saving no longer reads the {INSTANTIATOR_KEY!r} hyper-parameter: "
        "MetaLearner.load_from_checkpoint cannot rebuild task and net; update l2l_lightning/lightning_compat.py"
    )
    module, _, name = CLI_INSTANTIATOR.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name, None)), f"{CLI_INSTANTIATOR} is gone"


def test_lightning_still_resolves_checkpoint_keywords_where_l2l_asks(tmp_path):
    import lightning as L

    from l2l_lightning.lightning_compat import is_registry, resolve_ckpt_keyword

    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    assert resolve_ckpt_keyword(trainer, "test", "last") is None  # Lightning would only warn
    (tmp_path / "hpc_ckpt_3.ckpt").write_bytes(b"")
    assert resolve_ckpt_keyword(trainer, "test", "hpc") == str(tmp_path / "hpc_ckpt_3.ckpt")
    assert resolve_ckpt_keyword(trainer, "test", str(tmp_path / "x.ckpt")) == str(tmp_path / "x.ckpt")
    # Lightning's registry test, and only with litmodels installed (not here: every value is a file)
    assert not is_registry("registry_x.ckpt") and not is_registry("my_registry")
