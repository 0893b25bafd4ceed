"""LearnedOptimizer inside Lightning: precision, resume, the callback, LightningCLI, fine-tuning."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins import MixedPrecision

from l2l_lightning import (
    CheckpointError, ConfigError, CoordinatewiseLSTM, FeatureMLP, LearnedOptimizer, LearnedOptimizerCallback,
)
from l2l_lightning.optim import SkippedStepWarning
from l2l_lightning.optim.pretrained import export

from .conftest import quiet_trainer


# ------------------------------------------------------------ the figures
@pytest.mark.parametrize("way", ["module", "callback"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_stock_module_trains_and_its_loss_falls(example, trained_net, precision, way):
    args = ["--way", way, "--precision", precision, "--max-epochs", "5", "--lr", "1.0", "--no-baseline"]
    losses = example.main(args, checkpoint=trained_net)
    assert len(losses) == 5
    assert losses[-1] < 0.2 * losses[0], losses


def test_the_trained_net_is_what_makes_the_loss_fall(example):
    torch.manual_seed(0)
    untrained = CoordinatewiseLSTM(preprocess="log_sign", output_scale=0.1)
    losses = example.main(["--max-epochs", "5", "--lr", "1.0", "--no-baseline"], checkpoint=untrained)
    assert losses[-1] > 0.5 * losses[0], losses  # an untrained LSTM does not optimize: the figure above is earned


def test_the_example_prints_tuned_adam_beside_the_learned_optimizer(example, trained_net, capsys):
    example.main(["--max-epochs", "2"], checkpoint=trained_net)
    learned, adam = capsys.readouterr().out.strip().splitlines()[-2:]
    assert learned.startswith("LearnedOptimizer (lr 1): mean training loss")
    assert adam.startswith("Adam, lr tuned on [0.001, 0.003, 0.01, 0.03, 0.1, 0.3] (best ") and "(epoch 2)" in adam


# ------------------------------------------------------------ resume
def _fit(example, way, net, tmp_path, epochs, ckpt_path=None, save=None, state_dtype="float32"):
    """Fit for whole epochs without shuffling: what resumes exactly.  Lightning restores neither a plain
    DataLoader's position inside an epoch nor the RNG a shuffling sampler draws from, so a shuffled or
    mid-epoch resume sees other batches (for Adam too); that is the data's reproducibility, not the
    optimizer's, and the README says so where it promises resume."""
    torch.manual_seed(0)
    model, callbacks = example.build(way, net, state_dtype=state_dtype, shuffle=False)
    trainer = quiet_trainer(max_epochs=epochs, callbacks=callbacks, default_root_dir=tmp_path)
    trainer.fit(model, ckpt_path=ckpt_path)
    if save is not None:
        trainer.save_checkpoint(save)
    return model, trainer.optimizers[0]


@pytest.mark.parametrize("way,state_dtype", [("module", "float32"), ("callback", "bfloat16")])
def test_stop_and_resume_follows_the_same_trajectory_bit_for_bit(example, small_net, tmp_path, way, state_dtype):
    whole, whole_opt = _fit(example, way, small_net, tmp_path, epochs=4, state_dtype=state_dtype)
    _fit(example, way, small_net, tmp_path, epochs=2, save=tmp_path / "half.ckpt", state_dtype=state_dtype)
    half = tmp_path / "half.ckpt"
    resumed, resumed_opt = _fit(example, way, small_net, tmp_path, epochs=4, ckpt_path=half, state_dtype=state_dtype)
    assert isinstance(resumed_opt, LearnedOptimizer)
    assert resumed.epoch_losses[-2:] == whole.epoch_losses[-2:]
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
        sa, sb = whole_opt.state[a], resumed_opt.state[b]
        assert sa["step"] == sb["step"] == 32
        assert sb["net_state"].dtype == getattr(torch, state_dtype)
        assert torch.equal(sa["net_state"], sb["net_state"]), name


def test_resuming_with_another_net_is_refused(example, small_net, tmp_path):
    _fit(example, "module", small_net, tmp_path, epochs=1, save=tmp_path / "a.ckpt")
    torch.manual_seed(5)
    other = CoordinatewiseLSTM(hidden_size=8, preprocess="log_sign", output_scale=0.01)
    with pytest.raises(CheckpointError, match="different weights"):
        _fit(example, "module", other, tmp_path, epochs=2, ckpt_path=tmp_path / "a.ckpt")


