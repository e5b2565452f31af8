"""Crude pictures drawn by code, for img2img and inpainting to clean up (chapter 10): what a student
would draw with a mouse — a wobbly blob in roughly the right colour, a shaky stroke for a digit.

Both return tensors as the models read them, (1, C, H, W) in [-1, 1], and both are seeded: the wobble
and the shake are drawn from ``numpy.random.default_rng(seed)``. ``condition`` draws a ControlNet's
condition (chapter 11) — the outline or the filled mask of any shape, anywhere — in [0, 1].
"""
import numpy as np
import torch
from PIL import Image, ImageDraw

from minidiff.datasets.shapes import COLORS, SHAPES, shape_conditions


def _as_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)[None].contiguous()


def blob(color: str = "red", background: str = "blue", center=(20.0, 20.0), radius: float = 12.0,
         wobble: float = 0.25, seed: int = 0, size: int = 64, off_colour: float = 30.0) -> torch.Tensor:
    """A hand-drawn-looking blob: a closed outline whose radius wanders by up to ``wobble`` of itself,
    filled with the palette's ``color`` shifted by up to ``off_colour`` per channel (a student's red is
    never quite the renderer's), on the ``background`` colour. ``center`` is (x, y) in pixels."""
    for name in (color, background):
        if name not in COLORS:
            raise ValueError(f"unknown colour {name!r}: one of {', '.join(COLORS)}")
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    harmonics = sum(rng.normal(0, wobble / 2) * np.cos(k * angles + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    radii = radius * (1 + np.clip(harmonics, -wobble, wobble))
    outline = [(center[0] + r * np.cos(a), center[1] + r * np.sin(a)) for r, a in zip(radii, angles)]
    fill = tuple(int(np.clip(c + rng.uniform(-off_colour, off_colour), 0, 255)) for c in COLORS[color])
    image = Image.new("RGB", (size, size), tuple(COLORS[background]))
    ImageDraw.Draw(image).polygon(outline, fill=fill)
    return _as_tensor(image)


def stroke(points, width: float = 2.5, shake: float = 0.6, seed: int = 0, size: int = 28) -> torch.Tensor:
    """A shaky white stroke on black through ``points`` ((x, y) in pixels, in order), as a finger would
    draw a digit: every point moves by N(0, ``shake``²) pixels. A grey (1, 1, size, size) picture."""
    if len(points) < 2:
        raise ValueError("a stroke needs at least two points")
    rng = np.random.default_rng(seed)
    moved = [(x + rng.normal(0, shake), y + rng.normal(0, shake)) for x, y in points]
    image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(image).line(moved, fill=255, width=max(1, round(width)), joint="curve")
    return _as_tensor(image)


def condition(shape: str = "circle", center=(32.0, 32.0), radius: float = 10.0, kind: str = "edge",
              size: int = 64) -> torch.Tensor:
    """A ControlNet condition, (1, 1, size, size) in {0, 1}: the 1-pixel outline (``kind="edge"``) or the
    filled mask (``"mask"``) of ``shape`` with its ``center`` (x, y) and ``radius`` in pixels, drawn by the
    renderer's own rasteriser — the very kind of picture ``controlnet_shapes_edge``/``_mask`` learned from."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")
    if kind not in ("edge", "mask"):
        raise ValueError(f"the condition kind is 'edge' or 'mask', not {kind!r}")
    masks, edges = shape_conditions([{"shape": shape, "center": tuple(center), "radius": float(radius)}], size)
    picked = edges // 255 if kind == "edge" else masks
    return torch.from_numpy(picked.astype(np.float32))[None]
