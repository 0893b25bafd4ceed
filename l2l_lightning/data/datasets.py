"""MNIST, Fashion-MNIST and CIFAR-10 from a local folder, decoded once per process.

The files are looked for, in this order:

* torchvision's layout under ``root``: ``root/MNIST/raw/``, ``root/FashionMNIST/raw/``
  (IDX files, plain or ``.gz``), ``root/cifar-10-batches-py/`` (pickled batches);
* ``root`` itself, as a flat folder of those files, e.g. Debian's
  ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).

``download=True`` lets torchvision fetch missing files into its layout (needs
internet); files already there are never downloaded again.  Decoded files are
cached per process, and so is each (split, classes, device) view of them: a task
that draws a new problem every 100 steps reads its files once, and each device
holds one copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, NamedTuple, Optional, Sequence, Union, get_args

import torch
from torch import Tensor

from l2l_lightning.data.readers import read_cifar_batch, read_idx
from l2l_lightning.errors import ConfigError, DatasetError, check_choice, check_int_range, check_positive_int

DatasetName = Literal["mnist", "fashion_mnist", "cifar10"]
#: Which data a draw trains on: meta-training draws ``"train"``, validation ``"val"``, test and
#: ``l2l compare`` ``"test"``.  ``"train"`` and ``"val"`` share the training files (see ``val_size``);
#: ``"test"`` is the test files.  Tasks without a dataset (quadratics) ignore it: their held-out
#: problems differ from the training ones by seed alone.
Split = Literal["train", "val", "test"]
DEFAULT_VAL_SIZE = 5000


class LabeledImages(NamedTuple):
    """One split of a dataset.  Shared by everyone who loads it: never modify in place."""

    images: Tensor  #: uint8, ``(N, 28, 28)`` for the MNIST family, ``(N, 3, 32, 32)`` for CIFAR-10
    labels: Tensor  #: int64, ``(N,)``, in ``0 … num_classes - 1``


def _read_mnist_family(paths: list[Path]) -> LabeledImages:
    image_file, label_file = paths
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise DatasetError(f"{image_file}: holds {images.dtype} of shape {tuple(images.shape)}, not uint8 images (N, H, W)")
    if labels.dtype != torch.uint8 or labels.shape != images.shape[:1] or (labels.numel() and labels.max() >= 10):
        raise DatasetError(
            f"{label_file}: holds {labels.dtype} of shape {tuple(labels.shape)}; expected {images.shape[0]} uint8 "
            f"labels below 10 to go with {image_file}"
        )
    return LabeledImages(images, labels.long())


def _read_cifar10(paths: list[Path]) -> LabeledImages:
    batches = [read_cifar_batch(path) for path in paths]
    labels = torch.cat([labels for _, labels in batches])
    if labels.numel() and (labels.min() < 0 or labels.max() >= 10):
        raise DatasetError(f"{', '.join(map(str, paths))}: labels outside 0 … 9; the files are corrupt")
    return LabeledImages(torch.cat([images for images, _ in batches]), labels)


@dataclass(frozen=True)
class _Source:
    title: str
    subfolder: str  #: torchvision's folder under ``root``
    files: dict[str, tuple[str, ...]]  #: split -> file names
    gzip_ok: bool  #: a file may also be stored as ``<name>.gz``
    read: Callable[[list[Path]], LabeledImages]
    torchvision_class: str
    other_way: str  #: how to get the files without ``download: true``; ``{root}`` is filled in


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SOURCES: dict[str, _Source] = {
    "mnist": _Source(
        title="MNIST",
        subfolder="MNIST/raw",
        files=_IDX_FILES,
        gzip_ok=True,
        read=_read_mnist_family,
        torchvision_class="MNIST",
        other_way="or copy MNIST's four IDX files (plain or .gz) into one of those folders",
    ),
    "fashion_mnist": _Source(
        title="Fashion-MNIST",
        subfolder="FashionMNIST/raw",
        files=_IDX_FILES,
        gzip_ok=True,
        read=_read_mnist_family,
        torchvision_class="FashionMNIST",
        other_way="or install Debian's copy with `apt-get install dataset-fashion-mnist` and set "
        "root: /usr/share/datasets/fashion-mnist",
    ),
    "cifar10": _Source(
        title="CIFAR-10",
        subfolder="cifar-10-batches-py",
        files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        gzip_ok=False,
        read=_read_cifar10,
        torchvision_class="CIFAR10",
        other_way="or unpack CIFAR-10's python version (cifar-10-python.tar.gz) into {root}",
    ),
}


def _locate(source: _Source, root: Path, split: str) -> tuple[Optional[list[Path]], list[str]]:
    """The split's files in the first folder that has them all, plus a line per folder tried."""
    report = []
    for folder, kind in ((root / source.subfolder, "torchvision's layout"), (root, "a flat folder")):
        if not folder.is_dir():
            report.append(f"  {folder} ({kind}): no such folder")
            continue
        found, missing = [], []
        for name in source.files[split]:
            options = [folder / name, folder / f"{name}.gz"] if source.gzip_ok else [folder / name]
            path = next((option for option in options if option.is_file()), None)
            if path is None:
                missing.append(name + ("[.gz]" if source.gzip_ok else ""))
            else:
                found.append(path)
        if not missing:
            return found, report
        report.append(f"  {folder} ({kind}): missing {', '.join(missing)}")
    return None, report


