"""The editing protocol (chapters 10–12): tasks made from the shapes' test renders, and what is measured.

Every task starts from real test renders (``TEST_SEED``; tune on ``TUNE_SEED``) and asks for a change
that the shapes judge can check, so "did the edit work?" is a number:

* ``replacement_task`` (inpainting): the object is masked out with a box around it, and the prompt
  asks for another object in the hole — another shape, colour or both — with the same size,
  position and background. All five attributes of the result are checked; the background is the
  kept part, so it also tells whether the hole was filled to match.
* ``completion_task`` (inpainting): half of the box is the hole — the object is cut in half — and the
  prompt is the picture's own caption. The drawn half must *continue* the kept one: the object read
  back (``object_mask``) should be the render's own (IoU), with no seam across it. A model that
  ignores the kept half draws a whole object of its own, a little elsewhere and of another radius.
* ``recolour_task`` (img2img): the prompt is the picture's own caption with another colour. The
  result should have the asked colour *and* the input's layout: the object's mask (``object_mask``,
  read by colour against the background) overlapping the input's (``mask_iou``).

``seam_error`` measures what the eye notices at the edge of a hole: the mean step between
neighbouring pixels across it.

ControlNet (chapter 11) is measured alike: ``control_task`` gives test renders' outlines or masks as
the condition and their captions as prompts; ``control_scores`` reads the object back by colour and
compares it with the condition — mask IoU, and edge F1 (``edge_f1``: outline pixels within one pixel
of the condition's, precision against recall) — beside the judge's attribute accuracy on the prompt.
"""
import numpy as np
import torch
import torch.nn.functional as F

from minidiff.datasets.shapes import (
    ATTRIBUTES,
    TEST_SEED,
    ShapesDataset,
    attribute_labels,
    eval_caption,
    is_held_out,
    mask_outline,
)
from minidiff.metrics import evaluate_shapes, judge_read

HOLE_MARGIN = 3 / 32  # of the picture's side: the box reaches this far beyond the object's bounding square
# Recolouring that keeps the outline (chapter 11, ``img2img --keep-outline``): img2img on the mask ControlNet,
# its condition the picture's own object (``object_mask``). Chosen on 96 tuning renders (TUNE_SEED, noise seeds
# 0 and 1) at s = 0.6, counting pictures with the asked colour *and* IoU ≥ 0.9: DPM-Solver++(2M) × 20 at λ = 1
# gave 71 %, at λ = 1.5 82 %; Euler ancestral × 20 at λ = 1.5 87 %, × 50 89.6 % (a stochastic sampler lets go
# of the old colour more easily); guidance 4, or λ = 2 or 3, kept fewer outlines or fewer colours; DDPM's
# even-in-t spacing starts s = 0.6 at a lower noise level, where the old colour often stays (79 % as asked).
KEEP_OUTLINE = {"model": "controlnet_shapes_mask", "control_strength": 1.5, "sampler": "euler_ancestral",
                "num_inference_steps": 50}


def object_box(attributes: list[dict], size: int, margin: float = HOLE_MARGIN) -> torch.Tensor:
    """(N, 1, size, size) masks: 1 on the square box around each object, ``margin`` × size beyond its
    bounding square — room for any shape of the same size class drawn near the same place."""
    pixels = torch.arange(size) + 0.5
    masks = torch.zeros(len(attributes), 1, size, size)
    for i, a in enumerate(attributes):
        (cx, cy), reach = a["center"], a["radius"] + margin * size
        masks[i, 0] = (((pixels - cy).abs() <= reach)[:, None] & ((pixels - cx).abs() <= reach)[None, :]).float()
    return masks


def _other(attributes: dict, rng: np.random.Generator, change: tuple, compositions: str) -> dict:
    """The attributes with the ones in ``change`` drawn anew: at least one differs, the colour is not the
    background's, and the composition stays in ``compositions``' split."""
    while True:
        new = dict(attributes, **{name: ATTRIBUTES[name][int(rng.integers(len(ATTRIBUTES[name])))] for name in change})
        if (any(new[name] != attributes[name] for name in change) and new["color"] != new["background"]
                and (compositions == "all" or is_held_out(new) == (compositions == "held_out"))):
            return new


def _task(n: int, seed: int, size: int, compositions: str, language: str, change: tuple, stream: int) -> dict:
    renders = ShapesDataset(n, seed=seed, size=size, compositions=compositions)
    rng = np.random.default_rng([seed, stream])
    asked = [_other(a, rng, change, compositions) for a in renders.attributes]
    return {"images": renders.images, "object_masks": renders.masks, "given": renders.attributes,
            "asked": asked, "prompts": [eval_caption(a, language=language) for a in asked]}


