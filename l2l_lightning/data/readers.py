"""Readers for the two on-disk formats: IDX (the MNIST family) and CIFAR-10's pickled batches.

We parse the files ourselves instead of going through torchvision's dataset
classes because those (a) only read *uncompressed* IDX files, while Debian's
``dataset-fashion-mnist`` ships gzipped ones, (b) verify CIFAR files against the
official MD5 sums, which rules out small test fixtures, and (c) report a truncated
file with a bare ``AssertionError``.  Every failure here becomes a
:class:`~l2l_lightning.errors.DatasetError` that names the file.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from l2l_lightning.errors import DatasetError

#: IDX type codes (third byte of the magic number) → big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _broken(path: Path, what: str) -> DatasetError:
    return DatasetError(f"{path}: {what}; the file is truncated or corrupt: delete it and get it again")


def read_idx(path: Path) -> Tensor:
    """The array stored in IDX file ``path`` (gzip-compressed when its name ends in ``.gz``)."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            raw = file.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise _broken(path, f"cannot be read ({error})") from error
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 4:
        raise _broken(path, "does not start with an IDX magic number")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _broken(path, "ends inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise _broken(path, f"holds {len(raw) - header} bytes of data, its header announces {expected} (shape {shape})")
    array = np.frombuffer(raw, dtype=dtype, offset=header).astype(dtype.newbyteorder("="))
    return torch.from_numpy(array.reshape(shape))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays, nothing else.

    Unrestricted unpickling runs whatever code the file names; a data folder
    should not be able to do that.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # files written with numpy 1 (CIFAR-10's own)
        ("numpy._core.multiarray", "_reconstruct"),  # files written with numpy 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
        ("__builtin__", "bytes"),  # ... and empty bytes (an array of 0 images), harmless
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never does")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of one pickled CIFAR-10 batch."""
    try:
        with open(path, "rb") as file:
            batch = _ArrayUnpickler(file, encoding="latin1").load()
        data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, KeyError, TypeError) as error:
        raise _broken(path, f"is not a readable CIFAR-10 batch ({type(error).__name__}: {error})") from error
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != data.shape[:1]:
        raise _broken(
            path, f"holds data of shape {data.shape} ({data.dtype}) and {labels.shape} labels; expected (N, 3072) uint8 and N labels"
        )
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)
