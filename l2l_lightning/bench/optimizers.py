"""The optimizers a bench runs: tuned baselines, hand-designed ``torch.optim`` classes and learned optimizers.

Every optimizer is a :class:`Contender`: a label, a way to build a ``torch.optim.Optimizer``
at a learning rate, a schedule (``constant`` or ``cosine``: ``torch.optim.lr_scheduler.CosineAnnealingLR``
over the run) and an identity for the cache.  Baselines and class paths are tuned on a
learning-rate grid; learned optimizers run at their shipped rate (1.0), and optionally at others.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch

from l2l_lightning.compare import labelled
from l2l_lightning.errors import CheckpointError, ConfigError
from l2l_lightning.meta.baselines import BASELINES

Schedule = Literal["constant", "cosine"]
#: ``package.module.Class``: a hand-designed optimizer; anything else is a learned one (name or file).
_CLASS_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
#: ``factory(params, lr, total_steps)``: the run's length is told to every optimizer, as the cosine
#: schedule is; baselines ignore it, a learned optimizer with a learned schedule reads it.
Factory = Callable[[list[torch.nn.Parameter], float, int], torch.optim.Optimizer]

#: ``l2l bench``'s baselines: name -> (``meta.baselines`` optimizer or ``"adamw"``, schedule); library defaults otherwise.
BENCH_BASELINES: dict[str, tuple[str, Schedule]] = {
    "adam": ("adam", "constant"),
    "adam_cosine": ("adam", "cosine"),
    "nag": ("nag", "constant"),
    "adamw": ("adamw", "constant"),
}
#: The baselines whose curves define "tuned Adam" for the speedup.
ADAM_REFERENCE = ("adam", "adam_cosine")


def _run_length_unused(make: Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer]) -> Factory:
    """A :data:`Factory` of an optimizer that does not read the run's length."""
    return lambda params, lr, total_steps: make(params, lr)


_FACTORIES: dict[str, Factory] = {
    name: _run_length_unused(make)
    for name, make in {**BASELINES, "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr)}.items()
}

#: Log grids (half decades), 6 rates each; extended when the best rate is at an edge.
DEFAULT_GRIDS: dict[str, list[float]] = {
    "adam": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
    "adam_cosine": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
    "nag": [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3],
    "adamw": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
    "torch": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3],  # any class path given with --optimizers
}


@dataclass
class Contender:
    """One optimizer of the bench."""

    label: str
    factory: Factory
    identity: str  #: what the cache key holds: a baseline's name, a class path, or a learned net's fingerprint
    schedule: Schedule = "constant"
    tuned: bool = True  #: tuned on a grid (else: run at ``lrs``)
    lrs: list[float] = field(default_factory=list)  #: the grid, or the fixed rates of a learned optimizer
    baseline: bool = False  #: one of the tuned baselines the others are measured against


def baseline(name: str, grids: dict[str, list[float]]) -> Contender:
    if name not in BENCH_BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; allowed: {', '.join(BENCH_BASELINES)}")
    kind, schedule = BENCH_BASELINES[name]
    return Contender(name, _FACTORIES[kind], f"baseline:{kind}", schedule, True, list(grids.get(name, DEFAULT_GRIDS[name])), True)


def contender(entry: str, grids: dict[str, list[float]], learned_lrs: list[float]) -> list[Contender]:
    """``entry`` as contenders: a ``torch.optim`` class path (tuned on a grid) or a learned optimizer
    (shipped name, exported file or ``MetaLearner`` checkpoint, optionally ``label=spec``), at its
    shipped rate 1.0 and at each of ``learned_lrs``.  :class:`ConfigError` naming it if it is neither.
    """
    label, spec = labelled(entry)
    if _CLASS_PATH.match(spec) and not Path(spec).is_file() and not spec.endswith((".pt", ".ckpt")):
        module, _, name = spec.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(f"unknown optimizer {entry!r}: no class {spec}") from None
        if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
            raise ConfigError(f"unknown optimizer {entry!r}: {spec} is not a torch.optim.Optimizer class")
        label = name if label == spec else label
        return [Contender(label, _run_length_unused(lambda params, lr: cls(params, lr=lr)), f"class:{spec}", "constant", True, list(grids.get("torch", DEFAULT_GRIDS["torch"])))]
    from l2l_lightning.optim.learned import LearnedOptimizer
    from l2l_lightning.optim.pretrained import load_net
    from l2l_lightning.serialization import fingerprint

    try:
        net = load_net(spec)
    except (CheckpointError, OSError) as error:
        raise ConfigError(f"unknown optimizer {entry!r}: {error}") from None
    identity = f"learned:{fingerprint(net)}"

    def factory(params: list[torch.nn.Parameter], lr: float, total_steps: int) -> torch.optim.Optimizer:
        return LearnedOptimizer(params, checkpoint=net, lr=lr, total_steps=total_steps)  # read by a learned schedule only

    rates = [1.0] + [lr for lr in learned_lrs if lr != 1.0]
    return [Contender(label if lr == 1.0 else f"{label}@{lr:g}", factory, identity, "constant", False, [lr]) for lr in rates]


def scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule, steps: int) -> Optional[Any]:
    """Torch's own cosine decay to 0 over the run, or ``None`` for a constant rate."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return None
