"""Tests for the shapes-with-captions dataset (minidiff.shapes)."""
from collections import Counter

import numpy as np
import pytest
import torch

from minidiff.datasets.shapes import (
    ATTRIBUTES,
    COLORS,
    HELD_OUT,
    NEW_SHAPES,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapesDataset,
    attribute_labels,
    caption,
    composition,
    is_held_out,
    make_shapes,
)


@pytest.fixture(scope="module")
def data():
    return make_shapes(1000, seed=0)


def _grow(masks, pixels):
    """Dilate (..., H, W) bool masks by ``pixels`` in all 8 directions (a square neighbourhood)."""
    out = masks.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[..., 1:, :] |= out[..., :-1, :]
        grown[..., :-1, :] |= out[..., 1:, :]
        out = grown.copy()
        out[..., :, 1:] |= grown[..., :, :-1]
        out[..., :, :-1] |= grown[..., :, 1:]
    return out


def _same(a, b):
    for key in ("images", "masks", "edges"):
        if not np.array_equal(a[key], b[key]):
            return False
    return a["captions"] == b["captions"] and a["attributes"] == b["attributes"]


def test_arrays_have_documented_shapes_and_types(data):
    assert data["images"].shape == (1000, 32, 32, 3) and data["images"].dtype == np.uint8
    assert data["masks"].shape == (1000, 32, 32) and data["masks"].dtype == np.uint8
    assert data["edges"].shape == (1000, 32, 32) and data["edges"].dtype == np.uint8
    assert set(np.unique(data["masks"])) == {0, 1}
    assert set(np.unique(data["edges"])) == {0, 255}
    assert len(data["captions"]) == len(data["attributes"]) == 1000
    keys = {"shape", "color", "background", "size", "position", "center", "radius"}
    assert all(set(a) == keys for a in data["attributes"])


def test_same_seed_same_bytes_different_seed_different():
    assert _same(make_shapes(50, seed=3), make_shapes(50, seed=3))
    a, b = make_shapes(50, seed=3), make_shapes(50, seed=4)
    assert not np.array_equal(a["images"], b["images"])
    assert a["captions"] != b["captions"]


def test_any_subset_can_be_regenerated():
    full, part = make_shapes(20, seed=7), make_shapes(5, seed=7, start=10)
    sliced = {k: v[10:15] for k, v in full.items()}
    assert _same(part, sliced)


def test_size_64_scales_the_same_examples():
    small, big = make_shapes(20, size=32), make_shapes(20, size=64)
    assert big["images"].shape == (20, 64, 64, 3)
    assert small["captions"] == big["captions"]
    for a, b in zip(small["attributes"], big["attributes"]):
        assert b["center"] == pytest.approx((2 * a["center"][0], 2 * a["center"][1]))
        assert b["radius"] == pytest.approx(2 * a["radius"])
    ratio = big["masks"].sum() / small["masks"].sum()
    assert ratio == pytest.approx(4, rel=0.05)


def test_canonical_caption():
    a = {"shape": "circle", "color": "red", "background": "blue", "size": "large",
         "position": "top left"}
    assert caption(a) == "a large red circle on a blue background, top left"
    assert caption({**a, "background": "orange"}) == (
        "a large red circle on an orange background, top left")


def test_captions_mention_every_attribute_in_varied_wording(data):
    canonical = 0
    for c, a in zip(data["captions"], data["attributes"]):
        assert f"{a['size']} {a['color']} {a['shape']}" in c
        assert a["background"] in c.replace(f"{a['color']} {a['shape']}", "")
        assert a["position"] in c
        canonical += c == caption(a)
    assert 0 < canonical < len(data["captions"])  # several templates are in use
    for template in range(4):  # every template names every attribute
        c = caption(data["attributes"][0], template)
        assert all(data["attributes"][0][k] in c for k in ("shape", "color", "background"))


def test_shape_pixels_have_shape_colour_and_the_rest_background(data):
    masks, edges = data["masks"].astype(bool), data["edges"] > 0
    interior = masks & ~edges
    # Pixels 2+ away from the mask are untouched: a triangle's tip can poke 1 pixel past its mask.
    outside = ~_grow(masks, 2)
    for image, a, inner, outer in zip(data["images"], data["attributes"], interior, outside):
        assert inner.any() and outer.any()
        assert (image[inner] == COLORS[a["color"]]).all()
        assert (image[outer] == COLORS[a["background"]]).all()
        assert a["color"] != a["background"]


def test_edges_are_the_one_pixel_outline_of_the_mask(data):
    masks, edges = data["masks"].astype(bool), data["edges"] > 0
    assert (edges <= masks).all()  # the outline lies on the shape
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    touches_outside = ~(padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1]
                        & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:])
    assert np.array_equal(edges, masks & touches_outside)
    assert edges.any(axis=(1, 2)).all()


