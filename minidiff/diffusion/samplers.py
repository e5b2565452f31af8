"""Samplers: walking a trained denoiser back from noise to an image (the article's question 3).

Every sampler here is a plain function ``sample_<name>(denoiser, x, sigmas, *, generator, callback,
progress, …)`` in the vocabulary of k-diffusion (Karras et al., 2022), described once in the
``SAMPLERS`` table (where to add a new one). They all work in the "σ-space" of the noise:

    x = x_0 + σ · ε,        σ from large (pure noise) down to 0 (the image),

and all ask the same question of the network, through a **denoiser** D(x, σ) ≈ E[x_0 | x]: "what
clean image is hidden in x?". ``model_denoiser`` turns a trained U-Net (any ``prediction_type``,
with optional classifier-free guidance) into such a D. A DDPM step t is the σ-space point
σ_t = √((1 − ᾱ_t)/ᾱ_t), and x_t = √ᾱ_t · x (``minidiff.diffusion.schedules``).

The samplers follow the probability-flow ODE  dx/dσ = (x − D(x, σ)) / σ  (deterministic), or add
fresh noise at each step (ancestral, stochastic). One mechanism covers the DDPM family: DDIM with
η is an Euler step to a lower noise level σ_down followed by fresh noise of size σ_up
(``ancestral_step``); η = 0 is deterministic DDIM, and η = 1 on all T steps is exactly DDPM's
ancestral sampler (its posterior q(x_{t−1} | x_t, x_0)).

What goes around the samplers — the starting noise, conditions, decoding, the final picture — is
``minidiff.diffusion.pipeline``'s.
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from minidiff.diffusion.loss import check_twin, convert_prediction
from minidiff.diffusion.schedules import alphas_cumprod_from_sigmas

# ----------------------------------------------------------------------------- σ schedules for sampling

def sigmas_uniform_t(train_sigmas: torch.Tensor, num_steps: int) -> torch.Tensor:
    """``num_steps`` noise levels at DDPM steps spaced evenly in t, T−1, T−1 − T/n, …, T/n − 1, then a
    final 0 ("trailing" spacing, Lin et al. 2024). Every call does work: spacing down to t = 0 instead
    (DDIM's linspace) spends the last call where x is already clean to σ ≈ 0.006 — a fifth of a
    5-step budget. With ``num_steps = T`` these are all of the training steps; with more, the steps
    fall between training steps (t = (T−1)·k/n, k = n … 1), at σ's interpolated in log σ, since
    rounding them to whole steps would visit some twice (and below t = 0 wrap round to σ_{T−1})."""
    T = len(train_sigmas)
    if num_steps < 1:
        raise ValueError(f"need at least one sampling step, got {num_steps}")
    if num_steps <= T:
        return torch.cat([train_sigmas[(torch.arange(num_steps, 0, -1) * T / num_steps).round().long() - 1],
                          torch.zeros(1, dtype=train_sigmas.dtype)])
    t = torch.arange(num_steps, 0, -1, dtype=torch.float64) * (T - 1) / num_steps
    low = t.floor().long().clamp(max=T - 2)
    log_sigmas = train_sigmas.double().log()
    sigmas = torch.lerp(log_sigmas[low], log_sigmas[low + 1], t - low).exp().to(train_sigmas.dtype)
    return torch.cat([sigmas, torch.zeros(1, dtype=train_sigmas.dtype)])


def sigmas_karras(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: σ_i = (σ_max^(1/ρ) + i/(n−1) · (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, then 0.
    ρ = 7 crowds the steps at low noise, where the picture's detail is decided."""
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


# ----------------------------------------------------------------------------- the model as a denoiser

def model_denoiser(model, cond: dict | None = None, uncond: dict | None = None, guidance_scale: float = 1.0):
    """Wrap a network trained on DDPM steps (it owns its ``noise_schedule`` and says its
    ``config.prediction_type``) as D(x, σ) → estimate of x_0.

    The network sees x_t = x / √(1 + σ²) (since ᾱ = 1/(1 + σ²)) at the fractional step t(σ), with the
    conditions ``cond`` (one mapping: labels, text context, …), and its output is converted to x_0.
    With ``guidance_scale`` w ≠ 1, classifier-free guidance (Ho & Salimans, 2022) extrapolates from the
    unconditional twin ``uncond`` (same keys: the null label, the empty or a negative prompt) towards
    the conditional prediction, in one network call on a doubled batch (every tensor of both mappings),

        D = D(x, σ | ∅) + w · (D(x, σ | c) − D(x, σ | ∅)),

    which is the same as guiding ε, since x_0 and ε are affine in each other at fixed (x, σ).
    """
    cond = cond or {}
    guided = guidance_scale != 1.0
    if guided:
        if not cond:
            raise ValueError("guidance_scale ≠ 1 needs a condition to guide towards (cond)")
        uncond = model.null_cond(cond) if uncond is None else uncond
        check_twin(cond, uncond)
        doubled = {k: torch.cat([cond[k], uncond[k].expand_as(cond[k])]) for k in cond}
    schedule, prediction_type = model.noise_schedule, model.config.prediction_type

    def denoiser(x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        alpha_bar = alphas_cumprod_from_sigmas(sigma).reshape(-1, *[1] * (x.ndim - 1))
        x_t, t = x * alpha_bar.sqrt(), schedule.timestep(sigma)
        if not guided:
            out = model(x_t, t, cond) if cond else model(x_t, t)
        else:
            conditional, unconditional = model(torch.cat([x_t, x_t]), torch.cat([t, t]), doubled).chunk(2)
            out = unconditional + guidance_scale * (conditional - unconditional)
        return convert_prediction(out, x_t, alpha_bar, prediction_type, "sample")
    return denoiser


def to_d(x, sigma, denoised):
    """The ODE's slope dx/dσ = (x − D(x, σ)) / σ, i.e. the noise ε̂ the denoiser sees in x."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0):
    """Split a move from σ to σ' into a deterministic part down to σ_down and fresh noise σ_up, with
    σ_up² + σ_down² = σ'²:  σ_up = min(σ', η · √(σ'² (σ² − σ'²) / σ²)).
    For DDPM's σ's, η·σ_up is exactly DDIM's σ_t(η) (η = 1: the DDPM posterior's noise)."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2))
    return math.sqrt(sigma_to ** 2 - sigma_up ** 2), sigma_up


