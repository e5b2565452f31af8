"""CIFAR-10: 60,000 tiny 32×32 photos in 10 classes, read from the official *binary* release.

The binary release is just bytes, no Python pickles (unpickling a downloaded file can run arbitrary
code). Each ``.bin`` file is a run of 3073-byte records: one label byte, then the 1024 red, 1024
green and 1024 blue pixel values of a 32×32 image, each plane row by row. The real files hold
10,000 records each; the loader accepts any whole number of records.
"""
from pathlib import Path

import numpy as np
import torch

from minidiff.files import DataError, data_dir, download, extract

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published alongside the archive on the CIFAR page
FOLDER = "cifar-10-batches-bin"  # the archive's top-level folder
FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIDE = 32
RECORD = 1 + 3 * SIDE * SIDE  # label byte + three colour planes
FETCH = "`python -m minidiff data cifar10` (or minidiff.datasets.cifar10.fetch_cifar10(root) for another folder)"


def _root(root) -> Path:
    return Path(root) if root is not None else data_dir() / "cifar10"


def fetch_cifar10(root=None) -> Path:
    """Download (163 MB) and unpack CIFAR-10 into ``root``; return the folder of ``.bin`` files.

    Does nothing if the files are already there. The archive is deleted once unpacked.
    """
    root = _root(root)
    folder = root / FOLDER
    if all((folder / name).exists() for names in FILES.values() for name in names):
        return folder
    archive = download(URL, root / URL.rsplit("/", 1)[-1], md5=MD5)
    extract(archive, root)  # unpacks to a temp folder, then renames: the folder is all or nothing
    archive.unlink()
    return folder


def load_cifar10(split: str = "train", root=None, download: bool = False):
    """Return ``(images, labels)``: uint8 arrays of shape (N, 32, 32, 3) and (N,), N = 50,000 or 10,000.

    ``download=True`` fetches missing files first; otherwise a missing file raises DataError.
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    folder = _root(root) / FOLDER
    paths = [folder / name for name in FILES[split]]
    missing = [path for path in paths if not path.exists()]
    if missing and download:
        fetch_cifar10(root)
    elif missing:
        raise DataError(f"{missing[0]} is missing. Fetch CIFAR-10 with {FETCH}, or pass download=True.")
    batches = [_read_batch(path) for path in paths]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _read_batch(path: Path):
    """Decode one ``.bin`` file into HWC uint8 images and uint8 labels, checking it on the way."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise DataError(f"{path} is truncated or corrupt: {raw.size:,} bytes is not a whole number of "
                        f"{RECORD}-byte records. Delete it and fetch again with {FETCH}.")
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0].copy()
    if labels.max() >= len(CLASSES):
        raise DataError(f"{path} is corrupt: label {labels.max()} is not one of the 10 classes. "
                        f"Delete it and fetch again with {FETCH}.")
    # each record stores planes (C, H, W); images are conventionally kept as (H, W, C)
    images = records[:, 1:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


class CIFAR10(torch.utils.data.Dataset):
    """CIFAR-10 as ``(image, label)`` pairs: a float (3, 32, 32) tensor in [-1, 1] and an int."""

    def __init__(self, split: str = "train", root=None, download: bool = False):
        images, labels = load_cifar10(split, root, download)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)  # stays uint8: 4× less memory
        self.labels = torch.from_numpy(labels).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float() / 127.5 - 1, int(self.labels[i])
