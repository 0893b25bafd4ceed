"""LearnedOptimizer with nets that read more than the gradient and keep per-tensor state (FeatureMLP, a loss reader)."""

from __future__ import annotations

import copy
import warnings
from typing import Any, Optional

import pytest
import torch
from torch import Tensor, nn

from l2l_lightning import CheckpointError, ConfigError, FeatureMLP, LearnedOptimizer, UnsupportedGradientError
from l2l_lightning.meta.unroll import unroll
from l2l_lightning.nets import Inputs, Layout, LearnedOptimizerNet, StepInputs
from l2l_lightning.optim import SkippedStepWarning, sharded
from l2l_lightning.optim.pretrained import export, load_net
from l2l_lightning.safe_load import atomic_save
from l2l_lightning.serialization import FORMAT, FORMAT_VERSION
from l2l_lightning.tasks import QuadraticTask


#: what LossReader was given, step by step (the optimizer steps its own copies of the net)
SEEN: list[StepInputs] = []


class LossReader(LearnedOptimizerNet):
    """``update = −scale · loss · grad``; records what it was given (a net that reads the loss, step and param)."""

    coordinate_dim = 1
    inputs = Inputs(param=True, step=True, loss=True)

    def __init__(self, scale: float = 0.1) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    @property
    def config(self) -> dict[str, Any]:
        return {}

    def state_shape(self, n: int) -> tuple[int, ...]:
        return (1, n)

    def forward(self, grad: Tensor, state: Tensor, layout: Any = None, inputs: Optional[StepInputs] = None) -> Any:
        assert inputs is not None
        SEEN.append(inputs)
        loss = inputs.loss.mean() if inputs.loss is not None else 1.0
        return -self.scale * loss * grad, state + 1


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))


def _closure(model: nn.Module, optimizer: torch.optim.Optimizer, scale: float = 1.0):
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=data), torch.randn(16, 1, generator=data)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = ((model(x) - y) ** 2).mean() * scale
        loss.backward()
        return loss

    return closure


def _train(model: nn.Module, optimizer: LearnedOptimizer, steps: int) -> None:
    for _ in range(steps):
        optimizer.step(_closure(model, optimizer))


def _forward_step(net: FeatureMLP, model: nn.Module, layout: Layout, state: Any, step: int, horizon: Optional[int] = None) -> Any:
    """One step of ``model`` by the net's differentiable forward on its flat parameters (what deployment must equal)."""
    model.zero_grad()
    _closure(model, torch.optim.SGD(model.parameters()))()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    steps = torch.full((len(layout),), step, dtype=torch.long)
    inputs = StepInputs(param=flat, step=steps, horizon=None if horizon is None else torch.full_like(steps, horizon))
    update, state = net(grad, state, layout, inputs=inputs)
    with torch.no_grad():
        for p, u in zip(model.parameters(), update.split(layout.sizes)):
            p.add_(u.view_as(p))
    return state


def test_feature_mlp_trains_a_model_and_resumes_bit_for_bit():
    net = FeatureMLP(step_mult=0.01)
    model = _model()
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=net)
    first = optimizer.step(_closure(model, optimizer)).item()
    _train(model, optimizer, 9)
    assert optimizer.step(_closure(model, optimizer)).item() < first
    saved, saved_model = copy.deepcopy(optimizer.state_dict()), copy.deepcopy(model)
    for entry in saved["state"].values():
        assert set(entry) == {"net_state", "tensor_state", "step"}
    _train(model, optimizer, 5)
    resumed = LearnedOptimizer(saved_model.parameters(), checkpoint=net)
    resumed.load_state_dict(saved)
    _train(saved_model, resumed, 5)
    for a, b in zip(model.parameters(), saved_model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(model.parameters(), saved_model.parameters()):
        assert torch.equal(optimizer.state[a]["tensor_state"], resumed.state[b]["tensor_state"])


def test_deployment_equals_the_meta_training_step():
    """LearnedOptimizer's chunked step gives what FeatureMLP.forward gives on the flat parameters."""
    net, model = FeatureMLP(step_mult=0.01), _model()
    reference = copy.deepcopy(model)
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=net, chunk_size=16)
    layout = Layout.of_module(reference)
    state = net.init_state(layout)
    for step in range(3):
        _closure(model, optimizer)()
        optimizer.step()
        state = _forward_step(net, reference, layout, state, step)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sync_free", [False, True])
