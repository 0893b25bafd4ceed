"""A benchmark task as a YAML file: a model, a data stream, a loss and a step budget.

Each file of a suite folder (``configs/bench/*.yaml``) is one task::

    steps: 1000                       # the training run's length
    model: {class_path: l2l_lightning.bench.models.MLP, init_args: {...}}
    data:  {class_path: l2l_lightning.bench.data.ImageClassification, init_args: {...}}
    loss: cross_entropy               # cross_entropy | mse | output (the model returns its loss)

The task's name is the file's stem.  Classes are imported by path, so adding a task is one
YAML file (and at most one small module class of the user's own).  Everything that goes
wrong while building a task is a :class:`~l2l_lightning.errors.ConfigError` naming the task.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import yaml
from torch import Tensor, nn
from torch.nn import functional as F

from l2l_lightning.bench.data import DataStream
from l2l_lightning.errors import ConfigError, DatasetError, L2LError, check_int_range

LOSSES: dict[str, Callable[[Any, Any], Tensor]] = {
    "cross_entropy": lambda output, target: F.cross_entropy(output.flatten(0, -2), target.flatten()),
    "mse": lambda output, target: F.mse_loss(output.flatten(1), target.flatten(1)),  # an image target vs flat outputs
    "output": lambda output, target: output,
}


def _import(path: Any, what: str) -> type:
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(f"{what}: class_path={path!r} must be a dotted path such as l2l_lightning.bench.models.MLP")
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"{what}: cannot import {path} ({error})") from None


@dataclass(frozen=True)
class BenchTask:
    """One task of the suite (see the module docstring for the YAML form)."""

    name: str
    steps: int
    model: dict[str, Any]
    data: dict[str, Any]
    loss: str = "cross_entropy"

    @classmethod
    def from_file(cls, path: Path) -> "BenchTask":
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"task {path.stem}: {path} is not readable YAML ({error})") from None
        if not isinstance(raw, dict) or not {"steps", "model", "data"} <= set(raw):
            raise ConfigError(f"task {path.stem}: {path} must be a mapping with steps, model and data (and loss)")
        task = cls(path.stem, raw["steps"], raw["model"], raw["data"], raw.get("loss", "cross_entropy"))
        check_int_range(f"task {task.name}: steps", task.steps, 2)
        if task.loss not in LOSSES:
            raise ConfigError(f"task {task.name}: loss={task.loss!r}; allowed: {', '.join(LOSSES)}")
        for part in ("model", "data"):
            spec = getattr(task, part)
            if not isinstance(spec, dict) or "class_path" not in spec:
                raise ConfigError(f"task {task.name}: {part} must be a mapping with class_path (and init_args)")
        return task

    @property
    def config(self) -> dict[str, Any]:
        """Everything that decides the task's runs: what the cache key hashes."""
        return {"steps": self.steps, "model": self.model, "data": self.data, "loss": self.loss}

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]

    def with_steps(self, steps: int) -> "BenchTask":
        return BenchTask(self.name, steps, self.model, self.data, self.loss)

    def _build(self, part: str, base: type) -> Any:
        spec = getattr(self, part)
        cls = _import(spec["class_path"], f"task {self.name}: {part}")
        try:
            built = cls(**copy.deepcopy(spec.get("init_args") or {}))
        except DatasetError as error:
            raise DatasetError(f"task {self.name}: {' '.join(str(error).split())}") from None  # one line
        except L2LError as error:
            raise ConfigError(f"task {self.name}: {part} {spec['class_path']}: {error}") from None
        except Exception as error:  # noqa: BLE001  (any failure of a user's class is bad input, told in one line)
            raise ConfigError(f"task {self.name}: {part} {spec['class_path']} fails to build: {type(error).__name__}: {error}") from None
        if not isinstance(built, base):
            raise ConfigError(f"task {self.name}: {part} {spec['class_path']} is not a {base.__name__}")
        return built

    def build_model(self, seed: int) -> nn.Module:
        """The model with the initial weights of ``seed`` (the global generator is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._build("model", nn.Module)

    def build_data(self) -> DataStream:
        return self._build("data", DataStream)

    def loss_fn(self) -> Callable[[Any, Any], Tensor]:
        return LOSSES[self.loss]


def default_suite() -> Path:
    """``configs/bench`` of the checkout the package runs from."""
    return Path(__file__).resolve().parents[2] / "configs" / "bench"


def load_suite(folder: str | Path, patterns: Optional[Sequence[str]] = None) -> list[BenchTask]:
    """The tasks of ``folder`` (one ``*.yaml`` each), by name, kept when a name matches a pattern (shell globs)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"suite folder {folder} does not exist; give --suite a folder of task YAML files (e.g. configs/bench)")
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise ConfigError(f"suite folder {folder} holds no task YAML files")
    names = [f.stem for f in files]
    if patterns:
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if len(unmatched) == len(patterns):
            raise ConfigError(f"--tasks {' '.join(patterns)} matches no task; tasks in {folder}: {', '.join(names)}")
        if unmatched:
            raise ConfigError(f"unknown task {', '.join(unmatched)}; tasks in {folder}: {', '.join(names)}")
        files = [f for f in files if any(fnmatch.fnmatchcase(f.stem, p) for p in patterns)]
    return [BenchTask.from_file(f) for f in files]
