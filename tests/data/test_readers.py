"""The IDX and CIFAR-batch readers: round trips, and a clear error naming the file for anything broken."""

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from l2l_lightning import DatasetError, L2LError
from l2l_lightning.data.readers import read_cifar_batch, read_idx
from tests.data.fixtures import idx_bytes


@pytest.mark.parametrize("compressed", [False, True])
def test_idx_round_trip_plain_and_gzipped(tmp_path, compressed):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.gz" if compressed else "a")
    path.write_bytes(gzip.compress(idx_bytes(images)) if compressed else idx_bytes(images))
    out = read_idx(path)
    assert out.dtype == torch.uint8 and torch.equal(out, torch.from_numpy(images))


def test_idx_multibyte_values_are_read_big_endian(tmp_path):
    values = np.array([1, 256, -2, 30000], dtype=np.int16)
    (tmp_path / "v").write_bytes(idx_bytes(values))
    assert read_idx(tmp_path / "v").tolist() == [1, 256, -2, 30000]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[:-5], "holds 19 bytes of data, its header announces 24"),
        (lambda data: data[:6], "ends inside its header"),
        (lambda data: b"PK\x03\x04" + data[4:], "does not start with an IDX magic number"),
    ],
)
def test_broken_idx_files_are_named(tmp_path, damage, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(idx_bytes(np.zeros((2, 3, 4), np.uint8))))
    with pytest.raises(DatasetError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value) and "truncated or corrupt" in str(error.value)


@pytest.mark.parametrize("damage", [lambda gz: gz[: len(gz) // 2], lambda gz: gz[:10] + b"\xff" * 20 + gz[30:]])
def test_truncated_or_corrupt_gzip_is_named(tmp_path, damage):
    compressed = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 255, (50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(damage(compressed))
    with pytest.raises(DatasetError, match="cannot be read") as error:
        read_idx(path)
    assert str(path) in str(error.value)
    assert isinstance(error.value, L2LError) and isinstance(error.value, OSError)


def _batch_bytes(n=4, **overrides):
    batch = {"data": np.arange(n * 3072, dtype=np.int64).astype(np.uint8).reshape(n, 3072), "labels": list(range(n))}
    batch.update(overrides)
    return pickle.dumps(batch, protocol=2)


def test_cifar_batch_round_trip_also_from_numpy1_pickles(tmp_path):
    data = _batch_bytes()
    # CIFAR-10's own files were written with numpy 1, whose arrays pickle under another module name.
    for name, content in (("new", data), ("old", data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))):
        (tmp_path / name).write_bytes(content)
        images, labels = read_cifar_batch(tmp_path / name)
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
        assert images[1, 0, 0, 0] == 3072 % 256 and labels.tolist() == [0, 1, 2, 3] and labels.dtype == torch.int64


@pytest.mark.parametrize(
    "content, message",
    [
        (_batch_bytes()[:-100], "not a readable CIFAR-10 batch"),
        (pickle.dumps({"labels": [1]}), "KeyError"),
        (_batch_bytes(labels=[0, 1]), r"expected \(N, 3072\) uint8 and N labels"),
        (pickle.dumps(os.system), "refers to posix.system"),  # a pickle that would run code is refused
    ],
    ids=["truncated", "no data", "labels do not match", "code"],
)
def test_broken_cifar_batches_are_named(tmp_path, content, message):
    path = tmp_path / "data_batch_3"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message) as error:
        read_cifar_batch(path)
    assert str(path) in str(error.value)