# ------------------------------------------------------------ callback
class WithScheduler(BoringModel):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)]


def test_callback_replaces_the_optimizer_drops_schedulers_and_restores_the_module(small_net, tmp_path):
    model = WithScheduler()
    callback = LearnedOptimizerCallback(small_net, lr=0.5)
    trainer = quiet_trainer(max_steps=3, callbacks=[callback], default_root_dir=tmp_path, limit_val_batches=0)
    with pytest.warns(UserWarning, match="dropped 1 learning-rate scheduler"):
        trainer.fit(model)
    (optimizer,) = trainer.optimizers
    assert isinstance(optimizer, LearnedOptimizer) and trainer.lr_scheduler_configs == []
    assert optimizer.param_groups[0]["lr"] == 0.5
    assert [p for g in optimizer.param_groups for p in g["params"]] == list(model.parameters())
    assert all(s["step"] == 3 for s in optimizer.state.values())
    assert "configure_optimizers" not in model.__dict__  # teardown put the module back as it was
    assert isinstance(model.configure_optimizers()[0][0], torch.optim.SGD)


def test_callback_refuses_deepspeed_at_setup_and_changes_nothing(small_net):
    from types import SimpleNamespace

    class DeepSpeedStrategy:  # recognised by name: DeepSpeed itself need not be installed
        pass

    class MyDeepSpeed(DeepSpeedStrategy):
        pass

    callback = LearnedOptimizerCallback(small_net)
    model = BoringModel()
    for strategy in (DeepSpeedStrategy(), MyDeepSpeed()):
        with pytest.raises(ConfigError, match=r"DeepSpeed\) strategy is not supported.*strategy='ddp'"):
            callback.setup(SimpleNamespace(strategy=strategy), model, "fit")
        assert "configure_optimizers" not in model.__dict__ and callback._patched is None
    callback.setup(SimpleNamespace(strategy=object()), model, "fit")  # any other strategy: patched as usual
    assert "configure_optimizers" in model.__dict__
    callback.teardown(None, model, "fit")


def test_callback_takes_every_option_of_the_optimizer(small_net, tmp_path):
    import inspect

    options = set(inspect.signature(LearnedOptimizer).parameters) - {"params"}
    assert set(inspect.signature(LearnedOptimizerCallback).parameters) == options
    other = BoringModel()  # a module given explicitly replaces the LightningModule as the namer of parameters
    callback = LearnedOptimizerCallback(small_net, lr=0.5, state_dtype="bfloat16", chunk_size=7, compile=False,
                                        fused=False, module=other)  # fmt: skip
    model = BoringModel()
    trainer = quiet_trainer(max_steps=1, callbacks=[callback], default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(model)
    (optimizer,) = trainer.optimizers
    assert optimizer.param_groups[0]["lr"] == 0.5 and optimizer.param_groups[0]["state_dtype"] == "bfloat16"
    assert (optimizer._chunk_size, optimizer._compile, optimizer._fused) == (7, False, False)
    for bad, message in (({"chunk_size": 0}, "chunk_size"), ({"compile": "yes"}, "compile="), ({"fused": 2}, "fused=")):
        with pytest.raises(ConfigError, match=message):
            LearnedOptimizerCallback(small_net, **bad)  # refused before any training


def test_callback_tells_a_scheduled_net_the_run_length_and_refuses_a_run_without_end(tmp_path):
    net = FeatureMLP(schedule=True)
    for callback, expected in ((LearnedOptimizerCallback(net), 3), (LearnedOptimizerCallback(net, total_steps=10), 10)):
        trainer = quiet_trainer(max_steps=3, callbacks=[callback], default_root_dir=tmp_path, limit_val_batches=0)
        trainer.fit(BoringModel())
        assert trainer.optimizers[0].param_groups[0]["total_steps"] == expected  # the Trainer's, or the one given
    endless = quiet_trainer(max_steps=-1, max_epochs=-1, callbacks=[LearnedOptimizerCallback(net)], default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match="needs the run's length.*max_steps"):
        endless.fit(BoringModel())
    with pytest.raises(ConfigError, match="total_steps"):
        LearnedOptimizerCallback(net, total_steps=0)


def test_callback_fails_early_on_an_unknown_name(pretrained_dir):
    with pytest.raises(CheckpointError, match="unknown pretrained optimizer 'nope'"):
        LearnedOptimizerCallback("nope")


class Backbone(BoringModel):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(32, 32)

    def forward(self, x):
        return self.layer(torch.relu(self.backbone(x)))

    def configure_optimizers(self):
        return torch.optim.Adam(filter(lambda p: p.requires_grad, self.parameters()))


class UnfreezeAtEpoch1(BaseFinetuning):
    def freeze_before_training(self, pl_module):
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module, current_epoch, optimizer):
        if current_epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer)