def _download(source: _Source, root: Path, split: str) -> None:
    import torchvision.datasets  # only needed here, and slow to import

    try:
        getattr(torchvision.datasets, source.torchvision_class)(str(root), train=split == "train", download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; torchvision wraps mirror failures in RuntimeError
        raise DatasetError(f"downloading {source.title} into {root} failed: {error}") from error


@functools.lru_cache(maxsize=8)
def _read(dataset: str, root: str, file_split: str) -> LabeledImages:
    """The decoded training or test file(s) of ``dataset``, on the CPU."""
    source = _SOURCES[dataset]
    paths, report = _locate(source, Path(root), file_split)
    if paths is None:
        raise DatasetError(
            f"{source.title}'s {'training' if file_split == 'train' else 'test'} files not found under {root}; looked for "
            f"{', '.join(source.files[file_split])} in:\n" + "\n".join(report) + "\n"
            f"Get them with download: true (the task's `download` argument, e.g. --model.task.init_args.download "
            f"true: torchvision fetches them into {Path(root) / source.subfolder}, which needs internet), "
            + source.other_way.format(root=root)
            + "."
        )
    return _not_empty(source.read(paths), paths)


def _not_empty(data: LabeledImages, paths: list[Path]) -> LabeledImages:
    """A file that announces 0 images is as broken as a truncated one: nothing could be drawn from it."""
    if len(data.labels) == 0:
        raise DatasetError(
            f"{', '.join(map(str, paths))}: hold 0 images; the files are truncated or corrupt: delete them and get them again"
        )
    return data


@functools.lru_cache(maxsize=16)
def _prepared(
    dataset: str, root: str, split: str, val_size: int, classes: Optional[tuple[int, ...]], device: str
) -> LabeledImages:
    images, labels = _read(dataset, root, "test" if split == "test" else "train")
    if split != "test":
        if val_size >= len(labels):
            raise ConfigError(
                f"val_size={val_size} leaves no training images: {_SOURCES[dataset].title}'s training files "
                f"under {root} hold {len(labels)}"
            )
        part = slice(len(labels) - val_size, None) if split == "val" else slice(0, len(labels) - val_size)
        images, labels = images[part], labels[part]  # views, no copies
    if classes is not None:
        keep = torch.isin(labels, torch.tensor(classes))
        relabel = torch.zeros(10, dtype=torch.long)
        relabel[list(classes)] = torch.arange(len(classes))
        images, labels = images[keep], relabel[labels[keep]]
    return LabeledImages(images.to(device), labels.to(device))


def load_images(
    dataset: DatasetName,
    root: Union[str, Path],
    split: Split,
    *,
    val_size: int = DEFAULT_VAL_SIZE,
    classes: Optional[Sequence[int]] = None,
    device: Union[torch.device, str] = "cpu",
    download: bool = False,
) -> LabeledImages:
    """One split of ``dataset`` as uint8 images and int64 labels on ``device``.

    Args:
        dataset: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        root: the folder to look in (see the module docstring for the layouts).
        split: ``"train"``: the training file(s) but their last ``val_size`` images;
            ``"val"``: those last ``val_size`` images; ``"test"``: the test file(s).
        val_size: how many training images are held out as ``"val"`` (the authors' code
            used MNIST's customary 55,000 / 5,000 split).
        classes: keep only these labels, renumbered ``0 … len(classes) - 1`` in the
            order given (e.g. ``[3, 5]``: cats become 0, dogs 1).
        download: fetch missing files with torchvision first (needs internet).

    Raises:
        DatasetError: files missing (the message lists the folders tried and how to get
            the files), truncated or corrupt (the message names the file).
    """
    check_choice("dataset", dataset, _SOURCES)
    check_choice("split", split, get_args(Split))
    check_positive_int("val_size", val_size)
    if classes is not None:
        classes = tuple(classes)
        if len(set(classes)) != len(classes):
            raise ConfigError(f"classes={list(classes)!r} must be distinct labels in 0 … 9")
        for c in classes:
            check_int_range("classes entry", c, 0, 9, " (a label)")
    root = Path(root).expanduser().resolve()
    file_split = "test" if split == "test" else "train"
    if download and _locate(_SOURCES[dataset], root, file_split)[0] is None:
        _download(_SOURCES[dataset], root, file_split)
    val_size = 0 if split == "test" else val_size  # one cache entry for the test split
    return _prepared(dataset, str(root), split, val_size, classes, str(torch.device(device)))
