"""Deployment without Lightning: the optimizer imports and trains in a plain PyTorch loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: what a plain-PyTorch user must not pay for (imported only by meta-training, the CLI or the callback)
HEAVY = ("lightning", "pytorch_lightning", "torchmetrics", "matplotlib", "torchvision", "tensorboard", "jsonargparse")
META = ("l2l_lightning.meta", "l2l_lightning.tasks", "l2l_lightning.data", "l2l_lightning.compare", "l2l_lightning.cli")

PROBE = """
import json, sys
sys.path.insert(0, {examples!r})
{statement}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r} or m.startswith({meta!r}))
print(json.dumps({{"loaded": loaded, "result": {result}}}))
"""


def probe(statement: str, result: str = "None") -> dict:
    code = PROBE.format(examples=str(ROOT / "examples"), statement=statement, heavy=HEAVY, meta=META, result=result)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_optimizer_and_the_package_root_load_no_lightning_or_meta_training_code():
    assert probe("from l2l_lightning.optim import LearnedOptimizer")["loaded"] == []
    assert probe("import l2l_lightning; l2l_lightning.LearnedOptimizer; l2l_lightning.CoordinatewiseLSTM")["loaded"] == []


def test_the_subpackages_are_attributes_of_the_package_and_still_load_no_lightning():
    found = probe("import l2l_lightning", "l2l_lightning.optim.available()")
    assert found["loaded"] == [] and "fashion_mnist" in found["result"]


def test_python_m_pretrained_prints_what_info_returns(tmp_path):
    from l2l_lightning.optim.pretrained import info

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "l2l_lightning.optim.pretrained", "quadratic"], capture_output=True,
                         text=True, env=env, timeout=300, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0 and out.stderr == ""  # no runpy warning: the package does not import it eagerly
    shipped = ROOT / "l2l_lightning" / "pretrained" / "quadratic.pt"  # this process's name lookup is redirected
    assert json.loads(out.stdout) == json.loads(json.dumps(info(shipped), default=str))


def test_the_callback_and_meta_learner_still_come_on_first_use():
    loaded = probe("import l2l_lightning; l2l_lightning.LearnedOptimizerCallback; l2l_lightning.MetaLearner")["loaded"]
    assert "lightning" in loaded and "l2l_lightning.meta.module" in loaded


def test_the_plain_loop_example_trains_with_a_shipped_optimizer_and_nothing_else():
    report = probe("import plain_pytorch_loop as example; losses = example.train(steps=100)", "[losses[0], losses[-1]]")  # the example's default length
    assert report["loaded"] == []
    first, last = report["result"]
    assert last < 0.1 * first
