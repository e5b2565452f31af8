"""The pipeline around the samplers: the denoiser adapter (prediction types, classifier-free guidance
for any condition) and ``generate`` (seeds, batches, conditions, decoding)."""
from types import SimpleNamespace

import pytest
import torch

from minidiff.diffusion import samplers, schedules
from minidiff.diffusion.loss import PREDICTION_TYPES, convert_prediction
from minidiff.diffusion.pipeline import generate, starting_noise
from minidiff.models.unet import UNet, UNetConfig


class ExactModel(torch.nn.Module):
    """A "network" that knows x_0 and answers in any prediction type at a fractional step t."""

    def __init__(self, x0, prediction_type):
        super().__init__()
        self.x0, self.config = x0, SimpleNamespace(prediction_type=prediction_type)
        self.noise_schedule = schedules.NoiseSchedule("cosine", 1000).double()

    def forward(self, x_t, t):
        log_sigmas = self.noise_schedule.log_sigmas
        low = t.floor().long().clamp(max=len(log_sigmas) - 2)
        sigma = torch.lerp(log_sigmas[low], log_sigmas[low + 1], t - low).exp()
        alpha_bar = schedules.alphas_cumprod_from_sigmas(sigma).reshape(-1, 1, 1, 1)
        return convert_prediction(self.x0, x_t, alpha_bar, "sample", self.config.prediction_type)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_model_denoiser_reads_every_prediction_type(prediction_type):
    x0 = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    denoiser = samplers.model_denoiser(ExactModel(x0, prediction_type))
    for sigma in (0.05, 1.3, 40.0):
        x = x0 + sigma * torch.randn_like(x0)
        assert torch.allclose(denoiser(x, sigma), x0, atol=1e-6)


def conditioned_unet(**kw):
    torch.manual_seed(0)
    model = UNet(UNetConfig(1, 8, channels=(8, 16), attention=(False, True), num_res_blocks=1, groups=4, heads=2,
                            dropout=0.0, **kw)).eval()
    torch.nn.init.normal_(model.head[-1].weight, std=0.3)
    return model


CONTEXT, EMPTY = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1)), torch.zeros(1, 3, 6)
GUIDED = {  # condition → (model options, cond, uncond)
    "labels": (dict(num_classes=4), {"labels": torch.tensor([1, 3])}, None),  # the null label by default
    "context": (dict(context_dim=6), {"context": CONTEXT}, {"context": EMPTY.expand(2, -1, -1)}),
    "labels and context": (dict(num_classes=4, context_dim=6), {"labels": torch.tensor([1, 3]), "context": CONTEXT},
                           {"labels": torch.tensor([4, 4]), "context": EMPTY.expand(2, -1, -1)}),
}


