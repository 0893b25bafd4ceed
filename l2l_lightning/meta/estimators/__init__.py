"""Outer-gradient estimators: how a truncation's meta-gradient is estimated (see :mod:`.base`)."""

from l2l_lightning.meta.estimators.base import OuterEstimator, Truncation, TruncationResult
from l2l_lightning.meta.estimators.pes import PES
from l2l_lightning.meta.estimators.tbptt import TruncatedBPTT

__all__ = ["OuterEstimator", "PES", "Truncation", "TruncatedBPTT", "TruncationResult"]
