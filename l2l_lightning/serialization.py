"""One format for learned-optimizer nets as plain data, and the keys that carry it.

A net is described by its class and constructor arguments (the form LightningCLI
writes; :attr:`LearnedOptimizerNet.spec <l2l_lightning.nets.LearnedOptimizerNet.spec>` and
:meth:`~l2l_lightning.nets.LearnedOptimizerNet.from_spec`), never by pickling it, so every
file the project writes loads with ``torch.load(..., weights_only=True)``.  Three places
hold such a description, all read and written through here:

* ``MetaLearner`` checkpoints: ``checkpoint[NET_KEY]`` = the net's spec (its weights are
  the module's ``net.*`` entries of ``state_dict``);
* exported files (``l2l-export``): ``{"format": FORMAT, "format_version": …,
  "class_path", "init_args", "state_dict", "metadata"}``;
* ``LearnedOptimizer`` state dicts: ``state_dict()[NET_KEY]`` = spec plus a weight
  fingerprint, so LSTM states are never continued by a different net.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from l2l_lightning.errors import CheckpointError
from l2l_lightning.nets.base import LearnedOptimizerNet
from l2l_lightning.safe_load import check_spec_allowed

#: The entry naming the net in MetaLearner checkpoints and LearnedOptimizer state dicts.
NET_KEY = "l2l_net"
#: The ``format`` tag of exported files, and the newest ``format_version`` this code reads.
FORMAT = "l2l_lightning.learned_optimizer"
FORMAT_VERSION = 1


def net_spec(net: nn.Module) -> dict[str, Any]:
    """``{"class_path", "init_args"}``: how to rebuild ``net`` (its weights aside)."""
    if not isinstance(net, LearnedOptimizerNet):
        raise CheckpointError(
            f"{type(net).__name__} is not a learned-optimizer net; a net must subclass "
            "l2l_lightning.nets.LearnedOptimizerNet (which also gives it a `spec`)"
        )
    spec = net.spec
    return {"class_path": spec["class_path"], "init_args": dict(spec["init_args"])}


def fingerprint(net: nn.Module) -> str:
    """A short hash of the net's class, settings and exact weights.

    Stored in exported files and optimizer state dicts, so that LSTM states are never
    silently continued by a *different* net that merely has the same shapes.
    """
    digest = hashlib.sha256(json.dumps(net_spec(net), sort_keys=True, default=str).encode())
    for key, value in sorted(net.state_dict().items()):
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}:{tensor.dtype}:{tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def build_net(
    class_path: str, init_args: Mapping[str, Any], state_dict: Mapping[str, Tensor], source: str
) -> nn.Module:
    """Instantiate ``class_path(**init_args)``, load ``state_dict`` strictly, freeze it.

    ``source`` is a file: its class paths must name allowed modules (see :mod:`l2l_lightning.safe_load`),
    checked before anything is imported.
    """
    check_spec_allowed({"class_path": class_path, "init_args": init_args}, source)
    net = LearnedOptimizerNet.from_spec({"class_path": class_path, "init_args": init_args}, source)
    try:
        net.load_state_dict(dict(state_dict), strict=True)
    except (TypeError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{source}: cannot load the weights of {class_path}: {error}") from error
    return net.eval().requires_grad_(False)


def net_weights_from_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The net's weights in a ``MetaLearner`` checkpoint (its ``net.*`` state-dict entries)."""
    return {k[len("net.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
