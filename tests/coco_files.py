"""A COCO-format fixture: a tiny captions_val2017.json in the official layout, with solid-colour JPEGs
(shared by the COCO data tests and the ``clip_coco`` recipe's test)."""
import io
import json

import numpy as np
from PIL import Image

COLOURS = {"red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255), "white": (255, 255, 255),
           "yellow": (255, 255, 0)}
# (id, (width, height), colour): real val2017 ids, shapes of all kinds (landscape, portrait, square)
IMAGES = [(139, (64, 43), "red"), (285, (40, 64), "green"), (632, (48, 48), "blue"),
          (724, (50, 38), "white"), (776, (96, 32), "yellow"), (785, (30, 45), "blue")]
GRAY_ID, CAPTIONLESS_ID = 724, 785  # one grayscale photo; one listed image nobody captioned


def name(image_id):
    return f"{image_id:012d}.jpg"


def captions_of(image_id, colour):
    return [f"A {colour} square number {image_id}.", f"Something {colour}.", f"Photo {image_id}, all {colour}"]


def official_json():
    """The key structure of the real captions_val2017.json, trimmed to our six images."""
    images, annotations = [], []
    for image_id, (w, h), colour in IMAGES:
        images.append({"license": 4, "file_name": name(image_id),
                       "coco_url": f"http://images.cocodataset.org/val2017/{name(image_id)}",
                       "height": h, "width": w, "date_captured": "2013-11-14 17:02:52",
                       "flickr_url": "http://farm7.staticflickr.com/6116/6255196340_da26cf2c9e_z.jpg",
                       "id": image_id})
        if image_id != CAPTIONLESS_ID:
            for caption in captions_of(image_id, colour):
                annotations.append({"image_id": image_id, "id": 1000 + len(annotations), "caption": caption})
    annotations.reverse()  # the real file is not sorted by image either
    return {"info": {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0",
                     "year": 2017, "contributor": "COCO Consortium", "date_created": "2017/09/01"},
            "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
                          "name": "Attribution-NonCommercial-ShareAlike License"}],
            "images": images, "annotations": annotations}


def jpeg(image_id, size, colour):
    if image_id == 776:  # wide: black bars left and right of a yellow centre square; cropping keeps the centre
        pixels = np.zeros((size[1], size[0], 3), np.uint8)
        pixels[:, 32:64] = COLOURS[colour]
        image = Image.fromarray(pixels)
    else:
        image = Image.new("RGB", size, COLOURS[colour])
    if image_id == GRAY_ID:
        image = image.convert("L")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


def make_coco_files(root):
    """``(captions_json, image_dir)`` laid out under ``root`` as COCO unpacks: annotations/ and val2017/."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    captions = root / "annotations" / "captions_val2017.json"
    captions.write_text(json.dumps(official_json()))
    for image_id, size, colour in IMAGES:
        (root / "val2017" / name(image_id)).write_bytes(jpeg(image_id, size, colour))
    return captions, root / "val2017"
