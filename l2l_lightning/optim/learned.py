"""``LearnedOptimizer``: a trained coordinatewise net as a ``torch.optim.Optimizer``.

Each step reads every gradient coordinate, runs the net once per bucket of
parameters and applies ``θ ← θ + lr · update``.  Written like ``torch/optim/adam.py``
(defaults, param groups, ``@torch.no_grad()`` step, closure contract) so that Lightning,
LR schedulers, ``GradScaler``, ``BaseFinetuning.add_param_group`` and checkpointing
treat it like any other optimizer.

The optimizer is the ``torch.optim.Optimizer`` façade; beside it, :mod:`~l2l_lightning.optim.state`
holds its state dict (keys, checks, DCP form; per parameter ``"net_state"`` and ``"step"``),
:mod:`~l2l_lightning.optim.routing` decides which net steps which parameter, and
:mod:`~l2l_lightning.optim.runtime` runs the net's maths.

Why each choice:

* **One flat pass per bucket, in cache-sized chunks, states updated in place.** The
  gradients of all parameters that have one are concatenated per ``(device, dtype)``,
  across param groups (``1/80`` of the state's size in float32), and the net, bound to
  the bucket's :class:`~l2l_lightning.nets.base.Layout`, steps them with the deployment
  runtime (:func:`l2l_lightning.optim.runtime.step_inplace`): for the LSTM, in chunks of
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
  in place chunk by chunk.  Then no parameter is changed, the net state of every
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
* **What a net reads besides the gradient** (the parameters, their step counts, the loss, ``total_steps``:
  :mod:`~l2l_lightning.optim.inputs`) is built only for nets that declare it; a net's
  per-tensor state is kept beside the net state (``"tensor_state"``), written only on kept steps.
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
  patterns) or from the group's own ``"route"`` key (:mod:`l2l_lightning.optim.routing`).
* **The state dict names its net**: ``state_dict()["l2l_net"]`` holds the net's
  class, settings and a fingerprint of its weights; :meth:`LearnedOptimizer.load_state_dict`
  checks every field it restores and refuses net states from a different net or of the wrong
  shape (:mod:`l2l_lightning.optim.state`).

Distributed training: under **DDP** (tested, 2 CPU processes) the step is deterministic and
has no rank-dependent branch, so every rank keeps identical parameters and net states;
under **FSDP2** each rank steps its shard, and the state dict goes through
``torch.distributed.checkpoint`` (:mod:`l2l_lightning.optim.sharded`: what is refused, and why).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from l2l_lightning.errors import CheckpointError, ConfigError, UnsupportedGradientError
from l2l_lightning.nets.base import LearnedOptimizerNet
from l2l_lightning.nets.layout import Layout, Segment
from l2l_lightning.optim import sharded
from l2l_lightning.optim.inputs import bucket_inputs, step_loss
from l2l_lightning.optim.pretrained import load_net
from l2l_lightning.optim.skipped import SkippedStepWarning, warn_skipped
from l2l_lightning.optim.routing import GroupRouting, NamedModules, param_routes
from l2l_lightning.optim.runtime import (
    StepOptions, check_step_options, intra_op_threads, not_traced, step_inplace,
)  # fmt: skip
from l2l_lightning.optim.state import (
    NET_STATE, STATE_DTYPES, STEP, TENSOR_STATE, Identity, check_group_lrs, check_lr, check_total_steps, decode, encode,
    state_dtype_name,
)
from l2l_lightning.serialization import fingerprint, net_spec
from l2l_lightning.torch_compat import foreach_add_


@dataclass
class _Bucket:
    """Parameters sharing device and gradient dtype (across groups): one pass of the net."""

    params: list[Tensor]
    groups: list[dict[str, Any]]  #: each parameter's group (its lr and state dtype)
    layout: Layout  #: the parameters as the net sees them (shapes, routes, one optimizee)
    grad: Tensor  #: all their gradients, flattened and concatenated
    net: LearnedOptimizerNet  #: the net on their device and dtype, bound to ``layout``
    states: list[Tensor] = field(default_factory=list)  #: their states, in ``params`` order (filled late)
    tensor_states: list[Tensor] = field(default_factory=list)  #: their per-tensor states, for nets that keep them


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
        total_steps: the run's length, per group: needed by a net with a learned schedule (it reads min(step / total_steps, 1)).
        state_dtype: dtype of the net state (and per-tensor state), per group: ``"float32"``
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
            written once, bfloat16 states moved as bfloat16; ``l2l_lightning.nets.lstm_triton``):
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
        total_steps: Optional[int] = None,
    ) -> None:
        check_lr(lr)
        self._chunk_size, self._compile, self._fused = check_step_options(chunk_size, compile, fused)
        net = load_net(checkpoint)
        if not isinstance(net, LearnedOptimizerNet):
            raise ConfigError(
                f"checkpoint: {type(net).__name__} is not a learned-optimizer net; LearnedOptimizer needs a "
                "subclass of l2l_lightning.nets.LearnedOptimizerNet (e.g. a trained CoordinatewiseLSTM)"
            )
        self._net: LearnedOptimizerNet = (copy.deepcopy(net) if net is checkpoint else net).eval().requires_grad_(False)
        self._identity = Identity(net_spec(self._net), fingerprint(self._net))
        #: ``None``: decide per device (sync-free on anything but CPU); tests force ``True`` on CPU.
        self._sync_free: Optional[bool] = None
        self._start_afresh(GroupRouting(self._net, module))
        defaults = {"lr": lr, "state_dtype": state_dtype_name(state_dtype), "total_steps": total_steps, "route": None}
        super().__init__(params, defaults)
        self._routing.refuse_unmatched_patterns(self.param_groups)

    #: What a copy or a pickle keeps besides torch's state; the rest is rebuilt by :meth:`_start_afresh`.
    _KEPT = ("_net", "_identity", "_chunk_size", "_compile", "_fused", "_sync_free")

    def _start_afresh(self, routing: GroupRouting) -> None:
        """The caches and per-run objects, empty: what a copy or a pickle does not keep."""
        self._routing = routing  # its module is only needed while groups are added
        self._nets: dict[tuple[torch.device, torch.dtype], LearnedOptimizerNet] = {}  # see _net_for
        self._bound: dict[tuple[Any, ...], tuple[LearnedOptimizerNet, LearnedOptimizerNet]] = {}  # see _bound_net
        #: Sync-free steps' (host flags, CUDA event) awaiting their SkippedStepWarning.
        self._pending: list[tuple[Tensor, Any]] = []

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), **{name: getattr(self, name) for name in self._KEPT}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._start_afresh(GroupRouting(self._net, None))

    @property
    def net(self) -> LearnedOptimizerNet:
        """The optimizer's own (frozen) copy of the trained net, on its original device."""
        return self._net

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.add_param_group``, validating ``lr``, ``state_dtype``, ``total_steps`` and dtypes."""
        if "lr" in param_group:
            check_lr(param_group["lr"])
        check_total_steps(self._net, param_group.get("total_steps", self.defaults.get("total_steps")))
        if "state_dtype" in param_group:
            param_group["state_dtype"] = state_dtype_name(param_group["state_dtype"])
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
            self._routing.route(self.param_groups[-1])
        except ConfigError:
            self.param_groups.pop()  # all or nothing: a group that cannot be routed is not added
            raise

    def _net_for(self, device: torch.device, grad_dtype: torch.dtype) -> LearnedOptimizerNet:
        """The net on ``device``, in float64 for float64 gradients, else in its own dtype (cached)."""
        dtype = self._net.compute_dtype(grad_dtype)  # a net without weights: the gradient's
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
            for i, (p, route) in enumerate(zip(group["params"], param_routes(group))):
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
            layout = Layout([segment for *_, segment in members])
            net = self._bound_net(device, dtype, layout)
            params = [p for p, *_ in members]
            for p, shape in zip(params, net.segment_state_shapes(layout)):
                state = self.state[p].get(NET_STATE) if p in self.state else None
                if state is not None and tuple(state.shape) != tuple(shape):
                    raise CheckpointError(
                        f"LearnedOptimizer: a parameter of {p.numel()} elements has a net state of shape "
                        f"{tuple(state.shape)}, expected {tuple(shape)}; was the parameter resized after the "
                        "optimizer state was created?"
                    )
            grad = torch.cat([sharded.local(p.grad).reshape(-1) for p in params])
            buckets.append(_Bucket(params, [g for _, g, _ in members], layout, grad, net))
        return buckets

    def _prepare_states(self, bucket: _Bucket) -> None:
        """Each parameter's state, created (zeros) or converted to its group's dtype, in ``self.state``."""
        bucket.states = []
        shapes = bucket.net.segment_state_shapes(bucket.layout)
        for p, group, shape, segment in zip(bucket.params, bucket.groups, shapes, bucket.layout):
            state_dtype = STATE_DTYPES[group["state_dtype"]]
            entry = self.state[p]
            state = entry.get(NET_STATE)
            if state is None:  # the net's initial state for this one parameter
                alone = Layout([segment])
                state = self._net.bind(alone).init_segment_states(alone, device=p.grad.device, dtype=state_dtype)[0]
            elif state.dtype != state_dtype or state.device != p.grad.device or not state.is_contiguous():
                state = state.to(device=p.grad.device, dtype=state_dtype, memory_format=torch.contiguous_format)
            entry[NET_STATE] = state
            bucket.states.append(state)
            if bucket.net.has_tensor_state:
                entry[TENSOR_STATE] = self._tensor_state(entry.get(TENSOR_STATE), segment, p.grad.device, state_dtype)
                bucket.tensor_states.append(entry[TENSOR_STATE])

    def _tensor_state(self, state: Optional[Tensor], segment: Segment, device: torch.device, dtype: torch.dtype) -> Tensor:
        """A parameter's per-tensor state: the net's initial one, or the stored one on its device and in its dtype."""
        if state is None:
            alone = Layout([segment])
            return self._net.bind(alone).init_tensor_states(alone, device=device, dtype=dtype)[0]
        return state.to(device=device, dtype=dtype, memory_format=torch.contiguous_format)

    def _run(
        self, bucket: _Bucket, loss: Optional[Tensor], keep: Optional[Tensor] = None, threads: Optional[int] = None
    ) -> Tensor:
        device = bucket.grad.device
        compile = self._compile is True or (self._compile == "auto" and device.type == "cuda")
        fused = None if self._fused == "auto" else self._fused
        options = StepOptions(chunk_size=self._chunk_size, compile=compile, threads=threads, fused=fused)
        steps = [self.state[p].get(STEP, 0) for p in bucket.params]
        inputs = bucket_inputs(bucket.net, bucket.params, steps, loss, device, [g["total_steps"] for g in bucket.groups])
        return step_inplace(
            bucket.net, bucket.grad, bucket.states, bucket.layout, keep=keep, options=options,
            tensor_states=bucket.tensor_states, inputs=inputs,
        )  # fmt: skip

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
                foreach_add_(params, updates, alpha=lr)

    def _is_sync_free(self, buckets: list[_Bucket]) -> bool:
        if self._sync_free is not None:
            return self._sync_free
        devices = {b.grad.device for b in buckets}
        return len(devices) == 1 and next(iter(devices)).type != "cpu"

    @not_traced
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None, *, loss: Any = None) -> Any:
        """One optimization step over every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (run with grad enabled),
                as in torch's optimizer contract; its return value is returned.
            loss: the loss at the current parameters, for a net that reads it, when there is no
                closure (as PyLO's ``opt.step(loss)``); returned.  A net that reads the loss,
                stepped with neither, raises :class:`~l2l_lightning.errors.ConfigError` before
                anything changes (:mod:`l2l_lightning.optim.inputs`).

        Parameters without a gradient are skipped and keep their state.  If any gradient
        is NaN/Inf, no parameter and no state changes and a :class:`SkippedStepWarning`
        is issued; if the net's update is non-finite, no parameter changes (see the module
        docstring for what happens to the states).  On CUDA the warning comes from a later
        call, since the decision is taken on the device without a host synchronisation.
        """
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        net_loss = step_loss(self._net, loss)
        self._report_skipped(block=False)
        check_group_lrs(self.param_groups)
        threads = torch.get_num_threads()
        # the step's own ops run single-threaded (the chunks are shared over threads instead): they are few
        # and memory-bound, and with a busy core an OpenMP barrier per op stalls (measured: ~100x slower)
        with intra_op_threads(1):
            buckets = self._buckets()
            if not buckets:
                return loss
            if self._is_sync_free(buckets):
                self._step_sync_free(buckets, net_loss)
            else:
                self._step_checked(buckets, net_loss, threads)
        return loss

    def _step_checked(self, buckets: list[_Bucket], loss: Optional[Tensor], threads: int) -> None:
        """The step with host-side checks (CPU): skip at once, warn at once."""
        if not all(bool(torch.isfinite(b.grad).all()) for b in buckets):
            warn_skipped("grad")
            return
        for bucket in buckets:
            self._prepare_states(bucket)
        updates = [self._run(bucket, loss, threads=threads) for bucket in buckets]
        if all(bool(torch.isfinite(update).all()) for update in updates):
            # Everything is computed and checked: only now write parameters.
            for bucket, update in zip(buckets, updates):
                self._apply(bucket, update)
        else:
            warn_skipped("update")
        for bucket in buckets:
            for p in bucket.params:
                entry = self.state[p]
                entry[STEP] = int(entry.get(STEP, 0)) + 1

    def _step_sync_free(self, buckets: list[_Bucket], loss: Optional[Tensor]) -> None:
        """The step with every decision on the device (CUDA): no ``.item()``, no ``bool(tensor)``."""
        device = buckets[0].grad.device
        grads_ok = torch.stack([torch.isfinite(b.grad).all() for b in buckets]).all()
        for bucket in buckets:
            self._prepare_states(bucket)
        updates = [self._run(bucket, loss, keep=grads_ok) for bucket in buckets]
        updates_ok = torch.stack([torch.isfinite(u).all() for u in updates]).all()
        skip = ~(grads_ok & updates_ok)
        for bucket, update in zip(buckets, updates):
            self._apply(bucket, update.masked_fill_(skip, 0))
        steps = []
        for bucket in buckets:
            for p in bucket.params:
                entry = self.state[p]
                step = entry.get(STEP, 0)
                if not isinstance(step, Tensor) or step.device != device:
                    step = torch.full((), int(step), dtype=torch.int64, device=device)
                entry[STEP] = step
                steps.append(step)
        increment = grads_ok.to(torch.int64)
        foreach_add_(steps, increment)
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
                warn_skipped("grad", deferred=True)
            elif not updates_ok:
                warn_skipped("update", deferred=True)

    # ------------------------------------------------------------ state dicts
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"l2l_net"``: the net's class, settings and weight fingerprint."""
        self._report_skipped(block=True)
        return encode(super().state_dict(), self._identity, *self._params_and_coordinate_dims())

    def _params_and_coordinate_dims(self) -> tuple[list[Tensor], list[int]]:
        """Every parameter in state-dict order, and the dimension of its state that indexes coordinates."""
        params = [p for group in self.param_groups for p in group["params"]]
        if not any(sharded.is_sharded(p) for p in params):
            return params, [0] * len(params)  # not needed: nothing is converted
        layouts = [self._routing.layout(g, named=False) for g in self.param_groups]
        return params, [d for layout in layouts for d in sharded.coordinate_dims(self._net, layout)]

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Load a state dict of a ``LearnedOptimizer`` with the same net; every field is checked first.

        Args:
            strict: with ``False``, a state dict whose net has the same class and settings
                but different weights (e.g. a re-exported pretrained file) loads with a
                warning instead of an error; a different class or settings, a field that
                cannot be restored (an unknown ``state_dtype``, a negative ``step``, ...) or
                states of the wrong shape always raise :class:`~l2l_lightning.errors.CheckpointError`.

        Unlike torch's default, net states keep the dtype they were saved in (torch
        would cast every floating state to its parameter's dtype, rounding float32
        states of a bf16 model).  State dicts of earlier versions (per-parameter key
        ``"lstm"``) and sharded (FSDP2) state dicts, as
        ``torch.distributed.checkpoint.set_optimizer_state_dict`` passes them, load too
        (:mod:`l2l_lightning.optim.state`).
        """
        params, dims = self._params_and_coordinate_dims()
        shapes = [shape for group in self.param_groups for shape in self._routing.state_shapes(group)]
        plain, restored = decode(state_dict, self._identity, self.param_groups, shapes, dims, strict)
        saved_ids = [i for group in plain["param_groups"] for i in group["params"]]
        super().load_state_dict(plain)
        for saved_id, p in zip(saved_ids, params):
            for key, value in restored.get(saved_id, {}).items():
                self.state[p][key] = value.to(device=p.device)
