"""Trained optimizers as files: export, find by name, load.

A trained optimizer is a small net (a :class:`~l2l_lightning.nets.CoordinatewiseLSTM`
of a few thousand weights).  Deployment should not need the meta-training module,
its task or Lightning's pickled hyperparameters, so :func:`export` turns a
``MetaLearner`` checkpoint into a self-contained *exported file*::

    {
        "format": "l2l_lightning.learned_optimizer", "format_version": 1,
        "class_path": "l2l_lightning.nets.lstm.CoordinatewiseLSTM",   # how to rebuild the net
        "init_args": {...},                                           # its constructor arguments
        "state_dict": {...},                                          # its weights (tensors)
        "metadata": {...},   # task, steps trained, validation figures, versions, fingerprint
    }

Only tensors, dicts, lists, strings, numbers, booleans and ``None``: it loads with
``torch.load(..., weights_only=True)``, i.e. without running pickled code.

Shipped optimizers live *inside the package* (``l2l_lightning/pretrained/<name>.pt``,
declared as package data) so names resolve the same from a checkout, an editable
install and a wheel.  :func:`load_net` accepts a name, a path to an exported file, a
path to a Lightning checkpoint of ``MetaLearner`` or a net instance.

Every file, exported or a Lightning checkpoint, is read with ``weights_only=True``
(``MetaLearner`` checkpoints hold plain data only), and the net classes a file names must
come from allowed modules: nothing a file says is run or imported unchecked (see
:mod:`l2l_lightning.safe_load`).

Names and paths: a *bare name* (letters, digits, ``_``, ``-``: no path separator, no
suffix) is always a shipped optimizer, never a file, even when a file of that name
exists in the working directory; anything with a path separator or a suffix
(``./quadratic``, ``runs/q.pt``, ``best.ckpt``) is always a path.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from l2l_lightning.errors import CheckpointError
from l2l_lightning.serialization import FORMAT, FORMAT_VERSION, NET_KEY, build_net, fingerprint, net_weights_from_checkpoint
from l2l_lightning.specs import make_spec, read_spec
from l2l_lightning.safe_load import atomic_save, check_local, check_writable_target, load_plain

#: Where shipped trained optimizers live (package data; see ``pyproject.toml``).
PRETRAINED_DIR: Path = Path(__file__).resolve().parent.parent / "pretrained"
SUFFIX = ".pt"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")

NetSpec = Union[str, "os.PathLike[str]", nn.Module]


# --------------------------------------------------------------------------- names
def is_name(spec: Union[str, "os.PathLike[str]"]) -> bool:
    """Whether ``spec`` is a pretrained *name* (``"quadratic"``) rather than a path.

    Names are plain identifiers (letters, digits, ``_``, ``-``): no directory part and
    no suffix, so ``"quadratic"`` is a name and ``"./quadratic.pt"`` a path.  A name is
    never looked up as a file, so a file ``./quadratic`` cannot stand in for the shipped
    optimizer: which one loads does not depend on the working directory.
    """
    return isinstance(spec, str) and bool(_NAME.match(spec))


def available() -> list[str]:
    """Names of the shipped trained optimizers (files ``l2l_lightning/pretrained/<name>.pt``)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.stem for p in PRETRAINED_DIR.glob(f"*{SUFFIX}") if is_name(p.stem))


def path_of(name: str) -> Path:
    """The file of the shipped optimizer ``name``; :class:`CheckpointError` listing the names if none."""
    path = PRETRAINED_DIR / f"{name}{SUFFIX}"
    if not path.is_file():
        names = available()
        listing = ", ".join(repr(n) for n in names) if names else "none are installed yet"
        raise CheckpointError(
            f"unknown pretrained optimizer {name!r}; available: {listing} (in {PRETRAINED_DIR}). "
            "Pass a path to an exported file or to a MetaLearner .ckpt, or export one with "
            "`python -m l2l_lightning.optim.export CKPT NAME`."
        )
    return path


# --------------------------------------------------------------------------- files
def _torch_load(path: Path) -> Any:
    """``weights_only=True`` whatever the suffix: see :mod:`l2l_lightning.safe_load`."""
    return load_plain(path)


def _is_lightning_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and "state_dict" in obj and (
        "pytorch-lightning_version" in obj or "global_step" in obj or NET_KEY in obj
    )


def _net_from_lightning(obj: dict[str, Any], source: str) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
    spec = obj.get(NET_KEY)
    if spec is None:
        hparams = obj.get("hyper_parameters")
        kind = hparams.get("_class_path") if isinstance(hparams, dict) else None
        raise CheckpointError(
            f"{source} is a Lightning checkpoint{f' of {kind}' if kind else ''} but not of l2l_lightning.MetaLearner "
            f"(it has no {NET_KEY!r} entry); expected a MetaLearner checkpoint or an exported learned optimizer"
        )
    class_path, init_args = read_spec(spec, f"{source}: its {NET_KEY!r}")
    weights = net_weights_from_checkpoint(obj) if isinstance(obj["state_dict"], Mapping) else {}
    if not weights:
        raise CheckpointError(f"{source}: the checkpoint's state_dict has no 'net.*' weights")
    return class_path, init_args, weights


