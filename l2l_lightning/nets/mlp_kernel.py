"""The feature MLP's arithmetic, written once for meta-training and for the deployment kernel.

:class:`~l2l_lightning.nets.mlp.FeatureMLP` (the small_fc_lopt / AdafacMLPLOpt line) reads, per
coordinate, a vector of features built from its gradient, its parameter, momenta, a second
moment and the Adafactor row and column accumulators of its tensor, normalised per tensor, plus
tanh embeddings of the step number.  The pieces:

* :func:`matrix_view`: every tensor is seen as a matrix ``(rows, cols)``: ``(shape[0], numel /
  shape[0])`` for two or more dims (the fan-out × fan-in view of a linear or conv weight),
  ``(n, 1)`` for a vector and ``(1, 1)`` for a scalar.  A vector's row accumulators are then
  the non-factored per-coordinate accumulator of the reference's fallback, and its one column
  accumulator is the tensor's mean, so factored and non-factored tensors go through one formula.
* :func:`fill_indices`: for rows of coordinates given as pieces of segments, each row's segment
  and its row and column slot in the concatenated accumulators (index arithmetic, no table).
* :func:`features`: the un-normalised features and the new per-coordinate state.
* :func:`head`: normalised features and time embeddings through the MLP to the update
  ``−direction · exp(exp_mult · magnitude) · step_mult · scale``.

Meta-training runs them over the whole flat vector at once (differentiable); the deployment
kernel (:class:`FeatureKernel`) runs them chunk by chunk, after a first pass over whole tensors
(:meth:`FeatureKernel.prepare_step`) for the per-tensor accumulators and the normalisers: the
two passes of PyLO's CUDA kernels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Optional, Protocol

import torch
from torch import Tensor

from l2l_lightning.nets.inputs import StepInputs
from l2l_lightning.nets.kernel import ChunkKernel, Rows
from l2l_lightning.nets.layout import Layout

#: Timescales of the step-number embeddings ``tanh(step / timescale − 1)`` (the reference's 11).
TIMESCALES: tuple[float, ...] = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
#: Powers of the fraction of training done ``f = step / horizon`` (clamped to [0, 1]) that a net with
#: a learned schedule reads beside the step embeddings: all 0 at the start, so columns of zeros
#: added to a trained net's first layer leave it unchanged (a warm start).
PROGRESS_POWERS: tuple[int, ...] = (1, 2, 4)
#: Added to squared gradients and under square roots of accumulators: keeps an all-zero tensor finite.
TINY = 1e-30
#: Added to the second moment under ``rsqrt``: small against any gradient scale worth reading.
V_EPS = 1e-16
#: Rows per piece of the first pass over whole tensors (its temporaries stay in cache).
PASS_ROWS = 8192


class FeatureSettings(Protocol):
    """What the arithmetic reads of its net (:class:`~l2l_lightning.nets.mlp.FeatureMLP`)."""

    momentum_decays: tuple[float, ...]
    rms_decay: float
    adafactor_decays: tuple[float, ...]
    exp_mult: float
    step_mult: float
    scaling: str
    output: str
    normalise: bool

    @property
    def num_features(self) -> int: ...


def num_features(momenta: int, adafactor: int) -> int:
    """Normalised features per coordinate: g, p, m·k, v, m/√v·k, 1/√v, and six per Adafactor decay."""
    return 4 + 2 * momenta + 6 * adafactor


def matrix_view(shape: Sequence[int]) -> tuple[int, int]:
    """The ``(rows, cols)`` a tensor of ``shape`` is factored as (see the module docstring)."""
    numel = math.prod(shape)
    if numel == 0:
        return 0, 0
    if len(shape) >= 2:
        rows = shape[0]
        return rows, numel // rows
    return (numel, 1) if shape else (1, 1)


def step_scale(shape: Sequence[int], scaling: str) -> float:
    """The per-tensor factor of the update: ``1 / fan_in`` for matrices under ``"mup"`` (μLO), else 1."""
    return 1.0 / max(matrix_view(shape)[1], 1) if scaling == "mup" and len(shape) >= 2 else 1.0


class Views:
    """Where each segment of a layout lives: flat offset, matrix view and slot offsets of its accumulators."""

    def __init__(self, layout: Layout) -> None:
        self.offsets, self.rows, self.cols, self.row_offsets, self.col_offsets = [], [], [], [], []
        flat = row_slots = col_slots = 0
        for segment in layout:
            r, c = matrix_view(segment.shape)
            self.offsets.append(flat)
            self.rows.append(r)
            self.cols.append(c)
            self.row_offsets.append(row_slots)
            self.col_offsets.append(col_slots)
            flat, row_slots, col_slots = flat + segment.numel, row_slots + r, col_slots + c
        self.num_row_slots, self.num_col_slots = row_slots, col_slots


def fill_indices(views: Views, rows: Rows, segment: Tensor, row_slot: Tensor, col_slot: Tensor) -> None:
    """Write each row's segment, row slot and column slot (``rows``: pieces ``(segment, start, row, length)``)."""
    for index, start, row, length in rows:
        cols = views.cols[index]
        at = torch.arange(start, start + length, device=segment.device)
        segment[row : row + length].fill_(index)
        torch.div(at, cols, rounding_mode="floor", out=row_slot[row : row + length]).add_(views.row_offsets[index])
        torch.remainder(at, cols, out=col_slot[row : row + length]).add_(views.col_offsets[index])


