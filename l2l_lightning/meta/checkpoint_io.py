"""Lightning checkpoints written atomically, and a ``last.ckpt`` that really is the last state.

A process killed mid-save loses nothing: see :class:`AtomicCheckpointIO`.  Resuming loses
nothing either: see :class:`LatestCheckpoint`.

Lightning's own save writes through a temporary file in the system's temp folder and
*moves* it, which is a copy over the old file (not atomic) when that folder is on another
file system, and it never fsyncs.  This plugin writes through
:func:`l2l_lightning.safe_load.atomic_save` instead.  Kept here, on the meta-training side,
because it needs Lightning, which deployment (:mod:`l2l_lightning.safe_load`) must not import.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from l2l_lightning.safe_load import atomic_save, load_plain


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose local saves go through :func:`atomic_save` and whose
    loads go through :func:`~l2l_lightning.safe_load.load_plain`.

    Remote paths (``s3://`` and the like) are saved by Lightning, whose fsspec transaction is the
    right tool there.  Loads are local files only, read with ``weights_only=True`` whatever the
    caller or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` asks: every checkpoint Lightning reads for
    ``l2l`` (``--ckpt_path FILE``, ``last``, ``hpc``, a registry download) is plain data.
    """

    def load_checkpoint(
        self, path: Any, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        return load_plain(path)  # on the CPU; Lightning moves the states to the module's device

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        atomic_save(checkpoint, path)


class LatestCheckpoint(Checkpoint):
    """Write ``last.ckpt`` beside ``best``'s checkpoints after every validation and at the end of fit.

    ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when it writes a top-k
    checkpoint (Lightning 2.6: "whenever a checkpoint file gets saved"), so with
    ``monitor="val/mean_loss"`` the file named *last* holds the *best* state, and resuming
    from it silently repeats every meta-step since.  This callback keeps the name's meaning;
    it goes through ``trainer.save_checkpoint``, so saves stay atomic and DDP-safe, and
    ``--ckpt_path last`` finds the file.  A :class:`~lightning.pytorch.callbacks.Checkpoint`,
    so Lightning runs it after ``best`` and the file holds ``best``'s up-to-date state.
    """

    def __init__(self, best: ModelCheckpoint) -> None:
        self.best = best
        self._saved: Optional[tuple[int, str]] = None  #: (step, best's file) of the state last written

    def _save(self, trainer: "L.Trainer") -> None:
        """Write the state unless this very state (step and best checkpoint) was written already."""
        key = (trainer.global_step, self.best.best_model_path)
        if trainer.sanity_checking or key == self._saved or self.best.dirpath is None:
            return
        path = f"{self.best.dirpath}/{ModelCheckpoint.CHECKPOINT_NAME_LAST}{self.best.FILE_EXTENSION}"
        # weights_only given, as ModelCheckpoint gives it (left out, Lightning logs its default at every save)
        trainer.save_checkpoint(path, weights_only=self.best.save_weights_only)
        self._saved = key

    # ``best`` saves after validation or at the end of the training epoch (Lightning decides which);
    # saving at both keeps ``last.ckpt`` current either way.
    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._save(trainer)

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._save(trainer)


def meta_learner_checkpoints(dirpath: Optional[str] = None) -> list[Checkpoint]:
    """``MetaLearner``'s checkpoints: the best by ``val/mean_loss`` and ``last.ckpt`` (``l2l`` gives them to its trainer).

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