def read(path: Union[str, "os.PathLike[str]"]) -> dict[str, Any]:
    """Read an exported file or a ``MetaLearner`` checkpoint as an exported-file dict.

    For a Lightning checkpoint the ``metadata`` is extracted as :func:`export` would.
    """
    source = str(path)
    obj = _torch_load(path)  # no such file, a folder, a URL, pickles: one clear error each
    path = Path(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source} has format_version {version!r}; this l2l_lightning reads up to {FORMAT_VERSION}: upgrade it"
            )
        missing = [k for k in ("class_path", "init_args", "state_dict") if k not in obj]
        if missing:
            raise CheckpointError(f"{source} is an exported learned optimizer but lacks {missing}")
        read_spec(obj, source)
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, Mapping) or not isinstance(metadata.get("fingerprint"), (str, type(None))):
            raise CheckpointError(
                f"{source}: its metadata must be a dict (with a string fingerprint, if any), got {metadata!r}"[:400]
            )
        if not isinstance(obj["state_dict"], Mapping):
            kind = type(obj["state_dict"]).__name__
            raise CheckpointError(f"{source}: its state_dict must be a dict of tensors, got a {kind}")
        return obj
    if _is_lightning_checkpoint(obj):
        class_path, init_args, weights = _net_from_lightning(obj, source)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **make_spec(class_path, init_args),
            "state_dict": weights,
            "metadata": _metadata_from_lightning(obj, path),
        }
    keys = sorted(map(str, obj.keys()))[:8] if isinstance(obj, dict) else None
    raise CheckpointError(
        f"{source} is not a learned optimizer: expected a file written by `l2l_lightning.optim.export` "
        f"(format {FORMAT!r}) or a Lightning checkpoint of l2l_lightning.MetaLearner; found "
        + (f"a dict with keys {keys}" if keys is not None else f"a {type(obj).__name__}")
    )


def load_net(spec: NetSpec) -> nn.Module:
    """Resolve ``spec`` to a learned-optimizer net in eval mode with frozen weights.

    Args:
        spec: a shipped name (``"quadratic"``, see :func:`available`), a path to an exported
            file, a path to a ``MetaLearner`` Lightning checkpoint (``*.ckpt``), or an
            ``nn.Module`` (returned as it is: callers that must not share it copy it).  A bare
            name (no path separator, no suffix) is always a shipped optimizer, never a file of
            that name in the working directory; ``"./quadratic"`` is the file.  Files are read
            without unpickling objects and may only name allowed net classes
            (:mod:`l2l_lightning.safe_load`).
    """
    if isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise CheckpointError(
            f"checkpoint={spec!r}: expected a pretrained name, a path or a net (nn.Module), got {type(spec).__name__}"
        )
    path = _path_for(spec)
    return _build(read(path), str(path))


def _build(record: Mapping[str, Any], source: str) -> nn.Module:
    """The net of a record :func:`read` returned, its weights checked against the stored fingerprint."""
    stored = record.get("metadata", {}).get("fingerprint")
    return build_net(record["class_path"], record["init_args"], record["state_dict"], source, stored)


def info(spec: Union[str, "os.PathLike[str]"]) -> dict[str, Any]:
    """The net and ``metadata`` of a trained optimizer (name or path), e.g. its task and validation figures.

    Returns the dict (it prints nothing); ``python -m l2l_lightning.optim.pretrained NAME`` prints it.
    """
    path = _path_for(spec)
    record = read(path)
    return {**make_spec(record["class_path"], record["init_args"]), **record.get("metadata", {})}


# --------------------------------------------------------------------------- export
def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as str/number/bool/None/list/dict only, so the file loads with ``weights_only=True``.

    Objects become ``{"class_path", "init_args"}`` from their public attributes (which is
    how LightningCLI writes them too); anything deeper or stranger becomes its ``repr``.
    """
    # exact builtin types: subclasses (torch.__version__ is a TorchVersion, numpy.float64 a float)
    # would be pickled by class and refused by weights_only=True
    if value is None:
        return None
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return plain(value.item(), depth + 1)
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else (value.tolist() if value.numel() <= 64 else repr(value))
    if isinstance(value, (os.PathLike, torch.dtype, torch.device)):
        return str(value)
    if depth >= 6:
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v, depth + 1) for v in value]
    cls = type(value)
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and not callable(value):
        return make_spec(cls, {k: plain(v, depth + 1) for k, v in attrs.items() if not k.startswith("_")})
    return repr(value)


def _versions(checkpoint: Mapping[str, Any]) -> dict[str, Optional[str]]:
    import lightning

    from l2l_lightning.version import __version__

    return plain(
        {
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "l2l_lightning": __version__,
            "lightning_at_training": checkpoint.get("pytorch-lightning_version"),
        }
    )


def _validation_figures(checkpoint: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``ModelCheckpoint`` states (monitor, best and current score) found in the checkpoint."""
    figures = []
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if isinstance(key, str) and key.startswith("ModelCheckpoint") and isinstance(state, Mapping):
            if state.get("monitor") is None:
                continue
            figures.append(
                {
                    "monitor": state.get("monitor"),
                    "best_score": plain(state.get("best_model_score")),
                    "current_score": plain(state.get("current_score")),
                    "best_model_path": os.path.basename(str(state.get("best_model_path") or "")) or None,
                }
            )
    return figures


