"""The ``l2l`` command: LightningCLI over :class:`~l2l_lightning.MetaLearner`.

``l2l fit --config configs/quadratic.yaml`` meta-trains; ``l2l validate`` / ``l2l test``
evaluate a checkpoint (``--ckpt_path``).  After ``fit`` the best checkpoint is
evaluated on the held-out test problems unless ``--test_after_fit false``.
``l2l compare`` (not a LightningCLI subcommand, a jsonargparse one) runs
:func:`l2l_lightning.compare.compare`; ``l2l bench`` likewise runs :func:`l2l_lightning.bench.suite.bench`.

**Quiet by default.**  Every command prints its progress bars, its results table and the
warnings that ask the user to act, nothing else: Lightning's ``INFO`` messages (hardware
found, seeds set, advertising tips, checkpoints restored) are below the level of its loggers,
the model summary is off unless ``--trainer.enable_model_summary true``, and deprecation
warnings raised inside Lightning's own code (its calls into torch, which only a new Lightning
release can fix) are not shown.  ``--verbose`` (any subcommand) brings all of it back.
Warnings about this project's own mechanisms are fixed where they arise, not hidden here.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.cli import ArgsType, LightningCLI

from l2l_lightning.errors import CheckpointError, ConfigError, L2LError
from l2l_lightning.lightning_compat import CHECKPOINT_HPARAMS_METHOD, is_registry, resolve_ckpt_keyword
from l2l_lightning.meta.checkpoint_io import AtomicCheckpointIO, meta_learner_checkpoints
from l2l_lightning.meta.module import MetaLearner
from l2l_lightning.meta.settings import check_is_meta_learner_checkpoint
from l2l_lightning.safe_load import check_folder, load_plain
from l2l_lightning.serialization import FORMAT as EXPORT_FORMAT


class L2LCLI(LightningCLI):
    """LightningCLI restricted to the subcommands that make sense for meta-training.

    ``verbose``: the ``l2l --verbose`` flag (:func:`pop_verbose`); without it the model summary is off.
    """

    def __init__(self, *args: Any, verbose: bool = False, **kwargs: Any) -> None:
        self.verbose = verbose
        super().__init__(*args, **kwargs)

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

    def parse_arguments(self, parser: Any, args: ArgsType) -> None:
        """LightningCLI's parse, except that ``--model.net CLASS`` starts from CLASS's own defaults.

        jsonargparse would carry the previous net's ``init_args`` (the config's LSTM's
        ``hidden_size: 20``) into a new class that has an argument of the same name, silently:
        the run, its checkpoints and its exported file then record settings nobody chose.  A
        net class given on the command line is therefore reset (``--model.net null`` before it;
        settings given after it still apply), and when the reset changed a setting, one line on
        stderr says which and how to keep it.
        """
        argv = sys.argv[1:] if args is None else args
        if not isinstance(argv, list):
            return super().parse_arguments(parser, args)
        fresh = net_from_its_defaults(argv)
        if fresh != argv:  # both readings, without printing the config and exiting, to say what changed
            quiet = [token for token in argv if not token.startswith("--print_config")]
            inherited, reset = parser.parse_args(quiet), parser.parse_args(net_from_its_defaults(quiet))
            subcommand = reset.get("subcommand")
            note = _reset_note(inherited[subcommand].model.net, reset[subcommand].model.net)
            if note:
                print(f"l2l: note: {note}", file=sys.stderr)
        self.config = parser.parse_args(fresh)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config)
        check_ckpt_path(config.get("ckpt_path"))
        check_output_folders(config.get("trainer") or {})
        if not self.verbose and config.trainer.get("enable_model_summary") is None:
            config.trainer.enable_model_summary = False  # quiet unless asked; an explicit true is kept
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
        trainer_config = self._get(self.config_init, "trainer", default={})
        if "callbacks" not in kwargs and trainer_config.get("enable_checkpointing") is not False:
            given = trainer_config.get("callbacks") or []
            given = given if isinstance(given, list) else [given]
            if not any(isinstance(callback, Checkpoint) for callback in given):
                # The model's checkpoints go to the trainer itself, so Lightning creates no default
                # ModelCheckpoint for MetaLearner.configure_callbacks to replace (and announce).
                kwargs["callbacks"] = [*given, *meta_learner_checkpoints(self._evaluated_folder())]
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _evaluated_folder(self) -> Optional[str]:
        """For ``validate``/``test`` of a checkpoint: the folder its checkpoint callback saved to.

        They save nothing; they only take back the callback's state from the checkpoint (Lightning
        asks for them), and in a folder other than the saved one Lightning warns that the state
        "won't be reloaded".  ``fit`` writes into its own run's folder (``None``: the logger's).
        """
        config = self.config.get(self.subcommand, self.config)
        ckpt_path = config.get("ckpt_path")
        if self.subcommand == "fit" or not isinstance(ckpt_path, (str, os.PathLike)) or not os.path.isfile(ckpt_path):
            return None
        states = load_plain(ckpt_path).get("callbacks", {})
        return next((state.get("dirpath") for key, state in states.items() if key.startswith("ModelCheckpoint")), None)

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
            # The best checkpoint's own path, not "best", which Lightning resolves with a warning
            # when the trainer holds several checkpoint callbacks (best and last.ckpt's).  It only
            # exists once a validation ran; otherwise test the weights as they are.
            ckpt = getattr(callback, "best_model_path", "") or None
            self.trainer.test(self.model, ckpt_path=ckpt, verbose=True)


_NET_FLAG = "--model.net"


def net_from_its_defaults(argv: list[str]) -> list[str]:
    """``argv`` with ``--model.net null`` before every ``--model.net CLASS`` (see :meth:`L2LCLI.parse_arguments`).

    Left alone: ``null`` and a YAML/JSON mapping (it states its own ``init_args``).
    """
    out: list[str] = []
    for index, token in enumerate(argv):
        if token == _NET_FLAG and index + 1 < len(argv):
            value = argv[index + 1]
        elif token.startswith(_NET_FLAG + "="):
            value = token.split("=", 1)[1]
        else:
            value = None
        if value is not None and value.strip().lower() not in ("null", "none") and not value.lstrip().startswith("{"):
            out += [_NET_FLAG, "null"]
        out.append(token)
    return out


def _reset_note(inherited: Any, fresh: Any) -> Optional[str]:
    """What starting ``--model.net CLASS`` from its defaults changed, and how to keep it; ``None``: nothing."""
    if inherited is None or fresh is None:
        return None
    old, new = dict(inherited.get("init_args") or {}), dict(fresh.get("init_args") or {})
    changed = {key: (old[key], new.get(key)) for key in old if key in new and old[key] != new[key]}
    if not changed:
        return None
    said = ", ".join(f"{key}: {now!r} (not {was!r})" for key, (was, now) in changed.items())
    key, (was, _) = next(iter(changed.items()))
    return (
        f"--model.net {fresh.class_path} starts from its own defaults, not from the settings of the net it replaces: "
        f"{said}. To keep a setting, give it after the class, e.g. --model.net.{key} {was}"
    )


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


#: The loggers whose INFO messages quiet mode hides (rank-zero info, seeds, tips, restores).
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


#: Appended to the description of every ``--help``: the flag is the ``l2l`` command's, see :func:`pop_verbose`.
VERBOSE_HELP = (
    " Add --verbose to any command to also see Lightning's information messages, the model summary and "
    "the deprecation warnings raised inside Lightning."
)


def pop_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without the ``l2l`` command's own ``--verbose`` flag, and whether it was there.

    A flag of the command rather than of a subcommand's parser, because ``validate`` and
    ``test`` already have a ``--verbose`` (Lightning's, whether to print the results, true by
    default); that one is still theirs when given a value: ``l2l test --verbose false``.
    """
    kept, verbose = [], False
    for index, token in enumerate(argv):
        following = argv[index + 1].lower() if index + 1 < len(argv) else ""
        if token == "--verbose" and following not in ("true", "false"):
            verbose = True
        else:
            kept.append(token)
    return kept, verbose


