"""Every exercise check accepts its reference solution (written out independently of the library it is
checked against), reports a stub, names each known mistake with its own hint, and gives any other
wrong answer the hint of the case it fails."""
import inspect
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from minidiff.course import (
    clip_exercises,
    control_exercises,
    edit_exercises,
    exercises,
    finetune_exercises,
    sampling_exercises,
    solutions,
    t2i_exercises,
)

MODULES = (exercises, sampling_exercises, clip_exercises, t2i_exercises, edit_exercises, control_exercises,
           finetune_exercises)
CHECKS = {name[len("check_"):]: fn for module in MODULES for name, fn in inspect.getmembers(module, inspect.isfunction)
          if name.startswith("check_")}
MISTAKES = {name: mistake for module in MODULES for name, mistake in module.MISTAKES.items()}


def stub(*args):
    raise NotImplementedError


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
    "scaling_factor": (lambda z: 1 / z.std(dim=(0, 2, 3)), ".std() of the whole tensor"),
    "similarity_matrix": (lambda u, w: F.cosine_similarity(u, w, dim=1), "every pair, not only the matching ones"),
    "info_nce": (lambda s, a: F.cross_entropy(a * s, torch.arange(len(s)), reduction="none"), "the loss is one number"),
    "zero_shot": (lambda u, w: (u @ w.T).argmax(dim=1, keepdim=True), ".argmax(dim=1) along each row"),
    "cross_attention": (lambda q, k, v, m: (q @ k.transpose(1, 2)).masked_fill(~m[:, None, :], float("-inf"))
                        .softmax(-1), "times v (B, S, d) give (B, L, d)"),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_reference_solution_passes(name, capsys):
    assert CHECKS[name](getattr(solutions, name)) is True
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_stub_is_reported_not_raised(name, capsys):
    assert CHECKS[name](stub) is False
    assert "not implemented yet" in capsys.readouterr().out


def test_every_check_knows_the_mistakes_students_make():
    assert sorted(MISTAKES) == sorted(CHECKS)
    assert all(MISTAKES.values())


@pytest.mark.parametrize("name, mistake", [pytest.param(name, mistake, id=f"{name}: {mistake.what}")
                                           for name, mistakes in sorted(MISTAKES.items()) for mistake in mistakes])
def test_each_mistake_is_named_with_its_own_hint(name, mistake, capsys):
    assert CHECKS[name](mistake.fn) is False
    out = capsys.readouterr().out
    assert out.startswith(f"✗ {name}: wrong values"), out
    assert f"it looks like {mistake.what}. Hint: {mistake.hint}" in out, out


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_an_unknown_mistake_gets_the_hint_of_the_case_it_fails(name, capsys):
    def off_by_a_little(*args):
        got = getattr(solutions, name)(*args)
        return got + 0.01 * torch.ones_like(got)

    assert CHECKS[name](off_by_a_little) is False
    out = capsys.readouterr().out
    assert out.startswith(f"✗ {name}: wrong values") and "; Hint: " in out and "it looks like" not in out, out


def test_the_checks_do_not_import_the_answers():
    code = ("import sys; import minidiff.course.exercises, minidiff.course.sampling_exercises, "
            "minidiff.course.clip_exercises, minidiff.course.t2i_exercises, minidiff.course.edit_exercises, "
            "minidiff.course.control_exercises, minidiff.course.finetune_exercises; "
            "print('minidiff.course.solutions' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_the_textbook_sampling_loop_draws_what_minidiffs_ddpm_sampler_draws(one_thread):
    """The loop a student writes in chapter 05 (x_t-space, the posterior's μ̃ and β̃) and the library's
    DDPM sampler (σ-space, an Euler step plus σ_up of fresh noise) are two derivations of one process:
    from the same starting noise and the same fresh noise they must give the same pictures."""
    from minidiff.diffusion.pipeline import generate, starting_noise
    from minidiff.models.unet import UNet, UNetConfig
    torch.manual_seed(0)
    model = UNet(UNetConfig(1, 8, channels=(8, 16), attention=(False, True), num_res_blocks=1, groups=4, heads=2,
                            num_train_steps=50)).eval()
    torch.nn.init.normal_(model.head[-1].weight, std=0.1)
    library = generate(model, 2, sampler="ddpm", num_inference_steps=50, seed=0, progress=False)
    alphas_cumprod = model.noise_schedule.alphas_cumprod
    x_T = starting_noise(2, (1, 8, 8), seed=0) * (1 - alphas_cumprod[-1]).sqrt()
    draws = torch.Generator().manual_seed(1)  # the pipeline's generator for the first batch of seed 0
    fresh = [torch.randn(2, 1, 8, 8, generator=draws) for _ in range(49)]  # steps t = 49 … 1; none at t = 0
    noises = torch.stack([torch.zeros(2, 1, 8, 8)] + fresh[::-1])
    with torch.no_grad():
        textbook = solutions.sample_loop(lambda x, t: model(x, t), x_T, alphas_cumprod, noises)
    assert torch.allclose(textbook.clamp(-1, 1), library, atol=1e-4), (textbook.clamp(-1, 1) - library).abs().max()


@pytest.mark.parametrize("name", sorted(WRONG_SHAPES))
def test_wrong_shape_gets_a_hint(name, capsys):
    wrong, hint = WRONG_SHAPES[name]
    assert CHECKS[name](wrong) is False
    out = capsys.readouterr().out
    assert out.startswith(f"✗ {name}: expected a tensor of shape") and "Hint: " in out, out
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


def test_the_scaling_factor_gives_latents_unit_spread():
    latents = torch.randn(200, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 5.5 + 0.3
    assert abs((solutions.scaling_factor(latents) * latents).std().item() - 1) < 1e-4
