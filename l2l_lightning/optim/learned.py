"""``LearnedOptimizer``: a trained coordinatewise net as a ``torch.optim.Optimizer``.

Each step reads every gradient coordinate, runs the net once per bucket of
parameters and applies ``θ ← θ + lr · update``.  Written like ``torch/optim/adam.py``
(defaults, param groups, ``@torch.no_grad()`` step, closure contract) so that Lightning,
LR schedulers, ``GradScaler``, ``BaseFinetuning.add_param_group`` and checkpointing
treat it like any other optimizer.

State per parameter (``self.state[p]``):

* ``"lstm"``: the net's state for this parameter, in the group's ``state_dtype``
  (``(num_layers, 2, p.numel(), hidden)`` for the LSTM; the key keeps its name for every
  net, so state dicts of earlier versions load);
* ``"step"``: how many times the net has stepped this parameter's state: an ``int`` on
  CPU, a 0-d int64 tensor on the parameter's device on GPUs (advanced without a host sync).

Why each choice:

* **One flat pass per bucket, in cache-sized chunks, states updated in place.** The
  gradients of all parameters that have one are concatenated per ``(device, dtype)``,
  across param groups (``1/80`` of the state's size in float32), and the net, bound to
  the bucket's :class:`~l2l_lightning.nets.base.Layout`, steps them with
  :meth:`~l2l_lightning.nets.LearnedOptimizerNet.step_inplace`: for the LSTM, the
  deployment runtime (:mod:`l2l_lightning.optim.runtime`) runs it in chunks of
  ``chunk_size`` coordinates, each chunk's gate activations in cache and its states
  updated in place.  Extra memory during a step: the flat gradient, the flat update
  and the chunk workspace (a few MB), i.e. a few percent of the state, not the +100% a
  copy of the new states would cost.  On CPU the chunks are shared over
  ``torch.get_num_threads()`` threads, each chunk single-threaded (no OpenMP barrier
  per op, which stalls badly on a machine with a busy core).  One bucket is one
  optimizee to nets that look across coordinates (LSTM+GAC averages over it).  ``torch.compile`` of the chunk is used on CUDA (``compile="auto"``); on
  CPU the compiled chunk measured slower than the eager one (0.65×, oneDNN matrix
  products vs inductor's), so ``"auto"`` leaves CPU eager.
* **Parameters are written only after every update is computed and checked**: the
  update is buffered (flat, ``1/80`` of the state) and applied after all chunks.
* **Non-finite gradients skip the whole step** with a :class:`SkippedStepWarning`: they
  are checked before anything runs, so no parameter and no state changes (and no state
  is created).  Under ``GradScaler`` (``precision="16-mixed"``) the scaler already skips
  ``step()`` on inf/NaN, so nothing advances there either.
* **A non-finite update from finite gradients** (the net itself diverged) cannot be rolled
  back completely without keeping a second copy of every state: the states were updated
  in place chunk by chunk.  Then no parameter is changed, the LSTM state of every
  coordinate whose update was non-finite is reset to zeros (a fresh start for exactly
  those coordinates), the other coordinates keep their advanced state, ``"step"``
  advances (it counts the net's passes over the parameter), and a
  :class:`SkippedStepWarning` says so.  Likewise an exception raised inside ``step``
  (out of memory, say) leaves the parameters untouched but may leave part of the states
  advanced.
* **No host synchronisation on CUDA.** On a GPU the finite checks stay on the device:
  the states are written through ``where(finite grads, new, old)``, the update through
  ``where(all finite, update, 0)``, ``"step"`` is a 0-d int64 device tensor advanced by
  the device flag (as with ``torch.optim.Adam(capturable=True)``), and the
  :class:`SkippedStepWarning` is issued by a later ``step()`` (or ``state_dict()``) once
  the flag has reached the host through a non-blocking copy.  On CPU everything is
  decided at once and ``"step"`` is an ``int``.
* **``lr`` multiplies the net's output**, so every ``torch.optim.lr_scheduler`` works.
* **The net is copied and frozen** at construction (the optimizer owns it), and
  moved lazily to each parameter's device; one copy per ``(device, dtype)``, cached.
  ``float64`` parameters get a ``float64`` copy, all narrower dtypes use the net's own
  (float32) weights: the net promotes internally, so bf16/fp16 gradients are read at
  float32 accuracy.
* **Separate nets for separate parameters.**  A :class:`~l2l_lightning.nets.RoutedNets`
  checkpoint (e.g. the paper's conv / fully connected LSTMs) sends each parameter to the
  net of its route, decided once, when its group is added, from the parameter's name
  and owning module type (``module=model``, or ``model.named_parameters()`` for name
  patterns) or from the group's own ``"route"`` key.  The decision is kept in the group
  (``"param_routes"``), so it is in the state dict and a resumed run with parameters
  routed differently is refused.  The net bound to a bucket's layout sends each route's
  parameters to its own net (:class:`~l2l_lightning.nets.routed.BoundNets`).
* **The state dict names its net**: ``state_dict()["l2l_net"]`` holds the net's
  class, settings and a fingerprint of its weights; :meth:`LearnedOptimizer.load_state_dict`
  refuses LSTM states from a different net or of the wrong shape.

Distributed training:

* **DDP** (tested, 2 CPU processes): gradients are all-reduced before ``step``, the
  step is deterministic and has no rank-dependent branch (the non-finite check reads
  the reduced gradients), so every rank keeps identical parameters and LSTM states.
* **FSDP2** (``fully_shard``, Lightning's ``ModelParallelStrategy``; tested, 2 CPU processes with
  gloo): parameters and gradients are DTensors; each rank steps its local shard with the
  states of its local coordinates (the net is coordinatewise, so this equals the unsharded
  step), and the state dict goes through ``torch.distributed.checkpoint`` with each LSTM state
  as a DTensor sharded like its parameter (:mod:`l2l_lightning.optim.sharded`).  LSTM+GAC,
  which averages over all coordinates, is refused on sharded parameters.
* **FSDP1** (``FullyShardedDataParallel``, ``FSDPStrategy``) and **DeepSpeed ZeRO-3** parameters
  are refused at construction (their optimizer-state code assumes state shaped like the
  parameter).  Other DeepSpeed stages replace the parameters after the optimizer is built and
  cannot be recognised from here; ``LearnedOptimizerCallback`` refuses the DeepSpeed strategy.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Callable, Optional, Protocol, Union

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from l2l_lightning.errors import CheckpointError, ConfigError, UnsupportedGradientError
from l2l_lightning.nets.base import Layout, LearnedOptimizerNet, Segment, owner_types
from l2l_lightning.optim import sharded
from l2l_lightning.optim.pretrained import load_net
from l2l_lightning.optim.runtime import StepOptions, check_chunk_size, intra_op_threads
from l2l_lightning.serialization import NET_KEY, fingerprint, net_spec

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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"lr={lr!r} must be a finite non-negative number (it multiplies the learned update)")


def _check_auto(name: str, value: Any, auto: str) -> Union[bool, str]:
    if value is True or value is False or value == "auto":
        return value
    raise ConfigError(f"{name}={value!r}; allowed: True, False or 'auto' ({auto})")


def _check_step_options(
    chunk_size: Optional[int], compile: Union[bool, str], fused: Union[bool, str]
) -> tuple[Optional[int], Union[bool, str], Union[bool, str]]:
    """The step's ``chunk_size``, ``compile`` and ``fused`` options, checked (also by the callback, before training)."""
    return (
        None if chunk_size is None else check_chunk_size(chunk_size),
        _check_auto("compile", compile, "compile on CUDA only"),
        _check_auto("fused", fused, "the fused Triton step wherever it is available"),
    )


