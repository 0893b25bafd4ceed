"""LSTM+GAC: the coordinatewise LSTM with global averaging cells (paper, Section 2.1).

A purely coordinatewise optimizer cannot see anything but its own coordinate's
gradient history.  The paper's cheapest remedy designates a few cells of each LSTM
layer for communication: they work like the others, but what they pass on is averaged
over all coordinates at each step.

**Which activations are averaged.**  Here: the last ``global_cells`` hidden units of each
layer, as the layer reads them back at the next step (its recurrent input ``h_{t-1}``).
Every coordinate then sees the same ``mean h_{t-1}`` for those units, a summary of the
whole optimizee's state, while the feed-forward path inside a step stays per coordinate.
That is what keeps the deployment step chunkable: the averages of step ``t`` come from
the states stored at step ``t-1``, one reduction over them before the chunks run
(:meth:`_GACKernel.prepare`), instead of a barrier between layers inside the step.

**Averaged over what.**  ``average_over="optimizee"`` (default, the paper's "all
coordinates"): all coordinates of one optimizee, i.e. every parameter tensor of one
network, or one of several quadratics optimized at once.  ``"tensor"``: each parameter
tensor separately, which lets the cells carry a per-tensor statistic (a layer's weights
and its biases behave differently).  Both are sensible, so both are settings; the layout
(:class:`~l2l_lightning.nets.base.Layout`) says where tensors and optimizees begin.

**In deployment** the optimizee is what one ``LearnedOptimizer`` steps together: all its
parameters with gradients on one device and of one gradient dtype, across param groups.
Under DDP every rank holds the same parameters and the all-reduced gradients, so every
rank computes the same averages without any communication.  Sharded parameters (FSDP)
would average per shard, which is not the net that was trained: not supported.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, get_args

import torch
from torch import Tensor

from l2l_lightning.errors import ConfigError, check_choice, check_int_range
from l2l_lightning.nets.layout import AverageOver, Layout
from l2l_lightning.nets.kernel import FusedStep, PureForm, Rows
from l2l_lightning.nets.lstm import CoordinatewiseLSTM
from l2l_lightning.nets.lstm_kernel import LSTMKernel
from l2l_lightning.nets.preprocessing import PreprocessName


class GlobalAveragingLSTM(CoordinatewiseLSTM):
    """:class:`~l2l_lightning.nets.CoordinatewiseLSTM` whose last ``global_cells`` cells per layer are averaged.

    Args:
        global_cells: hidden units per layer whose recurrent input is the average over
            coordinates (1 … ``hidden_size``; the paper does not give its number).
        average_over: ``"optimizee"`` (paper) or ``"tensor"`` (see the module docstring).
        The other arguments are :class:`~l2l_lightning.nets.CoordinatewiseLSTM`'s.
    """

    coordinatewise = False  # the averaged cells read every coordinate of the group

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocess: PreprocessName = "log_sign",
        p: float = 10.0,
        output_scale: float = 0.1,
        global_cells: int = 5,
        average_over: AverageOver = "optimizee",
    ) -> None:
        super().__init__(hidden_size, num_layers, preprocess, p, output_scale)
        check_int_range(
            "GlobalAveragingLSTM: global_cells", global_cells, 1, hidden_size,
            f" (the cells of each layer that are averaged, at most hidden_size={hidden_size})",
        )
        check_choice("GlobalAveragingLSTM: average_over", average_over, get_args(AverageOver))
        self.global_cells = global_cells
        self.average_over = average_over
        self._groups: dict[tuple[Layout, torch.device], tuple[Tensor, Tensor, int]] = {}

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "global_cells": self.global_cells, "average_over": self.average_over}

    def bind(self, layout: Layout) -> "GlobalAveragingLSTM":
        if layout.numel and not len(layout):
            raise ConfigError("GlobalAveragingLSTM needs a layout with at least one tensor")
        return self

    def groups(self, layout: Layout, device: torch.device) -> tuple[Tensor, Tensor, int]:
        """``(group of each coordinate, coordinates per group, number of groups)`` (cached per layout)."""
        key = (layout, device)
        if key not in self._groups:
            ids, count = layout.group_index(self.average_over)
            per_row = torch.repeat_interleave(torch.tensor(ids, dtype=torch.long), torch.tensor(layout.sizes, dtype=torch.long))
            sizes = torch.zeros(count, dtype=torch.long).index_add_(0, per_row, torch.ones_like(per_row))
            if len(self._groups) > 64:  # a long run over many layouts: keep the cache small
                self._groups.clear()
            self._groups[key] = (per_row.to(device), sizes.clamp(min=1).to(device), count)
        return self._groups[key]

    def recurrent_input(self, layer: int, h: Tensor, layout: Layout) -> Tensor:
        """``h`` with its last ``global_cells`` columns replaced by their mean over each group (differentiable)."""
        k = self.global_cells
        per_row, sizes, count = self.groups(layout, h.device)
        sums = h.new_zeros(count, k).index_add(0, per_row, h[:, -k:])
        means = sums / sizes.to(h.dtype).unsqueeze(1)
        return torch.cat((h[:, :-k], means.index_select(0, per_row)), dim=1)

    def chunk_kernel(self, dtype: torch.dtype, device: torch.device) -> "_GACKernel":
        return _GACKernel(self, dtype, device)


class _GACKernel(LSTMKernel):
    """The LSTM kernel, with each chunk's averaged cells read from per-group means taken before the chunks."""

    net: GlobalAveragingLSTM

    def prepare(self, states: Sequence[Tensor], layout: Layout) -> None:
        """The mean of each layer's averaged cells per group, over the states as they are before this step."""
        super().prepare(states, layout)
        net, k = self.net, self.net.global_cells
        ids, count = layout.group_index(net.average_over)
        self.group_of_segment = ids
        device = states[0].device if states else torch.device("cpu")
        sums = torch.zeros(net.num_layers, count, k, dtype=self.dtype, device=device)
        sizes = torch.zeros(count, dtype=self.dtype, device=device)
        for state, group, size in zip(states, ids, layout.sizes):
            sums[:, group] += state[:, 0, :, -k:].to(self.dtype).sum(dim=1)
            sizes[group] += size
        self.means = sums / sizes.clamp(min=1).unsqueeze(1)

    def recurrent(self, layer: int, xh_h: Tensor, h: Tensor, rows: Rows) -> None:
        k = self.net.global_cells
        xh_h[:, :-k].copy_(h[:, :-k])
        for segment, _, row, length in rows:
            xh_h[row : row + length, -k:].copy_(self.means[layer, self.group_of_segment[segment]].expand(length, k))

    def functional(self) -> Optional[PureForm]:
        return None  # the averaged columns depend on the chunk's rows: eager only

    def fused_step(self, device: torch.device) -> Optional[FusedStep]:
        return None  # the LSTM's fused kernel has no averaged cells
