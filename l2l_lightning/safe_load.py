"""Reading files without running code from them, and writing them so that a crash loses nothing.

Every file l2l_lightning reads (exported optimizers, ``MetaLearner`` checkpoints, the
``--ckpt_path`` of ``l2l``) may come from someone else, so two rules hold everywhere:

* **Nothing is unpickled in full.** Files are read with ``torch.load(weights_only=True)``,
  whatever their suffix: a pickle can run any code while it loads, before anything could
  check it.  The project's own checkpoints and exports hold plain data only (tensors,
  dicts, lists, strings, numbers), so they load this way; a file holding pickled objects
  is a :class:`~l2l_lightning.errors.CheckpointError` that says how to make a safe one.
* **A file names only classes it is allowed to name.** Exported files and checkpoints
  describe their net as ``{"class_path", "init_args"}``.  Rebuilding it imports the
  module of ``class_path``, and importing a module runs it; so only modules on the
  *allowed list* are imported for a file: ``l2l_lightning`` (and its submodules) by
  default, plus the modules you allow, either with :func:`allow_modules` or with the
  environment variable ``L2L_ALLOWED_MODULES`` (comma-separated, e.g.
  ``L2L_ALLOWED_MODULES=mypackage.nets,otherpkg``; a module allows its submodules).
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
import os
import pickle
import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch

from l2l_lightning.errors import CheckpointError

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


def is_allowed(class_path: str) -> bool:
    """Whether the module of ``class_path`` is an allowed module or inside one."""
    module = class_path.rpartition(".")[0]
    return any(module == allowed or module.startswith(allowed + ".") for allowed in allowed_modules())


def check_spec_allowed(spec: Any, source: str) -> None:
    """Refuse a net spec read from a file if it, or any spec nested in its settings, names a class
    outside the allowed modules; checked *before* anything is imported.

    Nested specs matter: a :class:`~l2l_lightning.nets.RoutedNets` file lists its nets'
    class_paths in its ``init_args``, and those are imported when it is built.
    """
    for class_path in _class_paths(spec):
        if not is_allowed(class_path):
            module = class_path.rpartition(".")[0] or class_path
            raise CheckpointError(
                f"{source} names the net class {class_path!r}, outside the modules files may name "
                f"({', '.join(allowed_modules())}); l2l_lightning does not import a module just because a file "
                f"names it. If you trust the file and its class, allow the module: "
                f"{ALLOWED_MODULES_ENV}={module} in the environment, or "
                f"l2l_lightning.safe_load.allow_modules({module!r}) in Python"
            )


def _class_paths(value: Any, depth: int = 0) -> list[str]:
    """Every ``class_path`` string in a nested structure of dicts and lists."""
    if depth > 32:
        return []
    found = []
    if isinstance(value, Mapping):
        if isinstance(value.get("class_path"), str):
            found.append(value["class_path"])
        for item in value.values():
            found += _class_paths(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found += _class_paths(item, depth + 1)
    return found


def load_plain(path: Union[str, "os.PathLike[str]"]) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one clear error for each way it fails.

    Raises:
        CheckpointError: no such file, a folder, pickled objects (which are never
            unpickled), or not a torch file at all / truncated / corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such file: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is a folder, not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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
        tmp = path.parent / _temporary_name(path, secrets.token_hex(6))
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