def _not_traced(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` runs eagerly even inside ``torch.compile``: a graph break, as torch's own optimizers
    make for code Dynamo cannot trace.  Inductor cannot compile the net's weights as graph inputs
    ("weight must be a graph constant"), and the step's host-side decisions (skip on NaN, chunking,
    threads) are not graph material anyway.  On CUDA the chunk itself is still compiled
    (``compile="auto"``), by the optimizer, outside the caller's graph.

    ``torch.compiler.disable`` is applied only while compiling: wrapping at import time would
    import Dynamo with the optimizer (about 2 s, more than ``import torch`` itself), a cost a
    plain training loop should not pay.  Outside compilation the step is called directly."""

    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return torch.compiler.disable(step, recursive=True)(*args, **kwargs)
        return step(*args, **kwargs)

    return run


def _check_group_lrs(param_groups: list[dict[str, Any]]) -> None:
    """Refuse to step with a non-finite lr (a scheduler can set one after construction): ``lr · update``
    would write inf/NaN into every parameter.  Tensor lrs on an accelerator are not read (no host sync)."""
    for index, group in enumerate(param_groups):
        lr = group["lr"]
        if isinstance(lr, Tensor) and lr.device.type != "cpu":
            continue
        try:
            _check_lr(lr)
        except ConfigError as error:
            raise ConfigError(
                f"LearnedOptimizer.step: param group #{index}: {error}; the step was refused and no parameter "
                "or state changed (did an LR scheduler set it?)"
            ) from None


@dataclass
class _Bucket:
    """Parameters sharing device and gradient dtype (across groups): one pass of the net."""

    params: list[Tensor]
    groups: list[dict[str, Any]]  #: each parameter's group (its lr and state dtype)
    layout: Layout  #: the parameters as the net sees them (shapes, routes, one optimizee)
    grad: Tensor  #: all their gradients, flattened and concatenated
    net: LearnedOptimizerNet  #: the net on their device and dtype, bound to ``layout``
    states: list[Tensor] = field(default_factory=list)  #: their states, in ``params`` order (filled late)


def _one_intra_op_thread() -> Any:
    """The step's own ops run single-threaded (the net's chunks are shared over threads instead):
    they are few and memory-bound, and on a machine with a busy core an OpenMP barrier per op
    stalls for a scheduler time slice each (measured: a step ~100× slower)."""
    return intra_op_threads(1)


def _warn_skipped(reason: str, deferred: bool = False) -> None:
    if reason == "grad":
        message = (
            "LearnedOptimizer: non-finite gradient (NaN/Inf); the step was skipped for all parameters "
            "and no optimizer state advanced"
        )
    else:
        message = (
            "LearnedOptimizer: the net produced a non-finite update from finite gradients; the step was "
            "skipped for all parameters (none changed), and the LSTM states of the coordinates with a "
            "non-finite update were reset to zeros"
        )
    if deferred:
        message += " (reported by a later call: on this device the check runs without a host sync)"
    # to the caller of step(): past this helper, _step_checked or _report_skipped, step,
    # no_grad's wrapper and torch's step wrapper
    warnings.warn(message, SkippedStepWarning, stacklevel=6)


class NamedModules(Protocol):
    """What ``LearnedOptimizer(module=...)`` reads of a model: its named parameters and modules (any ``nn.Module``).

    A protocol rather than ``nn.Module`` so that a command line's help (``--optimizer.help``)
    does not list every ``nn.Module`` subclass in torch as a candidate value.
    """

    def named_parameters(self) -> Iterable[tuple[str, nn.Parameter]]: ...

    def named_modules(self) -> Iterable[tuple[str, nn.Module]]: ...


class LearnedOptimizer(Optimizer):
    """A trained learned optimizer (Andrychowicz et al., 2016) as a ``torch.optim.Optimizer``.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        checkpoint: the trained net: a shipped name (``"quadratic"``, see
            :func:`l2l_lightning.optim.pretrained.available`), a path to an exported file,
            a path to a ``MetaLearner`` Lightning checkpoint (``*.ckpt``), or a net instance
            (copied: later changes to it do not reach the optimizer).  A bare name is never
            a file (``"./quadratic"`` is); see :func:`l2l_lightning.optim.pretrained.load_net`.
        lr: multiplies the net's update (``θ ← θ + lr · update``); 1.0 reproduces the
            trained behaviour.  Per group, and what LR schedulers change.
        state_dtype: dtype of the per-coordinate LSTM state, per group: ``"float32"``
            (default) or ``"bfloat16"`` (half the memory; the state is rounded after each step).
        chunk_size: coordinates per chunk of the step (default: 8192 on CPU, 2**18 on CUDA,
            see :data:`~l2l_lightning.optim.runtime.DEFAULT_CHUNK_SIZE`); bounds the step's
            temporary memory.  Must be a positive integer.
        compile: ``torch.compile`` the chunk computation: ``"auto"`` (default: on CUDA, where
            fusing the gate math pays; not on CPU, where it does not), ``True`` or ``False``.
            If compilation is unavailable or fails, the step runs eagerly after one warning.
        module: the model the parameters belong to.  Only needed when ``checkpoint`` is a
            :class:`~l2l_lightning.nets.RoutedNets` with ``type:`` patterns (or when the
            parameters are given unnamed): it names each parameter and its module type.
            Instead, a parameter group may name its route itself: ``{"params": ..., "route": "conv"}``.
        fused: run the net's single-kernel step (the LSTM's Triton kernel: every state read and
            written once, bfloat16 states moved as bfloat16; ``l2l_lightning.optim.triton_step``):
            ``"auto"`` (default: wherever it is available, i.e. CUDA with Triton for the 2-layer
            LSTM; it then takes the place of ``compile``), ``True`` (required) or ``False``.

    Example::

        def configure_optimizers(self):
            return LearnedOptimizer(self.parameters(), checkpoint="quadratic")

        # separate conv / fully connected nets, routed by module type:
        LearnedOptimizer(model.parameters(), checkpoint="runs/cifar10.pt", module=model)
    """

    def __init__(
        self,
        params: Iterable[Any],
        checkpoint: Union[str, "os.PathLike[str]", LearnedOptimizerNet],
        lr: float = 1.0,
        state_dtype: Union[str, torch.dtype] = "float32",
        chunk_size: Optional[int] = None,
        compile: Union[bool, str] = "auto",
        module: Optional[NamedModules] = None,
        fused: Union[bool, str] = "auto",
    ) -> None:
        _check_lr(lr)
        self._chunk_size, self._compile, self._fused = _check_step_options(chunk_size, compile, fused)
        net = load_net(checkpoint)
        if not isinstance(net, LearnedOptimizerNet):
            raise ConfigError(
                f"checkpoint: {type(net).__name__} is not a learned-optimizer net; LearnedOptimizer needs a "
                "subclass of l2l_lightning.nets.LearnedOptimizerNet (e.g. a trained CoordinatewiseLSTM)"
            )
        if net is checkpoint:
            net = copy.deepcopy(net)
        self._net: LearnedOptimizerNet = net.eval().requires_grad_(False)
        if module is not None and not isinstance(module, nn.Module):
            raise ConfigError(f"module must be the nn.Module the parameters belong to, got {type(module).__name__}")
        self._module = module
        self._net_spec = net_spec(net)
        self._fingerprint = fingerprint(net)
        self._nets: dict[tuple[torch.device, torch.dtype], LearnedOptimizerNet] = {}  # see _net_for
        self._bound: dict[tuple[Any, ...], tuple[LearnedOptimizerNet, LearnedOptimizerNet]] = {}  # see _bound_net
        #: Sync-free steps' (host flags, CUDA event) awaiting their SkippedStepWarning.
        self._pending: list[tuple[Tensor, Any]] = []
        #: ``None``: decide per device (sync-free on anything but CPU); tests force ``True`` on CPU.
        self._sync_free: Optional[bool] = None
        super().__init__(params, {"lr": lr, "state_dtype": _state_dtype_name(state_dtype), "route": None})
        self._check_every_pattern_used()

    # ----------------------------------------------------------------- plumbing
    @property
    def net(self) -> LearnedOptimizerNet:
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
        try:
            sharded.refuse_unsupported(self._net, self.param_groups[-1]["params"])
            self._route_group(self.param_groups[-1])
        except ConfigError:
            self.param_groups.pop()  # all or nothing: a group that cannot be routed is not added
            raise

    # ------------------------------------------------------------------ routing
    def _group_layout(self, group: dict[str, Any], named: bool) -> Layout:
        """The group's parameters as segments: names and module types if ``named``; routes if decided
        (``"param_routes"``) or given (the group's ``"route"``)."""
        names: list[Optional[str]] = [None] * len(group["params"])
        owners: dict[str, tuple[str, ...]] = {}
        if named:
            names, owners = self._names_of(group)
        routes = group.get("param_routes") or [group.get("route")] * len(group["params"])
        return Layout(
            Segment(name or f"<unnamed parameter #{i}>", tuple(sharded.local(p).shape), owners.get(name or "", ()), route=route)
            for i, (p, name, route) in enumerate(zip(group["params"], names, routes))
        )

    def _route_group(self, group: dict[str, Any]) -> None:
        """Decide which net steps each parameter of ``group`` (``group["param_routes"]``), if the net routes.

        The routing itself is the net's (:meth:`~l2l_lightning.nets.LearnedOptimizerNet.routes_of`),
        the same code meta-training binds with; here it is only told names, types and the
        group's ``"route"`` key.  Names are looked up only when a pattern needs them.
        """
        route = group.get("route")
        group.pop("param_routes", None)
        routes_anything = self._net.routes_of(Layout([]), partial=True) is not None
        layout = self._group_layout(group, named=route is None and routes_anything)
        routes = self._net.routes_of(layout, partial=True)
        if routes is None:
            if route is not None:
                raise ConfigError(
                    f"LearnedOptimizer: a param group has route={route!r}, but the net is a single "
                    f"{type(self._net).__name__} (routes need a RoutedNets checkpoint); drop the 'route' key"
                )
            return
        group["param_routes"] = list(routes)

    def _names_of(self, group: dict[str, Any]) -> tuple[list[str], dict[str, tuple[str, ...]]]:
        """Each parameter's name (from ``module``, else the group's ``param_names``) and owner types."""
        if self._module is not None:
            by_id = {id(p): name for name, p in self._module.named_parameters()}
            missing = [i for i, p in enumerate(group["params"]) if id(p) not in by_id]
            if missing:
                raise ConfigError(
                    f"LearnedOptimizer: parameter(s) #{missing} of a param group are not parameters of `module` "
                    f"({type(self._module).__name__}); pass the model they belong to"
                )
            return [by_id[id(p)] for p in group["params"]], owner_types(self._module)
        if "param_names" in group:
            return list(group["param_names"]), {}
        raise ConfigError(
            f"LearnedOptimizer: this net has separate nets for routes chosen by parameter name or module type "
            f"({self._net!r}), but a param group gives neither. Pass module=model (needed for 'type:' "
            "patterns), or model.named_parameters(), or a 'route' key per param group. With LightningCLI, use "
            "--trainer.callbacks+=l2l_lightning.LearnedOptimizerCallback instead of --optimizer: it passes the module."
        )

    def _check_every_pattern_used(self) -> None:
        """A routing pattern that matches none of the parameters is a typo: refuse it (the net decides)."""
        routed = [g for g in self.param_groups if g["route"] is None and "param_routes" in g]
        if routed:
            given = Layout(s for g in routed for s in self._group_layout({**g, "param_routes": None}, True))
            # with the module, a pattern may match parameters that other optimizers (or later groups) step
            self._net.routes_of(given, whole=Layout.of_module(self._module) if self._module is not None else None)

    def _state_shapes(self, group: dict[str, Any]) -> list[tuple[int, ...]]:
        """The state shape of each parameter of ``group``, as its net defines it."""
        layout = self._group_layout(group, named=False)
        return self._net.bind(layout).state_shapes(layout)

    @staticmethod
    def _routes_of(group: dict[str, Any]) -> list[Optional[str]]:
        """The route of each parameter of ``group`` (all ``None`` for a single net)."""
        return group.get("param_routes") or [None] * len(group["params"])

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(
            _net=self._net,
            _net_spec=self._net_spec,
            _module=None,  # only used while groups are added; not part of a copy
            _fingerprint=self._fingerprint,
            _chunk_size=self._chunk_size,
            _compile=self._compile,
            _fused=self._fused,
            _sync_free=self._sync_free,
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        defaults = {
            "_nets": {},
            "_bound": {},
            "_pending": [],
            "_chunk_size": None,
            "_compile": "auto",
            "_fused": "auto",
            "_sync_free": None,
            "_module": None,
        }
        for name, default in defaults.items():
            self.__dict__.setdefault(name, default)

    def _net_for(self, device: torch.device, grad_dtype: torch.dtype) -> LearnedOptimizerNet:
        """The net on ``device``, in float64 for float64 gradients, else in its own dtype (cached)."""
        dtype = torch.promote_types(grad_dtype, next(self._net.parameters()).dtype)
        key = (device, dtype)
        net = self._nets.get(key)
        if net is None:
            net = copy.deepcopy(self._net).to(device=device, dtype=dtype)
            self._nets[key] = net
        return net

    def _bound_net(self, device: torch.device, grad_dtype: torch.dtype, layout: Layout) -> LearnedOptimizerNet:
        """The net on ``device`` bound to ``layout`` (cached: binding routed nets builds index tensors)."""
        net = self._net_for(device, grad_dtype)
        key = (device, grad_dtype, layout)
        cached = self._bound.get(key)
        if cached is None or cached[0] is not net:  # a new copy of the net (moved, or the cache was reset)
            if len(self._bound) >= 8:  # parameters came and went: keep the cache small
                self._bound.clear()
            cached = self._bound[key] = (net, net.bind(layout))
        return cached[1]

    # ---------------------------------------------------------------- the step
    def _buckets(self) -> list[_Bucket]:
        """Group the parameters that have a gradient by device and dtype; check state shapes; create no state."""
        by_key: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, dict[str, Any], Segment]]] = {}
        for group in self.param_groups:
            for i, (p, route) in enumerate(zip(group["params"], self._routes_of(group))):
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
                segment = Segment(f"param{i}", tuple(sharded.local(p).shape), route=route)  # a shard's own
                by_key.setdefault((grad.device, grad.dtype), []).append((p, group, segment))
        buckets = []
        for (device, dtype), members in by_key.items():
            layout = Layout(segment for *_, segment in members)
            net = self._bound_net(device, dtype, layout)
            params = [p for p, *_ in members]
            for p, shape in zip(params, net.state_shapes(layout)):
                lstm = self.state[p].get("lstm") if p in self.state else None
                if lstm is not None and tuple(lstm.shape) != tuple(shape):
                    raise CheckpointError(
                        f"LearnedOptimizer: a parameter of {p.numel()} elements has an LSTM state of shape "
                        f"{tuple(lstm.shape)}, expected {tuple(shape)}; was the parameter resized after the "
                        "optimizer state was created?"
                    )
            grad = torch.cat([sharded.local(p.grad).reshape(-1) for p in params])
            buckets.append(_Bucket(params, [g for _, g, _ in members], layout, grad, net))
        return buckets

    def _prepare_states(self, bucket: _Bucket) -> None:
        """Each parameter's state, created (zeros) or converted to its group's dtype, in ``self.state``."""
        bucket.states = []
        shapes = bucket.net.state_shapes(bucket.layout)
        for p, group, shape, segment in zip(bucket.params, bucket.groups, shapes, bucket.layout):
            state_dtype = STATE_DTYPES[group["state_dtype"]]
            entry = self.state[p]
            lstm = entry.get("lstm")
            if lstm is None:  # the net's initial state for this one parameter
                alone = Layout([segment])
                lstm = self._net.bind(alone).init_states(alone, device=p.grad.device, dtype=state_dtype)[0]
            elif lstm.dtype != state_dtype or lstm.device != p.grad.device or not lstm.is_contiguous():
                lstm = lstm.to(device=p.grad.device, dtype=state_dtype, memory_format=torch.contiguous_format)
            entry["lstm"] = lstm
            bucket.states.append(lstm)

    def _run(self, bucket: _Bucket, keep: Optional[Tensor] = None, threads: Optional[int] = None) -> Tensor:
        device = bucket.grad.device
        compile = self._compile is True or (self._compile == "auto" and device.type == "cuda")
        fused = None if self._fused == "auto" else self._fused
        options = StepOptions(chunk_size=self._chunk_size, compile=compile, threads=threads, fused=fused)
        return bucket.net.step_inplace(bucket.grad, bucket.states, bucket.layout, keep=keep, options=options)

    @staticmethod
    def _apply(bucket: _Bucket, update: Tensor) -> None:
        """``θ ← θ + lr · update`` for every parameter of the bucket, with its group's ``lr``."""
        params = [sharded.local(p) for p in bucket.params]  # a sharded parameter is stepped on its shard
        views = [u.view_as(p) for p, u in zip(params, update.split([p.numel() for p in params]))]
        by_group: dict[int, tuple[dict[str, Any], list[Tensor], list[Tensor]]] = {}
        for p, u, group in zip(params, views, bucket.groups):
            by_group.setdefault(id(group), (group, [], []))
            by_group[id(group)][1].append(p)
            by_group[id(group)][2].append(u)
        for group, params, updates in by_group.values():
            lr = group["lr"]
            if isinstance(lr, Tensor):
                for p, u in zip(params, updates):
                    p.add_(u * lr)
            else:
                torch._foreach_add_(params, updates, alpha=lr)

    def _is_sync_free(self, buckets: list[_Bucket]) -> bool:
        if self._sync_free is not None:
            return self._sync_free
        devices = {b.grad.device for b in buckets}
        return len(devices) == 1 and next(iter(devices)).type != "cpu"

    @_not_traced
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One optimization step over every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (run with grad enabled),
                as in torch's optimizer contract; its return value is returned.

        Parameters without a gradient are skipped and keep their state.  If any gradient
        is NaN/Inf, no parameter and no state changes and a :class:`SkippedStepWarning`
        is issued; if the net's update is non-finite, no parameter changes (see the module
        docstring for what happens to the states).  On CUDA the warning comes from a later
        call, since the decision is taken on the device without a host synchronisation.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._report_skipped(block=False)
        _check_group_lrs(self.param_groups)
        threads = torch.get_num_threads()
        with _one_intra_op_thread():
            buckets = self._buckets()
            if not buckets:
                return loss
            if self._is_sync_free(buckets):
                self._step_sync_free(buckets)
            else:
                self._step_checked(buckets, threads)
        return loss

    def _step_checked(self, buckets: list[_Bucket], threads: int) -> None:
        """The step with host-side checks (CPU): skip at once, warn at once."""
        if not all(bool(torch.isfinite(b.grad).all()) for b in buckets):
            _warn_skipped("grad")
            return
        for bucket in buckets:
            self._prepare_states(bucket)
        updates = [self._run(bucket, threads=threads) for bucket in buckets]
        if all(bool(torch.isfinite(update).all()) for update in updates):
            # Everything is computed and checked: only now write parameters.
            for bucket, update in zip(buckets, updates):
                self._apply(bucket, update)
        else:
            _warn_skipped("update")
        for bucket in buckets:
            for p in bucket.params:
                entry = self.state[p]
                entry["step"] = int(entry.get("step", 0)) + 1

    def _step_sync_free(self, buckets: list[_Bucket]) -> None:
        """The step with every decision on the device (CUDA): no ``.item()``, no ``bool(tensor)``."""
        device = buckets[0].grad.device
        grads_ok = torch.stack([torch.isfinite(b.grad).all() for b in buckets]).all()
        for bucket in buckets:
            self._prepare_states(bucket)
        updates = [self._run(bucket, keep=grads_ok) for bucket in buckets]
        updates_ok = torch.stack([torch.isfinite(u).all() for u in updates]).all()
        skip = ~(grads_ok & updates_ok)
        for bucket, update in zip(buckets, updates):
            self._apply(bucket, update.masked_fill_(skip, 0))
        steps = []
        for bucket in buckets:
            for p in bucket.params:
                entry = self.state[p]
                step = entry.get("step", 0)
                if not isinstance(step, Tensor) or step.device != device:
                    step = torch.full((), int(step), dtype=torch.int64, device=device)
                entry["step"] = step
                steps.append(step)
        increment = grads_ok.to(torch.int64)
        try:
            torch._foreach_add_(steps, increment)
        except (RuntimeError, TypeError):  # a build without the tensor-scalar foreach overload
            for step in steps:
                step.add_(increment)
        flags = torch.stack([grads_ok, updates_ok])
        if device.type == "cuda":
            host = torch.empty(2, dtype=torch.bool, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((host, event))
        else:
            self._pending.append((flags, None))

    def _report_skipped(self, block: bool) -> None:
        """Issue the warnings of earlier sync-free steps whose flags have reached the host."""
        while self._pending:
            host, event = self._pending[0]
            if event is not None:
                if block:
                    event.synchronize()
                elif not event.query():
                    return
            self._pending.pop(0)
            grads_ok, updates_ok = host.tolist()
            if not grads_ok:
                _warn_skipped("grad", deferred=True)
            elif not updates_ok:
                _warn_skipped("update", deferred=True)

    # ------------------------------------------------------------ state dicts
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"l2l_net"``: the net's class, settings and weight fingerprint."""
        self._report_skipped(block=True)
        state_dict = super().state_dict()
        state_dict[NET_KEY] = {
            "class_path": self._net_spec["class_path"],
            "init_args": dict(self._net_spec["init_args"]),
            "fingerprint": self._fingerprint,
        }
        return sharded.to_dcp(state_dict, *self._params_and_coordinate_dims(), NET_KEY)

    def _params_and_coordinate_dims(self) -> tuple[list[Tensor], list[int]]:
        """Every parameter in state-dict order, and the dimension of its state that indexes coordinates."""
        params = [p for group in self.param_groups for p in group["params"]]
        if not any(sharded.is_sharded(p) for p in params):
            return params, [0] * len(params)  # not needed: nothing is converted
        dims = [d for g in self.param_groups for d in sharded.coordinate_dims(self._net, self._group_layout(g, named=False))]
        return params, dims

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

        Sharded (FSDP2) state dicts, as ``torch.distributed.checkpoint.set_optimizer_state_dict`` passes
        them, are accepted too (:mod:`l2l_lightning.optim.sharded`).
        """
        state_dict = sharded.from_dcp(state_dict, *self._params_and_coordinate_dims(), NET_KEY)
        saved = state_dict.get(NET_KEY)
        if not isinstance(saved, dict):
            keys = sorted({k for s in state_dict.get("state", {}).values() if isinstance(s, dict) for k in s})
            raise CheckpointError(
                "LearnedOptimizer.load_state_dict: this state dict was not written by a LearnedOptimizer "
                f"(no {NET_KEY!r} entry; its per-parameter state keys are {keys}). Resuming a run that used "
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
        for index, (saved, mine) in enumerate(zip(state_dict["param_groups"], self.param_groups)):
            if saved.get("param_routes") != mine.get("param_routes"):
                raise CheckpointError(
                    f"LearnedOptimizer.load_state_dict: param group #{index} was routed {saved.get('param_routes')} "
                    f"when saved, but is routed {mine.get('param_routes')} now (renamed or reordered parameters?); "
                    "the LSTM states would continue under the wrong nets"
                )
        shapes = [shape for group in self.param_groups for shape in self._state_shapes(group)]
        lstm: dict[Any, Tensor] = {}
        stripped: dict[Any, Any] = {}
        for index, (saved_id, p, expected) in enumerate(zip(saved_ids, params, shapes)):
            entry = state_dict["state"].get(saved_id)
            if not isinstance(entry, dict):
                continue
            stripped[saved_id] = {k: v for k, v in entry.items() if k != "lstm"}
            if "lstm" in entry:
                expected = tuple(expected)
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
