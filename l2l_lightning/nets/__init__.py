"""Learned optimizer networks: plain ``nn.Module``s with a functional, state-passing core."""

from l2l_lightning.nets.lstm import CoordinatewiseLSTM, FusedLSTMCell
from l2l_lightning.nets.preprocessing import PREPROCESS_NAMES, preprocess

__all__ = ["CoordinatewiseLSTM", "FusedLSTMCell", "PREPROCESS_NAMES", "preprocess"]
