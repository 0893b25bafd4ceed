"""The coordinatewise LSTM optimizer of Andrychowicz et al. (2016).

Every coordinate of every parameter is one row of a batch: the weights are shared
by all coordinates, the hidden and cell states are per coordinate.  That is what
lets one trained optimizer run on a model of any size.

The module is *functional and state-passing*: ``update, state = net(grad, state)``.
It knows nothing of Lightning, tasks or parameter names, so the same object is
differentiated through during meta-training and run under ``no_grad`` when deployed.

One function, two ways to run it:

* :meth:`CoordinatewiseLSTM.forward` / :meth:`~CoordinatewiseLSTM.forward_split`
  (meta-training, differentiable): each cell is one autograd node
  (:class:`_LSTMCellFunction`) with a hand-written backward, so autograd records a
  handful of nodes per inner step instead of ~40.  The unroll carries the state as
  per-layer ``(h, c)`` tensors (:meth:`~CoordinatewiseLSTM.split_state`), so no state is
  stacked or sliced per step.
* :meth:`~CoordinatewiseLSTM.step_inplace` (deployment, no autograd): the net's
  :meth:`~CoordinatewiseLSTM.chunk_kernel` run by the deployment runtime
  (:mod:`l2l_lightning.optim.runtime`) in chunks sized for the cache, the state updated
  in place; optionally ``torch.compile``-d.

Both run the same arithmetic (:func:`_cell_`): the four gates are one matrix product on
``[input, h]`` followed by one ``sigmoid`` (the g rows of the weight are doubled and
``tanh(a) = 2σ(2a) − 1``: on CPU ``sigmoid`` is ~10× cheaper than ``tanh``), and on CPU
in float32 the products go through oneDNN (:data:`USE_ONEDNN`), 2-3× faster than MKL's
GEMM for these skinny shapes.  The results agree with ``nn.LSTMCell`` and ``torch.tanh``
to a few float32 ulps (tests: within ``1e-5`` relative).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from l2l_lightning.errors import ConfigError, check_positive_int
from l2l_lightning.nets.base import ChunkKernel, Layout, LearnedOptimizerNet, as_layout
from l2l_lightning.nets.preprocessing import PreprocessName, check_preprocess, num_features, preprocess, preprocess_into


#: Use oneDNN (``torch.ops.mkldnn._linear_pointwise``) for the cell's float32 matrix products
#: on CPU.  For these skinny shapes (``rows × 22..40`` by ``40 × 80``) it is 2-3× faster than
#: the default MKL GEMM on the CPUs measured (``benchmarks/RESULTS.md``); where it is missing
#: or fails, the products fall back to ``torch.addmm``/``mm`` (once, silently: same function).
USE_ONEDNN: bool = True


def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``x @ weight.T + bias`` for 2-D ``x`` (a new tensor).

    oneDNN is fast when each operand is contiguous or the transpose of a contiguous
    tensor (measured: a column slice's transpose took 1000× longer), so anything else is
    made contiguous first; the callers pass ``W.t()`` of a contiguous ``W`` for ``@ W``.
    """
    global USE_ONEDNN
    if USE_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 == weight.dtype and x.shape[0] > 0:
        if not (x.is_contiguous() or x.t().is_contiguous()):
            x = x.contiguous()
        if not (weight.is_contiguous() or weight.t().is_contiguous()):
            weight = weight.contiguous()
        try:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        except (AttributeError, RuntimeError, NotImplementedError):  # no oneDNN in this build
            USE_ONEDNN = False
    return torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()


