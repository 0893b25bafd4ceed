"""Small optimizee networks of the task mixture (and of ``l2l bench``), written to run under ``torch.func.vmap``.

:class:`~l2l_lightning.tasks.StackedModuleProblem` evaluates several draws of one
architecture in one ``vmap``-ed ``functional_call``, so these modules only use ops with
batching rules (linear, conv, matmul, layer norm, embedding) and keep every parameter in a
``nn.Linear`` / ``nn.Conv2d`` / ``nn.Embedding`` / ``nn.LayerNorm``, whose fan-in
:func:`~l2l_lightning.tasks.classification.draw_params` reads.  That is why the transformer
is written out here instead of using ``nn.TransformerEncoderLayer`` (a fused fast path, and a
bare ``nn.Parameter`` for positions).
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from l2l_lightning.errors import ConfigError

Activation = Literal["relu", "gelu", "tanh", "sigmoid"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation={name!r}; allowed: {', '.join(map(repr, ACTIVATIONS))}")
    return ACTIVATIONS[name]()


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


class _Block(nn.Module):
    """A pre-norm transformer block with one causal attention head and a GELU MLP (4× wide)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        attention = (q @ k.transpose(-1, -2) / math.sqrt(x.shape[-1]) + mask).softmax(-1)
        x = x + self.proj(attention @ v)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class CharTransformer(nn.Module):
    """A causal byte-level transformer language model: logits for the next byte at every position."""

    def __init__(self, width: int, layers: int, context: int, vocab_size: int = 256) -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab_size, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[-1]
        positions = torch.arange(length, device=tokens.device)
        mask = torch.full((length, length), -math.inf, device=tokens.device).triu(1)
        x = self.embed(tokens) + self.position(positions)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


def next_byte_loss(logits: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean cross-entropy of every position's next byte (a language model's ``loss_fn``)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1].reshape(-1))


def reconstruction_loss(output: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean squared error of a reconstruction of the (flattened) input (an autoencoder's ``loss_fn``)."""
    return F.mse_loss(output, batch[1].flatten(start_dim=1))