def quiet_lightning() -> None:
    """Hide Lightning's INFO messages and the deprecation warnings raised in its code (``--verbose`` skips this).

    Through Lightning's own mechanism, the level of its ``logging`` loggers, plus one warnings
    filter for deprecations *attributed to* Lightning's modules (e.g. its use of a torch API that
    torch deprecated), which the user can do nothing about.  Run inside :func:`_output_settings`,
    which restores both afterwards.
    """
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"lightning\.")


@contextmanager
def _output_settings() -> Iterator[None]:
    """Logger levels and warning filters as they were before the command, whatever it changed."""
    levels = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def compare_main(args: list[str]) -> None:
    """``l2l compare``: see :func:`l2l_lightning.compare.compare` (every argument is a flag)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from l2l_lightning.compare import compare, format_table

    parser = ArgumentParser(prog="l2l compare", description=compare.__doc__.split("\n")[0] + VERBOSE_HELP)
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
    verbose = False
    if isinstance(argv, list):
        argv, verbose = pop_verbose(argv)
        if args is None:
            sys.argv[1:] = argv  # LightningCLI reads sys.argv itself (and warns when given both)
    with _output_settings():
        if not verbose:
            quiet_lightning()
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
                               "`l2l bench --help` to benchmark them on a suite of held-out tasks." + VERBOSE_HELP},
                args=None if args is None else argv,
                verbose=verbose,
            )
        except Exception as error:  # bad input: one line, no traceback
            cause = user_error(error)
            if cause is None:
                raise
            print(f"l2l: error: {cause}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
