"""Reference solutions to the chapters' exercises (teachers: CI checks these with ``minidiff.course.exercises``).

Students: try the exercise first — the notebook's check tells you when you are right.
"""
import torch
import torch.nn.functional as F

from minidiff.diffusion.loss import at_step, convert_prediction, diffusion_loss, q_sample  # noqa: F401  (chapters 04–05)
from minidiff.diffusion.samplers import to_d
from minidiff.metrics import psnr_per_image  # noqa: F401  (chapter 01)

# Where an exercise rebuilds one of the library's own functions, the library's function is the answer.
from minidiff.models.autoencoder import kl_divergence, reparameterize  # noqa: F401  (chapter 02)
from minidiff.models.gan import discriminator_loss, generator_loss  # noqa: F401  (chapter 03)


def mosaic(images: torch.Tensor, block: int) -> torch.Tensor:
    """Average-pool block×block tiles, then repeat each average over its tile."""
    return F.avg_pool2d(images, block).repeat_interleave(block, 2).repeat_interleave(block, 3)


def add_noise(images: torch.Tensor, noise: torch.Tensor, amount: float) -> torch.Tensor:
    """√(1 − a)·x + √a·ε: with unit-variance x and ε the result has unit variance for every a."""
    return (1 - amount) ** 0.5 * images + amount ** 0.5 * noise


def epsilon_loss(model, x0, t, noise, alphas_cumprod):
    """DDPM's "simple" loss (chapter 05): noise x_0 to step t, ask the model for ε, mean squared error."""
    return diffusion_loss(model, x0, alphas_cumprod, "epsilon", weighting="none", t=t, noise=noise)["loss"]


def x0_from_epsilon(x_t, t, epsilon, alphas_cumprod):
    """Undo q_sample for x_0 (chapter 05): x_0 = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t."""
    return convert_prediction(epsilon, x_t, at_step(alphas_cumprod, t, x_t), "epsilon", "sample")


def ddim_step(x_t, t, t_prev, epsilon, alphas_cumprod):
    """One deterministic DDIM step (chapter 06): estimate x_0 from ε, then re-noise it to step t_prev
    with the *same* ε: x_{t_prev} = √ᾱ_{t_prev} · x̂_0 + √(1 − ᾱ_{t_prev}) · ε."""
    return q_sample(x0_from_epsilon(x_t, t, epsilon, alphas_cumprod), t_prev, epsilon, alphas_cumprod)


def euler_step(x, sigma, sigma_next, denoised):
    """One Euler step of the probability-flow ODE in σ-space (chapter 06): x + (x − D)/σ · (σ' − σ)."""
    return x + to_d(x, sigma, denoised) * (sigma_next - sigma)