def test_a_skipped_step_writes_no_state(sync_free):
    model = _model()
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=FeatureMLP())
    optimizer._sync_free = sync_free  # the device path (decisions on the device) runs on CPU too
    _train(model, optimizer, 2)
    before = copy.deepcopy(optimizer.state_dict())
    params = [p.detach().clone() for p in model.parameters()]
    _closure(model, optimizer)()
    next(model.parameters()).grad[0, 0] = float("nan")
    with pytest.warns(SkippedStepWarning):
        optimizer.step()
        optimizer.state_dict()  # the sync-free path warns from a later call
    after = optimizer.state_dict()
    for key, entry in before["state"].items():
        for name in ("net_state", "tensor_state"):
            assert torch.equal(entry[name], after["state"][key][name]), name
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))


def test_a_diverged_update_resets_the_per_tensor_state():
    net = FeatureMLP()
    with torch.no_grad():
        net.skip.fill_(float("nan"))
    model = _model()
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=net)
    params = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(SkippedStepWarning, match="non-finite update"):
        optimizer.step(_closure(model, optimizer))
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    for p in model.parameters():
        assert not optimizer.state[p]["tensor_state"].any() and not optimizer.state[p]["net_state"].any()


def test_damaged_per_tensor_state_is_refused_on_load():
    net, model = FeatureMLP(), _model()
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=net)
    _train(model, optimizer, 1)
    saved = optimizer.state_dict()
    wrong = copy.deepcopy(saved)
    wrong["state"][0]["tensor_state"] = torch.zeros(3, 5)
    with pytest.raises(CheckpointError, match="per-tensor state of shape"):
        LearnedOptimizer(model.parameters(), checkpoint=net).load_state_dict(wrong)
    missing = copy.deepcopy(saved)
    del missing["state"][0]["tensor_state"]
    with pytest.raises(CheckpointError, match="only one of"):
        LearnedOptimizer(model.parameters(), checkpoint=net).load_state_dict(missing)


def test_loss_reader_gets_the_closure_loss_or_loss_keyword_and_refuses_neither():
    model = _model()
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=LossReader())
    loss = optimizer.step(_closure(model, optimizer))  # torch's contract: the closure's loss comes back
    seen = SEEN[-1]
    assert seen.loss is not None and seen.loss.shape == (1,) and torch.equal(seen.loss[0], loss.detach())
    assert seen.step.tolist() == [0, 0, 0, 0] and seen.param.shape == (sum(p.numel() for p in model.parameters()),)
    assert optimizer.step(loss=torch.tensor(2.5)) == 2.5  # PyLO's opt.step(loss): no closure
    assert SEEN[-1].loss.tolist() == [2.5] and SEEN[-1].step.tolist() == [1, 1, 1, 1]
    params = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match="reads the loss.*step\\(closure\\).*Nothing was changed"):
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert all(optimizer.state[p]["step"] == 2 for p in model.parameters())


def test_unroll_gives_declared_inputs_only():
    problem = QuadraticTask(dim=3, num_problems=2).sample(torch.Generator().manual_seed(0))
    net = LossReader()
    SEEN.clear()
    theta = problem.initial_params()
    unroll(net, problem, theta, net.init_state(problem.layout), 5, 2, meta_grad=False)
    first, second = SEEN
    assert first.step.tolist() == [5, 5] and second.step.tolist() == [6, 6]  # one per segment: the inner step
    torch.testing.assert_close(first.loss, problem.loss(theta, 5).detach())
    assert first.param.shape == theta.shape and not first.loss.requires_grad


def test_parameters_added_later_have_their_own_clock():
    first, second = nn.Linear(3, 2), nn.Linear(2, 1)
    optimizer = LearnedOptimizer(first.parameters(), checkpoint=LossReader())
    x = torch.randn(4, 3)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = second(first(x)).pow(2).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    optimizer.add_param_group({"params": list(second.parameters())})
    optimizer.step(closure)
    assert SEEN[-1].step.tolist() == [1, 1, 0, 0]


