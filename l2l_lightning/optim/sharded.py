"""Sharded parameters (FSDP2 ``fully_shard``, ``ModelParallelStrategy``): stepping shards, DCP state.

Under FSDP2 every parameter the optimizer sees is a ``DTensor``: each rank holds a shard
(``p.to_local()``) and gets the shard of the reduced gradient.  The learned optimizer is
coordinatewise, so each rank steps its local shard with the LSTM states of its local
coordinates; nothing needs communicating, and the result equals the single-process step
coordinate for coordinate.  What this module provides to :class:`~l2l_lightning.LearnedOptimizer`:

* :func:`local` — the local shard of a parameter or gradient (the tensor itself if not a DTensor);
* :func:`refuse_unsupported` — nets that look *across* coordinates (``coordinatewise = False``:
  LSTM+GAC averages cells over all of an optimizee's coordinates, FeatureMLP keeps per-tensor
  statistics) would see one shard only and silently differ from the unsharded run, so they
  are refused when a parameter is a DTensor (an all-reduce per tensor statistic would be the
  alternative; a refusal is exact and costs nothing);
* :func:`states_to_dcp` / :func:`state_from_dcp` — the state dict as
  ``torch.distributed.checkpoint`` (DCP) needs it.  ``get_optimizer_state_dict`` passes
  per-parameter state through, and DCP saves a plain tensor once (from one rank, as if it were
  replicated): rank-local LSTM states would be lost.  So in the state dict each LSTM state is a
  ``DTensor`` *sharded like its parameter*: coordinates first, in the parameter's shape,
  the rest of the state after it (``p.shape + (layers, 2, hidden)`` for the LSTM), with the
  parameter's mesh and placements.  Each rank's local piece is then exactly the state of its
  local coordinates, DCP saves and reshards it like any optimizer moment, and loading (even
  onto another sharding) gives every rank the states of the coordinates it owns.  Inside the
  optimizer the state stays in the runtime's layout (coordinates along the net's
  ``coordinate_dim``); only ``state_dict``/``load_state_dict`` convert.

``torch.distributed.tensor`` is never imported here: if it was not imported by the caller,
no parameter can be a DTensor, and deployment without distributed training stays light.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from l2l_lightning.errors import CheckpointError, ConfigError


def _dtensor_type() -> Any:
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter of an FSDP2 / tensor-parallel model)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def local(tensor: Tensor) -> Tensor:
    """The rank's local shard of a DTensor (the same storage), else the tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


def refuse_unsupported(net: nn.Module, params: Iterable[Any]) -> None:
    """:class:`ConfigError` for sharded parameters this optimizer cannot serve, at construction rather than mid-run.

    * FSDP1 (``FullyShardedDataParallel``, Lightning's ``FSDPStrategy``) hands the optimizer flattened
      shards (marked ``_fsdp_flattened``): stepping them works, but its optimizer-state-dict code
      assumes every state tensor is shaped like the flat parameter and fails on the LSTM state
      (torch 2.14: ``AssertionError: Manually calculated _sharded_numel_padded is incorrect``), so
      checkpointing would fail mid-run.
    * DeepSpeed ZeRO-3 parameters (marked ``ds_id``): DeepSpeed partitions optimizer state by
      parameter shape.  Other DeepSpeed stages replace the parameters after the optimizer is
      built and cannot be recognised from inside it (``LearnedOptimizerCallback`` refuses the strategy).
    * DTensor parameters (FSDP2) with a net that is not coordinatewise (LSTM+GAC, FeatureMLP).
    """
    params = [p[1] if isinstance(p, tuple) else p for p in params]
    if any(getattr(p, "_fsdp_flattened", False) for p in params):
        raise ConfigError(
            "LearnedOptimizer: the parameters are flattened by FSDP1 (FullyShardedDataParallel / Lightning's "
            "FSDPStrategy), whose optimizer state dict assumes state shaped like the flat parameter, which the "
            "LSTM state is not (saving a checkpoint would fail mid-run). Use FSDP2 instead: "
            "torch.distributed.fsdp.fully_shard, e.g. Lightning's ModelParallelStrategy with fully_shard in "
            "configure_model (tested), or strategy='ddp'."
        )
    if any(hasattr(p, "ds_id") for p in params):
        raise ConfigError(
            "LearnedOptimizer: the parameters are partitioned by DeepSpeed ZeRO-3, which shards optimizer state "
            "by parameter shape; the LSTM states do not survive it. Use FSDP2 (fully_shard / ModelParallelStrategy) "
            "or strategy='ddp'."
        )
    if not any(is_sharded(p) for p in params):
        return
    across = [type(m).__name__ for m in net.modules() if getattr(m, "coordinatewise", True) is False]
    if across:
        raise ConfigError(
            f"LearnedOptimizer: the parameters are sharded (DTensor, e.g. FSDP2 fully_shard), but the net "
            f"contains {across[0]}, which is not coordinatewise (it averages or keeps statistics over whole "
            "tensors or optimizees, e.g. LSTM+GAC's averaged cells or FeatureMLP's per-tensor Adafactor "
            "statistics and normalisation); on a shard it would see that shard only and step differently from "
            "an unsharded run. Use a coordinatewise net (CoordinatewiseLSTM), or train without sharding "
            "(single device or DDP)."
        )


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


