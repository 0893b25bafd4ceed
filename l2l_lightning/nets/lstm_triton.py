"""The LSTM's deployment step as one fused Triton kernel: state read once, written once.

On a GPU the learned step is memory-bound: per coordinate it must read and write 80
numbers of LSTM state (2 layers × (h, c) × 20) and read the gradient.  The chunked eager
path (:class:`~l2l_lightning.nets.lstm_kernel.LSTMKernel` run by :mod:`l2l_lightning.optim.runtime`) moves each chunk's state through several
kernels (matrix products, element-wise gate maths, copies), so the state crosses memory
a few times.  This kernel does a whole coordinate block in registers: it reads the
gradient and every layer's ``(h, c)`` once, computes the preprocessing, both layers' four
gates (``tl.dot`` on the padded ``[x, h]`` tiles), the output projection and the reset of
diverged coordinates, and writes the new ``(h, c)`` and the update once.  With a
bfloat16 state the loads and stores are bfloat16 (the maths is float32), so the state
traffic halves, not just the storage.  No host synchronisation: the ``keep`` flag is read
on the device.

One launch per parameter tensor (the states are separate tensors; their layout
``(num_layers, 2, n, hidden)`` is read through its strides).  The parameter update itself
is not fused: ``LearnedOptimizer`` applies the updates only after every one of them is
known to be finite, so the update is written to a flat buffer (2 numbers per coordinate,
about 2.5% of the state traffic).

The same arithmetic as :mod:`l2l_lightning.nets.lstm_kernel`, beside it: the kernel belongs
to the net.  :meth:`LSTMKernel.fused_step <l2l_lightning.nets.lstm_kernel.LSTMKernel.fused_step>`
offers it, and the deployment runtime runs it on CUDA by default where Triton is installed
(``StepOptions.fused``).  On CPU it runs
under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests check it against
the eager step on machines without a GPU.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from l2l_lightning.nets.kernel import FusedStepUnavailable

try:  # Triton ships with CUDA builds of torch; without it the eager runtime is used
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None


#: Coordinates per program.  64 rows × 32 padded units × 4 gates keeps the tiles in registers.
BLOCK_ROWS = 64
_PREPROCESS = {"none": 0, "log_sign": 1, "clamped": 2}


def available(num_layers: int, device: torch.device) -> bool:
    """Whether the fused kernel can step an LSTM of ``num_layers`` on ``device``: 2 layers (the paper's; other
    depths run eagerly), on CUDA with Triton, or on CPU under Triton's interpreter."""
    if triton is None or num_layers != 2:
        return False
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _sigmoid(x):
        return 1.0 / (1.0 + tl.exp(-x))

    @triton.jit
    def _tanh(x):
        return 2.0 * _sigmoid(2.0 * x) - 1.0

    @triton.jit
    def _gate(x0, x1, h, wx_ptr, wh_ptr, b_ptr, gate, layer, H: tl.constexpr, HP: tl.constexpr,
              F: tl.constexpr, FIRST: tl.constexpr):  # fmt: skip
        """Pre-activation of one gate for a block: ``[x, h] @ W_gateᵀ + b_gate`` as a (BLOCK, HP) tile."""
        cols = tl.arange(0, HP)
        col_ok = cols < H
        rows_in = tl.arange(0, HP)
        # recurrent part: h (BLOCK, HP) @ Whᵀ (HP, HP); Wh of this layer is (4H, H) row-major
        wh = tl.load(
            wh_ptr + layer * 4 * H * H + (gate * H + cols[None, :]) * H + rows_in[:, None],
            mask=(rows_in[:, None] < H) & col_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(h, wh, input_precision="ieee")
        if FIRST:  # the first layer reads F preprocessed features: outer products
            w0 = tl.load(wx_ptr + (gate * H + cols) * F, mask=col_ok, other=0.0)
            acc += x0[:, None] * w0[None, :]
            if F == 2:
                w1 = tl.load(wx_ptr + (gate * H + cols) * F + 1, mask=col_ok, other=0.0)
                acc += x1[:, None] * w1[None, :]
        else:  # later layers read the previous layer's new h: another (HP, HP) tile
            wx = tl.load(
                wx_ptr + (layer - 1) * 4 * H * H + (gate * H + cols[None, :]) * H + rows_in[:, None],
                mask=(rows_in[:, None] < H) & col_ok[None, :],
                other=0.0,
            )
            acc += tl.dot(x0, wx, input_precision="ieee")
        bias = tl.load(b_ptr + layer * 4 * H + gate * H + cols, mask=col_ok, other=0.0)
        return acc + bias[None, :]

    @triton.jit
    def _cell(x0, x1, h, c, wx_ptr, wh_ptr, b_ptr, layer, tile_ok, H: tl.constexpr, HP: tl.constexpr,
              F: tl.constexpr, FIRST: tl.constexpr):  # fmt: skip
        """One LSTM layer for a block: the four gates, then the new ``(h, c)`` (zero outside the tile)."""
        a_i = _gate(x0, x1, h, wx_ptr, wh_ptr, b_ptr, 0, layer, H, HP, F, FIRST)
        a_f = _gate(x0, x1, h, wx_ptr, wh_ptr, b_ptr, 1, layer, H, HP, F, FIRST)
        a_g = _gate(x0, x1, h, wx_ptr, wh_ptr, b_ptr, 2, layer, H, HP, F, FIRST)
        a_o = _gate(x0, x1, h, wx_ptr, wh_ptr, b_ptr, 3, layer, H, HP, F, FIRST)
        c_new = tl.where(tile_ok, _sigmoid(a_f) * c + _sigmoid(a_i) * _tanh(a_g), 0.0)
        h_new = tl.where(tile_ok, _sigmoid(a_o) * _tanh(c_new), 0.0)
        return h_new, c_new

    @triton.jit
    def _lstm_step_kernel(
        grad_ptr, state_ptr, out_ptr, keep_ptr,
        w0x_ptr, wx_ptr, wh_ptr, b_ptr, wo_ptr, bo, scale, p, exp_p, eps,
        n, stride_layer, stride_hc, stride_row,
        H: tl.constexpr, HP: tl.constexpr, F: tl.constexpr,
        PRE: tl.constexpr, HAS_KEEP: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """One block of ``BLOCK`` coordinates of a 2-layer LSTM: preprocess, both layers, output, reset."""
        pid = tl.program_id(0)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        row_ok = rows < n
        cols = tl.arange(0, HP)
        col_ok = cols < H
        tile_ok = row_ok[:, None] & col_ok[None, :]
        g = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        # --- preprocessing (nets/preprocessing.py), F = 1 or 2 features
        if PRE == 0:
            x0 = g
            x1 = g
        elif PRE == 1:
            big = tl.abs(g) >= 1.0 / exp_p
            x0 = tl.where(big, tl.log(tl.maximum(tl.abs(g), 1.0 / exp_p)) / p, -1.0)
            sign = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))
            x1 = tl.where(big, sign, g * exp_p)
        else:
            x0 = tl.maximum(tl.log(tl.abs(g) + eps) / p, -1.0)
            x1 = tl.minimum(tl.maximum(g * exp_p, -1.0), 1.0)
        offsets = rows[:, None] * stride_row + cols[None, :]
        h1_ptr = state_ptr + offsets
        c1_ptr = state_ptr + stride_hc + offsets
        h2_ptr = state_ptr + stride_layer + offsets
        c2_ptr = state_ptr + stride_layer + stride_hc + offsets
        h1 = tl.load(h1_ptr, mask=tile_ok, other=0.0).to(tl.float32)
        c1 = tl.load(c1_ptr, mask=tile_ok, other=0.0).to(tl.float32)
        h2 = tl.load(h2_ptr, mask=tile_ok, other=0.0).to(tl.float32)
        c2 = tl.load(c2_ptr, mask=tile_ok, other=0.0).to(tl.float32)
        # layer 1 reads the F features, layer 2 layer 1's new h
        h1n, c1n = _cell(x0, x1, h1, c1, w0x_ptr, wh_ptr, b_ptr, 0, tile_ok, H, HP, F, True)
        h2n, c2n = _cell(h1n, x1, h2, c2, wx_ptr, wh_ptr, b_ptr, 1, tile_ok, H, HP, F, False)
        wo = tl.load(wo_ptr + cols, mask=col_ok, other=0.0)
        update = (tl.sum(h2n * wo[None, :], axis=1) + bo) * scale
        tl.store(out_ptr + rows, update, mask=row_ok)
        # a coordinate whose update is not finite starts afresh (NaN and ±inf fail x - x == 0)
        finite = ((update - update) == 0.0)[:, None]
        h1n = tl.where(finite, h1n, 0.0)
        c1n = tl.where(finite, c1n, 0.0)
        h2n = tl.where(finite, h2n, 0.0)
        c2n = tl.where(finite, c2n, 0.0)
        if HAS_KEEP:  # a skipped step (non-finite gradients somewhere) leaves every state as it was
            keep = tl.load(keep_ptr) != 0
            h1n = tl.where(keep, h1n, h1)
            c1n = tl.where(keep, c1n, c1)
            h2n = tl.where(keep, h2n, h2)
            c2n = tl.where(keep, c2n, c2)
        dtype = state_ptr.dtype.element_ty
        tl.store(h1_ptr, h1n.to(dtype), mask=tile_ok)
        tl.store(c1_ptr, c1n.to(dtype), mask=tile_ok)
        tl.store(h2_ptr, h2n.to(dtype), mask=tile_ok)
        tl.store(c2_ptr, c2n.to(dtype), mask=tile_ok)


