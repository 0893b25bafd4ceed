"""A learned optimizer dropped into a stock Lightning ``Trainer``, against tuned Adam (issue #20).

``SmallCNN`` is an ordinary LightningModule (two 3×3 conv + ReLU + 2×2 max-pool blocks, 8 then
16 channels, a linear layer to 10 classes) with Adam in its own ``configure_optimizers``.  The
learned optimizer replaces that Adam through one callback, nothing else changes::

    trainer = L.Trainer(max_steps=N, callbacks=[LearnedOptimizerCallback("general")])
    trainer.fit(SmallCNN(), loader)

For each horizon of ``--steps`` the learned optimizer trains a fresh network, and Adam trains the
same network (same seed: same initial weights, same batch order) at every rate of a log grid,
extended past an edge when the best rate lies there (as ``l2l compare`` does).  The figure is
the final training loss: the mean of the training loss over the last 50 steps; with several
``--seeds`` its mean over them (Adam's rate is tuned on that mean).

Run::

    python examples/cnn_with_learned_optimizer.py --steps 300,1500      # minutes on a CPU
    python examples/cnn_with_learned_optimizer.py --steps 300 --seeds 0,1,2 --json cnn.json
    python examples/cnn_with_learned_optimizer.py --checkpoint runs/q.pt --lr 0.3

Data: Fashion-MNIST's training images (the project's ``"train"`` split: all but the last 5,000,
which it holds out for validation), read offline from ``--data_root`` (Debian's flat folder
``/usr/share/datasets/fashion-mnist`` by default, or torchvision's layout under it).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from l2l_lightning import LearnedOptimizerCallback
from l2l_lightning.data import load_images
from l2l_lightning.data.datasets import DEFAULT_VAL_SIZE
from l2l_lightning.errors import L2LError
from l2l_lightning.meta.baselines import next_rate_past_edge

Checkpoint = Union[str, nn.Module]

#: The learned optimizer used unless ``--checkpoint`` says otherwise.
DEFAULT_CHECKPOINT = "general"
DEFAULT_DATA_ROOT = "/usr/share/datasets/fashion-mnist"
#: Adam's learning rates; the grid is extended past an edge up to ``ADAM_EXTEND`` times.
ADAM_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
ADAM_EXTEND = 3
BATCH_SIZE = 64
#: Training images the project holds out for validation (the last ones of the training file): not trained on.
VAL_SIZE = DEFAULT_VAL_SIZE
#: The final training loss is the mean of the training loss over this many last steps.
FINAL_STEPS = 50
#: Fashion-MNIST's training-image mean and standard deviation (pixels in [0, 1]).
MEAN, STD = 0.2860, 0.3530


class SmallCNN(L.LightningModule):
    """An ordinary LightningModule, as a practitioner already has it (Adam in ``configure_optimizers``)."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 28×28 -> 14×14
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> 7×7
            nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
        )  # fmt: skip
        self.step_losses: list[float] = []  # the training loss of every step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        self.step_losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fashion_mnist_train(root: Union[str, Path]) -> TensorDataset:
    """Fashion-MNIST's training images, normalized, as ``(N, 1, 28, 28)`` floats and their labels.

    A missing or broken dataset raises the loader's :class:`~l2l_lightning.errors.DatasetError`
    (the folders it looked in and how to get the files).
    """
    images, labels = load_images("fashion_mnist", root, "train", val_size=VAL_SIZE)
    x = (images.float().div(255).unsqueeze(1) - MEAN) / STD
    return TensorDataset(x, labels)


def loader(data: Dataset, seed: int) -> DataLoader:
    """Shuffled batches whose order depends on ``seed`` alone."""
    return DataLoader(data, batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(seed))


def final_loss(step_losses: Sequence[float]) -> float:
    """The mean training loss over the last :data:`FINAL_STEPS` steps (``inf`` if it is not finite)."""
    last = step_losses[-FINAL_STEPS:]
    value = sum(last) / len(last) if last else math.inf
    return value if math.isfinite(value) else math.inf


def train(
    data: Dataset, seed: int, steps: int, adam_lr: float = 1e-3, callbacks: Sequence[L.Callback] = (),
    accelerator: str = "cpu",
) -> tuple[list[float], torch.optim.Optimizer]:  # fmt: skip
    """A fresh ``SmallCNN`` from ``seed`` trained ``steps`` steps; its losses and the optimizer that trained it."""
    L.seed_everything(seed, verbose=False)  # the same initial weights for every run of a seed
    model = SmallCNN(lr=adam_lr)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, loader(data, seed))
    return model.step_losses, trainer.optimizers[0]


def tune_adam(score: Callable[[float], float], lrs: Sequence[float]) -> tuple[float, dict[float, float]]:
    """The rate of ``lrs`` with the lowest ``score(lr)``, the grid extended past an edge as ``l2l compare`` does."""
    scores = {lr: score(lr) for lr in lrs}
    for _ in range(ADAM_EXTEND if len(set(lrs)) > 1 else 0):
        lr = next_rate_past_edge(scores)
        if lr is None:
            break
        lr = float(f"{lr:.12g}")  # 0.09, not 0.09000000000000001
        scores[lr] = score(lr)
    best = min(sorted(scores), key=lambda lr: scores[lr])  # ties (all diverged): the smallest rate
    return best, dict(sorted(scores.items()))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _adam_score(data: Dataset, steps: int, lr: float, args: argparse.Namespace, per_seed: dict) -> float:
    """Adam at ``lr`` on every seed: the mean final loss (each seed's in ``per_seed[lr]``)."""
    per_seed[lr] = [final_loss(train(data, seed, steps, lr, accelerator=args.accelerator)[0]) for seed in args.seeds]
    return _mean(per_seed[lr])


