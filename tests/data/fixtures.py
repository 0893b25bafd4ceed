"""Tiny datasets in the real on-disk formats, written to a temporary folder.

Every image carries its identity in pixel (0, 0): the index within its split,
plus ``TEST_OFFSET`` for test images.  Labels are ``index % 10``.  So a test can
tell from a minibatch alone which split and which examples it came from, and
whether images and labels stayed paired.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

TEST_OFFSET = 128
SIZES = {"train": 40, "test": 20}
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C}


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` in IDX format (big-endian, as the MNIST files)."""
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
    header += b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def split_arrays(split: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images of ``shape`` tagged in pixel (0, 0), and their labels."""
    n = SIZES[split]
    rng = np.random.default_rng(0 if split == "train" else 1)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = images.reshape(n, -1)
    flat[:, 0] = np.arange(n) + (TEST_OFFSET if split == "test" else 0)
    return images, (np.arange(n) % 10).astype(np.uint8)


def write_mnist(root: Path, folder: str = "MNIST/raw", compressed: bool = True) -> Path:
    """The four IDX files in ``root/folder`` (``folder=""``: flat, like Debian's package)."""
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = split_arrays(split, (28, 28))
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            if compressed:
                (target / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (target / name).write_bytes(data)
    return root


def write_cifar10(root: Path) -> Path:
    """``root/cifar-10-batches-py`` with 5 training batches (8 images each), a test batch and the meta file."""
    target = root / "cifar-10-batches-py"
    target.mkdir(parents=True, exist_ok=True)
    batches = {"test_batch": split_arrays("test", (3, 32, 32))}
    images, labels = split_arrays("train", (3, 32, 32))
    per_batch = SIZES["train"] // 5
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        batches[f"data_batch_{i + 1}"] = images[part], labels[part]
    for name, (images, labels) in batches.items():
        batch = {"batch_label": name, "data": images.reshape(len(images), -1), "labels": labels.tolist()}
        (target / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (target / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    return root