class TritonLSTMStep:
    """The fused step of one :class:`~l2l_lightning.nets.CoordinatewiseLSTM` on one device (weights packed once).

    Args:
        weights, biases: each layer's ``[input, h]`` weight ``(4H, F + H)`` and bias ``(4H,)`` (gates i, f, g, o).
        output_weight, output_bias: the linear output ``(1, H)``, ``(1,)``.
        preprocess, p, output_scale: the net's settings of those names.
    """

    def __init__(
        self, weights: Sequence[Tensor], biases: Sequence[Tensor], output_weight: Tensor, output_bias: Tensor,
        preprocess: str, p: float, output_scale: float, device: torch.device,
    ) -> None:  # fmt: skip
        to = dict(device=device, dtype=torch.float32)
        hidden = biases[0].shape[0] // 4
        self.hidden, self.layers = hidden, len(weights)
        self.preprocess, self.p, self.output_scale = preprocess, float(p), float(output_scale)
        self.features = weights[0].shape[1] - hidden
        self.w0x = weights[0][:, : self.features].detach().to(**to).contiguous()
        self.wh = torch.stack([w[:, -hidden:].detach() for w in weights]).to(**to).contiguous()
        rest = [w[:, :hidden].detach() for w in weights[1:]]
        self.wx = (torch.stack(rest) if rest else torch.zeros(1, 4 * hidden, hidden)).to(**to).contiguous()
        self.b = torch.stack([b.detach() for b in biases]).to(**to).contiguous()
        self.wo = output_weight.detach().reshape(-1).to(**to).contiguous()
        self.bo = float(output_bias.detach().item())

    def __call__(self, grad: Tensor, states: Sequence[Tensor], out: Tensor, keep: Optional[Tensor]) -> Tensor:
        keep_arg = keep if keep is not None else out  # unused when HAS_KEEP is false
        offset, launched = 0, False
        for state in states:
            n = state.shape[2]
            if n:
                if state.stride(3) != 1 or state.stride(2) != self.hidden:
                    raise ValueError("the fused step needs row-contiguous states (the optimizer keeps them so)")
                grid = (triton.cdiv(n, BLOCK_ROWS),)
                launch = _lstm_step_kernel[grid]
                args = (
                    grad[offset : offset + n], state, out[offset : offset + n], keep_arg,
                    self.w0x, self.wx, self.wh, self.b, self.wo, self.bo, self.output_scale, self.p,
                    math.exp(self.p), float(torch.finfo(grad.dtype).eps), n, state.stride(0), state.stride(1),
                    state.stride(2),
                )  # fmt: skip
                constants = dict(
                    H=self.hidden, HP=max(16, triton.next_power_of_2(self.hidden)), F=self.features,
                    PRE=_PREPROCESS[self.preprocess], HAS_KEEP=keep is not None, BLOCK=BLOCK_ROWS,
                )  # fmt: skip
                if launched:
                    launch(*args, **constants)
                else:  # the first launch compiles: a failure there has written nothing yet
                    try:
                        launch(*args, **constants)
                    except Exception as error:  # noqa: BLE001 - any compiler/driver failure
                        raise FusedStepUnavailable(f"{type(error).__name__}: {error}") from error
                    launched = True
            offset += n
        return out
