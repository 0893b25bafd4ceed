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

import inspect
import warnings
from dataclasses import replace
from typing import Any, Literal, Optional, Sequence, Union

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader

from l2l_lightning.errors import NonFiniteMetaLossError
from l2l_lightning.lightning_compat import CLI_INSTANTIATOR, INSTANTIATOR_KEY
from l2l_lightning.meta.baselines import DEFAULT_LR_GRID, TunedBaseline
from l2l_lightning.meta.checkpoint_io import LatestCheckpoint, meta_learner_checkpoints
from l2l_lightning.meta.estimators import OuterEstimator, Truncation
from l2l_lightning.meta.evaluation import HeldOutEvaluation
from l2l_lightning.meta.imitation import Imitation
from l2l_lightning.meta.metrics import CurveMean
from l2l_lightning.meta.settings import (
    LossTransform, LossWeights, build_meta_optimizer, callable_spec, check_is_meta_learner_checkpoint,
    check_settings, checked_checkpoint_file, describe_spec, initial_net, loss_weights_for,
)  # fmt: skip
from l2l_lightning.meta.stream import ProblemStream, check_horizon_choices
from l2l_lightning.meta.unroll import evaluate_learned
from l2l_lightning.nets.base import LearnedOptimizerNet
from l2l_lightning.serialization import NET_KEY, net_from_spec
from l2l_lightning.tasks.base import Problem, Task
from l2l_lightning.threads import ThreadPolicy, check_threads

