"""The shipped optimizers still load and make exactly the updates they made when they were shipped.

``reference/updates.pt`` was written by ``reference/make_reference_updates.py`` before the
net interface was refactored; any change to the step's arithmetic, to the loading of
shipped files or to their weights shows up here as unequal bits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from l2l_lightning.optim import pretrained
from tests.optim.conftest import SHIPPED_DIR
from tests.optim.reference.make_reference_updates import replay

REFERENCE = torch.load(Path(__file__).parent / "reference" / "updates.pt", weights_only=True)


@pytest.fixture(autouse=True)
def pretrained_dir(monkeypatch) -> Path:
    """Here, unlike the other deployment tests, the real shipped files are the subject."""
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", SHIPPED_DIR)
    return SHIPPED_DIR


@pytest.mark.parametrize("name", sorted(REFERENCE["names"]))
def test_shipped_optimizer_reproduces_its_reference_updates(name):
    expected = REFERENCE["names"][name]
    got = torch.stack(replay(name))
    assert torch.equal(got, expected), f"{name}: max difference {(got - expected).abs().max().item():.3g}"


def test_every_shipped_optimizer_has_a_reference():
    assert set(pretrained.available()) <= set(REFERENCE["names"]), "add the new optimizer with make_reference_updates.py"
