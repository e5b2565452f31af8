import gzip
import hashlib
import os

import numpy as np
import pytest
import torch

from minidiff.datasets import mnist as data
from minidiff.files import DataError

OFFICIAL_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
OFFICIAL_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_train():
    return data.load_mnist("train")


def test_mnist_has_official_split_sizes_and_class_counts(mnist_train):
    images, labels = mnist_train
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == OFFICIAL_TRAIN_COUNTS
    test_images, test_labels = data.load_mnist("test")
    assert test_images.shape == (10000, 28, 28)
    assert np.bincount(test_labels).tolist() == OFFICIAL_TEST_COUNTS


def test_mnist_pixels_are_the_official_bytes():
    # md5 of the official, uncompressed train-images-idx3-ubyte published with MNIST
    raw = gzip.open(data.data_dir() / "mnist" / "train-images-idx3-ubyte.gz").read()
    assert hashlib.md5(raw).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"


@pytest.fixture
def fashion(tmp_path_factory, monkeypatch) -> dict:
    """Debian's real Fashion-MNIST files (CI installs them and sets MINIDIFF_REAL_DATA=1, so there a
    missing package fails). On a newcomer's offline machine, files in the exact official IDX format
    stand in, with their own checksums. Returns the split sizes."""
    if data.FASHION_DEBIAN.exists():
        return {"train": 60000, "test": 10000}
    if os.environ.get("MINIDIFF_REAL_DATA"):
        pytest.fail("the real Fashion-MNIST files are missing: apt-get install dataset-fashion-mnist")
    folder, rng, hashes = tmp_path_factory.mktemp("fashion-debian"), np.random.default_rng(0), {}
    for split, n in {"train": 60, "test": 20}.items():
        arrays = {"images-idx3": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                  "labels-idx1": (np.arange(n) % 10).astype(np.uint8)}
        for kind, array in arrays.items():
            path = folder / f"{data.SPLIT_PREFIX[split]}-{kind}-ubyte.gz"
            data.write_idx(array, path)
            hashes[path.name] = (hashlib.md5(path.read_bytes()).hexdigest(),
                                 hashlib.sha256(gzip.open(path).read()).hexdigest())
    monkeypatch.setattr(data, "FASHION_DEBIAN", folder)
    monkeypatch.setattr(data, "FASHION_FILES", hashes)
    return {"train": 60, "test": 20}


def test_fashion_mnist_loads_the_real_files(fashion):
    images, labels = data.load_fashion_mnist("test")
    assert images.shape == (fashion["test"], 28, 28)
    assert np.bincount(labels).tolist() == [fashion["test"] // 10] * 10
    assert len(data.load_fashion_mnist("train")[0]) == fashion["train"]


def test_fetch_fashion_mnist_copies_and_verifies(tmp_path, fashion):
    folder = data.fetch_fashion_mnist(tmp_path)
    images, _ = data.load_fashion_mnist("test", root=folder)
    assert images.shape == (fashion["test"], 28, 28)
    assert not list(folder.glob("partial-*"))


def test_an_empty_fashion_folder_does_not_hide_debians_copy(tmp_path, monkeypatch, fashion):
    """A fetch that failed offline leaves an empty data/fashion-mnist/ behind: Debian's files still load."""
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path))
    (tmp_path / "fashion-mnist").mkdir()
    assert len(data.load_fashion_mnist("test")[0]) == fashion["test"]


