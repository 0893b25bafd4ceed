"""The fused Triton step equals the eager chunked step.

Run on CPU through Triton's interpreter (``TRITON_INTERPRET=1``, read when Triton compiles a
kernel, hence a subprocess); on a GPU ``benchmarks/gpu_check.sh`` checks the compiled kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from l2l_lightning import ConfigError, CoordinatewiseLSTM, LearnedOptimizer

triton = pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]

CHECKS = """
import torch
from torch import nn
from l2l_lightning import CoordinatewiseLSTM, LearnedOptimizer
from l2l_lightning.optim.runtime import StepOptions, step_inplace

def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()

sizes = [5, 64, 130]
n = sum(sizes)
for preprocess in ("none", "log_sign", "clamped"):
    torch.manual_seed(0)
    net = CoordinatewiseLSTM(preprocess=preprocess)
    g = torch.randn(n) * torch.exp(torch.randn(n) * 3) * 1e-3
    g[3] = 0.0
    for dtype, bound in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        start = [(torch.randn(net.state_shape(s)) * 0.5).to(dtype) for s in sizes]
        fused_states, eager_states = [s.clone() for s in start], [s.clone() for s in start]
        fused = step_inplace(net, g, fused_states, options=StepOptions(fused=True))
        eager = step_inplace(net, g, eager_states, options=StepOptions(fused=False))
        assert rel(fused, eager) < 1e-5, (preprocess, dtype, rel(fused, eager))
        for a, b in zip(fused_states, eager_states):
            assert rel(a, b) < bound, (preprocess, dtype, rel(a, b))
        kept = [s.clone() for s in start]
        step_inplace(net, g, kept, keep=torch.tensor(False), options=StepOptions(fused=True))
        assert all(torch.equal(a, b) for a, b in zip(kept, start)), "keep=False changed a state"

# a coordinate whose update is not finite gets a zero state, as in the eager step
net = CoordinatewiseLSTM(preprocess="log_sign")
state = torch.randn(net.state_shape(70)) * 0.5
state[:, :, 7] = float("nan")
update = step_inplace(net, torch.randn(70), [state], options=StepOptions(fused=True))
assert not torch.isfinite(update[7]) and torch.isfinite(update[torch.arange(70) != 7]).all()
assert (state[:, :, 7] == 0).all() and torch.isfinite(state).all()

# the optimizer: fused and eager land on the same parameters
def train(fused):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(9, 7), nn.Tanh(), nn.Linear(7, 2))
    opt = LearnedOptimizer(model.parameters(), checkpoint=CoordinatewiseLSTM(), fused=fused)
    x = torch.randn(16, 9)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return [p.detach() for p in model.parameters()]

for a, b in zip(train(True), train(False)):
    assert rel(a, b) < 1e-5, rel(a, b)
print("fused checks passed")
"""


@pytest.mark.slow
def test_the_fused_step_equals_the_eager_step_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    code = textwrap.dedent(CHECKS)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0 and "fused checks passed" in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]


def test_requiring_the_fused_step_where_it_cannot_run_is_a_config_error():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter makes the fused step available on CPU")
    params = [torch.nn.Parameter(torch.randn(4))]
    params[0].grad = torch.randn(4)
    optimizer = LearnedOptimizer(params, checkpoint=CoordinatewiseLSTM(), fused=True)
    with pytest.raises(ConfigError, match="fused=True, but no single-kernel step.*use fused='auto'"):
        optimizer.step()
    with pytest.raises(ConfigError, match="fused='sometimes'; allowed: True, False, 'auto'"):
        LearnedOptimizer(params, checkpoint=CoordinatewiseLSTM(), fused="sometimes")


def test_a_fused_kernel_that_cannot_compile_falls_back_to_the_chunked_step_with_one_warning(monkeypatch):
    from l2l_lightning.nets import lstm_kernel
    from l2l_lightning.optim import runtime
    from l2l_lightning.optim.runtime import StepOptions, step_inplace
    from l2l_lightning.nets.kernel import FusedStepUnavailable

    def broken(states_written):
        def step(grad, states, out, keep):
            raise FusedStepUnavailable("CompilationError: no such instruction on this device")

        return step

    monkeypatch.setattr(lstm_kernel.LSTMKernel, "fused_step", lambda self, device: broken(None))
    monkeypatch.setattr(runtime, "_FUSED_FAILED", [])
    net = CoordinatewiseLSTM()
    grad = torch.randn(50)
    expected_state = net.init_state(50)
    expected = step_inplace(net, grad, [expected_state], options=StepOptions(fused=False))
    state = net.init_state(50)
    with pytest.warns(RuntimeWarning, match="fused learned-optimizer step could not be compiled") as record:
        update = step_inplace(net, grad, [state])
        step_inplace(net, grad, [net.init_state(50)])  # no second warning: auto stays with the chunks
    assert len(record) == 1
    assert torch.equal(update, expected) and torch.equal(state, expected_state)
    with pytest.raises(FusedStepUnavailable):
        step_inplace(net, grad, [net.init_state(50)], options=StepOptions(fused=True))  # required: no silent fallback
