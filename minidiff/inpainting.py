"""Inpainting: redraw only the part of a picture under a mask, keep the rest exactly.

A mask (1 = redraw, white; 0 = keep, black — diffusers' convention) splits the picture in two. The
known part must come back unchanged and the new part must fit it: same light, no seam.

**RePaint** (Lugmayr et al., 2022) needs no new training: any denoiser will do. At every step of the
walk down from noise, the part of x under the mask is the sampler's step, and the rest is the *known
picture noised to the same level* — the only thing the network ever sees of the input:

    x_{σ'} = m ⊙ step(x_σ → σ')  +  (1 − m) ⊙ (x₀ + σ'·ε),     ε fresh N(0, I)

On its own this "replacement" harmonises badly: the known part is re-noised with fresh noise at every
step, independent of what the sampler drew, so the two halves only meet through one step of the
network. RePaint's fix is **resampling**: after walking down ``jump_length`` steps, walk back *up*
the same number by adding noise (x_{σ_hi} = x_{σ_lo} + √(σ_hi² − σ_lo²)·ε, the forward process, no
network call) and down again, ``resamplings`` times in all; each pass lets the drawn part adapt to the
known part a little more. The cost is network calls: about ``resamplings`` × the steps.

For a latent model the mask is taken to the latent's grid (a latent cell is redrawn if any of its
pixels is), and after decoding the known *pixels* are pasted back exactly: the decoder's reconstruction
of the kept part is never shown.
"""
import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minidiff.diffusion.pipeline import generate, starting_noise
from minidiff.diffusion.samplers import default_spacing, fresh_noise, model_denoiser, sampler_info, schedule_sigmas
from minidiff.latents import to_model_space
from minidiff.text2image import prompt_list


def repaint_walk(steps: int, jump_length: int = 10, resamplings: int = 1) -> list[int]:
    """The levels RePaint visits, as the number of steps still to go (``steps`` = pure noise, 0 = done).

    Walking down one level costs one step of the sampler; walking up is only noise. At the levels
    1, 1 + j, 1 + 2j, … (j = ``jump_length``, counted from the clean end, while a jump stays below the
    start), the walk goes back up j levels, ``resamplings`` − 1 times, before going on down — so every
    stretch of j steps is walked ``resamplings`` times (RePaint's ``get_schedule_jump``)."""
    if not (isinstance(jump_length, int) and jump_length >= 1 and isinstance(resamplings, int) and resamplings >= 1):
        raise ValueError(f"jump_length and resamplings must be whole numbers ≥ 1, got {jump_length!r} and "
                         f"{resamplings!r}")
    jumps = {level: resamplings - 1 for level in range(1, steps - jump_length + 1, jump_length)}
    level, walk = steps, [steps]
    while level > 0:
        level -= 1
        walk.append(level)
        if jumps.get(level, 0) > 0:
            jumps[level] -= 1
            for _ in range(jump_length):
                level += 1
                walk.append(level)
    return walk


def repaint_calls(steps: int, jump_length: int = 5, resamplings: int = 5) -> int:
    """Network calls of one RePaint run: its walk's downward moves (a guided call counts once)."""
    walk = repaint_walk(steps, jump_length, resamplings)
    return sum(b < a for a, b in zip(walk, walk[1:]))


