"""The coordinatewise LSTM's arithmetic, written once: the cell, and the deployment kernel built on it.

:func:`cell` is the LSTM cell: the four gates are one matrix product on ``[input, h]``
followed by one ``sigmoid`` (the g rows of the weight are doubled, :func:`gate_weights`, and
``tanh(a) = 2σ(2a) − 1``: on CPU ``sigmoid`` is ~10× cheaper than ``tanh``); on CPU in
float32 the products go through oneDNN (:data:`USE_ONEDNN`), 2-3× faster than MKL's GEMM for
these skinny shapes.  Given :class:`CellBuffers` it writes into them, so meta-training's
autograd node (:class:`~l2l_lightning.nets.lstm.FusedLSTMCell`) and the in-place deployment
kernel (:class:`LSTMKernel`) run exactly the same operations; without, the same lines make
new tensors, for what cannot take ``out=`` buffers: ``torch.compile`` (the kernel's pure
form, :func:`chunk`) and functorch transforms.

:class:`LSTMKernel` is the :class:`~l2l_lightning.nets.kernel.ChunkKernel` the deployment
runtime runs; its single-kernel form on CUDA is the Triton kernel beside it,
:mod:`l2l_lightning.nets.lstm_triton`.  The results agree with ``nn.LSTMCell`` and
``torch.tanh`` to a few float32 ulps (tests: within ``1e-5`` relative).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional, Protocol

import torch
from torch import Tensor, nn

from l2l_lightning.nets.layout import Layout
from l2l_lightning.nets.kernel import ChunkKernel, FusedStep, PureForm, Rows
from l2l_lightning.nets.preprocessing import num_features, preprocess, preprocess_into
from l2l_lightning.torch_compat import onednn_linear


class LSTMNet(Protocol):
    """What the kernel reads of a :class:`~l2l_lightning.nets.CoordinatewiseLSTM`: its settings and weights
    (each cell's ``weight`` on ``[input, h]`` and ``bias``, gates i, f, g, o; the linear ``output``)."""

    hidden_size: int
    num_layers: int
    preprocess: str
    p: float
    output_scale: float
    cells: nn.ModuleList
    output: nn.Linear

    def state_shape(self, n: int) -> tuple[int, ...]: ...


#: Use oneDNN (``torch.ops.mkldnn._linear_pointwise``) for the cell's float32 matrix products
#: on CPU.  For these skinny shapes (``rows × 22..40`` by ``40 × 80``) it is 2-3× faster than
#: the default MKL GEMM on the CPUs measured (``benchmarks/RESULTS.md``); where it is missing
#: or fails, the products fall back to ``torch.addmm``/``mm`` (once, silently: same function).
USE_ONEDNN: bool = True


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
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
            return onednn_linear(x, weight, bias)
        except (AttributeError, RuntimeError, NotImplementedError):  # no oneDNN in this build
            USE_ONEDNN = False
    return torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()


def gate_weights(weight: Tensor, bias: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """``(W, b)`` with the rows of the g gate doubled (copies).

    ``tanh(a) = 2σ(2a) − 1``, and doubling is exact in binary floating point, so with
    these weights a single ``sigmoid`` over all four gates gives i, f, o and (after
    ``2s − 1``) g.  On CPU ``sigmoid`` is about ten times cheaper than ``tanh``.
    """
    weight, bias = weight.clone(), bias.clone()
    weight[2 * hidden : 3 * hidden] *= 2
    bias[2 * hidden : 3 * hidden] *= 2
    return weight, bias


class CellBuffers(NamedTuple):
    """Caller-owned ``(rows, hidden)`` tensors that the in-place form of :func:`cell` writes.

    ``c`` may be the cell state read (the deployment kernel updates its state in place) and
    ``h`` may be ``tc``; ``g`` defaults to the g columns of the gate activations.  A ``None``
    among ``c``, ``tc``, ``h`` is a new tensor for that result.
    """

    c: Optional[Tensor]
    tc: Optional[Tensor]
    h: Optional[Tensor]
    g: Optional[Tensor] = None


class CellOutputs(NamedTuple):
    """What one cell step computes: the new ``h`` and ``c``, and what its backward reads.

    ``s`` holds ``σ`` of the gates i, f, 2g, o; ``g`` is ``tanh`` of the g gate; ``tc`` is ``tanh(c)``.
    """

    h: Tensor
    c: Tensor
    s: Tensor
    g: Tensor
    tc: Tensor


_NEW_TENSORS = CellBuffers(None, None, None)


def cell(
    xh: Tensor, weight: Tensor, bias: Tensor, c: Tensor, hidden: int, out: Optional[CellBuffers] = None
) -> CellOutputs:
    """The LSTM cell's arithmetic, written once for every use.

    ``weight, bias`` come from :func:`gate_weights`: the four gates are one matrix product on
    ``[input, h]`` and one ``sigmoid``.  With ``out`` (eager: the autograd node's forward and
    the deployment kernel) every result goes into a caller-owned buffer or overwrites its
    input, and the product runs through oneDNN (:func:`linear`).  Without it every op makes a
    new tensor and the product is ``addmm``: the form ``torch.compile`` (:func:`chunk`) and
    ``torch.func`` transforms need, since they cannot take ``out=`` buffers and autograd
    cannot differentiate an op that overwrote what it saved.  The elementwise ops are the same
    in the same order; the two products agree to float32 rounding.
    """
    buffers = _NEW_TENSORS if out is None else out

    def same(t: Tensor) -> Optional[Tensor]:  # in place (``out=t``), or a new tensor (``out=None``)
        return None if out is None else t

    a = torch.addmm(bias, xh, weight.t()) if out is None else linear(xh, weight, bias)
    s = torch.sigmoid(a, out=same(a))
    i, f, sg, o = s.split(hidden, dim=1)
    g = torch.mul(sg, 2, out=same(sg) if buffers.g is None else buffers.g)
    g = torch.sub(g, 1, out=same(g))  # tanh(a_g) = 2σ(2 a_g) − 1
    c = torch.addcmul(torch.mul(f, c, out=buffers.c), i, g, out=same(buffers.c))  # c' = f c + i g
    tc = torch.sigmoid(torch.mul(c, 2, out=buffers.tc), out=same(buffers.tc))
    tc = torch.sub(torch.mul(tc, 2, out=same(tc)), 1, out=same(tc))  # tanh(c') = 2σ(2c') − 1
    return CellOutputs(torch.mul(tc, o, out=buffers.h), c, s, g, tc)  # h' = o tanh(c')


class LSTMKernel(ChunkKernel):
    """:class:`CoordinatewiseLSTM`'s chunk arithmetic: ``[input, h]`` buffers per layer, in place.

    Each layer is one matrix product on ``[input, h]`` and one ``sigmoid`` (:func:`cell`),
    writing the new ``c`` and ``h`` straight into the chunk's state view.
    """

    coordinate_dim = 2

    def __init__(self, net: LSTMNet, dtype: torch.dtype, device: torch.device) -> None:
        self.net, self.dtype = net, dtype
        self.layout: Optional[Layout] = None
        to = functools.partial(Tensor.to, device=device, dtype=dtype)
        weights = []
        for cell in net.cells:
            weights += gate_weights(to(cell.weight), to(cell.bias), net.hidden_size)
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

    def recurrent(self, layer: int, xh_h: Tensor, h: Tensor, rows: Rows) -> None:
        """Write layer ``layer``'s recurrent input into ``xh_h`` (the h columns of its buffer)."""
        xh_h.copy_(h)

    def __call__(self, buffers: dict[str, Any], g: Tensor, state: Tensor, rows: Rows) -> Tensor:
        net, weights = self.net, self.weights
        hidden, c = net.hidden_size, g.shape[0]
        x = buffers["xh"][0][:c]
        preprocess_into(g, net.preprocess, net.p, x[:, : x.shape[1] - hidden])
        for layer in range(net.num_layers):
            h_state, c_state = state[layer, 0], state[layer, 1]
            xh = buffers["xh"][layer][:c]
            self.recurrent(layer, xh[:, xh.shape[1] - hidden :], h_state, rows)
            # tanh(g) overwrites σ(2g) in place (g's columns of s): no separate buffer
            into = CellBuffers(c=c_state, tc=h_state, h=h_state)
            cell(xh, weights[2 * layer], weights[2 * layer + 1], c_state, hidden, into)
            if layer + 1 < net.num_layers:
                buffers["xh"][layer + 1][:c, :hidden].copy_(h_state)
        update = buffers["update"][:c]
        torch.addmm(weights[-1], state[net.num_layers - 1, 0], weights[-2].t(), out=update)
        return update.squeeze(1).mul_(net.output_scale)

    def functional(self) -> Optional[PureForm]:
        net = self.net
        return chunk, (self.weights, net.preprocess, net.p, net.output_scale)

    def fused_step(self, device: torch.device) -> Optional[FusedStep]:
        """The Triton form of this kernel (:mod:`l2l_lightning.nets.lstm_triton`) where it applies (float32 maths)."""
        from l2l_lightning.nets import lstm_triton  # imports Triton: only when a step asks for it

        net = self.net
        if self.dtype != torch.float32 or not lstm_triton.available(net.num_layers, device):
            return None
        weights, biases = [cell.weight for cell in net.cells], [cell.bias for cell in net.cells]
        return lstm_triton.TritonLSTMStep(
            weights, biases, net.output.weight, net.output.bias, net.preprocess, net.p, net.output_scale, device
        )


def chunk(
    g: Tensor, state: Tensor, weights: list[Tensor], preprocess_name: str, p: float, output_scale: float
) -> tuple[Tensor, Tensor]:
    """The chunk arithmetic of :class:`LSTMKernel` as a pure function (for ``torch.compile``)."""
    layers, hidden = state.shape[0], state.shape[3]
    x = preprocess(g, preprocess_name, p)
    new = []
    for layer in range(layers):
        weight, bias = weights[2 * layer], weights[2 * layer + 1]
        x, c, *_ = cell(torch.cat((x, state[layer, 0]), dim=1), weight, bias, state[layer, 1], hidden)
        new += (x, c)
    update = torch.addmm(weights[-1], x, weights[-2].t()).squeeze(1) * output_scale
    return update, torch.stack(new).view(state.shape)
