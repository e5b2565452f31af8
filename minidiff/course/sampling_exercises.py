"""Chapter 05's exercises: the training loss, x̂_0 from a noise prediction, DDPM's reverse step (the
posterior's mean and variance) and the whole sampling loop — the generation loop, written by the
student. Each ``check_<name>(fn)`` prints one verdict (``checks.verdict``) against minidiff's own
implementation: the DDPM step is checked against the library's sampler, which works in other
variables (σ-space, see ``ddpm_step_reference``), so the two formulas meet only if both are right.
"""
import torch

from minidiff.course.checks import Mistake, random_batch, verdict, x0_estimate
from minidiff.diffusion.loss import at_step, convert_prediction, diffusion_loss, q_sample
from minidiff.diffusion.samplers import ancestral_step, to_d
from minidiff.diffusion.schedules import cosine_schedule


def _check(name: str, fn, cases, shape_hint: str = None) -> bool:
    return verdict(name, fn, cases, shape_hint, MISTAKES[name])


def check_epsilon_loss(fn) -> bool:
    """``fn(model, x0, t, noise, alphas_cumprod)``: DDPM's training loss for one batch (chapter 05) with
    the step t and the noise ε already drawn: x_t = q_sample(x0, t, noise, …), then the mean of
    (model(x_t, t) − ε)², a scalar tensor."""
    x0, noise = random_batch(5, 4)
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
             ((toy, x0, t, noise, schedule),
              diffusion_loss(toy, x0, schedule, "epsilon", weighting="none", t=t, noise=noise)["loss"],
              "give the model the noisy x_t (q_sample of x0 at t) and t, not x_0")]
    return _check("epsilon_loss", fn, cases, "the loss is one number: the .mean() of (model(x_t, t) − ε)² "
                                              "over every pixel of every image")


def check_x0_from_epsilon(fn) -> bool:
    """``fn(x_t, t, epsilon, alphas_cumprod)``: the clean image a noise prediction implies (chapter 05),
    x_0 = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t, one t per image."""
    x0, noise = random_batch(6)
    schedule = cosine_schedule()
    cases = []
    for t, hint in [(torch.tensor([0, 0, 0]), "at t = 0, x_t is almost x_0 already"),
                    (torch.tensor([100, 500, 900]), "q_sample backwards: subtract √(1−ᾱ)·ε, then divide by √ᾱ; "
                                                    "each image has its own t")]:
        cases.append(((q_sample(x0, t, noise, schedule), t, noise, schedule), x0, hint))
    return _check("x0_from_epsilon", fn, cases)


def ddpm_step_reference(x_t, t: int, epsilon, alphas_cumprod, z):
    """The library's DDPM step, in its own variables: minidiff's samplers work on x/√ᾱ at noise level
    σ = √((1 − ᾱ)/ᾱ), where the DDPM posterior is an Euler step down to σ_down plus fresh noise σ_up·z
    (``ancestral_step`` with η = 1). Scaled back by √ᾱ_{t−1} it must equal the textbook formula."""
    a_t = alphas_cumprod[t].double()
    a_prev = alphas_cumprod[t - 1].double() if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    sigma, sigma_prev = ((1 - a_t) / a_t).sqrt().item(), ((1 - a_prev) / a_prev).sqrt().item()
    x = x_t.double() / a_t.sqrt()
    denoised = convert_prediction(epsilon.double(), x_t.double(), a_t, "epsilon", "sample")
    sigma_down, sigma_up = ancestral_step(sigma, sigma_prev, 1.0)
    x = x + to_d(x, sigma, denoised) * (sigma_down - sigma) + sigma_up * z.double()
    return (x * a_prev.sqrt()).to(x_t.dtype)


def check_ddpm_step(fn) -> bool:
    """``fn(x_t, t, epsilon, alphas_cumprod, z)``: one step of DDPM's sampler (chapter 05) from step t
    (a whole number) to t − 1: x̂_0 from ε, then x_{t−1} = μ̃ + √β̃ · z, a draw from the posterior
    q(x_{t−1} | x_t, x̂_0) with mean μ̃ = √ᾱ_{t−1}·β_t/(1 − ᾱ_t) · x̂_0 + √α_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t) · x_t
    and variance β̃ = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t, where α_t = 1 − β_t = ᾱ_t/ᾱ_{t−1} (ᾱ_{−1} = 1)."""
    x0, noise = random_batch(9)
    z = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(10))
    schedule = cosine_schedule()
    cases = []
    for t, hint in [(0, "at t = 0 the step returns x̂_0 itself: ᾱ_{−1} = 1, so β̃ = 0 and μ̃ = x̂_0"),
                    (500, "μ̃ mixes x̂_0 and x_t with the two coefficients above; add √β̃ · z"),
                    (999, "at t = T−1, x_t is almost pure noise: still the same two formulas")]:
        x_t = q_sample(x0, torch.full((3,), t), noise, schedule)
        cases.append(((x_t, t, noise, schedule, z), ddpm_step_reference(x_t, t, noise, schedule, z), hint))
    return _check("ddpm_step", fn, cases)


def _known_x0_model(x0, alphas_cumprod):
    """A "network" that knows the answer: the ε that x_t hides if its clean image is x0."""
    def eps_model(x_t, t):
        return convert_prediction(x0, x_t, at_step(alphas_cumprod, t, x_t), "sample", "epsilon")
    return eps_model


