"""Learned optimizer networks: plain ``nn.Module``s with a functional, state-passing core."""

from l2l_lightning.nets.lstm import CoordinatewiseLSTM, FusedLSTMCell
from l2l_lightning.nets.preprocessing import PREPROCESS_NAMES, preprocess
from l2l_lightning.nets.routed import BoundNets, RoutedNets

__all__ = ["BoundNets", "CoordinatewiseLSTM", "FusedLSTMCell", "PREPROCESS_NAMES", "RoutedNets", "preprocess"]
