"""``LearnedOptimizer``'s state dict: its keys, its checks, its DCP form (one place for each).

Per parameter (``self.state[p]``) the optimizer keeps:

* :data:`NET_STATE` (``"net_state"``): the net's state for this parameter, in its group's
  ``state_dtype`` (``(num_layers, 2, p.numel(), hidden)`` for the LSTM).  Format 1 (up to
  0.x, every net) called it ``"lstm"``: :data:`LEGACY_NET_STATE` keys are renamed on load, so
  state dicts of earlier versions load unchanged.
* :data:`TENSOR_STATE` (``"tensor_state"``): for a net with per-tensor state, this parameter's
  (Adafactor's row and column accumulators of :class:`~l2l_lightning.nets.FeatureMLP`), in the
  group's ``state_dtype``; checked on load against the shape the net gives for the parameter.
* :data:`STEP` (``"step"``): how many times the net has stepped this parameter's state: an
  ``int`` on CPU, a 0-d int64 tensor on the parameter's device on GPUs.

Per param group: ``lr``, ``state_dtype`` (a name of :data:`STATE_DTYPES`), ``total_steps`` (``None``,
or the run's length for a net that reads the fraction of training done; state dicts written
before it existed load with the optimizer's own),
``route`` and, for routed nets, ``param_routes``.  At the top level, :data:`~l2l_lightning.serialization.NET_KEY`
names the net (class, settings, weight fingerprint).

:func:`decode` checks *every* field it restores, so a bad value is a
:class:`~l2l_lightning.errors.CheckpointError` naming the field at load time, never a bare
``KeyError`` at the next ``step()``.  :func:`encode` / :func:`decode` also convert to and from
the form ``torch.distributed.checkpoint`` needs for sharded (FSDP2) parameters
(:mod:`l2l_lightning.optim.sharded`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import chain
from typing import Any, Optional, Union

import torch
from torch import Tensor

from l2l_lightning.errors import CheckpointError, ConfigError, check_choice, check_nonnegative_float, check_positive_int
from l2l_lightning.optim import sharded
from l2l_lightning.serialization import NET_KEY
from l2l_lightning.specs import make_spec

#: The per-parameter key of the net's state.
NET_STATE = "net_state"
#: Earlier names of :data:`NET_STATE` (format 1: ``"lstm"`` for every net), renamed on load.
LEGACY_NET_STATE = ("lstm",)
#: The per-parameter key of a net's per-tensor state.
TENSOR_STATE = "tensor_state"
#: The per-parameter key of the step count.
STEP = "step"
#: State dtypes a parameter group may ask for (by name, so state dicts stay plain).
STATE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def state_dtype_name(value: Union[str, torch.dtype]) -> str:
    """The name in :data:`STATE_DTYPES` of ``value`` (a name or a dtype), else :class:`ConfigError`."""
    name = str(value).removeprefix("torch.") if isinstance(value, (str, torch.dtype)) else value
    return check_choice("state_dtype", name, STATE_DTYPES, " (float32 default, bfloat16 halves the optimizer state's memory)")


def check_lr(lr: Any) -> None:
    """Refuse an ``lr`` that is not a finite number ``>= 0`` (a one-element tensor counts as its value)."""
    value = lr.item() if isinstance(lr, Tensor) and lr.numel() == 1 else lr
    check_nonnegative_float("lr", value, " (it multiplies the learned update)")


def check_total_steps(net: Any, total_steps: Any) -> Optional[int]:
    """``total_steps`` if it is ``None`` or a positive int; ``None`` only for a net that does not read the horizon."""
    if total_steps is not None:
        return check_positive_int("total_steps", total_steps, " (the steps the run takes in all), or None")
    if net.inputs.horizon:
        raise ConfigError(
            f"LearnedOptimizer: the net {type(net).__name__} reads the fraction of training done (a learned "
            "schedule): pass total_steps=<the steps the run takes> (LearnedOptimizerCallback reads it from the "
            "Trainer: max_steps, or max_epochs × batches per epoch)"
        )
    return None


def check_group_lrs(param_groups: list[dict[str, Any]]) -> None:
    """Refuse to step with a non-finite lr (a scheduler can set one after construction): ``lr · update``
    would write inf/NaN into every parameter.  Tensor lrs on an accelerator are not read (no host sync)."""
    for index, group in enumerate(param_groups):
        lr = group["lr"]
        if isinstance(lr, Tensor) and lr.device.type != "cpu":
            continue
        try:
            check_lr(lr)
        except ConfigError as error:
            raise ConfigError(
                f"LearnedOptimizer.step: param group #{index}: {error}; the step was refused and no parameter "
                "or state changed (did an LR scheduler set it?)"
            ) from None


@dataclass(frozen=True)
class Identity:
    """The net a state dict belongs to: ``{"class_path", "init_args"}`` and a fingerprint of its weights."""

    spec: dict[str, Any]
    fingerprint: str

    def as_entry(self) -> dict[str, Any]:
        return {**make_spec(self.spec["class_path"], self.spec["init_args"]), "fingerprint": self.fingerprint}


def encode(state_dict: dict[str, Any], identity: Identity, params: list[Tensor], dims: list[int]) -> dict[str, Any]:
    """torch's state dict with the net's identity added, in the form DCP needs for sharded parameters."""
    return sharded.to_dcp({**state_dict, NET_KEY: identity.as_entry()}, params, dims, NET_KEY, NET_STATE)


def decode(
    state_dict: dict[str, Any],
    identity: Identity,
    groups: list[dict[str, Any]],
    shapes: list[tuple[tuple[int, ...], Optional[tuple[int, ...]]]],
    dims: list[int],
    strict: bool,
) -> tuple[dict[str, Any], dict[Any, dict[str, Tensor]]]:
    """Check ``state_dict`` against the optimizer (its ``groups``, each parameter's net and per-tensor
    state shapes and coordinate dim) and split it: ``(torch's part, {saved id: {key: net or per-tensor
    state}})``.  Raises :class:`CheckpointError` naming the first field that cannot be restored."""
    params = [p for group in groups for p in group["params"]]
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("param_groups"), list):
        raise CheckpointError(f"LearnedOptimizer.load_state_dict: expected a state dict, got {type(state_dict).__name__}")
    if not isinstance(state_dict.get("state"), dict):
        raise CheckpointError(
            f"LearnedOptimizer.load_state_dict: 'state' is a {type(state_dict.get('state')).__name__}, not a dict"
        )
    state_dict = sharded.from_dcp(_renamed_legacy_keys(state_dict), params, dims, NET_KEY, NET_STATE)
    _check_net(state_dict.get(NET_KEY), state_dict, identity, strict)
    saved_ids = _check_groups(state_dict["param_groups"], groups)
    # Groups saved before total_steps existed keep the optimizer's own (torch restores the saved group whole).
    saved_groups = [{"total_steps": mine.get("total_steps"), **saved} for saved, mine in zip(state_dict["param_groups"], groups)]
    entries = state_dict["state"]
    restored: dict[Any, dict[str, Tensor]] = {}
    plain: dict[Any, Any] = {k: v for k, v in entries.items() if k not in set(saved_ids)}
    for index, (saved_id, p, expected) in enumerate(zip(saved_ids, params, shapes)):
        entry = entries.get(saved_id)
        if entry is None:
            continue
        restored[saved_id] = _check_entry(entry, index, p, expected)
        plain[saved_id] = {k: v for k, v in entry.items() if k not in (NET_STATE, TENSOR_STATE)}
    return {**state_dict, "param_groups": saved_groups, "state": plain}, restored


def _renamed_legacy_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The state dict with format 1's per-parameter ``"lstm"`` key renamed to :data:`NET_STATE`."""
    renamed = {}
    for key, entry in state_dict["state"].items():
        if isinstance(entry, dict) and NET_STATE not in entry:
            for old in LEGACY_NET_STATE:
                if old in entry:
                    entry = {(NET_STATE if k == old else k): v for k, v in entry.items()}
        renamed[key] = entry
    return {**state_dict, "state": renamed}


