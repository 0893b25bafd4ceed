"""Write ``updates.pt``: what the shipped optimizers do to fixed gradients, for the regression test.

Run from a commit whose behaviour is the reference (the file records it):
``python tests/optim/reference/make_reference_updates.py``.  Names already in the file keep
their recorded updates; only newly shipped optimizers are added.  A deliberately re-shipped
optimizer (new weights under an old name) is re-recorded with ``--replace NAME``; nothing else
should ever change a recorded entry.  The test
(``tests/optim/test_reference_updates.py``) replays the same gradients and demands equal bits.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import torch
from torch import nn

from l2l_lightning.optim import LearnedOptimizer, available

#: parameter sizes: below, across and far past one CPU chunk (8192 rows)
SIZES = [(5,), (30, 10), (97, 101)]
STEPS = 3
#: the run's length told to a net with a learned schedule: its fraction done is 0, 1/4, 1/2 over the STEPS steps
TOTAL_STEPS = 4


def gradients(step: int) -> list[torch.Tensor]:
    """Gradients of many magnitudes (1e-6 .. 1e2), the same on every machine."""
    generator = torch.Generator().manual_seed(1000 + step)
    grads = []
    for shape in SIZES:
        g = torch.randn(shape, generator=generator)
        scale = 10.0 ** torch.randint(-6, 3, shape, generator=generator).float()
        grads.append(g * scale)
    return grads


def replay(name: str) -> list[torch.Tensor]:
    """Parameters after each step: ``STEPS`` rows of the concatenated flat parameters."""
    generator = torch.Generator().manual_seed(7)
    params = [nn.Parameter(torch.randn(shape, generator=generator)) for shape in SIZES]
    optimizer = LearnedOptimizer(params, checkpoint=name, total_steps=TOTAL_STEPS)  # ignored by nets without a schedule
    history = []
    for step in range(STEPS):
        for p, g in zip(params, gradients(step)):
            p.grad = g.clone()
        optimizer.step()
        history.append(torch.cat([p.detach().reshape(-1) for p in params]).clone())
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replace", nargs="*", default=[], help="re-shipped names whose entries are re-recorded")
    replace = parser.parse_args().replace
    path = Path(__file__).with_name("updates.pt")
    out = torch.load(path, weights_only=True) if path.exists() else {"commits": {}, "names": {}}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    unknown = [name for name in replace if name not in available()]
    if unknown:
        raise SystemExit(f"--replace {unknown}: not shipped; shipped: {available()}")
    added = [name for name in available() if name not in out["names"] or name in replace]
    for name in added:
        out["names"][name] = torch.stack(replay(name))
        out["commits"][name] = commit
    torch.save(out, path)
    print(f"added reference updates for {added} at {commit}")
