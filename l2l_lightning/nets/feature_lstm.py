"""An LSTM over the feature MLP's features: the paper's recurrent net, reading what generalises.

The issue asks for both heads on the same features, so measurements can choose.
:class:`FeatureLSTM` is a :class:`~l2l_lightning.nets.mlp.FeatureNet` (same features, per-tensor
normalisation, Adafactor state, step embeddings, output form, Adam-like start) whose head is a
stacked coordinatewise LSTM instead of an MLP.  Its ``(h, c)`` per layer are more rows of the
per-coordinate state, after the features' (coordinates along columns, as everywhere in the
feature nets), so deployment runs the same two-pass chunked kernel, the state advanced in place.

Memory per coordinate: ``k + 1 + 2 · num_layers · hidden_size`` numbers: 36 (144 B in float32)
with the defaults (one layer of 16), under the paper LSTM's 80 (320 B).  The defaults are what
kept its deployment step under the paper LSTM's at 1M parameters on CPU (``benchmarks/feature_step.py``,
one run: one layer of 16 0.88×, one of 20 1.03×, two of 16 1.38× the paper LSTM's step).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from l2l_lightning.errors import check_positive_int
from l2l_lightning.nets.mlp import FeatureNet, Output, Scaling
from l2l_lightning.nets.mlp_kernel import direction_to_update


class FeatureLSTM(FeatureNet):
    """A stacked coordinatewise LSTM over the normalised features (see the module docstring).

    Args:
        hidden_size: units per LSTM layer.
        num_layers: stacked LSTM layers.
        The others are :class:`~l2l_lightning.nets.mlp.FeatureNet`'s.
    """

    def __init__(
        self,
        hidden_size: int = 16,
        num_layers: int = 1,
        momentum_decays: Sequence[float] = (0.9, 0.99, 0.999),
        rms_decay: float = 0.999,
        adafactor_decays: Sequence[float] = (0.9, 0.99, 0.999),
        exp_mult: float = 0.001,
        step_mult: float = 0.001,
        scaling: Scaling = "none",
        output: Output = "linear",
        schedule: bool = False,
        normalise: bool = True,
    ) -> None:
        super().__init__(
            momentum_decays, rms_decay, adafactor_decays, exp_mult, step_mult, scaling, output, schedule, normalise
        )
        self.hidden_size = check_positive_int("FeatureLSTM: hidden_size", hidden_size)
        self.num_layers = check_positive_int("FeatureLSTM: num_layers", num_layers)
        self.recurrent_rows = 2 * num_layers * hidden_size  # (h, c) per layer, after the features' rows
        sizes = [self.input_size] + [hidden_size] * (num_layers - 1)
        self.input_layers = nn.ModuleList(nn.Linear(size, 4 * hidden_size) for size in sizes)
        self.recurrent_layers = nn.ModuleList(nn.Linear(hidden_size, 4 * hidden_size, bias=False) for _ in sizes)
        self.output_layer = nn.Linear(hidden_size, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.LSTMCell``'s uniform initialisation, a zero output layer and the skip on ``m / √v``."""
        bound = 1 / math.sqrt(self.hidden_size)
        for layer in [*self.input_layers, *self.recurrent_layers]:
            nn.init.uniform_(layer.weight, -bound, bound)
            if layer.bias is not None:
                nn.init.uniform_(layer.bias, -bound, bound)
        nn.init.zeros_(self.output_layer.weight)
        nn.init.zeros_(self.output_layer.bias)
        self.reset_skip()

    @property
    def config(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size, "num_layers": self.num_layers, **self.feature_config}

    @property
    def first_layer(self) -> nn.Linear:
        return self.input_layers[0]

    def weight_list(self) -> list[Tensor]:
        """Per layer ``W_x, b, W_h`` (layer 0: ``W_x``'s feature columns, its bias read per tensor),
        then the output layer and the skip."""
        first = [self.input_layers[0].weight[:, : self.num_features], self.recurrent_layers[0].weight]
        later = [t for x, h in zip(self.input_layers[1:], self.recurrent_layers[1:]) for t in (x.weight, x.bias, h.weight)]
        return [*first, *later, self.output_layer.weight, self.output_layer.bias, self.skip]

    def step_head(
        self, weights: Sequence[Tensor], x: Tensor, first: Tensor, scale: Tensor, recurrent: Tensor
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Each layer one LSTM cell in columns (gates ``(4H, c)``), ``(h, c)`` read from and returned as state rows.

        ``tanh`` is computed as ``2σ(2a) − 1`` (one ``sigmoid`` over all four gates): on CPU ``sigmoid``
        is several times cheaper than ``tanh``, the trick the paper LSTM's kernel uses too."""
        hidden = self.hidden_size
        states = recurrent.split(hidden)
        new: list[Tensor] = []
        inp = x
        for layer in range(self.num_layers):
            h, c = states[2 * layer], states[2 * layer + 1]
            if layer == 0:
                gates = torch.mm(weights[0], inp).add_(first).addmm_(weights[1], h)
            else:
                w_x, b, w_h = weights[2 + 3 * (layer - 1) : 5 + 3 * (layer - 1)]
                gates = torch.addmm(b.unsqueeze(1), w_x, inp).addmm_(w_h, h)
            gates[2 * hidden : 3 * hidden] *= 2  # one sigmoid for all gates: tanh(a) = 2σ(2a) − 1 (as the paper LSTM)
            i, f, g, o = gates.sigmoid().split(hidden)
            c = torch.addcmul(f * c, i, g * 2 - 1)
            h = o * (torch.sigmoid(c * 2) * 2 - 1)
            new += (h, c)
            inp = h
        out = torch.addmm(weights[-2].unsqueeze(1), weights[-3], inp)
        return direction_to_update(self, out, weights[-1] @ x, scale), torch.cat(new)
