"""The paper's CIFAR-10 optimizee: a small conv net with batch norm, on all labels or a subset."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from l2l_lightning.errors import ConfigError, check_int_range
from l2l_lightning.tasks.classification import ImageClassificationTask, check_sizes


class CIFAR10Task(ImageClassificationTask):
    """A conv net classifying 32×32 colour images (scaled to [0, 1]) with cross-entropy.

    The network follows the authors' code: per conv layer a 5×5 convolution ("same"
    padding), batch norm, ReLU and 2×2 max-pooling; then fully connected layers with
    batch norm and ReLU; then a linear layer with one output per class.

    Batch norm always normalizes with the statistics of the current minibatch
    (``track_running_stats=False``): the optimizee is only ever *trained*, and its loss
    at each step is a training-mode loss, so running averages would never be read.
    That also leaves the network without buffers, so nothing is mutated in the
    template shared by all problems.  A bias right before batch norm would be
    cancelled by its mean subtraction (a coordinate whose gradient is always 0), so
    layers followed by batch norm have none; batch norm's own scale and shift are
    learned (start at 1 and 0).

    Args:
        root: folder with ``cifar-10-batches-py/`` (torchvision's layout) or that folder itself.
        val_size: training images (the last ones of ``data_batch_5``) held out as the ``"val"``
            split, before ``classes`` picks labels; ``"train"`` is the rest, ``"test"`` the test batch.
        classes: keep only these labels, renumbered in the order given, with one output
            each (paper's CIFAR-5 / CIFAR-2 subsets, e.g. ``[0, 1]``); ``None``: all ten.
        conv_channels: output channels of each conv layer (authors: ``[16, 16, 16]``);
            each layer halves the image, so at most 5.
        hidden_sizes: widths of the fully connected hidden layers (authors: ``[32]``).
        batch_norm: after every conv and hidden layer (authors: yes).
        batch_size: examples per minibatch (paper: 128).
        init_std: weights and biases ~ N(0, init_std²) (authors' code: 0.01); ``None`` for
            PyTorch's default ``U(±1/√fan_in)``.
        download: let torchvision fetch missing files into ``root`` (needs internet).
    """

    dataset = "cifar10"

    def __init__(
        self,
        root: str = "data",
        val_size: int = 5000,
        classes: Optional[Sequence[int]] = None,
        conv_channels: Sequence[int] = (16, 16, 16),
        hidden_sizes: Sequence[int] = (32,),
        batch_norm: bool = True,
        batch_size: int = 128,
        init_std: Optional[float] = 0.01,
        download: bool = False,
    ) -> None:
        self.root = str(root)
        self.val_size = val_size
        self.classes = None if classes is None else list(classes)
        if self.classes is not None:
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
                raise ConfigError(f"CIFAR10Task: classes={self.classes!r} must be at least 2 distinct labels in 0 … 9")
            for c in self.classes:
                check_int_range("CIFAR10Task: classes entry", c, 0, 9, " (a CIFAR-10 label)")
        self.conv_channels = check_sizes("CIFAR10Task", "conv_channels", conv_channels)
        if len(self.conv_channels) > 5:
            raise ConfigError(
                f"CIFAR10Task: conv_channels has {len(self.conv_channels)} layers; each halves the 32×32 image, so at most 5"
            )
        self.hidden_sizes = check_sizes("CIFAR10Task", "hidden_sizes", hidden_sizes)
        self.batch_norm = bool(batch_norm)
        self.batch_size = batch_size
        self.init_std = None if init_std is None else float(init_std)
        self.download = bool(download)
        self._check_common()

    def build_module(self) -> nn.Module:
        bias = not self.batch_norm
        layers: list[nn.Module] = []
        channels = 3
        for out in self.conv_channels:
            layers.append(nn.Conv2d(channels, out, 5, padding=2, bias=bias))
            if self.batch_norm:
                layers.append(nn.BatchNorm2d(out, track_running_stats=False))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            channels = out
        layers.append(nn.Flatten())
        width = channels * (32 >> len(self.conv_channels)) ** 2
        for size in self.hidden_sizes:
            layers.append(nn.Linear(width, size, bias=bias))
            if self.batch_norm:
                layers.append(nn.BatchNorm1d(size, track_running_stats=False))
            layers.append(nn.ReLU())
            width = size
        layers.append(nn.Linear(width, 10 if self.classes is None else len(self.classes)))
        return nn.Sequential(*layers)
