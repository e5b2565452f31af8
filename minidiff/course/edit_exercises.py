"""Chapter 10's exercises: where img2img starts, and the one line that makes any denoiser an inpainter.
Each ``check_<name>(fn)`` prints one verdict (``checks.verdict``): the img2img start is checked against
the pipeline's own ``img2img_sigmas``, the RePaint merge against ``torch.where`` — implementations that
share no code with the answers.
"""
import torch

from minidiff.course.checks import Mistake, verdict
from minidiff.diffusion.pipeline import img2img_sigmas


def _check(name: str, fn, cases, shape_hint: str = None) -> bool:
    return verdict(name, fn, cases, shape_hint, MISTAKES[name])


def _randn(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _sigmas(steps: int) -> torch.Tensor:
    """N + 1 noise levels from 80 down to 0, as a sampler plans them (Karras's spacing, ρ = 7)."""
    ramp = torch.linspace(0, 1, steps)
    return torch.cat([(80 ** (1 / 7) + ramp * (0.02 ** (1 / 7) - 80 ** (1 / 7))) ** 7, torch.zeros(1)])


def check_img2img_start(fn) -> bool:
    """``fn(latent, noise, sigmas, strength)``: where img2img (SDEdit) starts. ``sigmas`` holds the
    N + 1 levels the sampler would walk from pure noise (``sigmas[0]``) to the clean picture
    (``sigmas[N]`` = 0); strength s re-runs the last k = ⌊s · N⌋ steps, so the walk starts at
    σ = sigmas[N − k], and the start is the picture's latent with that much noise:

        x_start = latent + σ · noise         (the sampler's state: the latent plus noise of size σ)"""
    cases = []
    for seed, steps, strength, hint in [
            (70, 20, 0.3, "s = 0.3 of 20 steps re-runs the last 6: start at sigmas[20 − 6] = sigmas[14], and add "
                          "that σ times the noise to the latent"),
            (72, 20, 1.0, "s = 1 re-runs every step: the start is the first level, sigmas[0], as in text to image"),
            (74, 20, 0.0, "s = 0 re-runs nothing: sigmas[N] = 0, so the start is the latent itself"),
            (76, 10, 0.29, "k = ⌊s · N⌋ rounds down: 0.29 · 10 = 2.9 re-runs 2 steps, from sigmas[8]")]:
        latent, noise = _randn(seed, 2, 4, 8, 8), _randn(seed + 1, 2, 4, 8, 8)
        sigmas = _sigmas(steps)
        cases.append(((latent, noise, sigmas, strength), latent + img2img_sigmas(sigmas, strength)[0] * noise, hint))
    return _check("img2img_start", fn, cases, "the start has the latent's shape: one noisy latent per picture")


def check_repaint_merge(fn) -> bool:
    """``fn(x, known, mask, sigma, noise)``: RePaint's merge after each step down to level σ. ``x`` is
    the sampler's state there, ``known`` the input picture's latent, ``mask`` (B, 1, H, W) 1 where the
    picture is redrawn and 0 where it is kept, ``noise`` fresh N(0, I). Inside the hole keep what the
    sampler drew; outside it, put the known latent noised to the same level:

        x ← mask · x + (1 − mask) · (known + σ · noise)"""
    cases = []
    for seed, sigma, hint in [(80, 3.0, "where the mask is 1 keep x; where it is 0 put known + σ · noise"),
                              (82, 0.4, "outside the hole the state must have the noise of level σ, like x has"),
                              (84, 0.0, "at σ = 0 (the last step) the kept part is the known latent itself")]:
        x, known, noise = _randn(seed, 2, 4, 8, 8), _randn(seed + 1, 2, 4, 8, 8), _randn(seed + 2, 2, 4, 8, 8)
        mask = (_randn(seed + 3, 2, 1, 8, 8) > 0).float()
        cases.append(((x, known, mask, sigma, noise), torch.where(mask.bool(), x, known + sigma * noise), hint))
    return _check("repaint_merge", fn, cases, "the merged state has x's shape: the (B, 1, H, W) mask broadcasts "
                                              "over the channels")


# ----------------------------------------------------------------------------- the mistakes students make

def _start_at(index, scaled=False):
    """A wrong start: the level sigmas[index(N, s)], and the latent scaled by √ᾱ = 1/√(1 + σ²) if ``scaled``."""
    def start(latent, noise, sigmas, s):
        sigma = sigmas[index(len(sigmas) - 1, s)]
        x = latent + sigma * noise
        return x / (1 + sigma ** 2) ** 0.5 if scaled else x
    return start


MISTAKES = {  # what students get wrong in each exercise, and the hint for it
    "img2img_start": [
        Mistake("you counted the steps from the noisy end", _start_at(lambda n, s: int(s * n)),
                "strength is the share of the steps *re-run*, the last ones: k = ⌊s · N⌋ steps remain, so the "
                "walk starts at sigmas[N − k] (s = 1 starts at sigmas[0], pure noise)"),
        Mistake("you rounded s · N instead of rounding down", _start_at(lambda n, s: n - round(s * n)),
                "diffusers runs int(s · N) steps, ⌊s · N⌋: 2.9 steps is 2, not 3"),
        Mistake("you used the strength itself as the noise level", lambda latent, noise, sigmas, s: latent + s * noise,
                "s is a share of the steps, not a σ: look up the level in sigmas (s = 1 is σ = sigmas[0], "
                "far more than 1)"),
        Mistake("you scaled the latent as in chapter 04's x_t = √ᾱ·x₀ + √(1 − ᾱ)·ε",
                _start_at(lambda n, s: n - int(s * n), scaled=True),
                "the samplers' state is x = x_t / √ᾱ — the latent plus noise of size σ, never scaled down: "
                "latent + σ · noise")],
    "repaint_merge": [
        Mistake("you swapped the hole and the kept part",
                lambda x, known, m, s, e: (1 - m) * x + m * (known + s * e),
                "mask = 1 marks the hole, where the sampler's x is kept; the known picture goes where mask = 0"),
        Mistake("you pasted the clean known latent", lambda x, known, m, s, e: m * x + (1 - m) * known,
                "at level σ the whole state must carry noise of size σ, or the network sees a clean half and a "
                "noisy half: put known + σ · noise, not known"),
        Mistake("you added the noise everywhere", lambda x, known, m, s, e: m * x + (1 - m) * known + s * e,
                "x already carries noise of level σ inside the hole: the fresh noise goes only on the kept part"),
        Mistake("you averaged the two", lambda x, known, m, s, e: (x + known + s * e) / 2,
                "the mask chooses, it does not mix: m · x + (1 − m) · (known + σ · noise)")],
}
