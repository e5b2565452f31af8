"""Samplers against closed-form truth: with the exact denoiser of Gaussian (and mixture) data, every
sampler must reproduce the data distribution, and its error must shrink at its known order."""
import math

import numpy as np
import pytest
import torch

from minidiff.diffusion import samplers, schedules

MEAN = torch.tensor([0.5, -1.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)


def gaussian_denoiser(mean=MEAN, cov=COV):
    """E[x_0 | x] for x_0 ~ N(μ, Σ) and x = x_0 + σε:  μ + Σ (Σ + σ²I)⁻¹ (x − μ).  x: (N, D)."""
    def denoiser(x, sigma):
        gain = cov @ torch.linalg.inv(cov + sigma ** 2 * torch.eye(len(mean), dtype=cov.dtype))
        return mean + (x - mean) @ gain.T
    return denoiser


MIXTURE = dict(weights=[0.3, 0.7], means=[-1.0, 1.5], stds=[0.3, 0.5])


def mixture_denoiser(weights=MIXTURE["weights"], means=MIXTURE["means"], stds=MIXTURE["stds"]):
    """1-D mixture of Gaussians: D = Σ_k w_k(x) · (μ_k + s_k²/(s_k² + σ²)·(x − μ_k)), with posterior
    component weights w_k(x) ∝ π_k · N(x; μ_k, s_k² + σ²)."""
    def denoiser(x, sigma):
        var = torch.tensor(stds, dtype=x.dtype) ** 2 + sigma ** 2
        mu = torch.tensor(means, dtype=x.dtype)
        log_w = math.log(1) + torch.log(torch.tensor(weights, dtype=x.dtype)) - 0.5 * torch.log(var) \
            - (x - mu) ** 2 / (2 * var)
        posterior = log_w.softmax(dim=-1)
        return (posterior * (mu + torch.tensor(stds, dtype=x.dtype) ** 2 / var * (x - mu))).sum(-1, keepdim=True)
    return denoiser


def start(n, dim, sigma_max, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * sigma_max


def train_sigmas(schedule):
    return schedules.sigmas_from_alphas_cumprod(schedule(1000))


KARRAS = samplers.sigmas_karras(40, 0.002, 80.0)
SIGMAS = {  # name -> the σ's its closed-form tests run on (the noisier, lower-order samplers get more steps)
    "euler": samplers.sigmas_karras(200, 0.002, 80.0),
    "heun": KARRAS,
    "dpmpp_2m": KARRAS,
    "dpmpp_2m_sde": samplers.sigmas_karras(100, 0.002, 80.0),
    "ddim": samplers.sigmas_uniform_t(train_sigmas(schedules.cosine_schedule), 100),
    "euler_ancestral": samplers.sigmas_karras(800, 0.002, 80.0),
    "ddpm": samplers.sigmas_uniform_t(train_sigmas(schedules.linear_schedule), 1000),
}


def run(name, denoiser, x, sigmas, seed=0, **options):
    """Every sampler through the uniform signature of the ``SAMPLERS`` table."""
    return samplers.SAMPLERS[name].fn(denoiser, x, sigmas, generator=torch.Generator().manual_seed(seed), **options)


def test_every_registered_sampler_has_closed_form_tests():
    assert set(SIGMAS) == set(samplers.SAMPLERS)


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_every_sampler_takes_the_uniform_signature_and_reports_each_step(name):
    seen = []
    sigmas = samplers.sigmas_karras(4, 0.01, 80.0)
    x = run(name, gaussian_denoiser(), start(3, 2, 80.0), sigmas, callback=seen.append, progress=False)
    assert x.shape == (3, 2)
    assert [s["i"] for s in seen] == list(range(4)) and [s["sigma"] for s in seen] == sigmas[:-1].tolist()
    assert all(set(s) >= {"i", "x", "sigma", "denoised"} and s["denoised"].shape == (3, 2) for s in seen)


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_the_table_says_which_samplers_draw_fresh_noise(name):
    sigmas, x = samplers.sigmas_karras(6, 0.01, 80.0), start(50, 2, 80.0)
    same_seed = torch.equal(run(name, gaussian_denoiser(), x, sigmas, seed=1),
                            run(name, gaussian_denoiser(), x, sigmas, seed=1))
    other_seed = torch.equal(run(name, gaussian_denoiser(), x, sigmas, seed=1),
                             run(name, gaussian_denoiser(), x, sigmas, seed=2))
    assert same_seed and other_seed != samplers.SAMPLERS[name].stochastic


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_every_sampler_reproduces_a_gaussian(name):
    sigmas = SIGMAS[name]
    x = run(name, gaussian_denoiser(), start(20_000, 2, sigmas[0].item()), sigmas)
    assert torch.allclose(x.mean(0), MEAN, atol=0.04)
    assert torch.allclose(torch.cov(x.T), COV, atol=0.05)


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m", "dpmpp_2m_sde", "ddpm"])
def test_samplers_reproduce_a_mixture_of_gaussians(name):
    sigmas = SIGMAS[name]
    x = run(name, mixture_denoiser(), start(8_000, 1, sigmas[0].item(), seed=1), sigmas).flatten()
    assert (x < 0.25).double().mean().item() == pytest.approx(MIXTURE["weights"][0], abs=0.02)
    right = x[x > 0.25]
    assert right.mean().item() == pytest.approx(1.5, abs=0.05) and right.std().item() == pytest.approx(0.5, abs=0.05)


def endpoint_error(sampler, steps, s=0.7, mu=0.3, sigma_max=80.0):
    """The ODE of 1-D Gaussian data is solvable: x(σ) − μ = (x_T − μ)·√(s² + σ²)/√(s² + σ_max²)."""
    sigmas = samplers.sigmas_karras(steps, 0.01, sigma_max)
    x_T = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None] * sigma_max
    exact = mu + (x_T - mu) * s / math.sqrt(s ** 2 + sigma_max ** 2)
    denoiser = gaussian_denoiser(torch.tensor([mu], dtype=torch.float64), torch.tensor([[s ** 2]], dtype=torch.float64))
    return (sampler(denoiser, x_T, sigmas) - exact).abs().max().item()


@pytest.mark.parametrize("name,order", [("euler", 1), ("ddim", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_error_shrinks_at_the_known_order(name, order):
    sampler = getattr(samplers, f"sample_{name}")
    steps = [8, 16, 32, 64]
    errors = [endpoint_error(sampler, n) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope == pytest.approx(order, abs=0.35), f"errors {errors}"


def test_ddim_eta_zero_is_deterministic_and_ancestral_samplers_follow_the_seed():
    sigmas = samplers.sigmas_karras(20, 0.01, 80.0)
    x = start(100, 2, 80.0)
    d = gaussian_denoiser()
    assert torch.equal(samplers.sample_ddim(d, x, sigmas), samplers.sample_ddim(d, x, sigmas))
    for sampler in (samplers.sample_euler_ancestral, samplers.sample_dpmpp_2m_sde):
        runs = [sampler(d, x, sigmas, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
        assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


def test_dpmpp_2m_sde_keeps_x_at_the_scheduled_noise_level():
    """With a perfect denoiser of a point mass (D ≡ μ), x_i = μ + σ_i·ε must stay μ + σ_{i+1}·ε' after
    each SDE step: the carried noise (σ_{i+1} e^{−h}) and the fresh noise add up to σ_{i+1} exactly."""
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    sigmas = torch.tensor([80.0, 20.0, 3.0, 0.5, 0.05], dtype=torch.float64)
    x = samplers.sample_dpmpp_2m_sde(lambda x, sigma: mu.expand_as(x), mu + start(100_000, 2, 80.0), sigmas,
                                     generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x.mean(0), mu, atol=0.002)
    assert torch.allclose(x.std(0), torch.full((2,), 0.05, dtype=torch.float64), rtol=0.01)


def test_dpmpp_2m_with_eta_zero_is_the_ode_solver_and_with_eta_one_the_sde_solver():
    sigmas, d, x = KARRAS, gaussian_denoiser(), start(100, 2, 80.0)
    assert torch.equal(samplers.sample_dpmpp_2m(d, x, sigmas, eta=0.0, generator=torch.Generator().manual_seed(1)),
                       samplers.sample_dpmpp_2m(d, x, sigmas))
    assert torch.equal(samplers.sample_dpmpp_2m(d, x, sigmas, eta=1.0, generator=torch.Generator().manual_seed(1)),
                       samplers.sample_dpmpp_2m_sde(d, x, sigmas, generator=torch.Generator().manual_seed(1)))


def test_ddim_inversion_round_trips_an_image():
    sigmas = samplers.sigmas_uniform_t(train_sigmas(schedules.cosine_schedule), 200)
    d = gaussian_denoiser()
    x0 = MEAN + torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) @ \
        torch.linalg.cholesky(COV).T
    noise = samplers.invert_ddim(d, x0, sigmas)
    assert noise.std() > 100  # at σ_max the image is buried in noise …
    back = samplers.sample_ddim(d, noise, sigmas)
    assert (back - x0).abs().max() < 0.05  # … and comes back out of it (first order both ways)


def test_ddim_with_eta_one_is_ddpms_posterior():
    """For DDPM's σ's, the ancestral split reproduces the posterior variance β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t)·β_t."""
    alphas_cumprod = schedules.linear_schedule(1000)
    sigmas = schedules.sigmas_from_alphas_cumprod(alphas_cumprod)
    for t in (1, 10, 500, 999):
        a, a_prev = alphas_cumprod[t].item(), alphas_cumprod[t - 1].item()
        _, sigma_up = samplers.ancestral_step(sigmas[t].item(), sigmas[t - 1].item(), 1.0)
        posterior_var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        assert sigma_up ** 2 * a_prev == pytest.approx(posterior_var, rel=1e-9)  # σ-space → x_t-space


def test_karras_sigmas_end_points():
    sigmas = samplers.sigmas_karras(10, 0.002, 80.0)
    assert len(sigmas) == 11 and sigmas[0] == pytest.approx(80.0) and sigmas[-2] == pytest.approx(0.002)
    assert sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()


def test_uniform_t_sigmas_visit_trailing_steps():
    every = train_sigmas(schedules.cosine_schedule)
    assert torch.equal(samplers.sigmas_uniform_t(every, 5)[:-1], every[[999, 799, 599, 399, 199]])
    all_steps = samplers.sigmas_uniform_t(every, 1000)
    assert torch.equal(all_steps[:-1], every.flip(0)) and all_steps[-1] == 0


@pytest.mark.parametrize("multiple", [1, 2, 3])
def test_more_steps_than_training_steps_fall_between_them(multiple):
    """At T, 2T and 3T steps the σ's fall strictly from σ_{T−1} to 0 (no step visited twice, none wrapped
    round to pure noise), and every sampler still lands on the data."""
    every = train_sigmas(schedules.cosine_schedule)
    sigmas = samplers.sigmas_uniform_t(every, 1000 * multiple)
    assert len(sigmas) == 1000 * multiple + 1 and (sigmas[1:] < sigmas[:-1]).all() and sigmas[-1] == 0
    assert torch.isclose(sigmas[0], every[-1], rtol=1e-12) and every[0] <= sigmas[-2] < every[1]
    for name in samplers.SAMPLERS:
        x = run(name, gaussian_denoiser(), start(2_000, 2, sigmas[0].item()), sigmas)
        assert torch.isfinite(x).all() and torch.allclose(x.mean(0), MEAN, atol=0.1), name


def test_a_step_count_below_one_is_a_clear_error():
    for steps in (0, -3):
        with pytest.raises(ValueError, match="num_inference_steps must be a whole number ≥ 1"):
            samplers.schedule_sigmas(train_sigmas(schedules.cosine_schedule), steps)


def test_karras_range_defaults_to_the_schedule_capped_at_80_and_can_be_moved_in():
    every = train_sigmas(schedules.cosine_schedule)
    default = samplers.schedule_sigmas(every, 10, "karras")
    assert default[0].item() == pytest.approx(80.0) and default[-2].item() == pytest.approx(every[0].item())
    moved = samplers.schedule_sigmas(every, 10, "karras", sigma_min=0.03, sigma_max=20.0, rho=4.0)
    assert torch.equal(moved, samplers.sigmas_karras(10, 0.03, 20.0, 4.0))
    with pytest.raises(ValueError, match="uniform_t"):
        samplers.schedule_sigmas(every, 10, "uniform_t", sigma_max=20.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        samplers.schedule_sigmas(every, 10, "karras", sigma_min=30.0, sigma_max=20.0)


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_nfe_counts_the_network_calls(name):
    """``nfe_for_steps`` is what a sampler really costs, and ``steps_for_nfe`` inverts it."""
    calls = []
    exact = gaussian_denoiser()

    def counting(x, sigma):
        calls.append(sigma)
        return exact(x, sigma)
    for steps in (1, 4, 7):
        calls.clear()
        run(name, counting, start(4, 2, 80.0), samplers.sigmas_karras(steps, 0.002, 80.0))
        assert len(calls) == samplers.nfe_for_steps(name, steps)
        assert samplers.steps_for_nfe(name, samplers.nfe_for_steps(name, steps)) == steps


def test_default_spacing_and_unknown_samplers():
    assert samplers.default_spacing("ddim", 50) == "uniform_t" and samplers.default_spacing("dpmpp_2m", 10) == "karras"
    assert samplers.default_spacing("dpmpp_2m", 5) == "uniform_t" and samplers.default_spacing("heun", 5) == "karras"
    with pytest.raises(ValueError, match="unknown sampler 'plms'; choose one of ddpm, ddim"):
        samplers.default_spacing("plms", 10)


def test_the_exercises_ddim_step_in_t_space_is_the_samplers_step_in_sigma_space():
    """Chapter 06 writes DDIM in DDPM's variables (x_t, ε); the library works with x = x_t/√ᾱ_t and σ.
    One step of each, from t = 600 to 300 with the same ε̂, must land on the same image."""
    from minidiff.course import solutions
    alphas_cumprod = schedules.cosine_schedule(1000).double()
    g = torch.Generator().manual_seed(0)
    x_t, epsilon = (torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64) for _ in range(2))
    t, t_prev = torch.full((4,), 600), torch.full((4,), 300)
    expected = solutions.ddim_step(x_t, t, t_prev, epsilon, alphas_cumprod)
    x0_hat = solutions.x0_from_epsilon(x_t, t, epsilon, alphas_cumprod)
    sigmas = schedules.sigmas_from_alphas_cumprod(alphas_cumprod)[[600, 300]]
    x = samplers.sample_ddim(lambda x, sigma: x0_hat, x_t / alphas_cumprod[600].sqrt(), sigmas)
    torch.testing.assert_close(x * alphas_cumprod[300].sqrt(), expected)