def check_sample_loop(fn) -> bool:
    """``fn(eps_model, x_T, alphas_cumprod, noises)``: DDPM's whole sampler (chapter 05): from x_T, for
    t = T−1, T−2, …, 0 ask ``eps_model(x, t)`` (t a (B,) tensor) for ε and take one ``ddpm_step`` with
    fresh noise ``noises[t]``; return x_{−1}… that is, the picture after the step at t = 0."""
    schedule = cosine_schedule(10)  # a 10-step schedule keeps the check instant
    x0, x_T = random_batch(11)
    noises = torch.randn(10, 3, 1, 4, 4, generator=torch.Generator().manual_seed(12))

    def toy(x_t, t):  # any network: the loop must give what the library's steps give
        return 0.3 * x_t + t.float().reshape(-1, 1, 1, 1) / 10

    def reference(eps_model):
        x = x_T
        for t in reversed(range(10)):
            x = ddpm_step_reference(x, t, eps_model(x, torch.full((3,), t)), schedule, noises[t])
        return x

    cases = [((_known_x0_model(x0, schedule), x_T, schedule, noises), x0,
              "a network that knows the answer must end exactly on x_0: the last step (t = 0) returns x̂_0"),
             ((toy, x_T, schedule, noises), reference(toy),
              "walk t from T−1 down to 0, feed each step's output to the next, and use noises[t] at step t")]
    return _check("sample_loop", fn, cases)



# ----------------------------------------------------------------------------- the mistakes students make

def _ddpm(x_t, t, eps, ac, z, variance="posterior", x_scale="one step"):
    """The textbook DDPM step, with a mistake switched on (``variance="beta"``, ``x_scale="all steps"``)."""
    a_t, a_prev = ac[t], (ac[t - 1] if t > 0 else torch.tensor(1.0))
    beta = 1 - a_t / a_prev
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    scale = (1 - beta).sqrt() if x_scale == "one step" else a_t.sqrt()
    mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + scale * (1 - a_prev) / (1 - a_t) * x_t
    return mean + ((1 - a_prev) / (1 - a_t) * beta if variance == "posterior" else beta).sqrt() * z


def _loop(step_at):
    def loop(eps_model, x_T, ac, noises, stop=0):
        x = x_T
        for t in range(len(ac) - 1, stop - 1, -1):
            x = step_at(x, t, eps_model(x, torch.full((len(x),), t)), ac, noises)
        return x
    return loop


MISTAKES = {  # what students get wrong in each exercise, and the hint for it
    "epsilon_loss": [
        Mistake("the target is x_0", lambda m, x0, t, e, ac: (m(q_sample(x0, t, e, ac), t) - x0).square().mean(),
                "this model predicts the noise: compare its output with `noise`, not with x_0"),
        Mistake("the target is −ε", lambda m, x0, t, e, ac: (m(q_sample(x0, t, e, ac), t) + e).square().mean(),
                "compare the prediction with `noise` itself: (prediction − noise)²"),
        Mistake("the model sees x_0", lambda m, x0, t, e, ac: (m(x0, t) - e).square().mean(),
                "the network's input is the noisy x_t = q_sample(x0, t, noise, …), and t")],
    "x0_from_epsilon": [
        Mistake("the division by √ᾱ_t is missing",
                lambda x_t, t, e, ac: x_t - (1 - at_step(ac, t, x_t)).sqrt() * e,
                "x_t = √ᾱ·x_0 + √(1 − ᾱ)·ε, so after subtracting the noise, divide by √ᾱ_t"),
        Mistake("every image got the first image's t",
                lambda x_t, t, e, ac: x0_estimate(x_t, t[:1].expand_as(t), e, ac),
                "index alphas_cumprod[t] with the whole t, one step per image")],
    "ddpm_step": [
        Mistake("you used β_t as the variance", lambda *args: _ddpm(*args, variance="beta"),
                "the posterior's variance is β̃ = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t, smaller than β_t, and 0 at t = 0"),
        Mistake("you took DDIM's step (no fresh noise)", lambda x_t, t, e, ac, z: _ddpm(x_t, t, e, ac, 0 * z)
                if t == 0 else q_sample(x0_estimate(x_t, torch.full((len(x_t),), t), e, ac),
                                        torch.full((len(x_t),), t - 1), e, ac),
                "DDIM re-noises x̂_0 with the same ε; DDPM draws x_{t−1} from the posterior: μ̃ + √β̃ · z"),
        Mistake("you scaled x_t by √ᾱ_t instead of √α_t", lambda *args: _ddpm(*args, x_scale="all steps"),
                "x_t's coefficient holds one step's signal, √α_t = √(1 − β_t) = √(ᾱ_t/ᾱ_{t−1}), not √ᾱ_t")],
    "sample_loop": [
        Mistake("the loop stops before t = 0", lambda m, x_T, ac, noises: _loop(
                lambda x, t, e, ac, n: ddpm_step_reference(x, t, e, ac, n[t]))(m, x_T, ac, noises, stop=1),
                "range(T − 1, -1, -1) walks T−1, …, 1, 0: the step at t = 0 is the one that lands on x̂_0"),
        Mistake("every step used the same noise", lambda m, x_T, ac, noises: _loop(
                lambda x, t, e, ac, n: ddpm_step_reference(x, t, e, ac, n[0]))(m, x_T, ac, noises),
                "each step draws fresh noise: use noises[t] at step t"),
        Mistake("the model was asked at the wrong step", lambda m, x_T, ac, noises: _loop(
                lambda x, t, e, ac, n: ddpm_step_reference(x, t, e, ac, n[t]))(
                lambda x, t: m(x, (t - 1).clamp(min=0)), x_T, ac, noises),
                "at step t the network sees x_t and t itself (not t − 1)")],
}
