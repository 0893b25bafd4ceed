"""The coordinatewise LSTM optimizer of Andrychowicz et al. (2016).

Every coordinate of every parameter is one row of a batch: the weights are shared
by all coordinates, the hidden and cell states are per coordinate.  That is what
lets one trained optimizer run on a model of any size.

The module is *functional and state-passing*: ``update, state = net(grad, state)``.
It knows nothing of Lightning, tasks or parameter names, so the same object is
differentiated through during meta-training and run under ``no_grad`` when deployed.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from l2l_lightning.errors import ConfigError
from l2l_lightning.nets.preprocessing import PreprocessName, check_preprocess, num_features, preprocess


class FusedLSTMCell(nn.Module):
    """An LSTM cell computing its four gates with one matrix product on ``[input, h]``.

    Gate order and initialisation follow :class:`torch.nn.LSTMCell` (i, f, g, o;
    ``U(-1/sqrt(H), 1/sqrt(H))``), so ``weight = cat([weight_ih, weight_hh], 1)`` and
    ``bias = bias_ih + bias_hh`` of an ``nn.LSTMCell`` give the same function.
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
        gates = torch.addmm(bias, torch.cat((x, h), dim=1), weight.t())
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


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
        """
        if grad.dim() != 1:
            raise ValueError(f"grad must be 1-D (one entry per coordinate), got shape {tuple(grad.shape)}")
        if not grad.is_floating_point():
            raise TypeError(f"grad must be a floating-point tensor, got {grad.dtype}")
        n = grad.shape[0]
        if state.shape != self.state_shape(n):
            raise ValueError(
                f"state has shape {tuple(state.shape)}, expected {self.state_shape(n)} for {n} coordinates; "
                "create it with net.init_state(n)"
            )
        compute_dtype = torch.promote_types(grad.dtype, self.output.weight.dtype)
        x = preprocess(grad.to(compute_dtype), self.preprocess, self.p)
        new_state = []
        for layer, cell in enumerate(self.cells):
            h, c = cell(x, state[layer, 0].to(compute_dtype), state[layer, 1].to(compute_dtype))
            new_state += (h, c)
            x = h
        weight, bias = self.output.weight, self.output.bias
        if weight.dtype != compute_dtype:
            weight, bias = weight.to(compute_dtype), bias.to(compute_dtype)
        update = torch.addmm(bias, x, weight.t()).squeeze(1) * self.output_scale
        stacked = torch.stack(new_state).view(self.state_shape(n)).to(state.dtype)
        return update.to(grad.dtype), stacked
