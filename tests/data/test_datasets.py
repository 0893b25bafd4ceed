"""Finding, decoding, caching and (optionally) downloading the datasets, on tiny files in the real layouts."""

from pathlib import Path

import pytest
import torch
import torchvision.datasets

from l2l_lightning import ConfigError, DatasetError
from l2l_lightning.data import load_images
from tests.data.fixtures import SIZES, TEST_OFFSET, split_arrays, write_cifar10, write_mnist

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize(
    "dataset, folder, compressed",
    [
        ("mnist", "MNIST/raw", True),  # torchvision's layout
        ("mnist", "MNIST/raw", False),  # what torchvision's download leaves (besides the .gz)
        ("fashion_mnist", "FashionMNIST/raw", False),
        ("fashion_mnist", "", True),  # flat, like Debian's package
    ],
)
def test_mnist_family_layouts(tmp_path, dataset, folder, compressed):
    write_mnist(tmp_path, folder, compressed)
    for split in ("train", "test"):
        images, labels = load_images(dataset, tmp_path, split, val_size=1)
        expected_images, expected_labels = split_arrays(split, (28, 28))
        n = SIZES[split] - (split == "train")
        assert images.dtype == torch.uint8 and images.shape == (n, 28, 28)
        assert torch.equal(images, torch.from_numpy(expected_images[:n]))
        assert labels.dtype == torch.int64 and torch.equal(labels, torch.from_numpy(expected_labels[:n]).long())


def test_val_is_the_tail_of_the_training_files(tmp_path):
    write_mnist(tmp_path)
    train, val = (load_images("mnist", tmp_path, split, val_size=8) for split in ("train", "val"))
    assert train.images[:, 0, 0].tolist() == list(range(32)) and val.images[:, 0, 0].tolist() == list(range(32, 40))
    assert torch.equal(val.labels, torch.arange(32, 40) % 10)
    with pytest.raises(ConfigError, match="val_size=40 leaves no training images: MNIST's training files .* hold 40"):
        load_images("mnist", tmp_path, "train", val_size=40)


def test_cifar10_layout_and_the_batches_folder_itself(tmp_path):
    write_cifar10(tmp_path)
    images, labels = load_images("cifar10", tmp_path, "train", val_size=4)
    expected, expected_labels = split_arrays("train", (3, 32, 32))
    assert images.shape == (36, 3, 32, 32) and torch.equal(images, torch.from_numpy(expected[:36]))
    assert torch.equal(labels, torch.from_numpy(expected_labels[:36]).long())  # batches concatenated in order 1 … 5
    test_images, _ = load_images("cifar10", tmp_path / "cifar-10-batches-py", "test")
    assert test_images.shape == (20, 3, 32, 32) and int(test_images[0, 0, 0, 0]) == TEST_OFFSET


def test_decoded_once_per_process(tmp_path):
    write_mnist(tmp_path)
    first = load_images("mnist", tmp_path, "train", val_size=4)
    for path in (tmp_path / "MNIST/raw").iterdir():
        path.unlink()
    second = load_images("mnist", str(tmp_path / "MNIST" / ".." / "."), "train", val_size=4)  # spelled otherwise
    assert second.images is first.images
    assert load_images("mnist", tmp_path, "val", val_size=4).labels.numel() == 4  # same files, already decoded


def test_classes_keeps_those_labels_renumbered_in_the_order_given(tmp_path):
    write_cifar10(tmp_path)
    images, labels = load_images("cifar10", tmp_path, "train", val_size=10, classes=[7, 2])
    tags = images[:, 0, 0, 0].long()  # the example's index in the split
    assert torch.equal(tags % 10 == 7, labels == 0) and torch.equal(tags % 10 == 2, labels == 1)
    assert sorted(tags.tolist()) == [2, 7, 12, 17, 22, 27]  # the last 10 (30 … 39) are held out first
    with pytest.raises(ConfigError, match="distinct labels in 0 … 9"):
        load_images("cifar10", tmp_path, "train", classes=[1, 1])


