"""Frozen convolutional feature networks for the neural-art loss (Gatys et al. 2016).

Two networks, one interface: ``net(images, layers)`` takes images in ``[0, 1]``
``(K, 3, H, W)``, normalizes them with ImageNet's mean and standard deviation (both
networks alike, so a config can switch between them without touching anything else)
and returns the activations of the named ``layers``.

* :class:`RandomFeatures`, the offline default: a few 3×3 conv + ReLU layers with
  seeded random (He-normal) filters and 2×2 average pooling between them.  Random
  filters are enough for texture synthesis (Ustyuzhaninov et al. 2017, *What does it
  take to generate natural textures?*), need no download and are cheap: this is what
  made the shipped ``neural_art`` optimizer and its figures.  Layers: ``relu1`` …
  ``reluN``.
* :class:`VGG19Features`: torchvision's VGG-19 ``features`` (Gatys et al.'s network),
  with weights from a local file, downloaded by torchvision on request
  (``download=True``), or left random (``weights="random"``, for cost measurements
  only).  Layers are named as in Gatys et al.: ``conv1_1``, ``relu1_1``, …,
  ``pool1``, …, ``relu5_4``.

The networks are only run as far as the deepest requested layer.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from l2l_lightning.errors import CheckpointError, ConfigError, DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureNet(nn.Module):
    """A frozen sequence of named layers behind ImageNet normalization."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        super().__init__()
        self.names = list(layers)
        self.body = nn.ModuleList(layers.values())
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def check_layers(self, layers: Sequence[str], setting: str) -> None:
        """Raise :class:`ConfigError` naming ``setting`` if a layer name is unknown."""
        unknown = [name for name in layers if name not in self.names]
        if unknown or not layers:
            raise ConfigError(
                f"NeuralArtTask: {setting}={list(layers)!r}: {'no layer given' if not layers else f'unknown {unknown}'}; "
                f"this feature network has {', '.join(self.names)}"
            )

    def forward(self, images: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        wanted, out = set(layers), {}
        x = (images - self.mean) / self.std
        for name, layer in zip(self.names, self.body):
            x = layer(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return out


class RandomFeatures(FeatureNet):
    """Seeded random conv features: ``conv3×3 → ReLU (→ 2×2 avg-pool)`` per entry of ``channels``.

    The same ``seed`` and ``channels`` always give the same filters, on any machine
    (they are drawn on the CPU from their own generator, never the global one).
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128), seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        layers: dict[str, nn.Module] = {}
        width = 3
        for i, out in enumerate(channels, start=1):
            conv = nn.Conv2d(width, out, 3, padding=1, padding_mode="reflect")
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / (width * 9)) ** 0.5)
                conv.bias.zero_()
            layers[f"conv{i}"], layers[f"relu{i}"] = conv, nn.ReLU()
            if i < len(channels):
                layers[f"pool{i}"] = nn.AvgPool2d(2)
            width = out
        super().__init__(layers)


_VGG19_BLOCKS = (2, 2, 4, 4, 4)


class VGG19Features(FeatureNet):
    """torchvision's VGG-19 convolutional part, layers named as in Gatys et al.

    Args:
        weights: path of a state dict of ``torchvision.models.vgg19`` (e.g. torchvision's
            ``vgg19-dcbb9e9d.pth``; the whole model's or just ``features``'), or ``"random"``
            for randomly initialised weights (only meaningful for measuring cost), or
            ``None`` together with ``download=True``.
        download: let torchvision fetch the ImageNet weights (needs internet).
    """

    def __init__(self, weights: Optional[str] = None, download: bool = False) -> None:
        from torchvision.models import VGG19_Weights, vgg19

        if download:
            features = vgg19(weights=VGG19_Weights.IMAGENET1K_V1).features
        else:
            if weights is None:
                raise ConfigError(
                    "NeuralArtTask: the vgg19 feature network needs vgg_weights=<path of a vgg19 state dict>, "
                    "or download: true to let torchvision fetch it (needs internet)"
                )
            features = _vgg19_features()
            if weights != "random":
                features.load_state_dict(_read_vgg_state(Path(weights)))
        layers: dict[str, nn.Module] = {}
        modules = iter(features)
        for block, convs in enumerate(_VGG19_BLOCKS, start=1):
            for j in range(1, convs + 1):
                layers[f"conv{block}_{j}"] = next(modules)
                next(modules)
                layers[f"relu{block}_{j}"] = nn.ReLU()  # not in place: a returned activation must stay intact
            layers[f"pool{block}"] = next(modules)
        super().__init__(layers)


def _vgg19_features() -> nn.Sequential:
    """torchvision's VGG-19 ``features`` with fresh random weights, without building the
    120M-parameter classifier that ``vgg19()`` would also initialise."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["E"], batch_norm=False)


def _read_vgg_state(path: Path) -> dict[str, Tensor]:
    """The ``features`` part of a VGG-19 state dict at ``path``, checked for shape."""
    if not path.is_file():
        raise DatasetError(
            f"VGG-19 weights file {path} does not exist; give the path of torchvision's vgg19 weights "
            "(vgg19-dcbb9e9d.pth), or set download: true to let torchvision fetch them (needs internet)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise CheckpointError(f"VGG-19 weights file {path} cannot be read ({type(error).__name__}); expected a torch state dict") from None
    if isinstance(state, dict) and any(k.startswith("features.") for k in state):
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    expected = {k: v.shape for k, v in _vgg19_features().state_dict().items()}
    got = {k: v.shape for k, v in state.items()} if isinstance(state, dict) else {}
    if got != expected:
        missing = sorted(set(expected) - set(got))[:3]
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])[:3]
        raise CheckpointError(
            f"VGG-19 weights file {path} is not a torchvision vgg19 state dict (missing {missing or 'nothing'}, "
            f"wrong shape {wrong or 'none'}); give torchvision's vgg19 weights (vgg19-dcbb9e9d.pth)"
        )
    return state


@functools.lru_cache(maxsize=8)
def feature_net(
    kind: str, channels: tuple[int, ...], seed: int, vgg_weights: Optional[str], download: bool, device: str
) -> FeatureNet:
    """The frozen feature network for these settings on ``device`` (built once per process)."""
    if kind == "random":
        net: FeatureNet = RandomFeatures(channels, seed)
    elif kind == "vgg19":
        net = VGG19Features(vgg_weights, download)
    else:
        raise ConfigError(f"NeuralArtTask: feature_net={kind!r}; allowed: 'random', 'vgg19'")
    return net.to(device)


def default_layers(kind: str, num_random_layers: int) -> tuple[list[str], list[str]]:
    """Default ``(content_layers, style_layers)``: Gatys et al.'s for VGG-19; for the random
    network its second ReLU (or its only one) for content and every ReLU for style."""
    if kind == "vgg19":
        return ["relu4_2"], ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    return [f"relu{min(2, num_random_layers)}"], [f"relu{i}" for i in range(1, num_random_layers + 1)]


FEATURE_NETS = ("random", "vgg19")
