"""Run by ``test_ddp.py``: train the example MLP with LearnedOptimizer under DDP (2 CPU processes).

``python tests/optim/ddp_worker.py OUT_DIR [lstm|gac|features|loss]``; Lightning relaunches this script for rank 1.
With ``gac`` the net is an LSTM+GAC, whose averages over all coordinates must also agree
on every rank (they do without communication: every rank steps the same all-reduced gradients);
with ``features`` a FeatureMLP, whose per-tensor statistics likewise; with ``loss`` a net that
scales its update by the loss, which differs between ranks (their own batches) and agrees only
because the optimizer averages it over ranks.
Each rank writes ``OUT_DIR/rank{r}.pt`` with its parameters and optimizer state, so the
test can check that every rank ends with identical parameters and LSTM states.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import lightning as L
import torch

from torch import Tensor

from l2l_lightning import CoordinatewiseLSTM, FeatureMLP, GlobalAveragingLSTM
from l2l_lightning.nets import Inputs, LearnedOptimizerNet, StepInputs

from gloo_exit import exit_without_finalizing  # beside this script

REPO = Path(__file__).resolve().parents[2]


class LossScaledSGD(LearnedOptimizerNet):
    """``update = −0.01 · loss · grad``: reads the loss, so ranks agree only if they read the same loss."""

    coordinate_dim = 1
    inputs = Inputs(loss=True)

    @property
    def config(self) -> dict:
        return {}

    def state_shape(self, n: int) -> tuple[int, ...]:
        return (1, n)

    def forward(self, grad: Tensor, state: Tensor, layout=None, inputs: StepInputs = None) -> tuple[Tensor, Tensor]:
        return -0.01 * inputs.loss.mean() * grad, state + inputs.loss.mean()


def main(out_dir: Path, kind: str = "lstm") -> None:
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("example", REPO / "examples" / "mlp_with_learned_optimizer.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    torch.manual_seed(1234)
    if kind == "gac":
        net = GlobalAveragingLSTM(hidden_size=8, preprocess="log_sign", output_scale=0.01, global_cells=3)
    elif kind == "features":
        net = FeatureMLP(hidden_size=8, step_mult=0.01)
    elif kind == "loss":
        net = LossScaledSGD()
    else:
        net = CoordinatewiseLSTM(hidden_size=8, preprocess="log_sign", output_scale=0.01)
    L.seed_everything(0, verbose=False)
    model, callbacks = example.build("callback", net, shuffle=True)  # ranks see different batches
    initial = [p.detach().clone() for p in model.parameters()]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    optimizer = trainer.optimizers[0]
    torch.save(
        {
            "world_size": trainer.world_size,
            "optimizer": type(optimizer).__name__,
            "initial": initial,
            "params": [p.detach().clone() for p in model.parameters()],
            "lstm": [optimizer.state[p]["net_state"].clone() for p in model.parameters()],
            "tensor_state": [optimizer.state[p].get("tensor_state", torch.zeros(0)).clone() for p in model.parameters()],
            "step": [optimizer.state[p]["step"] for p in model.parameters()],
            "global_step": trainer.global_step,
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
    exit_without_finalizing()