def _check_net(saved: Any, state_dict: dict[str, Any], identity: Identity, strict: bool) -> None:
    """Refuse a state dict of another net (or of no LearnedOptimizer); warn for other weights if not ``strict``."""
    if not isinstance(saved, dict):
        entries = state_dict.get("state")
        keys = sorted({k for s in (entries.values() if isinstance(entries, dict) else []) if isinstance(s, dict) for k in s})
        raise CheckpointError(
            "LearnedOptimizer.load_state_dict: this state dict was not written by a LearnedOptimizer "
            f"(no {NET_KEY!r} entry; its per-parameter state keys are {keys}). Resuming a run that used "
            "another optimizer needs a fresh optimizer state."
        )
    mine = identity.as_entry()
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
                "to continue its net states with this net"
            )
        warnings.warn(message + "; continuing its net states with this net (strict=False)", stacklevel=4)


def _check_groups(saved_groups: list[Any], groups: list[dict[str, Any]]) -> list[Any]:
    """Check every saved group's settings and routes against the optimizer's; the saved parameter ids, in order."""
    params = [p for group in groups for p in group["params"]]
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in saved_groups):
        raise CheckpointError("LearnedOptimizer.load_state_dict: every param group must be a dict with a 'params' list")
    saved_ids = list(chain.from_iterable(g["params"] for g in saved_groups))
    if len(saved_ids) != len(params) or len(saved_groups) != len(groups):
        raise CheckpointError(
            f"LearnedOptimizer.load_state_dict: the state dict has {len(saved_groups)} groups "
            f"of {len(saved_ids)} parameters, this optimizer {len(groups)} groups of {len(params)}"
        )
    for index, (saved, mine) in enumerate(zip(saved_groups, groups)):
        where = f"LearnedOptimizer.load_state_dict: param group #{index}"
        try:
            check_lr(saved.get("lr"))
            state_dtype_name(saved.get("state_dtype"))
            if saved.get("total_steps") is not None:
                check_positive_int("total_steps", saved["total_steps"])
        except ConfigError as error:
            raise CheckpointError(f"{where}: {error}; the state dict is damaged or not a LearnedOptimizer's") from None
        if saved.get("route") is not None and not isinstance(saved["route"], str):
            raise CheckpointError(f"{where} has route={saved['route']!r}, expected a route name or None")
        if saved.get("param_routes") != mine.get("param_routes"):
            raise CheckpointError(
                f"{where} was routed {saved.get('param_routes')} when saved, but is routed {mine.get('param_routes')} "
                "now (renamed or reordered parameters?); the net states would continue under the wrong nets"
            )
    return saved_ids


