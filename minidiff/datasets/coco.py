"""COCO captions: everyday photos, each described by about five people, for text-to-image models.

COCO images are big (640 px) and of all shapes, so we make them course-sized once: pick a subset,
center-crop each image to a square, shrink it to ``size``×``size`` and cache the pixels together
with every caption in one safetensors file. Training then reads that one small file.

The cache keeps the captions in the safetensors header (a JSON string per key), so pixels and text
travel in one file that is written atomically and can never get out of step.
"""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from minidiff.files import DataError, data_dir, download, extract, write_atomic

ANNOTATIONS = ("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
               "f4bbac642086de4f52a3fdda2de5fa2c")  # (url, md5 published by COCO)
IMAGES = {
    "val2017": ("http://images.cocodataset.org/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
    "train2017": ("http://images.cocodataset.org/zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"),
}
FETCH = "`python -m minidiff data coco` (or minidiff.datasets.coco.fetch_coco(split, root) for another split or folder)"


def _root(root) -> Path:
    return Path(root) if root is not None else data_dir() / "coco"


def fetch_coco(split: str = "val2017", root=None):
    """Download and unpack the caption annotations and one split's images (val: 1 GB, train: 19 GB).

    Returns ``(captions_json, image_dir)``, the two arguments of ``build_coco_subset``. Parts that
    are already unpacked are not fetched again; archives are deleted once unpacked.
    """
    if split not in IMAGES:
        raise ValueError(f"split must be one of {sorted(IMAGES)}, not {split!r}")
    root = _root(root)
    captions, image_dir = root / "annotations" / f"captions_{split}.json", root / split
    if not captions.exists():
        url, md5 = ANNOTATIONS
        archive = download(url, root / url.rsplit("/", 1)[-1], md5=md5)
        # the zip also holds 800 MB of object and keypoint annotations that we don't use
        extract(archive, root, only={f"annotations/captions_{s}.json" for s in IMAGES})
        archive.unlink()
    if not image_dir.is_dir():  # extract() renames the folder into place only once it is complete
        url, md5 = IMAGES[split]
        archive = download(url, root / url.rsplit("/", 1)[-1], md5=md5)
        extract(archive, root)
        archive.unlink()
    return captions, image_dir


def read_captions(captions_json):
    """Parse an official ``captions_*.json`` into ``[(image_id, file_name, [caption, ...]), ...]``.

    Sorted by image id, captions by annotation id; images without a caption are left out.
    """
    path = Path(captions_json)
    if not path.exists():
        raise DataError(f"{path} is missing. Fetch COCO with {FETCH}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {image["id"]: image["file_name"] for image in data["images"]}
        captions = {}
        # in annotation-id order, so an image's "first" caption doesn't depend on the file's order
        for annotation in sorted(data["annotations"], key=lambda annotation: annotation["id"]):
            captions.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}). Delete it and fetch again with {FETCH}.") from e
    except (KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path} is not a COCO captions file (no {e} where expected).") from e
    unknown = captions.keys() - names.keys()
    if unknown:
        raise DataError(f"{path} is corrupt: captions refer to image id {min(unknown)}, which it doesn't list.")
    return [(image_id, names[image_id], captions[image_id]) for image_id in sorted(captions)]


def square_image(path, size: int) -> np.ndarray:
    """Load an image file, center-crop it to a square and resize to (size, size, 3) uint8 RGB."""
    try:
        with Image.open(path) as image:
            w, h = image.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            # convert: a few COCO photos are grayscale; box=: crop and resize in one resampling pass
            image = image.convert("RGB").resize(
                (size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
            return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError as e:
        raise DataError(f"{path} is missing. Fetch the COCO images with {FETCH}.") from e
    except OSError as e:  # PIL raises OSError subclasses for unreadable and truncated files
        raise DataError(f"{path} is not a readable image ({e}). Delete it and fetch again with {FETCH}.") from e


def build_coco_subset(captions_json, image_dir, *, size: int = 64, n: int = None, seed: int = 0,
                      out=None) -> Path:
    """Cache ``n`` randomly chosen captioned images (all if None) as ``size``-px squares; return the file.

    The same ``seed`` picks the same images. The default ``out`` is in ``data_dir()/"coco"`` and is
    named after the split, size, count and seed.
    """
    records = read_captions(captions_json)
    if n is not None:
        if not 0 < n <= len(records):
            raise ValueError(f"n must be between 1 and {len(records)} (the captioned images), not {n}")
        chosen = np.random.default_rng(seed).choice(len(records), size=n, replace=False)
        records = [records[i] for i in sorted(chosen)]  # keep id order: nicer to browse
    if out is None:
        split = Path(captions_json).stem.removeprefix("captions_")
        count = "all" if n is None else f"{n}_seed{seed}"
        out = data_dir() / "coco" / f"{split}_{size}px_{count}.safetensors"
    out = Path(out)

    images = np.empty((len(records), size, size, 3), dtype=np.uint8)
    for i, (_, file_name, _) in enumerate(tqdm(records, desc=f"COCO → {size}px", unit="img")):
        images[i] = square_image(Path(image_dir) / file_name, size)
    metadata = {
        "image_ids": json.dumps([image_id for image_id, _, _ in records]),
        "file_names": json.dumps([file_name for _, file_name, _ in records]),
        "captions": json.dumps([captions for _, _, captions in records]),
    }
    write_atomic(out, lambda tmp: save_file({"images": images}, tmp, metadata=metadata))
    return out


def load_coco_subset(path):
    """Return ``(images, captions, image_ids)`` from ``build_coco_subset``'s file.

    ``images`` is uint8 (N, S, S, 3); ``captions[i]`` is the list of captions of image ``i``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} is missing. Make it with `python -m minidiff data coco` (or "
                        "minidiff.datasets.coco.build_coco_subset(*fetch_coco()) for another split or size).")
    try:
        with safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
            images = f.get_tensor("images")
        captions, image_ids = json.loads(metadata["captions"]), json.loads(metadata["image_ids"])
    except (SafetensorError, KeyError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not a COCO subset made by build_coco_subset ({e!r}). Delete it and "
                        "build it again.") from e
    if not len(images) == len(captions) == len(image_ids):
        raise DataError(f"{path} is corrupt: {len(images)} images but {len(captions)} caption lists.")
    return images, captions, image_ids


class COCOCaptions(torch.utils.data.Dataset):
    """A cached COCO subset as ``(image, caption)``: a float (3, S, S) tensor in [-1, 1] and a string.

    ``caption="random"`` draws one of the image's captions each time (with torch's RNG, so
    ``torch.manual_seed`` makes it repeatable): five descriptions per photo act as free augmentation.
    ``caption="first"`` always gives the first, for repeatable evaluation.
    """

    def __init__(self, path, caption: str = "random"):
        if caption not in ("random", "first"):
            raise ValueError(f"caption must be 'random' or 'first', not {caption!r}")
        self.caption = caption
        images, self.captions, self.image_ids = load_coco_subset(path)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)  # stays uint8: 4× less memory

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        captions = self.captions[i]
        pick = 0 if self.caption == "first" else int(torch.randint(len(captions), ()))
        return self.images[i].float() / 127.5 - 1, captions[pick]