def replacement_task(n: int, seed: int = TEST_SEED, size: int = 64, compositions: str = "train",
                     language: str = "en") -> dict:
    """Inpainting: n renders, the box around each object as the hole (``masks``), and the prompt (in the
    evaluation wording) for a new object there: ``asked`` differs in shape, colour or both."""
    task = _task(n, seed, size, compositions, language, ("shape", "color"), stream=10)
    return {**task, "masks": object_box(task["given"], size)}


def completion_task(n: int, seed: int = TEST_SEED, size: int = 64, compositions: str = "train",
                    language: str = "en") -> dict:
    """Inpainting: n renders, each with one half of the box around its object (left, right, top or
    bottom, at random) as the hole, and its own caption (in the evaluation wording) as the prompt."""
    renders = ShapesDataset(n, seed=seed, size=size, compositions=compositions)
    boxes = object_box(renders.attributes, size)
    pixels = torch.arange(size) + 0.5
    sides = np.random.default_rng([seed, 12]).integers(4, size=n)
    for i, (a, side) in enumerate(zip(renders.attributes, sides)):
        (cx, cy) = a["center"]
        half = [pixels[None, :] < cx, pixels[None, :] >= cx, pixels[:, None] < cy, pixels[:, None] >= cy][side]
        boxes[i, 0] *= half.expand(size, size).float()
    return {"images": renders.images, "object_masks": renders.masks, "given": renders.attributes,
            "asked": renders.attributes, "masks": boxes,
            "prompts": [eval_caption(a, language=language) for a in renders.attributes]}


def recolour_task(n: int, seed: int = TEST_SEED, size: int = 64, compositions: str = "train",
                  language: str = "en") -> dict:
    """img2img: n renders and, for each, its caption with another colour (``asked``)."""
    return _task(n, seed, size, compositions, language, ("color",), stream=11)


def object_mask(images: torch.Tensor, floor: float = 0.15) -> torch.Tensor:
    """(N, 1, H, W): the object, read by colour. The background is the median colour of the picture's
    border; a pixel is the object's if its distance from it (the largest over the channels) is at least
    half the largest in the picture — at least half-way to the object's colour, as a pixel whose centre
    is inside the shape is — and above ``floor`` (a picture of plain background has no object)."""
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]
    distance = (images - background).abs().amax(1, keepdim=True)
    half = distance.flatten(1).amax(1)[:, None, None, None] / 2
    return ((distance >= half) & (distance > floor)).float()


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) intersection over union of two stacks of binary masks (1 where both are empty)."""
    a, b = a.flatten(1).bool(), b.flatten(1).bool()
    union = (a | b).sum(1)
    return torch.where(union > 0, (a & b).sum(1) / union.clamp(min=1), torch.ones_like(union, dtype=torch.float))


def seam_error(pictures: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) the mean absolute step, over the channels, between each pixel on the hole's edge and its
    kept 4-neighbours: 0 for a hole filled seamlessly with what surrounds it (as the shapes' box holes,
    whose edge lies in the plain background, should be)."""
    steps, pairs = torch.zeros(len(pictures)), torch.zeros(len(pictures))
    for dim in (2, 3):
        n = pictures.shape[dim] - 1
        a, b = pictures.narrow(dim, 0, n), pictures.narrow(dim, 1, n)
        ma, mb = masks.narrow(dim, 0, n), masks.narrow(dim, 1, n)
        across = (ma != mb).float()
        steps += ((a - b).abs().mean(1, keepdim=True) * across).flatten(1).sum(1)
        pairs += across.flatten(1).sum(1)
    return steps / pairs.clamp(min=1)


