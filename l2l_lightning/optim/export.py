"""``python -m l2l_lightning.optim.export CKPT NAME`` (also ``l2l-export``): ship a trained optimizer.

Turns a Lightning checkpoint of :class:`~l2l_lightning.MetaLearner` into a small
exported file (weights, net settings, metadata; loadable with ``weights_only=True``).
``NAME`` is either a plain name (``quadratic``), written into the package's
``l2l_lightning/pretrained/`` so that ``LearnedOptimizer(..., checkpoint="quadratic")``
finds it, or a path ending in ``.pt``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from l2l_lightning.errors import CheckpointError, L2LError
from l2l_lightning.optim import pretrained
from l2l_lightning.optim.pretrained import SUFFIX, export, info, is_name


def output_path(name: str) -> Path:
    """``NAME`` → ``l2l_lightning/pretrained/NAME.pt``; anything else is taken as a path.

    A bare name (no path separator, no suffix) always means the package's folder, as it does
    when loading; an empty or blank name is an error rather than the current folder.
    """
    if not name.strip():
        raise CheckpointError("the output NAME is empty; give a name such as 'quadratic' or a path ending in .pt")
    return pretrained.PRETRAINED_DIR / f"{name}{SUFFIX}" if is_name(name) else Path(name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="l2l-export",
        description="Export the learned optimizer of a MetaLearner checkpoint to a small file "
        f"(by NAME into {pretrained.PRETRAINED_DIR}, or to a .pt path).",
    )
    parser.add_argument("checkpoint", help="Lightning checkpoint (.ckpt) written by l2l fit / MetaLearner")
    parser.add_argument("name", help="a name such as 'quadratic' (goes to l2l_lightning/pretrained/NAME.pt) or a path")
    parser.add_argument("--description", default=None, help="free text stored in the file's metadata")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    extra = {"description": args.description} if args.description is not None else {}
    try:
        path = export(args.checkpoint, output_path(args.name), overwrite=args.overwrite, **extra)
        meta = info(path)
    except L2LError as error:
        print(f"l2l-export: error: {error}", file=sys.stderr)
        return 2
    summary = {k: meta.get(k) for k in ("class_path", "init_args", "global_step", "validation", "fingerprint")}
    print(f"wrote {path}")
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
