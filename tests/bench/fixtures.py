"""A tiny suite in a temporary folder: every model family and data stream of the real suite, on fake data.

Fake Fashion-MNIST IDX files (``tests.data.fixtures``), a few lines of fake text, small random PNGs
for neural art; nothing of the Debian data is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from tests.data.fixtures import write_mnist

LSQ = {
    "steps": 40,
    "model": {"class_path": "torch.nn.Linear", "init_args": {"in_features": 5, "out_features": 1, "bias": False}},
    "data": {"class_path": "l2l_lightning.bench.data.LeastSquares", "init_args": {"dim": 5, "examples": 50, "batch_size": 8}},
    "loss": "mse",
}


def write_task(folder: Path, name: str, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def write_images(folder: Path, count: int = 6, size: int = 20) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(folder / f"photo{i}.png")
    return folder


def make_suite(root: Path) -> Path:
    """``root/suite`` with one task per model family, data under ``root``."""
    images = write_mnist(root / "fashion", folder="")
    text = root / "text"
    text.mkdir()
    (text / "fortunes").write_text("Laugh and the world laughs with you.\n%\nA fool and his money.\n" * 4)
    (text / "fortunes.dat").write_bytes(b"\0" * 8)  # an index file, not text: skipped
    photos = write_images(root / "photos")
    suite = root / "suite"
    fashion = {"root": str(images), "size": 8, "batch_size": 8, "val_size": 10}
    write_task(suite, "lsq", LSQ)
    write_task(suite, "mlp", {
        "steps": 40,
        "model": {"class_path": "l2l_lightning.bench.models.MLP", "init_args": {"in_features": 64, "hidden": [6], "out_features": 10, "activation": "gelu"}},
        "data": {"class_path": "l2l_lightning.bench.data.ImageClassification", "init_args": fashion},
    })  # fmt: skip
    write_task(suite, "cnn_bn", {
        "steps": 40,
        "model": {"class_path": "l2l_lightning.bench.models.ConvNet", "init_args": {"in_channels": 1, "channels": [2], "image_size": 8, "batch_norm": True}},
        "data": {"class_path": "l2l_lightning.bench.data.ImageClassification", "init_args": fashion},
    })  # fmt: skip
    write_task(suite, "autoencoder", {
        "steps": 40,
        "model": {"class_path": "l2l_lightning.bench.models.MLP", "init_args": {"in_features": 64, "hidden": [4], "out_features": 64, "output_activation": "sigmoid"}},
        "data": {"class_path": "l2l_lightning.bench.data.ImageClassification", "init_args": {**fashion, "target": "images"}},
        "loss": "mse",
    })  # fmt: skip
    write_task(suite, "lm", {
        "steps": 40,
        "model": {"class_path": "l2l_lightning.bench.models.CharTransformer", "init_args": {"d_model": 8, "heads": 2, "layers": 1, "context": 8}},
        "data": {"class_path": "l2l_lightning.bench.data.CharText", "init_args": {"root": str(text), "context": 8, "batch_size": 4}},
    })  # fmt: skip
    write_task(suite, "art", {
        "steps": 40,
        "model": {"class_path": "l2l_lightning.bench.models.NeuralArtImage", "init_args": {"task": {
            "content_root": str(photos), "style_image": str(photos / "photo0.png"), "resolution": 8, "images_per_draw": 1,
            "val_images": 1, "test_images": 1, "feature_channels": [4, 8]}}},
        "data": {"class_path": "l2l_lightning.bench.data.NoData"},
        "loss": "output",
    })  # fmt: skip
    return suite
