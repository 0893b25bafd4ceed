"""Learned optimizer networks: the interface (:mod:`~l2l_lightning.nets.base`) and the paper's nets.

Every public name is imported on first use (PEP 562), as in :mod:`l2l_lightning.optim`: deploying
one optimizer imports the interface and that optimizer's net, not every net family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from l2l_lightning.lazy import lazy_exports

#: public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "BoundNets": "l2l_lightning.nets.routed",
    "ChunkKernel": "l2l_lightning.nets.kernel",
    "CoordinatewiseLSTM": "l2l_lightning.nets.lstm",
    "FeatureLSTM": "l2l_lightning.nets.feature_lstm",
    "FeatureMLP": "l2l_lightning.nets.mlp",
    "FeatureNet": "l2l_lightning.nets.mlp",
    "FusedLSTMCell": "l2l_lightning.nets.lstm",
    "GlobalAveragingLSTM": "l2l_lightning.nets.gac",
    "Inputs": "l2l_lightning.nets.inputs",
    "Layout": "l2l_lightning.nets.layout",
    "LearnedOptimizerNet": "l2l_lightning.nets.base",
    "PREPROCESS_NAMES": "l2l_lightning.nets.preprocessing",
    "RoutedNets": "l2l_lightning.nets.routed",
    "Segment": "l2l_lightning.nets.layout",
    "StepInputs": "l2l_lightning.nets.inputs",
    "preprocess": "l2l_lightning.nets.preprocessing",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from l2l_lightning.nets.base import LearnedOptimizerNet
    from l2l_lightning.nets.feature_lstm import FeatureLSTM
    from l2l_lightning.nets.gac import GlobalAveragingLSTM
    from l2l_lightning.nets.inputs import Inputs, StepInputs
    from l2l_lightning.nets.kernel import ChunkKernel
    from l2l_lightning.nets.layout import Layout, Segment
    from l2l_lightning.nets.lstm import CoordinatewiseLSTM, FusedLSTMCell
    from l2l_lightning.nets.mlp import FeatureMLP, FeatureNet
    from l2l_lightning.nets.preprocessing import PREPROCESS_NAMES, preprocess
    from l2l_lightning.nets.routed import BoundNets, RoutedNets
