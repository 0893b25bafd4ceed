"""The coordinatewise LSTM optimizer of Andrychowicz et al. (2016).

Every coordinate of every parameter is one row of a batch: the weights are shared
by all coordinates, the hidden and cell states are per coordinate.  That is what
lets one trained optimizer run on a model of any size.

The module is *functional and state-passing*: ``update, state = net(grad, state)``.
It knows nothing of Lightning, tasks or parameter names, so the same object is
differentiated through during meta-training and run under ``no_grad`` when deployed.

One function, two ways to run it, both on the arithmetic of :mod:`l2l_lightning.nets.lstm_kernel`
(written once there, with its Triton form beside it in :mod:`l2l_lightning.nets.lstm_triton`):

* :meth:`CoordinatewiseLSTM.forward` / :meth:`~CoordinatewiseLSTM.forward_split`
  (meta-training, differentiable): each cell is one autograd node
  (:class:`_LSTMCellFunction`) with a hand-written backward, so autograd records a
  handful of nodes per inner step instead of ~40.  The unroll carries the state as
  per-layer ``(h, c)`` tensors (:meth:`~CoordinatewiseLSTM.split_state`), so no state is
  stacked or sliced per step.
* :meth:`~CoordinatewiseLSTM.chunk_kernel` (deployment, no autograd): the
  :class:`~l2l_lightning.nets.lstm_kernel.LSTMKernel` that the deployment runtime
  (:mod:`l2l_lightning.optim.runtime`) runs in chunks sized for the cache, the state updated
  in place; optionally ``torch.compile``-d, or fused into one Triton kernel on CUDA.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from l2l_lightning.errors import check_positive_float, check_positive_int
from l2l_lightning.nets.base import LearnedOptimizerNet
from l2l_lightning.nets.layout import Layout, as_layout
from l2l_lightning.nets.lstm_kernel import CellBuffers, LSTMKernel, cell, gate_weights, linear
from l2l_lightning.nets.preprocessing import PreprocessName, check_preprocess, num_features, preprocess
from l2l_lightning.torch_compat import functorch_transforms_active


class _LSTMCellFunction(torch.autograd.Function):
    """One fused LSTM cell step with a hand-written backward.

    Autograd over the ~15 primitive ops of a cell records ~15 nodes, materialises zeros
    for unused outputs and pays ``tanh``; this records one node, saves ``[x, h]``, the
    gate activations and ``tanh(c')`` and computes the backward in ~12 elementwise ops
    and the two matrix products.  First-order only (``once_differentiable``): meta-training
    differentiates through the net once, also with ``second_derivatives`` (those concern
    the optimizee's gradient, not the net).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, h: Tensor, c: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        hidden = h.shape[1]
        rows = x.shape[0]
        gate_weight, gate_bias = gate_weights(weight, bias, hidden)
        xh = torch.cat((x, h), dim=1)
        g, c_new, tc, h_new = (xh.new_empty(rows, hidden) for _ in range(4))
        new = cell(xh, gate_weight, gate_bias, c, hidden, CellBuffers(c_new, tc, h_new, g))
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(xh, c, weight, new.s, new.g, new.tc)
        ctx.hidden = hidden
        return new.h, new.c

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dh: Optional[Tensor], dc: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
        if dh is None and dc is None:
            return None, None, None, None, None
        xh, c, weight, s, g, tc = ctx.saved_tensors
        hidden = ctx.hidden
        i, f, _, o = s.split(hidden, dim=1)
        # da: gradient w.r.t. the gate pre-activations, filled with "d/d(activation)" first,
        # then one fused sigmoid_backward over all four gates.  The g gate's activation is
        # 2σ(2a) − 1, whose derivative is 4·σ'(2a): the factor 4 goes onto the tiny weight
        # side (W's g rows in dxh, dW's and db's g rows) instead of a pass over the rows.
        da = torch.empty_like(s)
        da_i, da_f, da_g, da_o = da.split(hidden, dim=1)
        if dh is not None:
            torch.mul(dh, tc, out=da_o)
            dc_total = torch.ops.aten.tanh_backward(dh * o, tc)  # dh · o · (1 − tanh²c')
            if dc is not None:
                dc_total.add_(dc)
        else:
            da_o.zero_()
            dc_total = dc
        torch.mul(dc_total, g, out=da_i)
        torch.mul(dc_total, c, out=da_f)
        torch.mul(dc_total, i, out=da_g)
        torch.ops.aten.sigmoid_backward(da, s, grad_input=da)
        needs = ctx.needs_input_grad
        in_features = xh.shape[1] - hidden
        dx = dh_prev = dc_prev = dweight = dbias = None
        if needs[0] or needs[1]:
            weight = weight.clone()
            weight[2 * hidden : 3 * hidden] *= 4
            if needs[0] and needs[1]:
                dx, dh_prev = linear(da, weight.t()).split((in_features, hidden), dim=1)
            elif needs[0]:
                dx = linear(da, weight[:, :in_features].contiguous().t())
            else:
                dh_prev = linear(da, weight[:, in_features:].contiguous().t())
        if needs[2]:
            dc_prev = dc_total * f
        if needs[3]:
            dweight = linear(xh.t(), da.t()).t()  # (xhᵀ da)ᵀ: the faster orientation for oneDNN
            dweight[2 * hidden : 3 * hidden] *= 4
        if needs[4]:
            dbias = da.sum(0)
            dbias[2 * hidden : 3 * hidden] *= 4
        return dx, dh_prev, dc_prev, dweight, dbias


class FusedLSTMCell(nn.Module):
    """An LSTM cell computing its four gates with one matrix product on ``[input, h]``.

    Gate order and initialisation follow :class:`torch.nn.LSTMCell` (i, f, g, o;
    ``U(-1/sqrt(H), 1/sqrt(H))``), so ``weight = cat([weight_ih, weight_hh], 1)`` and
    ``bias = bias_ih + bias_hh`` of an ``nn.LSTMCell`` give the same function.  The
    arithmetic is :func:`~l2l_lightning.nets.lstm_kernel.cell` (``tanh`` computed as ``2σ(2x) − 1``, which agrees with
    ``torch.tanh`` to a few float32 ulps) with a fused backward (:class:`_LSTMCellFunction`).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight = nn.Parameter(torch.empty(4 * hidden_size, input_size + hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        weight, bias = self.weight, self.bias
        if weight.dtype != x.dtype:
            weight, bias = weight.to(x.dtype), bias.to(x.dtype)
        if functorch_transforms_active():  # vmap/grad/jacrev: plain differentiable ops (a custom node cannot be vmapped)
            weight, bias = gate_weights(weight, bias, self.hidden_size)
            new = cell(torch.cat((x, h), dim=1), weight, bias, c, self.hidden_size)
            return new.h, new.c
        return _LSTMCellFunction.apply(x, h, c, weight, bias)


class CoordinatewiseLSTM(LearnedOptimizerNet):
    """Learned optimizer ``m_φ``: gradient coordinate in, that coordinate's update out.

    Args:
        hidden_size: units per LSTM layer (paper: 20).
        num_layers: stacked LSTM layers (paper: 2).
        preprocess: ``"none"``, ``"log_sign"`` (paper, Appendix A) or ``"clamped"``
            (authors' code); see :mod:`l2l_lightning.nets.preprocessing`.
        p: the preprocessing's scale (paper: 10; the authors' clamped variant uses 5).
        output_scale: multiplies the linear output, keeping early updates small
            (paper: 0.1; authors' code: 1.0 for the quadratic).

    State layout: one tensor of shape ``(num_layers, 2, n, hidden_size)`` holding
    ``(h, c)`` per layer, so a whole optimizer state is a single tensor that is
    easy to detach, store, move and slice by coordinate.
    """

    coordinate_dim = 2

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocess: PreprocessName = "log_sign",
        p: float = 10.0,
        output_scale: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers)):
            check_positive_int(name, value)
        check_preprocess(preprocess, p)
        check_positive_float("output_scale", output_scale)
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.preprocess = preprocess
        self.p = float(p)
        self.output_scale = float(output_scale)
        sizes = [num_features(preprocess)] + [hidden_size] * (num_layers - 1)
        self.cells = nn.ModuleList(FusedLSTMCell(size, hidden_size) for size in sizes)
        self.output = nn.Linear(hidden_size, 1)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments: enough, with the state dict, to rebuild the net."""
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "preprocess": self.preprocess,
            "p": self.p,
            "output_scale": self.output_scale,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())

    def state_shape(self, n: int) -> tuple[int, int, int, int]:
        return (self.num_layers, 2, n, self.hidden_size)

    def split_state(self, state: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``[(h, c)]`` per layer, views of a ``(num_layers, 2, n, hidden)`` state."""
        return [(state[layer, 0], state[layer, 1]) for layer in range(self.num_layers)]

    def join_state(self, layers: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Inverse of :meth:`split_state`: one ``(num_layers, 2, n, hidden)`` tensor (a copy)."""
        n = layers[0][0].shape[0]
        return torch.stack([t for hc in layers for t in hc]).view(self.state_shape(n))

    def _check(self, grad: Tensor) -> None:
        if grad.dim() != 1:
            raise ValueError(f"grad must be 1-D (one entry per coordinate), got shape {tuple(grad.shape)}")
        if not grad.is_floating_point():
            raise TypeError(f"grad must be a floating-point tensor, got {grad.dtype}")

    def forward(self, grad: Tensor, state: Tensor, layout: "Layout | int | None" = None) -> tuple[Tensor, Tensor]:
        """One optimizer step for ``n`` coordinates.

        Args:
            grad: 1-D gradient of ``n`` coordinates, any float dtype.
            state: ``(num_layers, 2, n, hidden_size)`` from :meth:`init_state` or a previous call.
            layout: the tensors behind ``grad`` (default: one flat tensor); the plain LSTM is
                coordinatewise and only checks its size, nets built on it may use it.

        Returns:
            ``(update, new_state)``: the update has ``grad``'s shape and dtype (apply it as
            ``θ ← θ + update``); the new state keeps ``state``'s dtype.  The arithmetic runs in
            the wider of the grad's and the net's dtype, so a bf16 gradient or state costs no accuracy
            inside the cell.

        Differentiable (meta-training).  For deployment, :meth:`chunk_kernel` computes the
        same function without autograd, chunk by chunk and updating the state in place.
        """
        self._check(grad)
        n = grad.shape[0]
        if state.shape != self.state_shape(n):
            raise ValueError(
                f"state has shape {tuple(state.shape)}, expected {self.state_shape(n)} for {n} coordinates; "
                "create it with net.init_state(n)"
            )
        update, layers = self.forward_split(grad, self.split_state(state), layout)
        return update, self.join_state(layers).to(state.dtype)

    def forward_split(
        self, grad: Tensor, layers: list[tuple[Tensor, Tensor]], layout: "Layout | int | None" = None
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """:meth:`forward` on a state kept as ``[(h, c)]`` per layer (see :meth:`split_state`).

        The unroll carries its state in this form: no ``stack`` of the new state and no
        ``select`` backward (which materialises zeros) per inner step.  The returned
        ``h, c`` are in the compute dtype.
        """
        layout = as_layout(grad.shape[0] if layout is None else layout)
        layout.check(grad)
        compute_dtype = self.compute_dtype(grad.dtype)
        x = preprocess(grad.to(compute_dtype), self.preprocess, self.p)
        new_layers = []
        for index, (cell, (h, c)) in enumerate(zip(self.cells, layers)):
            h, c = cell(x, self.recurrent_input(index, h.to(compute_dtype), layout), c.to(compute_dtype))
            new_layers.append((h, c))
            x = h
        weight, bias = self.output.weight, self.output.bias
        if weight.dtype != compute_dtype:
            weight, bias = weight.to(compute_dtype), bias.to(compute_dtype)
        update = torch.addmm(bias, x, weight.t()).squeeze(1) * self.output_scale
        return update.to(grad.dtype), new_layers


    def recurrent_input(self, layer: int, h: Tensor, layout: Layout) -> Tensor:
        """The previous hidden state as layer ``layer`` reads it (the plain LSTM: as it is).

        The hook where nets built on this one let coordinates share information
        (:class:`~l2l_lightning.nets.gac.GlobalAveragingLSTM` averages some cells).
        """
        return h

    # ------------------------------------------------------------ deployment step
    def chunk_kernel(self, dtype: torch.dtype, device: torch.device) -> LSTMKernel:
        """The LSTM's arithmetic for one chunk (weights converted once, g rows doubled).

        The deployment runtime (:mod:`l2l_lightning.optim.runtime`) runs it in cache-sized
        chunks, each layer one matrix product on ``[input, h]``, the states updated in place
        (bf16 states computed in float32 and rounded back), chunks shared over threads on CPU.
        """
        return LSTMKernel(self, dtype, device)
