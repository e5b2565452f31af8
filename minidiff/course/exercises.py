"""Self-checking exercises: ``check_<name>(fn)`` runs a student's function on test cases against
a reference answer and prints one clear verdict; it returns True only when every case passes.

The pattern every chapter uses: the student's cell defines a function whose body is
``raise NotImplementedError`` until they fill it in; the next cell calls ``check_<name>(fn)``,
which reports "not done yet" instead of crashing, so the notebook always runs top to bottom.
Reference solutions live in ``minidiff.course.solutions`` and CI runs them through the same checks.
"""
import math

import torch

from minidiff.course import solutions
from minidiff.diffusion.schedules import cosine_schedule, linear_schedule


def _shape_hint(got, expected: torch.Tensor, shape_hint) -> str:
    """What to look at when ``got`` is not a tensor of ``expected``'s shape."""
    if got is None:
        return "your function returned None: did you forget `return`?"
    if not isinstance(got, torch.Tensor):
        return "return a tensor: build the answer from torch operations, not math.* or .item()"
    if shape_hint:
        return shape_hint
    if expected.ndim == 0:
        return "the answer is a single number, a 0-dimensional tensor: finish with .mean() or .sum()"
    return "print the .shape of each intermediate tensor to find the line that changes it"


def _verdict(name: str, fn, cases, shape_hint: str = None) -> bool:
    """Run ``fn`` on each ``(args, expected, hint)`` case; print ✅, ❌ with the first failure and a hint,
    or ⏳. ``shape_hint`` is the hint for an answer of the wrong shape (a generic one by default)."""
    for args, expected, hint in cases:
        try:
            got = fn(*args)
        except NotImplementedError:
            print(f"⏳ {name}: not implemented yet — replace `raise NotImplementedError` with your code.")
            return False
        except Exception as err:  # a student's bug is reported, not raised, so the notebook goes on
            print(f"❌ {name}: your function raised {type(err).__name__}: {err}")
            return False
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            print(f"❌ {name}: expected a tensor of shape {tuple(expected.shape)}, got {shape}. "
                  f"Hint: {_shape_hint(got, expected, shape_hint)}")
            return False
        if not torch.allclose(got.float(), expected.float(), atol=1e-5, rtol=1e-4):
            error = (got.float() - expected.float()).abs().max().item()
            print(f"❌ {name}: wrong values (largest error {error:.3g}). Hint: {hint}")
            return False
    print(f"✅ {name}: all {len(cases)} checks pass.")
    return True


def check_mosaic(fn) -> bool:
    """``fn(images, block)``: the article's "mosaic" — average each block×block tile, then paint the
    tile with its average. Images (B, C, H, W) with H and W multiples of block; same shape out."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for shape, block, hint in [((1, 1, 4, 4), 2, "average each 2×2 tile"),
                               ((2, 3, 8, 8), 4, "channels and images are independent"),
                               ((1, 1, 6, 6), 1, "block 1 leaves the image unchanged")]:
        x = torch.rand(shape, generator=g) * 2 - 1
        cases.append(((x, block), solutions.mosaic(x, block), hint))
    return _verdict("mosaic", fn, cases, "paint each tile with its average: repeat every average block times "
                                        "along H and W (repeat_interleave), so the output has the input's shape")


def check_add_noise(fn) -> bool:
    """``fn(images, noise, amount)``: blend towards Gaussian noise, keeping the variance of unit data:
    √(1 − amount)·image + √amount·noise, the blend diffusion models use (chapter 04)."""
    g = torch.Generator().manual_seed(1)
    x, noise = torch.rand(2, 1, 5, 5, generator=g) * 2 - 1, torch.randn(2, 1, 5, 5, generator=g)
    cases = [((x, noise, a), solutions.add_noise(x, noise, a), hint) for a, hint in
             [(0.0, "amount 0 is the clean image"), (1.0, "amount 1 is pure noise"),
              (0.3, "use square roots: √(1−a)·image + √a·noise")]]
    return _verdict("add_noise", fn, cases)


def _logits(seed: int, n: int, scale: float) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * scale


def check_discriminator_loss(fn) -> bool:
    """``fn(real_logits, fake_logits)``: the GAN judge's non-saturating loss (chapter 03),
    mean −log σ(D(x)) + mean −log(1 − σ(D(G(z)))), a scalar tensor."""
    cases = [((torch.zeros(4), torch.zeros(4)), "with all logits 0, D says ½ everywhere: the loss is 2·log 2"),
             ((_logits(0, 6, 2), _logits(1, 9, 2)), "average each batch separately, then add"),
             ((torch.tensor([-30.0, 20.0]), torch.tensor([-20.0, 120.0])),
              "at logit 120, 1 − σ(l) rounds to 0 and log(0) = −∞: use softplus, "
              "−log(1 − σ(l)) = softplus(l)")]
    return _verdict("discriminator_loss", fn,
                    [(args, solutions.discriminator_loss(*args), hint) for args, hint in cases],
                    "the loss is one number: take the .mean() of each batch's terms, then add the two means")


def check_generator_loss(fn) -> bool:
    """``fn(fake_logits)``: the GAN forger's non-saturating loss (chapter 03), mean −log σ(D(G(z)))."""
    cases = [((torch.zeros(4),), "at logit 0 the loss is log 2"),
             ((_logits(2, 7, 2),), "minimise −log σ(D(G(z))), not log(1 − σ(D(G(z))))"),
             ((torch.tensor([-120.0, 30.0]),), "σ(−120) rounds to 0 and log(0) = −∞: use softplus, "
                                               "−log σ(l) = softplus(−l)")]
    return _verdict("generator_loss", fn, [(args, solutions.generator_loss(*args), hint) for args, hint in cases],
                    "the loss is one number: take the .mean() over the batch")


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
        cases.append(((x0, t, noise, schedule), solutions.q_sample(x0, t, noise, schedule), hint))
    return _verdict("q_sample", fn, cases, "x_t has x_0's shape: reshape alphas_cumprod[t] to (B, 1, 1, 1) "
                                          "so each image is scaled by its own ᾱ_t")


