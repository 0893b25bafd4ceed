"""The models of the benchmark suite: small ordinary ``nn.Module``s, named in a task's YAML by class path.

Each takes its input batch and returns what the task's loss reads (logits, a reconstruction,
or, for :class:`NeuralArtImage`, the loss itself).  They are deliberately small: the suite runs
dozens of tuned baselines per task on a 2-core CPU.  Nothing here is special to learned
optimizers; a user's own model class works the same way.  :class:`MLP` and :class:`ConvNet` live
in :mod:`l2l_lightning.tasks.optimizees`, where the meta-training mixture builds the same kinds of
networks (the suite's YAML names them here, as before).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from l2l_lightning.errors import ConfigError
from l2l_lightning.tasks.optimizees import MLP, Activation, ConvNet

__all__ = ["MLP", "Activation", "CharTransformer", "ConvNet", "NeuralArtImage"]

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
