"""The models of the benchmark suite: small ordinary ``nn.Module``s, named in a task's YAML by class path.

Each takes its input batch and returns what the task's loss reads (logits, a reconstruction,
or, for :class:`NeuralArtImage`, the loss itself).  They are deliberately small: the suite runs
dozens of tuned baselines per task on a 2-core CPU.  Nothing here is special to learned
optimizers; a user's own model class works the same way.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Sequence

import torch
from torch import Tensor, nn

from l2l_lightning.errors import ConfigError

Activation = Literal["relu", "gelu", "tanh", "sigmoid"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ConfigError(f"activation={name!r}; allowed: {', '.join(map(repr, _ACTIVATIONS))}")
    return _ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Flatten, then ``hidden`` fully connected layers with ``activation``, then a linear output layer.

    ``output_activation`` (e.g. ``"sigmoid"`` for an autoencoder's pixels in ``[0, 1]``) follows the last layer.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: Activation = "relu",
        output_activation: Optional[Activation] = None,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), _activation(activation)]
            width = size
        layers.append(nn.Linear(width, out_features))
        if output_activation is not None:
            layers.append(_activation(output_activation))
        super().__init__(*layers)


class ConvNet(nn.Sequential):
    """3×3 convolutions (each optionally batch-normalized), ReLU and 2×2 max-pooling, then a linear classifier."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        image_size: int,
        num_classes: int = 10,
        batch_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        width, size = in_channels, image_size
        for out in channels:
            layers += [nn.Conv2d(width, out, 3, padding=1, bias=not batch_norm)]
            layers += [nn.BatchNorm2d(out)] if batch_norm else []
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            width, size = out, size // 2
        if size < 1:
            raise ConfigError(f"ConvNet: {len(channels)} poolings leave nothing of a {image_size}-pixel image")
        layers += [nn.Flatten(), nn.Linear(width * size * size, num_classes)]
        super().__init__(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return super().forward(images if images.dim() == 4 else images.unsqueeze(1))


class CharTransformer(nn.Module):
    """A small causal (pre-norm) transformer language model over bytes: logits for the next byte at every position."""

    def __init__(self, vocab_size: int = 256, d_model: int = 32, heads: int = 2, layers: int = 2, context: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Parameter(torch.randn(context, d_model) / math.sqrt(d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        if length > self.position.shape[0]:
            raise ConfigError(f"CharTransformer: sequences of {length} bytes exceed its context of {self.position.shape[0]}")
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        hidden = self.blocks(self.embed(tokens) + self.position[:length], mask=mask, is_causal=True)
        return self.head(self.norm(hidden))


class NeuralArtImage(nn.Module):
    """Neural art as a model: the parameter is the image, ``forward()`` returns the style-transfer loss.

    The loss is :class:`~l2l_lightning.tasks.NeuralArtTask`'s (its arguments pass through
    ``task``); the content is a fixed crop of one of the task's *test* photographs
    (``content_seed``), so no optimizer meta-trained on the training photographs has seen it.
    The image starts from uniform noise drawn from the global generator (the run's seed).
    """

    def __init__(self, task: dict[str, Any], content_seed: int = 0) -> None:
        super().__init__()
        from l2l_lightning.tasks import NeuralArtTask

        problem = NeuralArtTask(**task).sample(torch.Generator().manual_seed(content_seed), split="test")
        self._loss = problem.loss
        self.image = nn.Parameter(torch.rand(problem.initial_params().shape))

    def forward(self, _: Any = None) -> Tensor:
        return self._loss(self.image, 0).sum()
