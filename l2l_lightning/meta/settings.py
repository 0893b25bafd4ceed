"""``MetaLearner``'s settings: each checked once, with the same message shape, before anything is built.

A setting that cannot work is a :class:`~l2l_lightning.errors.ConfigError` naming it and what
is allowed, raised by :func:`check_settings` from ``MetaLearner.__init__`` (so ``l2l fit``
stops before a trainer exists).  Combinations an estimator cannot serve are refused by what
the estimator declares (:attr:`~l2l_lightning.meta.estimators.OuterEstimator.differentiates_through_unroll`),
never by its class.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterable, Iterator, Literal, Optional, Union

import torch
from torch import Tensor

from l2l_lightning.errors import (
    CheckpointError, ConfigError, L2LError, check_bool, check_choice, check_float_range, check_positive_int,
)
from l2l_lightning.meta.estimators import OuterEstimator, TruncatedBPTT
from l2l_lightning.meta.imitation import Imitation
from l2l_lightning.meta.stream import check_curriculum
from l2l_lightning.nets.base import LearnedOptimizerNet
from l2l_lightning.nets.lstm import CoordinatewiseLSTM
from l2l_lightning.safe_load import load_plain
from l2l_lightning.serialization import NET_KEY, check_hyperparameters
from l2l_lightning.specs import make_spec
from l2l_lightning.tasks.base import Task

LossWeights = Union[Literal["uniform", "increasing"], list[float]]
LossTransform = Literal["none", "log"]


def check_settings(
    task: Any, net: Any, estimator: Any, imitation: Any, counts: dict[str, Any], options: dict[str, Any]
) -> tuple[OuterEstimator, Optional[Imitation], list[int]]:
    """Check every setting; ``(estimator, imitation, horizons)`` as ``MetaLearner`` keeps them.

    ``counts``: the positive-integer settings by name (``num_steps`` and ``unroll`` among them);
    ``options``: ``second_derivatives``, ``loss_transform``, ``random_scaling``,
    ``horizon_curriculum`` and ``baseline_lrs``.
    """
    for name, value in counts.items():
        check_positive_int(f"MetaLearner: {name}", value)
    num_steps, unroll = counts["num_steps"], counts["unroll"]
    if num_steps % unroll:
        raise ConfigError(
            f"MetaLearner: num_steps={num_steps} is not a multiple of unroll={unroll}; "
            "every truncation must have the same length (paper: num_steps=100, unroll=20)"
        )
    baseline_lrs = options["baseline_lrs"]
    if not baseline_lrs or any(not (lr > 0) for lr in baseline_lrs):
        raise ConfigError(f"MetaLearner: baseline_lrs={list(baseline_lrs)!r} must be a non-empty list of positive floats")
    if not isinstance(task, Task):
        raise ConfigError(f"MetaLearner: task must be an l2l_lightning.tasks.Task, got {type(task).__name__}")
    check_float_range(
        "MetaLearner: random_scaling", options["random_scaling"], 0, 20,
        ": the half-width s of log-scales c = exp(U[-s, s]) (0 = off)",
    )
    horizons = check_curriculum(options["horizon_curriculum"], num_steps, unroll)
    check_choice("MetaLearner: loss_transform", options["loss_transform"], ("none", "log"))
    check_bool("MetaLearner: second_derivatives", options["second_derivatives"])
    if net is not None and not isinstance(net, LearnedOptimizerNet):
        raise ConfigError(
            f"MetaLearner: net is a {type(net).__name__}, not a learned-optimizer net; subclass "
            "l2l_lightning.nets.LearnedOptimizerNet (see the README's 'Your own learned optimizer')"
        )
    estimator, imitation = _check_estimator(estimator, imitation, options["second_derivatives"])
    return estimator, imitation, horizons


def _check_estimator(estimator: Any, imitation: Any, second_derivatives: bool) -> tuple[OuterEstimator, Optional[Imitation]]:
    """The estimator (default: truncated BPTT) and imitation, refused together where the estimator cannot serve it."""
    estimator = TruncatedBPTT() if estimator is None else estimator
    if not isinstance(estimator, OuterEstimator):
        raise ConfigError(
            f"MetaLearner: estimator is a {type(estimator).__name__}; it must be an "
            "l2l_lightning.meta.estimators.OuterEstimator (TruncatedBPTT, PES or your subclass)"
        )
    through = estimator.differentiates_through_unroll
    if second_derivatives and not through:
        raise ConfigError(
            f"MetaLearner: second_derivatives=true only applies to an estimator that differentiates through the "
            f"unroll (TruncatedBPTT); {type(estimator).__name__} never does (set model.second_derivatives false)"
        )
    if isinstance(imitation, dict):  # as checkpoints store it
        imitation = Imitation(**imitation)
    if imitation is not None:
        imitation.check()
        if not through:
            raise ConfigError(
                f"MetaLearner: imitation needs an estimator that differentiates through the updates (TruncatedBPTT); "
                f"{type(estimator).__name__} never differentiates: drop model.imitation or the estimator"
            )
    return estimator, imitation


def loss_weights_for(spec: LossWeights, num_steps: int) -> Tensor:
    """The per-step weights ``w_t``, ``t = 1 … num_steps``, of the meta-loss."""
    if spec == "uniform":
        return torch.ones(num_steps)
    if spec == "increasing":
        return torch.arange(1, num_steps + 1, dtype=torch.float32) / num_steps
    if isinstance(spec, str):
        raise ConfigError(f"MetaLearner: loss_weights={spec!r}; allowed: 'uniform', 'increasing' or a list of floats")
    weights = torch.tensor(list(spec), dtype=torch.float32)
    if weights.shape != (num_steps,) or not torch.isfinite(weights).all() or (weights < 0).any():
        raise ConfigError(
            f"MetaLearner: loss_weights has {weights.numel()} entries; a list needs num_steps={num_steps} "
            "finite non-negative floats"
        )
    return weights


def initial_net(net: Optional[LearnedOptimizerNet], init_from: Optional[str]) -> LearnedOptimizerNet:
    """The net meta-training starts from: ``net`` (default: the paper's LSTM), with ``init_from``'s weights if given."""
    if init_from is None:
        return net if net is not None else CoordinatewiseLSTM()
    from l2l_lightning.optim.pretrained import load_net  # deployment code: imported only when fine-tuning

    try:
        trained = load_net(init_from)
    except L2LError as error:
        raise ConfigError(f"MetaLearner: init_from={init_from!r}: {error}") from error
    if net is None:
        return trained.requires_grad_(True).train()
    if net.spec == trained.spec:
        net.load_state_dict(trained.state_dict())
    elif not net.warm_start(trained):  # e.g. a feature net adding a learned schedule to the trained one
        raise ConfigError(
            f"MetaLearner: init_from={init_from!r} holds {trained.spec} but model.net is {net.spec}; "
            "to fine-tune the file's own net, drop model.net (on the command line: --model.net null; in YAML: "
            "delete the model.net block), or make its settings match"
        )
    return net


def callable_spec(factory: Any) -> Optional[dict[str, Any]]:
    """``{"class_path", "init_args"}`` of a class or a ``functools.partial`` of one, else ``None``."""
    keywords = {}
    if isinstance(factory, functools.partial) and not factory.args:
        factory, keywords = factory.func, dict(factory.keywords)
    if not isinstance(factory, type):
        return None
    return make_spec(factory, keywords)


def describe_spec(spec: dict[str, Any]) -> str:
    """``CoordinatewiseLSTM(hidden_size=20, ...)`` from a net's spec, for messages."""
    args = ", ".join(f"{key}={value!r}" for key, value in spec.get("init_args", {}).items())
    return f"{spec['class_path'].rsplit('.', 1)[-1]}({args})"


def check_is_meta_learner_checkpoint(checkpoint: Any, where: Any) -> None:
    """Refuse (``ConfigError``) a loaded checkpoint that was not written by ``MetaLearner``."""
    if not isinstance(checkpoint, dict) or NET_KEY not in checkpoint:
        raise ConfigError(
            f"{where} is not a checkpoint of l2l_lightning.MetaLearner (it has no {NET_KEY!r} entry); "
            "pass a .ckpt written while meta-training with `l2l fit` or MetaLearner"
        )


@contextlib.contextmanager
def checked_checkpoint_file(checkpoint_path: Any, given: dict[str, Any]) -> Iterator[None]:
    """Around ``MetaLearner.load_from_checkpoint``: the file must be a MetaLearner checkpoint whose
    hyper-parameters name only allowed classes (those ``given`` as arguments are not read), checked
    before Lightning's loader hands them to jsonargparse, which imports what they name
    (:func:`~l2l_lightning.serialization.check_hyperparameters`); a hyper-parameter jsonargparse then
    refuses is one :class:`CheckpointError` naming the file, not its multi-line report.
    """
    from jsonargparse import ArgumentError  # Lightning rebuilds the module through jsonargparse

    is_file_object = hasattr(checkpoint_path, "read")
    source = str(getattr(checkpoint_path, "name", "<file object>") if is_file_object else checkpoint_path)
    checkpoint = load_plain(checkpoint_path)  # one clear CheckpointError for unreadable files and URLs
    check_is_meta_learner_checkpoint(checkpoint, source)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(
            f"{source} has no state_dict (its weights); pass a .ckpt written by `l2l fit` or MetaLearner"
        )
    check_hyperparameters(checkpoint.get("hyper_parameters"), source, given=given)
    try:
        yield
    except ArgumentError as error:
        raise CheckpointError(
            f"{source}: its hyper-parameters do not fit MetaLearner: {' '.join(str(error).split())[:300]}"
        ) from error


def build_meta_optimizer(factory: Any, params: Iterable[Tensor]) -> torch.optim.Optimizer:
    """``factory(params)``, a bad setting of it (torch checks them here) as a ``ConfigError`` naming it."""
    try:
        return factory(params)
    except ValueError as error:  # e.g. torch's "Invalid learning rate: -1.0"
        raise ConfigError(f"MetaLearner: meta_optimizer: {error} (model.meta_optimizer.init_args)") from error
