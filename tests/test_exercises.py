"""Every exercise check accepts its reference solution, reports a stub, and answers each plausible
wrong answer with ❌ and the hint of the case it fails."""
import inspect

import pytest
import torch
import torch.nn.functional as F

from minidiff.course import exercises, solutions

CHECKS = {name[len("check_"):]: fn for name, fn in inspect.getmembers(exercises, inspect.isfunction)
          if name.startswith("check_")}


def stub(*args):
    raise NotImplementedError


def _alpha(alphas_cumprod, t):
    return alphas_cumprod[t].reshape(-1, 1, 1, 1)


# Mistakes a student could make: each returns a tensor of the right shape without raising, so the
# check must get as far as comparing values, and print the hint of the first case it fails (the last
# item, a piece of that hint). Every check has at least one (see test_every_check_has_wrong_answers).
WRONG_VALUES = {
    "mosaic": [
        ("top-left pixel instead of the average",
         lambda x, b: x[..., ::b, ::b].repeat_interleave(b, 2).repeat_interleave(b, 3), "average each 2×2 tile"),
    ],
    "add_noise": [
        ("no square roots", lambda x, noise, a: (1 - a) * x + a * noise, "use square roots"),
    ],
    "discriminator_loss": [
        ("one mean over both batches", lambda r, f: 2 * F.softplus(torch.cat([-r, f])).mean(),
         "average each batch separately"),
        ("log of sigmoid", lambda r, f: -torch.log(torch.sigmoid(r)).mean() - torch.log(1 - torch.sigmoid(f)).mean(),
         "use softplus"),
    ],
    "generator_loss": [
        ("the discriminator's fake term", lambda f: F.softplus(f).mean(), "not log(1 − σ(D(G(z))))"),
        ("log of sigmoid", lambda f: -torch.log(torch.sigmoid(f)).mean(), "use softplus"),
    ],
    "q_sample": [
        ("no square roots", lambda x0, t, noise, ac: _alpha(ac, t) * x0 + (1 - _alpha(ac, t)) * noise,
         "at t = 0 almost all of x_0 is left"),
        ("the first image's t for all", lambda x0, t, noise, ac: solutions.q_sample(x0, t[:1].expand_as(t), noise, ac),
         "each image has its own t"),
    ],
    "epsilon_loss": [
        ("target x_0", lambda model, x0, t, noise, ac: (model(solutions.q_sample(x0, t, noise, ac), t) - x0)
         .square().mean(), "compare the prediction with `noise`"),
        ("target -noise", lambda model, x0, t, noise, ac: (model(solutions.q_sample(x0, t, noise, ac), t) + noise)
         .square().mean(), "compare the prediction with `noise`"),
        ("the model sees x_0", lambda model, x0, t, noise, ac: (model(x0, t) - noise).square().mean(),
         "give the model the noisy x_t"),
    ],
    "x0_from_epsilon": [
        ("no division by sqrt(alpha_bar)", lambda x_t, t, eps, ac: x_t - (1 - _alpha(ac, t)).sqrt() * eps,
         "then divide by √ᾱ"),
        ("the first image's t for all",
         lambda x_t, t, eps, ac: solutions.x0_from_epsilon(x_t, t[:1].expand_as(t), eps, ac),
         "each image has its own t"),
    ],
    "ddim_step": [
        ("returns the x_0 estimate", lambda x_t, t, t_prev, eps, ac: solutions.x0_from_epsilon(x_t, t, eps, ac),
         "a step from t to t itself changes nothing"),
        ("re-noised with alpha_bar at t, not t_prev", lambda x_t, t, t_prev, eps, ac:
         _alpha(ac, t_prev).sqrt() * solutions.x0_from_epsilon(x_t, t, eps, ac) + (1 - _alpha(ac, t)).sqrt() * eps,
         "with the true ε the step lands exactly on q_sample"),
    ],
    "euler_step": [
        ("the step's sign flipped", lambda x, s, s_next, d: x + (x - d) / s * (s - s_next),
         "lands on the denoised image"),
        ("variances instead of standard deviations", lambda x, s, s_next, d: d + (x - d) * (s_next / s) ** 2,
         "the slope is (x − denoised)/σ"),
    ],
    "psnr_per_image": [
        ("peak 1 instead of 2", lambda r, x: 10 * torch.log10(1 / (r - x).square().flatten(1).mean(1)),
         "peak² = 4"),
        ("mean absolute error, squared",
         lambda r, x: 10 * torch.log10(4 / (r - x).abs().flatten(1).mean(1) ** 2),
         "average the squared error over each image's own pixels"),
    ],
    "reparameterize": [
        ("sigma = exp(logvar)", lambda mean, logvar, noise: mean + logvar.exp() * noise, "not exp(logvar)"),
        ("sigma = logvar", lambda mean, logvar, noise: mean + logvar * noise, "log σ² = 0 means σ = 1"),
    ],
    "kl_divergence": [
        ("no 1/2", lambda m, lv: (m ** 2 + lv.exp() - lv - 1).flatten(1).sum(1), "μ = 1 costs ½ · μ² = 0.5"),
        ("mean instead of sum", lambda m, lv: 0.5 * (m ** 2 + lv.exp() - lv - 1).flatten(1).mean(1),
         "μ = 1 costs ½ · μ² = 0.5"),
        ("no -1", lambda m, lv: 0.5 * (m ** 2 + lv.exp() - lv).flatten(1).sum(1), "0 nats away from the prior"),
    ],
}