def test_idx_round_trip(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    data.write_idx(array, tmp_path / "x.gz")
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x.gz"), array)
    data.write_idx(array, tmp_path / "y.gz")
    assert (tmp_path / "x.gz").read_bytes() == (tmp_path / "y.gz").read_bytes()  # reproducible bytes


@pytest.fixture
def mnist_copy(tmp_path):
    for name in data.MNIST_FILES:
        (tmp_path / name).write_bytes((data.data_dir() / "mnist" / name).read_bytes())
    return tmp_path


def test_missing_file_says_how_to_restore(mnist_copy):
    (mnist_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is missing.*git checkout"):
        data.load_mnist("test", root=mnist_copy)


def test_truncated_gzip_is_named(mnist_copy):
    path = mnist_copy / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is not a readable gzip"):
        data.load_mnist("test", root=mnist_copy)


def test_changed_content_fails_the_checksum(mnist_copy):
    path = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.open(path).read())
    raw[-1] = (raw[-1] + 1) % 10
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        data.load_mnist("test", root=mnist_copy)


def test_wrong_magic_number_is_named(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"\x01\x02\x08\x01" + b"\x00" * 8))
    with pytest.raises(DataError, match="x.gz is not an IDX file"):
        data.read_idx(tmp_path / "x.gz")


def test_header_size_mismatch_is_named(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05" + b"\x00" * 4))
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(tmp_path / "x.gz")


def test_tensor_conversion_round_trips(mnist_train):
    images = mnist_train[0][:8]
    x = data.to_tensor(images)
    assert x.shape == (8, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(data.to_uint8(x), images)
    rgb = np.random.default_rng(1).integers(0, 256, size=(2, 5, 5, 3), dtype=np.uint8)
    assert data.to_tensor(rgb).shape == (2, 3, 5, 5)
    np.testing.assert_array_equal(data.to_uint8(data.to_tensor(rgb)), rgb)


def test_mnist_dataset_items():
    ds = data.mnist_dataset("test", limit=100)
    image, label = ds[3]
    assert image.shape == (1, 28, 28) and label.dtype == torch.int64 and len(ds) == 100


def test_digit_captions_name_the_digit():
    captions = data.digit_captions([7] * 50, seed=0)
    assert all("7" in c or "seven" in c for c in captions)
    assert len(set(captions)) > 1 and captions == data.digit_captions([7] * 50, seed=0)


def test_fetch_fashion_mnist_downloads_verifies_and_keeps_nothing_bad(tmp_path, monkeypatch, serve, fashion):
    """Without Debian's package the files come from the official address (here: a local server)."""
    debian = data.FASHION_DEBIAN
    files = {f"/{name}": (debian / name).read_bytes() for name in data.FASHION_FILES}
    monkeypatch.setattr(data, "FASHION_DEBIAN", tmp_path / "not-installed")
    monkeypatch.setattr(data, "FASHION_FILES", {name: (hashlib.md5(files[f"/{name}"]).hexdigest(), sha)
                                                for name, (_, sha) in data.FASHION_FILES.items()})
    with serve(files) as server:
        monkeypatch.setattr(data, "FASHION_URL", server.url("/"))
        folder = data.fetch_fashion_mnist(tmp_path / "fashion")
        assert data.load_fashion_mnist("test", root=folder)[0].shape == (fashion["test"], 28, 28)
        # a server that hands out the wrong file: a clear error, and the good copy stays untouched
        good = (folder / "t10k-labels-idx1-ubyte.gz").read_bytes()
        server.files["/t10k-labels-idx1-ubyte.gz"] = files["/train-labels-idx1-ubyte.gz"]
        monkeypatch.setitem(data.FASHION_FILES, "t10k-labels-idx1-ubyte.gz",
                            (hashlib.md5(files["/train-labels-idx1-ubyte.gz"]).hexdigest(),
                             data.FASHION_FILES["t10k-labels-idx1-ubyte.gz"][1]))
        with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
            data.fetch_fashion_mnist(tmp_path / "fashion")
        assert (folder / "t10k-labels-idx1-ubyte.gz").read_bytes() == good
        assert not list(folder.glob("partial-*"))


def test_an_idx_file_cut_inside_its_header_is_one_clear_error(tmp_path):
    path = tmp_path / "cut-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, 3, 0, 0]))  # the magic number, then half of the first size
    with pytest.raises(DataError, match="truncated inside its header"):
        data.read_idx(path)