def _steps(sigmas, progress, name):
    return tqdm(range(len(sigmas) - 1), desc=name, disable=not progress, leave=False)


def fresh_noise(x, generator=None):
    """N(0, I) shaped like x, drawn where ``generator`` lives and moved to x's device: with a CPU
    generator the same seed gives the same pictures on a CPU, a GPU or a Mac (diffusers' randn_tensor)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _report(callback, i, x, sigma, denoised):
    """What every sampler tells its ``callback`` at each step (k-diffusion's dict)."""
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})


# ----------------------------------------------------------------------------- the samplers
# Every sampler: sample_<name>(denoiser, x, sigmas, *, generator=None, callback=None, progress=False,
# <its own options>) → x at σ = sigmas[-1]. ``callback`` gets {"i", "x", "sigma", "denoised"} per step.

@torch.no_grad()
def sample_euler_ancestral(denoiser, x, sigmas, *, eta: float = 1.0, generator=None, callback=None,
                           progress=False):
    """At each step: an Euler step of the ODE down to σ_down, then fresh noise of size σ_up."""
    sigmas = sigmas.tolist()
    for i in _steps(sigmas, progress, "euler_ancestral"):
        denoised = denoiser(x, sigmas[i])
        _report(callback, i, x, sigmas[i], denoised)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigma_up:
            x = x + fresh_noise(x, generator) * sigma_up
    return x


def sample_ddim(denoiser, x, sigmas, *, eta: float = 0.0, generator=None, callback=None, progress=False):
    """DDIM (Song et al., 2021): η = 0 is deterministic (Euler on the ODE in σ-space), η = 1 adds the
    DDPM posterior's noise. The same update as ``sample_euler_ancestral`` with ``eta``."""
    return sample_euler_ancestral(denoiser, x, sigmas, eta=eta, generator=generator, callback=callback,
                                  progress=progress)


def sample_ddpm(denoiser, x, sigmas, *, generator=None, callback=None, progress=False):
    """DDPM's ancestral sampler (Ho et al., 2020): on all T training steps, each step draws x_{t−1}
    from the posterior q(x_{t−1} | x_t, x̂_0) — which is DDIM with η = 1."""
    return sample_euler_ancestral(denoiser, x, sigmas, eta=1.0, generator=generator, callback=callback,
                                  progress=progress)


