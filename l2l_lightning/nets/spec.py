"""Nets as plain data: ``{"class_path", "init_args"}`` and back.

Checkpoints, exported files and :class:`~l2l_lightning.nets.routed.RoutedNets` all
describe a net by its class and constructor arguments (the form LightningCLI writes),
never by pickling it, so a net is rebuilt here in one place, with one clear error.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from torch import nn

from l2l_lightning.errors import CheckpointError, L2LError


def import_class(class_path: str) -> type:
    """The class named by a dotted ``class_path`` (``CheckpointError`` if it cannot be imported)."""
    module_name, _, attr = class_path.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as error:
        raise CheckpointError(f"cannot import the net class {class_path!r}: {error}") from error
    return obj


def instantiate_net(spec: Mapping[str, Any], source: str, error: type[L2LError] = CheckpointError) -> nn.Module:
    """``class_path(**init_args)`` for a net spec; if that fails, an ``error`` naming ``source``.

    ``error`` is :class:`CheckpointError` for specs read from files and
    :class:`~l2l_lightning.errors.ConfigError` for specs a user wrote in a config.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("class_path"), str):
        raise error(f"{source}: expected a net spec {{'class_path': ..., 'init_args': {{...}}}}, got {spec!r}")
    try:
        cls = import_class(spec["class_path"])
    except CheckpointError as failure:
        raise error(f"{source}: {failure}") from failure
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise error(f"{source}: class_path {spec['class_path']!r} is not an nn.Module subclass")
    try:
        return cls(**dict(spec.get("init_args") or {}))
    except (TypeError, ValueError) as failure:
        raise error(f"{source}: cannot build {spec['class_path']} from its settings: {failure}") from failure
