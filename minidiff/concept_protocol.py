"""The new-concept protocol (chapter 12): a few pictures of a shape no model has seen, and what "learned" means.

The base text-to-image model (``t2i_shapes``) and its CLIP have only seen circles, squares and triangles. A
student gets ``SHOWN_PICTURES`` renders of a new shape (``CONCEPT``, the star; the heart is the second one the
renderer draws), all in a narrow corner of the world — ``SHOWN`` colours, backgrounds, one size and a few
places — with their captions, which use the new word. Learned means more than copying those pictures:

* **recontextualisation** (``recontext_prompts``): prompts that put the concept in colours, backgrounds and
  places it was never shown in, at both sizes. ``concept_scores`` reads each picture with ``shapes_judge_plus``
  (which knows the new shapes): is the shape the concept, and are all five attributes as asked?
* **the base's own prompts**: the same scores on prompts of the old shapes, before and after — what teaching
  the new word cost (forgetting, "language drift").
* **held-out pictures of the concept** (``concept_pictures(..., held_out=True)``): other renders of it, never
  trained on, for a held-out loss that shows when training starts to memorise.
"""
import numpy as np
import torch

from minidiff.datasets.shapes import (
    ALL_SHAPES,
    COLORS,
    POSITIONS,
    SIZES,
    TRAIN_SEED,
    TUNE_SEED,
    ShapesDataset,
    attribute_labels,
    eval_caption,
    make_shapes,
)
from minidiff.metrics import judge_read
from minidiff.weights import load_pretrained

CONCEPT = "star"
SHOWN = {"color": ("red", "blue"), "background": ("white", "yellow"), "size": ("large",),
         "position": ("center", "top left", "bottom right")}
SHOWN_PICTURES = 8
CONCEPT_JUDGE = "shapes_judge_plus"


def _is_shown(attributes: dict) -> bool:
    return all(attributes[name] in values for name, values in SHOWN.items())


def concept_pictures(n: int = SHOWN_PICTURES, shape: str = CONCEPT, size: int = 64, held_out: bool = False,
                     seed: int = TRAIN_SEED) -> dict:
    """``n`` renders of ``shape`` within ``SHOWN`` — the first of ``seed``'s stream of that shape that are —
    as {"images": (n, 3, size, size) in [-1, 1], "attributes", "captions"}; ``held_out`` takes the next ``n``
    instead: the same narrow world, pictures the student never gets."""
    if shape not in ALL_SHAPES:
        raise ValueError(f"the concept is one of {', '.join(ALL_SHAPES)}, not {shape!r}")
    found, start, chunk = [], 0, 2000
    while len(found) < 2 * n:  # the first n are the shown pictures, the next n the held-out ones
        # what an example is does not depend on the size it is drawn at: find them small, draw them at ``size``
        scan = make_shapes(chunk, seed=seed, size=16, start=start, shapes=(shape,))["attributes"]
        found += [start + i for i, a in enumerate(scan) if _is_shown(a)]
        start += chunk
    chosen = found[n:2 * n] if held_out else found[:n]
    drawn = [make_shapes(1, seed=seed, size=size, start=i, shapes=(shape,)) for i in chosen]
    pixels = torch.from_numpy(np.concatenate([d["images"] for d in drawn])).permute(0, 3, 1, 2).float() / 127.5 - 1
    attributes, captions = [d["attributes"][0] for d in drawn], [d["captions"][0] for d in drawn]
    return {"images": pixels, "attributes": attributes, "captions": captions}


def recontext_prompts(n: int = 24, shape: str = CONCEPT, language: str = "en") -> tuple[list[str], list[dict]]:
    """``n`` prompts (evaluation wording) that put ``shape`` where it was never shown: a colour and a
    background outside ``SHOWN``'s (never equal), both sizes in turn, every position in turn — so most are
    in places never shown too. Returns (prompts, their attribute dicts). Fixed, so every run asks the same."""
    colours = [c for c in COLORS if c not in SHOWN["color"]]
    backgrounds = [c for c in COLORS if c not in SHOWN["background"]]
    asked = []
    for i in range(n):
        colour = colours[i % len(colours)]
        background = [b for b in backgrounds if b != colour][(i // len(colours)) % (len(backgrounds) - 1)]
        asked.append({"shape": shape, "color": colour, "background": background,
                      "size": SIZES[i % len(SIZES)], "position": POSITIONS[(i * 4) % len(POSITIONS)]})
    return [eval_caption(a, language) for a in asked], asked


def base_prompts(n: int = 200, language: str = "en") -> tuple[list[str], list[dict]]:
    """``n`` prompts of the old shapes (tuning renders' attributes, evaluation wording): what the base model
    could draw before it was taught anything — measured again after, for the drift."""
    attributes = ShapesDataset(n, seed=TUNE_SEED, size=32, compositions="train").attributes
    return [eval_caption(a, language) for a in attributes], attributes


def concept_scores(pictures: torch.Tensor, asked: list[dict], judge=None) -> dict:
    """What the concept judge reads in ``pictures`` drawn for the prompts of ``asked`` (attribute dicts):

      shape        share whose shape is the one asked (the concept, for recontextualisation prompts)
      all_correct  share with all five attributes as asked
      accuracy     {attribute: share read as asked}
      shapes_read  {shape: how many pictures were read as it}
    """
    if len(pictures) != len(asked):
        raise ValueError(f"got {len(pictures)} pictures but {len(asked)} prompts' attributes")
    judge = judge or load_pretrained(CONCEPT_JUDGE)
    _, read = judge_read(pictures, judge)
    right = read == attribute_labels(asked)
    names = list(judge.attributes)
    return {"shape": right[:, 0].float().mean().item(), "all_correct": right.all(1).float().mean().item(),
            "accuracy": {name: right[:, k].float().mean().item() for k, name in enumerate(names)},
            "shapes_read": {s: int((read[:, 0] == k).sum()) for k, s in enumerate(judge.attributes["shape"])},
            "n": len(asked)}
