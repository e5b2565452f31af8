"""The whole text-to-image system in one picture (chapter 00), with what the course has built in it.

    prompt → tokenizer + text encoder (CLIP) → denoising loop in latent space → VAE decoder → picture
                                                (U-Net steps, the prompt through cross-attention, guidance)

Every box says in which chapters its part is built. A box whose chapters are all still to come is
dashed and says "coming"; a box that works today but grows later says both. The chapter fills the
boxes with real pictures made by the course's own modules (``draw_system(pictures)``); a box left
without one shows only its words. When a chapter is added, move it into ``BUILT_CHAPTERS``.
"""
import textwrap
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from minidiff.viz import image_grid

CHAPTERS = {
    "00": "tour", "01": "autoencoder", "02": "VAE", "03": "GAN", "04": "forward noising", "05": "denoiser",
    "06": "samplers", "07": "latent diffusion", "08": "CLIP", "09": "text-to-image",
    "10": "img2img & inpainting", "11": "ControlNet", "12": "fine-tuning & LoRA",
}
BUILT_CHAPTERS = frozenset({"00", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12"})  # the notebooks in chapters/ today

BUILT_COLOUR, COMING_COLOUR = "tab:green", "0.55"
LINE, CHAR = 0.45, 0.22  # a line of a box's words: its height, and the width of a letter (drawing units)


@dataclass(frozen=True)
class Box:
    """One part of the system: ``slot`` names it in ``draw_system``'s pictures; ``xy`` is its lower
    left corner and ``size`` its (width, height), in the drawing's units; ``chapters`` build it."""
    slot: str
    title: str
    xy: tuple
    size: tuple
    chapters: tuple
    today: str = ""  # what stands in for it until all its chapters exist


SYSTEM = [  # the pipeline along the top, what trains and steers it along the bottom
    Box("prompt", "prompt", (0, 7), (4.4, 6.2), ("05", "09"), "today: a label"),
    Box("text_encoder", "tokenizer +\ntext encoder (CLIP)", (5.2, 7), (5, 6.2), ("05", "08"),
        "today: the label's learned vector"),
    Box("loop", "denoising loop (in latent space)\nU-Net steps · the prompt by cross-attention · guidance",
        (11, 7), (14.6, 6.2), ("04", "05", "06", "07", "09"), "today: in pixels or latents, guided by a label"),
    Box("decoder", "VAE decoder\nlatent → pixels", (26.4, 7), (5, 6.2), ("02", "07")),
    Box("picture", "picture", (32.2, 7), (3.8, 6.2), ("05",)),
    Box("training", "training: a real picture + noise at\na random step; the U-Net learns\nto predict the noise",
        (0, 0), (10.2, 5.8), ("04", "05")),
    Box("img2img", "img2img &\ninpainting: start\nfrom my picture", (11, 0), (4.6, 5.8), ("10",)),
    Box("controlnet", "ControlNet: a\nU-Net copy steered\nby edges or a mask", (16, 0), (4.6, 5.8), ("11",)),
    Box("finetune", "fine-tuning &\nLoRA: teach it\nmy pictures", (21, 0), (4.6, 5.8), ("12",)),
    Box("judge", "the judge: is it the digit asked for?\nhow close to real digits (FID)?", (26.4, 0), (9.6, 5.8),
        ("00",)),
]
ARROWS = [("prompt", "text_encoder"), ("text_encoder", "loop"), ("loop", "decoder"), ("decoder", "picture"),
          ("training", "loop"), ("img2img", "loop"), ("controlnet", "loop"), ("finetune", "loop"),
          ("picture", "judge")]


def chapter_status(chapters) -> tuple[list, list]:
    """Split ``chapters`` into (built, coming) by ``BUILT_CHAPTERS``."""
    return [c for c in chapters if c in BUILT_CHAPTERS], [c for c in chapters if c not in BUILT_CHAPTERS]


def _as_picture(image) -> np.ndarray:
    """A picture for ``imshow``: image tensors (B, C, H, W) in [-1, 1] side by side, or a uint8 array."""
    if isinstance(image, torch.Tensor):
        image = image_grid(image.detach().cpu(), ncols=image.shape[0], pad=1)
    return np.asarray(image)


def _draw_pictures(ax, pictures, left: float, width: float, bottom: float, top: float) -> None:
    """A row of (label, image) pairs, each as large as fits between ``bottom`` and ``top`` (labels
    under the pictures), centred in [left, left + width]."""
    gap, height = 0.35, top - bottom - LINE
    arrays = [_as_picture(image) for _, image in pictures]
    labels = [0.8 * CHAR * len(label) for label, _ in pictures]  # a slot is as wide as its label, too
    room = width - 0.3 - gap * (len(arrays) - 1)
    for _ in range(4):  # shrink the pictures until the row fits
        slots = [max(height * a.shape[1] / a.shape[0], label) for a, label in zip(arrays, labels)]
        height *= min(1.0, room / sum(slots))
    slots = [max(height * a.shape[1] / a.shape[0], label) for a, label in zip(arrays, labels)]
    x = left + (width - sum(slots) - gap * (len(arrays) - 1)) / 2
    y = bottom + LINE + (top - bottom - LINE - height) / 2
    for (label, _), array, slot in zip(pictures, arrays, slots):
        w = height * array.shape[1] / array.shape[0]
        ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest",
                  extent=(x + (slot - w) / 2, x + (slot + w) / 2, y, y + height), zorder=2)
        ax.text(x + slot / 2, y - 0.12, label, ha="center", va="top", fontsize=8.5)
        x += slot + gap


def draw_box(ax, box: Box, content=None) -> None:
    """One box: its title, its content (a (label, image) list, or words), and which chapters build it.
    Solid green: it works today; dashed grey: all of it is still coming."""
    (x, y), (w, h) = box.xy, box.size
    built, coming = chapter_status(box.chapters)
    colour = BUILT_COLOUR if built else COMING_COLOUR
    ax.add_patch(plt.Rectangle((x, y), w, h, fill=True, facecolor="white" if built else "0.96", edgecolor=colour,
                               linewidth=2, linestyle="-" if built else "--", zorder=1))
    ax.text(x + w / 2, y + h - 0.2, box.title, ha="center", va="top", fontsize=10, weight="bold")
    lines = [(box.today, "0.25")] if box.today and coming else []
    if built:
        lines.append(("built in " + " · ".join(built), BUILT_COLOUR))
    if coming:
        lines.append(("coming: " + " · ".join(f"{c} {CHAPTERS[c]}" for c in coming), COMING_COLOUR))
    bottom = y + 0.2
    for line, line_colour in reversed(lines):
        line = textwrap.fill(line, int(w / CHAR), break_on_hyphens=False)
        ax.text(x + w / 2, bottom, line, ha="center", va="bottom", fontsize=9, color=line_colour)
        bottom += LINE * (1 + line.count("\n"))
    top = y + h - 0.4 - 1.15 * LINE * (1 + box.title.count("\n"))
    if isinstance(content, str):
        ax.text(x + w / 2, (bottom + top) / 2, content, ha="center", va="center", fontsize=10, style="italic")
    elif content:
        _draw_pictures(ax, content, x, w, bottom + 0.2, top)


def _arrow_ends(source: Box, target: Box) -> tuple:
    """(tail, head) of the arrow from ``source`` to ``target``: sideways between boxes of one row,
    up or down between rows (slanted where the two boxes do not overlap)."""
    def clamp(value, box):
        return min(max(value, box.xy[0] + 0.5), box.xy[0] + box.size[0] - 0.5)
    (sx, sy), (sw, sh) = source.xy, source.size
    (tx, ty), (tw, th) = target.xy, target.size
    if ty > sy + sh or ty + th < sy:
        x_tail = clamp(tx + tw / 2, source)
        up = ty > sy
        return (x_tail, sy + sh if up else sy), (clamp(x_tail, target), ty if up else ty + th)
    return (sx + sw, sy + sh / 2), (tx, sy + sh / 2)


def draw_system(pictures: dict | None = None, ax=None):
    """The whole system, ``SYSTEM``'s boxes joined by ``ARROWS``. ``pictures`` maps a box's slot to
    its content: a list of (label, image) pairs (image tensors (B, C, H, W) in [-1, 1], shown side by
    side, or uint8 arrays) or a string. Returns the axes."""
    pictures = pictures or {}
    if ax is None:
        ax = plt.figure(figsize=(13, 5.3)).add_axes((0, 0, 1, 1))
    boxes = {box.slot: box for box in SYSTEM}
    for box in SYSTEM:
        draw_box(ax, box, pictures.get(box.slot))
    for start, end in ARROWS:
        source, target = boxes[start], boxes[end]
        tail, head = _arrow_ends(source, target)
        ax.annotate("", xy=head, xytext=tail, zorder=3,
                    arrowprops=dict(arrowstyle="-|>", lw=1.8,
                                    color=BUILT_COLOUR if chapter_status(source.chapters)[0] else COMING_COLOUR))
    right = max(b.xy[0] + b.size[0] for b in SYSTEM)
    top = max(b.xy[1] + b.size[1] for b in SYSTEM)
    ax.set_xlim(-0.2, right + 0.2)
    ax.set_ylim(-0.2, top + 0.2)
    ax.set_aspect("equal")
    ax.set_axis_off()
    return ax
