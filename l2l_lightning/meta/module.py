"""``MetaLearner``: the LightningModule that meta-trains a learned optimizer.

Its only trainable weights are the learned optimizer's (``self.net``).  One
``training_step`` is one truncation of truncated BPTT: it continues the current
optimizees for ``unroll`` inner steps (:func:`~l2l_lightning.meta.unroll.unroll`),
returns the weighted sum of their losses, and Lightning's automatic optimization
steps the meta-optimizer, so gradient clipping, precision, DDP, checkpointing and
loggers are all Lightning's own.  After ``num_steps`` inner steps a fresh problem
is drawn from the task.

Validation and test run full-horizon unrolls on fixed held-out problems and put
the learned optimizer next to Adam with its learning rate tuned on a grid on those
very problems (the hardest fair baseline: it saw the test problems when tuning).
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader

from l2l_lightning.errors import ConfigError, L2LError, NonFiniteMetaLossError, check_positive_int
from l2l_lightning.meta.baselines import DEFAULT_LR_GRID, TunedBaseline, tune_baseline
from l2l_lightning.meta.checkpoint_io import LatestCheckpoint
from l2l_lightning.meta.estimators import OuterEstimator, Truncation, TruncatedBPTT
from l2l_lightning.meta.imitation import Imitation
from l2l_lightning.meta.images import grid_tensor, is_image_problem, result_columns
from l2l_lightning.meta.metrics import CurveMean
from l2l_lightning.meta.unroll import bind, evaluate_learned
from l2l_lightning.nets.base import LearnedOptimizerNet
from l2l_lightning.nets.lstm import CoordinatewiseLSTM
from l2l_lightning.serialization import NET_KEY
from l2l_lightning.safe_load import check_spec_allowed, load_plain
from l2l_lightning.tasks.base import Problem, ScaledProblem, Task
from l2l_lightning.threads import ThreadPolicy, check_threads

LossWeights = Union[Literal["uniform", "increasing"], list[float]]
LossTransform = Literal["none", "log"]


@dataclass
class _Carry:
    """What one truncation hands to the next: the same problem, continued."""

    problem: Problem
    net: LearnedOptimizerNet  #: ``self.net`` bound to the problem's layout (see ``unroll.bind``)
    theta: Tensor
    state: Any
    step: int


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


def _check_curriculum(horizons: Optional[Sequence[int]], num_steps: int, unroll: int) -> list[int]:
    """The horizons meta-training goes through: the curriculum's, then ``num_steps``."""
    if horizons is None:
        return [num_steps]
    horizons = list(horizons)
    for h in horizons:
        check_positive_int("MetaLearner: horizon_curriculum entry", h)
    if not horizons or any(h % unroll for h in horizons) or horizons != sorted(set(horizons)) or horizons[-1] > num_steps:
        raise ConfigError(
            f"MetaLearner: horizon_curriculum={horizons!r} must be a non-empty list of strictly increasing "
            f"multiples of unroll={unroll}, none longer than num_steps={num_steps}"
        )
    return horizons if horizons[-1] == num_steps else [*horizons, num_steps]


def _describe(spec: dict[str, Any]) -> str:
    """``CoordinatewiseLSTM(hidden_size=20, ...)`` from a net's spec, for messages."""
    args = ", ".join(f"{key}={value!r}" for key, value in spec.get("init_args", {}).items())
    return f"{spec['class_path'].rsplit('.', 1)[-1]}({args})"


def _initial_net(net: Optional[LearnedOptimizerNet], init_from: Optional[str]) -> LearnedOptimizerNet:
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
    if net.spec != trained.spec:
        raise ConfigError(
            f"MetaLearner: init_from={init_from!r} holds {trained.spec} but model.net is {net.spec}; "
            "to fine-tune the file's own net, drop model.net (on the command line: --model.net null; in YAML: "
            "delete the model.net block), or make its settings match"
        )
    net.load_state_dict(trained.state_dict())
    return net


def _callable_spec(factory: Any) -> Optional[dict[str, Any]]:
    """``{"class_path", "init_args"}`` of a class or a ``functools.partial`` of one, else ``None``."""
    keywords = {}
    if isinstance(factory, functools.partial) and not factory.args:
        factory, keywords = factory.func, dict(factory.keywords)
    if not isinstance(factory, type):
        return None
    return {"class_path": f"{factory.__module__}.{factory.__qualname__}", "init_args": keywords}


