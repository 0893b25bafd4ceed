"""Run by ``test_fsdp.py``: LearnedOptimizer over FSDP2 (``fully_shard``) parameters on 2 CPU processes (gloo).

``python tests/optim/fsdp_worker.py OUT_DIR [PORT] [cpu|cuda] [WORLD]`` (default: 2 CPU processes, gloo;
``cuda``: NCCL, one GPU per process, as ``benchmarks/gpu_check.sh`` runs it).  Rank 0 writes ``OUT_DIR/fsdp.pt`` with, after
``STEPS`` steps: the full parameters of an uninterrupted run, those of a run saved with
``torch.distributed.checkpoint`` after ``STEPS // 2`` steps and resumed into a fresh model and
optimizer, the full LSTM states of both (gathered from the DTensor state dict), and the message
of the error raised for an LSTM+GAC net over sharded parameters.  The test compares the
parameters with a single-process run of :func:`build` on the whole batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from l2l_lightning import CoordinatewiseLSTM, FeatureMLP, GlobalAveragingLSTM, LearnedOptimizer

STEPS = 6
BATCH = 8


def build() -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The model, the net and the data, identical in every process (7 and 3 rows shard unevenly on 2 ranks)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    net = CoordinatewiseLSTM(hidden_size=8, preprocess="log_sign", output_scale=0.01)
    x, y = torch.randn(BATCH, 5), torch.randn(BATCH, 3)
    return model, net, (x, y)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def sharded(rank: int, world: int, device: str = "cpu") -> tuple[nn.Module, LearnedOptimizer, torch.Tensor, torch.Tensor]:
    from torch.distributed.fsdp import fully_shard

    model, net, (x, y) = build()
    where = torch.device(device, rank) if device == "cuda" else torch.device("cpu")
    model, x, y = model.to(where), x.to(where), y.to(where)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    part = BATCH // world  # each rank its half of the batch: FSDP averages the gradients
    return model, LearnedOptimizer(model.parameters(), checkpoint=net), x[rank * part : (rank + 1) * part], y[rank * part : (rank + 1) * part]


def full_states(model: nn.Module, optimizer: LearnedOptimizer) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer)["state"]
    return {name: entry["net_state"].full_tensor().cpu() for name, entry in state.items()}


def worker(rank: int, world: int, out_dir: str, port: str, device: str = "cpu") -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
    )  # fmt: skip

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        model, optimizer, x, y = sharded(rank, world, device)
        train(model, optimizer, x, y, STEPS)
        straight = [p.full_tensor().cpu() for p in model.parameters()]
        straight_states = full_states(model, optimizer)
        steps = [int(optimizer.state[p]["step"]) for p in model.parameters()]

        model, optimizer, x, y = sharded(rank, world, device)
        train(model, optimizer, x, y, STEPS // 2)
        checkpoint = Path(out_dir) / "checkpoint"
        dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)},
                 checkpoint_id=checkpoint)  # fmt: skip
        del model, optimizer
        model, optimizer, x, y = sharded(rank, world, device)  # a fresh process would start like this
        template = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        dcp.load(template, checkpoint_id=checkpoint)
        set_model_state_dict(model, template["model"])
        set_optimizer_state_dict(model, optimizer, template["optim"])
        train(model, optimizer, x, y, STEPS - STEPS // 2)
        resumed = [p.full_tensor().cpu() for p in model.parameters()]
        resumed_states = full_states(model, optimizer)

        try:
            LearnedOptimizer(model.parameters(), checkpoint=GlobalAveragingLSTM(hidden_size=8, global_cells=2))
            gac_error = None
        except Exception as error:  # noqa: BLE001 - reported to the test
            gac_error = f"{type(error).__name__}: {error}"
        try:
            LearnedOptimizer(model.parameters(), checkpoint=FeatureMLP(hidden_size=4))
            feature_error = None
        except Exception as error:  # noqa: BLE001 - reported to the test
            feature_error = f"{type(error).__name__}: {error}"
        if rank == 0:
            torch.save(
                {"straight": straight, "resumed": resumed, "straight_states": straight_states,
                 "resumed_states": resumed_states, "steps": steps, "gac_error": gac_error,
                 "feature_error": feature_error},
                Path(out_dir) / "fsdp.pt",
            )  # fmt: skip
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    out, port, device, world = (sys.argv[1:] + ["29631", "cpu", "2"][len(sys.argv) - 2 :])[:4]
    mp.spawn(worker, args=(int(world), out, port, device), nprocs=int(world))
