"""Exceptions that carry a message meant for the user, not a traceback.

The ``l2l`` command prints these as ``l2l: error: <message>`` and exits non-zero;
library users can catch them by type.  They subclass the builtin they refine so
that ``except ValueError`` keeps working.
"""

import math
from collections.abc import Iterable
from typing import Any, Optional


class L2LError(Exception):
    """Base class of every error l2l-lightning raises on purpose."""


class ConfigError(L2LError, ValueError):
    """A setting has a value that cannot work; the message names the setting and what is allowed."""


class NonFiniteMetaLossError(L2LError, RuntimeError):
    """Meta-training produced too many non-finite meta-losses or meta-gradients in a row."""


class CheckpointError(L2LError, ValueError):
    """A file, checkpoint or state dict is not what was expected; the message says what was expected."""


class UnsupportedGradientError(L2LError, TypeError):
    """An optimizer met a gradient it cannot handle (sparse or complex)."""


class DatasetError(L2LError, OSError):
    """A dataset's files are missing, truncated or corrupt; the message names the files and how to get them."""


# One checking helper per kind of setting, each with the same message shape:
# ``<name>=<value> must be <kind><what>`` (``what`` says what the setting is for).


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any, what: str = "") -> int:
    """``value`` if it is a positive integer (not a bool), else a :class:`ConfigError` naming ``name``."""
    if not _is_int(value) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer{what}")
    return value


def check_nonnegative_int(name: str, value: Any, what: str = "") -> int:
    """``value`` if it is an integer ``>= 0`` (not a bool), else a :class:`ConfigError` naming ``name``."""
    if not _is_int(value) or value < 0:
        raise ConfigError(f"{name}={value!r} must be a non-negative integer{what}")
    return value


def check_int_range(name: str, value: Any, low: int, high: Optional[int] = None, what: str = "") -> int:
    """``value`` if it is an integer from ``low`` to ``high`` (``None``: no bound; not a bool), else a :class:`ConfigError`."""
    if not _is_int(value) or value < low or (high is not None and value > high):
        kind = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        raise ConfigError(f"{name}={value!r} must be {kind}{what}")
    return value


def _is_real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_positive_float(name: str, value: Any, what: str = "") -> float:
    """``float(value)`` if it is a positive finite number (not a bool), else a :class:`ConfigError`."""
    if not _is_real(value) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive finite number{what}")
    return float(value)


def check_nonnegative_float(name: str, value: Any, what: str = "") -> float:
    """``float(value)`` if it is a finite number ``>= 0`` (not a bool), else a :class:`ConfigError`."""
    if not _is_real(value) or value < 0:
        raise ConfigError(f"{name}={value!r} must be a finite non-negative number{what}")
    return float(value)


def check_probability(name: str, value: Any, what: str = "") -> float:
    """``float(value)`` if it is a number from 0 to 1 (not a bool), else a :class:`ConfigError`."""
    if not _is_real(value) or not 0 <= value <= 1:
        raise ConfigError(f"{name}={value!r} must be a number from 0 to 1{what}")
    return float(value)


def check_float_range(name: str, value: Any, low: float, high: float = math.inf, what: str = "") -> float:
    """``float(value)`` if it is a finite number in ``[low, high)`` (not a bool), else a :class:`ConfigError`."""
    if not _is_real(value) or not low <= value < high:
        kind = f"a finite number >= {low}" if high == math.inf else f"a number in [{low}, {high})"
        raise ConfigError(f"{name}={value!r} must be {kind}{what}")
    return float(value)


def check_bool(name: str, value: Any, what: str = "") -> bool:
    """``value`` if it is ``True`` or ``False``, else a :class:`ConfigError`."""
    if value is not True and value is not False:
        raise ConfigError(f"{name}={value!r} must be True or False{what}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any], what: str = "") -> Any:
    """``value`` if it is one of ``choices``, else a :class:`ConfigError` listing them."""
    allowed = list(choices)
    if not any(value is c or (type(value) is type(c) and value == c) for c in allowed):  # 1 is not True
        raise ConfigError(f"{name}={value!r}; allowed: {', '.join(repr(c) for c in allowed)}{what}")
    return value
