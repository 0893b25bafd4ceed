"""Train a stock LightningModule with a learned optimizer (Andrychowicz et al., 2016).

Two of the three ways to plug one in are shown here (the third, LightningCLI, needs no
code: ``--optimizer l2l_lightning.LearnedOptimizer --optimizer.checkpoint general``):

1. ``--way module``: the module's ``configure_optimizers`` returns ``LearnedOptimizer``.
2. ``--way callback``: the module keeps its Adam; ``LearnedOptimizerCallback`` swaps it.

Run::

    python examples/mlp_with_learned_optimizer.py                      # shipped "general", lr 1 (as trained)
    python examples/mlp_with_learned_optimizer.py --lr 0.1
    python examples/mlp_with_learned_optimizer.py --checkpoint runs/quadratic/version_0/checkpoints/last.ckpt
    python examples/mlp_with_learned_optimizer.py --way callback --precision bf16-mixed

``--checkpoint`` takes a shipped name (``python -c "import l2l_lightning; print(l2l_lightning.optim.available())"``),
an exported ``.pt`` file or a ``MetaLearner`` checkpoint (``.ckpt``).  The script prints
the mean training loss of the first and the last epoch, and beside it the same model trained
by Adam with its learning rate tuned on a grid (the best last-epoch loss), so you see what the
learned optimizer is worth on this problem, also when Adam wins (``--no-baseline`` skips it).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Optional, Sequence, Union

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from l2l_lightning import LearnedOptimizer, LearnedOptimizerCallback

Checkpoint = Union[str, nn.Module]


def synthetic_regression(n: int = 512, dim: int = 10, seed: int = 0) -> TensorDataset:
    """``y = X w + 0.1 ε`` with ``X, w, ε ~ N(0, 1)``: a small problem with a known floor (0.01)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator)
    w = torch.randn(dim, 1, generator=generator)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=generator)
    return TensorDataset(x, y)


class MLP(L.LightningModule):
    """An ordinary LightningModule, as a practitioner already has it (Adam in ``configure_optimizers``)."""

    def __init__(self, dim: int = 10, hidden: int = 32, shuffle: bool = True, lr: float = 1e-2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.shuffle, self.lr = shuffle, lr
        self.epoch_losses: list[float] = []
        self._sum, self._count = 0.0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        self._sum, self._count = self._sum + loss.item(), self._count + 1
        return loss

    def on_train_epoch_end(self) -> None:
        self.epoch_losses.append(self._sum / max(self._count, 1))
        self._sum, self._count = 0.0, 0

    def train_dataloader(self) -> DataLoader:
        return DataLoader(synthetic_regression(), batch_size=64, shuffle=self.shuffle)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class MLPWithLearnedOptimizer(MLP):
    """Way 1: return the learned optimizer from ``configure_optimizers``.

    ``lr`` multiplies the learned update (1.0 = as trained); any LR scheduler works on it.
    """

    def __init__(
        self, checkpoint: Checkpoint = "general", lr: float = 1.0, state_dtype: str = "float32", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        # A plain dict, not attributes: a net instance assigned to the module would become a
        # submodule, i.e. part of self.parameters() and of the module's checkpoint.
        self.optimizer_args = {"checkpoint": checkpoint, "lr": lr, "state_dtype": state_dtype}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # the run's length, which a net with a learned schedule (general) reads; others ignore it
        total_steps = int(self.trainer.estimated_stepping_batches)
        return LearnedOptimizer(self.parameters(), total_steps=total_steps, **self.optimizer_args)


def build(
    way: str, checkpoint: Checkpoint, lr: float = 1.0, state_dtype: str = "float32", shuffle: bool = True
) -> tuple[MLP, list[L.Callback]]:
    """The module and the callbacks for ``way`` (``"module"`` or ``"callback"``)."""
    if way == "module":
        return MLPWithLearnedOptimizer(checkpoint, lr=lr, state_dtype=state_dtype, shuffle=shuffle), []
    if way == "callback":
        return MLP(shuffle=shuffle), [LearnedOptimizerCallback(checkpoint, lr=lr, state_dtype=state_dtype)]
    raise ValueError(f"way={way!r}; allowed: 'module', 'callback'")


#: Adam's learning rates tried for the baseline (the best last-epoch loss is shown).
ADAM_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def fit(model: MLP, callbacks: list[L.Callback], args: argparse.Namespace) -> tuple[list[float], str]:
    """Train ``model`` from seed ``args.seed``; its mean training loss per epoch and the optimizer's class name."""
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=args.max_epochs,
        precision=args.precision,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model)
    return model.epoch_losses, type(trainer.optimizers[0]).__name__


def main(argv: Optional[Sequence[str]] = None, checkpoint: Optional[Checkpoint] = None) -> list[float]:
    """Train with the learned optimizer and return its mean training loss of every epoch.

    ``checkpoint`` (a net instance, say) overrides ``--checkpoint``; tests use it.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="general", help="shipped name, exported .pt or MetaLearner .ckpt")
    parser.add_argument("--way", choices=("module", "callback"), default="module")
    parser.add_argument("--precision", default="32-true", help="e.g. 32-true, bf16-mixed")
    parser.add_argument("--lr", type=float, default=1.0, help="multiplier of the learned update (1: as meta-trained)")
    parser.add_argument("--state-dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the tuned-Adam runs")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # only the results below, and real warnings

    L.seed_everything(args.seed, verbose=False)
    net = checkpoint if checkpoint is not None else args.checkpoint
    losses, name = fit(*build(args.way, net, args.lr, args.state_dtype), args)
    print(f"{name} (lr {args.lr:g}): mean training loss {losses[0]:.4g} (epoch 1) -> {losses[-1]:.4g} (epoch {len(losses)})")
    if not args.no_baseline:
        runs = {}
        for lr in ADAM_LRS:  # the same initial weights and batches as the learned run
            L.seed_everything(args.seed, verbose=False)
            runs[lr], _ = fit(MLP(lr=lr), [], args)
        best = min(runs, key=lambda lr: runs[lr][-1])
        adam = runs[best]
        print(f"Adam, lr tuned on {list(ADAM_LRS)} (best {best:g}): mean training loss {adam[0]:.4g} (epoch 1) "
              f"-> {adam[-1]:.4g} (epoch {len(adam)})")  # fmt: skip
    return losses


if __name__ == "__main__":
    main()
