"""The crude pictures of chapter 10: the models' format, seeded, and what they claim to draw."""
import pytest
import torch

from minidiff.course.sketches import blob, condition, stroke
from minidiff.datasets.shapes import COLORS, ShapesDataset


def _rgb(picture, y, x):
    return ((picture[0, :, y, x] + 1) * 127.5).round()


def test_a_blob_is_a_64_pixel_rgb_picture_in_the_models_range_and_repeats_with_its_seed():
    picture = blob(seed=3)
    assert picture.shape == (1, 3, 64, 64) and picture.min() >= -1 and picture.max() <= 1
    assert torch.equal(picture, blob(seed=3)) and not torch.equal(picture, blob(seed=4))


def test_a_blob_is_near_its_colour_at_its_centre_and_the_background_far_from_it():
    picture = blob("yellow", "purple", center=(40, 24), radius=10, off_colour=30, seed=1)
    assert (_rgb(picture, 24, 40) - torch.tensor(COLORS["yellow"], dtype=torch.float)).abs().max() <= 30
    assert torch.equal(_rgb(picture, 60, 4), torch.tensor(COLORS["purple"], dtype=torch.float))


def test_a_blob_wobbles_its_outline_but_keeps_about_its_area():
    areas = []
    for seed in range(5):
        inside = (blob("red", "black", center=(32, 32), radius=12, seed=seed, off_colour=0)[0, 0] > -0.5)
        areas.append(inside.float().sum().item())
    circle = 3.14159 * 12 ** 2
    assert all(0.5 * circle < a < 1.5 * circle for a in areas) and len(set(areas)) > 1, areas


def test_a_stroke_is_a_white_line_on_black_through_its_points():
    picture = stroke([(14, 4), (14, 24)], shake=0.0, width=3)
    assert picture.shape == (1, 1, 28, 28)
    assert picture[0, 0, 14, 14] == 1 and picture[0, 0, 14, 3] == -1 and picture[0, 0, 2, 14] == -1


@pytest.mark.parametrize("call, message", [(lambda: blob("pink"), "unknown colour 'pink'"),
                                           (lambda: stroke([(1, 1)]), "at least two points")])
def test_bad_sketch_options_are_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("kind", ["edge", "mask"])
def test_a_drawn_condition_is_the_renderers_own_for_the_same_shape(kind):
    renders = ShapesDataset(6, seed=3, size=64)
    for i, a in enumerate(renders.attributes):
        drawn = condition(a["shape"], a["center"], a["radius"], kind=kind)
        assert torch.equal(drawn[0], (renders.edges if kind == "edge" else renders.masks)[i])
    with pytest.raises(ValueError, match="unknown shape"):
        condition("star")