def _metadata_from_lightning(checkpoint: Mapping[str, Any], path: Path) -> dict[str, Any]:
    hparams = checkpoint.get("hyper_parameters") or {}
    return {
        "task": plain(hparams.get("task")) if isinstance(hparams, Mapping) else None,
        "hyper_parameters": plain(hparams),
        "global_step": plain(checkpoint.get("global_step")),
        "epoch": plain(checkpoint.get("epoch")),
        "validation": _validation_figures(checkpoint),
        "versions": _versions(checkpoint),
        "source": path.name,
    }


def export(
    ckpt_path: Union[str, "os.PathLike[str]"],
    out_path: Union[str, "os.PathLike[str]"],
    *,
    overwrite: bool = False,
    **metadata: Any,
) -> Path:
    """Write the trained net of a ``MetaLearner`` checkpoint to a small exported file.

    Args:
        ckpt_path: a Lightning checkpoint of :class:`~l2l_lightning.MetaLearner`.
        out_path: the file to write; use ``PRETRAINED_DIR / f"{name}.pt"`` to ship it as ``name``.
        overwrite: replace an existing file (off by default: shipped files are precious).
        **metadata: extra entries for the file's ``metadata`` (e.g. ``description="..."``);
            they must reduce to plain values (see :func:`plain`).

    Returns:
        The written path.  The record is serialized, read back with ``weights_only=True``
        and its net rebuilt *before* the file is written, atomically (see
        :func:`~l2l_lightning.safe_load.atomic_save`): a file that exists is a file that
        loads, and a crash while writing leaves the previous file as it was.
    """
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    check_writable_target(out_path)
    if out_path.exists() and not overwrite:
        raise CheckpointError(f"{out_path} exists; pass overwrite=True (--overwrite) to replace it")
    if out_path.exists() and ckpt_path.exists() and os.path.samefile(out_path, ckpt_path):
        raise CheckpointError(
            f"{out_path} is the file being exported; writing the export over it would replace the checkpoint: "
            "give another output name"
        )
    record = read(ckpt_path)  # an exported file may be re-exported: its metadata is kept, then extended
    net = _build(record, str(ckpt_path))
    meta = dict(record.get("metadata", {}))
    meta.update({k: plain(v) for k, v in metadata.items()})
    meta = plain(meta)  # metadata of an older export, or of a Lightning checkpoint, made plain once more
    meta["fingerprint"] = fingerprint(net)
    meta["exported_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    out = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **make_spec(record["class_path"], plain(record["init_args"])),
        "state_dict": {k: v.detach().to("cpu").clone().contiguous() for k, v in net.state_dict().items()},
        "metadata": meta,
    }
    _check_round_trip(out, meta["fingerprint"], str(out_path))
    atomic_save(out, out_path)
    return out_path


def _check_round_trip(record: dict[str, Any], expected_fingerprint: str, source: str) -> None:
    """Serialize ``record`` as it will be written, read it back with ``weights_only=True`` and rebuild
    the net: a file that :func:`export` writes is a file that loads and reproduces the net."""
    buffer = io.BytesIO()
    torch.save(record, buffer)
    buffer.seek(0)
    check = torch.load(buffer, map_location="cpu", weights_only=True)
    rebuilt = build_net(check["class_path"], check["init_args"], check["state_dict"], source)
    if fingerprint(rebuilt) != expected_fingerprint:
        raise CheckpointError(f"{source}: the written net does not reproduce the checkpoint's net")


def _path_for(spec: Union[str, "os.PathLike[str]"]) -> Path:
    """A bare name is a shipped optimizer, never a file; anything else is a path (see :func:`is_name`)."""
    if not os.fspath(spec).strip():
        raise CheckpointError(
            f"checkpoint={spec!r} is empty; give a pretrained name ({', '.join(available()) or 'none installed'}), "
            "an exported file or a MetaLearner .ckpt"
        )
    check_local(spec)
    return path_of(spec) if is_name(spec) else Path(spec)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m l2l_lightning.optim.pretrained [NAME_OR_PATH]``: what a trained optimizer is, as JSON.

    Without an argument, the shipped names.  Kept beside :func:`info` rather than in a
    separate command: it is the same read, printed.
    """
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m l2l_lightning.optim.pretrained",
        description="Print what a trained optimizer was trained on (its net, task, validation figures, versions).",
    )
    parser.add_argument("spec", nargs="?", help=f"a shipped name ({', '.join(available())}) or a file; none: list the names")
    args = parser.parse_args(argv)
    if args.spec is None:
        print("\n".join(available()))
        return 0
    try:
        print(json.dumps(info(args.spec), indent=2, default=str))
    except CheckpointError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