def decays_column(decays: Sequence[float], like: Tensor) -> Tensor:
    """``decays`` as a ``(k, 1)`` column in ``like``'s dtype and device."""
    return torch.tensor(list(decays), dtype=like.dtype, device=like.device).unsqueeze(1)


def features(
    net: FeatureSettings, g: Tensor, p: Tensor, state: Tensor, row: Tensor, col: Tensor, row_mean: Tensor,
    inplace: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(features (F, c), new state (k + 1, c))`` for ``c`` coordinates (features along dim 0).

    ``state``: the momenta at each decay, then the second moment; ``row``, ``col``: each
    coordinate's new Adafactor row and column accumulators ``(a, c)``; ``row_mean``: the mean of
    its tensor's row accumulators (``(a, c)``, or ``(a, 1)`` for one tensor).  Out-of-place, so
    autograd can differentiate through it; ``inplace``: advance ``state`` itself (the deployment
    chunk, whose state is written anyway) instead of a new tensor.
    """
    k, a = len(net.momentum_decays), len(net.adafactor_decays)
    beta = decays_column(net.momentum_decays, g)
    if inplace:
        m = state[:k].mul_(beta).addcmul_(1 - beta, g)
        v = state[k].mul_(net.rms_decay).addcmul_(g, g, value=1 - net.rms_decay)
        new_state = state
    else:
        m = state[:k] * beta + g * (1 - beta)
        v = state[k] * net.rms_decay + g.square() * (1 - net.rms_decay)
        new_state = torch.cat((m, v.unsqueeze(0)))
    rs = torch.rsqrt(v + V_EPS)
    factor = torch.rsqrt(row / row_mean + TINY) * torch.rsqrt(col + TINY)
    columns = [
        g.unsqueeze(0), p.unsqueeze(0), m, v.unsqueeze(0), m * rs, rs.unsqueeze(0),
        g * factor, row, col, torch.rsqrt(row + TINY), torch.rsqrt(col + TINY), m[:a] * factor,
    ]  # fmt: skip
    return torch.cat(columns), new_state


def time_features(step: Tensor, dtype: torch.dtype, horizon: Optional[Tensor] = None) -> Tensor:
    """``tanh(step / timescale − 1)`` at each of :data:`TIMESCALES` (``(segments, 11)``), then, given
    each segment's ``horizon``, the :data:`PROGRESS_POWERS` of the fraction of training done."""
    column = step.to(dtype).unsqueeze(1)
    timescales = torch.tensor(TIMESCALES, dtype=dtype, device=step.device)
    embeddings = torch.tanh(column / timescales - 1)
    if horizon is None:
        return embeddings
    done = (column / horizon.to(dtype).unsqueeze(1)).clamp(0, 1)
    powers = torch.tensor(PROGRESS_POWERS, dtype=dtype, device=step.device)
    return torch.cat((embeddings, done.pow(powers)), dim=1)


def first_layer_bias(net: Any, inputs: StepInputs, dtype: torch.dtype) -> Tensor:
    """Per segment ``(segments, width)``: the first layer's bias plus its read of the time embeddings.

    The time embeddings are the same for every coordinate of a tensor, so their product with
    the first layer's time columns is taken once per tensor instead of once per coordinate.
    """
    assert inputs.step is not None  # the net declares it
    first = net.first_layer
    weight = first.weight[:, net.num_features :].to(dtype)
    horizon = inputs.horizon if net.inputs.horizon else None
    return torch.addmm(first.bias.to(dtype), time_features(inputs.step, dtype, horizon), weight.t())


def head(net: FeatureSettings, weights: Sequence[Tensor], x: Tensor, first: Tensor, scale: Tensor) -> Tensor:
    """The update of ``c`` coordinates from their normalised features ``x`` ``(F, c)``.

    ``weights``: the first layer's feature columns, then ``W, b`` of each later layer, then the
    skip; ``first``: the first layer's bias and time read ``(width, c)`` (``(width, 1)`` for one
    tensor, :func:`first_layer_bias`).  Coordinates run along the columns throughout (``W @ x``:
    measured ~20% faster on CPU than rows of coordinates, and no transposes).  Hidden layers are
    ReLU, the last gives ``(direction, magnitude)``, and the skip adds a linear read of the
    features to the direction (initialised to the Adam-like ``m / √v``, so an untrained net steps
    like small-lr Adam).
    """
    h = torch.mm(weights[0], x).add_(first)
    for index in range(1, len(weights) - 1, 2):
        h = torch.addmm(weights[index + 1].unsqueeze(1), weights[index], h.relu_())
    return direction_to_update(net, h, weights[-1] @ x, scale)


def direction_to_update(net: FeatureSettings, out: Tensor, skip: Tensor, scale: Tensor) -> Tensor:
    """``−direction · exp(exp_mult · magnitude) · step_mult · scale`` from a head's ``out`` ``(2, c)``
    (direction, magnitude) and the skip's read of the features (added to the direction)."""
    direction = out[0] + skip
    if net.output == "tanh":
        direction = torch.tanh(direction)
    return -(direction * torch.exp(out[1] * net.exp_mult) * (scale * net.step_mult))


class FeatureKernel(ChunkKernel):
    """:class:`~l2l_lightning.nets.mlp.FeatureMLP`'s deployment step: a pass over whole tensors, then chunks.

    :meth:`prepare_step` advances every tensor's Adafactor accumulators (returned, for the
    runtime to write), and computes each tensor's feature normalisers from the features of
    all its coordinates (read, not written).  Each chunk then recomputes its features,
    normalises them, runs the MLP and advances its per-coordinate state in place.  Per-tensor
    values (normalisers, the first layer's time bias, the row means, the step scale) are read
    by broadcasting for a chunk inside one tensor, gathered row by row only for packed pieces.
    """

    coordinate_dim = 1

    def __init__(self, net: Any, dtype: torch.dtype, device: torch.device) -> None:
        self.net, self.dtype = net, dtype
        self.weights = [w.to(device=device, dtype=dtype).contiguous() for w in net.weight_list()]

    def state_shape(self, n: int) -> tuple[int, ...]:
        return self.net.state_shape(n)

    def buffers(self, rows: int, device: torch.device) -> dict[str, Tensor]:
        index = functools.partial(torch.empty, rows, dtype=torch.long, device=device)
        return {"segment": index(), "row": index(), "col": index(), "param": torch.empty(rows, dtype=self.dtype, device=device)}

    def prepare_step(
        self,
        grad: Tensor,
        states: Sequence[Tensor],
        tensor_states: Sequence[Tensor],
        layout: Layout,
        inputs: Optional[StepInputs],
    ) -> list[Tensor]:
        assert inputs is not None and inputs.param is not None and inputs.step is not None  # the net declares both
        net, dtype = self.net, self.dtype
        self.views = views = Views(layout)
        self.param = inputs.param
        beta = decays_column(net.adafactor_decays, grad.to(dtype))
        new, rows, cols = [], [], []
        for index, accumulators in enumerate(tensor_states):
            r, c, start = views.rows[index], views.cols[index], views.offsets[index]
            g2 = grad[start : start + r * c].to(dtype).view(r, c).square() + TINY
            acc = accumulators.to(dtype)
            rows.append(acc[:, :r] * beta + g2.mean(1) * (1 - beta))
            cols.append(acc[:, r:] * beta + g2.mean(0) * (1 - beta))
            new.append(torch.cat((rows[-1], cols[-1]), dim=1))
        self.row_table, self.col_table = torch.cat(rows, dim=1), torch.cat(cols, dim=1)
        self.row_mean = torch.stack([r.mean(1) for r in rows])
        scale = torch.tensor([step_scale(s.shape, net.scaling) for s in layout], dtype=dtype, device=grad.device)
        normalisers = self._normalisers(grad, states, layout)
        first = first_layer_bias(net, inputs, dtype)
        self.table = torch.cat((normalisers, first, scale.unsqueeze(1)), dim=1)
        return new

    def _normalisers(self, grad: Tensor, states: Sequence[Tensor], layout: Layout) -> Tensor:
        """``rsqrt(mean of each feature² over its tensor)``: the first pass, in pieces of :data:`PASS_ROWS` rows
        (ones for a net that does not normalise: no pass)."""
        sums = torch.zeros(len(layout), self.net.num_features, dtype=self.dtype, device=grad.device)
        if not self.net.normalise:
            return sums.fill_(1.0)
        work = self.buffers(min(PASS_ROWS, max(layout.sizes, default=1)), grad.device)
        for index, (state, size) in enumerate(zip(states, layout.sizes)):
            for start in range(0, size, PASS_ROWS):
                length = min(PASS_ROWS, size - start)
                flat = self.views.offsets[index] + start
                g = grad[flat : flat + length].to(self.dtype)
                feats, _ = self._features(work, g, state.narrow(1, start, length).to(self.dtype), [(index, start, 0, length)])
                sums[index] += feats.square().sum(1)
        sizes = torch.tensor(layout.sizes, dtype=self.dtype, device=grad.device).clamp(min=1).unsqueeze(1)
        return torch.rsqrt(sums / sizes + TINY)

    def _per_tensor(self, table: Tensor, work: dict[str, Tensor], c: int, rows: Rows) -> Tensor:
        """``table``'s row for each of the chunk's rows: one row, broadcast, for a chunk inside one tensor."""
        if len(rows) == 1:
            return table[rows[0][0]].unsqueeze(0)
        return table.index_select(0, work["segment"][:c])

    def _features(
        self, work: dict[str, Tensor], g: Tensor, state: Tensor, rows: Rows, inplace: bool = False
    ) -> tuple[Tensor, Tensor]:
        """The chunk's un-normalised features ``(F, c)`` and new state (rows' slots gathered from the step's tables)."""
        c = g.shape[0]
        segment, row_slot, col_slot = work["segment"][:c], work["row"][:c], work["col"][:c]
        fill_indices(self.views, rows, segment, row_slot, col_slot)
        if len(rows) == 1 and self.param.dtype == self.dtype:
            flat = self.views.offsets[rows[0][0]] + rows[0][1]
            p = self.param[flat : flat + c]
        else:
            p = work["param"][:c]
            for index, start, row, length in rows:
                flat = self.views.offsets[index] + start
                p[row : row + length].copy_(self.param[flat : flat + length])
        return features(
            self.net, g, p, state, self.row_table.index_select(1, row_slot), self.col_table.index_select(1, col_slot),
            self._per_tensor(self.row_mean, work, c, rows).t(), inplace=inplace,
        )  # fmt: skip

    def __call__(self, buffers: dict[str, Tensor], g: Tensor, state: Tensor, rows: Rows) -> Tensor:
        net = self.net
        f, k = net.num_features, len(net.momentum_decays) + 1
        feats, _ = self._features(buffers, g, state, rows, inplace=True)
        per_tensor = self._per_tensor(self.table, buffers, g.shape[0], rows).t()
        update, recurrent = net.step_head(self.weights, feats.mul_(per_tensor[:f]), per_tensor[f:-1], per_tensor[-1], state[k:])
        if recurrent is not None:
            state[k:].copy_(recurrent)
        return update
