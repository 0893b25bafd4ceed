"""FSDP2 (``fully_shard``) on two CPU processes with gloo: sharded steps equal the single-process run,
and a save/resume through torch.distributed.checkpoint in the middle changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2l_lightning import ConfigError, LearnedOptimizer
from l2l_lightning.optim import sharded

HERE = Path(__file__).parent
WORKER = HERE / "fsdp_worker.py"

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo"
)


def _load_worker():
    sys.path.insert(0, str(HERE))
    try:
        import fsdp_worker
    finally:
        sys.path.remove(str(HERE))
    return fsdp_worker


@pytest.mark.slow
def test_fsdp2_steps_like_one_process_and_resumes_exactly(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    port = str(29500 + os.getpid() % 1000)
    result = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), port], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = torch.load(tmp_path / "fsdp.pt", weights_only=True)

    worker = _load_worker()
    model, net, (x, y) = worker.build()
    initial = [p.detach().clone() for p in model.parameters()]
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=net)
    worker.train(model, optimizer, x, y, worker.STEPS)
    for name, p, start, got in zip(dict(model.named_parameters()), model.parameters(), initial, out["straight"]):
        assert not torch.equal(p, start)  # the steps did something
        torch.testing.assert_close(got, p.detach(), rtol=1e-5, atol=1e-6, msg=name)
        # the DCP form of the state: coordinates first, in the parameter's shape, gathered over ranks
        lstm = optimizer.state[p]["net_state"]
        torch.testing.assert_close(out["straight_states"][name], lstm.movedim(2, 0).reshape(out["straight_states"][name].shape),
                                   rtol=1e-4, atol=1e-6, msg=name)  # fmt: skip
    assert out["steps"] == [worker.STEPS] * 4
    for a, b in zip(out["straight"], out["resumed"]):
        assert torch.equal(a, b)  # save/resume in the middle: bit for bit the uninterrupted run
    for name in out["straight_states"]:
        assert torch.equal(out["straight_states"][name], out["resumed_states"][name])
    assert out["gac_error"].startswith("ConfigError") and "GlobalAveragingLSTM" in out["gac_error"]
    assert "coordinatewise net" in out["gac_error"]
    assert out["feature_error"].startswith("ConfigError") and "FeatureMLP" in out["feature_error"]  # per-tensor statistics


def test_state_dict_survives_what_dcp_keeps(small_net):
    """get_optimizer_state_dict keeps only "state" and "param_groups": the net's identity travels in the groups."""
    model = torch.nn.Linear(3, 2)
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=small_net)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    assert all(group["l2l_net"] == saved["l2l_net"] for group in saved["param_groups"])
    kept = {"state": saved["state"], "param_groups": saved["param_groups"]}
    clone = LearnedOptimizer(model.parameters(), checkpoint=small_net)
    clone.load_state_dict(kept)
    assert "l2l_net" not in clone.param_groups[0]  # not a setting of the group
    for p in model.parameters():
        assert torch.equal(clone.state[p]["net_state"], optimizer.state[p]["net_state"])


def test_nothing_is_sharded_without_dtensors():
    assert not sharded.is_sharded(torch.zeros(3))
    t = torch.zeros(3)
    assert sharded.local(t) is t


@pytest.mark.parametrize("mark, match", [("_fsdp_flattened", "FSDP1"), ("ds_id", "DeepSpeed ZeRO-3")])
def test_fsdp1_and_zero3_parameters_are_refused_at_construction(small_net, mark, match):
    model = torch.nn.Linear(3, 2)
    setattr(model.weight, mark, True if mark == "_fsdp_flattened" else 7)  # what FSDP1 / DeepSpeed mark them with
    with pytest.raises(ConfigError, match=f"{match}.*(fully_shard|FSDP2)"):
        LearnedOptimizer(model.parameters(), checkpoint=small_net)


@pytest.mark.slow
def test_lightning_model_parallel_strategy_resumes_exactly(tmp_path):
    """The callback under Lightning's ModelParallelStrategy (FSDP2, gloo): a run stopped after half its
    epochs, saved as a distributed checkpoint and resumed with fit(ckpt_path=...) ends where the
    uninterrupted run ends."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for key in ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    for mode in ("straight", "first", "resume"):
        result = subprocess.run([sys.executable, str(HERE / "lightning_fsdp_worker.py"), str(tmp_path), mode],
                                env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, mode + result.stdout[-3000:] + result.stderr[-3000:]
    straight, first, resumed = (torch.load(tmp_path / f"{m}.pt", weights_only=True) for m in ("straight", "first", "resume"))
    assert straight["optimizer"] == resumed["optimizer"] == "LearnedOptimizer"
    assert (tmp_path / "half.ckpt").is_dir()  # a sharded (DCP) checkpoint
    assert straight["global_step"] == resumed["global_step"] == 2 * first["global_step"] == 8
    for a, b, c in zip(straight["params"], resumed["params"], first["params"]):
        assert torch.equal(a, b) and not torch.equal(a, c)
