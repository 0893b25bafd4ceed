"""Photographs and paintings from a local folder, for the neural-art task.

Any format Pillow reads (PNG, JPEG, BMP, GIF, TIFF, WebP, …) is accepted; every
image is converted to RGB and resized so that its *shorter* side is the task's
resolution (crops are taken later, per draw).  Files are decoded once per process.

Splits are made per *file content*, not per name: the files are ordered by the
SHA-1 of their bytes, the first ``test_images`` form the test split, the next
``val_images`` the validation split and the rest the training split.  So the split
of an image never depends on which other files are in the folder's listing order,
and two identical files (a copy under another name) always land in the same split:
test content is never seen in meta-training.

Offline source used for the shipped results: Debian's ``opencv-doc`` package
(``apt-get install opencv-doc``) puts OpenCV's sample photographs and Van Gogh's
*The Starry Night* (1889, public domain) in ``/usr/share/doc/opencv-doc/examples/data``.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from l2l_lightning.errors import ConfigError, DatasetError

#: File name endings looked for when no explicit file list is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

OFFLINE_HINT = (
    "for real photographs and a public-domain painting offline, `apt-get install opencv-doc` and use "
    "/usr/share/doc/opencv-doc/examples/data (see configs/neural_art.yaml)"
)


class ImageSplits(NamedTuple):
    """The images of a folder, by split; each image uint8 ``(3, H, W)`` with ``min(H, W) == resolution``."""

    train: list[Tensor]
    val: list[Tensor]
    test: list[Tensor]
    names: dict[str, list[str]]  #: file names of each split, in the order of its images


def read_image(path: Path, resolution: int, what: str = "image") -> Tensor:
    """One image file as uint8 ``(3, H, W)``, its shorter side resized to ``resolution``.

    Raises :class:`DatasetError` naming the file when it is missing, unreadable or
    smaller than ``resolution`` (upscaling would only blur it).
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist; give the path of an image file ({OFFLINE_HINT})")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DatasetError(
            f"{what} {path} cannot be read as an image ({error}); remove it or convert it to PNG or JPEG"
        ) from None
    width, height = image.size
    if min(width, height) < resolution:
        raise DatasetError(
            f"{what} {path} is {width}×{height}, smaller than the resolution {resolution}; "
            f"use an image at least {resolution} pixels on its shorter side, or lower the resolution"
        )
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size[1], size[0], 3).permute(2, 0, 1)


def _listing(root: Path, files: Optional[Sequence[str]]) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; create it and put images in it ({OFFLINE_HINT})")
    if files is not None:
        return [root / name for name in files]
    paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(
            f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)}); put some there ({OFFLINE_HINT})"
        )
    return paths


@functools.lru_cache(maxsize=8)
def load_image_splits(
    root: str, files: Optional[tuple[str, ...]], resolution: int, val_images: int, test_images: int
) -> ImageSplits:
    """The images under ``root`` (all image files, or just ``files``), split by content hash (cached)."""
    paths = _listing(Path(root), files)
    if len(paths) < val_images + test_images + 1:
        raise ConfigError(
            f"image folder {root}: {len(paths)} images, but val_images={val_images} and test_images={test_images} "
            "leave none for training; add images or lower those counts"
        )
    keyed = []
    for path in paths:
        try:
            digest = hashlib.sha1(path.read_bytes()).hexdigest()
        except OSError:
            raise DatasetError(f"content image {path} does not exist or cannot be read; fix content_files or the folder") from None
        keyed.append((digest, path.name, path))
    keyed.sort()
    order = {"test": keyed[:test_images], "val": keyed[test_images : test_images + val_images]}
    order["train"] = keyed[test_images + val_images :]
    images = {split: [read_image(p, resolution, "content image") for _, _, p in entries] for split, entries in order.items()}
    names = {split: [name for _, name, _ in entries] for split, entries in order.items()}
    return ImageSplits(images["train"], images["val"], images["test"], names)


def random_crops(images: Sequence[Tensor], count: int, size: int, generator: torch.Generator, flip: bool) -> Tensor:
    """``count`` crops ``(count, 3, size, size)`` in ``[0, 1]``: a random image, position (and flip) each."""
    crops = []
    for _ in range(count):
        image = images[int(torch.randint(len(images), (), generator=generator))]
        top = int(torch.randint(image.shape[1] - size + 1, (), generator=generator))
        left = int(torch.randint(image.shape[2] - size + 1, (), generator=generator))
        crop = image[:, top : top + size, left : left + size]
        if flip and bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.stack(crops).float().div_(255)


def center_crop(image: Tensor, size: int) -> Tensor:
    """The central ``size × size`` crop of a uint8 ``(3, H, W)`` image, as float in ``[0, 1]``."""
    top, left = (image.shape[1] - size) // 2, (image.shape[2] - size) // 2
    return image[:, top : top + size, left : left + size].float().div(255)
