"""Names a package exports on first use (PEP 562), so importing it costs only what is used.

``l2l_lightning``, ``l2l_lightning.optim`` and ``l2l_lightning.nets`` each map their public
names to the modules that define them; deploying one optimizer then imports neither Lightning
nor every net family.  Kept free of package imports: the packages import it first.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], subpackages: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``.

    ``exports`` maps a public name to the module defining it; the first look-up imports that
    module and stores the value in the package, so later look-ups skip ``__getattr__``.
    ``subpackages`` are imported on first attribute access (``l2l_lightning.optim``).
    """
    namespace = sys.modules[package].__dict__
    subpackages = frozenset(subpackages)

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        if name in subpackages:
            return importlib.import_module(f"{package}.{name}")  # the import sets the attribute
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
