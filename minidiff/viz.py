"""Pictures: image grids for notebooks and for the demo sheet."""
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from .data import to_uint8


def image_grid(images, ncols: int = 8, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile (N, C, H, W) float images in [-1, 1] (or uint8 (N, H, W[, C])) into one uint8 picture."""
    if isinstance(images, torch.Tensor):
        images = to_uint8(images)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = image
    return grid[..., 0] if c == 1 else grid


def show_images(images, ncols: int = 8, title: str | None = None, ax=None, scale: float = 0.6):
    """Show a grid of images on ``ax`` (a new figure if None); returns the axes."""
    grid = image_grid(images, ncols)
    if ax is None:
        _, ax = plt.subplots(figsize=(scale * grid.shape[1] / 30 + 0.5, scale * grid.shape[0] / 30 + 0.5))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax
