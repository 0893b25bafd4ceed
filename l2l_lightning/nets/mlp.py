"""A per-parameter feature MLP: the small_fc_lopt / AdafacMLPLOpt / Celo line of learned optimizers.

The paper's LSTM reads only the gradient and keeps 80 numbers per coordinate; the
optimizers that generalise (google/learned_optimization's ``AdafacMLPLOpt``, Celo, Celo2)
read a handful of hand-built features and map them to an update with a tiny MLP, with no
recurrent state beyond the features' accumulators.  :class:`FeatureMLP` is that design:

* **State**: per coordinate, momenta at ``momentum_decays`` and one second moment (4 numbers:
  16 B in float32, against the LSTM's 320 B); per tensor, Adafactor row and column accumulators
  at ``adafactor_decays`` (see :func:`~l2l_lightning.nets.mlp_kernel.matrix_view`: a vector's row
  accumulators are the reference's non-factored fallback).
* **Inputs**: the gradient, the parameter, the momenta, the second moment, ``m / √v``, ``1/√v``,
  the Adafactor-preconditioned gradient and momentum, the row and column accumulators and their
  ``rsqrt`` (:func:`~l2l_lightning.nets.mlp_kernel.features`), each divided by its root mean square
  over the tensor, so the net sees no absolute scale (Celo2's normalised inputs); plus tanh
  embeddings of the step number at 11 timescales, and with ``schedule=True`` powers of the
  fraction of training done (Celo's learned schedule: the net can anneal as cosine decay does).
* **Output**: ``−direction · exp(exp_mult · magnitude) · step_mult`` (the reference's form:
  ``exp_mult`` keeps the learned step size from running away), with ``output="tanh"``
  bounding the direction to ±1, so each coordinate moves at most ``step_mult ·
  exp(exp_mult · magnitude)`` per step on any run length.  ``scaling="mup"`` divides the
  update of every matrix by its fan-in (μLO), so the same net transfers across widths.
* **Initialisation**: the output layer is zero and a linear skip reads ``m / √v`` into the
  direction, so an untrained net steps like Adam with learning rate ``step_mult`` (normalised
  per tensor), a sound place for meta-training to start from.

:class:`FeatureNet` holds all of it but the part after the features (the MLP here; an LSTM
in :class:`~l2l_lightning.nets.feature_lstm.FeatureLSTM`).  It declares what it reads (:attr:`FeatureNet.inputs`: the parameter, the step number and, with ``schedule``, the run's horizon) and keeps per-tensor
state; it is not coordinatewise (statistics over whole tensors), so it is refused on sharded
(FSDP2) parameters.  Meta-training differentiates through :meth:`FeatureMLP.forward`; deployment
runs :class:`~l2l_lightning.nets.mlp_kernel.FeatureKernel` in the chunked runtime.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, Literal, Optional, Sequence

import torch
from torch import Tensor, nn

from l2l_lightning.errors import (
    ConfigError, check_bool, check_choice, check_float_range, check_positive_float, check_nonnegative_int, check_positive_int,
)
from l2l_lightning.nets.base import Inputs, LearnedOptimizerNet, StepInputs
from l2l_lightning.nets.layout import Layout, Segment, as_layout
from l2l_lightning.nets.mlp_kernel import (
    TINY, FeatureKernel, Views, decays_column, features, fill_indices, head, matrix_view, num_features, step_scale,
    PROGRESS_POWERS, TIMESCALES, first_layer_bias,
)

Scaling = Literal["none", "mup"]
Output = Literal["linear", "tanh"]


def _check_decays(name: str, decays: Sequence[float]) -> tuple[float, ...]:
    if isinstance(decays, (str, bytes)) or not isinstance(decays, Sequence) or not decays:
        raise ConfigError(f"{name}={decays!r} must be a non-empty list of decays in [0, 1)")
    return tuple(check_float_range(f"{name} entry", decay, 0, 1) for decay in decays)


class FeatureNet(LearnedOptimizerNet):
    """What every feature net shares: its features, their state, the meta-training step and the deployment kernel.

    A subclass gives the part after the features: :attr:`first_layer` (the layer that reads the
    features and the time embeddings), :meth:`weight_list` and :meth:`step_head`, and, if its head
    is recurrent, :attr:`recurrent_rows` rows of per-coordinate state after the features'.

    Args (shared):
        momentum_decays: decays of the momenta (the reference: 0.9, 0.99, 0.999).
        rms_decay: decay of the second moment.
        adafactor_decays: decays of the row and column accumulators, paired in order with the
            momenta for the Adafactor-preconditioned momentum (so no more of them than momenta).
        exp_mult, step_mult: the output is ``direction · exp(exp_mult · magnitude) · step_mult``.
        scaling: ``"none"``, or ``"mup"``: the update of a matrix divided by its fan-in.
        output: ``"linear"`` (the reference) or ``"tanh"`` (a bounded direction).
        schedule: also read the fraction of training done (:data:`~l2l_lightning.nets.mlp_kernel.PROGRESS_POWERS`
            of ``step / horizon``), so the net can learn to anneal as Celo's learned schedule does;
            a deployed optimizer then needs ``total_steps`` (the callback reads the Trainer's).
        normalise: divide each feature by its root mean square over the tensor (default; off:
            the raw features, the ablation of Celo2's normalised inputs).
    """

    coordinate_dim = 1
    coordinatewise = False

    def __init__(
        self,
        momentum_decays: Sequence[float],
        rms_decay: float,
        adafactor_decays: Sequence[float],
        exp_mult: float,
        step_mult: float,
        scaling: Scaling,
        output: Output,
        schedule: bool = False,
        normalise: bool = True,
    ) -> None:
        """The shared settings, checked (the defaults are the subclasses': their signatures are what YAML configures)."""
        super().__init__()
        name = type(self).__name__
        self.momentum_decays = _check_decays(f"{name}: momentum_decays", momentum_decays)
        self.adafactor_decays = _check_decays(f"{name}: adafactor_decays", adafactor_decays)
        self.rms_decay = check_float_range(f"{name}: rms_decay", rms_decay, 0, 1)
        if len(self.adafactor_decays) > len(self.momentum_decays):
            raise ConfigError(
                f"{name}: {len(self.adafactor_decays)} adafactor_decays but {len(self.momentum_decays)} "
                "momentum_decays; each Adafactor decay is paired with a momentum, so give no more of them"
            )
        self.exp_mult = check_positive_float(f"{name}: exp_mult", exp_mult)
        self.step_mult = check_positive_float(f"{name}: step_mult", step_mult)
        self.scaling = check_choice(f"{name}: scaling", scaling, ("none", "mup"))
        self.output = check_choice(f"{name}: output", output, ("linear", "tanh"))
        self.schedule = check_bool(f"{name}: schedule", schedule)
        self.normalise = check_bool(f"{name}: normalise", normalise)
        #: The parameter and the step number; with ``schedule``, also the run's horizon.
        self.inputs = Inputs(param=True, step=True, horizon=self.schedule)
        self.skip = nn.Parameter(torch.zeros(self.num_features))
        self._index: dict[tuple[Layout, torch.device], tuple[Views, list[Tensor]]] = {}

    #: Rows of per-coordinate state after the features' (a recurrent head's).
    recurrent_rows: int = 0

    def reset_skip(self) -> None:
        """The skip on ``m / √v`` at the first momentum decay: with a zero output layer, an untrained net
        steps like small-lr Adam, a working optimizer for meta-training to start from."""
        with torch.no_grad():
            self.skip.zero_()[3 + len(self.momentum_decays)] = 1.0  # features: g, p, m·k, v, (m/√v)·k, ...

    def warm_start(self, trained: LearnedOptimizerNet) -> bool:
        """From ``trained``, this net without ``schedule``: its weights, and zeros on the progress inputs.

        All powers of the fraction done are 0 at the first step, and their first-layer weights start
        at 0, so this net steps exactly as ``trained`` until meta-training moves those weights: a
        learned schedule is added to a trained optimizer without starting over.
        """
        if not (self.schedule and type(trained) is type(self) and {**trained.config, "schedule": True} == self.config):
            return False
        state = trained.state_dict()
        name = next(n for n, p in self.named_parameters() if p is self.first_layer.weight)
        weight = state[name]
        state[name] = torch.cat((weight, weight.new_zeros(weight.shape[0], len(PROGRESS_POWERS))), dim=1)
        self.load_state_dict(state)
        return True

    @property
    def num_features(self) -> int:
        """Normalised features per coordinate (the time embeddings come on top)."""
        return num_features(len(self.momentum_decays), len(self.adafactor_decays))

    @property
    def input_size(self) -> int:
        """What :attr:`first_layer` reads: the features and the time embeddings (and progress, with ``schedule``)."""
        return self.num_features + len(TIMESCALES) + (len(PROGRESS_POWERS) if self.schedule else 0)

    @property
    def feature_config(self) -> dict[str, Any]:
        """The shared settings, as plain data (a subclass's :attr:`config` adds its own)."""
        return {
            "momentum_decays": list(self.momentum_decays),
            "rms_decay": self.rms_decay,
            "adafactor_decays": list(self.adafactor_decays),
            "exp_mult": self.exp_mult,
            "step_mult": self.step_mult,
            "scaling": self.scaling,
            "output": self.output,
            # absent at their defaults, so the specs of files from before these settings stay identical
            **({"schedule": True} if self.schedule else {}),
            **({} if self.normalise else {"normalise": False}),
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())

    @property
    @abstractmethod
    def first_layer(self) -> nn.Linear:
        """The layer reading the features and the time embeddings (its time columns are read once per tensor)."""

    @abstractmethod
    def weight_list(self) -> list[Tensor]:
        """The weights :meth:`step_head` reads, in its order (the deployment kernel converts them once)."""

    @abstractmethod
    def step_head(
        self, weights: Sequence[Tensor], x: Tensor, first: Tensor, scale: Tensor, recurrent: Tensor
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``(update, new recurrent rows or None)`` from normalised features ``x`` ``(F, c)``, the first
        layer's per-tensor bias and time read ``first``, the step ``scale`` and the head's ``recurrent``
        state rows (``(recurrent_rows, c)``)."""

    def state_shape(self, n: int) -> tuple[int, int]:
        return (len(self.momentum_decays) + 1 + self.recurrent_rows, n)

    def tensor_state_shape(self, segment: Segment) -> tuple[int, int]:
        rows, cols = matrix_view(segment.shape)
        return (len(self.adafactor_decays), rows + cols)

    def _indices(self, layout: Layout, device: torch.device) -> tuple[Views, list[Tensor]]:
        """Per layout (cached): each coordinate's segment, row and column slot, and the slots' counts."""
        key = (layout, device)
        if key not in self._index:
            views, n = Views(layout), layout.numel
            segment, row_slot, col_slot = (torch.empty(n, dtype=torch.long, device=device) for _ in range(3))
            fill_indices(views, [(i, 0, views.offsets[i], size) for i, size in enumerate(layout.sizes)], segment, row_slot, col_slot)
            long = dict(dtype=torch.long, device=device)
            row_segment = torch.repeat_interleave(torch.arange(len(layout), **long), torch.tensor(views.rows, **long))
            counts = [
                torch.tensor([c for r, c in zip(views.rows, views.cols) for _ in range(r)], device=device),
                torch.tensor([r for r, c in zip(views.rows, views.cols) for _ in range(c)], device=device),
                torch.tensor(views.rows, device=device), torch.tensor(layout.sizes, device=device),
            ]  # fmt: skip
            if len(self._index) > 64:  # a long run over many layouts: keep the cache small
                self._index.clear()
            self._index[key] = (views, [segment, row_slot, col_slot, row_segment, *counts])
        return self._index[key]

    def forward(
        self, grad: Tensor, state: tuple[Tensor, Sequence[Tensor]], layout: "Layout | int | None" = None,
        inputs: Optional[StepInputs] = None,
    ) -> tuple[Tensor, tuple[Tensor, tuple[Tensor, ...]]]:  # fmt: skip
        """One differentiable step over every coordinate of ``layout`` (meta-training).

        ``state``: ``(coordinate state (k + 1, n), per-tensor states)``; ``inputs``: the
        parameters and each tensor's step count.  Returns ``(update, new state)``.
        """
        layout = as_layout(grad.shape[0] if layout is None else layout)
        layout.check(grad)
        needed = [name for name in ("param", "step", "horizon") if getattr(self.inputs, name)]  # what it declared
        if inputs is None or any(getattr(inputs, name) is None for name in needed):
            raise ConfigError(
                f"{type(self).__name__} reads {', '.join(needed)} besides the gradient: "
                f"pass inputs=StepInputs({', '.join(f'{name}=...' for name in needed)})"
            )
        coordinates, tensors = state
        views, (segment, row_slot, col_slot, row_segment, row_count, col_count, rows, sizes) = self._indices(layout, grad.device)
        dtype = self.compute_dtype(grad.dtype)
        g = grad.to(dtype)
        beta = decays_column(self.adafactor_decays, g)
        old_rows = torch.cat([t[:, :r] for t, r in zip(tensors, views.rows)], dim=1).to(dtype)
        old_cols = torch.cat([t[:, r:] for t, r in zip(tensors, views.rows)], dim=1).to(dtype)
        g2 = g.square() + TINY
        new_rows = old_rows * beta + g2.new_zeros(views.num_row_slots).index_add(0, row_slot, g2) / row_count * (1 - beta)
        new_cols = old_cols * beta + g2.new_zeros(views.num_col_slots).index_add(0, col_slot, g2) / col_count * (1 - beta)
        row_mean = new_rows.new_zeros(len(beta), len(layout)).index_add(1, row_segment, new_rows) / rows.clamp(min=1)
        feats, new_coordinates = features(
            self, g, inputs.param.to(dtype), coordinates.to(dtype), new_rows.index_select(1, row_slot),
            new_cols.index_select(1, col_slot), row_mean.index_select(1, segment),
        )  # fmt: skip
        if self.normalise:
            sums = feats.new_zeros(self.num_features, len(layout)).index_add(1, segment, feats.square())
            normalisers = torch.rsqrt(sums / sizes.clamp(min=1) + TINY)
        else:
            normalisers = feats.new_ones(self.num_features, len(layout))
        scale = torch.tensor([step_scale(s.shape, self.scaling) for s in layout], dtype=dtype, device=g.device)
        weights = [w.to(dtype) for w in self.weight_list()]
        update, recurrent = self.step_head(
            weights, feats * normalisers.index_select(1, segment),
            first_layer_bias(self, inputs, dtype).t().index_select(1, segment), scale.index_select(0, segment),
            coordinates[new_coordinates.shape[0] :].to(dtype),
        )  # fmt: skip
        if recurrent is not None:
            new_coordinates = torch.cat((new_coordinates, recurrent))
        new_tensors = tuple(
            torch.cat((r, c), dim=1).to(t.dtype)
            for r, c, t in zip(new_rows.split(views.rows, dim=1), new_cols.split(views.cols, dim=1), tensors)
        )
        return update.to(grad.dtype), (new_coordinates.to(coordinates.dtype), new_tensors)

    def chunk_kernel(self, dtype: torch.dtype, device: torch.device) -> FeatureKernel:
        """The deployment step: a pass over whole tensors (accumulators, normalisers), then chunks in place."""
        return FeatureKernel(self, dtype, device)


class FeatureMLP(FeatureNet):
    """Per-coordinate MLP over normalised momentum, second-moment, Adafactor, parameter and time features.

    Args:
        hidden_size: units per hidden layer (the reference: 4 to 32).
        hidden_layers: ReLU hidden layers (the reference: 2).
        The others are :class:`FeatureNet`'s (momenta, second moment, Adafactor decays, output form).
    """

    def __init__(
        self,
        hidden_size: int = 32,
        hidden_layers: int = 2,
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
        check_positive_int("FeatureMLP: hidden_size", hidden_size)
        check_nonnegative_int("FeatureMLP: hidden_layers", hidden_layers)
        self.hidden_size, self.hidden_layers = hidden_size, hidden_layers
        sizes = [self.input_size] + [hidden_size] * hidden_layers + [2]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal hidden layers (std ``1/√fan_in``, as the reference), a zero output layer and
        the skip on ``m / √v`` (:meth:`FeatureNet.reset_skip`): untrained, the net steps like small-lr Adam."""
        for layer in self.layers:
            nn.init.trunc_normal_(layer.weight, std=1 / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.layers[-1].weight)
        self.reset_skip()

    @property
    def config(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size, "hidden_layers": self.hidden_layers, **self.feature_config}

    @property
    def first_layer(self) -> nn.Linear:
        return self.layers[0]

    def weight_list(self) -> list[Tensor]:
        """What :func:`~l2l_lightning.nets.mlp_kernel.head` reads: the first layer's feature columns, ``W, b``
        of each later layer, the skip (the first layer's bias and time columns: :func:`first_layer_bias`)."""
        later = [t for layer in self.layers[1:] for t in (layer.weight, layer.bias)]
        return [self.layers[0].weight[:, : self.num_features], *later, self.skip]

    def step_head(
        self, weights: Sequence[Tensor], x: Tensor, first: Tensor, scale: Tensor, recurrent: Tensor
    ) -> tuple[Tensor, Optional[Tensor]]:
        return head(self, weights, x, first, scale), None
