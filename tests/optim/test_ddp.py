"""DDP on two CPU processes: every rank ends with the same parameters and net states (and per-tensor states)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lstm", "gac", "features", "loss"])
def test_ddp_ranks_end_identical(tmp_path, kind):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), kind], env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["optimizer"] == "LearnedOptimizer" for r in ranks)
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 8  # 512 samples / (64 * 2 ranks) * 2 epochs
    for key in ("initial", "params", "lstm", "tensor_state"):
        for a, b in zip(ranks[0][key], ranks[1][key]):
            assert torch.equal(a, b), key
    assert ranks[0]["step"] == [8] * 4
    assert not any(torch.equal(a, b) for a, b in zip(ranks[0]["initial"], ranks[0]["params"]))
