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
* :meth:`CoordinatewiseLSTM.step_inplace` (deployment, no autograd): chunks of
  ``chunk_size`` coordinates, each chunk's temporaries sized for the cache, the state
  updated in place; optionally ``torch.compile``-d.

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
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from l2l_lightning.errors import ConfigError
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


class CoordinatewiseLSTM(nn.Module):
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
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
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
    def spec(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}``: the net's settings as plain data, for checkpoints."""
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": self.config}

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

    def init_state(
        self, n: int, device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None
    ) -> Tensor:
        """Zero state for ``n`` coordinates (the paper's initial state)."""
        if n < 0:
            raise ConfigError(f"n={n} coordinates: must be >= 0")
        return torch.zeros(self.state_shape(n), device=device, dtype=dtype or torch.float32)

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

    def compute_dtype(self, grad_dtype: torch.dtype) -> torch.dtype:
        """The dtype the arithmetic runs in: the wider of the gradient's and the net's."""
        return torch.promote_types(grad_dtype, self.output.weight.dtype)

    def forward(self, grad: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One optimizer step for ``n`` coordinates.

        Args:
            grad: 1-D gradient of ``n`` coordinates, any float dtype.
            state: ``(num_layers, 2, n, hidden_size)`` from :meth:`init_state` or a previous call.

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
        update, layers = self.forward_split(grad, self.split_state(state))
        return update, self.join_state(layers).to(state.dtype)

    def forward_split(
        self, grad: Tensor, layers: list[tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """:meth:`forward` on a state kept as ``[(h, c)]`` per layer (see :meth:`split_state`).

        The unroll carries its state in this form: no ``stack`` of the new state and no
        ``select`` backward (which materialises zeros) per inner step.  The returned
        ``h, c`` are in the compute dtype.
        """
        compute_dtype = self.compute_dtype(grad.dtype)
        x = preprocess(grad.to(compute_dtype), self.preprocess, self.p)
        new_layers = []
        for cell, (h, c) in zip(self.cells, layers):
            h, c = cell(x, h.to(compute_dtype), c.to(compute_dtype))
            new_layers.append((h, c))
            x = h
        weight, bias = self.output.weight, self.output.bias
        if weight.dtype != compute_dtype:
            weight, bias = weight.to(compute_dtype), bias.to(compute_dtype)
        update = torch.addmm(bias, x, weight.t()).squeeze(1) * self.output_scale
        return update.to(grad.dtype), new_layers

    # ------------------------------------------------------------ deployment step
    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)
    @torch.autocast("cuda", enabled=False)
    def step_inplace(
        self,
        grad: Tensor,
        state: Union[Tensor, Sequence[Tensor]],
        out: Optional[Tensor] = None,
        chunk_size: Optional[int] = None,
        *,
        compile: bool = False,
        keep: Optional[Tensor] = None,
        threads: Optional[int] = None,
    ) -> Tensor:
        """:meth:`forward` without autograd, in cache-sized chunks, updating the state in place.

        Args:
            grad: 1-D gradient of ``n`` coordinates.
            state: one ``(num_layers, 2, n, hidden)`` tensor, or a sequence of such tensors
                whose coordinate counts add up to ``n`` (e.g. one per parameter, in ``grad``'s
                order); any float dtype each (bf16 is computed in float32 and rounded back).
            out: where to write the update (``(n,)``, ``grad``'s dtype); allocated if ``None``.
            chunk_size: rows per chunk; default :data:`DEFAULT_CHUNK_SIZE` for the device.
            compile: run each chunk through ``torch.compile`` (falls back to eager, with one
                warning, where compilation fails).
            keep: optional 0-d bool tensor on the device; where it is ``False`` the states are
                left as they were, decided on the device without a host synchronisation.
            threads: CPU threads to share the chunks over (default ``torch.get_num_threads()``).
                Each chunk runs single-threaded: see :func:`_run_chunks_in_threads` for why.

        Returns ``out``.  Temporary memory is ``O(chunk_size)`` besides ``out``: gate
        activations are never materialised for all ``n`` coordinates.  Chunks that lie
        inside one float32/float64 state tensor are computed directly in it; the others
        (bf16 states, pieces of small tensors) go through a float32 workspace.

        A coordinate whose update comes out non-finite (the net diverged there; finite
        gradients cannot do that to a sane net) gets a zero state, so it cannot poison
        later steps.  Its ``out`` entry is left non-finite for the caller to see.
        """
        self._check(grad)
        n = grad.shape[0]
        segments = [state] if isinstance(state, Tensor) else list(state)
        hidden, layers = self.hidden_size, self.num_layers
        total = 0
        for seg in segments:
            if seg.dim() != 4 or tuple(seg.shape[:2]) != (layers, 2) or seg.shape[3] != hidden:
                raise ValueError(
                    f"a state has shape {tuple(seg.shape)}, expected ({layers}, 2, n_i, {hidden}); "
                    "create it with net.init_state(n_i)"
                )
            total += seg.shape[2]
        if total != n:
            raise ValueError(f"the states hold {total} coordinates, the gradient {n}")
        device = grad.device
        chunk_size = check_chunk_size(DEFAULT_CHUNK_SIZE.get(device.type, 2**16) if chunk_size is None else chunk_size)
        if out is None:
            out = torch.empty_like(grad)
        elif out.shape != grad.shape:
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(grad.shape)}")
        if n == 0:
            return out
        dtype = self.compute_dtype(grad.dtype)
        rows = min(chunk_size, n)
        masked = keep is not None
        reset_always = masked or device.type != "cpu"  # a host check per chunk would sync a GPU
        weights = self._inference_weights(dtype, device)
        runner = _compiled_runner(self) if compile else None

        def run(
            work: _Workspace, g: Tensor, c: int, hs: list[Tensor], cs: list[Tensor], flat: list[tuple[int, int, int]]
        ) -> None:
            """Compute one chunk of ``c`` rows whose state views are ``hs, cs``; write ``out``."""
            if runner is not None and runner.active:
                u = runner(self, work, g, c, weights)
            else:
                u = self._chunk_eager(work, g, c, hs, cs, weights)
            bad = ~torch.isfinite(u)
            if reset_always or bool(bad.any()):
                column = bad.unsqueeze(1)
                for t in (*hs, *cs):
                    t.masked_fill_(column, 0)
            for out_start, row_start, length in flat:
                out[out_start : out_start + length].copy_(u[row_start : row_start + length])

        def direct(work: _Workspace, seg: Tensor, pos: int, flat_start: int, c: int) -> None:
            """A chunk inside one state tensor of the compute dtype: computed in place."""
            hs = [seg[layer, 0, pos : pos + c] for layer in range(layers)]
            cs = [seg[layer, 1, pos : pos + c] for layer in range(layers)]
            run(work, grad[flat_start : flat_start + c].to(dtype), c, hs, cs, [(flat_start, 0, c)])

        def gathered(work: _Workspace, pieces: list[tuple[Tensor, int, int, int]]) -> None:
            """Pieces ``(state, start, flat start, length)`` copied into the workspace, computed, copied back."""
            c = sum(piece[3] for piece in pieces)
            g = work.grad[:c]
            flat, row = [], 0
            for seg, start, flat_start, length in pieces:
                g[row : row + length].copy_(grad[flat_start : flat_start + length])
                work.state[:, :, row : row + length].copy_(seg[:, :, start : start + length])
                flat.append((flat_start, row, length))
                row += length
            hs = [work.state[layer, 0, :c] for layer in range(layers)]
            cs = [work.state[layer, 1, :c] for layer in range(layers)]
            run(work, g, c, hs, cs, flat)
            row = 0
            for seg, start, _, length in pieces:
                new = work.state[:, :, row : row + length]
                target = seg[:, :, start : start + length]
                target.copy_(torch.where(keep, new, target) if masked else new)
                row += length

        # Plan.  Chunks inside one state of the compute dtype run in place; a tail of at least
        # ``min_direct`` rows too (one more chunk, but no copies); smaller tails and small tensors
        # are packed together through the workspace, so many small parameters still make full chunks.
        direct_ok = not masked and runner is None
        min_direct = max(1, rows // 4)
        tasks: list[tuple[Any, ...]] = []
        pending: list[tuple[Tensor, int, int, int]] = []  # (segment, start in it, flat start, length)
        pending_rows = offset = 0
        for seg in segments:
            size, pos = seg.shape[2], 0
            rows_contiguous = seg.stride(3) == 1 and seg.stride(2) == hidden
            if direct_ok and seg.dtype == dtype and seg.device == device and rows_contiguous:
                while size - pos >= min_direct:
                    c = min(rows, size - pos)
                    tasks.append((direct, seg, pos, offset + pos, c))
                    pos += c
            while pos < size:
                length = min(size - pos, rows - pending_rows)
                pending.append((seg, pos, offset + pos, length))
                pending_rows += length
                pos += length
                if pending_rows == rows:
                    tasks.append((gathered, pending))
                    pending, pending_rows = [], 0
            offset += size
        if pending:
            tasks.append((gathered, pending))

        # Run.  On CPU each chunk's ops run single-threaded and the chunks are shared out over
        # torch.get_num_threads() threads: OpenMP inside ~40 small ops per chunk means a barrier
        # per op, and one busy core elsewhere (a shared machine, several processes per node)
        # then stalls every barrier for a scheduler time slice — ~100× slower, measured.
        # Independent chunks need no barrier: a stalled thread only delays its own chunk.
        if device.type != "cpu" or runner is not None:
            work = _Workspace(self, rows, dtype, device, zero=runner is not None)
            for fn, *args in tasks:
                fn(work, *args)
            return out
        _run_chunks_in_threads(tasks, lambda: _Workspace(self, rows, dtype, device), threads or torch.get_num_threads())
        return out

    def _inference_weights(self, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        """Per layer ``W, b`` (g rows doubled, see :func:`_gate_weights`), then the output's ``w, b``."""
        weights = []
        for cell in self.cells:
            to = functools.partial(Tensor.to, device=device, dtype=dtype)
            weights += _gate_weights(to(cell.weight), to(cell.bias), self.hidden_size)
        weights += [self.output.weight.to(device=device, dtype=dtype), self.output.bias.to(device=device, dtype=dtype)]
        return weights

    def _chunk_eager(
        self, work: "_Workspace", g: Tensor, c: int, hs: list[Tensor], cs: list[Tensor], weights: list[Tensor]
    ) -> Tensor:
        """One chunk in place: ``hs, cs`` (``(c, hidden)`` views) advance; returns the update ``(c,)``."""
        hidden = self.hidden_size
        x = work.xh[0][:c]
        preprocess_into(g, self.preprocess, self.p, x[:, : x.shape[1] - hidden])
        for layer in range(self.num_layers):
            xh = work.xh[layer][:c]
            xh[:, xh.shape[1] - hidden :].copy_(hs[layer])
            weight, bias = weights[2 * layer], weights[2 * layer + 1]
            # tanh(g) overwrites σ(2g) in place (g's columns of s): no separate buffer
            _cell_(xh, weight, bias, cs[layer], hidden, cs[layer], hs[layer], hs[layer])
            if layer + 1 < self.num_layers:
                work.xh[layer + 1][:c, :hidden].copy_(hs[layer])
        update = work.update[:c]
        torch.addmm(weights[-1], hs[-1], weights[-2].t(), out=update)
        return update.squeeze(1).mul_(self.output_scale)


#: Rows per chunk of :meth:`CoordinatewiseLSTM.step_inplace`, by device type.  On CPU a
#: chunk's gate activations (``rows × 4·hidden`` floats, 2.6 MB at 8192 × 80) stay in
#: L2/L3; on GPUs a chunk only has to be big enough to fill the device.
DEFAULT_CHUNK_SIZE: dict[str, int] = {"cpu": 8192, "cuda": 2**18}


def check_chunk_size(chunk_size: Any) -> int:
    """``chunk_size`` if it is a positive integer, else :class:`ConfigError`."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ConfigError(f"chunk_size={chunk_size!r} must be a positive integer (rows of coordinates per chunk)")
    return chunk_size


class _Workspace:
    """The chunk-sized buffers of one :meth:`CoordinatewiseLSTM.step_inplace` call.

    ``grad`` and ``state`` (the gather buffers) are allocated on first use: a step whose
    chunks all lie inside float32 states never needs them.
    """

    def __init__(
        self, net: CoordinatewiseLSTM, rows: int, dtype: torch.dtype, device: torch.device, zero: bool = False
    ) -> None:
        hidden = net.hidden_size
        self._empty = functools.partial(torch.empty, dtype=dtype, device=device)
        self._state_shape = net.state_shape(rows)
        widths = [num_features(net.preprocess)] + [hidden] * (net.num_layers - 1)
        self.xh = [self._empty(rows, width + hidden) for width in widths]
        self.update = self._empty(rows, 1)
        self._grad: Optional[Tensor] = None
        self._state: Optional[Tensor] = None
        if zero:  # the compiled path computes all rows, stale ones included
            self.grad.zero_()
            self.state.zero_()

    @property
    def grad(self) -> Tensor:
        if self._grad is None:
            self._grad = self._empty(self._state_shape[2])
        return self._grad

    @property
    def state(self) -> Tensor:
        if self._state is None:
            self._state = self._empty(self._state_shape)
        return self._state


#: ATen uses OpenMP here, whose thread count is per calling thread (the chunk threads rely on it).
_OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _run_chunks_in_threads(tasks: list[tuple[Any, ...]], workspace: Callable[[], _Workspace], threads: int) -> None:
    """Run ``fn(work, *args)`` for every task on up to ``threads`` threads, each with its own
    workspace and one intra-op thread; the caller's intra-op thread count is restored."""
    if not _OPENMP:  # thread counts are process-wide there (and cannot change once set): run in order
        buffers = workspace()
        for task in tasks:
            task[0](buffers, *task[1:])
        return
    caller_threads = torch.get_num_threads()
    workers = max(1, min(threads, len(tasks) // 2))  # a thread of its own pays from two chunks on
    queue = iter(tasks)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        torch.set_num_threads(1)  # OpenMP/MKL thread counts are per calling thread
        # grad mode and autocast are thread-local too: a helper thread starts with the defaults
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            buffers = workspace()
            while not errors:
                with lock:
                    task = next(queue, None)
                if task is None:
                    return
                try:
                    task[0](buffers, *task[1:])
                except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
                    errors.append(error)

    helpers = [threading.Thread(target=work, daemon=True) for _ in range(workers - 1)]
    try:
        for helper in helpers:
            helper.start()
        work()
        for helper in helpers:
            helper.join()
    finally:
        torch.set_num_threads(caller_threads)
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- torch.compile
def _chunk_functional(
    g: Tensor, state: Tensor, weights: list[Tensor], preprocess_name: str, p: float, output_scale: float
) -> tuple[Tensor, Tensor]:
    """The chunk arithmetic of :meth:`CoordinatewiseLSTM._chunk_eager` as a pure function (for ``torch.compile``)."""
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


class _CompiledRunner:
    """``torch.compile``d chunk function over a whole workspace; eager forever after one failure."""

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key
        self.active = True
        self.fn: Optional[Callable[..., Any]] = None

    def disable(self, error: BaseException) -> None:
        self.active = False
        warnings.warn(
            f"torch.compile is unavailable or failed for the learned optimizer's step ({type(error).__name__}: "
            f"{error}); falling back to eager (same results, slower on GPUs). Pass compile=False to silence this.",
            RuntimeWarning,
            stacklevel=4,
        )

    def __call__(self, net: CoordinatewiseLSTM, work: _Workspace, g: Tensor, c: int, weights: list[Tensor]) -> Tensor:
        """Run on the whole workspace (``g`` is ``work.grad[:c]``; rows past ``c`` are stale and ignored)."""
        try:
            if self.fn is None:
                self.fn = torch.compile(_chunk_functional, fullgraph=True)  # automatic dynamic shapes: few recompiles
            update, new_state = self.fn(work.grad, work.state, weights, net.preprocess, net.p, net.output_scale)
        except Exception as error:  # noqa: BLE001 - any compiler failure means: run eagerly
            self.disable(error)
            hs = [work.state[layer, 0, :c] for layer in range(net.num_layers)]
            cs = [work.state[layer, 1, :c] for layer in range(net.num_layers)]
            return net._chunk_eager(work, g, c, hs, cs, weights)
        work.state.copy_(new_state)
        out = work.update[:, 0]
        out.copy_(update)
        return out[:c]


_RUNNERS: dict[tuple[Any, ...], _CompiledRunner] = {}


def _compiled_runner(net: CoordinatewiseLSTM) -> _CompiledRunner:
    """One runner per net configuration and process: a failed compilation warns once."""
    key = (type(net), net.num_layers, net.hidden_size, net.preprocess, net.p, net.output_scale)
    runner = _RUNNERS.get(key)
    if runner is None:
        runner = _RUNNERS[key] = _CompiledRunner(key)
    return runner
