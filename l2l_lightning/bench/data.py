"""The data streams of the benchmark suite, named in a task's YAML by class path.

A stream hands out training minibatches ``(inputs, targets)`` drawn with the run's own
``torch.Generator``, so every optimizer on a (task, seed) sees the same batches in the same
order.  Data is read once per process from local folders; a missing folder is a
:class:`~l2l_lightning.errors.DatasetError` that says which Debian package installs it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from l2l_lightning.data.datasets import DEFAULT_VAL_SIZE, load_images
from l2l_lightning.data.sources import read_text
from l2l_lightning.errors import ConfigError, DatasetError, check_choice, check_float_range, check_positive_int

Batch = tuple[Any, Any]


class DataStream:
    """Where a task's minibatches come from."""

    def batch(self, generator: torch.Generator) -> Batch:
        """The next training minibatch ``(inputs, targets)``."""
        raise NotImplementedError


@functools.lru_cache(maxsize=8)
def _images(dataset: str, root: str, size: int, val_size: int) -> tuple[Tensor, Tensor]:
    """Training images as float in ``[0, 1]``, ``(N, C, size, size)``, and labels; area-downsampled when smaller."""
    images, labels = load_images(dataset, root, "train", val_size=val_size)
    images = images.float().div_(255)
    images = images.unsqueeze(1) if images.dim() == 3 else images
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="area")
    return images, labels


_INSTALL = {
    "fashion_mnist": "`apt-get install dataset-fashion-mnist` installs Fashion-MNIST in /usr/share/datasets/fashion-mnist",
    "cifar10": "unpack CIFAR-10's python version (cifar-10-python.tar.gz) there",
}


class ImageClassification(DataStream):
    """Minibatches of Fashion-MNIST (or CIFAR-10) training images, optionally downsampled to ``size``.

    ``target="labels"``: classification; ``target="images"``: the images themselves (autoencoders).
    The batches come from the training split, less its last ``val_size`` images (the split the
    rest of the package uses: :func:`~l2l_lightning.data.datasets.load_images`).  MNIST digits are refused: they are reserved for checks outside the project.
    """

    def __init__(
        self,
        root: str = "/usr/share/datasets/fashion-mnist",
        dataset: Literal["fashion_mnist", "cifar10"] = "fashion_mnist",
        size: int = 28,
        batch_size: int = 128,
        target: Literal["labels", "images"] = "labels",
        val_size: int = DEFAULT_VAL_SIZE,
    ) -> None:
        if dataset == "mnist":
            raise ConfigError("dataset='mnist': MNIST digits are reserved for checks outside the project; use fashion_mnist")
        check_choice("dataset", dataset, ("fashion_mnist", "cifar10"))
        check_choice("target", target, ("labels", "images"))
        self.size, self.batch_size = check_positive_int("size", size), check_positive_int("batch_size", batch_size)
        if not Path(root).expanduser().is_dir():
            raise DatasetError(f"data folder {root} does not exist; {_INSTALL[dataset]}")
        self.images, self.labels = _images(dataset, str(Path(root).expanduser().resolve()), size, val_size)
        self.target = target

    def batch(self, generator: torch.Generator) -> Batch:
        index = torch.randint(len(self.labels), (self.batch_size,), generator=generator)
        images = self.images[index]
        return images, (images if self.target == "images" else self.labels[index])


class CharText(DataStream):
    """Random windows of ``context + 1`` bytes of a text corpus: inputs are the first ``context``, targets the next byte of each."""

    def __init__(
        self,
        root: str = "/usr/share/games/fortunes",
        files: Optional[Sequence[str]] = None,
        context: int = 64,
        batch_size: int = 32,
    ) -> None:
        self.context, self.batch_size = check_positive_int("context", context), check_positive_int("batch_size", batch_size)
        self.text = read_text(str(Path(root).expanduser().resolve()), tuple(files) if files else None)
        if len(self.text) <= context + 1:
            raise DatasetError(f"text folder {root} holds {len(self.text)} bytes, fewer than a window of {context + 1}")

    def batch(self, generator: torch.Generator) -> Batch:
        starts = torch.randint(len(self.text) - self.context - 1, (self.batch_size, 1), generator=generator)
        windows = self.text[starts + torch.arange(self.context + 1)]
        return windows[:, :-1], windows[:, 1:]


class LeastSquares(DataStream):
    """Minibatches of a fixed noisy linear regression ``y = X w* + noise`` whose Hessian has condition number ``condition``.

    The columns of ``X`` are scaled from 1 down to ``1/sqrt(condition)``, so curvature differs by
    ``condition`` between directions; the noise sets a loss floor, and minibatches make the
    gradient stochastic.  ``data_seed`` fixes ``X``, ``w*`` and the noise (the same problem for every run).
    """

    def __init__(
        self, dim: int = 50, examples: int = 1000, condition: float = 100.0, noise: float = 0.1, batch_size: int = 32, data_seed: int = 0
    ) -> None:
        for name, value in (("dim", dim), ("examples", examples), ("batch_size", batch_size)):
            check_positive_int(name, value)
        check_float_range("condition", condition, 1, what=" (the Hessian's condition number)")
        generator = torch.Generator().manual_seed(data_seed)
        scales = torch.logspace(0, -0.5 * torch.log10(torch.tensor(float(condition))).item(), dim)
        self.inputs = torch.randn(examples, dim, generator=generator) * scales
        truth = torch.randn(dim, 1, generator=generator)
        self.targets = self.inputs @ truth + noise * torch.randn(examples, 1, generator=generator)
        self.batch_size = batch_size

    def batch(self, generator: torch.Generator) -> Batch:
        index = torch.randint(len(self.targets), (self.batch_size,), generator=generator)
        return self.inputs[index], self.targets[index]


class NoData(DataStream):
    """For models that are their own problem (neural art): no inputs, no targets."""

    def batch(self, generator: torch.Generator) -> Batch:
        return None, None
