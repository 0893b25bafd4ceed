"""Lightning checkpoints written atomically: a process killed mid-save loses nothing.

Lightning's own save writes through a temporary file in the system's temp folder and
*moves* it, which is a copy over the old file (not atomic) when that folder is on another
file system, and it never fsyncs.  This plugin writes through
:func:`l2l_lightning.safe_load.atomic_save` instead.  Kept here, on the meta-training side,
because it needs Lightning, which deployment (:mod:`l2l_lightning.safe_load`) must not import.
"""

from __future__ import annotations

from typing import Any, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from l2l_lightning.safe_load import atomic_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose local saves go through :func:`atomic_save`.

    Remote paths (``s3://`` and the like) are left to Lightning, whose fsspec
    transaction is the right tool there.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        atomic_save(checkpoint, path)
