"""Exceptions that carry a message meant for the user, not a traceback.

The ``l2l`` command prints these as ``l2l: error: <message>`` and exits non-zero;
library users can catch them by type.  They subclass the builtin they refine so
that ``except ValueError`` keeps working.
"""

from typing import Any


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


def check_positive_int(name: str, value: Any, what: str = "") -> int:
    """``value`` if it is a positive integer (not a bool), else a :class:`ConfigError` naming ``name``.

    Every integer setting (sizes, counts, steps) is checked here, so the message is the same everywhere.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer{what}")
    return value