def grow(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """Masks grown by ``pixels`` in every direction (a square dilation)."""
    return F.max_pool2d(masks, 2 * pixels + 1, 1, pixels) if pixels else masks


def inpainting_scores(pictures: torch.Tensor, task: dict) -> dict:
    """What an inpainting of ``task`` reached: each attribute's accuracy against what was asked and all
    five right (the shapes judge), the mean seam error at the hole's edge (the renders' own: 0), the
    mean IoU of the object read by colour with the render's (for a completion, the same object), and
    whether every kept pixel is exactly the input's."""
    right = judge_read(pictures)[1] == attribute_labels(task["asked"])
    kept = task["masks"].expand_as(pictures) == 0
    return {"all_correct": right.all(1).float().mean().item(),
            "attributes": {name: right[:, i].float().mean().item() for i, name in enumerate(ATTRIBUTES)},
            "seam_error": seam_error(pictures, task["masks"]).mean().item(),
            "object_iou": mask_iou(object_mask(pictures), object_mask(task["images"])).mean().item(),
            "kept_exactly": bool(torch.equal(pictures[kept], task["images"].expand_as(pictures)[kept])),
            "n": len(pictures)}


def img2img_scores(pictures: torch.Tensor, task: dict) -> dict:
    """What an img2img run of ``task`` reached, faithfulness beside obedience and realism: the judge's
    accuracy per attribute against what was asked and all five right; the object read by colour against
    the input's (mean IoU, and the share with IoU ≥ 0.9); both at once, picture by picture (the colour
    as asked *and* IoU ≥ 0.9); the root-mean-square distance to the input (in [−1, 1] units); judge-FID
    against the test renders (compare it with the floor at the same count)."""
    report = evaluate_shapes(pictures, task["asked"])
    column = list(ATTRIBUTES).index("color")
    colour = judge_read(pictures)[1][:, column] == attribute_labels(task["asked"])[:, column]
    iou = mask_iou(object_mask(pictures), object_mask(task["images"]))
    return {"accuracy": report["accuracy"], "all_correct": report["all_correct"], "fid": report["fid"],
            "object_iou": iou.mean().item(), "layout_kept": (iou >= 0.9).float().mean().item(),
            "colour_and_layout_kept": (colour & (iou >= 0.9)).float().mean().item(),
            "rms_to_input": (pictures - task["images"]).pow(2).mean().sqrt().item(), "n": len(pictures)}


def control_task(n: int, kind: str, seed: int = TEST_SEED, size: int = 64, compositions: str = "train",
                 language: str = "en") -> dict:
    """ControlNet: n renders, each one's ``kind`` ("edge": its 1-pixel outline, "mask": its filled mask) as
    the condition picture (``conditions``, in {0, 1}) and its caption (evaluation wording) as the prompt."""
    if kind not in ("edge", "mask"):
        raise ValueError(f"the condition kind is 'edge' or 'mask', not {kind!r}")
    renders = ShapesDataset(n, seed=seed, size=size, compositions=compositions)
    return {"images": renders.images, "object_masks": renders.masks, "given": renders.attributes,
            "conditions": renders.edges if kind == "edge" else renders.masks,
            "prompts": [eval_caption(a, language=language) for a in renders.attributes]}


def outline(masks: torch.Tensor) -> torch.Tensor:
    """The 1-pixel boundary of binary masks (N, 1, H, W): mask pixels with a 4-neighbour outside it
    (outside the picture counts as outside) — the shapes' own ``edge`` condition, by the renderer's code."""
    return torch.from_numpy(mask_outline(masks[:, 0].bool().cpu().numpy()))[:, None].float()


def edge_f1(masks: torch.Tensor, edges: torch.Tensor, tolerance: int = 1) -> torch.Tensor:
    """(N,) how well the outline of ``masks`` traces the condition ``edges``: precision = the share of
    the outline's pixels within ``tolerance`` pixels of an edge pixel, recall = the share of edge pixels
    within ``tolerance`` of the outline, F1 = 2PR / (P + R) (0 when either is empty)."""
    drawn, wanted = outline(masks), edges.float()
    precision = (drawn * grow(wanted, tolerance)).flatten(1).sum(1) / drawn.flatten(1).sum(1).clamp(min=1)
    recall = (wanted * grow(drawn, tolerance)).flatten(1).sum(1) / wanted.flatten(1).sum(1).clamp(min=1)
    return 2 * precision * recall / (precision + recall).clamp(min=1e-12)


def control_scores(pictures: torch.Tensor, task: dict) -> dict:
    """What a ControlNet run of ``task`` reached: the object read by colour against the render's (mean
    mask IoU, the share ≥ 0.9, mean edge F1 against its outline) and the judge's accuracy on the prompt."""
    drawn = object_mask(pictures)
    iou = mask_iou(drawn, task["object_masks"])
    right = judge_read(pictures)[1] == attribute_labels(task["given"])
    return {"object_iou": iou.mean().item(), "iou_at_least_0.9": (iou >= 0.9).float().mean().item(),
            "edge_f1": edge_f1(drawn, outline(task["object_masks"])).mean().item(),
            "all_correct": right.all(1).float().mean().item(),
            "attributes": {name: right[:, i].float().mean().item() for i, name in enumerate(ATTRIBUTES)},
            "n": len(pictures)}
