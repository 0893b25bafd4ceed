"""Run by ``test_fsdp.py``: LearnedOptimizerCallback under Lightning's ModelParallelStrategy (FSDP2) on 2 CPU processes.

``python tests/optim/lightning_fsdp_worker.py OUT_DIR straight|first|resume``: ``straight`` trains
``EPOCHS`` epochs; ``first`` trains half of them and saves a (distributed) checkpoint; ``resume``
continues from it with ``fit(ckpt_path=...)``.  Rank 0 writes ``OUT_DIR/<mode>.pt`` with the full
parameters and the optimizer's class.  Lightning relaunches this script for rank 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from l2l_lightning import CoordinatewiseLSTM, LearnedOptimizerCallback

from gloo_exit import exit_without_finalizing  # beside this script

EPOCHS = 4


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=self.device_mesh["data_parallel"])
        fully_shard(self.layers, mesh=self.device_mesh["data_parallel"])

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layers(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)  # replaced by the callback

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(16, 5, generator=generator), torch.randn(16, 3, generator=generator))
        return DataLoader(data, batch_size=4)  # the distributed sampler gives each rank its part, in order


def main(out_dir: Path, mode: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    net = CoordinatewiseLSTM(hidden_size=8, preprocess="log_sign", output_scale=0.01)
    model = Model()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        max_epochs=EPOCHS // 2 if mode == "first" else EPOCHS,
        callbacks=[LearnedOptimizerCallback(net)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, ckpt_path=out_dir / "half.ckpt" if mode == "resume" else None)
    if mode == "first":
        trainer.save_checkpoint(out_dir / "half.ckpt")
    params = [p.full_tensor() for p in model.parameters()]
    optimizer = trainer.optimizers[0]
    if trainer.global_rank == 0:
        torch.save({"params": params, "optimizer": type(optimizer).__name__, "global_step": trainer.global_step},
                   out_dir / f"{mode}.pt")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
    exit_without_finalizing()