def check_epsilon_loss(fn) -> bool:
    """``fn(model, x0, t, noise, alphas_cumprod)``: DDPM's training loss for one batch (chapter 05) with
    the step t and the noise ε already drawn: x_t = q_sample(x0, t, noise, …), then the mean of
    (model(x_t, t) − ε)², a scalar tensor."""
    g = torch.Generator().manual_seed(5)
    x0, noise = torch.rand(4, 1, 3, 3, generator=g) * 2 - 1, torch.randn(4, 1, 3, 3, generator=g)
    t, schedule = torch.tensor([10, 200, 500, 950]), cosine_schedule()

    def oracle(x_t, t):
        return noise

    def blind(x_t, t):
        return torch.zeros_like(x_t)

    def toy(x_t, t):  # depends on both inputs, as a real denoiser does
        return 0.5 * x_t + t.float().reshape(-1, 1, 1, 1) / 1000

    cases = [((oracle, x0, t, noise, schedule), torch.tensor(0.0),
              "a model that returns exactly ε has loss 0: compare the prediction with `noise`"),
             ((blind, x0, t, noise, schedule), noise.square().mean(),
              "a model that always says 0 scores mean(ε²): the target is ε, not x_0"),
             ((toy, x0, t, noise, schedule), solutions.epsilon_loss(toy, x0, t, noise, schedule),
              "give the model the noisy x_t (q_sample of x0 at t) and t, not x_0")]
    return _verdict("epsilon_loss", fn, cases, "the loss is one number: the .mean() of (model(x_t, t) − ε)² "
                                              "over every pixel of every image")


def check_x0_from_epsilon(fn) -> bool:
    """``fn(x_t, t, epsilon, alphas_cumprod)``: the clean image a noise prediction implies (chapter 05),
    x_0 = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t, one t per image."""
    g = torch.Generator().manual_seed(6)
    x0, noise = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1, torch.randn(3, 1, 4, 4, generator=g)
    schedule = cosine_schedule()
    cases = []
    for t, hint in [(torch.tensor([0, 0, 0]), "at t = 0, x_t is almost x_0 already"),
                    (torch.tensor([100, 500, 900]), "q_sample backwards: subtract √(1−ᾱ)·ε, then divide by √ᾱ; "
                                                    "each image has its own t")]:
        x_t = solutions.q_sample(x0, t, noise, schedule)
        cases.append(((x_t, t, noise, schedule), x0, hint))
    return _verdict("x0_from_epsilon", fn, cases)