def mask_to_grid(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A (B, 1, H, W) mask on a coarser (size × size) grid: a cell is 1 if any pixel in it is."""
    return mask if mask.shape[-1] == size else F.adaptive_max_pool2d(mask.float(), size)


def picture_and_mask(image: torch.Tensor, mask: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n pictures and n masks from one or n of each; a mask that is not 0 or 1 everywhere is refused."""
    if not torch.isin(mask, torch.tensor([0.0, 1.0])).all():
        raise ValueError("the mask must be 0 (keep) or 1 (redraw) everywhere")
    return image.expand(n, *image.shape[1:]), mask.to(image.dtype).expand(n, 1, *image.shape[2:])


def paste_kept(pictures: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The drawn pictures in the hole, the input's own pixels everywhere else — exactly."""
    return mask * pictures + (1 - mask) * image


def fill_hole(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The picture with the hole painted in the mean colour of its kept pixels. A latent cell describes
    more than its own 8 × 8 pixels (the encoder sees around it), so the kept cells next to the hole of the
    *original* picture still carry a little of the object there — and the decoder would draw its ghost
    into the new one. Encoding the filled picture leaves nothing of it outside the hole."""
    kept = (1 - mask).sum((2, 3), keepdim=True).clamp(min=1)
    mean = (image * (1 - mask)).sum((2, 3), keepdim=True) / kept
    return image * (1 - mask) + mean * mask


@torch.no_grad()
def repaint(model, image: torch.Tensor, mask: torch.Tensor, n: int | None = None, *, cond: dict | None = None,
            uncond: dict | None = None, guidance_scale: float = 1.0, sampler: str = "ddpm",
            num_inference_steps: int = 20, jump_length: int = 5, resamplings: int = 5, seed: int = 0,
            decode=None, progress: bool = True, callback=None) -> torch.Tensor:
    """Inpaint ``image`` (pictures in [-1, 1], one for all or one per picture) where ``mask`` is 1, with
    RePaint's walk (``repaint_walk``) on any sampler, one step at a time (a multistep sampler therefore
    runs as its one-step form: DPM-Solver++(2M) as DPM-Solver++(1), i.e. DDIM). Conditions and guidance
    as in ``generate``. Returns n pictures in [-1, 1] whose kept pixels equal the input's exactly.

    ``callback`` gets ``{"level", "x", "sigma"}`` after every move (down or up) of the walk."""
    info = sampler_info(sampler)
    n = n or image.shape[0]
    model.eval()
    device = next(model.parameters()).device
    image, mask = picture_and_mask(image, mask, n)
    known = to_model_space(decode, fill_hole(image, mask)).to(device)
    grid_mask = mask_to_grid(mask, known.shape[-1]).to(device)
    spacing = default_spacing(sampler, num_inference_steps)
    sigmas = schedule_sigmas(model.noise_schedule.sigmas, num_inference_steps, spacing).tolist()
    walk = repaint_walk(num_inference_steps, jump_length, resamplings)
    denoiser = model_denoiser(model, cond and {k: v.to(device) for k, v in cond.items()},
                              uncond and {k: v.to(device) for k, v in uncond.items()}, guidance_scale)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 1)

    def merge(x, sigma):  # the kept part: the known picture noised to this level
        return grid_mask * x + (1 - grid_mask) * (known + sigma * fresh_noise(known, generator))

    x = merge(starting_noise(n, known.shape[1:], seed).to(device, known.dtype) * sigmas[0], sigmas[0])
    moves = tqdm(walk[:-1], desc=f"RePaint: {len(walk) - 1} moves", disable=not progress)
    for here, there in zip(moves, walk[1:]):
        sigma_here, sigma_there = sigmas[len(sigmas) - 1 - here], sigmas[len(sigmas) - 1 - there]
        if there < here:  # down: one step of the sampler, then the kept part replaced
            x = merge(info.fn(denoiser, x, torch.tensor([sigma_here, sigma_there], dtype=x.dtype), generator=generator),
                      sigma_there)
        else:             # up: the forward process adds the noise between the two levels
            x = x + math.sqrt(sigma_there ** 2 - sigma_here ** 2) * fresh_noise(x, generator)
        if callback is not None:
            callback({"level": there, "x": x, "sigma": sigma_there})
    return paste_kept((x if decode is None else decode(x)).cpu().clamp(-1, 1), image, mask)



def inpainting_condition(image: torch.Tensor, mask: torch.Tensor, decode=None) -> torch.Tensor:
    """What a mask-conditioned inpainting model reads beside x_t (``cond["concat"]``): the picture with
    its hole filled (``fill_hole``) in the model's space, and the mask on the same grid — C + 1 channels
    (Stable Diffusion's inpainting U-Net reads the same two things, 4 + 1 channels)."""
    known = to_model_space(decode, fill_hole(image, mask))
    return torch.cat([known, mask_to_grid(mask, known.shape[-1]).to(known)], dim=1)


def inpaint(model, encoder, image: torch.Tensor, mask: torch.Tensor, prompt, *, n: int | None = None,
            negative_prompt: str = "", guidance_scale: float = 3.0, decode=None, jump_length: int | None = None,
            resamplings: int | None = None, **options) -> torch.Tensor:
    """Text-guided inpainting: the hole of ``image`` under ``mask`` is drawn to fit ``prompt`` (one for
    all ``n`` pictures, or one per picture), and the kept pixels come back exactly. Two ways:

    * a text-to-image model: ``repaint`` (``jump_length`` and ``resamplings``: see there);
    * a mask-conditioned model (one built with ``concat_channels``, e.g. ``inpaint_shapes``): it reads
      the known picture and the mask (``inpainting_condition``) at every step, so it is sampled as
      usual, from noise, with any sampler and no resampling.

    ``options`` go to ``repaint`` or ``generate`` (``num_inference_steps``, ``sampler``, ``seed``, …)."""
    cond, uncond = encoder.pair(prompt_list(prompt, n), negative_prompt)
    n = len(cond["context"])
    if not model.config.concat_channels:
        walk = {k: v for k, v in (("jump_length", jump_length), ("resamplings", resamplings)) if v is not None}
        return repaint(model, image, mask, n, cond=cond, uncond=uncond, guidance_scale=guidance_scale, decode=decode,
                       **walk, **options)
    if jump_length is not None or resamplings is not None:
        raise ValueError("a mask-conditioned model sees the known picture at every step: it needs no RePaint "
                         "resampling (leave out jump_length and resamplings)")
    image, mask = picture_and_mask(image, mask, n)
    concat = inpainting_condition(image, mask, decode)
    pictures = generate(model, n, cond={**cond, "concat": concat}, uncond={**uncond, "concat": concat},
                        guidance_scale=guidance_scale, decode=decode, **options)
    return paste_kept(pictures, image, mask)
