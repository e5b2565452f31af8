"""COCO captions, on a tiny captions_val2017.json in the official format with solid-colour JPEGs (coco_files)."""
import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
import torch

from minidiff.datasets import coco
from minidiff.datasets.coco import COCOCaptions, build_coco_subset, fetch_coco, load_coco_subset
from minidiff.files import DataError

from coco_files import COLOURS, IMAGES, captions_of, make_coco_files, name


@pytest.fixture
def fixture(tmp_path):
    return make_coco_files(tmp_path)


def test_build_and_load(fixture, tmp_path):
    out = build_coco_subset(*fixture, size=16, out=tmp_path / "subset.safetensors")
    images, captions, ids = load_coco_subset(out)
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8  # grayscale became RGB
    assert ids == [139, 285, 632, 724, 776]  # sorted; the captionless image is left out
    colours = {image_id: colour for image_id, _, colour in IMAGES}
    assert captions == [captions_of(i, colours[i]) for i in ids]
    assert [p.name for p in tmp_path.iterdir() if "subset" in p.name] == ["subset.safetensors"]


def test_captions_go_with_their_pixels(fixture, tmp_path):
    images, captions, ids = load_coco_subset(build_coco_subset(*fixture, size=16, out=tmp_path / "s.safetensors"))
    for image, texts in zip(images, captions):
        colour = texts[1].removeprefix("Something ").removesuffix(".")
        # inner pixels only: JPEG and the resampling filter blur the border a little
        assert np.abs(image[2:-2, 2:-2].astype(int) - COLOURS[colour]).max() < 40, (colour, image[8, 8])
    red = images[ids.index(139)]
    assert red[..., 0].min() > 200 and red[..., 1:].max() < 50
    assert all("red" in text for text in captions[ids.index(139)])


def test_center_crop_keeps_the_middle(fixture, tmp_path):
    images, _, ids = load_coco_subset(build_coco_subset(*fixture, size=8, out=tmp_path / "s.safetensors"))
    wide = images[ids.index(776)].astype(int)  # 96×32: centre square is yellow, the bars are black
    assert wide[:, 1:-1, :2].min() > 200 and wide[:, 1:-1, 2].max() < 60


def test_seeded_subset(fixture, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    out = build_coco_subset(*fixture, size=8, n=3, seed=1)
    assert out == tmp_path / "data" / "coco" / "val2017_8px_3_seed1.safetensors"
    ids = load_coco_subset(out)[2]
    again = load_coco_subset(build_coco_subset(*fixture, size=8, n=3, seed=1, out=tmp_path / "a.safetensors"))[2]
    assert ids == again and len(ids) == 3 and ids == sorted(ids) and set(ids) <= {139, 285, 632, 724, 776}
    others = [load_coco_subset(build_coco_subset(*fixture, size=8, n=3, seed=s, out=tmp_path / f"{s}.st"))[2]
              for s in range(2, 6)]
    assert any(o != ids for o in others)
    with pytest.raises(ValueError, match="between 1 and 5"):
        build_coco_subset(*fixture, n=6, out=tmp_path / "x.safetensors")


def test_corrupt_json(fixture, tmp_path):
    captions, image_dir = fixture
    captions.write_text('{"images": [')
    with pytest.raises(DataError, match=r"captions_val2017\.json is not valid JSON"):
        build_coco_subset(captions, image_dir, out=tmp_path / "s.safetensors")
    captions.write_text(json.dumps({"info": {}, "images": []}))
    with pytest.raises(DataError, match=r"captions_val2017\.json is not a COCO captions file"):
        build_coco_subset(captions, image_dir, out=tmp_path / "s.safetensors")
    with pytest.raises(DataError, match=r"nothere\.json is missing.*python -m minidiff data coco"):
        build_coco_subset(tmp_path / "nothere.json", image_dir)


def test_missing_or_broken_image(fixture, tmp_path):
    captions, image_dir = fixture
    (image_dir / name(632)).unlink()
    with pytest.raises(DataError, match=r"000000000632\.jpg is missing"):
        build_coco_subset(captions, image_dir, out=tmp_path / "s.safetensors")
    (image_dir / name(632)).write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"000000000632\.jpg is not a readable image"):
        build_coco_subset(captions, image_dir, out=tmp_path / "s.safetensors")
    assert not list(tmp_path.glob("s.safetensors*"))  # nothing half-written


def test_dataset(fixture, tmp_path):
    path = build_coco_subset(*fixture, size=16, out=tmp_path / "s.safetensors")
    first = COCOCaptions(path, caption="first")
    image, text = first[0]
    assert len(first) == 5 and image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1 and image[0].mean() > 0.5  # image 139 is red
    assert text == "A red square number 139."
    randomly = COCOCaptions(path)
    torch.manual_seed(0)
    draws = [randomly[0][1] for _ in range(30)]
    torch.manual_seed(0)
    assert draws == [randomly[0][1] for _ in range(30)]
    assert set(draws) == set(captions_of(139, "red"))
    with pytest.raises(ValueError):
        COCOCaptions(path, caption="all")


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(DataError, match="missing"):
        load_coco_subset(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match=r"junk\.safetensors is not a COCO subset"):
        load_coco_subset(tmp_path / "junk.safetensors")


def zipped(files):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return out.getvalue()


def test_fetch_from_local_server(fixture, tmp_path, monkeypatch, serve):
    captions, image_dir = fixture
    annotations = zipped({"annotations/captions_val2017.json": captions.read_bytes(),
                          "annotations/captions_train2017.json": b"{}",
                          "annotations/instances_val2017.json": b"{} (big, and not needed)"})
    images = zipped({f"val2017/{p.name}": p.read_bytes() for p in image_dir.iterdir()})
    with serve({"/annotations.zip": annotations, "/val2017.zip": images}) as server:
        monkeypatch.setattr(coco, "ANNOTATIONS", (server.url("/annotations.zip"), hashlib.md5(annotations).hexdigest()))
        monkeypatch.setitem(coco.IMAGES, "val2017", (server.url("/val2017.zip"), hashlib.md5(images).hexdigest()))
        root = tmp_path / "coco"
        got_captions, got_images = fetch_coco("val2017", root)
        assert (got_captions, got_images) == (root / "annotations" / "captions_val2017.json", root / "val2017")
        assert sorted(p.name for p in root.iterdir()) == ["annotations", "val2017"]  # zips deleted
        assert sorted(p.name for p in got_captions.parent.iterdir()) == ["captions_train2017.json",
                                                                         "captions_val2017.json"]
        assert fetch_coco("val2017", root) == (got_captions, got_images)
        assert len(server.requests) == 2  # the second call found everything unpacked
    out = build_coco_subset(got_captions, got_images, size=8, out=tmp_path / "s.safetensors")
    assert load_coco_subset(out)[0].shape == (5, 8, 8, 3)
    with pytest.raises(ValueError):
        fetch_coco("test2017", root)
