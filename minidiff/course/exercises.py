"""Self-checking exercises of chapters 00–04, 06 and 07: ``check_<name>(fn)`` runs a student's function on
test cases against minidiff's own implementation and prints one clear verdict (``checks.verdict``); it
returns True only when every case passes.

The pattern every chapter uses: the student's cell defines a function whose body is
``raise NotImplementedError`` until they fill it in; the next cell calls ``check_<name>(fn)``,
which reports "not done yet" instead of crashing, so the notebook always runs top to bottom.
The expected values come from the library (the mosaic from ``minidiff.course.article``, q_sample from
``minidiff.diffusion``, …); the reference answers a teacher hands out are written out, independently,
in ``minidiff.course.solutions``, which no chapter imports, and the tests run them through these checks.
Chapter 05's exercises are in ``sampling_exercises``, chapter 08's in ``clip_exercises``.
"""
import math

import torch
import torch.nn.functional as F

from minidiff.course.article import add_noise, mosaic
from minidiff.course.checks import Mistake, random_batch, verdict, x0_estimate
from minidiff.diffusion.loss import at_step, q_sample
from minidiff.diffusion.samplers import to_d
from minidiff.diffusion.schedules import cosine_schedule, linear_schedule
from minidiff.latents import measure_scaling_factor
from minidiff.metrics import psnr_per_image
from minidiff.models.autoencoder import kl_divergence, reparameterize
from minidiff.models.gan import discriminator_loss, generator_loss


def _check(name: str, fn, cases, shape_hint: str = None) -> bool:
    return verdict(name, fn, cases, shape_hint, MISTAKES[name])


# ----------------------------------------------------------------------------- chapter 00

def check_mosaic(fn) -> bool:
    """``fn(images, block)``: the article's "mosaic" — average each block×block tile, then paint the
    tile with its average. Images (B, C, H, W) with H and W multiples of block; same shape out."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for shape, block, hint in [((1, 1, 4, 4), 2, "average each 2×2 tile"),
                               ((2, 3, 8, 8), 4, "channels and images are independent"),
                               ((1, 1, 6, 6), 1, "block 1 leaves the image unchanged")]:
        x = torch.rand(shape, generator=g) * 2 - 1
        cases.append(((x, block), mosaic(x, block), hint))
    return _check("mosaic", fn, cases, "paint each tile with its average: repeat every average block times "
                                        "along H and W (repeat_interleave), so the output has the input's shape")


def check_add_noise(fn) -> bool:
    """``fn(images, noise, amount)``: blend towards Gaussian noise, keeping the variance of unit data:
    √(1 − amount)·image + √amount·noise, the blend diffusion models use (chapter 04)."""
    g = torch.Generator().manual_seed(1)
    x, noise = torch.rand(2, 1, 5, 5, generator=g) * 2 - 1, torch.randn(2, 1, 5, 5, generator=g)
    cases = [((x, noise, a), add_noise(x, noise, a), hint) for a, hint in
             [(0.0, "amount 0 is the clean image"), (1.0, "amount 1 is pure noise"),
              (0.3, "use square roots: √(1−a)·image + √a·noise")]]
    return _check("add_noise", fn, cases)


# ----------------------------------------------------------------------------- chapter 01

def check_psnr_per_image(fn) -> bool:
    """``fn(reconstructions, images)``: PSNR in dB of each image, a (B,) tensor, for images in [-1, 1]."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 6, 6, generator=g) * 2 - 1
    noisy = x + torch.rand(3, 1, 6, 6, generator=g) * 0.3
    cases = [((x + 0.1, x), torch.full((3,), 10 * math.log10(4 / 0.01)),
              "an error of 0.1 everywhere is MSE 0.01; peak² = 4 because [-1, 1] is 2 wide: 26.0 dB"),
             ((noisy, x), psnr_per_image(noisy, x), "PSNR = 10·log10(peak² / MSE), each image's MSE its own")]
    return _check("psnr_per_image", fn, cases, "one PSNR per image: average the squared error with "
                                                ".flatten(1).mean(1), not .mean() over the whole batch")


# ----------------------------------------------------------------------------- chapter 02

