"""Write ``v1_state_dict.pt``: a ``LearnedOptimizer`` state dict in the first format, for the load test.

Up to version 1 every net's per-parameter state was saved under the key ``"lstm"``.  This
file was written by the revision before the key was renamed (58c3d41), with the shipped
``quadratic`` optimizer: two parameter groups (one with a bfloat16 state), two steps, then
the state dict and the parameters after one more step from it.  ``test_state.py`` loads
the state dict into today's optimizer and demands the same parameters, bit for bit.
Kept for the record; re-running it on a later revision would write the new key.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from l2l_lightning.optim import LearnedOptimizer

SHAPES = [(5,), (3, 4)]


def params() -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(3)
    return [nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]


def gradients(step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(500 + step)
    return [torch.randn(shape, generator=generator) * 10.0 ** (step - 2) for shape in SHAPES]


def build(ps: list[nn.Parameter]) -> LearnedOptimizer:
    return LearnedOptimizer(
        [{"params": [ps[0]]}, {"params": [ps[1]], "state_dtype": "bfloat16", "lr": 0.5}], checkpoint="quadratic"
    )


def run(optimizer: LearnedOptimizer, ps: list[nn.Parameter], step: int) -> None:
    for p, g in zip(ps, gradients(step)):
        p.grad = g
    optimizer.step()


if __name__ == "__main__":
    ps = params()
    optimizer = build(ps)
    for step in range(2):
        run(optimizer, ps, step)
    saved = {"state_dict": copy.deepcopy(optimizer.state_dict()),  # it shares the live state
             "params": [p.detach().clone() for p in ps]}
    run(optimizer, ps, 2)
    saved["after"] = [p.detach().clone() for p in ps]
    torch.save(saved, Path(__file__).with_name("v1_state_dict.pt"))
