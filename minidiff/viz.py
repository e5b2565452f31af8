"""Pictures: image grids for notebooks and for the demo sheet."""
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from minidiff.datasets.mnist import to_uint8


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


def draw_unet(model, ax=None):
    """The article's picture of a U-Net: two buildings, the left one going down (encoder), the right
    one coming back up (decoder), a bridge (skip connection) on every floor. Each floor is labelled
    with its feature maps (positions × positions × channels), read from ``model.config``."""
    config = model.config
    channels, attention, patch = config.channels, config.attention, config.patch_size
    size = config.image_size // patch
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 1.2 + 1.1 * len(channels)))
    for level, (c, attend) in enumerate(zip(channels, attention)):
        y, side = -level, size // 2 ** level
        label = f"{side}×{side}×{c}" + (" + attention" if attend else "")
        for x, name in ((0, "down"), (6, "up")):
            ax.add_patch(plt.Rectangle((x, y - 0.35), 3, 0.7, color="tab:blue" if name == "down" else "tab:orange",
                                       alpha=0.3 + 0.15 * level))
            ax.text(x + 1.5, y, f"{name}: {label}", ha="center", va="center", fontsize=9)
        ax.annotate("", xy=(6, y), xytext=(3, y), arrowprops=dict(arrowstyle="->", color="gray"))
        ax.text(4.5, y + 0.1, "skip (bridge)", ha="center", fontsize=8, color="gray")
    bottom = -len(channels)
    ax.add_patch(plt.Rectangle((2.5, bottom - 0.35), 4, 0.7, color="tab:green", alpha=0.4))
    low = size // 2 ** (len(channels) - 1)
    ax.text(4.5, bottom, f"middle: {low}×{low}×{channels[-1]} + attention", ha="center", va="center", fontsize=9)
    for x, start, end in ((-0.25, 0.4, bottom + 0.4), (9.25, bottom + 0.4, 0.4)):  # down the left, up the right
        ax.annotate("", xy=(x, end), xytext=(x, start), arrowprops=dict(arrowstyle="->", alpha=0.4, lw=2))
    entry = f"x_t {config.image_size}×{config.image_size}×{config.in_channels}"
    if patch > 1:
        entry += f"\n→ {patch}×{patch} patches: {size}×{size}×{config.in_channels * patch ** 2}"
    ax.text(1.5, 0.75, entry, ha="center", fontsize=9)
    ax.text(7.5, 0.75, f"prediction ({config.prediction_type})", ha="center", fontsize=9)
    ax.set_xlim(-0.6, 9.6)
    ax.set_ylim(bottom - 0.8, 1.4)
    ax.set_axis_off()
    return ax