def check_reparameterize(fn) -> bool:
    """``fn(mean, logvar, noise)``: the reparameterisation trick, z = μ + σ·ε with σ = exp(½ log σ²)."""
    g = torch.Generator().manual_seed(3)
    mean, logvar, noise = (torch.randn(4, 2, generator=g) for _ in range(3))
    zeros = torch.zeros(4, 2)
    cases = [((mean, zeros, zeros), mean, "with ε = 0 the sample is the mean"),
             ((zeros, zeros, noise), noise, "log σ² = 0 means σ = 1: the sample is ε itself"),
             ((mean, logvar, noise), reparameterize(mean, logvar, noise), "z = μ + σ·ε, with σ from log σ²")]
    return _check("reparameterize", fn, cases)


def check_kl_divergence(fn) -> bool:
    """``fn(mean, logvar)``: KL(N(μ, σ²) ‖ N(0, I)) per image, summed over every latent number."""
    g = torch.Generator().manual_seed(4)
    mean, logvar = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    zeros = torch.zeros(3, 5)
    cases = [((zeros, zeros), torch.zeros(3), "the prior itself is 0 nats away from the prior"),
             ((zeros + 1, zeros), torch.full((3,), 2.5), "μ = 1 costs ½ · μ² = 0.5 per number"),
             ((mean, logvar), kl_divergence(mean, logvar), "½ Σ (μ² + σ² − log σ² − 1), summed per image")]
    return _check("kl_divergence", fn, cases, "one KL per image: sum with .flatten(1).sum(1), not .sum() "
                                               "over the whole batch")


# ----------------------------------------------------------------------------- chapter 03

def _logits(seed: int, n: int, scale: float) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * scale


def check_discriminator_loss(fn) -> bool:
    """``fn(real_logits, fake_logits)``: the GAN judge's non-saturating loss (chapter 03),
    mean −log σ(D(x)) + mean −log(1 − σ(D(G(z)))), a scalar tensor."""
    cases = [((torch.zeros(4), torch.zeros(4)), "with all logits 0, D says ½ everywhere: the loss is 2·log 2"),
             ((_logits(0, 6, 2), _logits(1, 9, 2)), "average each batch separately, then add"),
             ((torch.tensor([-30.0, 20.0]), torch.tensor([-20.0, 120.0])),
              "at logit 120, 1 − σ(l) rounds to 0 and log(0) = −∞: use softplus, −log(1 − σ(l)) = softplus(l)")]
    return _check("discriminator_loss", fn, [(args, discriminator_loss(*args), hint) for args, hint in cases],
                    "the loss is one number: take the .mean() of each batch's terms, then add the two means")


def check_generator_loss(fn) -> bool:
    """``fn(fake_logits)``: the GAN forger's non-saturating loss (chapter 03), mean −log σ(D(G(z)))."""
    cases = [((torch.zeros(4),), "at logit 0 the loss is log 2"),
             ((_logits(2, 7, 2),), "minimise −log σ(D(G(z))), the forger's own term"),
             ((torch.tensor([-120.0, 30.0]),), "σ(−120) rounds to 0 and log(0) = −∞: use softplus, "
                                               "−log σ(l) = softplus(−l)")]
    return _check("generator_loss", fn, [(args, generator_loss(*args), hint) for args, hint in cases],
                    "the loss is one number: take the .mean() over the batch")


# ----------------------------------------------------------------------------- chapter 04

def check_q_sample(fn) -> bool:
    """``fn(x0, t, noise, alphas_cumprod)``: the closed-form jump to step t (chapter 04),
    x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, for a batch with one t per image."""
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.rand(4, 1, 3, 3, generator=g) * 2 - 1, torch.randn(4, 1, 3, 3, generator=g)
    cases = []
    for schedule, t, hint in [(linear_schedule(), torch.tensor([0, 0, 0, 0]), "at t = 0 almost all of x_0 is left"),
                              (linear_schedule(), torch.tensor([999, 999, 999, 999]), "at t = T−1 it is ~all noise"),
                              (cosine_schedule(), torch.tensor([3, 250, 500, 900]),
                               "each image has its own t: index alphas_cumprod[t] and reshape to (B, 1, 1, 1)")]:
        cases.append(((x0, t, noise, schedule), q_sample(x0, t, noise, schedule), hint))
    return _check("q_sample", fn, cases, "x_t has x_0's shape: reshape alphas_cumprod[t] to (B, 1, 1, 1) "
                                          "so each image is scaled by its own ᾱ_t")


# ----------------------------------------------------------------------------- chapter 06

