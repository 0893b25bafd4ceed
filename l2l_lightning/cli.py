"""The ``l2l`` command: LightningCLI over :class:`~l2l_lightning.MetaLearner`.

``l2l fit --config configs/quadratic.yaml`` meta-trains; ``l2l validate`` / ``l2l test``
evaluate a checkpoint (``--ckpt_path``).  After ``fit`` the best checkpoint is
evaluated on the held-out test problems unless ``--test_after_fit false``.
``l2l compare`` (not a LightningCLI subcommand, a jsonargparse one) runs
:func:`l2l_lightning.compare.compare`; ``l2l bench`` likewise runs :func:`l2l_lightning.bench.suite.bench`.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import ArgsType, LightningCLI

from l2l_lightning.errors import CheckpointError, ConfigError, L2LError
from l2l_lightning.lightning_compat import CHECKPOINT_HPARAMS_METHOD, is_registry, resolve_ckpt_keyword
from l2l_lightning.meta.checkpoint_io import AtomicCheckpointIO
from l2l_lightning.meta.module import MetaLearner
from l2l_lightning.meta.settings import check_is_meta_learner_checkpoint
from l2l_lightning.safe_load import check_folder, load_plain
from l2l_lightning.serialization import FORMAT as EXPORT_FORMAT


class L2LCLI(LightningCLI):
    """LightningCLI restricted to the subcommands that make sense for meta-training."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        return {name: commands[name] for name in ("fit", "validate", "test")}

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, evaluate the best checkpoint on the held-out test problems.",
        )

    def _ignore_checkpoint_hparams(self) -> None:
        """Let the command line, not the checkpoint, decide the task and the evaluation.

        LightningCLI would overwrite the parsed config with the checkpoint's hyper-parameters,
        so ``l2l test --ckpt_path X --model.test_problems 8`` or ``--model.num_steps 200`` would
        silently evaluate the training settings.  The checkpoint still decides the net: its
        architecture and weights are restored by ``MetaLearner.on_load_checkpoint``.  Installed
        under LightningCLI's private name for that step (:mod:`l2l_lightning.lightning_compat`).
        """

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config)
        check_ckpt_path(config.get("ckpt_path"))
        check_output_folders(config.get("trainer") or {})
        if config.get("lr_scheduler") is not None and config.get("optimizer") is None:
            # LightningCLI would silently ignore it: the scheduler needs the optimizer it schedules.
            raise ConfigError(
                "--lr_scheduler is only applied together with --optimizer; to schedule the meta-optimizer, "
                "also give --optimizer (e.g. --optimizer torch.optim.Adam --optimizer.lr 0.001)"
            )

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Lightning's trainer, saving its checkpoints atomically unless a checkpoint IO plugin was given.

        Lightning's own save writes a temporary file in the system's temp folder and moves it over
        the checkpoint, which is a plain copy (a crash leaves half a file) when that folder is on
        another file system, and never fsyncs; :class:`~l2l_lightning.meta.checkpoint_io.AtomicCheckpointIO`
        writes next to the checkpoint, fsyncs and renames.
        """
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def before_fit(self) -> None:
        self._resolve_ckpt_keyword("fit")

    def before_validate(self) -> None:
        self._resolve_ckpt_keyword("validate")

    def before_test(self) -> None:
        self._resolve_ckpt_keyword("test")

    def _resolve_ckpt_keyword(self, subcommand: str) -> None:
        """``--ckpt_path best|last|hpc``: the file Lightning would load, checked like any ``--ckpt_path``
        and passed on as that file; an error where there is none.

        Lightning only warns when ``last`` finds no checkpoint, then evaluates untrained weights;
        ``l2l fit --ckpt_path last`` keeps Lightning's meaning there (a fresh start before the first run).
        """
        config = self.config_init[subcommand]
        keyword = config.get("ckpt_path")
        if keyword not in _LIGHTNING_CKPT_KEYWORDS:
            return
        how = "pass the checkpoint file instead, e.g. --ckpt_path runs/quadratic/version_0/checkpoints/last.ckpt"
        if keyword == "best":
            raise ConfigError(
                "--ckpt_path best means the best checkpoint of an earlier fit in the same process, and "
                f"`l2l {subcommand}` has none: {how}"
            )
        where = {"last": "for this run's logger and trainer", "hpc": "(hpc_ckpt_<N>.ckpt) in --trainer.default_root_dir"}
        try:
            resolved = resolve_ckpt_keyword(self.trainer, subcommand, keyword)
        except ValueError as error:  # Lightning's own "no HPC checkpoint was found"
            resolved, cause = None, error
        else:
            cause = None
        if resolved is None and subcommand == "fit" and keyword == "last":
            return
        if resolved is None:
            message = f"--ckpt_path {keyword}: there is no {keyword} checkpoint {where[keyword]}; {how}"
            raise ConfigError(message) from cause
        check_ckpt_path(resolved)
        config["ckpt_path"] = resolved

    def after_fit(self) -> None:
        if self.config["fit"]["test_after_fit"] and not self.trainer.interrupted:
            callback = self.trainer.checkpoint_callback
            # "best" only exists once a validation ran; otherwise test the weights as they are.
            ckpt = "best" if callback is not None and getattr(callback, "best_model_path", "") else None
            self.trainer.test(self.model, ckpt_path=ckpt, verbose=True)


#: ``--ckpt_path`` values that Lightning resolves itself rather than reading a file.
_LIGHTNING_CKPT_KEYWORDS = ("best", "last", "hpc")


def check_ckpt_path(ckpt_path: Any) -> None:
    """Before Lightning reads ``--ckpt_path``: one clear error if it is not a MetaLearner checkpoint.

    Lightning would fail deep inside with a bare ``KeyError``, ``UnpicklingError`` or
    ``OSError`` for an exported optimizer, a file of random bytes or a truncated file.  The
    file is read here once more with ``weights_only=True`` (a MetaLearner checkpoint is a
    few hundred kB, so reading it twice costs nothing worth a traceback).
    """
    if not isinstance(ckpt_path, (str, os.PathLike)):
        return
    text = str(ckpt_path)
    if text in _LIGHTNING_CKPT_KEYWORDS or is_registry(text):
        return  # resolved by Lightning; the file it then reads goes through AtomicCheckpointIO.load_checkpoint
    if not text.strip():
        raise ConfigError("--ckpt_path is empty; give a .ckpt written by `l2l fit`, or leave it out")
    checkpoint = load_plain(ckpt_path)  # a URL is refused here, not fetched (see safe_load.check_local)
    if isinstance(checkpoint, dict) and checkpoint.get("format") == EXPORT_FORMAT:
        raise CheckpointError(
            f"--ckpt_path {text} is an exported learned optimizer (written by l2l-export), not a MetaLearner "
            "checkpoint: pass a .ckpt written by `l2l fit`; to use an exported optimizer, give it to "
            "`l2l compare --learned` or to LearnedOptimizer(checkpoint=...)"
        )
    if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"--ckpt_path {text} is not a Lightning checkpoint (no 'pytorch-lightning_version' and 'state_dict'); "
            "pass a .ckpt written by `l2l fit`"
        )
    check_is_meta_learner_checkpoint(checkpoint, f"--ckpt_path {text}")


def check_output_folders(trainer: Any) -> None:
    """A clear error, before anything runs, for ``default_root_dir`` or a logger's ``save_dir`` that is a file."""
    if isinstance(trainer.get("default_root_dir"), (str, os.PathLike)):
        check_folder(trainer["default_root_dir"], "--trainer.default_root_dir")
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        save_dir = init_args.get("save_dir") if hasattr(init_args, "get") else None
        if isinstance(save_dir, (str, os.PathLike)):
            check_folder(save_dir, "--trainer.logger.init_args.save_dir")