def test_attributes_are_roughly_uniform(data):
    attrs = data["attributes"]
    for key, vocab in [("shape", SHAPES), ("color", COLORS), ("background", COLORS),
                       ("size", SIZES), ("position", POSITIONS)]:
        counts = Counter(a[key] for a in attrs)
        assert set(counts) == set(vocab), key
        expected = len(attrs) / len(vocab)
        # A binomial count's standard deviation is below sqrt(expected); allow about 4 of them.
        assert all(abs(c - expected) < 4 * expected**0.5 for c in counts.values()), (key, counts)


def test_position_word_matches_where_the_shape_is(data):
    for mask, a in zip(data["masks"], data["attributes"]):
        ys, xs = np.nonzero(mask)
        row = int((ys.min() + ys.max() + 1) / 2 // (32 / 3))
        col = int((xs.min() + xs.max() + 1) / 2 // (32 / 3))
        assert POSITIONS[3 * row + col] == a["position"]


def test_shapes_are_distinguishable_by_how_much_of_their_box_they_fill():
    d = make_shapes(600, seed=1, size=64)
    fill = {s: [] for s in SHAPES}
    for mask, a in zip(d["masks"], d["attributes"]):
        fill[a["shape"]].append(mask.sum() / (2 * a["radius"]) ** 2)
    # Exact areas: a circle fills pi/4 of its bounding square, the triangle half, the square all.
    for shape, target in [("circle", np.pi / 4), ("triangle", 0.5), ("square", 1.0)]:
        assert np.mean(fill[shape]) == pytest.approx(target, abs=0.02), shape
    assert max(fill["triangle"]) < min(fill["circle"]) <= max(fill["circle"]) < min(fill["square"])


def test_new_shapes_leave_every_existing_render_unchanged():
    """Chapter 12's new shapes are drawn only when asked for: the bytes of the streams every shipped model
    trained and was measured on are those recorded before they existed."""
    import hashlib
    for kwargs, digest in [(dict(n=300, seed=0, size=64, compositions="train"),
                            "c8d178f8f3851f8362bed5fcdeb70569b91dfa21b0550c534e8ece1cf0d13a0c"),
                           (dict(n=300, seed=1, size=32, language="zh"),
                            "80e8c305a5794f0019465eba732277590539d53e0145417d4938845c25dd33e0")]:
        d = make_shapes(**kwargs)
        data = d["images"].tobytes() + d["masks"].tobytes() + d["edges"].tobytes() + "|".join(d["captions"]).encode()
        assert hashlib.sha256(data).hexdigest() == digest, kwargs


def test_new_shapes_fill_their_box_as_geometry_says():
    """A star with tips at r and inner vertices at r/2 covers 10 triangles of area r·(r/2)·sin 36°/2; the heart
    (x² + y² − 1)³ ≤ x²y³ has area 3.6595 in its own units, scaled here by (r/1.139)²."""
    d = make_shapes(400, seed=1, size=64, shapes=NEW_SHAPES)
    fill = {s: [] for s in NEW_SHAPES}
    for mask, a in zip(d["masks"], d["attributes"]):
        fill[a["shape"]].append(mask.sum() / (2 * a["radius"]) ** 2)
    targets = {"star": 2.5 * np.sin(np.pi / 5) / 4, "heart": 3.6595 / 1.139 ** 2 / 4}
    for shape, target in targets.items():
        assert len(fill[shape]) > 150 and np.mean(fill[shape]) == pytest.approx(target, abs=0.02), shape
    assert {a["shape"] for a in make_shapes(50, shapes=("star",))["attributes"]} == {"star"}
    captions = make_shapes(3, shapes=("star",), language="zh")["captions"]
    assert all("五角星" in c for c in captions)


def test_large_shapes_are_larger(data):
    areas = {s: [m.sum() for m, a in zip(data["masks"], data["attributes"]) if a["size"] == s]
             for s in SIZES}
    assert np.mean(areas["large"]) > 2 * np.mean(areas["small"])


def test_dataset_items():
    ds = ShapesDataset(n=16, seed=2)
    assert len(ds) == 16 and ds.images.shape == (16, 3, 32, 32)
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    item = ds[5]
    assert item["index"] == 5 and isinstance(item["caption"], str)
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == item["edge"].shape == (1, 32, 32)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert set(item["edge"].unique().tolist()) == {0.0, 1.0}
    assert (item["edge"] <= item["mask"]).all()
    raw = make_shapes(16, seed=2)
    expected = torch.from_numpy(raw["images"][5]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(item["image"], expected) and item["caption"] == raw["captions"][5]
    assert ds[-1]["index"] == 15
    with pytest.raises(IndexError):
        ds[16]
    assert ShapesDataset(n=2, size=64)[0]["image"].shape == (3, 64, 64)


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "n must be"), ({"n": -3}, "n must be"), ({"n": 2.5}, "n must be"),
    ({"n": True}, "n must be"), ({"n": 4, "size": 30}, "multiple of 8"),
    ({"n": 4, "size": 0}, "size must be"), ({"n": 4, "size": 8}, "at least 16"),
    ({"n": 4, "seed": -1}, "seed must be"), ({"n": 4, "start": -1}, "start must be"),
    ({"n": 4, "shapes": ()}, "shapes must be"), ({"n": 4, "shapes": "star"}, "shapes must be"),
    ({"n": 4, "shapes": ("star", "hexagon")}, "shapes must be"),
    ({"n": 4, "shapes": ("star",), "compositions": "held_out"}, "none of"),
])
def test_bad_arguments_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_shapes(**kwargs)
    if "start" not in kwargs:
        with pytest.raises(ValueError, match=message):
            ShapesDataset(**kwargs)