def test_fsdp2_sharded_parameters_are_refused_for_a_net_with_per_tensor_statistics(monkeypatch):
    monkeypatch.setattr(sharded, "is_sharded", lambda tensor: isinstance(tensor, Tensor))
    with pytest.raises(ConfigError, match="FeatureMLP, which is not coordinatewise.*per-tensor"):
        LearnedOptimizer(_model().parameters(), checkpoint=FeatureMLP())


def test_unsupported_parameters_are_clear_errors_and_scalars_work():
    with pytest.raises(UnsupportedGradientError, match="complex"):
        LearnedOptimizer([nn.Parameter(torch.zeros(3, dtype=torch.complex64))], checkpoint=FeatureMLP())
    embedding = nn.Embedding(10, 3, sparse=True)
    optimizer = LearnedOptimizer(embedding.parameters(), checkpoint=FeatureMLP())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(UnsupportedGradientError, match="sparse"):
        optimizer.step()
    scalar = nn.Parameter(torch.tensor(2.0))
    optimizer = LearnedOptimizer([scalar], checkpoint=FeatureMLP(step_mult=0.1))
    for _ in range(3):
        optimizer.zero_grad()
        scalar.pow(2).backward()
        optimizer.step()
    assert 0 < scalar.item() < 2.0 and optimizer.state[scalar]["tensor_state"].shape == (3, 2)


def test_exported_file_loads_by_path(tmp_path):
    net = FeatureMLP(hidden_size=4, scaling="mup")
    written = tmp_path / "written.pt"
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, **net.spec, "state_dict": net.state_dict(), "metadata": {}}
    atomic_save(record, written)
    path = export(written, tmp_path / "features.pt")  # re-exported: rebuilt and checked before it is written
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_net(str(path))
    assert isinstance(loaded, FeatureMLP) and loaded.config == net.config
    model = _model()
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=str(path))
    _train(model, optimizer, 2)


def test_a_scheduled_net_needs_total_steps_and_steps_as_its_forward_does():
    """total_steps is required and checked, per group, kept in the state dict; the deployed step reads step / total_steps."""
    net, model = FeatureMLP(step_mult=0.01, schedule=True), _model()
    for bad in (None, 0, 2.5, True):
        with pytest.raises(ConfigError, match="total_steps"):
            LearnedOptimizer(model.parameters(), checkpoint=net, total_steps=bad)
    reference = copy.deepcopy(model)
    optimizer = LearnedOptimizer(model.parameters(), checkpoint=net, total_steps=4, chunk_size=16)
    layout = Layout.of_module(reference)
    state = net.init_state(layout)
    for step in range(6):  # past total_steps the net reads "done"
        _closure(model, optimizer)()
        optimizer.step()
        state = _forward_step(net, reference, layout, state, step, horizon=4)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    saved = optimizer.state_dict()
    assert saved["param_groups"][0]["total_steps"] == 4
    for group in saved["param_groups"]:
        del group["total_steps"]  # a state dict of a version before total_steps: the optimizer's own is kept
    fresh = LearnedOptimizer(model.parameters(), checkpoint=net, total_steps=9)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["total_steps"] == 9
    saved["param_groups"][0]["total_steps"] = -1
    with pytest.raises(CheckpointError, match="total_steps"):
        fresh.load_state_dict(saved)
    plain = LearnedOptimizer(_model().parameters(), checkpoint=FeatureMLP())  # a net without a schedule needs none
    assert plain.param_groups[0]["total_steps"] is None


def test_unroll_of_a_scheduled_net_needs_the_horizon():
    problem = QuadraticTask(dim=3, num_problems=2).sample(torch.Generator().manual_seed(0))
    net = FeatureMLP(schedule=True).bind(problem.layout)
    theta, state = problem.initial_params(), net.init_state(problem.layout)
    with pytest.raises(ConfigError, match="horizon"):
        unroll(net, problem, theta, state, 0, 2, meta_grad=False)
    assert unroll(net, problem, theta, state, 0, 2, meta_grad=False, horizon=4).losses.shape[0] == 2