__all__ = ["MetaLearner", "check_is_meta_learner_checkpoint", "loss_weights_for"]


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
        horizon_choices: draw each training problem's horizon from this list (multiples of
            ``unroll``, at most ``num_steps``), so that a net with a learned schedule
            (``schedule: true``) meets runs of several lengths.  ``None`` (default): all ``num_steps``.
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
        horizon_choices: Optional[list[int]] = None,
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
        self.estimator, self.imitation, horizons = check_settings(
            task, net, estimator, imitation,
            counts=dict(num_steps=num_steps, unroll=unroll, truncations_per_epoch=truncations_per_epoch,
                        val_problems=val_problems, test_problems=test_problems, max_nonfinite_in_row=max_nonfinite_in_row),
            options=dict(second_derivatives=second_derivatives, loss_transform=loss_transform, random_scaling=random_scaling,
                         horizon_curriculum=horizon_curriculum, baseline_lrs=baseline_lrs),
        )  # fmt: skip
        self._threads = ThreadPolicy(check_threads(threads, "MetaLearner: threads"))
        self.task, self.loss_transform, self.random_scaling = task, loss_transform, float(random_scaling)
        self.net = initial_net(net, init_from)
        self._save_hyperparameters_as_data(meta_optimizer)
        self.num_steps, self.unroll, self.second_derivatives = num_steps, unroll, second_derivatives
        self.meta_optimizer, self.truncations_per_epoch = meta_optimizer, truncations_per_epoch
        self.baseline_lrs = tuple(float(lr) for lr in baseline_lrs)
        self.max_nonfinite_in_row = max_nonfinite_in_row
        self.register_buffer("loss_weights", loss_weights_for(loss_weights, num_steps), persistent=False)
        self.curves = nn.ModuleDict({stage: CurveMean(num_steps) for stage in ("val", "test")})
        draws = {"val": (val_problems, val_seed), "test": (test_problems, test_seed)}
        self.evaluation = HeldOutEvaluation(task, num_steps, self.baseline_lrs, draws)
        choices = check_horizon_choices(horizon_choices, num_steps, unroll, horizon_curriculum)
        self.stream = ProblemStream(task, self.random_scaling, horizons, choices)
        self._loss_finite, self._nonfinite_in_row, self._skipped = True, 0, 0
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
        optimizer_spec = callable_spec(meta_optimizer)
        if optimizer_spec is not None:
            self.hparams["meta_optimizer"] = optimizer_spec
        elif not isinstance(self.hparams.get("meta_optimizer"), dict):
            self.hparams.pop("meta_optimizer", None)  # a lambda: the checkpoint falls back to the default
        self.hparams[INSTANTIATOR_KEY] = CLI_INSTANTIATOR

    # ------------------------------------------------------------------ threads
    def setup(self, stage: str) -> None:
        """Set the thread count before anything runs (the first stage decides it; ``l2l fit`` then tests).

        The decision needs the work per op: the size of one problem, drawn here on the CPU from the
        data split the stage uses (``fit`` may run without validation data), with a generator of
        its own, so the training stream and the held-out problems are untouched.
        """
        if not self._threads.ready:
            split = {"validate": "val", "test": "test"}.get(stage, "train")
            problem = self.task.sample(torch.Generator().manual_seed(0), "cpu", split=split)
            self._threads.apply(problem.initial_params().numel())
        self._threads.apply()

    def teardown(self, stage: str) -> None:
        """Give the caller its thread count back."""
        self._threads.restore()

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
            return
        self.stream.start(seed)  # each rank, and each resumed run, draws its own stream of problems

    @property
    def horizon(self) -> int:
        """Inner steps per training problem now: ``num_steps``, or the current curriculum stage's."""
        return self.stream.horizon

    def objective(self, losses: Tensor, start: int) -> Tensor:
        """The meta-loss of a truncation's ``(steps, optimizees)`` losses after inner step ``start``:
        ``Σ_t w_t · mean_i f_i(θ_t)`` (or of ``log f_i`` with ``loss_transform="log"``)."""
        per_step = losses.mean(dim=1) if self.loss_transform == "none" else losses.clamp_min(1e-30).log().mean(dim=1)
        return (per_step * self.loss_weights[start : start + losses.shape[0]]).sum()

    def training_step(self, batch: int, batch_idx: int) -> Tensor:
        carry, fresh = self.stream.next_carry(self.net, self.device)
        if fresh and self.imitation is not None:
            self.imitation.reset()  # the teacher starts afresh with the problem
        run = Truncation(
            self.net, carry.bound, carry.problem, carry.theta, carry.state, carry.step, self.unroll,
            fresh=carry.step == 0, objective=self.objective, horizon=self.stream.horizon_of(carry),
            second_derivatives=self.second_derivatives, imitation=self.imitation,
        )  # fmt: skip
        result = self.estimator.truncation(run)
        self.stream.carry = replace(carry, theta=result.theta, state=result.state, step=carry.step + self.unroll)
        self._loss_finite = bool(torch.isfinite(result.loss)) and bool(torch.isfinite(result.meta_loss))
        self.log("meta/loss", result.meta_loss, prog_bar=True)
        if len(self.stream.horizons) > 1 or self.stream.choices:
            self.log("meta/horizon", float(run.horizon))
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
            self.stream.carry = None  # the problem diverged: start a fresh one
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
        return build_meta_optimizer(self.meta_optimizer, self.net.parameters())

    def configure_callbacks(self) -> list[L.Callback]:
        """The best checkpoint by ``val/mean_loss`` and ``last.ckpt``, unless checkpointing is off or the trainer
        has them already (``l2l`` gives them; an earlier ``fit`` attached them): Lightning would announce replacing them."""
        callbacks = self.trainer.callbacks
        if self.trainer.checkpoint_callback is None or any(isinstance(c, LatestCheckpoint) for c in callbacks):
            return []
        return meta_learner_checkpoints()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(range(self.truncations_per_epoch), batch_size=None)  # the "batches" are truncation indices

    # ------------------------------------------------------------- evaluation
    def val_dataloader(self) -> DataLoader:
        return DataLoader(range(self.evaluation.draws["val"][0]), batch_size=None)  # held-out draw indices

    def test_dataloader(self) -> DataLoader:
        return DataLoader(range(self.evaluation.draws["test"][0]), batch_size=None)

    def heldout_problems(self, stage: Literal["val", "test"]) -> list[Problem]:
        """The fixed held-out problems of ``stage`` (drawn once, then cached)."""
        return self.evaluation.problems(stage, self.device)

    def baseline(self, stage: Literal["val", "test"]) -> TunedBaseline:
        """Adam on the held-out problems of ``stage``, lr tuned on ``baseline_lrs`` (cached)."""
        return self.evaluation.baseline(stage, self.device)

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
        scalars = self.evaluation.scalars(stage, curve, self.device)
        self.log_dict(scalars, sync_dist=False)  # already reduced by torchmetrics / identical on every rank
        if stage == "val" and not self.trainer.sanity_checking:
            self.stream.advance_curriculum(scalars["val/mean_loss"])  # the same value on every rank: the same decision
        if isinstance(self.logger, TensorBoardLogger) and self.global_rank == 0 and not self.trainer.sanity_checking:
            self.evaluation.log_figures(self.logger.experiment, stage, curve, self.net, self.global_step, self.device)

    def on_validation_epoch_end(self) -> None:
        self._evaluation_end("val")

    def on_test_epoch_end(self) -> None:
        self._evaluation_end("test")

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record how to rebuild the net, so deployment needs no MetaLearner to read it; and the problem stream."""
        checkpoint[NET_KEY] = self.net.spec
        if self.stream.generator is not None:
            checkpoint["l2l_stream"] = {
                **self.stream.state_dict(),
                "world_size": int(self.trainer.world_size) if _attached(self) else 1,
                "nonfinite_in_row": self._nonfinite_in_row,
                "skipped": self._skipped,
                "estimator": self.estimator.state_dict(),  # e.g. PES's perturbations, carried with the problem
                **({"imitation": self.imitation.state_dict()} if self.imitation is not None else {}),
            }

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> "MetaLearner":  # type: ignore[override]
        """Lightning's loader, reading plain data only, inside :func:`~l2l_lightning.meta.settings.checked_checkpoint_file`."""
        # The checkpoint's own weights replace init_from's, so the file it names need not exist any more.
        kwargs.setdefault("init_from", None)
        kwargs["weights_only"] = True  # passed explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot undo it
        with checked_checkpoint_file(checkpoint_path, given=kwargs):
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the net with the checkpoint's settings before its weights are loaded."""
        check_is_meta_learner_checkpoint(checkpoint, "the checkpoint")
        self._resume = checkpoint.get("l2l_stream")
        spec = checkpoint[NET_KEY]
        if spec != self.net.spec:
            warnings.warn(  # said, not silent: `l2l test --config X --ckpt_path Y` evaluates Y's net
                f"the checkpoint's net ({describe_spec(spec)}) replaces model.net ({describe_spec(self.net.spec)}): "
                "a checkpoint is evaluated and resumed with the net it trained; drop model.net or make it match"
            )
            self.net = net_from_spec(spec, f"the checkpoint's {NET_KEY}").to(self.device)  # checked, then built
            self.stream.carry = None

    def _restore_stream(self, stream: dict[str, Any]) -> bool:
        """Continue the checkpoint's problem stream exactly; ``False`` (fresh stream) if it cannot be.

        One process only: under DDP every rank has its own stream and the checkpoint holds rank 0's,
        so each rank starts a fresh one as before.
        """
        self._resume = None
        if stream.get("world_size") != 1 or self.trainer.world_size != 1:
            return False
        self._nonfinite_in_row, self._skipped = int(stream["nonfinite_in_row"]), int(stream["skipped"])
        self.stream.load_state_dict(stream, self.net, self.device)
        return True


def _attached(module: L.LightningModule) -> bool:
    """Whether ``module`` is attached to a trainer (Lightning's public ``trainer`` property raises if not)."""
    try:
        return module.trainer is not None
    except RuntimeError:
        return False
