"""Learned optimizer networks: the interface (:mod:`~l2l_lightning.nets.base`) and the paper's nets."""

from l2l_lightning.nets.base import LearnedOptimizerNet
from l2l_lightning.nets.inputs import Inputs, StepInputs
from l2l_lightning.nets.kernel import ChunkKernel
from l2l_lightning.nets.layout import Layout, Segment
from l2l_lightning.nets.gac import GlobalAveragingLSTM
from l2l_lightning.nets.lstm import CoordinatewiseLSTM, FusedLSTMCell
from l2l_lightning.nets.feature_lstm import FeatureLSTM
from l2l_lightning.nets.mlp import FeatureMLP, FeatureNet
from l2l_lightning.nets.preprocessing import PREPROCESS_NAMES, preprocess
from l2l_lightning.nets.routed import BoundNets, RoutedNets

__all__ = [
    "BoundNets",
    "ChunkKernel",
    "CoordinatewiseLSTM",
    "FeatureLSTM",
    "FeatureMLP",
    "FeatureNet",
    "FusedLSTMCell",
    "GlobalAveragingLSTM",
    "Inputs",
    "Layout",
    "LearnedOptimizerNet",
    "PREPROCESS_NAMES",
    "RoutedNets",
    "Segment",
    "StepInputs",
    "preprocess",
]