# Natural mistakes that give the wrong shape: the check says so, with a hint on what to fix.
WRONG_SHAPES = {
    "mosaic": (lambda x, b: x[..., ::b, ::b], "repeat every average"),
    "discriminator_loss": (lambda r, f: F.softplus(-r) + F.softplus(f), ".mean() of each batch"),
    "generator_loss": (lambda f: F.softplus(-f), ".mean() over the batch"),
    "q_sample": (lambda x0, t, noise, ac: ac[t].sqrt().reshape(-1, 1, 1) * x0 + (1 - ac[t]).sqrt().reshape(-1, 1, 1)
                 * noise, "reshape alphas_cumprod[t] to (B, 1, 1, 1)"),
    "epsilon_loss": (lambda model, x0, t, noise, ac: (model(solutions.q_sample(x0, t, noise, ac), t) - noise)
                     .square(), "the loss is one number"),
    "psnr_per_image": (lambda r, x: 10 * torch.log10(4 / (r - x).square().mean()), ".flatten(1).mean(1)"),
    "kl_divergence": (lambda m, lv: 0.5 * (m ** 2 + lv.exp() - lv - 1).sum(), ".flatten(1).sum(1)"),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_reference_solution_passes(name, capsys):
    assert CHECKS[name](getattr(solutions, name)) is True
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_stub_is_reported_not_raised(name, capsys):
    assert CHECKS[name](stub) is False
    assert "not implemented yet" in capsys.readouterr().out


def test_every_check_has_wrong_answers():
    assert sorted(WRONG_VALUES) == sorted(CHECKS)


@pytest.mark.parametrize("name, wrong, hint", [pytest.param(name, wrong, hint, id=f"{name}: {mistake}")
                                               for name, answers in sorted(WRONG_VALUES.items())
                                               for mistake, wrong, hint in answers])
def test_wrong_answer_fails_with_a_hint(name, wrong, hint, capsys):
    assert CHECKS[name](wrong) is False
    out = capsys.readouterr().out
    assert out.startswith(f"❌ {name}: wrong values") and "Hint: " in out, out
    assert hint in out.split("Hint: ", 1)[1], out


@pytest.mark.parametrize("name", sorted(WRONG_SHAPES))
def test_wrong_shape_gets_a_hint(name, capsys):
    wrong, hint = WRONG_SHAPES[name]
    assert CHECKS[name](wrong) is False
    out = capsys.readouterr().out
    assert out.startswith(f"❌ {name}: expected a tensor of shape") and "Hint: " in out, out
    assert hint in out.split("Hint: ", 1)[1], out


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_a_forgotten_return_is_explained(name, capsys):
    assert CHECKS[name](lambda *args: None) is False
    assert "Hint: your function returned None: did you forget `return`?" in capsys.readouterr().out


def test_wrong_shape_is_explained(capsys):
    assert exercises.check_mosaic(lambda x, block: x[..., ::block, ::block]) is False
    assert "shape" in capsys.readouterr().out


def test_add_noise_keeps_unit_variance():
    x, noise = torch.randn(100_000), torch.randn(100_000)
    assert abs(solutions.add_noise(x, noise, 0.4).var().item() - 1) < 0.02