def _check_entry(
    entry: Any, index: int, p: Tensor, expected: tuple[tuple[int, ...], Optional[tuple[int, ...]]]
) -> dict[str, Tensor]:
    """Check one parameter's saved state (keys, step, net and per-tensor state); its states to restore."""
    where = f"LearnedOptimizer.load_state_dict: parameter #{index} ({p.numel()} elements)"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where} has a state of type {type(entry).__name__}, expected a dict")
    allowed = {NET_STATE, STEP} | ({TENSOR_STATE} if expected[1] is not None else set())
    unknown = sorted(set(entry) - allowed, key=str)
    if unknown:
        raise CheckpointError(f"{where} has unexpected state keys {unknown}; expected {sorted(allowed)}")
    step = entry.get(STEP, 0)
    if isinstance(step, Tensor):
        if step.dim() != 0 or step.dtype.is_floating_point or step.dtype == torch.bool:
            raise CheckpointError(f"{where} has step={step!r}; expected a non-negative integer (or a 0-d integer tensor)")
    elif isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{where} has step={step!r}; expected a non-negative integer")
    if expected[1] is not None and (NET_STATE in entry) != (TENSOR_STATE in entry):
        raise CheckpointError(f"{where} has only one of {NET_STATE!r} and {TENSOR_STATE!r}; the net keeps both")
    restored = {}
    for key, shape in zip((NET_STATE, TENSOR_STATE), expected):
        state = entry.get(key)
        if state is None:
            continue
        if not isinstance(state, Tensor) or not state.is_floating_point() or tuple(state.shape) != tuple(shape):
            got = f"shape {tuple(state.shape)} and dtype {state.dtype}" if isinstance(state, Tensor) else type(state).__name__
            what = "net state" if key == NET_STATE else "per-tensor state"
            raise CheckpointError(
                f"{where} has a saved {what} of {got}, expected a floating-point tensor of shape {tuple(shape)}: "
                "the state dict belongs to another model or net"
            )
        restored[key] = state
    return restored
