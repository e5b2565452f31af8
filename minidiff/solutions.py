"""Reference solutions to the chapters' exercises (teachers: CI checks these with ``minidiff.exercises``).

Students: try the exercise first — the notebook's check tells you when you are right.
"""
import torch
import torch.nn.functional as F

from .diffusion import q_sample  # noqa: F401  (chapter 04's exercise is the library's own function)


def mosaic(images: torch.Tensor, block: int) -> torch.Tensor:
    """Average-pool block×block tiles, then repeat each average over its tile."""
    return F.avg_pool2d(images, block).repeat_interleave(block, 2).repeat_interleave(block, 3)


def add_noise(images: torch.Tensor, noise: torch.Tensor, amount: float) -> torch.Tensor:
    """√(1 − a)·x + √a·ε: with unit-variance x and ε the result has unit variance for every a."""
    return (1 - amount) ** 0.5 * images + amount ** 0.5 * noise


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of D: mean −log σ(D(x)) + mean −log(1 − σ(D(G(z)))), with softplus:
    −log σ(l) = softplus(−l) and −log(1 − σ(l)) = softplus(l)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of G: mean −log σ(D(G(z))) = mean softplus(−D(G(z)))."""
    return F.softplus(-fake_logits).mean()


# ----------------------------------------------------------------------------- chapters 01–02: AE and VAE

def psnr_per_image(reconstructions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """10 · log10(peak² / MSE) per image; images in [-1, 1] have peak-to-peak 2, so peak² = 4."""
    mse = ((reconstructions - images) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(4 / mse)


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = μ + σ·ε with σ = exp(½ log σ²)."""
    return mean + torch.exp(0.5 * logvar) * noise


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − log σ² − 1), summed over all but the batch dimension."""
    return 0.5 * (mean ** 2 + logvar.exp() - logvar - 1).flatten(1).sum(1)
