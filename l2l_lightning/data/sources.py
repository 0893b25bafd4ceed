"""Data for the task mixture: downsampled Fashion-MNIST, photo patches and byte-level text.

Every source hands out minibatches by *inner step*: ``batches(step)`` is a pure function of
the draw's seed and ``step``, because a truncation, PES's particles and the tuned baselines
all re-read steps in their own order, and a resumed run must see the very batches the
uninterrupted one saw.  Each step gets a generator seeded ``seed + step`` (cheap: a few µs).

Splits: images as :func:`~l2l_lightning.data.load_images` cuts them; photos by content hash
(:func:`~l2l_lightning.data.images.load_image_splits`); text by position (the first 90% of
the bytes train, the next 5% validate, the last 5% test), so validation draws never read
training text.  MNIST digits are not offered: they are reserved for checks outside the project.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from l2l_lightning.data.datasets import LabeledImages, Split, load_images
from l2l_lightning.data.images import load_image_splits, random_crops
from l2l_lightning.errors import DatasetError

#: Where each split of a text corpus starts and ends, as fractions of its bytes.
_TEXT_SPLITS = {"train": (0.0, 0.9), "val": (0.9, 0.95), "test": (0.95, 1.0)}
#: Photos held out for validation and for test each (opencv-doc has 91 large enough at 64 px).
PHOTO_HELD_OUT = 8


@functools.lru_cache(maxsize=16)
def fashion_mnist(root: str, split: Split, size: int, val_size: int, device: str) -> LabeledImages:
    """Fashion-MNIST's ``split`` at ``size``×``size`` (area-averaged from 28×28), still uint8 so
    :class:`~l2l_lightning.tasks.classification.Minibatches` serves it like the full-size images."""
    data = load_images("fashion_mnist", root, split, val_size=val_size, device=device)
    if size == data.images.shape[-1]:
        return data
    small = F.interpolate(data.images.unsqueeze(1).float(), size=(size, size), mode="area")
    return LabeledImages(small.squeeze(1).round().to(torch.uint8), data.labels)


#: Files of the ``fortunes`` packages that are not text (indices) or duplicates (``.u8`` links).
_NOT_TEXT = (".dat", ".u8")


@functools.lru_cache(maxsize=4)
def read_text(root: str, files: Optional[tuple[str, ...]] = None) -> Tensor:
    """Every text file under ``root`` (or ``files``), concatenated as bytes, as int64.

    The corpus of ``l2l bench``'s text task (all of it) and of the mixture's (:func:`text_corpus`).
    """
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetError(
            f"text folder {root} does not exist; `apt-get install fortunes fortunes-min` installs "
            "/usr/share/games/fortunes (or point root at any folder of plain-text files)"
        )
    paths = [folder / name for name in files] if files else sorted(
        p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and p.suffix not in _NOT_TEXT
    )
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise DatasetError(f"text folder {root}: {'missing ' + ', '.join(missing) if missing else 'no text files'}")
    data = b"".join(p.read_bytes() for p in paths)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def text_corpus(root: str, split: Split) -> Tensor:
    """``split``'s part of :func:`read_text` ``(root)``: consecutive, never overlapping (see the module docstring)."""
    text = read_text(root, None)  # the cache key l2l bench's CharText uses too
    start, end = (int(len(text) * f) for f in _TEXT_SPLITS[split])
    return text[start:end]


class TextWindows:
    """``step -> (inputs, targets)``: ``batch_size`` random windows of ``context + 1`` bytes; targets are the next bytes."""

    def __init__(self, text: Tensor, context: int, batch_size: int, seed: int) -> None:
        if len(text) <= context + 1:
            raise DatasetError(f"the text split holds {len(text)} bytes, fewer than a window of {context + 1}")
        self.text, self.context, self.batch_size, self.seed = text, context, batch_size, seed

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed((self.seed + step) % 2**63)
        starts = torch.randint(len(self.text) - self.context - 1, (self.batch_size, 1), generator=generator)
        windows = self.text[starts.to(self.text.device) + torch.arange(self.context + 1, device=self.text.device)]
        return windows[:, :-1], windows[:, 1:]


class PhotoPatches:
    """``step -> (patches, patches)``: ``batch_size`` random (flipped) RGB crops in ``[0, 1]`` of one split's photos."""

    def __init__(self, root: str, split: Split, resolution: int, patch: int, batch_size: int, seed: int, device: str) -> None:
        splits = load_image_splits(root, None, resolution, PHOTO_HELD_OUT, PHOTO_HELD_OUT)
        self.images = getattr(splits, split)
        self.patch, self.batch_size, self.seed, self.device = patch, batch_size, seed, device

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed((self.seed + step) % 2**63)
        patches = random_crops(self.images, self.batch_size, self.patch, generator, flip=True).to(self.device)
        return patches, patches
