"""The pipeline: everything around the samplers that turns a trained denoiser into pictures.

The article's overview of image generation is one pipeline, and every later chapter adds one piece
to it or one way to steer it — none builds a second one:

    conditions (a class label; later a prompt's text context) ─┐
    starting noise x_T ── sampler(denoiser D(x, σ | cond)) ────┴→ x_0 ── decode (latent models) → picture

``generate`` is the one entry point used by recipes, chapters, benchmarks and
``python -m minidiff sample``. The samplers stay pure functions of (denoiser, x, σ's); here is where
the starting noise is drawn, the σ's are planned, the conditions are cut into batches and guided,
latents are decoded, and the images are clamped to [-1, 1] — once, at the very end (latents are
never clamped: they are not bounded).

**Starting from a picture** (img2img, SDEdit: Meng et al., 2021). Instead of pure noise, start from a
picture x₀ noised part of the way, x = x₀ + σ_k·ε, and run only the steps that remain below σ_k: the
noise washes out the details, the denoiser redraws them — steered by the conditions — while what
survived the noise (the layout, the broad colours) stays. ``strength`` s says how much is redrawn, in
diffusers' meaning: the *fraction of the planned steps* that are run, k = ⌊s·N⌋ of N (s = 0.3 at 20
steps runs the last 6, from σ_6's level down). Other tools (e.g. the "denoising strength" of some web
interfaces, or SDEdit's t₀) speak of the noise level or step t₀ itself; same idea, other units.
s = 1 runs every step from pure noise (the picture is forgotten: text-to-image exactly); s = 0 runs
none and returns the picture itself (for a latent model: its decoded latent, the autoencoder's
reconstruction).
"""
import inspect
import math

import torch
from tqdm.auto import tqdm

from minidiff.diffusion.samplers import (
    default_spacing,
    model_denoiser,
    moves_karras_range,
    sampler_info,
    schedule_sigmas,
)

STANDARD_OPTIONS = {"denoiser", "x", "sigmas", "generator", "callback", "progress"}


def starting_noise(n: int, shape: tuple, seed: int = 0) -> torch.Tensor:
    """N(0, I) noise for n images; image i's noise depends only on (seed, i), so the first k of n
    images are the same pictures as k images on their own (and benchmarks can share the noise)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
                        for i in range(n)])


def _rows(cond: dict | None, start: int, stop: int, n: int, device) -> dict | None:
    """Rows start:stop of every condition tensor, on ``device``; a tensor of one row serves all n."""
    if cond is None:
        return None
    out = {}
    for key, value in cond.items():
        value = torch.as_tensor(value)
        if value.shape[0] not in (1, n):
            raise ValueError(f"condition {key!r} has {value.shape[0]} rows; give one per image ({n}) or one for all")
        rows = value if value.shape[0] == 1 else value[start:stop]
        out[key] = rows.to(device).expand(stop - start, *value.shape[1:])
    return out


def img2img_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The σ's that img2img at ``strength`` s walks: the last k = ⌊s·N⌋ steps of the N planned ones
    (``sigmas`` has N + 1 entries, ending at 0), so the first of them is the level the picture is noised to."""
    if not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number from 0 (keep the picture) to 1 (redraw it all), got {strength!r}")
    steps = len(sigmas) - 1
    run = math.floor(steps * strength + 1e-9)  # 0.3 · 20 = 6.000000000000001 must run 6, and 0.29 · 100 run 29
    return sigmas[steps - run:]


def _check_options(sampler: str, options: dict) -> None:
    own = set(inspect.signature(sampler_info(sampler).fn).parameters) - STANDARD_OPTIONS
    unknown = sorted(set(options) - own)
    if unknown:
        raise ValueError(f"sampler {sampler!r} takes no option {', '.join(unknown)}"
                         + (f" (its options: {', '.join(sorted(own))})" if own else " (it has no options)"))