def compare(args: argparse.Namespace, checkpoint: Checkpoint) -> list[dict[str, Any]]:
    """For every horizon: the learned optimizer's and tuned Adam's final losses, per seed and mean."""
    data = fashion_mnist_train(args.data_root)
    options = {} if args.lr is None else {"lr": args.lr}  # no lr: the learned optimizer's own default
    rows = []
    for steps in args.steps:
        learned, learned_lr = [], None
        for seed in args.seeds:
            callback = LearnedOptimizerCallback(checkpoint, **options)
            losses, optimizer = train(data, seed, steps, callbacks=[callback], accelerator=args.accelerator)
            learned.append(final_loss(losses))
            learned_lr = optimizer.param_groups[0]["lr"]
        adam: dict[float, list[float]] = {}  # lr -> final loss per seed
        best, scores = tune_adam(functools.partial(_adam_score, data, steps, args=args, per_seed=adam), args.adam_lrs)
        learned_mean, adam_mean = _mean(learned), scores[best]
        rows.append({
            "steps": steps,
            "final_steps": min(FINAL_STEPS, steps),
            "learned": {"final_loss": learned_mean, "per_seed": learned, "lr": learned_lr},
            "adam": {"final_loss": adam_mean, "per_seed": adam[best], "lr": best,
                     "grid": [{"lr": lr, "final_loss": loss} for lr, loss in scores.items()]},
            "winner": "learned" if learned_mean < adam_mean else "adam",
        })  # fmt: skip
    return rows


def table(rows: Sequence[dict[str, Any]], name: str, seeds: Sequence[int]) -> str:
    """The figures as a small text table."""
    lines = [
        (
            f"final train loss: mean over the last {FINAL_STEPS} steps (fewer if the run is shorter), "
            f"mean of seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        ),
        f"{'steps':>6}  {'learned (' + name + ')':<28}  {'tuned Adam':<24}  result",
    ]
    for row in rows:
        learned, adam = row["learned"], row["adam"]
        left = f"{learned['final_loss']:.4f} (lr {learned['lr']:g})"
        right = f"{adam['final_loss']:.4f} (lr {adam['lr']:g})"
        result = "learned wins" if row["winner"] == "learned" else "Adam wins"
        lines.append(f"{row['steps']:>6}  {left:<28}  {right:<24}  {result}")
    return "\n".join(lines)


def _finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    return value


def _list_of(kind: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], list]:
    """An argparse type: a comma-separated list of ``kind`` values, each passing ``ok``."""

    def parse(text: str) -> list:
        try:
            values = [kind(part) for part in text.split(",")]
        except ValueError:
            values = []
        if not values or not all(ok(value) and math.isfinite(value) for value in values):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}")
        return values

    return parse


def main(argv: Optional[Sequence[str]] = None, checkpoint: Optional[Checkpoint] = None) -> list[dict[str, Any]]:
    """Print the table and return its rows; a missing dataset or a bad checkpoint: one error line, exit 2.

    ``checkpoint`` (a net instance, say) overrides ``--checkpoint``; tests use it.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = _list_of(int, lambda n: n > 0, "positive step counts")
    seeds = _list_of(int, lambda n: n >= 0, "seeds (integers >= 0)")
    rates = _list_of(float, lambda lr: lr > 0, "positive learning rates")
    add = parser.add_argument
    add("--checkpoint", default=DEFAULT_CHECKPOINT, help="shipped name, exported .pt or MetaLearner .ckpt")
    add("--lr", type=float, default=None, help="multiplier of the learned update (default: the optimizer's own)")
    add("--steps", type=steps, default=[300, 1500], help="horizons, comma-separated (default 300,1500)")
    add("--seeds", type=seeds, default=[0], help="comma-separated, e.g. 0,1,2: the figures are their mean")
    add("--adam_lrs", type=rates, default=list(ADAM_LRS), help="Adam's grid (default %(default)s)")
    add("--data_root", default=DEFAULT_DATA_ROOT, help="folder of Fashion-MNIST's IDX files (default %(default)s)")
    add("--accelerator", default="cpu", help="Lightning's accelerator: cpu (default), gpu, auto")
    add("--json", type=Path, default=None, metavar="PATH", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # only the results below, and real warnings
    net = checkpoint if checkpoint is not None else args.checkpoint
    name = args.checkpoint if checkpoint is None else type(checkpoint).__name__
    try:
        with warnings.catch_warnings():
            # one in-memory dataset: worker processes would only add start-up time
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            for category in (DeprecationWarning, FutureWarning):  # raised in Lightning's code, as `l2l` hides them
                warnings.filterwarnings("ignore", category=category, module=r"lightning\.")
            rows = compare(args, net)
    except L2LError as error:  # missing data, a bad checkpoint: the message says what to do, no traceback
        print(f"cnn_with_learned_optimizer.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(table(rows, name, args.seeds))
    if args.json is not None:
        report = {"checkpoint": name, "seeds": args.seeds, "batch_size": BATCH_SIZE, "horizons": rows}
        args.json.write_text(json.dumps(_finite_or_none(report), indent=2, allow_nan=False) + "\n")
    return rows


if __name__ == "__main__":
    main()