def check_config_files(args: Any) -> None:
    """``--config FILE`` must be text: jsonargparse ends in a ``UnicodeDecodeError`` traceback on binary files."""
    if not isinstance(args, list):
        return
    for index, arg in enumerate(args):
        if arg == "--config" and index + 1 < len(args):
            path = args[index + 1]
        elif isinstance(arg, str) and arg.startswith("--config="):
            path = arg.partition("=")[2]
        else:
            continue
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as file:
                    file.read()
            except UnicodeDecodeError as error:
                message = f"--config {path} is not a text (YAML) file: {error.reason} at byte {error.start}"
                raise ConfigError(message) from error


def user_error(error: BaseException) -> Optional[BaseException]:
    """The user error behind ``error``, if there is one: an L2L error, a missing file, or either of
    them wrapped by jsonargparse.

    jsonargparse turns a ``ConfigError`` raised while building a class of an ``Optional[...]`` or
    union-typed setting (``--model.net``, ``--model.estimator``, …) into a ``ValueError`` raised
    *from* it, at any depth; following ``__cause__`` finds it wherever it was raised.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (L2LError, FileNotFoundError)):
            return error
        seen.add(id(error))
        error = error.__cause__
    return None


setattr(L2LCLI, CHECKPOINT_HPARAMS_METHOD, L2LCLI._ignore_checkpoint_hparams)


def compare_main(args: list[str]) -> None:
    """``l2l compare``: see :func:`l2l_lightning.compare.compare` (every argument is a flag)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from l2l_lightning.compare import compare, format_table

    parser = ArgumentParser(prog="l2l compare", description=compare.__doc__.split("\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the flags below")
    parser.add_function_arguments(compare, fail_untyped=True)
    config = parser.parse_args(args)
    config.pop("config", None)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    results = compare(**instantiate(config).as_dict())
    print(format_table(results))
    if config.out_dir is not None:
        print(f"table, figure and TensorBoard runs written to {config.out_dir}/")


def bench_main(args: list[str]) -> None:
    """``l2l bench``: see :func:`l2l_lightning.bench.suite.bench` (every argument is a flag)."""
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    from l2l_lightning.bench.outputs import format_table
    from l2l_lightning.bench.suite import bench

    parser = ArgumentParser(prog="l2l bench", description=bench.__doc__.split("\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the flags below")
    parser.add_function_arguments(bench, fail_untyped=True, skip={"quick"})
    parser.add_argument("--quick", action=ActionYesNo, default=False, help="a smoke test of the whole pipeline in seconds (--no_quick: off)")
    config = parser.parse_args(args)
    config.pop("config", None)
    result = bench(**config.as_dict())
    print(format_table(result))
    if config.out_dir is not None:
        print(f"table, figures and TensorBoard runs written to {config.out_dir}/")


def main(args: Optional[ArgsType] = None) -> None:
    """Entry point of the ``l2l`` console script."""
    argv = sys.argv[1:] if args is None else args
    try:
        check_config_files(argv)
        if isinstance(argv, list) and argv[:1] == ["compare"]:
            return compare_main(argv[1:])
        if isinstance(argv, list) and argv[:1] == ["bench"]:
            return bench_main(argv[1:])
        L2LCLI(
            MetaLearner,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": "Meta-train learned optimizers (fit/validate/test). "
                           "Also: `l2l compare --help` to compare trained optimizers with tuned baselines, "
                           "`l2l bench --help` to benchmark them on a suite of held-out tasks."},
            args=args,
        )
    except Exception as error:  # bad input: one line, no traceback
        cause = user_error(error)
        if cause is None:
            raise
        print(f"l2l: error: {cause}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
