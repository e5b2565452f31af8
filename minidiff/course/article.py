"""The article's two ways of making a picture disappear, as code (chapter 00).

The article explains diffusion with a mosaic: a picture covered block by block until nothing is
left. A mosaic is a blur — it throws detail away and keeps each block's average — while diffusion
adds Gaussian noise, which keeps every pixel's value (scaled down) and hides it under random
numbers. Chapter 00 shows both side by side; chapter 04 shows why the noise, not the mosaic, is
what a model can learn to undo.
"""
import torch
import torch.nn.functional as F


def mosaic(images: torch.Tensor, block: int) -> torch.Tensor:
    """Paint every block×block tile of ``images`` (B, C, H, W; H and W multiples of ``block``) with
    its average: average-pool the tiles, then repeat each average over its tile."""
    return F.avg_pool2d(images, block).repeat_interleave(block, 2).repeat_interleave(block, 3)


def add_noise(images: torch.Tensor, noise: torch.Tensor, amount: float) -> torch.Tensor:
    """Blend towards Gaussian noise: √(1 − a)·x + √a·ε. With unit-variance x and ε the result has unit
    variance for every amount a — the blend diffusion models use (chapter 04's q_sample with ᾱ = 1 − a)."""
    return (1 - amount) ** 0.5 * images + amount ** 0.5 * noise
