"""Reading files without running code from them, and writing them so that a crash loses nothing.

Every file l2l_lightning reads (exported optimizers, ``MetaLearner`` checkpoints, the
``--ckpt_path`` of ``l2l``) may come from someone else, so three rules hold everywhere:

* **Local files only.** A URL is refused, never fetched (:func:`check_local` says why).
* **Nothing is unpickled in full.** Files are read with ``torch.load(weights_only=True)``,
  passed explicitly (so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot flip it), whatever their
  suffix: a pickle can run any code while it loads, before anything could check it.  The
  project's own checkpoints and exports hold plain data only (tensors, dicts, lists,
  strings, numbers), so they load this way; a file holding pickled objects
  is a :class:`~l2l_lightning.errors.CheckpointError` that says how to make a safe one.
* **A file names only classes it is allowed to name.** Exported files and checkpoints
  describe their net as ``{"class_path", "init_args"}``.  Rebuilding it imports the
  module of ``class_path``, and importing a module runs it; so only modules on the
  *allowed list* are imported for a file: ``l2l_lightning`` (and its submodules) by
  default, plus the modules you allow, either with :func:`allow_modules` or with the
  environment variable ``L2L_ALLOWED_MODULES`` (comma-separated, e.g.
  ``L2L_ALLOWED_MODULES=mypackage.nets,otherpkg``; a module allows its submodules).
  :func:`check_spec_allowed` finds every class a file names, at any depth, before anything
  is imported, and refuses nesting deeper than :data:`MAX_NESTING` rather than stop walking.
  A net class_path you write in a config is your own input and is not restricted.

Writes go through :func:`atomic_save`: a temporary file in the target's folder, flushed
and fsynced, then ``os.replace``; a process killed mid-write leaves the previous file
as it was.  :class:`~l2l_lightning.meta.checkpoint_io.AtomicCheckpointIO` does the same for
Lightning checkpoints (the ``l2l`` command uses it): Lightning's own save writes through a temporary file in the
system's temp folder and *moves* it, which is a copy over the old file (not atomic)
when that folder is on another file system, and it never fsyncs.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pickle
import re
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Optional, Union

import torch

from l2l_lightning.errors import CheckpointError, ConfigError

#: The environment variable listing extra modules whose classes files may name.
ALLOWED_MODULES_ENV = "L2L_ALLOWED_MODULES"
_DEFAULT_ALLOWED = ("l2l_lightning",)
_allowed_by_call: set[str] = set()

_HOW_TO_MAKE_SAFE = (
    "Checkpoints written by `l2l fit` / MetaLearner and files written by `l2l-export` hold plain data only. "
    "If you trust this file, convert it in a trusted environment: load it there with "
    "torch.load(path, weights_only=False) and torch.save only its plain parts (tensors, dicts, lists, "
    "strings, numbers), or export it there with `l2l-export`"
)


def allow_modules(*modules: str) -> None:
    """Let files name classes of ``modules`` (and their submodules), for this process.

    For nets of your own package saved in exported files or checkpoints, e.g.
    ``allow_modules("mypackage.nets")`` before ``LearnedOptimizer(..., checkpoint="mine.pt")``.
    The same as listing them in ``L2L_ALLOWED_MODULES``.
    """
    for module in modules:
        if not isinstance(module, str) or not module.strip(".") or " " in module:
            raise CheckpointError(f"allow_modules: {module!r} is not a module name such as 'mypackage.nets'")
        _allowed_by_call.add(module.strip("."))


def allowed_modules() -> tuple[str, ...]:
    """The modules whose classes files may name: l2l_lightning, ``L2L_ALLOWED_MODULES``, :func:`allow_modules`."""
    from_env = [m.strip().strip(".") for m in os.environ.get(ALLOWED_MODULES_ENV, "").split(",")]
    return tuple(dict.fromkeys([*_DEFAULT_ALLOWED, *(m for m in from_env if m), *sorted(_allowed_by_call)]))


def is_allowed(class_path: str, also_allowed: tuple[str, ...] = ()) -> bool:
    """Whether the module of ``class_path`` is an allowed module (or ``also_allowed``) or inside one."""
    module = class_path.rpartition(".")[0]
    allowed_list = (*allowed_modules(), *also_allowed)
    return any(module == allowed or module.startswith(allowed + ".") for allowed in allowed_list)


#: How many levels of dicts and lists a file's class-naming parts may nest (net specs,
#: hyper-parameters).  The project's own deepest is a RoutedNets spec inside the hyper-parameters
#: (six levels); anything deeper is refused, never walked partly, so no nesting outruns the check.
MAX_NESTING = 16
#: A dotted string such as ``pkg.mod.Class``: jsonargparse imports one when a class is expected.
_IMPORT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def check_spec_allowed(spec: Any, source: str, also_allowed: tuple[str, ...] = ()) -> list[str]:
    """Refuse a spec read from a file if anything in it names a module outside the allowed ones;
    checked *before* anything is imported, at every depth (deeper than :data:`MAX_NESTING` is refused).

    What counts as naming a module: every ``class_path``, and every other string that is a dotted
    import path (``pkg.mod.Class``) of an importable top-level package, because jsonargparse
    imports such a string wherever a class is expected (a hyper-parameter ``task:
    "pkg.Task"``, a :class:`~l2l_lightning.nets.RoutedNets` route given as a string).  Nested
    specs matter: a ``RoutedNets`` lists its nets' class_paths in its ``init_args``, and those
    are imported when it is built.  ``also_allowed`` adds modules for this spec only (e.g.
    ``torch.optim`` for a meta-optimizer).

    Returns:
        The ``class_path`` values, all allowed, so that a caller can import them deliberately.
    """
    named = _named_modules(spec, source)
    for class_path, _ in named:
        if not is_allowed(class_path, also_allowed):
            module = class_path.rpartition(".")[0] or class_path
            raise CheckpointError(
                f"{source} names the class {class_path!r}, outside the modules files may name "
                f"({', '.join([*allowed_modules(), *also_allowed])}); l2l_lightning does not import a module just "
                f"because a file names it. If you trust the file and its class, allow the module: "
                f"{ALLOWED_MODULES_ENV}={module} in the environment, or "
                f"l2l_lightning.safe_load.allow_modules({module!r}) in Python"
            )
    return [class_path for class_path, is_class_path in named if is_class_path]


def _named_modules(value: Any, source: str, depth: int = 0, key: Any = None) -> list[tuple[str, bool]]:
    """Every import path in a nested structure of dicts and lists (see :func:`check_spec_allowed`),
    each with whether it is a ``class_path`` value."""
    if isinstance(value, (Mapping, list, tuple)) and depth >= MAX_NESTING:
        raise CheckpointError(
            f"{source} nests its settings more than {MAX_NESTING} levels deep; files written by l2l_lightning "
            "are a few levels deep, so this file was not written by it and is refused unread"
        )
    if isinstance(value, Mapping):
        found = []
        for item_key, item in value.items():
            found += _named_modules(item, source, depth + 1, item_key)
        return found
    if isinstance(value, (list, tuple)):
        return [path for item in value for path in _named_modules(item, source, depth + 1)]
    if key == "class_path":
        if not isinstance(value, str):
            raise CheckpointError(
                f"{source}: a class_path must be a string such as 'l2l_lightning.CoordinatewiseLSTM', got {value!r}"
            )
        return [(value, True)]
    return [(value, False)] if isinstance(value, str) and _IMPORT_PATH.match(value) and _importable(value) else []


def _importable(path: str) -> bool:
    """Whether the top-level package of ``path`` could be imported (looked up, not run)."""
    top = path.partition(".")[0]
    if top in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def load_plain(path: Union[str, "os.PathLike[str]", IO[bytes]]) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one clear error for each way it fails.

    ``path`` is a local file (or an open binary file, read from where it stands and rewound).  A URL
    is refused, not fetched: see :func:`check_local`.

    Raises:
        CheckpointError: a URL, no such file, a folder, pickled objects (which are never
            unpickled), or not a torch file at all / truncated / corrupt.
    """
    if hasattr(path, "read"):
        start = path.tell()
        try:
            return _load(path, Path(getattr(path, "name", "<file object>")))
        finally:
            path.seek(start)
    check_local(path)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such file: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is a folder, not a file")
    return _load(path, path)