@torch.no_grad()
def generate(model, n: int, *, cond: dict | None = None, uncond: dict | None = None, guidance_scale: float = 1.0,
             sampler: str = "ddpm", num_inference_steps: int | None = None, spacing: str | None = None,
             sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0, seed: int = 0,
             batch_size: int = 500, progress: bool = True, callback=None, decode=None, init=None,
             strength: float = 1.0, **sampler_options) -> torch.Tensor:
    """Draw ``n`` pictures from a trained denoiser (pixel or latent, any conditions).

    * ``cond``: the conditions, one mapping of tensors with one row per picture or one row for all,
      e.g. ``{"labels": labels}`` for a class-conditional model; ``guidance_scale`` w ≠ 1 turns on
      classifier-free guidance against ``uncond`` (default: the model's own null condition, e.g.
      the null label; a text model is given the empty or a negative prompt's context).
    * ``sampler`` (``minidiff.diffusion.samplers.SAMPLERS``), ``num_inference_steps`` (default: all T
      training steps, what DDPM needs), ``spacing`` (default: the sampler's own, see
      ``default_spacing``; ``sigma_min``, ``sigma_max`` and ``rho`` move a Karras range, see
      ``schedule_sigmas``), and the sampler's own options (e.g. ``eta``).
    * ``decode``: for a latent model, the decoder from its latents to pixels.
    * ``init`` and ``strength``: img2img (see the module's docstring): ``init`` the starting pictures
      x₀ in the model's own space (a latent model's scaled latents), one per picture or one for all,
      of which a share ``strength`` of the steps is redrawn.

    The starting noise of picture i depends only on (seed, i), so a deterministic sampler gives the
    same pictures whatever the batch size (a stochastic one draws its later noise per batch: same
    seed and batch size, same pictures). All noise is drawn on the CPU and moved, so a seed gives the
    same pictures on every device (up to the device's arithmetic). ``callback`` gets the sampler's dict at every step.
    """
    info = sampler_info(sampler)
    _check_options(sampler, sampler_options)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of pictures must be a whole number ≥ 1, got {n!r}")
    model.eval()
    device = next(model.parameters()).device
    steps = model.config.num_train_steps if num_inference_steps is None else num_inference_steps
    if spacing is None:
        spacing = "karras" if moves_karras_range(sigma_min, sigma_max, rho) else default_spacing(sampler, steps)
    sigmas = schedule_sigmas(model.noise_schedule.sigmas, steps, spacing, sigma_min, sigma_max, rho)
    if init is not None:
        sigmas = img2img_sigmas(sigmas, strength)
        if strength == 1:  # every step from pure noise: nothing of the picture is kept
            init = None
        else:
            init = torch.as_tensor(init).cpu()
            if init.ndim != 4 or init.shape[0] not in (1, n) or tuple(init.shape[1:]) != tuple(model.sample_shape):
                raise ValueError(f"the starting pictures are {tuple(init.shape)}; this model needs (1 or {n}, "
                                 f"{', '.join(map(str, model.sample_shape))})")
            init = init.expand(n, *init.shape[1:])
    elif strength != 1:
        raise ValueError("strength < 1 redraws part of a picture: give the picture (init)")
    noise = starting_noise(n, model.sample_shape, seed)
    out = []
    for start in tqdm(range(0, n, batch_size), desc=f"{sampler} × {len(sigmas) - 1}", disable=not progress):
        stop = min(start + batch_size, n)
        denoiser = model_denoiser(model, _rows(cond, start, stop, n, device), _rows(uncond, start, stop, n, device),
                                  guidance_scale)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start + 1)  # on the CPU, for every device
        x = noise[start:stop].to(device) * sigmas[0].item()
        if init is not None:
            x = x + init[start:stop].to(device)
        x = info.fn(denoiser, x, sigmas, generator=generator, callback=callback, **sampler_options)
        out.append((x if decode is None else decode(x)).cpu())
    return torch.cat(out).clamp(-1, 1)