def state_to_dcp(state: Tensor, param: Tensor, coordinate_dim: int) -> Tensor:
    """The local state of a sharded ``param`` as a DTensor sharded like it (see the module docstring)."""
    from torch.distributed.tensor import DTensor

    shard = local(param)
    moved = state.movedim(coordinate_dim, 0)
    rest = tuple(moved.shape[1:])
    body = moved.reshape(tuple(shard.shape) + rest)
    shape = tuple(param.shape) + rest
    return DTensor.from_local(
        body, param.device_mesh, param.placements, run_check=False, shape=torch.Size(shape),
        stride=_contiguous_stride(shape),
    )  # fmt: skip


def state_from_dcp(value: Any, param: Tensor, coordinate_dim: int, index: int) -> Any:
    """Back from :func:`state_to_dcp`: the local state in the runtime's layout (coordinates along ``coordinate_dim``)."""
    if not is_sharded(param):
        return value
    if not is_sharded(value):
        raise CheckpointError(
            f"LearnedOptimizer.load_state_dict: parameter #{index} is sharded (DTensor) but its saved LSTM state is "
            f"a plain {type(value).__name__}; sharded optimizer state must be saved and loaded with "
            "torch.distributed.checkpoint (get_optimizer_state_dict / set_optimizer_state_dict), as Lightning's "
            "ModelParallelStrategy and FSDPStrategy do"
        )
    shard = local(param)
    body = value.to_local()
    n = shard.numel()
    if tuple(body.shape[: shard.dim()]) != tuple(shard.shape):
        raise CheckpointError(
            f"LearnedOptimizer.load_state_dict: parameter #{index} has a local shard of shape {tuple(shard.shape)}, "
            f"but its loaded LSTM state has local shape {tuple(body.shape)}; the state was not sharded like the "
            "parameter (load it with set_optimizer_state_dict after dcp.load)"
        )
    return body.reshape((n,) + tuple(body.shape[shard.dim():])).movedim(0, coordinate_dim).contiguous()


def coordinate_dims(net: Any, layout: Any) -> list[int]:
    """For each segment of ``layout``, the dimension of its state that indexes coordinates.

    Found by asking the net for the states of one coordinate more (the dimension that grows), so
    it holds for any net and for routed nets whose member nets lay their states out differently.
    """
    from l2l_lightning.nets.layout import Layout

    grown = Layout([dataclasses.replace(s, shape=(s.numel + 1,)) for s in layout])
    dims = []
    for a, b in zip(net.bind(layout).segment_state_shapes(layout), net.bind(grown).segment_state_shapes(grown)):
        changed = [d for d, (x, y) in enumerate(zip(a, b)) if x != y]
        dims.append(changed[0] if changed else 0)
    return dims


def to_dcp(
    state_dict: dict[str, Any], params: list[Tensor], dims: list[int], net_key: str, state_key: str
) -> dict[str, Any]:
    """``state_dict`` as DCP can save it: sharded parameters' net states (``state_key``) as DTensors, and the net's
    identity (``net_key``) copied into every param group, since ``get_optimizer_state_dict`` keeps only
    ``"state"`` and ``"param_groups"``.  ``params`` and ``dims`` follow the state dict's parameter order."""
    state = dict(state_dict["state"])
    for index, (p, dim) in enumerate(zip(params, dims)):
        entry = state.get(index)
        if is_sharded(p) and isinstance(entry, dict) and isinstance(entry.get(state_key), Tensor):
            state[index] = {**entry, state_key: state_to_dcp(entry[state_key], p, dim)}
    groups = [{**group, net_key: state_dict[net_key]} for group in state_dict["param_groups"]]
    return {**state_dict, "state": state, "param_groups": groups}


def from_dcp(
    state_dict: dict[str, Any], params: list[Tensor], dims: list[int], net_key: str, state_key: str
) -> dict[str, Any]:
    """Undo :func:`to_dcp` (for a state dict that went through DCP or not): the net's identity at the
    top level again, the groups without it, sharded parameters' LSTM states local again."""
    groups = [
        {k: v for k, v in group.items() if k != net_key} if isinstance(group, dict) else group
        for group in state_dict.get("param_groups", [])
    ]
    out = {**state_dict, "param_groups": groups}
    if net_key not in out:
        for group in state_dict.get("param_groups", []):
            if isinstance(group, dict) and net_key in group:
                out[net_key] = group[net_key]
                break
    state = dict(state_dict.get("state", {}))
    saved_ids = [i for group in groups if isinstance(group, dict) for i in group.get("params", [])]
    for index, (saved_id, p, dim) in enumerate(zip(saved_ids, params, dims)):
        entry = state.get(saved_id)
        if isinstance(entry, dict) and state_key in entry and (is_sharded(p) or is_sharded(entry[state_key])):
            state[saved_id] = {**entry, state_key: state_from_dcp(entry[state_key], p, dim, index)}
    out["state"] = state
    return out
