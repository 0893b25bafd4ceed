"""The mixture's data sources: batches a pure function of (seed, step), splits that never overlap."""

from __future__ import annotations

import torch

from l2l_lightning.data.sources import TextWindows, fashion_mnist, text_corpus
from tests.data.fixtures import write_mnist


def test_text_splits_are_consecutive_disjoint_parts(tmp_path):
    (tmp_path / "a").write_bytes(bytes(range(200)))
    (tmp_path / "a.dat").write_bytes(b"index, not text")
    parts = [text_corpus(str(tmp_path), split) for split in ("train", "val", "test")]
    assert torch.equal(torch.cat(parts), torch.arange(200)) and [len(p) for p in parts] == [180, 10, 10]


def test_text_windows_depend_on_seed_and_step_only():
    text = torch.arange(1000)
    windows = TextWindows(text, context=8, batch_size=3, seed=5)
    inputs, targets = windows(7)
    assert inputs.shape == targets.shape == (3, 8) and torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal(windows(7)[0], TextWindows(text, 8, 3, seed=5)(7)[0])
    assert not torch.equal(windows(7)[0], windows(8)[0])


def test_downsampled_fashion_mnist_keeps_labels_and_uint8(tmp_path):
    write_mnist(tmp_path, folder="")
    full = fashion_mnist(str(tmp_path), "train", 28, 10, "cpu")
    small = fashion_mnist(str(tmp_path), "train", 14, 10, "cpu")
    assert small.images.shape == (30, 14, 14) and small.images.dtype == torch.uint8
    assert torch.equal(small.labels, full.labels)
    blocks = full.images.float().view(30, 14, 2, 14, 2).mean(dim=(2, 4))  # 28 -> 14: the mean of each 2×2 block
    assert (small.images.float() - blocks).abs().max() <= 0.5
