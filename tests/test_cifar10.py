"""The CIFAR-10 binary loader, on a small archive in the exact official layout (7 records per file)."""
import hashlib
import io
import tarfile

import numpy as np
import pytest
import torch

from minidiff.datasets import cifar10
from minidiff.datasets.cifar10 import CIFAR10, CLASSES, fetch_cifar10, load_cifar10
from minidiff.files import DataError, extract

PER_FILE = 7  # the real files hold 10,000
NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def hand_made_record(label, red, green, blue):
    """One record built byte by byte as the CIFAR page describes it: label, then R, G, B planes."""
    return bytes([label]) + bytes(red) + bytes(green) + bytes(blue)


def random_records(rng, n):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    planes = images.transpose(0, 3, 1, 2).reshape(n, -1)
    return np.concatenate([labels[:, None], planes], axis=1).tobytes(), images, labels


def make_archive(path):
    """Write ``cifar-10-binary.tar.gz`` with 7 random records per file; return what it holds."""
    rng = np.random.default_rng(0)
    files, expected = {}, {}
    for name in NAMES:
        files[name], *expected[name] = random_records(rng, PER_FILE)
    files["batches.meta.txt"] = ("\n".join(CLASSES) + "\n").encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return expected


@pytest.fixture
def root(tmp_path):
    expected = make_archive(tmp_path / "cifar-10-binary.tar.gz")
    extract(tmp_path / "cifar-10-binary.tar.gz", tmp_path / "cifar10")
    return tmp_path / "cifar10", expected


def test_pixel_layout(tmp_path):
    red = [i % 256 for i in range(1024)]  # row r, column c holds (32 r + c) mod 256
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(hand_made_record(3, red, [7] * 1024, [200] * 1024))
    images, labels = load_cifar10("test", root=tmp_path)
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [3] and CLASSES[3] == "cat"
    assert images[0, 0, 5].tolist() == [5, 7, 200]  # top row, sixth column
    assert images[0, 2, 1].tolist() == [65, 7, 200]  # third row, second column: 2 * 32 + 1
    assert (images[0, :, :, 0] == np.arange(1024).reshape(32, 32) % 256).all()


def test_splits_and_labels(root):
    root, expected = root
    images, labels = load_cifar10("train", root=root)
    assert images.shape == (5 * PER_FILE, 32, 32, 3) and labels.shape == (5 * PER_FILE,)
    assert (images[PER_FILE:2 * PER_FILE] == expected["data_batch_2.bin"][0]).all()
    assert (labels == np.concatenate([expected[n][1] for n in NAMES[:5]])).all()
    images, labels = load_cifar10("test", root=root)
    assert (images == expected["test_batch.bin"][0]).all() and (labels == expected["test_batch.bin"][1]).all()
    with pytest.raises(ValueError):
        load_cifar10("valid", root=root)


def test_dataset_scales_to_minus_one_one(root):
    root, expected = root
    data = CIFAR10("test", root=root)
    image, label = data[2]
    assert len(data) == PER_FILE and image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int) and label == expected["test_batch.bin"][1][2]
    pixels = torch.from_numpy(expected["test_batch.bin"][0][2]).permute(2, 0, 1).float()
    assert torch.allclose(image, pixels / 127.5 - 1) and image.min() >= -1 and image.max() <= 1


def test_truncated_file(root):
    root, _ = root
    path = root / "cifar-10-batches-bin" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"data_batch_3\.bin is truncated"):
        load_cifar10("train", root=root)
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"data_batch_3\.bin is truncated"):
        load_cifar10("train", root=root)


def test_bad_label(root):
    root, _ = root
    path = root / "cifar-10-batches-bin" / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[3073 * 4] = 10  # the fifth record's label byte
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"test_batch\.bin is corrupt: label 10"):
        load_cifar10("test", root=root)


def test_missing_files_say_how_to_fetch(tmp_path):
    with pytest.raises(DataError, match=r"data_batch_1\.bin is missing.*python -m minidiff data cifar10"):
        load_cifar10("train", root=tmp_path)


def test_fetch_from_local_server(tmp_path, monkeypatch, serve):
    expected = make_archive(tmp_path / "served.tar.gz")
    archive = (tmp_path / "served.tar.gz").read_bytes()
    with serve({"/cifar-10-binary.tar.gz": archive}) as server:
        monkeypatch.setattr(cifar10, "URL", server.url("/cifar-10-binary.tar.gz"))
        monkeypatch.setattr(cifar10, "MD5", hashlib.md5(archive).hexdigest())
        root = tmp_path / "cifar10"
        images, labels = load_cifar10("test", root=root, download=True)
        assert (images == expected["test_batch.bin"][0]).all()
        assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-bin"]  # archive deleted
        assert fetch_cifar10(root) == root / "cifar-10-batches-bin"
        assert len(server.requests) == 1  # already unpacked: nothing fetched the second time
