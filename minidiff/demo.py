"""``make demo``: one picture sheet (``outputs/demo.png``) of what the course has built so far.

Each panel is a function returning ``(title, picture)``; every chapter adds its own with
``@panel``, so the sheet grows with the course. Everything here runs from shipped data and weights
in well under two minutes on a 2-core laptop.
"""
from pathlib import Path

import matplotlib
import numpy as np
import torch

from .data import load_mnist, to_tensor
from .download import write_atomic
from .shapes import make_shapes
from .solutions import add_noise, mosaic
from .viz import image_grid

PANELS = []


def panel(fn):
    PANELS.append(fn)
    return fn


def _rgb(grid: np.ndarray) -> np.ndarray:
    return np.repeat(grid[..., None], 3, axis=2) if grid.ndim == 2 else grid


@panel
def real_digits():
    images, labels = load_mnist("test")
    pick = np.random.default_rng(0).choice(len(images), 32, replace=False)
    return "MNIST: real handwritten digits (all 70,000 ship in data/mnist)", image_grid(images[pick], ncols=16)


@panel
def shapes_with_captions():
    shapes = make_shapes(16, seed=0)
    captions = "; ".join(f'"{c}"' for c in shapes["captions"][:2])
    return f"Shapes with captions, e.g. {captions}", image_grid(shapes["images"], ncols=16)


@panel
def mosaic_and_noise():
    """The article's picture of diffusion: an image disappears under mosaic, or under noise."""
    x = to_tensor(load_mnist("test")[0][:1]).repeat(6, 1, 1, 1)
    mosaics = torch.cat([mosaic(x[:1], b) for b in (1, 2, 4, 7, 14, 28)])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    noisy = torch.cat([add_noise(x[i:i + 1], noise[i:i + 1], a) for i, a in enumerate(np.linspace(0, 1, 6))])
    return "Mosaic (block 1 → 28) and noise (amount 0 → 1): the forward process", \
        image_grid(torch.cat([mosaics, noisy]).clamp(-1, 1), ncols=12)


@panel
def classifier_judge():
    from .classifier import predict
    from .metrics import load_classifier
    images, labels = load_mnist("test")
    pick = np.random.default_rng(1).choice(len(images), 16, replace=False)
    _, logits = predict(load_classifier(), to_tensor(images[pick]))
    said = " ".join(str(k) for k in logits.argmax(1).tolist())
    return f"The judge (MNIST classifier) reads: {said}", image_grid(images[pick], ncols=16)


def make_demo(path="outputs/demo.png") -> Path:
    """Draw every panel, one above the other, into ``path`` (written atomically)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pictures = [fn() for fn in PANELS]
    heights = [picture.shape[0] / picture.shape[1] * 12 + 0.5 for _, picture in pictures]
    fig, axes = plt.subplots(len(pictures), 1, figsize=(12, sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    for ax, (title, picture) in zip(np.atleast_1d(axes), pictures):
        ax.imshow(_rgb(picture), interpolation="nearest")
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_axis_off()
    fig.suptitle("minidiff — what the course has built so far", fontsize=14)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png"))
    plt.close(fig)
    return Path(path)