def sample_euler(denoiser, x, sigmas, *, generator=None, callback=None, progress=False):
    """Euler's method on the probability-flow ODE: first order, one network call per step
    (deterministic: ``generator`` is accepted and unused)."""
    return sample_euler_ancestral(denoiser, x, sigmas, eta=0.0, callback=callback, progress=progress)


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, generator=None, callback=None, progress=False):
    """Heun's method (Karras et al., 2022, algorithm 1 without churn): an Euler step, then the
    average of the slopes at both ends — second order, two calls per step (one on the last;
    deterministic: ``generator`` is accepted and unused)."""
    sigmas = sigmas.tolist()
    for i in _steps(sigmas, progress, "heun"):
        denoised = denoiser(x, sigmas[i])
        _report(callback, i, x, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_next = x + d * dt
            d_next = to_d(x_next, sigmas[i + 1], denoiser(x_next, sigmas[i + 1]))
            x = x + (d + d_next) / 2 * dt
    return x
@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, eta: float = 0.0, generator=None, callback=None, progress=False):
    """DPM-Solver++(2M) (Lu et al., 2022): exact for the linear part of the ODE in λ = −log σ, and a
    second-order multistep estimate of D from this step's and the previous step's denoised images:

        x_{i+1} = (σ_{i+1}/σ_i) · x_i − (e^{−h} − 1) · D̂,     h = λ_{i+1} − λ_i,
        D̂ = (1 + 1/(2r)) · D_i − 1/(2r) · D_{i−1},           r = h_{i−1} / h.

    With η > 0, the SDE variant (the "midpoint" form of SDE-DPM-Solver++(2M)): of the noise in x_i
    only the fraction e^{−ηh} is carried on, and fresh noise tops x up to exactly σ_{i+1},

        x_{i+1} = (σ_{i+1}/σ_i) e^{−ηh} · x_i − (e^{−(1+η)h} − 1) · D̂ + σ_{i+1} √(1 − e^{−2ηh}) · z,

    so that x_i = x_0 + σ_i ε stays x_0 + σ_{i+1} ε' when D̂ = x_0. η = 0 is the ODE solver above;
    η = 1 solves the reverse SDE, whose fresh noise washes out the denoiser's errors as DDPM's does.
    One network call per step."""
    sigmas = sigmas.tolist()
    previous, h_previous = None, None
    for i in _steps(sigmas, progress, "dpmpp_2m_sde" if eta else "dpmpp_2m"):
        denoised = denoiser(x, sigmas[i])
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            break
        h = math.log(sigmas[i]) - math.log(sigmas[i + 1])
        estimate = denoised
        if previous is not None:
            r = h_previous / h
            estimate = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * previous
        x = (sigmas[i + 1] / sigmas[i]) * math.exp(-eta * h) * x - math.expm1(-(1 + eta) * h) * estimate
        if eta:
            noise = fresh_noise(x, generator)
            x = x + noise * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * eta * h))
        previous, h_previous = denoised, h
    return x


def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, generator=None, callback=None, progress=False):
    """DPM-Solver++(2M) on the reverse SDE: ``sample_dpmpp_2m`` with η = 1."""
    return sample_dpmpp_2m(denoiser, x, sigmas, eta=1.0, generator=generator, callback=callback,
                           progress=progress)


@torch.no_grad()
def invert_ddim(denoiser, x0, sigmas, progress=False):
    """DDIM inversion (image → noise): run the deterministic ODE *upwards*, from the smallest σ in
    ``sigmas`` to the largest, each step reusing the slope at the current point. Sampling with
    ``sample_ddim(eta=0)`` on the reversed σ's leads back to (nearly) the same image."""
    ascending = sigmas[sigmas > 0].flip(0).tolist()
    x = x0 + 0.0
    for i in tqdm(range(len(ascending) - 1), desc="invert_ddim", disable=not progress, leave=False):
        x = x + to_d(x, ascending[i], denoiser(x, ascending[i])) * (ascending[i + 1] - ascending[i])
    return x


KARRAS_MIN_STEPS = 8


@dataclass(frozen=True)
class Sampler:
    """What a sampler is like, in one place (the CLI's help and the tests are built from ``SAMPLERS``).

    ``calls_per_step``: network calls per step (Heun's last step, down to σ = 0, takes one).
    ``stochastic``: draws fresh noise with its default options (DDIM and DPM-Solver++ can, with η > 0).
    ``spacing``: its published σ spacing; ``few_step_spacing`` below ``KARRAS_MIN_STEPS`` steps, where
    Karras's ρ = 7 spends two calls above σ = 19 and one at σ_min ≈ 0.006, where little is decided
    (on the shipped MNIST model, 500 samples: DPM-Solver++ × 5 scores FID 34 evenly in t instead of 50,
    Euler × 5 44 instead of 182; DPM-Solver++'s two spacings cross at 8 steps). Heun stays on Karras:
    its trapezoid rule cannot average slopes across the first even-in-t step, from σ ≈ 20,000 to 3.
    """
    fn: Callable
    calls_per_step: int = 1
    stochastic: bool = False
    spacing: str = "karras"
    few_step_spacing: str = "uniform_t"
    summary: str = ""