def check_ddim_step(fn) -> bool:
    """``fn(x_t, t, t_prev, epsilon, alphas_cumprod)``: one deterministic DDIM step (chapter 06) from step t
    to an earlier step t_prev: x̂_0 from ε, then x_{t_prev} = √ᾱ_{t_prev} · x̂_0 + √(1 − ᾱ_{t_prev}) · ε."""
    x0, noise = random_batch(7)
    schedule = cosine_schedule()
    t, t_prev = torch.tensor([900, 500, 100]), torch.tensor([700, 250, 0])
    x_t = q_sample(x0, t, noise, schedule)
    cases = [((x_t, t, t, noise, schedule), x_t, "a step from t to t itself changes nothing"),
             ((x_t, t, t_prev, noise, schedule), q_sample(x0, t_prev, noise, schedule),
              "with the true ε the step lands exactly on q_sample(x_0, t_prev, ε): first recover x̂_0 "
              "(chapter 05), then re-noise it with the same ε")]
    return _check("ddim_step", fn, cases)


def check_euler_step(fn) -> bool:
    """``fn(x, sigma, sigma_next, denoised)``: one Euler step of dx/dσ = (x − D(x, σ)) / σ (chapter 06),
    from noise level σ to σ', given the denoiser's answer D = ``denoised``."""
    x0, noise = random_batch(8, 2)
    x = x0 + 5.0 * noise
    cases = [((x, 5.0, 0.0, x0), x0, "a single step all the way to σ' = 0 lands on the denoised image"),
             ((x, 5.0, 2.0, x0), x0 + 2.0 * noise, "the slope is (x − denoised)/σ; multiply by (σ' − σ), "
                                                    "which is negative"),
             ((x, 5.0, 4.0, x0 + 0.1), x + to_d(x, 5.0, x0 + 0.1) * (4.0 - 5.0),
              "use the denoised image you are given, not one you compute")]
    return _check("euler_step", fn, cases)


# ----------------------------------------------------------------------------- chapter 07

def check_scaling_factor(fn) -> bool:
    """``fn(latents)``: latent diffusion's scaling factor (chapter 07), s = 1 / std of the latents, one
    number over every number of every latent, so that s·z has unit spread (a 0-dimensional tensor)."""
    g = torch.Generator().manual_seed(9)
    wide = 2.0 * torch.randn(500, 4, 8, 8, generator=g)
    channels = (torch.randn(500, 4, 8, 8, generator=g) * torch.tensor([1.6, 1.7, 1.0, 1.3]).reshape(1, 4, 1, 1)
                + torch.tensor([0.5, 0.3, -0.2, 0.4]).reshape(1, 4, 1, 1))  # spread and means like real latents
    cases = [((wide,), torch.tensor(measure_scaling_factor(wide)),
              "latents twice as spread out as unit noise need s = 1 / std ≈ ½"),
             ((channels,), torch.tensor(measure_scaling_factor(channels)),
              "one standard deviation over every number of every latent, all channels together, around their mean")]
    return _check("scaling_factor", fn, cases, "the scaling factor is one number: take .std() of the whole tensor "
                                                "(no dim), then 1 / it")



# ----------------------------------------------------------------------------- the mistakes students make

