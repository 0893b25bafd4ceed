"""The state dict codec (``l2l_lightning/optim/state.py``): old formats load, every restored field is checked."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from l2l_lightning import CheckpointError
from l2l_lightning.optim import pretrained
from l2l_lightning.optim.state import LEGACY_NET_STATE, NET_STATE
from tests.optim.conftest import SHIPPED_DIR
from tests.optim.reference import make_v1_state_dict as v1

V1 = torch.load(Path(__file__).parent / "reference" / "v1_state_dict.pt", weights_only=True)


@pytest.fixture(autouse=True)
def shipped(monkeypatch) -> None:
    """The stored state dict was written with the shipped ``quadratic`` optimizer."""
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", SHIPPED_DIR)


def test_a_state_dict_of_the_first_format_loads_and_continues_bit_for_bit():
    assert set(V1["state_dict"]["state"][0]) == {"lstm", "step"} and LEGACY_NET_STATE == ("lstm",)
    ps = v1.params()
    with torch.no_grad():
        for p, saved in zip(ps, V1["params"]):
            p.copy_(saved)
    optimizer = v1.build(ps)
    optimizer.load_state_dict(copy.deepcopy(V1["state_dict"]))
    assert optimizer.state[ps[1]][NET_STATE].dtype == torch.bfloat16 and optimizer.state[ps[0]]["step"] == 2
    v1.run(optimizer, ps, 2)
    for p, expected in zip(ps, V1["after"]):
        assert torch.equal(p.detach(), expected)
    assert set(optimizer.state_dict()["state"][0]) == {NET_STATE, "step"}  # saved under today's key


def _loading(mutate) -> None:
    """Load the stored state dict after ``mutate`` changed it."""
    state_dict = copy.deepcopy(V1["state_dict"])
    mutate(state_dict)
    v1.build(v1.params()).load_state_dict(state_dict)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: sd["param_groups"][1].update(state_dtype="float8"), r"param group #1: state_dtype='float8'; allowed"),
        (lambda sd: sd["param_groups"][0].update(lr=-1.0), r"param group #0: lr=-1.0 must be a finite non-negative"),
        (lambda sd: sd["param_groups"][0].update(lr="fast"), r"param group #0: lr='fast'"),
        (lambda sd: sd["param_groups"][0].update(route=3), r"param group #0 has route=3"),
        (lambda sd: sd["state"][0].update(step=-2), r"parameter #0 \(5 elements\) has step=-2"),
        (lambda sd: sd["state"][0].update(step="2"), r"parameter #0 \(5 elements\) has step='2'"),
        (lambda sd: sd["state"][0].update(step=torch.tensor(1.5)), r"parameter #0 .* has step=tensor\(1.5000\)"),
        (lambda sd: sd["state"][1].update(momentum=torch.zeros(3)), r"parameter #1 .* unexpected state keys \['momentum'\]"),
        (lambda sd: sd["state"][1].update(lstm=torch.zeros(2, 2, 12, 20, dtype=torch.int64)), r"parameter #1 .* dtype torch.int64"),
        (lambda sd: sd["state"][1].update(lstm=torch.zeros(2, 2, 11, 20)), r"parameter #1 .* shape \(2, 2, 11, 20\)"),
        (lambda sd: sd["state"].update({0: [1, 2]}), r"parameter #0 .* a state of type list"),
        (lambda sd: sd.update(state=[]), r"'state' is a list"),
        (lambda sd: sd["param_groups"].pop(), r"1 groups of 1 parameters, this optimizer 2 groups of 2"),
    ],
)
def test_every_restored_field_is_checked_at_load_time(mutate, message):
    with pytest.raises(CheckpointError, match=message):
        _loading(mutate)


def test_a_refused_state_dict_leaves_the_optimizer_as_it_was():
    ps = v1.params()
    optimizer = v1.build(ps)
    v1.run(optimizer, ps, 0)
    before = copy.deepcopy(optimizer.state_dict())
    broken = copy.deepcopy(V1["state_dict"])
    broken["state"][1]["step"] = -1
    with pytest.raises(CheckpointError):
        optimizer.load_state_dict(broken)
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert all(torch.equal(after["state"][i][NET_STATE], before["state"][i][NET_STATE]) for i in (0, 1))
