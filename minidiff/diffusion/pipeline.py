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
"""
import inspect

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
             batch_size: int = 500, progress: bool = True, callback=None, decode=None,
             **sampler_options) -> torch.Tensor:
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
    noise = starting_noise(n, model.sample_shape, seed)
    out = []
    for start in tqdm(range(0, n, batch_size), desc=f"{sampler} × {len(sigmas) - 1}", disable=not progress):
        stop = min(start + batch_size, n)
        denoiser = model_denoiser(model, _rows(cond, start, stop, n, device), _rows(uncond, start, stop, n, device),
                                  guidance_scale)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start + 1)  # on the CPU, for every device
        x = noise[start:stop].to(device) * sigmas[0].item()
        x = info.fn(denoiser, x, sigmas, generator=generator, callback=callback, **sampler_options)
        out.append((x if decode is None else decode(x)).cpu())
    return torch.cat(out).clamp(-1, 1)
