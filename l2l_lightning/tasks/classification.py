"""Image classifiers as optimizees: what the MNIST and CIFAR-10 tasks share.

A draw is one network: fresh parameters and its own random minibatch order, both
from the draw's generator.  The split's images stay on the device as one uint8
tensor, decoded once per process (:func:`~l2l_lightning.data.load_images`); a
step's minibatch is an ``index_select`` by a random permutation of the split (one per
epoch, seeded from the draw's generator), scaled to
``[0, 1]`` (as in the authors' code; no mean/std normalization).  No DataLoader
runs per step.

The network is a :class:`~l2l_lightning.tasks.base.ModuleProblem`: an ordinary
``nn.Module`` run through ``functional_call``.  Its template lives on the ``meta``
device, so it holds no weights, draws nothing from the global RNG and is shared by
every problem; all its parameters come from the draw.
"""

from __future__ import annotations

import functools
import math
from abc import abstractmethod
from typing import Optional, Sequence, Union, get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from l2l_lightning.data import LabeledImages, load_images
from l2l_lightning.errors import ConfigError, check_choice, check_nonnegative_float, check_positive_int
from l2l_lightning.tasks.base import ModuleProblem, Split, Task


class Minibatches:
    """``step -> (images, labels)``: the minibatch an optimizee sees at inner step ``step``.

    Epoch after epoch, a fresh permutation of the split is cut into ``batch_size``
    slices (the last, partial one dropped).  Access is random, not sequential: each
    truncation re-reads the step where the last one stopped and baselines restart
    at step 0, so the permutation of epoch ``e`` is a pure function of
    ``(seed, e)``, computed on first use and kept.
    """

    def __init__(self, data: LabeledImages, batch_size: int, seed: int) -> None:
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = data.labels.numel() // batch_size
        self._permutations: dict[int, Tensor] = {}

    def indices(self, step: int) -> Tensor:
        """Indices into the split of step ``step``'s examples."""
        epoch, index = divmod(step, self.batches_per_epoch)
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            permutation = torch.randperm(self.data.labels.numel(), generator=generator)
            self._permutations[epoch] = permutation.to(self.data.labels.device)
        return self._permutations[epoch][index * self.batch_size : (index + 1) * self.batch_size]

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        indices = self.indices(step)
        images = self.data.images.index_select(0, indices).to(torch.float32).div_(255)
        return images, self.data.labels.index_select(0, indices)


def cross_entropy(logits: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean cross-entropy of a minibatch (``ModuleProblem``'s ``loss_fn``)."""
    return F.cross_entropy(logits, batch[1])


def draw_params(module: nn.Module, init_std: Optional[float], generator: torch.Generator) -> dict[str, Tensor]:
    """Fresh parameters for ``module``, in ``named_parameters()`` order, from ``generator`` only.

    Weights and biases ~ N(0, init_std²) (the authors' code: 0.01), or with
    ``init_std=None`` PyTorch's default ``U(±1/√fan_in)``.  Batch norm starts as the
    identity (scale 1, shift 0), as in PyTorch and the authors' code; so does layer norm.
    """
    params = {}
    for prefix, layer in module.named_modules():
        for name, param in layer.named_parameters(recurse=False):
            if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
                value = torch.ones(param.shape) if name == "weight" else torch.zeros(param.shape)
            elif init_std is None:
                bound = 1.0 / math.sqrt(layer.weight[0].numel())
                value = (torch.rand(param.shape, generator=generator) * 2 - 1) * bound
            else:
                value = torch.randn(param.shape, generator=generator) * init_std
            params[f"{prefix}.{name}" if prefix else name] = value
    return params


def check_sizes(owner: str, name: str, sizes: Sequence[int]) -> list[int]:
    """``sizes`` as a list (plain data for :attr:`Task.config`), each a positive int."""
    sizes = list(sizes)
    for size in sizes:
        check_positive_int(f"{owner}: {name}", size)
    return sizes


class ImageClassificationTask(Task):
    """A classifier on one split of an image dataset; subclasses say which network.

    Subclasses set ``dataset``, ``root``, ``val_size``, ``batch_size``, ``init_std``,
    ``download`` and ``classes`` (``None``: all ten labels) and implement :meth:`build_module`.
    """

    dataset: str
    root: str
    val_size: int
    batch_size: int
    init_std: Optional[float]
    download: bool
    classes: Optional[list[int]]

    def _check_common(self) -> None:
        owner = type(self).__name__
        check_positive_int(f"{owner}: val_size", self.val_size)
        check_positive_int(f"{owner}: batch_size", self.batch_size)
        if self.init_std is not None:
            check_nonnegative_float(f"{owner}: init_std", self.init_std, ", or null for PyTorch's default init")

    @abstractmethod
    def build_module(self) -> nn.Module:
        """The network (its own weights are never used; build it anywhere)."""

    @functools.cached_property
    def module(self) -> nn.Module:
        """The network's template, on the ``meta`` device: shapes only, shared by all draws."""
        with torch.device("meta"):
            return self.build_module()

    def sample(
        self, generator: torch.Generator, device: Union[torch.device, str] = "cpu", split: Split = "train"
    ) -> ModuleProblem:
        """A fresh network and minibatch order on ``split``'s images.

        ``"train"``: the training files but their last ``val_size`` images (meta-training);
        ``"val"``: those last ``val_size`` images (validation, checkpoint selection);
        ``"test"``: the test files (final evaluation, ``l2l compare``).  From ``generator``,
        in this order: the parameters, then the seed of the minibatch order.
        """
        check_choice(f"{type(self).__name__}.sample: split", split, get_args(Split))
        data = load_images(
            self.dataset,
            self.root,
            split,
            val_size=self.val_size,
            classes=self.classes,
            device=device,
            download=self.download,
        )
        if data.labels.numel() < self.batch_size:
            raise ConfigError(
                f"{type(self).__name__}: the {split} split under {self.root} has {data.labels.numel()} examples, "
                f"fewer than batch_size={self.batch_size}"
            )
        params = {name: value.to(device) for name, value in draw_params(self.module, self.init_std, generator).items()}
        seed = int(torch.randint(2**62, (), generator=generator))
        return ModuleProblem(self.module, params, Minibatches(data, self.batch_size, seed), cross_entropy)
