"""Stylize your own photograph with the shipped neural-art learned optimizer.

The image tensor itself is the parameter: ``LearnedOptimizer([image], checkpoint="neural_art")``
steps its pixels exactly as ``torch.optim.Adam`` would, with the loss the optimizer was
meta-trained on (its task settings are read from the shipped file's metadata: feature
network, layers, weights and, unless ``--style`` says otherwise, the style image).

Run::

    apt-get install opencv-doc          # the style image the optimizer was trained with (Van Gogh)
    python examples/stylize_image.py MY_PHOTO.jpg --out stylized.png
    python examples/stylize_image.py MY_PHOTO.jpg --resolution 128 --steps 200 --style OTHER_PAINTING.jpg

Prints the loss at the start and after the last step and writes the result as a PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image

from l2l_lightning import LearnedOptimizer, NeuralArtTask
from l2l_lightning.data.images import center_crop, read_image
from l2l_lightning.optim.pretrained import info


def stylize(
    photo: Path,
    checkpoint: str = "neural_art",
    steps: int = 100,
    resolution: int = 64,
    style: Optional[str] = None,
    seed: int = 0,
) -> tuple[torch.Tensor, list[float]]:
    """The stylized image ``(3, resolution, resolution)`` in ``[0, 1]`` and the losses ``f(θ_0) … f(θ_steps)``.

    ``seed`` fixes the starting noise, so a rerun starts, and ends, at the same loss.
    """
    settings = dict(info(checkpoint)["task"]["init_args"])
    if style is not None:
        settings["style_image"] = style
    task = NeuralArtTask(**settings)
    content = center_crop(read_image(photo, resolution, "photo"), resolution).unsqueeze(0)
    torch.manual_seed(seed)  # the task draws θ₀ (noise) from the global generator
    problem = task.problem(content)
    image = torch.nn.Parameter(problem.initial_params().view(content.shape))
    optimizer = LearnedOptimizer([image], checkpoint=checkpoint)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = problem.loss(image.view(-1), 0).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())  # the loss before this step's update
    with torch.no_grad():
        losses.append(problem.loss(image.view(-1), 0).sum().item())
    return problem.to_images(image.detach().view(-1))[0], losses


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photo", type=Path, help="the content image (any format Pillow reads)")
    parser.add_argument("--out", type=Path, default=Path("stylized.png"))
    parser.add_argument("--checkpoint", default="neural_art", help="shipped name, exported .pt or MetaLearner .ckpt")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--resolution", type=int, default=64, help="side of the square result (trained at 64)")
    parser.add_argument("--style", default=None, help="style image (default: the one the optimizer was trained with)")
    parser.add_argument("--seed", type=int, default=0, help="of the starting noise")
    args = parser.parse_args(argv)
    image, losses = stylize(args.photo, args.checkpoint, args.steps, args.resolution, args.style, args.seed)
    pixels = (image * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(args.out)
    print(f"loss {losses[0]:.4g} at the start, {losses[-1]:.4g} after {len(losses) - 1} steps; wrote {args.out}")


if __name__ == "__main__":
    main()