def check_ddim_step(fn) -> bool:
    """``fn(x_t, t, t_prev, epsilon, alphas_cumprod)``: one deterministic DDIM step (chapter 06) from step t
    to an earlier step t_prev: x̂_0 from ε, then x_{t_prev} = √ᾱ_{t_prev} · x̂_0 + √(1 − ᾱ_{t_prev}) · ε."""
    g = torch.Generator().manual_seed(7)
    x0, noise = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1, torch.randn(3, 1, 4, 4, generator=g)
    schedule = cosine_schedule()
    t, t_prev = torch.tensor([900, 500, 100]), torch.tensor([700, 250, 0])
    x_t = solutions.q_sample(x0, t, noise, schedule)
    cases = [((x_t, t, t, noise, schedule), x_t, "a step from t to t itself changes nothing"),
             ((x_t, t, t_prev, noise, schedule), solutions.q_sample(x0, t_prev, noise, schedule),
              "with the true ε the step lands exactly on q_sample(x_0, t_prev, ε): first recover x̂_0 "
              "(chapter 05), then re-noise it with the same ε")]
    return _verdict("ddim_step", fn, cases)


def check_euler_step(fn) -> bool:
    """``fn(x, sigma, sigma_next, denoised)``: one Euler step of dx/dσ = (x − D(x, σ)) / σ (chapter 06),
    from noise level σ to σ', given the denoiser's answer D = ``denoised``."""
    g = torch.Generator().manual_seed(8)
    x0, noise = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1, torch.randn(2, 1, 4, 4, generator=g)
    x = x0 + 5.0 * noise
    cases = [((x, 5.0, 0.0, x0), x0, "a single step all the way to σ' = 0 lands on the denoised image"),
             ((x, 5.0, 2.0, x0), x0 + 2.0 * noise, "the slope is (x − denoised)/σ; multiply by (σ' − σ), "
                                                    "which is negative"),
             ((x, 5.0, 4.0, x0 + 0.1), solutions.euler_step(x, 5.0, 4.0, x0 + 0.1),
              "use the denoised image you are given, not one you compute")]
    return _verdict("euler_step", fn, cases)


def check_psnr_per_image(fn) -> bool:
    """``fn(reconstructions, images)``: PSNR in dB of each image, a (B,) tensor, for images in [-1, 1]."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 6, 6, generator=g) * 2 - 1
    noisy = x + torch.rand(3, 1, 6, 6, generator=g) * 0.3
    cases = [((x + 0.1, x), torch.full((3,), 10 * math.log10(4 / 0.01)),
              "an error of 0.1 everywhere is MSE 0.01; peak² = 4 because [-1, 1] is 2 wide: 26.0 dB"),
             ((noisy, x), solutions.psnr_per_image(noisy, x),
              "average the squared error over each image's own pixels: .flatten(1).mean(1)")]
    return _verdict("psnr_per_image", fn, cases, "one PSNR per image: average the squared error with "
                                                ".flatten(1).mean(1), not .mean() over the whole batch")


def check_reparameterize(fn) -> bool:
    """``fn(mean, logvar, noise)``: the reparameterisation trick, z = μ + σ·ε with σ = exp(½ log σ²)."""
    g = torch.Generator().manual_seed(3)
    mean, logvar, noise = (torch.randn(4, 2, generator=g) for _ in range(3))
    zeros = torch.zeros(4, 2)
    cases = [((mean, zeros, zeros), mean, "with ε = 0 the sample is the mean"),
             ((zeros, zeros, noise), noise, "log σ² = 0 means σ = 1: the sample is ε itself"),
             ((mean, logvar, noise), solutions.reparameterize(mean, logvar, noise),
              "σ = exp(0.5 · logvar), not exp(logvar)")]
    return _verdict("reparameterize", fn, cases)


def check_kl_divergence(fn) -> bool:
    """``fn(mean, logvar)``: KL(N(μ, σ²) ‖ N(0, I)) per image, summed over every latent number."""
    g = torch.Generator().manual_seed(4)
    mean, logvar = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    zeros = torch.zeros(3, 5)
    cases = [((zeros, zeros), torch.zeros(3), "the prior itself is 0 nats away from the prior"),
             ((zeros + 1, zeros), torch.full((3,), 2.5), "μ = 1 costs ½ · μ² = 0.5 per number"),
             ((mean, logvar), solutions.kl_divergence(mean, logvar),
              "½ Σ (μ² + σ² − log σ² − 1), summed per image: flatten(1).sum(1)")]
    return _verdict("kl_divergence", fn, cases, "one KL per image: sum with .flatten(1).sum(1), not .sum() "
                                               "over the whole batch")
