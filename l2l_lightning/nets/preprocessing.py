"""Gradient preprocessing: how one raw gradient coordinate becomes the LSTM's input.

Gradients of real optimizees span many orders of magnitude, which a small LSTM
with sigmoid/tanh gates cannot read directly.  The paper (Appendix A) splits each
coordinate into a magnitude and a sign channel; the authors' code uses a continuous,
clamped version of the same idea.  Both are exposed, plus ``"none"`` (the raw
gradient, which the paper uses for the quadratic experiment).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from l2l_lightning.errors import ConfigError, check_positive_float

PreprocessName = Literal["none", "log_sign", "clamped"]
PREPROCESS_NAMES: tuple[str, ...] = get_args(PreprocessName)


def check_preprocess(name: str, p: float) -> None:
    """Raise :class:`ConfigError` unless ``name`` and ``p`` describe a usable preprocessing."""
    if name not in PREPROCESS_NAMES:
        raise ConfigError(
            f"preprocess={name!r} is not a known gradient preprocessing; "
            f"allowed values: {', '.join(repr(n) for n in PREPROCESS_NAMES)}"
        )
    check_positive_float("p", p, " (the paper uses 10, the authors' code 5)")


def num_features(name: str) -> int:
    """Input width the preprocessing produces per coordinate."""
    return 1 if name == "none" else 2


def _features(grad: Tensor, name: str, p: float) -> tuple[Tensor, ...]:
    """The input columns, each shaped like ``grad``: the one definition both entry points share."""
    if name == "none":
        return (grad,)
    abs_grad = grad.abs()
    if name == "log_sign":
        threshold = math.exp(-p)
        big = abs_grad >= threshold
        magnitude = torch.where(big, abs_grad.clamp_min(threshold).log() / p, -1.0)
        direction = torch.where(big, grad.sign(), grad * math.exp(p))
    elif name == "clamped":
        eps = torch.finfo(grad.dtype).eps  # as in the authors' LogAndSign
        magnitude = ((abs_grad + eps).log() / p).clamp_min(-1.0)
        direction = (grad * math.exp(p)).clamp(-1.0, 1.0)
    else:  # guarded by check_preprocess at construction
        raise ConfigError(f"unknown preprocess {name!r}; allowed: {PREPROCESS_NAMES}")
    return magnitude, direction


def preprocess(grad: Tensor, name: str, p: float) -> Tensor:
    """Map a 1-D gradient of ``n`` coordinates to an ``(n, num_features(name))`` input.

    * ``"none"``: ``[g]``.
    * ``"log_sign"`` (paper): ``[log|g| / p, sign(g)]`` if ``|g| >= e^-p`` else ``[-1, e^p g]``.
      The log is taken of ``|g|`` clamped at ``e^-p`` so the unused branch of ``where``
      never holds ``-inf`` (which would turn second derivatives into NaN).
    * ``"clamped"`` (authors' code): ``[clamp(log(|g| + eps) / p, min=-1), clamp(e^p g, -1, 1)]``.
    """
    if name == "none":
        return grad.unsqueeze(1)
    return torch.stack(_features(grad, name, p), dim=1)


def preprocess_into(grad: Tensor, name: str, p: float, out: Tensor) -> Tensor:
    """:func:`preprocess` written into ``out`` (``(n, num_features(name))``, may be a strided view).

    The no-grad deployment step uses it to fill the first columns of its ``[input, h]``
    buffer chunk by chunk; the values are exactly those of :func:`preprocess`.
    """
    for column, feature in enumerate(_features(grad, name, p)):
        out[:, column].copy_(feature)
    return out
