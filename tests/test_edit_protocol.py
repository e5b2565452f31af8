"""The editing protocol: tasks from test renders, the object read by colour, IoU and the seam; the
control tasks, outlines and edge F1."""
import pytest
import torch

from minidiff.datasets.shapes import ATTRIBUTES, COLORS, ShapesDataset, is_held_out
from minidiff.edit_protocol import (
    completion_task,
    control_scores,
    control_task,
    edge_f1,
    grow,
    img2img_scores,
    mask_iou,
    object_box,
    object_mask,
    outline,
    recolour_task,
    replacement_task,
    seam_error,
)


def test_the_hole_box_holds_the_object_with_room_around_it():
    renders = ShapesDataset(300, seed=5, size=64)
    boxes = object_box(renders.attributes, 64)
    assert boxes.shape == (300, 1, 64, 64)
    assert (grow(renders.masks, 5) <= boxes).all()  # every shape pixel, and 5 pixels round it, is in the hole
    a = renders.attributes[0]
    side = boxes[0, 0].sum(0).max()  # the box's height in pixels
    assert abs(side - 2 * (a["radius"] + 6)) <= 1


def test_a_replacement_asks_for_another_object_in_the_same_place():
    task = replacement_task(200, seed=5)
    again = replacement_task(200, seed=5)
    assert task["prompts"] == again["prompts"] and torch.equal(task["masks"], again["masks"])
    changed = {"shape": 0, "color": 0}
    for given, asked in zip(task["given"], task["asked"]):
        assert {k: asked[k] for k in ("background", "size", "position")} == \
               {k: given[k] for k in ("background", "size", "position")}
        assert asked["color"] != asked["background"] and not is_held_out(asked)
        assert (asked["shape"], asked["color"]) != (given["shape"], given["color"])
        for k in changed:
            changed[k] += asked[k] != given[k]
    assert min(changed.values()) > 100  # both shapes and colours are asked for, not one of them
    held = replacement_task(50, seed=5, compositions="held_out")
    assert all(is_held_out(a) for a in held["asked"])


def test_a_recolouring_changes_the_colour_only():
    task = recolour_task(100, seed=5, language="zh")
    for given, asked in zip(task["given"], task["asked"]):
        assert asked["color"] != given["color"] and asked["color"] in ATTRIBUTES["color"]
        assert {k: v for k, v in asked.items() if k != "color"} == {k: v for k, v in given.items() if k != "color"}
    assert all("背景" in p for p in task["prompts"])


def test_a_recolouring_counts_as_done_only_with_the_asked_colour_and_the_inputs_outline():
    """The input itself keeps the outline but not the colour; the object painted in the asked colour has
    both; the asked colour drawn somewhere else has the colour alone."""
    task = recolour_task(40, seed=5)
    paint = torch.stack([torch.tensor(COLORS[a["color"]], dtype=torch.float32) / 127.5 - 1 for a in task["asked"]])
    painted = torch.where(task["object_masks"].bool(), paint[:, :, None, None], task["images"])
    kept = img2img_scores(task["images"], task)
    assert kept["layout_kept"] == 1 and kept["accuracy"]["color"] == 0 and kept["colour_and_layout_kept"] == 0
    done = img2img_scores(painted, task)
    assert done["accuracy"]["color"] > 0.95 and done["layout_kept"] > 0.95 and done["colour_and_layout_kept"] > 0.9
    moved = img2img_scores(painted.roll(12, dims=-1), task)  # the same objects, 12 pixels to the right
    assert moved["accuracy"]["color"] > 0.95 and moved["colour_and_layout_kept"] < 0.2


def test_the_object_read_by_colour_is_the_renders_own_mask():
    renders = ShapesDataset(300, seed=6, size=64)
    iou = mask_iou(object_mask(renders.images), renders.masks)
    assert iou.mean() > 0.97 and iou.min() > 0.75  # only anti-aliased edge pixels may differ


def test_mask_iou_by_hand():
    a, b = torch.zeros(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    a[0, 0, 0], b[0, 0, :, 0] = 1, 1          # two pixels each, one shared: 1/3
    a[1, 0, 0, 0] = 1                         # one against none: 0
    torch.testing.assert_close(mask_iou(a, b), torch.tensor([1 / 3, 0.0, 1.0]))


def test_the_seam_is_the_step_across_the_holes_edge():
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:5, 3:6] = 1
    flat = torch.full((2, 3, 8, 8), 0.2)
    assert torch.equal(seam_error(flat, mask), torch.zeros(2))
    stepped = flat.clone()
    stepped[0, :, 2:5, 3:6] += 0.5           # the hole filled 0.5 brighter: a step of 0.5 at every edge pair
    stepped[1, 0, 2:5, 3:6] -= 0.3           # one channel of three: 0.1 on average
    torch.testing.assert_close(seam_error(stepped, mask), torch.tensor([0.5, 0.1]))
    renders = replacement_task(100, seed=7)
    assert seam_error(renders["images"], renders["masks"]).max() < 1e-6  # the box's edge lies in the background


def test_a_completion_hides_one_half_of_the_object():
    task = completion_task(200, seed=5)
    cut = task["masks"] * task["object_masks"]
    share = cut.flatten(1).sum(1) / task["object_masks"].flatten(1).sum(1)
    assert share.min() > 0.2 and share.max() < 0.8          # part of the object is hidden, part is kept
    assert (task["masks"].flatten(1).sum(1) > 0).all() and task["asked"] == task["given"]
    boxes = object_box(task["given"], 64)
    assert (task["masks"] <= boxes).all()
    assert (task["masks"].flatten(1).sum(1) >= 0.25 * boxes.flatten(1).sum(1)).all()  # (the picture's edge may cut the box)


def test_outline_recomputes_the_renderers_edge_condition():
    task = control_task(64, "edge", size=64)
    assert torch.equal(outline(task["object_masks"]), task["conditions"])
    assert torch.equal(control_task(8, "mask")["conditions"], control_task(8, "mask")["object_masks"])


def test_edge_f1_by_hand():
    """Two 10×10 squares one pixel apart: their outlines (36 pixels each) share the 9 + 9 pixels of the
    top and bottom rows, so exactly F1 = 0.5 — and 1 within a pixel's tolerance."""
    a, b = torch.zeros(1, 1, 20, 20), torch.zeros(1, 1, 20, 20)
    a[..., 5:15, 5:15], b[..., 5:15, 6:16] = 1, 1
    assert outline(a).sum() == 36
    assert edge_f1(b, outline(a), tolerance=0).item() == pytest.approx(0.5)
    assert edge_f1(b, outline(a), tolerance=1).item() == pytest.approx(1.0)
    assert edge_f1(torch.zeros_like(a), outline(a)).item() == 0


def test_real_renders_score_what_a_perfect_controlnet_would():
    """The protocol's ceiling: a render's own object, read back by colour, against its own condition."""
    task = control_task(200, "edge")
    scores = control_scores(task["images"], task)
    assert scores["edge_f1"] > 0.99 and scores["object_iou"] > 0.95 and scores["all_correct"] > 0.99