@pytest.mark.parametrize("condition", list(GUIDED))
def test_guidance_is_the_mix_of_a_conditional_and_an_unconditional_call(condition):
    """One doubled batch in the adapter = two separate network calls mixed by hand:
    D = x̂_0(∅) + w · (x̂_0(c) − x̂_0(∅)), here with an ε-predicting U-Net."""
    options, cond, uncond = GUIDED[condition]
    model = conditioned_unet(**options)
    x, sigma, w = torch.randn(2, 1, 8, 8), 2.5, 4.0
    alpha_bar = torch.tensor(1 / (1 + sigma ** 2))
    x_t, t = x * alpha_bar.sqrt(), model.noise_schedule.timestep(torch.full((2,), sigma))
    with torch.no_grad():
        on, off = model(x_t, t, cond), model(x_t, t, uncond or {"labels": torch.tensor([4, 4])})
    by_hand = convert_prediction(off + w * (on - off), x_t, alpha_bar, "epsilon", "sample")
    with torch.no_grad():
        guided = samplers.model_denoiser(model, cond, uncond, guidance_scale=w)(x, sigma)
    # float32 rounding of a batch of 4 against two of 2, times w + 1 = 5 and σ = 2.5 on the way to x̂_0
    torch.testing.assert_close(guided, by_hand, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(on, off)  # the condition matters, so the test can fail


def test_guidance_needs_matching_conditions():
    model = conditioned_unet(num_classes=4, context_dim=6)
    with pytest.raises(ValueError, match="same keys"):
        samplers.model_denoiser(model, {"labels": torch.tensor([1]), "context": CONTEXT[:1]},
                                {"labels": torch.tensor([4])}, guidance_scale=2.0)
    with pytest.raises(ValueError, match="empty prompt"):
        samplers.model_denoiser(conditioned_unet(context_dim=6), {"context": CONTEXT}, guidance_scale=2.0)
    with pytest.raises(ValueError, match="needs a condition"):
        samplers.model_denoiser(conditioned_unet(), guidance_scale=2.0)


def tiny_unet(**kw):
    torch.manual_seed(0)
    model = UNet(UNetConfig(1, 8, channels=(8, 16), attention=(False, True), num_res_blocks=1, groups=4, heads=2,
                            **kw))
    torch.nn.init.normal_(model.head[-1].weight, std=0.1)
    return model


@pytest.mark.parametrize("sampler", list(samplers.SAMPLERS))
def test_generate_is_seeded_and_shaped(sampler):
    model = tiny_unet(prediction_type="v_prediction")
    a = generate(model, 5, sampler=sampler, num_inference_steps=4, seed=1, progress=False)
    b = generate(model, 5, sampler=sampler, num_inference_steps=4, seed=1, progress=False)
    c = generate(model, 5, sampler=sampler, num_inference_steps=4, seed=2, progress=False)
    assert a.shape == (5, 1, 8, 8) and a.abs().max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generate_deterministic_samples_do_not_depend_on_the_batch_size():
    model = tiny_unet()
    whole = generate(model, 6, sampler="dpmpp_2m", num_inference_steps=5, progress=False)
    pieces = generate(model, 6, sampler="dpmpp_2m", num_inference_steps=5, batch_size=4, progress=False)
    assert torch.allclose(whole, pieces, atol=1e-5)


def test_generate_walks_the_moved_karras_range():
    """``generate(sigma_min=…, sigma_max=…)`` is the sampler run by hand on ``schedule_sigmas``'s range."""
    model = tiny_unet(prediction_type="v_prediction")
    images = generate(model, 3, sampler="dpmpp_2m", num_inference_steps=6, sigma_min=0.05, sigma_max=10.0,
                      seed=4, progress=False)
    sigmas = samplers.sigmas_karras(6, 0.05, 10.0)
    by_hand = samplers.sample_dpmpp_2m(samplers.model_denoiser(model), starting_noise(3, (1, 8, 8), 4) * 10.0, sigmas)
    assert torch.allclose(images, by_hand.clamp(-1, 1), atol=1e-6)


def test_generate_cuts_conditions_into_batches_and_shares_a_single_row():
    model = tiny_unet(num_classes=3)
    labels = torch.tensor([0, 1, 2, 0, 1])
    whole = generate(model, 5, sampler="ddim", num_inference_steps=3, cond={"labels": labels}, guidance_scale=2.0,
                     progress=False)
    pieces = generate(model, 5, sampler="ddim", num_inference_steps=3, cond={"labels": labels}, guidance_scale=2.0,
                      batch_size=2, progress=False)
    assert torch.allclose(whole, pieces, atol=1e-5)
    one_row = generate(model, 5, sampler="ddim", num_inference_steps=3, cond={"labels": torch.tensor([1])},
                       progress=False)
    each = generate(model, 5, sampler="ddim", num_inference_steps=3, cond={"labels": torch.ones(5, dtype=torch.long)},
                    progress=False)
    assert torch.equal(one_row, each)
    with pytest.raises(ValueError, match="3 rows; give one per image \\(5\\) or one for all"):
        generate(model, 5, sampler="ddim", num_inference_steps=3, cond={"labels": labels[:3]}, progress=False)


def test_latents_are_decoded_before_the_one_clamp():
    """A latent model's samples are unbounded numbers: the decoder sees them as they are; only the
    pictures are clamped."""
    model = tiny_unet()
    seen = []

    def decode(latents):
        seen.append(latents)
        return latents * 10
    images = generate(model, 4, sampler="euler", num_inference_steps=3, decode=decode, progress=False)
    raw = generate(model, 4, sampler="euler", num_inference_steps=3, decode=lambda z: z * 1.0, progress=False)
    assert seen[0].abs().max() > 0 and torch.equal(images, (seen[0] * 10).clamp(-1, 1))
    assert raw.abs().max() <= 1


def test_bad_sampler_or_option_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        generate(tiny_unet(), 1, sampler="plms")
    with pytest.raises(ValueError, match="sampler 'euler' takes no option eta \\(it has no options\\)"):
        generate(tiny_unet(), 1, sampler="euler", eta=0.5)
    with pytest.raises(ValueError, match="takes no option etta \\(its options: eta\\)"):
        generate(tiny_unet(), 1, sampler="ddim", etta=0.5)


def test_fresh_noise_is_drawn_where_the_generator_lives():
    """The pipeline's generator is a CPU one, so a seed draws the same numbers whatever device x is on."""
    x = torch.zeros(3, 4)
    drawn = samplers.fresh_noise(x, torch.Generator().manual_seed(5))
    assert torch.equal(drawn, torch.randn(3, 4, generator=torch.Generator().manual_seed(5)))
    assert drawn.device == x.device and drawn.dtype == x.dtype


def accelerators() -> list[str]:
    return [kind for kind, present in [("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available())]
            if present]


@pytest.mark.parametrize("sampler", [name for name, info in samplers.SAMPLERS.items() if info.stochastic])
def test_a_seed_draws_the_same_picture_on_every_device(sampler, monkeypatch):
    """Every random number ``generate`` uses comes from its seeded CPU generator — none from the
    global RNG or a device's own — so a chapter's stochastic pictures are the same on a laptop, a GPU
    and a Mac: compared here on every accelerator this machine has."""
    model = tiny_unet(prediction_type="v_prediction")
    randn, draws = torch.randn, []

    def recorded(*args, generator=None, **kwargs):
        draws.append(generator)
        return randn(*args, generator=generator, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "randn", recorded)
        patch.setattr(torch, "randn_like", lambda *a, **k: pytest.fail("a draw from the global RNG"))
        patch.setattr(torch, "rand_like", lambda *a, **k: pytest.fail("a draw from the global RNG"))
        on_cpu = generate(model, 4, sampler=sampler, num_inference_steps=5, seed=3, progress=False)
    assert len(draws) >= 5 and all(g is not None and g.device.type == "cpu" for g in draws)
    for device in accelerators():
        there = generate(model.to(device), 4, sampler=sampler, num_inference_steps=5, seed=3, progress=False)
        assert there.device.type == device
        assert torch.allclose(there.cpu(), on_cpu, atol=1e-3), device


def test_a_device_this_machine_lacks_is_one_clear_error():
    from minidiff.devices import pick_device
    with pytest.raises(ValueError, match="unknown device 'gpu'; choose one of auto, cpu, cuda, mps"):
        pick_device("gpu")
    if torch.cuda.is_available():
        assert pick_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="this machine has no CUDA GPU"):
            pick_device("cuda")
    assert pick_device("cpu") == torch.device("cpu")


# ----------------------------------------------------------------------------- img2img (SDEdit)

def _calls(model):
    """Count the network's calls on ``model`` (one per picture batch per step)."""
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("strength, steps, run", [(0.3, 20, 6), (0.29, 100, 29), (0.5, 7, 3), (1.0, 5, 5), (0.0, 5, 0)])
def test_strength_is_the_share_of_the_planned_steps_that_runs(strength, steps, run):
    model = tiny_unet()
    calls = _calls(model)
    init = torch.zeros(1, 1, 8, 8)
    generate(model, 2, sampler="euler", num_inference_steps=steps, init=init, strength=strength, progress=False)
    assert len(calls) == run


def test_img2img_starts_from_the_picture_noised_to_the_first_remaining_level():
    """x = x₀ + σ_k·ε with σ_k the (N − k)-th planned σ and ε the seed's starting noise."""
    model, init, seen = tiny_unet(), torch.rand(3, 1, 8, 8) * 2 - 1, []
    generate(model, 3, sampler="ddim", num_inference_steps=10, init=init, strength=0.4, seed=5, progress=False,
             callback=lambda info: seen.append(info))
    sigmas = samplers.sigmas_uniform_t(model.noise_schedule.sigmas, 10)
    assert seen[0]["sigma"] == sigmas[6] and len(seen) == 4
    assert torch.allclose(seen[0]["x"], init + sigmas[6] * starting_noise(3, (1, 8, 8), 5), atol=1e-6)


def test_strength_one_is_text_to_image_and_strength_zero_the_picture_itself():
    model, init = tiny_unet(), torch.rand(1, 1, 8, 8) * 2 - 1
    fresh = generate(model, 2, sampler="dpmpp_2m", num_inference_steps=6, seed=3, progress=False)
    assert torch.equal(generate(model, 2, sampler="dpmpp_2m", num_inference_steps=6, seed=3, init=init, strength=1.0,
                                progress=False), fresh)
    kept = generate(model, 2, sampler="dpmpp_2m", num_inference_steps=6, init=init, strength=0.0, decode=lambda z: z / 2,
                    progress=False)
    assert torch.equal(kept, (init / 2).expand(2, -1, -1, -1))


@pytest.mark.parametrize("sampler", ["ddim", "euler", "heun", "dpmpp_2m"])
def test_a_picture_the_denoiser_already_believes_is_kept_at_every_strength(sampler):
    """If D(x, σ) = x₀ for every x (the network "knows" the picture), the ODE from x₀ + σ_k·ε lands on x₀
    exactly: img2img changes nothing that the model would draw anyway."""
    x0 = torch.rand(2, 1, 8, 8) * 1.6 - 0.8
    model = ExactModel(x0.double(), "v_prediction")
    model.sample_shape, model.config.num_train_steps = (1, 8, 8), 1000
    model.parameters = lambda: iter([torch.zeros(1)])
    for strength in (0.2, 0.6, 0.9):
        out = generate(model, 2, sampler=sampler, num_inference_steps=10, init=x0.double(), strength=strength,
                       progress=False)
        assert torch.allclose(out, x0.double(), atol=1e-5)


def test_bad_img2img_options_are_one_clear_error():
    model, init = tiny_unet(), torch.zeros(1, 1, 8, 8)
    for strength in (-0.1, 1.5, "0.5"):
        with pytest.raises(ValueError, match="strength must be a number from 0"):
            generate(model, 1, sampler="euler", num_inference_steps=3, init=init, strength=strength, progress=False)
    with pytest.raises(ValueError, match="give the picture"):
        generate(model, 1, sampler="euler", num_inference_steps=3, strength=0.5, progress=False)
    with pytest.raises(ValueError, match=r"starting pictures are \(1, 1, 16, 16\); this model needs \(1 or 2, 1, 8, 8\)"):
        generate(model, 2, sampler="euler", num_inference_steps=3, init=torch.zeros(1, 1, 16, 16), strength=0.5,
                 progress=False)