def test_bad_caption_template():
    with pytest.raises(ValueError, match="template"):
        caption(make_shapes(1)["attributes"][0], template=99)


# ---------------------------------------------------------------------------------------------
# Held-out compositions and the train/held-out split


def test_held_out_is_about_a_seventh_and_balanced():
    all_compositions = {(s, c, b) for s in SHAPES for c in COLORS for b in COLORS if b != c}
    assert len(all_compositions) == 168 and set(HELD_OUT) <= all_compositions
    assert len(set(HELD_OUT)) == len(HELD_OUT) == 24  # 1 in 7
    for shape in SHAPES:  # each colour once as the shape and once as the background, per shape
        mine = [(c, b) for s, c, b in HELD_OUT if s == shape]
        assert sorted(c for c, _ in mine) == sorted(COLORS) and sorted(b for _, b in mine) == sorted(COLORS)
    assert len({(c, b) for _, c, b in HELD_OUT}) == 24  # no colour pair held out for two shapes


def test_every_single_attribute_and_pair_still_appears_in_training():
    train = [a for a in make_shapes(3000, seed=2, compositions="train")["attributes"]]
    assert not any(is_held_out(a) for a in train)
    for first, second in [("shape", "color"), ("shape", "background"), ("color", "background")]:
        seen = {(a[first], a[second]) for a in train}
        held = {(dict(zip(("shape", "color", "background"), h))[first],
                 dict(zip(("shape", "color", "background"), h))[second]) for h in HELD_OUT}
        assert held <= seen, f"some held-out ({first}, {second}) pairs never appear in training"
    for name in ("shape", "color", "background", "size", "position"):
        counts = Counter(a[name] for a in train)
        assert set(counts) == set(ATTRIBUTES[name])
        assert max(counts.values()) / min(counts.values()) < 1.3  # still about uniform


def test_held_out_split_draws_only_held_out_compositions_and_all_of_them():
    held = make_shapes(600, seed=2, compositions="held_out")["attributes"]
    assert all(is_held_out(a) for a in held)
    assert {composition(a) for a in held} == set(HELD_OUT)


def test_the_all_stream_is_unchanged_and_a_split_keeps_items_that_were_already_in_it():
    everything, train = make_shapes(200, seed=5), make_shapes(200, seed=5, compositions="train")
    assert _same(everything, make_shapes(200, seed=5, compositions="all"))
    for i, a in enumerate(everything["attributes"]):  # an allowed first draw is kept as it was
        if not is_held_out(a):
            assert train["attributes"][i] == a and np.array_equal(train["images"][i], everything["images"][i])
    part = make_shapes(5, seed=5, start=10, compositions="train")
    assert _same(part, {k: v[10:15] for k, v in train.items()})


def test_a_bad_split_name_is_one_clear_error():
    with pytest.raises(ValueError, match="compositions must be one of all, train, held_out"):
        make_shapes(2, compositions="test")


def test_attribute_labels_index_every_attribute_list():
    data = make_shapes(50, seed=0)
    labels = attribute_labels(data["attributes"])
    assert labels.shape == (50, 5) and labels.dtype == torch.long
    for row, a in zip(labels.tolist(), data["attributes"]):
        assert [ATTRIBUTES[name][k] for name, k in zip(ATTRIBUTES, row)] == [a[name] for name in ATTRIBUTES]
    dataset = ShapesDataset(20, seed=0, compositions="held_out")
    assert all(is_held_out(a) for a in dataset.attributes)