def _gate_weights(weight: Tensor, bias: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """``(W, b)`` with the rows of the g gate doubled (copies).

    ``tanh(a) = 2σ(2a) − 1``, and doubling is exact in binary floating point, so with
    these weights a single ``sigmoid`` over all four gates gives i, f, o and (after
    ``2s − 1``) g.  On CPU ``sigmoid`` is about ten times cheaper than ``tanh``.
    """
    weight, bias = weight.clone(), bias.clone()
    weight[2 * hidden : 3 * hidden] *= 2
    bias[2 * hidden : 3 * hidden] *= 2
    return weight, bias


def _cell_(
    xh: Tensor, weight: Tensor, bias: Tensor, c_in: Tensor, hidden: int,
    c_out: Tensor, tc: Tensor, h_out: Tensor, g: Optional[Tensor] = None,
) -> Tensor:
    """The LSTM cell's arithmetic, written into caller-owned ``(rows, hidden)`` tensors.

    ``weight, bias`` come from :func:`_gate_weights`.  Returns the gate activations ``s``
    (``σ`` of i, f, 2g, o: one matrix product on ``[input, h]`` and one ``sigmoid``) and
    writes ``tanh(g)`` to ``g`` (default: in place, over the g columns of ``s``), the new
    cell to ``c_out``, ``tanh(c_out)`` to ``tc`` and the new hidden state to ``h_out``.
    ``c_out`` may be ``c_in`` and ``h_out`` may be ``tc`` (the in-place deployment step
    does both).  The autograd function and the chunked no-grad step both run exactly this.
    """
    s = _linear(xh, weight, bias).sigmoid_()
    i, f, sg, o = s.split(hidden, dim=1)
    torch.mul(sg, 2, out=sg if g is None else g).sub_(1)  # tanh(a_g) = 2σ(2 a_g) − 1
    g = sg if g is None else g
    torch.mul(f, c_in, out=c_out).addcmul_(i, g)  # c' = f c + i g
    torch.mul(c_out, 2, out=tc).sigmoid_().mul_(2).sub_(1)  # tanh(c')
    torch.mul(tc, o, out=h_out)  # h' = o tanh(c')
    return s


def _cell_functional(xh: Tensor, weight: Tensor, bias: Tensor, c: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """:func:`_cell_` as out-of-place ops (``(h', c')``): for ``torch.compile`` and ``torch.func`` transforms."""
    s = torch.sigmoid(torch.addmm(bias, xh, weight.t()))
    i, f, sg, o = s.split(hidden, dim=1)
    c = torch.addcmul(f * c, i, sg * 2 - 1)
    return (torch.sigmoid(c * 2) * 2 - 1) * o, c


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
        gate_weight, gate_bias = _gate_weights(weight, bias, hidden)
        xh = torch.cat((x, h), dim=1)
        g, c_new, tc, h_new = (xh.new_empty(rows, hidden) for _ in range(4))
        s = _cell_(xh, gate_weight, gate_bias, c, hidden, c_new, tc, h_new, g=g)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(xh, c, weight, s, g, tc)
        ctx.hidden = hidden
        return h_new, c_new

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
                dx, dh_prev = _linear(da, weight.t()).split((in_features, hidden), dim=1)
            elif needs[0]:
                dx = _linear(da, weight[:, :in_features].contiguous().t())
            else:
                dh_prev = _linear(da, weight[:, in_features:].contiguous().t())
        if needs[2]:
            dc_prev = dc_total * f
        if needs[3]:
            dweight = _linear(xh.t(), da.t()).t()  # (xhᵀ da)ᵀ: the faster orientation for oneDNN
            dweight[2 * hidden : 3 * hidden] *= 4
        if needs[4]:
            dbias = da.sum(0)
            dbias[2 * hidden : 3 * hidden] *= 4
        return dx, dh_prev, dc_prev, dweight, dbias


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


class FusedLSTMCell(nn.Module):
    """An LSTM cell computing its four gates with one matrix product on ``[input, h]``.

    Gate order and initialisation follow :class:`torch.nn.LSTMCell` (i, f, g, o;
    ``U(-1/sqrt(H), 1/sqrt(H))``), so ``weight = cat([weight_ih, weight_hh], 1)`` and
    ``bias = bias_ih + bias_hh`` of an ``nn.LSTMCell`` give the same function.  The
    arithmetic is :func:`_cell_` (``tanh`` computed as ``2σ(2x) − 1``, which agrees with
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
        if _functorch_active():  # vmap/grad/jacrev: plain differentiable ops (a custom node cannot be vmapped)
            weight, bias = _gate_weights(weight, bias, self.hidden_size)
            return _cell_functional(torch.cat((x, h), dim=1), weight, bias, c, self.hidden_size)
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
        if not (isinstance(output_scale, (int, float)) and math.isfinite(output_scale) and output_scale > 0):
            raise ConfigError(f"output_scale={output_scale!r} must be a positive finite number")
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

        Differentiable (meta-training).  For deployment, :meth:`step_inplace` computes the
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
    def chunk_kernel(self, dtype: torch.dtype, device: torch.device) -> ChunkKernel:
        """The LSTM's arithmetic for one chunk (weights converted once, g rows doubled).

        :meth:`~l2l_lightning.nets.LearnedOptimizerNet.step_inplace` (deployment) runs it
        through :func:`l2l_lightning.optim.runtime.step_chunked`: in cache-sized chunks, each
        layer one matrix product on ``[input, h]``, the states updated in place (bf16 states
        computed in float32 and rounded back), chunks shared over threads on CPU.
        """
        return _LSTMKernel(self, dtype, device)


class _LSTMKernel(ChunkKernel):
    """:class:`CoordinatewiseLSTM`'s chunk arithmetic: ``[input, h]`` buffers per layer, in place.

    Each layer is one matrix product on ``[input, h]`` and one ``sigmoid`` (:func:`_cell_`),
    writing the new ``c`` and ``h`` straight into the chunk's state view.
    """

    coordinate_dim = 2

    def __init__(self, net: CoordinatewiseLSTM, dtype: torch.dtype, device: torch.device) -> None:
        self.net, self.dtype = net, dtype
        self.layout: Optional[Layout] = None
        to = functools.partial(Tensor.to, device=device, dtype=dtype)
        weights = []
        for cell in net.cells:
            weights += _gate_weights(to(cell.weight), to(cell.bias), net.hidden_size)
        weights += [to(net.output.weight), to(net.output.bias)]
        self.weights = weights

    def state_shape(self, n: int) -> tuple[int, ...]:
        return self.net.state_shape(n)

    def prepare(self, states: Sequence[Tensor], layout: Layout) -> None:
        self.layout = layout

    def buffers(self, rows: int, device: torch.device) -> dict[str, Any]:
        net = self.net
        hidden = net.hidden_size
        widths = [num_features(net.preprocess)] + [hidden] * (net.num_layers - 1)
        empty = functools.partial(torch.empty, dtype=self.dtype, device=device)
        return {"xh": [empty(rows, width + hidden) for width in widths], "update": empty(rows, 1)}

    def recurrent(self, layer: int, xh_h: Tensor, h: Tensor, rows: Sequence[tuple[int, int, int, int]]) -> None:
        """Write layer ``layer``'s recurrent input into ``xh_h`` (the h columns of its buffer)."""
        xh_h.copy_(h)

    def __call__(self, buffers: dict[str, Any], g: Tensor, state: Tensor, rows: Sequence[tuple[int, int, int, int]]) -> Tensor:
        net, weights = self.net, self.weights
        hidden, c = net.hidden_size, g.shape[0]
        x = buffers["xh"][0][:c]
        preprocess_into(g, net.preprocess, net.p, x[:, : x.shape[1] - hidden])
        for layer in range(net.num_layers):
            h_state, c_state = state[layer, 0], state[layer, 1]
            xh = buffers["xh"][layer][:c]
            self.recurrent(layer, xh[:, xh.shape[1] - hidden :], h_state, rows)
            # tanh(g) overwrites σ(2g) in place (g's columns of s): no separate buffer
            _cell_(xh, weights[2 * layer], weights[2 * layer + 1], c_state, hidden, c_state, h_state, h_state)
            if layer + 1 < net.num_layers:
                buffers["xh"][layer + 1][:c, :hidden].copy_(h_state)
        update = buffers["update"][:c]
        torch.addmm(weights[-1], state[net.num_layers - 1, 0], weights[-2].t(), out=update)
        return update.squeeze(1).mul_(net.output_scale)

    def functional(self) -> Optional[tuple[Any, tuple[Any, ...]]]:
        net = self.net
        return _chunk_functional, (self.weights, net.preprocess, net.p, net.output_scale)

    def fused_step(self, device: torch.device) -> Optional[Any]:
        """The Triton kernel of :mod:`l2l_lightning.optim.triton_step` where it applies (float32 maths)."""
        from l2l_lightning.optim import triton_step  # a deployment kernel: imported only when stepping

        if self.dtype != torch.float32 or not triton_step.available(self.net, device):
            return None
        return triton_step.TritonLSTMStep(self.net, device)


def _chunk_functional(
    g: Tensor, state: Tensor, weights: list[Tensor], preprocess_name: str, p: float, output_scale: float
) -> tuple[Tensor, Tensor]:
    """The chunk arithmetic of :class:`_LSTMKernel` as a pure function (for ``torch.compile``)."""
    layers, hidden = state.shape[0], state.shape[3]
    x = preprocess(g, preprocess_name, p)
    new = []
    for layer in range(layers):
        weight, bias = weights[2 * layer], weights[2 * layer + 1]
        h, c = _cell_functional(torch.cat((x, state[layer, 0]), dim=1), weight, bias, state[layer, 1], hidden)
        new += (h, c)
        x = h
    update = torch.addmm(weights[-1], x, weights[-2].t()).squeeze(1) * output_scale
    return update, torch.stack(new).view(state.shape)
