"""The diffusion core against closed-form truth: for Gaussian data everything is known exactly."""
import math

import pytest
import torch

from minidiff.diffusion import schedules
from minidiff.diffusion.loss import PREDICTION_TYPES, convert_prediction, diffusion_loss, loss_weight, q_sample, q_step

T = 1000


@pytest.mark.parametrize("name", list(schedules.SCHEDULES))
def test_schedules_run_from_image_to_pure_noise(name):
    alphas_cumprod = schedules.make_schedule(name, T)
    betas = schedules.betas_from_alphas_cumprod(alphas_cumprod)
    assert alphas_cumprod.shape == (T,) and alphas_cumprod.dtype == torch.float64
    assert alphas_cumprod[0] > 0.999 and alphas_cumprod[-1] < 1e-4
    assert (alphas_cumprod[1:] < alphas_cumprod[:-1]).all()
    assert (betas > 0).all() and (betas <= 0.999).all()


def test_linear_schedule_end_points():
    alphas_cumprod = schedules.linear_schedule(T)
    betas = schedules.betas_from_alphas_cumprod(alphas_cumprod)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=0.01)  # DDPM's ᾱ_T


def test_cosine_schedule_formula_and_offset():
    def f(t, s=0.008):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = schedules.cosine_schedule(T)
    for t in (0, 10, 500, 900):
        assert alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    # without the offset the first step would add almost no noise: β_1 ≈ (π/2T)²/… ≪ with s = 0.008
    assert 1 - schedules.cosine_schedule(T, offset=0.0)[0] < 0.1 * (1 - alphas_cumprod[0])


def test_sigma_snr_conversions_round_trip():
    alphas_cumprod = schedules.cosine_schedule(T)
    sigmas = schedules.sigmas_from_alphas_cumprod(alphas_cumprod)
    assert torch.allclose(schedules.alphas_cumprod_from_sigmas(sigmas), alphas_cumprod)
    assert torch.allclose(schedules.snr(alphas_cumprod), sigmas ** -2)
    assert torch.allclose(schedules.log_snr(alphas_cumprod), schedules.snr(alphas_cumprod).log())
    t = torch.tensor([0, 17, 500, 999])
    assert torch.allclose(schedules.timestep_from_sigma(sigmas[t], sigmas.log()), t.double())
    halfway = (sigmas[17].log() + sigmas[18].log()) / 2
    assert schedules.timestep_from_sigma(halfway.exp(), sigmas.log()).item() == pytest.approx(17.5)
    schedule = schedules.NoiseSchedule("cosine", T)  # the model's float32 copy finds the same steps
    assert torch.allclose(schedule.timestep(sigmas[t].float()), t.float(), atol=1e-3)
    assert torch.allclose(schedule.sigmas, sigmas, rtol=1e-6)


def mixture_data(n, generator):
    """1-D mixture of Gaussians: ½·N(−0.6, 0.1²) + ½·N(0.5, 0.2²), shaped (n, 1, 1, 1)."""
    pick = torch.rand(n, generator=generator) < 0.5
    x = torch.where(pick, -0.6 + 0.1 * torch.randn(n, generator=generator),
                    0.5 + 0.2 * torch.randn(n, generator=generator))
    return x.double().reshape(n, 1, 1, 1)


@pytest.mark.parametrize("t_end", [0, 9, 99, 499])
def test_markov_chain_and_closed_form_jump_agree(t_end):
    g = torch.Generator().manual_seed(t_end)
    n = 100_000
    alphas_cumprod = schedules.linear_schedule(T)
    x = mixture_data(n, g)
    jumped = q_sample(x, torch.full((n,), t_end), torch.randn(x.shape, generator=g, dtype=x.dtype), alphas_cumprod)
    chained = x
    for t in range(t_end + 1):
        chained = q_step(chained, torch.full((n,), t), torch.randn(x.shape, generator=g, dtype=x.dtype),
                         alphas_cumprod)
    quantiles = torch.linspace(0.01, 0.99, 25, dtype=x.dtype)
    assert torch.allclose(jumped.flatten().quantile(quantiles), chained.flatten().quantile(quantiles), atol=0.02)
    # and both match the closed-form mean √ᾱ·E[x0] and variance ᾱ·Var[x0] + 1 − ᾱ
    a = alphas_cumprod[t_end]
    assert chained.mean().item() == pytest.approx((a.sqrt() * x.mean()).item(), abs=0.01)
    assert chained.var().item() == pytest.approx((a * x.var() + 1 - a).item(), abs=0.01)


def test_the_end_of_the_chain_is_standard_gaussian_whatever_the_image():
    g = torch.Generator().manual_seed(0)
    x = mixture_data(50_000, g) + 3.0  # far from zero
    x_T = q_sample(x, torch.full((len(x),), T - 1), torch.randn(x.shape, generator=g, dtype=x.dtype),
                   schedules.linear_schedule(T))
    assert abs(x_T.mean().item()) < 0.03 and abs(x_T.std().item() - 1) < 0.02


