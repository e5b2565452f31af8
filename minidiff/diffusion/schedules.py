"""Noise schedules: how much of the image is left after t steps of noising.

The forward process (chapter 04) adds a little Gaussian noise at each of T steps,

    q(x_t | x_{t-1}) = N(√(1 − β_t) · x_{t-1}, β_t · I),

and composing t such steps gives a closed form for jumping straight from the image to step t,

    q(x_t | x_0) = N(√ᾱ_t · x_0, (1 − ᾱ_t) · I),      ᾱ_t = Π_{s ≤ t} (1 − β_s).

A schedule is just the sequence ᾱ (``alphas_cumprod``): ᾱ ≈ 1 means "still the image", ᾱ ≈ 0
"pure noise". Everything else is derived from it, in this one module:

    SNR_t = ᾱ_t / (1 − ᾱ_t)                 signal-to-noise ratio
    σ_t   = √((1 − ᾱ_t) / ᾱ_t) = 1 / √SNR_t  the noise level of the samplers (chapter 06), where
                                             x_t / √ᾱ_t = x_0 + σ_t · ε

Index convention (as in diffusers): integer t runs over 0 … T−1 and ``alphas_cumprod[t]`` is the
value *after* t + 1 noising steps, so ``alphas_cumprod[0] = 1 − β_1`` is just below 1.
"""
import math

import torch
import torch.nn as nn


def linear_schedule(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's schedule (Ho et al., 2020): β grows linearly from 1e-4 to 0.02 over T = 1000 steps.
    Returns ᾱ (float64, shape (T,)). Its ᾱ falls fast: most steps are spent on nearly pure noise."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def cosine_schedule(num_steps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM's schedule (Nichol & Dhariwal, 2021):

        ᾱ(t) = f(t) / f(0),   f(t) = cos²( (t/T + s) / (1 + s) · π/2 ),   s = 0.008

    The small offset s keeps β_1 from being vanishingly small (at t = 0, √(1 − ᾱ) ≈ s-sized noise
    rather than none). Each β_t = 1 − ᾱ_t/ᾱ_{t−1} is clipped at 0.999 so the last step is not singular.
    """
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


def sigmoid_schedule(num_steps: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                     max_beta: float = 0.999) -> torch.Tensor:
    """The sigmoid schedule (Jabri et al., 2022; Chen, 2023): ᾱ(t) follows a flipped sigmoid,

        ᾱ(t) = (−σ((t·(end − start) + start)/τ) + σ(end/τ)) / (σ(end/τ) − σ(start/τ)),

    which spends more steps at medium noise than linear; a larger τ makes it closer to linear.
    """
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    v_start, v_end = torch.sigmoid(torch.tensor(start / tau)), torch.sigmoid(torch.tensor(end / tau))
    f = (-torch.sigmoid((steps * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


SCHEDULES = {"linear": linear_schedule, "cosine": cosine_schedule, "sigmoid": sigmoid_schedule}


def make_schedule(name: str, num_steps: int = 1000) -> torch.Tensor:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](num_steps)


def betas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """β_t = 1 − ᾱ_t / ᾱ_{t−1} (with ᾱ_{−1} = 1): the per-step noise of the Markov chain."""
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return 1 - alphas_cumprod / previous


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR_t = ᾱ_t / (1 − ᾱ_t)."""
    return alphas_cumprod / (1 - alphas_cumprod)


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log SNR_t = log ᾱ_t − log(1 − ᾱ_t): a schedule drawn on this axis shows where its steps go."""
    return torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ_t = √((1 − ᾱ_t) / ᾱ_t): the noise level in the samplers' (k-diffusion's) units."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def alphas_cumprod_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """ᾱ = 1 / (1 + σ²), the inverse of ``sigmas_from_alphas_cumprod``."""
    return 1 / (1 + sigmas ** 2)


def timestep_from_sigma(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """The (fractional) integer-time t whose σ_t equals ``sigma``, interpolating log σ linearly
    between neighbouring steps of the schedule's ``log_sigmas`` (log σ_t for t = 0 … T−1): how a
    sampler working in σ asks a network trained on integer t. Computed in ``sigma``'s dtype."""
    log_sigmas = log_sigmas.to(sigma.device, sigma.dtype)
    log_sigma = sigma.log().clamp(log_sigmas[0], log_sigmas[-1])
    high = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).clamp(1, len(log_sigmas) - 1)
    low = high - 1
    w = (log_sigma.reshape(-1) - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
    return (low + w).reshape(sigma.shape)


class NoiseSchedule(nn.Module):
    """The schedule a denoiser was trained on, kept by the model itself: ᾱ_t and log σ_t for
    t = 0 … T−1 as float32 buffers, saved with the weights and moved with them to any device (Apple's
    MPS has no float64). They are computed once, in float64 on the CPU; log σ keeps its precision
    at both ends, where ᾱ → 1 and ᾱ → 0."""

    def __init__(self, name: str = "cosine", num_steps: int = 1000):
        super().__init__()
        alphas_cumprod = make_schedule(name, num_steps)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.register_buffer("log_sigmas", sigmas_from_alphas_cumprod(alphas_cumprod).log().float())

    @property
    def sigmas(self) -> torch.Tensor:
        """σ_t for t = 0 … T−1, on the CPU in float64: where the samplers plan their steps."""
        return self.log_sigmas.detach().cpu().double().exp()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional step t(σ) the network was trained to read (``timestep_from_sigma``)."""
        return timestep_from_sigma(sigma, self.log_sigmas)