def check_local(path: Union[str, "os.PathLike[str]"]) -> None:
    """Refuse a URL (``http://``, ``file://``, ``s3://`` …) where a file is read.

    Remote files are not fetched, on purpose: Lightning reads ``http(s)`` checkpoints with
    ``weights_only=False`` (their pickles run) and other URLs through fsspec, and a file checked
    here and then fetched again by Lightning need not be the same file.  Downloading it yourself
    makes it a local file, read like any other.
    """
    text = os.fspath(path)
    if "://" not in text:
        return
    scheme = text.partition("://")[0]
    how = (
        f"pass the path itself ({text.partition('://')[2] or '/…'})"
        if scheme.lower() == "file"
        else f"download it first (e.g. curl -fLo model.ckpt '{text}') and pass the local file"
    )
    raise CheckpointError(f"{text} is a URL; l2l_lightning reads local files only, never fetches a checkpoint: {how}")


def _load(file: Union[Path, IO[bytes]], path: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_global(str(error))
        if refused is not None:
            raise CheckpointError(
                f"{path} holds pickled Python objects ({refused}); l2l_lightning never unpickles them, since "
                f"loading them can run arbitrary code. {_HOW_TO_MAKE_SAFE}."
            ) from error
        raise _unreadable(path, error) from error
    except OSError as error:
        if isinstance(error, PermissionError):
            raise CheckpointError(f"{path} cannot be read: {error}") from error
        raise _unreadable(path, error) from error
    except Exception as error:  # noqa: BLE001 - torch raises IndexError, KeyError, EOFError, RuntimeError...
        raise _unreadable(path, error) from error


def _refused_global(message: str) -> Optional[str]:
    """From torch's weights-only error, the object the file wanted to unpickle (``None``: not that error)."""
    for line in message.splitlines():
        line = line.strip()
        if "GLOBAL" in line and ("Unsupported" in line or "unsupported" in line):
            return line.rstrip(".")
    return None


def _unreadable(path: Path, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path} cannot be read by torch.load: it is not a file written by torch.save, or it is truncated or "
        f"corrupt ({_torch_reason(error)}); expected a learned optimizer "
        "exported with `l2l-export` or a MetaLearner checkpoint (.ckpt) written by `l2l fit`"
    )