def test_missing_folder_says_where_it_looked_what_it_wanted_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError) as error:
        load_images("fashion_mnist", tmp_path / "nowhere", "test")
    message = str(error.value)
    assert f"{tmp_path / 'nowhere' / 'FashionMNIST' / 'raw'} (torchvision's layout): no such folder" in message
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "download: true" in message and "apt-get install dataset-fashion-mnist" in message
    with pytest.raises(DatasetError) as error:
        load_images("mnist", tmp_path, "train")
    assert "download: true" in str(error.value) and "apt-get" not in str(error.value)  # no Debian package for MNIST


def test_a_partly_filled_folder_names_the_missing_file(tmp_path):
    write_mnist(tmp_path, "", compressed=False)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match=r"(?m)\(a flat folder\): missing train-labels-idx1-ubyte\[\.gz\]$"):
        load_images("mnist", tmp_path, "train")
    assert load_images("mnist", tmp_path, "test").labels.numel() == SIZES["test"]  # the other split is whole


def test_a_truncated_file_is_named(tmp_path):
    write_mnist(tmp_path, compressed=True)
    path = tmp_path / "MNIST/raw/t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetError, match="truncated or corrupt") as error:
        load_images("mnist", tmp_path, "test")
    assert str(path) in str(error.value)


def test_images_and_labels_that_do_not_match_are_refused(tmp_path):
    write_mnist(tmp_path, "", compressed=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DatasetError, match="expected 20 uint8 labels below 10 to go with"):
        load_images("mnist", tmp_path, "test")


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_files_announcing_zero_images_are_refused(tmp_path, dataset):
    import numpy as np

    from tests.data.fixtures import idx_bytes

    if dataset == "mnist":
        write_mnist(tmp_path, "", compressed=False)
        (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8)))
        (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros((0,), np.uint8)))
        named = tmp_path / "t10k-labels-idx1-ubyte"
    else:
        import pickle

        write_cifar10(tmp_path)
        named = tmp_path / "cifar-10-batches-py" / "test_batch"
        named.write_bytes(pickle.dumps({"data": np.zeros((0, 3072), np.uint8), "labels": []}, protocol=2))
    with pytest.raises(DatasetError, match="hold 0 images") as error:
        load_images(dataset, tmp_path, "test")
    assert str(named) in str(error.value)


class _FakeTorchvisionDataset:
    """Stands in for torchvision's dataset class: records the call, then 'downloads' the tiny files."""

    calls: list = []

    def __init__(self, root, train, download):
        self.calls.append((root, train, download))
        write_mnist(Path(root), "FashionMNIST/raw", compressed=False)


def test_download_goes_through_torchvision_only_when_files_are_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", _FakeTorchvisionDataset)
    monkeypatch.setattr(_FakeTorchvisionDataset, "calls", [])
    images, _ = load_images("fashion_mnist", tmp_path, "test", download=True)
    assert _FakeTorchvisionDataset.calls == [(str(tmp_path), False, True)] and images.shape == (20, 28, 28)
    load_images("fashion_mnist", tmp_path, "train", val_size=4, download=True)  # now present: no second download
    assert len(_FakeTorchvisionDataset.calls) == 1


def test_a_failed_download_is_a_dataset_error(tmp_path, monkeypatch):
    def offline(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DatasetError, match=f"downloading MNIST into {tmp_path} failed: .*no network"):
        load_images("mnist", tmp_path, "train", download=True)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="needs `apt-get install dataset-fashion-mnist`")
def test_debian_fashion_mnist_folder_loads_as_is():
    images, labels = load_images("fashion_mnist", DEBIAN_FASHION, "test")
    assert images.shape == (10_000, 28, 28) and torch.equal(labels.bincount(), torch.full((10,), 1000))