def test_base_finetuning_adds_param_groups_to_the_learned_optimizer(small_net, tmp_path):
    model = Backbone()
    frozen = model.backbone.weight.detach().clone()
    seen = []

    class Watch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(torch.equal(pl_module.backbone.weight, frozen))

    trainer = quiet_trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        callbacks=[LearnedOptimizerCallback(small_net), UnfreezeAtEpoch1(), Watch()],
        default_root_dir=tmp_path,
    )
    trainer.fit(model)
    (optimizer,) = trainer.optimizers
    assert len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.1)  # BaseFinetuning: group 0's lr / 10
    assert seen == [True, False]  # frozen in epoch 0, trained after being added in epoch 1
    assert optimizer.state[model.backbone.weight]["step"] == 2


# ------------------------------------------------------------ LightningCLI
def test_lightning_cli_optimizer_flag(meta_trained, pretrained_dir, tmp_path, monkeypatch):
    export(meta_trained[1], pretrained_dir / "quadratic.pt")
    monkeypatch.setattr("sys.argv", ["my_cli.py"])  # LightningCLI warns when args and sys.argv both exist
    cli = LightningCLI(
        BoringModel,
        run=True,
        save_config_callback=None,
        args=[
            "fit",
            "--optimizer=l2l_lightning.LearnedOptimizer",
            "--optimizer.checkpoint=quadratic",
            "--optimizer.lr=0.5",
            "--optimizer.state_dtype=bfloat16",
            "--lr_scheduler=torch.optim.lr_scheduler.StepLR",
            "--lr_scheduler.step_size=1",
            "--lr_scheduler.gamma=0.5",
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=0",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
    )
    (optimizer,) = cli.trainer.optimizers
    assert isinstance(optimizer, LearnedOptimizer)
    assert optimizer.param_groups[0]["state_dtype"] == "bfloat16"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.125)  # 0.5, halved by StepLR after each of 2 epochs
    assert cli.trainer.global_step == 4
    assert [s["step"] for s in optimizer.state.values()] == [4, 4]  # BoringModel: one Linear, weight and bias


# ------------------------------------------------------------ 16-bit AMP with GradScaler on CPU
def test_16_mixed_grad_scaler_skips_inf_steps_without_advancing_state(example, small_net, tmp_path):
    """Lightning maps ``precision="16-mixed"`` on CPU to bf16; pass the fp16 plugin explicitly to
    exercise the GradScaler path (the one used on GPUs) on CPU."""
    records = []

    class InjectInf(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            if trainer.global_step == 2:
                pl_module.net[0].weight.grad[0, 0] = float("inf")

        def on_train_batch_end(self, trainer, pl_module, *args):
            optimizer = trainer.optimizers[0]
            records.append(
                (
                    trainer.precision_plugin.scaler.get_scale(),
                    [p.detach().clone() for p in pl_module.parameters()],
                    [s["net_state"].clone() for s in optimizer.state.values()],
                    [s["step"] for s in optimizer.state.values()],
                )
            )

    torch.manual_seed(0)
    model = example.MLPWithLearnedOptimizer(small_net, shuffle=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    trainer = quiet_trainer(
        max_steps=4,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        callbacks=[InjectInf()],
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=SkippedStepWarning)  # the scaler skips, not our fallback
        trainer.fit(model)
    steps = [r[3] for r in records]
    assert steps == [[1] * 4, [2] * 4, [2] * 4, [3] * 4]  # the third batch's step did not happen
    (scale1, params1, states1, _), (scale2, params2, states2, _) = records[1], records[2]
    assert scale2 == scale1 / 2
    assert all(torch.equal(a, b) for a, b in zip(params1, params2))
    assert all(torch.equal(a, b) for a, b in zip(states1, states2))
    assert not all(torch.equal(a, b) for a, b in zip(params2, records[3][1]))
