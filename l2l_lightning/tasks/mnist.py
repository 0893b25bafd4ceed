"""The paper's MNIST optimizee: a small MLP on MNIST or Fashion-MNIST."""

from __future__ import annotations

from typing import Literal, Optional, Sequence

from torch import nn

from l2l_lightning.errors import check_choice
from l2l_lightning.tasks.classification import ImageClassificationTask, check_sizes

_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


class MNISTTask(ImageClassificationTask):
    """An MLP classifying 28×28 images (flattened, scaled to [0, 1]) with cross-entropy.

    Each draw is a fresh network and a fresh minibatch order (the paper: "only θ₀
    and the minibatch order are random").  The ``split`` of :meth:`sample` picks the
    images: ``"train"`` (meta-training) the training file but its last ``val_size``
    images, ``"val"`` (validation) those, ``"test"`` the test file, so a learned
    optimizer is selected and judged on images it never trained on.

    Args:
        dataset: ``"mnist"`` (paper) or ``"fashion_mnist"`` (same format, harder).
        root: folder with the data, in torchvision's layout (``root/MNIST/raw/…``) or flat
            (e.g. ``/usr/share/datasets/fashion-mnist`` from ``apt-get install dataset-fashion-mnist``).
        val_size: training images held out as the ``"val"`` split (the authors' code
            trained on MNIST's customary first 55,000 and kept the last 5,000 for validation).
        hidden_sizes: widths of the hidden layers (paper: one of 20; its generalization
            tests: ``[40]`` and ``[20, 20]``); ``[]`` is logistic regression.
        activation: of the hidden layers: ``"sigmoid"`` (paper), ``"relu"`` (the paper's
            generalization test that fails), ``"tanh"``.
        batch_size: examples per minibatch (paper: 128).
        init_std: weights and biases ~ N(0, init_std²) (authors' code: 0.01); ``None`` for
            PyTorch's default ``U(±1/√fan_in)``.
        download: let torchvision fetch missing files into ``root`` (needs internet).
    """

    classes = None  # all ten labels

    def __init__(
        self,
        dataset: Literal["mnist", "fashion_mnist"] = "mnist",
        root: str = "data",
        val_size: int = 5000,
        hidden_sizes: Sequence[int] = (20,),
        activation: Literal["sigmoid", "relu", "tanh"] = "sigmoid",
        batch_size: int = 128,
        init_std: Optional[float] = 0.01,
        download: bool = False,
    ) -> None:
        check_choice("MNISTTask: dataset", dataset, ("mnist", "fashion_mnist"))
        check_choice("MNISTTask: activation", activation, _ACTIVATIONS)
        self.dataset = dataset
        self.root = str(root)
        self.val_size = val_size
        self.hidden_sizes = check_sizes("MNISTTask", "hidden_sizes", hidden_sizes)
        self.activation = activation
        self.batch_size = batch_size
        self.init_std = None if init_std is None else float(init_std)
        self.download = bool(download)
        self._check_common()

    def build_module(self) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for size in self.hidden_sizes:
            layers += [nn.Linear(width, size), _ACTIVATIONS[self.activation]()]
            width = size
        layers.append(nn.Linear(width, 10))
        return nn.Sequential(*layers)
