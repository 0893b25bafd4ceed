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

A spec is built by :func:`~l2l_lightning.specs.make_spec` and read by
:func:`~l2l_lightning.specs.read_spec`, nowhere else.  Every spec
read from a *file* goes through :func:`net_from_spec` (nets) or :func:`check_hyperparameters`
(a ``MetaLearner`` checkpoint's task, estimator, imitation, net and meta-optimizer): the class
paths it names are checked against the allowed modules before anything is imported, at any
depth (:func:`l2l_lightning.safe_load.check_spec_allowed`), and a net's size is bounded before
its weights are allocated (:data:`MAX_NET_NUMEL`).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch
from torch import Tensor, nn

from l2l_lightning.errors import CheckpointError
from l2l_lightning.safe_load import check_spec_allowed
from l2l_lightning.specs import make_spec, read_spec

if TYPE_CHECKING:
    from l2l_lightning.nets.base import LearnedOptimizerNet

#: The entry naming the net in MetaLearner checkpoints and LearnedOptimizer state dicts.
NET_KEY = "l2l_net"
#: The ``format`` tag of exported files, and the newest ``format_version`` this code reads.
FORMAT = "l2l_lightning.learned_optimizer"
FORMAT_VERSION = 1
#: The most weights (and buffers) a net built from a file may have: a learned optimizer has a few
#: thousand (the paper's LSTM: 5,000), so 2**24 (64 MB in float32) leaves room for any real one
#: while a file asking for ``hidden_size: 200000`` (640 GB) is refused before anything is allocated.
MAX_NET_NUMEL = 2**24
#: Modules a MetaLearner checkpoint's hyper-parameter may name besides the allowed ones (the
#: meta-optimizer is a ``torch.optim`` class).
_HPARAM_ALSO_ALLOWED: dict[str, tuple[str, ...]] = {"meta_optimizer": ("torch.optim",)}
#: Hyper-parameters Lightning reads itself and checks against its own allow-lists.
_LIGHTNING_HPARAMS = ("_instantiator", "_class_path")


def net_spec(net: nn.Module) -> dict[str, Any]:
    """``{"class_path", "init_args"}``: how to rebuild ``net`` (its weights aside)."""
    from l2l_lightning.nets.base import LearnedOptimizerNet

    if not isinstance(net, LearnedOptimizerNet):
        raise CheckpointError(
            f"{type(net).__name__} is not a learned-optimizer net; a net must subclass "
            "l2l_lightning.nets.LearnedOptimizerNet (which also gives it a `spec`)"
        )
    return make_spec(*read_spec(net.spec, type(net).__name__))


def fingerprint(net: nn.Module) -> str:
    """A short hash of the net's class, settings and exact weights.

    Stored in exported files and optimizer state dicts, so that LSTM states are never
    silently continued by a *different* net that merely has the same shapes, and a file
    whose weights changed after export is noticed.
    """
    digest = hashlib.sha256(json.dumps(net_spec(net), sort_keys=True, default=str).encode())
    for key, value in sorted(net.state_dict().items()):
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}:{tensor.dtype}:{tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_net_spec(spec: Any, source: str) -> None:
    """Refuse a net spec read from a file before anything is built: class paths outside the allowed
    modules (checked before any import, at any depth), or more than :data:`MAX_NET_NUMEL` weights.

    The size is measured by building the net on the ``meta`` device (no memory is allocated); a
    net class that cannot be built there is not measured (only allowed classes get that far).
    The classes are imported first, outside that device context: a module imported inside it
    would create its module-level tensors on ``meta``.
    """
    from l2l_lightning.nets.base import LearnedOptimizerNet, import_class

    for class_path in check_spec_allowed(spec, source):
        try:
            import_class(class_path)
        except CheckpointError as error:
            raise CheckpointError(f"{source}: {error}") from error
    try:
        with torch.device("meta"):
            probe = LearnedOptimizerNet.from_spec(spec, source)
    except (RuntimeError, NotImplementedError):
        return
    numel = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    if numel > MAX_NET_NUMEL:
        raise CheckpointError(
            f"{source}: its net {spec['class_path']} would have {numel:,} weights, more than the "
            f"{MAX_NET_NUMEL:,} l2l_lightning builds from a file (a learned optimizer has thousands); "
            "refused before allocating. If you trust the file, build the net yourself and load its weights"
        )


def net_from_spec(spec: Any, source: str) -> "LearnedOptimizerNet":
    """The net a file's spec describes, untrained, once :func:`check_net_spec` accepted it."""
    from l2l_lightning.nets.base import LearnedOptimizerNet

    check_net_spec(spec, source)
    return LearnedOptimizerNet.from_spec(spec, source)


def build_net(
    class_path: str,
    init_args: Mapping[str, Any],
    state_dict: Mapping[str, Tensor],
    source: str,
    expected_fingerprint: Optional[str] = None,
) -> nn.Module:
    """Instantiate ``class_path(**init_args)`` (see :func:`net_from_spec`), load ``state_dict`` strictly, freeze it.

    ``expected_fingerprint``: the :func:`fingerprint` the file says its net has (exported files
    store it); a net that does not reproduce it is refused, naming ``source``.
    """
    net = net_from_spec(make_spec(class_path, init_args), source)
    try:
        net.load_state_dict(dict(state_dict), strict=True)
    except (TypeError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{source}: cannot load the weights of {class_path}: {error}") from error
    if expected_fingerprint is not None and fingerprint(net) != expected_fingerprint:
        raise CheckpointError(
            f"{source}: its weights do not match the fingerprint stored in it ({expected_fingerprint}, the weights "
            f"give {fingerprint(net)}): the file was changed or damaged after it was exported; export it again"
        )
    return net.eval().requires_grad_(False)


def check_hyperparameters(hparams: Any, source: str, given: Mapping[str, Any] = {}) -> None:
    """Refuse a ``MetaLearner`` checkpoint's hyper-parameters before jsonargparse imports what they name.

    ``MetaLearner.load_from_checkpoint`` rebuilds the task, estimator, imitation, net and
    meta-optimizer from them, importing every class they name (a string too, wherever a class is
    expected); so every part not ``given`` by the caller (``load_from_checkpoint(path, task=...)``)
    is checked like a net spec, and the net's size is bounded.
    """
    if not isinstance(hparams, Mapping):
        what = "missing" if hparams is None else f"{type(hparams).__name__}, not a dict"
        raise CheckpointError(
            f"{source}: its hyper_parameters are {what}; "
            "a MetaLearner checkpoint stores its settings there (pass a .ckpt written by `l2l fit` or MetaLearner)"
        )
    read = {k: v for k, v in hparams.items() if k not in given and k not in _LIGHTNING_HPARAMS}
    for key, value in read.items():
        check_spec_allowed(value, f"{source} (hyper-parameter {key!r})", _HPARAM_ALSO_ALLOWED.get(key, ()))
    if isinstance(read.get("net"), Mapping):
        check_net_spec(read["net"], f"{source} (hyper-parameter 'net')")


def net_weights_from_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The net's weights in a ``MetaLearner`` checkpoint (its ``net.*`` state-dict entries)."""
    return {k[len("net.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
