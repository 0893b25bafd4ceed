"""``{"class_path", "init_args"}``: the one way l2l_lightning describes an object as plain data.

Nets, tasks, estimators, the meta-optimizer, exported files and optimizer state dicts all
name a class this way (the form LightningCLI reads), and all build such a spec with
:func:`make_spec` and read one with :func:`read_spec`.  Kept apart from
:mod:`l2l_lightning.serialization`, which builds nets from files and so imports ``nets``:
``nets`` itself writes and reads specs, and the two must not import each other.
"""

from __future__ import annotations

from typing import Any, Mapping, Union

from l2l_lightning.errors import CheckpointError, L2LError


def make_spec(cls: Union[type, str], init_args: Mapping[str, Any]) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` for ``cls(**init_args)`` (a class or its dotted path): the one
    place a spec is written, in the form LightningCLI reads."""
    class_path = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    return {"class_path": class_path, "init_args": dict(init_args)}


def read_spec(spec: Any, source: str, error: type[L2LError] = CheckpointError) -> tuple[str, dict[str, Any]]:
    """``(class_path, init_args)`` of a spec, or an ``error`` naming ``source``: the one place a spec is read.

    ``init_args`` may be missing or ``None`` (no arguments), as LightningCLI allows.
    """
    init_args = spec.get("init_args") if isinstance(spec, Mapping) else None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("class_path"), str) or not isinstance(
        init_args, (Mapping, type(None))
    ):
        raise error(f"{source}: expected a spec {{'class_path': ..., 'init_args': {{...}}}}, got {spec!r}"[:500])
    return spec["class_path"], dict(init_args or {})
