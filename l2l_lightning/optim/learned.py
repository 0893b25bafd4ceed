"""``LearnedOptimizer``: a trained coordinatewise net as a ``torch.optim.Optimizer``.

Each step reads every gradient coordinate, runs the net once per bucket of
parameters and applies ``θ ← θ + lr · update``.  Written like ``torch/optim/adam.py``
(defaults, param groups, ``@torch.no_grad()`` step, closure contract) so that Lightning,
LR schedulers, ``GradScaler``, ``BaseFinetuning.add_param_group`` and checkpointing
treat it like any other optimizer.

State per parameter (``self.state[p]``):

* ``"lstm"``: ``(num_layers, 2, p.numel(), hidden)`` in the group's ``state_dtype``;
* ``"step"``: how many steps this parameter has taken (an ``int``).

Why each choice:

* **Bucketed flat pass.** Per parameter group, the gradients of all parameters that
  have one are concatenated per ``(device, dtype)`` and the net runs once on the flat
  vector: a coordinatewise net gives the same update per coordinate however the rows
  are grouped, and one big matrix product is much cheaper than many small ones.
  :func:`_step_flat` is the one place that runs the net, so chunking it (to bound
  memory) is a local change.
* **Compute everything, then write.** All updates and new states are computed and
  checked before any parameter or state is touched: a step either happens for every
  parameter or for none (non-finite gradients, a non-finite update, an error halfway).
  Costs one extra copy of the states of the stepped parameters during ``step``.
* **Non-finite gradients skip the whole step** with a :class:`SkippedStepWarning`.
  Under ``GradScaler`` (``precision="16-mixed"``) the scaler already skips ``step()``
  on inf/NaN, so nothing advances there either.
* **``lr`` multiplies the net's output**, so every ``torch.optim.lr_scheduler`` works.
* **The net is copied and frozen** at construction (the optimizer owns it), and
  moved lazily to each parameter's device; one copy per ``(device, dtype)``, cached.
  ``float64`` parameters get a ``float64`` copy, all narrower dtypes use the net's own
  (float32) weights: the net promotes internally, so bf16/fp16 gradients are read at
  float32 accuracy.
* **The state dict names its net**: ``state_dict()["l2l_net"]`` holds the net's
  class, settings and a fingerprint of its weights; :meth:`LearnedOptimizer.load_state_dict`
  refuses LSTM states from a different net or of the wrong shape.

Distributed training:

* **DDP** (tested, 2 CPU processes): gradients are all-reduced before ``step``, the
  step is deterministic and has no rank-dependent branch (the non-finite check reads
  the reduced gradients), so every rank keeps identical parameters and LSTM states.
* **FSDP / ZeRO-style sharding: untested.**  In principle the net is coordinatewise, so
  stepping a local shard is correct and the state is per local shard.  But FSDP's
  optimizer-state-dict utilities expect state tensors shaped like their parameter
  (ours is ``(layers, 2, numel, hidden)``) and may drop the extra ``"l2l_net"`` key, so
  saving and resuming under FSDP is expected *not* to work today.  DeepSpeed, which
  wraps or replaces the optimizer, is not supported.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from l2l_lightning.errors import CheckpointError, ConfigError, UnsupportedGradientError
from l2l_lightning.optim.pretrained import fingerprint, load_net, net_spec

#: State dtypes a parameter group may ask for (by name, so state dicts stay plain).
STATE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


class SkippedStepWarning(UserWarning):
    """``LearnedOptimizer.step`` skipped a step (non-finite gradients or updates); nothing changed."""


def _state_dtype_name(value: Union[str, torch.dtype]) -> str:
    name = str(value).removeprefix("torch.") if isinstance(value, (str, torch.dtype)) else None
    if name not in STATE_DTYPES:
        raise ConfigError(
            f"state_dtype={value!r}; allowed: {', '.join(repr(n) for n in STATE_DTYPES)} "
            "(float32 default, bfloat16 halves the optimizer state's memory)"
        )
    return name


def _check_lr(lr: Any) -> None:
    value = lr.item() if isinstance(lr, Tensor) and lr.numel() == 1 else lr
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"lr={lr!r} must be a non-negative number (it multiplies the learned update)")


def _step_flat(net: nn.Module, grad: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """Run the net on one flat gradient vector: ``(update, new_state)``.

    The single place the net is applied; a memory-bounded version would loop over
    coordinate chunks here (the net is coordinatewise, so chunks are independent).
    """
    return net(grad, state)


@dataclass
class _Bucket:
    """Parameters of one group sharing device and gradient dtype: one pass of the net."""

    group: dict[str, Any]
    params: list[Tensor]
    grad: Tensor  #: all their gradients, flattened and concatenated
    state: Tensor  #: their LSTM states concatenated along the coordinate dim


class LearnedOptimizer(Optimizer):
    """A trained learned optimizer (Andrychowicz et al., 2016) as a ``torch.optim.Optimizer``.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        checkpoint: the trained net: a shipped name (``"quadratic"``, see
            :func:`l2l_lightning.optim.pretrained.available`), a path to an exported file,
            a path to a ``MetaLearner`` Lightning checkpoint (``*.ckpt``), or a net instance
            (copied: later changes to it do not reach the optimizer).
        lr: multiplies the net's update (``θ ← θ + lr · update``); 1.0 reproduces the
            trained behaviour.  Per group, and what LR schedulers change.
        state_dtype: dtype of the per-coordinate LSTM state, per group: ``"float32"``
            (default) or ``"bfloat16"`` (half the memory; the state is rounded after each step).

    Example::

        def configure_optimizers(self):
            return LearnedOptimizer(self.parameters(), checkpoint="quadratic")
    """

    def __init__(
        self,
        params: Iterable[Any],
        checkpoint: Union[str, "os.PathLike[str]", nn.Module],
        lr: float = 1.0,
        state_dtype: Union[str, torch.dtype] = "float32",
    ) -> None:
        _check_lr(lr)
        net = load_net(checkpoint)
        if net is checkpoint:
            net = copy.deepcopy(net)
        for method in ("init_state", "state_shape"):
            if not callable(getattr(net, method, None)):
                raise ConfigError(
                    f"checkpoint: {type(net).__name__} has no {method}() method; LearnedOptimizer needs a "
                    "coordinatewise net with the CoordinatewiseLSTM interface"
                )
        self._net: nn.Module = net.eval().requires_grad_(False)
        self._net_spec = net_spec(net)
        self._fingerprint = fingerprint(net)
        self._nets: dict[tuple[torch.device, torch.dtype], nn.Module] = {}
        super().__init__(params, {"lr": lr, "state_dtype": _state_dtype_name(state_dtype)})

    # ----------------------------------------------------------------- plumbing
    @property
    def net(self) -> nn.Module:
        """The optimizer's own (frozen) copy of the trained net, on its original device."""
        return self._net

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.add_param_group``, validating ``lr``, ``state_dtype`` and dtypes."""
        if "lr" in param_group:
            _check_lr(param_group["lr"])
        if "state_dtype" in param_group:
            param_group["state_dtype"] = _state_dtype_name(param_group["state_dtype"])
        params = param_group.get("params")
        params = [params] if isinstance(params, Tensor) else list(params if params is not None else [])
        param_group["params"] = params
        for p in params:
            tensor = p[1] if isinstance(p, tuple) else p
            if isinstance(tensor, Tensor) and (tensor.is_complex() or not tensor.is_floating_point()):
                raise UnsupportedGradientError(
                    f"LearnedOptimizer: a parameter has dtype {tensor.dtype}; only real floating-point parameters "
                    "are supported (view complex ones as real pairs with torch.view_as_real)"
                )
        super().add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(_net=self._net, _net_spec=self._net_spec, _fingerprint=self._fingerprint)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_nets", {})

    def _net_for(self, device: torch.device, grad_dtype: torch.dtype) -> nn.Module:
        """The net on ``device``, in float64 for float64 gradients, else in its own dtype (cached)."""
        base_dtype = next(self._net.parameters()).dtype
        dtype = torch.promote_types(grad_dtype, base_dtype)
        key = (device, dtype)
        net = self._nets.get(key)
        if net is None:
            net = copy.deepcopy(self._net).to(device=device, dtype=dtype)
            self._nets[key] = net
        return net

    # ---------------------------------------------------------------- the step
    def _buckets(self) -> list[_Bucket]:
        """Group the parameters that have a gradient; read state without creating any."""
        buckets = []
        for group in self.param_groups:
            state_dtype = STATE_DTYPES[group["state_dtype"]]
            by_key: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse or grad.layout != torch.strided:
                    raise UnsupportedGradientError(
                        "LearnedOptimizer does not support sparse gradients (layout "
                        f"{grad.layout}); use dense gradients, e.g. nn.Embedding(sparse=False)"
                    )
                if grad.is_complex():
                    raise UnsupportedGradientError("LearnedOptimizer does not support complex gradients")
                by_key.setdefault((grad.device, grad.dtype), []).append(p)
            for (device, _), params in by_key.items():
                states = []
                for p in params:
                    shape = self._net.state_shape(p.numel())
                    lstm = self.state[p].get("lstm") if p in self.state else None
                    if lstm is None:
                        lstm = self._net.init_state(p.numel(), device=device, dtype=state_dtype)
                    elif tuple(lstm.shape) != tuple(shape):
                        raise CheckpointError(
                            f"LearnedOptimizer: a parameter of {p.numel()} elements has an LSTM state of shape "
                            f"{tuple(lstm.shape)}, expected {tuple(shape)}; was the parameter resized after the "
                            "optimizer state was created?"
                        )
                    states.append(lstm.to(device=device, dtype=state_dtype))
                grad = torch.cat([p.grad.reshape(-1) for p in params])
                buckets.append(_Bucket(group, params, grad, torch.cat(states, dim=2)))
        return buckets

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One optimization step over every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (run with grad enabled),
                as in torch's optimizer contract; its return value is returned.

        Parameters without a gradient are skipped and keep their state.  If any gradient
        (or any resulting update) is NaN/Inf, no parameter and no state changes and a
        :class:`SkippedStepWarning` is issued.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        buckets = self._buckets()
        if not buckets:
            return loss
        if not all(bool(torch.isfinite(b.grad).all()) for b in buckets):
            warnings.warn(
                "LearnedOptimizer: non-finite gradient (NaN/Inf); the step was skipped for all parameters "
                "and no optimizer state advanced",
                SkippedStepWarning,
                stacklevel=3,  # past torch's step wrapper, to the caller of step()
            )
            return loss
        results = [_step_flat(self._net_for(b.grad.device, b.grad.dtype), b.grad, b.state) for b in buckets]
        if not all(bool(torch.isfinite(update).all()) for update, _ in results):
            warnings.warn(
                "LearnedOptimizer: the net produced a non-finite update from finite gradients; the step was "
                "skipped for all parameters and no optimizer state advanced",
                SkippedStepWarning,
                stacklevel=3,  # past torch's step wrapper, to the caller of step()
            )
            return loss
        # Everything is computed and checked: only now write parameters and states.
        for bucket, (update, new_state) in zip(buckets, results):
            lr = bucket.group["lr"]
            sizes = [p.numel() for p in bucket.params]
            for p, u, s in zip(bucket.params, update.split(sizes), new_state.split(sizes, dim=2)):
                if isinstance(lr, Tensor):
                    p.add_(u.view_as(p) * lr)
                else:
                    p.add_(u.view_as(p), alpha=lr)
                state = self.state[p]
                state["lstm"] = s.contiguous()
                state["step"] = state.get("step", 0) + 1
        return loss

    # ------------------------------------------------------------ state dicts
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"l2l_net"``: the net's class, settings and weight fingerprint."""
        state_dict = super().state_dict()
        state_dict["l2l_net"] = {
            "class_path": self._net_spec["class_path"],
            "init_args": dict(self._net_spec["init_args"]),
            "fingerprint": self._fingerprint,
        }
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Load a state dict of a ``LearnedOptimizer`` with the same net.

        Args:
            strict: with ``False``, a state dict whose net has the same class and settings
                but different weights (e.g. a re-exported pretrained file) loads with a
                warning instead of an error; a different class or settings, or states of
                the wrong shape, always raise :class:`~l2l_lightning.errors.CheckpointError`.

        Unlike torch's default, LSTM states keep the dtype they were saved in (torch
        would cast every floating state to its parameter's dtype, rounding float32
        states of a bf16 model).
        """
        saved = state_dict.get("l2l_net")
        if not isinstance(saved, dict):
            keys = sorted({k for s in state_dict.get("state", {}).values() if isinstance(s, dict) for k in s})
            raise CheckpointError(
                "LearnedOptimizer.load_state_dict: this state dict was not written by a LearnedOptimizer "
                f"(no 'l2l_net' entry; its per-parameter state keys are {keys}). Resuming a run that used "
                "another optimizer needs a fresh optimizer state."
            )
        mine = {**self._net_spec, "fingerprint": self._fingerprint}
        if saved.get("class_path") != mine["class_path"] or saved.get("init_args") != mine["init_args"]:
            raise CheckpointError(
                "LearnedOptimizer.load_state_dict: the state dict belongs to a different net: saved "
                f"{saved.get('class_path')}({saved.get('init_args')}), this optimizer has "
                f"{mine['class_path']}({mine['init_args']}). Use the same `checkpoint` as the run that saved it."
            )
        if saved.get("fingerprint") != mine["fingerprint"]:
            message = (
                "LearnedOptimizer.load_state_dict: the state dict was written with a net of the same settings "
                f"but different weights (fingerprint {saved.get('fingerprint')} vs {mine['fingerprint']})"
            )
            if strict:
                raise CheckpointError(
                    message + "; use the same `checkpoint` as the run that saved it, or pass strict=False "
                    "to continue its LSTM states with this net"
                )
            warnings.warn(message + "; continuing its LSTM states with this net (strict=False)", stacklevel=2)

        saved_ids = list(chain.from_iterable(g["params"] for g in state_dict["param_groups"]))
        params = list(chain.from_iterable(g["params"] for g in self.param_groups))
        if len(saved_ids) != len(params) or len(state_dict["param_groups"]) != len(self.param_groups):
            raise CheckpointError(
                f"LearnedOptimizer.load_state_dict: the state dict has {len(state_dict['param_groups'])} groups "
                f"of {len(saved_ids)} parameters, this optimizer {len(self.param_groups)} groups of {len(params)}"
            )
        lstm: dict[Any, Tensor] = {}
        stripped: dict[Any, Any] = {}
        for index, (saved_id, p) in enumerate(zip(saved_ids, params)):
            entry = state_dict["state"].get(saved_id)
            if not isinstance(entry, dict):
                continue
            stripped[saved_id] = {k: v for k, v in entry.items() if k != "lstm"}
            if "lstm" in entry:
                expected = tuple(self._net.state_shape(p.numel()))
                if not isinstance(entry["lstm"], Tensor) or tuple(entry["lstm"].shape) != expected:
                    got = tuple(entry["lstm"].shape) if isinstance(entry["lstm"], Tensor) else type(entry["lstm"])
                    raise CheckpointError(
                        f"LearnedOptimizer.load_state_dict: parameter #{index} ({p.numel()} elements) has a saved "
                        f"LSTM state of shape {got}, expected {expected}: the state dict belongs to another "
                        "model or net"
                    )
                lstm[saved_id] = entry["lstm"]
        rest = {k: v for k, v in state_dict["state"].items() if k not in stripped}
        super().load_state_dict({**state_dict, "state": {**rest, **stripped}})
        for saved_id, p in zip(saved_ids, params):
            if saved_id in lstm:
                self.state[p]["lstm"] = lstm[saved_id].to(device=p.device)