@pytest.mark.parametrize("source", PREDICTION_TYPES)
@pytest.mark.parametrize("target", PREDICTION_TYPES)
def test_prediction_types_convert_exactly(source, target):
    g = torch.Generator().manual_seed(1)
    alphas_cumprod = schedules.cosine_schedule(T)
    x0, eps = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(6, 1, 4, 4, generator=g,
                                                                                   dtype=torch.float64)
    t = torch.tensor([0, 1, 200, 500, 900, 998])
    x_t = q_sample(x0, t, eps, alphas_cumprod)
    a = alphas_cumprod[t].sqrt().reshape(-1, 1, 1, 1)
    truth = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - (1 - a ** 2).sqrt() * x0}
    converted = convert_prediction(truth[source], x_t, a ** 2, source, target)
    assert torch.allclose(converted, truth[target], atol=1e-8)


class GaussianDenoiser(torch.nn.Module):
    """The exact ε-predictor for data x_0 ~ N(μ, s²·I):  E[ε | x_t] = b·(x_t − a·μ) / (a²s² + b²)."""

    def __init__(self, mean, std, alphas_cumprod, scale=1.0):
        super().__init__()
        self.mean, self.std, self.alphas_cumprod, self.scale = mean, std, alphas_cumprod, scale

    def forward(self, x_t, t):
        a2 = self.alphas_cumprod[t].reshape(-1, 1, 1, 1).to(x_t.dtype)
        return self.scale * (1 - a2).sqrt() * (x_t - a2.sqrt() * self.mean) / (a2 * self.std ** 2 + 1 - a2)


def test_loss_is_minimised_by_the_analytic_denoiser():
    torch.manual_seed(0)
    alphas_cumprod = schedules.linear_schedule(T)
    mean, std = 0.3, 0.5
    x0 = (mean + std * torch.randn(200_000, 1, 2, 2)).double()
    exact = diffusion_loss(GaussianDenoiser(mean, std, alphas_cumprod), x0, alphas_cumprod, weighting="none")
    # its expected loss is the posterior variance Var[ε | x_t] = a²s² / (a²s² + b²), averaged over t
    a2 = alphas_cumprod
    expected = (a2 * std ** 2 / (a2 * std ** 2 + 1 - a2)).mean().item()
    assert exact["loss"].item() == pytest.approx(expected, rel=0.02)
    for scale in (0.9, 1.1):
        torch.manual_seed(0)
        worse = diffusion_loss(GaussianDenoiser(mean, std, alphas_cumprod, scale), x0, alphas_cumprod,
                               weighting="none")
        assert worse["loss"] > exact["loss"] * 1.005


def test_min_snr_weighting_is_the_same_loss_for_every_prediction_type():
    """Weighted by min-SNR-γ, the ε-, x0- and v-errors of one prediction are all min(SNR, γ)·‖x̂0 − x0‖²."""
    g = torch.Generator().manual_seed(2)
    alphas_cumprod = schedules.cosine_schedule(T)
    t = torch.tensor([0, 50, 300, 600, 999])
    x0, eps = (torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64) for _ in range(2))
    x_t = q_sample(x0, t, eps, alphas_cumprod)
    eps_hat = eps + 0.1 * torch.randn(eps.shape, generator=g, dtype=eps.dtype)
    snr_t = schedules.snr(alphas_cumprod)[t]
    alpha_bar = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    truth = {"epsilon": eps, "sample": x0, "v_prediction": convert_prediction(eps, x_t, alpha_bar, "epsilon",
                                                                              "v_prediction")}
    x0_error = ((convert_prediction(eps_hat, x_t, alpha_bar, "epsilon", "sample") - x0) ** 2).flatten(1).mean(1)
    for kind in PREDICTION_TYPES:
        hat = convert_prediction(eps_hat, x_t, alpha_bar, "epsilon", kind)
        error = ((hat - truth[kind]) ** 2).flatten(1).mean(1)
        assert torch.allclose(loss_weight(snr_t, kind) * error, snr_t.clamp(max=5) * x0_error)


def test_condition_dropout_swaps_in_the_unconditional_twin_for_every_key_at_once():
    seen = []

    def model(x_t, t, cond):
        seen.append({k: v.clone() for k, v in cond.items()})
        return torch.zeros_like(x_t)
    torch.manual_seed(0)
    n = 10_000
    labels, context = torch.randint(0, 10, (n,)), torch.randn(n, 3, 4)
    empty = torch.zeros(1, 3, 4)  # one row serves every dropped example (the empty prompt)
    diffusion_loss(model, torch.zeros(n, 1, 2, 2), schedules.linear_schedule(T),
                   cond={"labels": labels, "context": context},
                   uncond={"labels": torch.full((n,), 10), "context": empty}, cond_dropout=0.2)
    dropped = seen[0]["labels"] == 10
    assert dropped.float().mean().item() == pytest.approx(0.2, abs=0.02)
    assert torch.equal(seen[0]["labels"][~dropped], labels[~dropped])
    assert torch.equal(seen[0]["context"][~dropped], context[~dropped])
    assert (seen[0]["context"][dropped] == 0).all()  # the same examples lose their context
    with pytest.raises(ValueError, match="same keys"):
        diffusion_loss(model, torch.zeros(4, 1, 2, 2), schedules.linear_schedule(T), cond={"labels": labels[:4]},
                       uncond={}, cond_dropout=0.5)


def test_bad_prediction_type_is_a_clear_error():
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        diffusion_loss(lambda x, t: x, torch.zeros(2, 1, 2, 2), schedules.linear_schedule(T), prediction_type="eps")