def _torch_reason(error: BaseException) -> str:
    """What torch found wrong, without its advice.

    torch's weights-only error opens with "Re-running `torch.load` with `weights_only` set to
    `False` will likely succeed": exactly what must not be done with a file that may be
    anyone's.  Only the unpickler's own finding (e.g. "Unsupported operand 149") is kept.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if any("weights_only" in line for line in lines):
        findings = [line for line in lines if not any(word in line for word in ("weights_only", "WeightsUnpickler", "documentation"))]
        lines = findings
    first = lines[0][:200] if lines else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def atomic_save(obj: Any, path: Union[str, "os.PathLike[str]"]) -> None:
    """``torch.save(obj, path)`` such that ``path`` holds either its old content or all of the new.

    Writes a temporary file next to ``path`` (same file system, so the final
    ``os.replace`` is atomic), fsyncs it, replaces, then fsyncs the folder so the rename
    itself survives a power cut.  On any error the temporary file is removed and ``path``
    is untouched.  Errors that are about the path (a folder, no permission) raise
    :class:`CheckpointError` naming it.

    The file gets the permissions ``open(path, "w")`` would give it: an existing file's
    mode, else ``0o666`` less the umask (``tempfile.mkstemp`` would make it ``0o600``, so
    colleagues on a shared cluster could not read a run's checkpoints).  Temporary files
    left next to ``path`` by a save that was killed are removed first.
    """
    path = Path(path)
    check_writable_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        tmp, handle = _create_temporary(path)
    except OSError as error:
        raise CheckpointError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as error:  # e.g. the disk is full: the old file stays, the partial one goes
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {error.strerror or error}; the previous file is unchanged") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _temporary_name(path: Path, token: str) -> str:
    return f".{path.name}.{token}.tmp"


def _create_temporary(path: Path) -> tuple[Path, int]:
    """A new, empty temporary file next to ``path``, created as ``open(path, "w")`` would create ``path``.

    ``os.open`` with mode ``0o666`` lets the kernel apply the umask, as for any new file (no
    process-wide ``os.umask`` juggling, which would race with other threads); an existing
    target's mode is copied, since ``open(path, "w")`` keeps it.
    """
    while True:
        tmp = path.parent / _temporary_name(path, os.urandom(6).hex())
        try:
            handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:  # a 48-bit collision: draw again
            continue
    try:
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
    except FileNotFoundError:
        pass
    return tmp, handle


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of earlier saves to ``path`` that never reached their rename (a killed process).

    Only names this module makes for ``path`` are touched.  Two processes saving the same file
    at the same moment is not supported anyway (one rename would silently win); Lightning saves
    from rank 0 only.
    """
    pattern = re.compile(re.escape(_temporary_name(path, "@")).replace("@", "[0-9a-f]{12}") + r"\Z")
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if pattern.match(candidate.name):
            candidate.unlink(missing_ok=True)


def check_writable_target(path: Path) -> None:
    """A clear error, before any work, for an output path that names a folder or the empty name."""
    if str(path) in ("", "."):
        raise CheckpointError("the output file name is empty; give a file name such as out.pt")
    if path.is_dir():
        raise CheckpointError(f"cannot write {path}: it is a folder; give a file name such as {path / 'name.pt'}")


def check_folder(path: Union[str, "os.PathLike[str]"], setting: str) -> None:
    """A clear :class:`ConfigError` for a folder setting that names a plain file, or a folder under one.

    Otherwise the first ``os.makedirs`` fails deep inside Lightning or TensorBoard with a traceback.
    """
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is" if candidate == path else f"lies under {candidate}, which is"
                raise ConfigError(
                    f"{setting}={str(path)!r} {where} a file, not a folder; give a folder (created if missing)"
                )
            return


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles: the data itself is synced already
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