MISTAKES = {  # what students get wrong in each exercise, and the hint for it
    "mosaic": [Mistake("you kept each tile's top-left pixel, not its average",
                       lambda x, b: x[..., ::b, ::b].repeat_interleave(b, 2).repeat_interleave(b, 3),
                       "average the block×block pixels of each tile (F.avg_pool2d), then repeat that average")],
    "add_noise": [Mistake("you blended without square roots", lambda x, noise, a: (1 - a) * x + a * noise,
                          "(1 − a)·x + a·ε shrinks the variance in between; use √(1 − a)·x + √a·ε")],
    "psnr_per_image": [
        Mistake("you used a peak of 1", lambda r, x: 10 * torch.log10(1 / (r - x).square().flatten(1).mean(1)),
                "pixels run from −1 to 1, a range of 2, so the peak² is 4"),
        Mistake("you averaged absolute errors",
                lambda r, x: 10 * torch.log10(4 / (r - x).abs().flatten(1).mean(1) ** 2),
                "PSNR uses the mean squared error, (r − x)², averaged over each image's own pixels")],
    "reparameterize": [
        Mistake("you took σ = exp(log σ²)", lambda m, lv, e: m + lv.exp() * e,
                "exp(logvar) is the variance σ²; the standard deviation is exp(0.5 · logvar)"),
        Mistake("you took σ = log σ²", lambda m, lv, e: m + lv * e, "undo the log: σ = exp(0.5 · logvar)")],
    "kl_divergence": [
        Mistake("the ½ is missing", lambda m, lv: (m ** 2 + lv.exp() - lv - 1).flatten(1).sum(1),
                "KL = ½ Σ (μ² + σ² − log σ² − 1): μ = 1 costs 0.5, not 1"),
        Mistake("you averaged instead of summing", lambda m, lv: 0.5 * (m ** 2 + lv.exp() - lv - 1).flatten(1).mean(1),
                "every latent number adds its own cost: sum over them (.sum(1)), do not average"),
        Mistake("the − 1 is missing", lambda m, lv: 0.5 * (m ** 2 + lv.exp() - lv).flatten(1).sum(1),
                "the prior itself must be 0 nats from the prior: at μ = 0, σ = 1 each term is 1 − 0 − 1 = 0")],
    "discriminator_loss": [
        Mistake("you took one mean over both batches", lambda r, f: 2 * F.softplus(torch.cat([-r, f])).mean(),
                "the two batches can differ in size: average each batch's terms separately, then add"),
        Mistake("you wrote log σ(·) directly", lambda r, f: -torch.log(torch.sigmoid(r)).mean()
                - torch.log(1 - torch.sigmoid(f)).mean(),
                "σ(l) rounds to 0 or 1 at large logits and the log becomes infinite: −log σ(l) = softplus(−l), "
                "−log(1 − σ(l)) = softplus(l)")],
    "generator_loss": [
        Mistake("you wrote the discriminator's fake term", lambda f: F.softplus(f).mean(),
                "the forger minimises −log σ(D(G(z))) = softplus(−l), not log(1 − σ(D(G(z)))): that one saturates"),
        Mistake("you wrote log σ(·) directly", lambda f: -torch.log(torch.sigmoid(f)).mean(),
                "σ(−120) rounds to 0 and log(0) = −∞: use −log σ(l) = softplus(−l)")],
    "q_sample": [
        Mistake("the square roots are missing",
                lambda x0, t, e, ac: at_step(ac, t, x0) * x0 + (1 - at_step(ac, t, x0)) * e,
                "ᾱ_t is the signal's share of the *variance*: scale by √ᾱ_t and √(1 − ᾱ_t)"),
        Mistake("every image got the first image's t",
                lambda x0, t, e, ac: q_sample(x0, t[:1].expand_as(t), e, ac),
                "index alphas_cumprod[t] with the whole t, one step per image")],
    "ddim_step": [
        Mistake("you returned the x̂_0 estimate", lambda x_t, t, tp, e, ac: x0_estimate(x_t, t, e, ac),
                "after recovering x̂_0, re-noise it to step t_prev with the same ε"),
        Mistake("you re-noised with ᾱ at t, not t_prev", lambda x_t, t, tp, e, ac:
                at_step(ac, tp, x_t).sqrt() * x0_estimate(x_t, t, e, ac) + (1 - at_step(ac, t, x_t)).sqrt() * e,
                "both coefficients belong to the step you land on: √ᾱ_{t_prev} and √(1 − ᾱ_{t_prev})")],
    "euler_step": [
        Mistake("the step's sign is flipped", lambda x, s, sn, d: x + (x - d) / s * (s - sn),
                "x_next = x + slope · (σ' − σ), and σ' − σ is negative: the step goes down in noise"),
        Mistake("you scaled by the variances", lambda x, s, sn, d: d + (x - d) * (sn / s) ** 2,
                "the slope is (x − denoised)/σ; one Euler step moves x by slope · (σ' − σ), linear in σ")],
    "scaling_factor": [
        Mistake("you returned the standard deviation itself", lambda z: z.std(),
                "s is what the latents are multiplied by to get unit spread: 1 / std, not std"),
        Mistake("you divided by the variance", lambda z: 1 / z.var(),
                "the variance is std²; with s = 1 / std, s·z has variance s²·std² = 1"),
        Mistake("you averaged the channels' own standard deviations", lambda z: 1 / z.std(dim=(0, 2, 3)).mean(),
                "take one std over every number together: the channels' different means are part of the spread"),
        Mistake("you measured the spread around 0, not around the mean", lambda z: 1 / z.square().mean().sqrt(),
                "the standard deviation is measured around the mean: √(mean of z²) counts the mean as spread")],
}