def _check_is_meta_learner_checkpoint(checkpoint: Any, where: Any) -> None:
    if not isinstance(checkpoint, dict) or NET_KEY not in checkpoint:
        raise ConfigError(
            f"{where} is not a checkpoint of l2l_lightning.MetaLearner (it has no {NET_KEY!r} entry); "
            "pass a .ckpt written while meta-training with `l2l fit` or MetaLearner"
        )


class _Indices(torch.utils.data.Dataset):
    """``0 … n-1``: the meta-training loop's 'batches' are truncation / held-out-problem indices."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


class MetaLearner(L.LightningModule):
    """Meta-trains ``net`` on optimizees drawn from ``task``.

    Args:
        task: the distribution of optimizees (e.g. :class:`~l2l_lightning.tasks.QuadraticTask`).
        net: the learned optimizer, any :class:`~l2l_lightning.nets.LearnedOptimizerNet`
            (``model.net.class_path: mypackage.MyNet`` in YAML); default ``CoordinatewiseLSTM()``
            with the paper's settings.  :class:`~l2l_lightning.nets.GlobalAveragingLSTM` is the
            paper's LSTM+GAC; :class:`~l2l_lightning.nets.RoutedNets` gives separate nets to
            separate parameters of a module optimizee (the paper's conv / FC LSTMs for CIFAR-10).
        num_steps: horizon: inner steps per optimizee before a fresh one is drawn (paper: 100).
        unroll: inner steps per truncation, i.e. per meta-update (paper: 20); must divide ``num_steps``.
        second_derivatives: back-propagate through the optimizee's gradient too (paper: off;
            truncated BPTT only: PES never differentiates).
        loss_weights: the meta-loss weights ``w_t`` over the horizon: ``"uniform"`` (paper,
            all 1), ``"increasing"`` (``t / num_steps``) or an explicit list of ``num_steps`` floats.
        loss_transform: ``"none"`` (paper: the losses themselves) or ``"log"``: each optimizee's
            loss enters the meta-loss as its logarithm, so late small losses weigh as much as
            early large ones (a remedy for "sprinters"; needs positive losses).
        estimator: how each truncation's meta-gradient is estimated
            (:mod:`l2l_lightning.meta.estimators`): ``TruncatedBPTT()`` (default, the paper's) or
            ``PES(num_particles, sigma)``; in YAML ``model.estimator.class_path``.
        random_scaling: ``s > 0`` rescales every training problem's parameters coordinatewise
            by ``c = exp(U[-s, s])`` (Lv et al. 2017: the optimizee becomes ``f(c ⊙ θ)``), so the
            net cannot rely on one gradient scale; validation and test problems are never scaled.
            0 (default): off, as in the paper.
        horizon_curriculum: a list of increasing horizons (multiples of ``unroll``, the last at
            most ``num_steps``) to train on first: meta-training starts with problems of the first
            horizon and moves to the next when a validation's ``val/mean_loss`` does not improve on
            the stage's best (Chen et al. 2020, "Training stronger baselines for learning to
            optimize"); after the last entry, ``num_steps``.  ``None`` (default): ``num_steps``
            from the start, as in the paper.
        imitation: an auxiliary meta-loss pulling each learned update towards a tuned
            hand-designed optimizer's on the same trajectory (Chen et al. 2020;
            :mod:`l2l_lightning.meta.imitation`), e.g. ``{teacher: nag, lr: 1.0, weight: 0.1}``;
            ``None`` (default): off, as in the paper.  TruncatedBPTT only.
        init_from: start from a trained optimizer's weights instead of a fresh initialization
            (fine-tuning): a shipped name (``fashion_mnist``), an exported file or a ``MetaLearner``
            checkpoint.  Without ``net`` the file's net is used; with ``net`` its class and settings
            must match the file's (a mismatch is a ``ConfigError`` naming both).  Unlike
            ``--ckpt_path`` (which resumes a run: its meta-optimizer, step and problem stream),
            only the net's weights are taken, so every other setting may differ from the run that
            made the file.
        meta_optimizer: the optimizer of φ (paper: Adam, lr 1e-3), e.g.
            ``--model.meta_optimizer.lr 3e-3`` on the command line.
        truncations_per_epoch: meta-updates per Lightning epoch (validation runs per epoch by default).
        val_problems, test_problems: held-out draws from ``task`` used by validation / test (on the
            task's ``"val"`` / ``"test"`` data split; training draws use ``"train"``).
        val_seed, test_seed: seeds of those draws (draw ``i`` uses ``seed + i``); training
            draws from a generator seeded by the global seed, rank and step, never these.
        baseline_lrs: the grid on which Adam's learning rate is tuned for the comparison.
        max_nonfinite_in_row: stop with an error after this many consecutive meta-steps whose
            loss or gradient was NaN/Inf (each one is skipped and counted in ``meta/skipped_steps``).
        threads: intra-op CPU threads while this module fits, validates or tests: ``"auto"`` (one
            thread for optimizees under :data:`~l2l_lightning.threads.SMALL_WORK_ROWS` coordinates,
            unless ``OMP_NUM_THREADS`` or ``torch.set_num_threads`` chose otherwise; see
            :mod:`l2l_lightning.threads`) or a positive integer.  Decided at the first ``setup`` from
            the size of one problem, applied in every stage, restored at teardown.

    The meta-loss of a truncation covering inner steps ``s+1 … s+unroll`` is
    ``Σ_t w_t · mean_i f_i(θ_t)``: the losses *after* each update, averaged over the
    problem's independent optimizees (the mean keeps the logged value readable; each
    optimizee's inner gradient is still its own, undivided).  The authors' code sums
    ``unroll + 1`` losses, the first taken before any update; that term has no
    gradient with respect to φ, so both give the same meta-gradient.  A popular PyTorch
    reimplementation instead sums the losses *before* each update, which leaves the
    last update of every truncation without a meta-gradient; we do not.
    """

    def __init__(
        self,
        task: Task,
        net: Optional[LearnedOptimizerNet] = None,
        num_steps: int = 100,
        unroll: int = 20,
        second_derivatives: bool = False,
        loss_weights: LossWeights = "uniform",
        loss_transform: LossTransform = "none",
        estimator: Optional[OuterEstimator] = None,
        random_scaling: float = 0.0,
        horizon_curriculum: Optional[list[int]] = None,
        imitation: Optional[Imitation] = None,
        init_from: Optional[str] = None,
        meta_optimizer: OptimizerCallable = torch.optim.Adam,
        truncations_per_epoch: int = 100,
        val_problems: int = 1,
        test_problems: int = 1,
        val_seed: int = 10_000,
        test_seed: int = 20_000,
        baseline_lrs: Sequence[float] = DEFAULT_LR_GRID,
        max_nonfinite_in_row: int = 10,
        threads: Union[str, int] = "auto",
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_steps", num_steps),
            ("unroll", unroll),
            ("truncations_per_epoch", truncations_per_epoch),
            ("val_problems", val_problems),
            ("test_problems", test_problems),
            ("max_nonfinite_in_row", max_nonfinite_in_row),
        ):
            check_positive_int(f"MetaLearner: {name}", value)
        if num_steps % unroll:
            raise ConfigError(
                f"MetaLearner: num_steps={num_steps} is not a multiple of unroll={unroll}; "
                "every truncation must have the same length (paper: num_steps=100, unroll=20)"
            )
        if not baseline_lrs or any(not (lr > 0) for lr in baseline_lrs):
            raise ConfigError(f"MetaLearner: baseline_lrs={list(baseline_lrs)!r} must be a non-empty list of positive floats")
        if not isinstance(task, Task):
            raise ConfigError(f"MetaLearner: task must be an l2l_lightning.tasks.Task, got {type(task).__name__}")
        if isinstance(random_scaling, bool) or not isinstance(random_scaling, (int, float)) or not 0 <= random_scaling < 20:
            raise ConfigError(
                f"MetaLearner: random_scaling={random_scaling!r} must be a number in [0, 20): the half-width s of "
                "log-scales c = exp(U[-s, s]) (0 = off)"
            )
        horizons = _check_curriculum(horizon_curriculum, num_steps, unroll)
        if loss_transform not in ("none", "log"):
            raise ConfigError(f"MetaLearner: loss_transform={loss_transform!r}; allowed: 'none', 'log'")
        estimator = TruncatedBPTT() if estimator is None else estimator
        if not isinstance(estimator, OuterEstimator):
            raise ConfigError(
                f"MetaLearner: estimator is a {type(estimator).__name__}; it must be an "
                "l2l_lightning.meta.estimators.OuterEstimator (TruncatedBPTT, PES or your subclass)"
            )
        if second_derivatives and not isinstance(estimator, TruncatedBPTT):
            raise ConfigError(
                f"MetaLearner: second_derivatives=true only applies to TruncatedBPTT; {type(estimator).__name__} "
                "never differentiates through the unroll (set model.second_derivatives false)"
            )
        if isinstance(imitation, dict):  # as checkpoints store it
            imitation = Imitation(**imitation)
        if imitation is not None:
            imitation.check()
            if not isinstance(estimator, TruncatedBPTT):
                raise ConfigError(
                    f"MetaLearner: imitation needs the TruncatedBPTT estimator (its term is differentiated through the "
                    f"updates); {type(estimator).__name__} never differentiates: drop model.imitation or the estimator"
                )
        if net is not None and not isinstance(net, LearnedOptimizerNet):
            raise ConfigError(
                f"MetaLearner: net is a {type(net).__name__}, not a learned-optimizer net; subclass "
                "l2l_lightning.nets.LearnedOptimizerNet (see the README's 'Your own learned optimizer')"
            )
        self._threads = ThreadPolicy(check_threads(threads, "MetaLearner: threads"))
        self.task = task
        self.estimator = estimator
        self.imitation = imitation
        self.loss_transform = loss_transform
        self.random_scaling = float(random_scaling)
        self._horizons = horizons  #: the curriculum's horizons, then num_steps
        self._stage, self._stage_best = 0, math.inf
        self.net = _initial_net(net, init_from)
        self._save_hyperparameters_as_data(meta_optimizer)
        self.num_steps = num_steps
        self.unroll = unroll
        self.second_derivatives = second_derivatives
        self.meta_optimizer = meta_optimizer
        self.truncations_per_epoch = truncations_per_epoch
        self.baseline_lrs = tuple(float(lr) for lr in baseline_lrs)
        self.max_nonfinite_in_row = max_nonfinite_in_row
        self.register_buffer("loss_weights", loss_weights_for(loss_weights, num_steps), persistent=False)
        self.curves = nn.ModuleDict({stage: CurveMean(num_steps) for stage in ("val", "test")})
        self._heldout = {"val": (val_problems, val_seed), "test": (test_problems, test_seed)}
        self._problems: dict[str, list[Problem]] = {}
        self._baselines: dict[str, TunedBaseline] = {}
        self._carry: Optional[_Carry] = None
        self._generator: Optional[torch.Generator] = None
        self._loss_finite = True
        self._nonfinite_in_row = 0
        self._skipped = 0
        self._draw_state: Optional[Tensor] = None  #: the generator's state before the current problem was drawn
        self._resume: Optional[dict[str, Any]] = None  #: a checkpoint's problem stream, applied at train start

    def _save_hyperparameters_as_data(self, meta_optimizer: OptimizerCallable) -> None:
        """Store every setting as plain data, objects as ``{"class_path", "init_args"}``.

        That keeps checkpoints loadable with ``torch.load(weights_only=True)`` and lets
        ``MetaLearner.load_from_checkpoint(path)`` rebuild task and net through Lightning's
        own CLI instantiator, whether the module was made by ``l2l`` or in Python.
        """
        self.save_hyperparameters(ignore=["task", "net", "meta_optimizer", "estimator", "imitation"], frame=inspect.currentframe().f_back)
        self.hparams["task"] = self.task.config
        self.hparams["estimator"] = self.estimator.config
        self.hparams["imitation"] = None if self.imitation is None else self.imitation.config
        self.hparams["net"] = self.net.spec
        optimizer_spec = _callable_spec(meta_optimizer)
        if optimizer_spec is not None:
            self.hparams["meta_optimizer"] = optimizer_spec
        elif not isinstance(self.hparams.get("meta_optimizer"), dict):
            self.hparams.pop("meta_optimizer", None)  # a lambda: the checkpoint falls back to the default
        self.hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"

    # ------------------------------------------------------------------ threads
    def setup(self, stage: str) -> None:
        """Set the thread count before anything runs (the first stage decides it; ``l2l fit`` then tests).

        The decision needs the work per op: the size of one problem, drawn here on the CPU from the
        data split the stage uses (``fit`` may run without validation data), with a generator of
        its own, so the training stream and the held-out problems are untouched.
        """
        if not self._threads.ready:
            split = {"validate": "val", "test": "test"}.get(stage, "train")
            self._use_threads(self.task.sample(torch.Generator().manual_seed(0), "cpu", split=split))
        self._threads.apply()

    def teardown(self, stage: str) -> None:
        """Give the caller its thread count back."""
        self._threads.restore()

    def _use_threads(self, problem: Problem) -> None:
        """Decide the thread count from a problem's size (the work per op)."""
        self._threads.apply(problem.initial_params().numel())

    # ------------------------------------------------------------------ training
    def on_train_start(self) -> None:
        resume = self._resume
        seed = torch.initial_seed() + 1_000_003 * self.global_rank + self.global_step
        self.estimator.setup(self.global_rank, seed)
        if resume is not None and self._restore_stream(resume):
            # resumed from a checkpoint: the same problem, continued, then the same stream
            if "estimator" in resume:
                self.estimator.load_state_dict(resume["estimator"], self.device)
            if "imitation" in resume and self.imitation is not None:
                self.imitation.load_state_dict(resume["imitation"])
            if "curriculum" in resume:
                self._stage, self._stage_best = int(resume["curriculum"][0]), float(resume["curriculum"][1])
            return
        # Each rank, and each resumed run, draws its own stream of problems.
        self._generator = torch.Generator().manual_seed(seed % 2**63)
        self._carry = None

    @property
    def horizon(self) -> int:
        """Inner steps per training problem now: ``num_steps``, or the current curriculum stage's."""
        return self._horizons[self._stage]

    def _draw_training_problem(self) -> Problem:
        """The next training problem of the stream (randomly rescaled if ``random_scaling``)."""
        problem = self.task.sample(self._generator, self.device, split="train")
        if self.random_scaling:
            theta = problem.initial_params()
            u = torch.rand(theta.shape, generator=self._generator, dtype=torch.float64) * 2 - 1
            problem = ScaledProblem(problem, (u * self.random_scaling).exp().to(theta.dtype).to(theta.device))
        return problem

    def _advance_curriculum(self, val_mean_loss: float) -> None:
        """Move to the next horizon when a validation does not improve on the current stage's best."""
        if self._stage + 1 >= len(self._horizons):
            return
        if val_mean_loss < self._stage_best:
            self._stage_best = val_mean_loss
            return
        self._stage, self._stage_best = self._stage + 1, math.inf

    def _next_carry(self) -> _Carry:
        carry = self._carry
        if carry is None or carry.step >= self.horizon:
            self._draw_state = self._generator.get_state()  # to re-draw this problem on resume
            problem = self._draw_training_problem()
            theta = problem.initial_params()
            net = bind(self.net, problem)
            carry = _Carry(problem, net, theta, net.init_state(problem.layout, device=self.device), 0)
            if self.imitation is not None:
                self.imitation.reset()  # the teacher starts afresh with the problem
        return carry

    def objective(self, losses: Tensor, start: int) -> Tensor:
        """The meta-loss of a truncation's ``(steps, optimizees)`` losses after inner step ``start``:
        ``Σ_t w_t · mean_i f_i(θ_t)`` (or of ``log f_i`` with ``loss_transform="log"``)."""
        per_step = losses.mean(dim=1) if self.loss_transform == "none" else losses.clamp_min(1e-30).log().mean(dim=1)
        return (per_step * self.loss_weights[start : start + losses.shape[0]]).sum()

    def training_step(self, batch: int, batch_idx: int) -> Tensor:
        carry = self._next_carry()
        run = Truncation(
            self.net, carry.net, carry.problem, carry.theta, carry.state, carry.step, self.unroll,
            fresh=carry.step == 0, objective=self.objective, second_derivatives=self.second_derivatives,
            imitation=self.imitation,
        )  # fmt: skip
        result = self.estimator.truncation(run)
        self._carry = _Carry(carry.problem, carry.net, result.theta, result.state, carry.step + self.unroll)
        self._loss_finite = bool(torch.isfinite(result.loss)) and bool(torch.isfinite(result.meta_loss))
        self.log("meta/loss", result.meta_loss, prog_bar=True)
        if len(self._horizons) > 1:
            self.log("meta/horizon", float(self.horizon))
        self.log("meta/final_loss", result.final_loss)
        for name, value in result.extra.items():
            self.log(f"meta/{name}", value)
        return result.loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the meta-step when the loss or any meta-gradient is NaN/Inf.

        Clearing every ``.grad`` makes ``torch.optim`` optimizers skip all parameters
        (weights, moments and step counts stay as they were).  Gradients are already
        all-reduced under DDP and the loss flag is agreed on, so all ranks decide alike.
        """
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        finite = self._loss_finite and (not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all()))
        finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self._nonfinite_in_row = 0
        else:
            optimizer.zero_grad(set_to_none=True)
            self._nonfinite_in_row += 1
            self._skipped += 1
            self._carry = None  # the problem diverged: start a fresh one
            self.estimator.reset()
            warnings.warn(
                f"meta-step {self.global_step} skipped: non-finite meta-loss or meta-gradient "
                f"({self._nonfinite_in_row} in a row, {self._skipped} in total); the optimizer weights are unchanged"
            )
            if self._nonfinite_in_row >= self.max_nonfinite_in_row:
                raise NonFiniteMetaLossError(
                    f"{self._nonfinite_in_row} meta-steps in a row had a non-finite meta-loss or meta-gradient, "
                    "so training stopped; the weights and checkpoints hold the last finite step. Lower "
                    "model.net.init_args.output_scale or the meta learning rate (model.meta_optimizer.lr), set "
                    "trainer.gradient_clip_val, or raise model.max_nonfinite_in_row to tolerate more."
                )
        self.log("meta/skipped_steps", float(self._skipped))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.meta_optimizer(self.net.parameters())

    def configure_callbacks(self) -> list[L.Callback]:
        """Keep the best optimizer by ``val/mean_loss`` and the latest state (``last.ckpt``), unless checkpointing is off.

        Nothing when the trainer holds them already (given by ``l2l``, or attached by an earlier
        ``fit`` of the same trainer): new ones would replace them, and Lightning says so.
        """
        callbacks = self.trainer.callbacks
        if self.trainer.checkpoint_callback is None or any(isinstance(c, LatestCheckpoint) for c in callbacks):
            return []
        return self.checkpoint_callbacks()

    def checkpoint_callbacks(self, dirpath: Optional[str] = None) -> list[L.Callback]:
        """The best checkpoint by ``val/mean_loss`` and ``last.ckpt``, for a trainer (``l2l`` passes them to its own).

        ``dirpath``: their folder (default: the logger's ``checkpoints/``), kept as given: Lightning
        compares it as a string with the folder a checkpoint recorded, and ``ModelCheckpoint(dirpath=)``
        would make it absolute.
        """
        best = ModelCheckpoint(
            monitor="val/mean_loss",
            mode="min",
            filename="best-step{step}-val_mean_loss{val/mean_loss:.4g}",
            auto_insert_metric_name=False,
        )
        best.dirpath = dirpath
        return [best, LatestCheckpoint(best)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Indices(self.truncations_per_epoch), batch_size=None)

    # ------------------------------------------------------------- evaluation
    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Indices(self._heldout["val"][0]), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Indices(self._heldout["test"][0]), batch_size=None)

    def heldout_problems(self, stage: Literal["val", "test"]) -> list[Problem]:
        """The fixed held-out problems of ``stage`` (drawn once, then cached)."""
        if stage not in self._problems:
            count, seed = self._heldout[stage]
            with torch.inference_mode(False):  # Lightning's test loop runs in inference mode
                self._problems[stage] = [
                    self.task.sample(torch.Generator().manual_seed(seed + i), self.device, split=stage)
                    for i in range(count)
                ]
        return self._problems[stage]

    def baseline(self, stage: Literal["val", "test"]) -> TunedBaseline:
        """Adam on the held-out problems of ``stage``, lr tuned on ``baseline_lrs`` (cached)."""
        if stage not in self._baselines:
            self._baselines[stage] = tune_baseline("adam", self.heldout_problems(stage), self.num_steps, self.baseline_lrs)
        return self._baselines[stage]

    def _evaluation_step(self, stage: Literal["val", "test"], index: int) -> None:
        curve = evaluate_learned(self.net, self.heldout_problems(stage)[index], self.num_steps)
        self.curves[stage].update(curve)

    def validation_step(self, batch: int, batch_idx: int) -> None:
        self._evaluation_step("val", batch)

    def test_step(self, batch: int, batch_idx: int) -> None:
        self._evaluation_step("test", batch)

    def _evaluation_end(self, stage: Literal["val", "test"]) -> None:
        curve = self.curves[stage].compute()
        self.curves[stage].reset()
        adam = self.baseline(stage)
        mean_loss, adam_mean = curve.mean().item(), adam.curve.mean().item()
        self.log_dict(
            {
                f"{stage}/mean_loss": mean_loss,
                f"{stage}/final_loss": curve[-1].item(),
                f"{stage}/adam_mean_loss": adam_mean,
                f"{stage}/adam_final_loss": adam.curve[-1].item(),
                f"{stage}/adam_lr": adam.lr,
                f"{stage}/mean_loss_ratio_to_adam": mean_loss / adam_mean if adam_mean > 0 else math.nan,
            },
            sync_dist=False,  # already reduced by torchmetrics / identical on every rank
        )
        if stage == "val" and not self.trainer.sanity_checking:
            self._advance_curriculum(mean_loss)  # the same value on every rank: the same decision
        if isinstance(self.logger, TensorBoardLogger) and self.global_rank == 0 and not self.trainer.sanity_checking:
            self._log_curves(stage, curve, adam)
            self._log_images(stage, adam)

    def _log_images(self, stage: str, adam: TunedBaseline) -> None:
        """For image optimizees (neural art): the first held-out problem's pictures, one row per optimizee.

        Columns: the problem's references (content, style), the learned optimizer's result and
        tuned Adam's, both after ``num_steps`` steps.
        """
        problem = self.heldout_problems(stage)[0]  # type: ignore[index]
        if not is_image_problem(problem):
            return
        columns = result_columns(problem, self.num_steps, {"learned": self.net}, {"adam": adam.lr})
        grid = grid_tensor(columns, problem.num_optimizees)
        self.logger.experiment.add_image(f"{stage}/optimizee_images", grid, self.global_step)

    def _log_curves(self, stage: str, curve: Tensor, adam: TunedBaseline) -> None:
        """Learned vs tuned Adam over the inner step, as a figure (val) and as step-indexed scalars (test)."""
        experiment = self.logger.experiment
        if stage == "test":
            for step, (ours, theirs) in enumerate(zip(curve.tolist(), adam.curve.tolist()), start=1):
                experiment.add_scalars("test/loss_vs_inner_step", {"learned": ours, "adam": theirs}, step)
            return
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        steps = range(1, len(curve) + 1)
        ax.semilogy(steps, curve.cpu(), label="learned (LSTM)")
        ax.semilogy(steps, adam.curve.cpu(), label=f"Adam, lr={adam.lr:g} (tuned)")
        ax.set_xlabel("inner step")
        ax.set_ylabel("mean optimizee loss")
        ax.legend()
        fig.tight_layout()
        experiment.add_figure(f"{stage}/loss_vs_inner_step", fig, self.global_step)
        plt.close(fig)

    def on_validation_epoch_end(self) -> None:
        self._evaluation_end("val")

    def on_test_epoch_end(self) -> None:
        self._evaluation_end("test")

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record how to rebuild the net, so deployment needs no MetaLearner to read it."""
        checkpoint[NET_KEY] = self.net.spec
        stream = self._stream_state()
        if stream is not None:
            checkpoint["l2l_stream"] = stream

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> "MetaLearner":  # type: ignore[override]
        """Lightning's loader, after checking that the file really is a MetaLearner checkpoint."""
        if isinstance(checkpoint_path, (str, os.PathLike)):
            checkpoint = load_plain(checkpoint_path)  # one clear CheckpointError for unreadable files
            _check_is_meta_learner_checkpoint(checkpoint, checkpoint_path)
            hparams = checkpoint.get("hyper_parameters")
            check_spec_allowed(hparams.get("net") if isinstance(hparams, dict) else None, str(checkpoint_path))
        # The checkpoint's own weights replace init_from's, so the file it names need not exist any more.
        kwargs.setdefault("init_from", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the net with the checkpoint's settings before its weights are loaded."""
        _check_is_meta_learner_checkpoint(checkpoint, "the checkpoint")
        self._resume = checkpoint.get("l2l_stream")
        spec = checkpoint[NET_KEY]
        if spec != self.net.spec:
            check_spec_allowed(spec, f"the checkpoint's {NET_KEY}")  # a file may only name allowed net classes
            # Said, not silent: `l2l test --config X --ckpt_path Y` evaluates Y's net, whatever X's model.net is.
            warnings.warn(
                f"the checkpoint's net ({_describe(spec)}) replaces model.net ({_describe(self.net.spec)}): a checkpoint "
                "is evaluated and resumed with the net it trained; drop model.net or make it match to silence this"
            )
            self.net = LearnedOptimizerNet.from_spec(spec, f"the checkpoint's {NET_KEY}").to(self.device)
            self._carry = None

    # ------------------------------------------------------------- exact resume
    def _stream_state(self) -> Optional[dict[str, Any]]:
        """Where meta-training is in its problem stream, as plain tensors and ints (``weights_only`` loads it).

        The current problem itself is not stored (it may hold a dataset); the generator's state from
        *before* it was drawn is, so a resumed run draws the very same problem again, then continues
        its optimizees from the stored parameters, LSTM state and inner step.
        """
        if self._generator is None:
            return None
        stream: dict[str, Any] = {
            "generator": self._generator.get_state(),
            "world_size": int(self.trainer.world_size) if self._trainer is not None else 1,
            "nonfinite_in_row": self._nonfinite_in_row,
            "skipped": self._skipped,
        }
        carry = self._carry
        if carry is not None and self._draw_state is not None:
            stream.update(
                draw_generator=self._draw_state.clone(),
                theta=carry.theta.detach().cpu().clone(),
                state=tree_map(lambda t: t.detach().cpu().clone(), carry.state),
                step=int(carry.step),
            )
        stream["estimator"] = self.estimator.state_dict()  # e.g. PES's perturbations, carried with the problem
        stream["curriculum"] = [self._stage, self._stage_best]
        if self.imitation is not None:
            stream["imitation"] = self.imitation.state_dict()  # the teacher's state for the carried problem
        return stream

    def _restore_stream(self, stream: dict[str, Any]) -> bool:
        """Continue the checkpoint's problem stream exactly; ``False`` (fresh stream) if it cannot be.

        One process only: under DDP every rank has its own stream and the checkpoint holds rank 0's,
        so each rank starts a fresh one as before.
        """
        self._resume = None
        if stream.get("world_size") != 1 or self.trainer.world_size != 1:
            return False
        self._generator = torch.Generator()
        self._nonfinite_in_row, self._skipped = int(stream["nonfinite_in_row"]), int(stream["skipped"])
        self._carry = None
        if "theta" not in stream:
            self._generator.set_state(stream["generator"])
            return True
        self._generator.set_state(stream["draw_generator"])
        self._draw_state = stream["draw_generator"].clone()
        problem = self._draw_training_problem()
        theta = stream["theta"].to(self.device)
        if not torch.equal(self._generator.get_state(), stream["generator"]) or (
            problem.initial_params().shape != theta.shape
        ):
            warnings.warn(
                "resuming: the checkpoint's current problem cannot be drawn again with this task (its settings "
                "differ from the run that saved it); starting a fresh problem, so this resume is not exact"
            )
            self._generator.set_state(stream["generator"])
            return True
        net = bind(self.net, problem)
        state = tree_map(lambda t: t.to(self.device), stream["state"])
        self._carry = _Carry(problem, net, theta, state, int(stream["step"]))
        return True
