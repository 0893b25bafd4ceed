"""The paper's fourth experiment: neural art (style transfer after Gatys et al. 2016).

The optimizee is an image: its pixels are θ.  The loss of an image ``x`` is

    f(x) = content_weight · Σ_{l ∈ content_layers} mean((F_l(x) − F_l(c))²)
         + style_weight   · Σ_{l ∈ style_layers}   mean((G_l(x) − G_l(s))²)

with ``F_l`` the activations of layer ``l`` of a frozen convolutional network,
``G_l = F_l F_lᵀ / (h·w)`` their Gram matrix, ``c`` the content image and ``s`` the
style image.  One draw holds ``images_per_draw`` content images, each its own
optimizee (for the coordinatewise optimizer they are just more rows), all with the
same style image.  Content comes from a folder of photographs split into
train / val / test images by content hash (:mod:`l2l_lightning.data.images`), so the
images a learned optimizer is judged on were never seen in meta-training.

The paper trained on 64×64 content images with one style image and tested on new
content images, on 128×128 images and with another style image: those are this
task's ``resolution`` and ``style_image``.  The paper, as far as we could check, does not say how the image is
initialized; we start from uniform noise as Gatys et al. do (``init="noise"``);
``init="content"`` starts from the content image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Sequence, Union, get_args

import torch
from torch import Tensor

from l2l_lightning.data.images import center_crop, load_image_splits, random_crops, read_image
from l2l_lightning.errors import ConfigError, check_choice, check_nonnegative_float, check_nonnegative_int, check_positive_int
from l2l_lightning.tasks.base import Problem, Split, Task
from l2l_lightning.tasks.features import FEATURE_NETS, FeatureNet, default_layers, feature_net

Init = Literal["noise", "content"]


def gram(features: Tensor) -> Tensor:
    """``(K, C, h, w) -> (K, C, C)``: channel correlations averaged over positions."""
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


class NeuralArtProblem(Problem):
    """``K`` images being stylized; ``theta`` is their pixels, ``(K, 3, H, W)`` flattened.

    Besides the :class:`~l2l_lightning.tasks.base.Problem` contract it offers
    :meth:`to_images` and :meth:`references`, which ``l2l compare`` and validation use
    to draw the optimizees as pictures.
    """

    def __init__(
        self,
        net: FeatureNet,
        content: Tensor,
        style: Tensor,
        theta0: Tensor,
        content_layers: Sequence[str],
        style_layers: Sequence[str],
        content_weight: float,
        style_weight: float,
    ) -> None:
        self.net, self.content, self.style = net, content, style
        self.shape = content.shape
        self.num_optimizees = content.shape[0]
        self.content_layers, self.style_layers = list(content_layers), list(style_layers)
        self.content_weight, self.style_weight = content_weight, style_weight
        with torch.no_grad():
            self.content_targets = net(content, self.content_layers)
            self.style_targets = {name: gram(f) for name, f in net(style.unsqueeze(0), self.style_layers).items()}
        self._layers = sorted(set(self.content_layers) | set(self.style_layers), key=net.names.index)
        self._theta0 = theta0.reshape(-1)

    def initial_params(self) -> Tensor:
        return self._theta0.clone()

    def loss(self, theta: Tensor, step: int) -> Tensor:
        features = self.net(theta.view(self.shape), self._layers)
        loss = theta.new_zeros(self.num_optimizees)
        if self.content_weight:
            for name in self.content_layers:
                loss = loss + self.content_weight * (features[name] - self.content_targets[name]).square().flatten(1).mean(1)
        if self.style_weight:
            for name in self.style_layers:
                loss = loss + self.style_weight * (gram(features[name]) - self.style_targets[name]).square().flatten(1).mean(1)
        return loss

    def to_images(self, theta: Tensor) -> Tensor:
        """The optimizees at ``theta`` as displayable images ``(K, 3, H, W)`` in ``[0, 1]``."""
        return theta.detach().view(self.shape).clamp(0, 1)

    def references(self) -> dict[str, Tensor]:
        """What each optimizee is made from, as images ``(K, 3, H, W)``: its content and the style."""
        return {"content": self.content, "style": self.style.expand_as(self.content)}


class NeuralArtTask(Task):
    """Stylize content photographs with one style image; each draw, ``images_per_draw`` of them.

    Args:
        content_root: folder of content photographs (any format Pillow reads).
        style_image: path of the style image (at least ``resolution`` pixels on its shorter side).
        content_files: which files of ``content_root`` to use (``None``: every image file there).
        resolution: side of the square images optimized (paper: 64 for training, 128 in a test).
        images_per_draw: content images (optimizees) per draw.
        val_images, test_images: how many content files form the validation and test splits.
        init: θ₀: ``"noise"`` (uniform pixels, Gatys et al.; default) or ``"content"`` (the content image).
        feature_net: ``"random"`` (seeded random filters, offline; default) or ``"vgg19"``.
        feature_channels, feature_seed: widths of the random network's layers and its seed.
        vgg_weights: path of torchvision VGG-19 weights, or ``"random"`` (cost measurements only).
        download: let torchvision fetch VGG-19's ImageNet weights (needs internet).
        content_layers, style_layers: layers of the feature network the losses read
            (``None``: the random net's second ReLU / all its ReLUs (``relu2`` / ``relu1-3``);
            Gatys et al.'s ``relu4_2`` / ``relu1_1 … relu5_1`` for VGG-19).
        content_weight, style_weight: the weights of the two loss terms.

    A training draw takes random crops (and horizontal flips) of random training images;
    validation and test draws take random crops, unflipped, of their own split's images.
    The style image is resized and center-cropped to the resolution.
    """

    def __init__(
        self,
        content_root: str,
        style_image: str,
        content_files: Optional[Sequence[str]] = None,
        resolution: int = 64,
        images_per_draw: int = 2,
        val_images: int = 3,
        test_images: int = 4,
        init: Init = "noise",
        feature_net: Literal["random", "vgg19"] = "random",
        feature_channels: Sequence[int] = (32, 64, 128),
        feature_seed: int = 0,
        vgg_weights: Optional[str] = None,
        download: bool = False,
        content_layers: Optional[Sequence[str]] = None,
        style_layers: Optional[Sequence[str]] = None,
        content_weight: float = 1.0,
        style_weight: float = 10.0,
    ) -> None:
        owner = "NeuralArtTask"
        for name, value in (("resolution", resolution), ("images_per_draw", images_per_draw), ("test_images", test_images)):
            check_positive_int(f"{owner}: {name}", value)
        check_nonnegative_int(f"{owner}: val_images", val_images)
        check_choice(f"{owner}: init", init, get_args(Init))
        check_choice(f"{owner}: feature_net", feature_net, FEATURE_NETS)
        if feature_net == "vgg19" and vgg_weights is None and not download:
            raise ConfigError(
                f"{owner}: feature_net='vgg19' needs vgg_weights=<path of torchvision's vgg19 weights> "
                "(or 'random' to measure cost), or download: true to let torchvision fetch them (needs internet)"
            )
        for name, value in (("content_weight", content_weight), ("style_weight", style_weight)):
            check_nonnegative_float(f"{owner}: {name}", value)
        self.content_root, self.style_image = str(content_root), str(style_image)
        self.content_files = None if content_files is None else [str(f) for f in content_files]
        self.resolution, self.images_per_draw = resolution, images_per_draw
        self.val_images, self.test_images, self.init = val_images, test_images, init
        self.feature_net = feature_net
        self.feature_channels = [int(c) for c in feature_channels]
        for c in self.feature_channels:
            check_positive_int(f"{owner}: feature_channels entry", c)
        self.feature_seed, self.vgg_weights, self.download = int(feature_seed), vgg_weights, bool(download)
        default_content, default_style = default_layers(feature_net, len(self.feature_channels))
        self.content_layers = list(content_layers) if content_layers is not None else None
        self.style_layers = list(style_layers) if style_layers is not None else None
        self._layers = (self.content_layers or default_content, self.style_layers or default_style)
        self.content_weight, self.style_weight = float(content_weight), float(style_weight)

    def net(self, device: Union[torch.device, str] = "cpu") -> FeatureNet:
        """The frozen feature network on ``device`` (shared by every draw in the process)."""
        net = feature_net(
            self.feature_net, tuple(self.feature_channels), self.feature_seed, self.vgg_weights, self.download, str(device)
        )
        net.check_layers(self._layers[0], "content_layers")
        net.check_layers(self._layers[1], "style_layers")
        return net

    def split_names(self) -> dict[str, list[str]]:
        """Which content files form each split."""
        return self._splits().names

    def _splits(self):
        files = None if self.content_files is None else tuple(self.content_files)
        return load_image_splits(self.content_root, files, self.resolution, self.val_images, self.test_images)

    def sample(
        self, generator: torch.Generator, device: Union[torch.device, str] = "cpu", split: Split = "train"
    ) -> NeuralArtProblem:
        """``images_per_draw`` crops of ``split``'s content images, then θ₀, all from ``generator``."""
        check_choice("NeuralArtTask.sample: split", split, get_args(Split))
        images = getattr(self._splits(), split)
        if not images:
            raise ConfigError(f"NeuralArtTask: the {split} split is empty; set val_images/test_images >= 1")
        content = random_crops(images, self.images_per_draw, self.resolution, generator, flip=split == "train")
        theta0 = torch.rand(content.shape, generator=generator) if self.init == "noise" else content.clone()
        return self.problem(content, theta0, device)

    def problem(
        self, content: Tensor, theta0: Optional[Tensor] = None, device: Union[torch.device, str] = "cpu"
    ) -> NeuralArtProblem:
        """The problem of stylizing the given ``content`` images ``(K, 3, H, W)`` in ``[0, 1]``.

        With this task's style image, feature network, layers and weights: how a user's own
        photograph is stylized with exactly the loss an optimizer was meta-trained on
        (``examples/stylize_image.py``).  ``theta0``: the starting images (default: as ``init`` says,
        noise from the global generator).  ``H`` and ``W`` may differ from ``resolution``; the
        style image is then read at ``min(H, W)``.
        """
        if theta0 is None:
            theta0 = torch.rand(content.shape) if self.init == "noise" else content.clone()
        size = min(content.shape[-2:])
        style = center_crop(read_image(Path(self.style_image), size, "style image"), size)
        return NeuralArtProblem(
            self.net(device),
            content.to(device),
            style.to(device),
            theta0.to(device),
            *self._layers,
            self.content_weight,
            self.style_weight,
        )