SAMPLERS = {
    "ddpm": Sampler(sample_ddpm, stochastic=True, spacing="uniform_t", summary="ancestral, DDPM's posterior"),
    "ddim": Sampler(sample_ddim, spacing="uniform_t", summary="deterministic (η = 0), or stochastic with eta"),
    "euler": Sampler(sample_euler, summary="Euler on the probability-flow ODE"),
    "euler_ancestral": Sampler(sample_euler_ancestral, stochastic=True, summary="Euler step plus fresh noise"),
    "heun": Sampler(sample_heun, calls_per_step=2, few_step_spacing="karras", summary="second order, 2 calls/step"),
    "dpmpp_2m": Sampler(sample_dpmpp_2m, summary="DPM-Solver++(2M), second-order multistep ODE solver"),
    "dpmpp_2m_sde": Sampler(sample_dpmpp_2m_sde, stochastic=True, summary="DPM-Solver++(2M) on the reverse SDE"),
}


def sampler_info(name: str) -> Sampler:
    """``SAMPLERS[name]``, or one clear error that lists the choices."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def default_spacing(sampler: str, steps: int) -> str:
    """The σ spacing ``sampler`` uses for ``steps`` steps unless told otherwise (see ``Sampler``)."""
    info = sampler_info(sampler)
    return info.few_step_spacing if steps < KARRAS_MIN_STEPS else info.spacing


def nfe_for_steps(sampler: str, steps: int) -> int:
    """Network calls that ``steps`` steps of ``sampler`` cost: n Heun steps cost 2n − 1."""
    calls = sampler_info(sampler).calls_per_step
    return calls * steps - (calls - 1)


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """Steps that cost about ``nfe`` network calls (the inverse of ``nfe_for_steps``)."""
    calls = sampler_info(sampler).calls_per_step
    return (nfe + calls - 1) // calls


KARRAS_SIGMA_MAX = 80.0  # Karras et al.'s σ_max for unit-scale data; beyond it x is noise to 1 part in 80


def moves_karras_range(sigma_min: float | None, sigma_max: float | None, rho: float) -> bool:
    """Whether these ``schedule_sigmas`` options differ from the default Karras range."""
    return (sigma_min, sigma_max, rho) != (None, None, 7.0)


def schedule_sigmas(train_sigmas: torch.Tensor, num_inference_steps: int, spacing: str = "uniform_t",
                    sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0):
    """The σ's a sampler visits, from the training steps' ``train_sigmas`` (σ_t for t = 0 … T−1, e.g.
    ``model.noise_schedule.sigmas``): ``"uniform_t"`` (DDPM/DDIM's evenly spaced training steps) or
    ``"karras"`` (ρ = 7 from the schedule's smallest σ up to at most ``KARRAS_SIGMA_MAX``), ending at 0.
    The cap matters: the cosine schedule's last σ is about 20,000, and ρ = 7 spacing up to there spends
    half of 10 steps above σ = 80, where nothing is left to decide (at 10 steps, FID 214 instead of 56
    for the shipped MNIST model).

    ``sigma_min``, ``sigma_max`` and ``rho`` move the Karras range. With few steps it pays to move it
    in: of 10 steps from σ = 80 down to σ_min ≈ 0.006, three land above σ = 20, where the denoiser can
    only answer "an average digit", and the last three below σ = 0.2, where the digit is decided and only
    faint noise is left, which the final call D(x, σ_min) removes in one go. On the shipped MNIST
    model at 10 steps (tuned on seeds 10–12, not the protocol's): DPM-Solver++ SDE on σ ∈ [0.2, 20]
    scores FID 4.8 instead of 10.3, and the ODE solver with ρ = 4 and σ_min = 0.1 9.2 instead of 12.5
    (chapter 06)."""
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a whole number ≥ 1, got {num_inference_steps!r}")
    if spacing == "uniform_t":
        if moves_karras_range(sigma_min, sigma_max, rho):
            raise ValueError("sigma_min, sigma_max and rho shape the 'karras' spacing; "
                             "'uniform_t' takes the training steps as they are")
        return sigmas_uniform_t(train_sigmas, num_inference_steps)
    if spacing == "karras":
        sigma_min = train_sigmas[0].item() if sigma_min is None else sigma_min
        sigma_max = min(train_sigmas[-1].item(), KARRAS_SIGMA_MAX) if sigma_max is None else sigma_max
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        return sigmas_karras(num_inference_steps, sigma_min, sigma_max, rho)
    raise ValueError(f"spacing must be 'uniform_t' or 'karras', not {spacing!r}")


