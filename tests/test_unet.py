import dataclasses

import pytest
import torch

from minidiff.datasets.mnist import ConditionedImages
from minidiff.diffusion.loss import diffusion_loss, unet_loss
from minidiff.diffusion.schedules import cosine_schedule, make_schedule
from minidiff.models.unet import UNet, UNetConfig, add_input_channels, timestep_embedding
from minidiff.train import TrainConfig, train

SMALL = dict(channels=(8, 16), attention=(False, True), num_res_blocks=1, groups=4, heads=2, dropout=0.0)


def small(**kw) -> UNet:
    return UNet(UNetConfig(**{**SMALL, **kw}))


def nn_init_head_nonzero(model):
    """The head starts at zero (a calm start); give it weights so gradients reach every layer."""
    torch.nn.init.normal_(model.head[-1].weight, std=0.1)


@pytest.mark.parametrize("in_channels,image_size,channels,attention", [
    (1, 28, (8, 16, 16), (False, False, True)),   # MNIST: 28 → 14 → 7, no padding to 32
    (3, 32, (8, 16, 16, 16), (False, False, True, True)),  # shapes: 32 → 16 → 8 → 4
    (4, 8, (8, 16), (True, True)),              # a latent: 8×8×4
])
@pytest.mark.parametrize("patch_size", [1, 2])
def test_output_matches_input_and_every_parameter_gets_a_gradient(in_channels, image_size, channels, attention,
                                                                 patch_size):
    if image_size % (patch_size * 2 ** (len(channels) - 1)):
        channels, attention = channels[:-1], attention[:-1]
    model = UNet(UNetConfig(in_channels, image_size, channels, attention, num_res_blocks=1, groups=4, heads=2,
                            patch_size=patch_size))
    nn_init_head_nonzero(model)
    x = torch.randn(3, in_channels, image_size, image_size)
    out = model(x, torch.tensor([0, 5, 999]))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_patching_keeps_every_pixel_its_own_output():
    """With 2×2 patches the network sees a 14×14×4 rearrangement of the digit; folding and unfolding
    are exact inverses, so output pixel (i, j) still answers for input pixel (i, j): with the network
    reduced to the identity on its patches (stem and head fold and unfold, nothing in between), a
    change of one input pixel moves only that output pixel."""
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.nn.functional.pixel_shuffle(torch.nn.functional.pixel_unshuffle(x, 2), 2), x)
    model = small(patch_size=2).eval()
    assert model.stem.in_channels == 4 and model.head[-1].out_channels == 4
    t = torch.tensor([10, 10])

    def identity_on_patches(x, t):
        """The model's own fold and unfold with the layers in between removed."""
        return torch.nn.functional.pixel_shuffle(torch.nn.functional.pixel_unshuffle(x, model.config.patch_size),
                                                 model.config.patch_size)
    bumped = x.clone()
    bumped[:, :, 5, 9] += 1.0
    changed = (identity_on_patches(bumped, t) - identity_on_patches(x, t)).abs().sum(dim=(0, 1))
    assert changed[5, 9].item() == pytest.approx(2.0) and (changed > 0).sum() == 1
    nn_init_head_nonzero(model)  # and the real network, whose output pixel (5, 9) must feel it
    assert (model(bumped, t) - model(x, t)).abs().sum(dim=(0, 1))[5, 9] > 0


def test_class_labels_change_the_output_and_the_null_label_is_the_default():
    torch.manual_seed(0)
    model = small(num_classes=10).eval()
    nn_init_head_nonzero(model)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([100, 100])
    a, b = model(x, t, {"labels": torch.tensor([3, 3])}), model(x, t, {"labels": torch.tensor([7, 7])})
    assert not torch.allclose(a, b)
    assert torch.equal(model(x, t), model(x, t, {"labels": torch.tensor([10, 10])}))


def test_context_goes_in_through_cross_attention_and_the_mask_hides_padding():
    torch.manual_seed(0)
    model = small(context_dim=12).eval()
    nn_init_head_nonzero(model)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([100, 100])
    context = torch.randn(2, 5, 12)
    a, b = model(x, t, {"context": context}), model(x, t, {"context": torch.randn(2, 5, 12)})
    assert not torch.allclose(a, b)
    mask = torch.tensor([[True, True, True, False, False]] * 2)
    padded = context.clone()
    padded[:, 3:] = torch.randn(2, 2, 12)  # what hides behind the mask does not matter
    assert torch.allclose(model(x, t, {"context": context, "context_mask": mask}),
                          model(x, t, {"context": padded, "context_mask": mask}), atol=1e-6)
    with pytest.raises(ValueError, match="built with context_dim=12: pass cond"):
        model(x, t)


def test_a_condition_the_unet_was_not_built_for_is_a_clear_error():
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 1])
    with pytest.raises(ValueError, match="built without num_classes: it takes no 'labels'"):
        small()(x, t, {"labels": torch.tensor([1, 2])})
    with pytest.raises(ValueError, match="built without context_dim"):
        small(num_classes=10)(x, t, {"context": torch.randn(2, 3, 4)})
    with pytest.raises(ValueError, match="unknown condition 'control'"):
        small()(x, t, {"control": x})
    with pytest.raises(ValueError, match="3 rows for a batch of 2"):
        small(num_classes=10)(x, t, {"labels": torch.tensor([1, 2, 3])})
    batch = ConditionedImages(x, labels=torch.tensor([1, 2])).take(torch.arange(2))
    with pytest.raises(ValueError, match="built without num_classes"):
        unet_loss(small(), batch)  # an unconditional U-Net no longer ignores labels it is given


@pytest.mark.parametrize("patch_size", [1, 2])
def test_added_input_channels_start_as_the_same_function_and_then_are_read(patch_size):
    """``add_input_channels``: the new first-convolution weights are zero, so the wider U-Net answers
    exactly as the trained one, whatever picture it is given beside x_t; once they move, it reads it."""
    base = small(patch_size=patch_size, context_dim=6, image_size=16)
    nn_init_head_nonzero(base)
    wider = add_input_channels(base, 3)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 700])
    cond = {"context": torch.randn(2, 4, 6), "context_mask": torch.ones(2, 4, dtype=torch.bool)}
    with torch.no_grad():
        expected = base(x, t, cond)
        for concat in (torch.randn(2, 3, 16, 16), torch.zeros(2, 3, 16, 16)):
            torch.testing.assert_close(wider(x, t, {**cond, "concat": concat}), expected, atol=1e-6, rtol=0)
        wider.stem.weight[:, -1].normal_()
        assert (wider(x, t, {**cond, "concat": torch.randn(2, 3, 16, 16)}) - expected).abs().max() > 1e-3
    assert wider.config.concat_channels == 3 and base.config.concat_channels == 0
    with pytest.raises(ValueError, match=r"reads 3 more channels beside x_t: pass cond=\{'concat': \(B, 3, 16, 16\)\}, got none"):
        wider(x, t, cond)
    with pytest.raises(ValueError, match=r"got \(2, 16, 16\)"):
        wider(x, t, {**cond, "concat": torch.zeros(2, 2, 16, 16)})
    with pytest.raises(ValueError, match="built without concat_channels"):
        base(x, t, {**cond, "concat": torch.zeros(2, 3, 16, 16)})


def test_the_batchs_conditions_reach_the_network_unchanged():
    """From a dataset's batch mapping through ``unet_loss`` to ``forward``, the labels arrive as they
    were, except for the dropped fraction, which gets the null label."""
    model = small(num_classes=10)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[2]))
    labels = torch.arange(8) % 10
    batch = ConditionedImages(torch.randn(8, 1, 28, 28), labels=labels).take(torch.arange(8))
    unet_loss(model, batch, cond_dropout=0.0)
    assert set(seen[0]) == {"labels"} and torch.equal(seen[0]["labels"], labels)
    torch.manual_seed(0)
    unet_loss(model, batch, cond_dropout=0.5)
    got = seen[1]["labels"]
    assert ((got == labels) | (got == 10)).all() and (got == 10).any() and (got == labels).any()


def test_the_schedule_is_float32_on_the_device_and_saved_with_the_weights():
    model = small(schedule="linear", num_train_steps=500)
    buffers = dict(model.noise_schedule.named_buffers())
    assert {k: v.dtype for k, v in buffers.items()} == {"alphas_cumprod": torch.float32, "log_sigmas": torch.float32}
    assert torch.allclose(buffers["alphas_cumprod"].double(), make_schedule("linear", 500), rtol=1e-6)
    state = model.state_dict()
    assert "noise_schedule.alphas_cumprod" in state and "noise_schedule.log_sigmas" in state
    model.to("meta")  # stands in for another device: the schedule moves with the weights, as float32
    assert {(v.device.type, v.dtype) for v in model.noise_schedule.buffers()} == {("meta", torch.float32)}


def test_training_and_denoising_never_make_a_float64_tensor():
    """Apple's MPS has no float64, so nothing the loss or the denoiser computes from the schedule may be
    float64 (a dispatch mode sees every op; only the pipeline plans its σ's in float64, on the CPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from minidiff.diffusion.samplers import model_denoiser

    class NoFloat64(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                    raise AssertionError(f"{func} made a float64 tensor")
            return out
    model = small(image_size=8, num_classes=3)
    batch = ConditionedImages(torch.randn(4, 1, 8, 8), labels=torch.arange(4) % 3).take(torch.arange(4))
    denoiser = model_denoiser(model, {"labels": torch.tensor([0, 1])}, guidance_scale=2.0)
    with NoFloat64():
        unet_loss(model, batch)
        for sigma in (0.01, 1.5, 80.0, 20_000.0):
            assert denoiser(torch.randn(2, 1, 8, 8), sigma).dtype == torch.float32
    with pytest.raises(AssertionError, match="float64"), NoFloat64():  # the check itself can fail
        torch.ones(1, dtype=torch.float64)


def test_fractional_and_scalar_timesteps():
    model = small().eval()
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.tensor(10.5)).shape == x.shape
    assert model(x, torch.tensor([10.5, 3.0])).shape == x.shape


def test_timestep_embedding_tells_every_step_apart():
    e = timestep_embedding(torch.arange(1000), 64)
    assert e.shape == (1000, 64) and torch.allclose(e.norm(dim=1), torch.full((1000,), 32 ** 0.5))
    distances = torch.cdist(e, e) + torch.eye(1000) * 1e3
    assert distances.min() > 0.1


def test_wrong_inputs_are_clear_errors():
    model = small()
    with pytest.raises(ValueError, match=r"images of shape \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="divisible by patch_size·2\\^2 = 4"):
        UNet(UNetConfig(image_size=30, channels=(8, 16, 32), attention=(False, False, True)))
    with pytest.raises(ValueError, match="divisible by patch_size·2\\^1 = 4"):
        UNet(UNetConfig(image_size=14, channels=(8, 16), attention=(False, True), patch_size=2))
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        small(prediction_type="noise")


class LegacyAttentionBlock(torch.nn.Module):
    """The attention block the shipped denoisers were trained with (before the shared block)."""

    def __init__(self, channels, heads, groups):
        super().__init__()
        self.norm = torch.nn.GroupNorm(groups, channels)
        self.self_attention = torch.nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        out = self.self_attention(tokens, tokens, tokens, need_weights=False)[0]
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def test_old_checkpoints_convert_to_the_shared_attention_block_exactly():
    """``UNet.upgrade_checkpoint`` maps the fused ``nn.MultiheadAttention`` weights (an independent
    reference implementation) onto separate q/k/v/out layers; the converted block computes the same."""
    torch.manual_seed(0)
    legacy = LegacyAttentionBlock(16, 2, 4)
    torch.nn.init.normal_(legacy.self_attention.in_proj_bias, std=0.1)
    model = small(feed_forward=0)
    prefix = next(k for k in model.state_dict() if k.endswith("block.attn1.q.weight"))[:-len("block.attn1.q.weight")]
    old_state = {k: v for k, v in model.state_dict().items()
                 if not k.startswith(prefix + "block.") and not k.startswith("noise_schedule.")}
    old_state.update({prefix + k: v for k, v in legacy.state_dict().items()})
    config = {k: v for k, v in dataclasses.asdict(model.config).items() if k != "feed_forward"}
    new_config, new_state = UNet.upgrade_checkpoint(config, old_state)
    assert new_config["feed_forward"] == 0
    model.load_state_dict(new_state)  # strict: every key accounted for, the schedule rebuilt
    block = dict(model.named_modules())[prefix[:-1]]
    x = torch.randn(3, 16, 7, 7)
    torch.testing.assert_close(block(x), legacy(x), atol=1e-6, rtol=1e-5)


def test_the_shipped_denoisers_load_through_the_conversion():
    from minidiff.weights import load_pretrained
    model = load_pretrained("ddpm_mnist")
    assert model.config.feed_forward == 0 and isinstance(model.config, UNetConfig)


def test_overfits_a_fixed_batch():
    """With a fixed seed, the one trainer drives the diffusion loss on a single 8×8 image towards 0:
    with one image in the data set, predicting x_0 is learnable at every noise level."""
    torch.manual_seed(0)
    image = torch.rand(1, 1, 8, 8).round() * 2 - 1
    alphas_cumprod = cosine_schedule(1000)
    model = UNet(UNetConfig(image_size=8, channels=(8, 16), attention=(False, True), num_res_blocks=1, groups=4,
                            heads=2, dropout=0.0))

    def loss_fn(model, batch):
        return diffusion_loss(model, batch.repeat(32, 1, 1, 1), alphas_cumprod, prediction_type="sample",
                              weighting="none")
    result = train(model, loss_fn, image, TrainConfig(steps=150, batch_size=1, lr=3e-3, warmup_steps=10,
                                                      ema_decay=None, progress=False, log_every=10, device="cpu"))
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.1 * losses[0]


def test_unet_loss_trains_on_the_schedule_and_prediction_type_the_model_records():
    """The same batch and random draws give ``diffusion_loss`` on the model's own schedule and
    prediction type exactly, and something else on another schedule."""
    model = small(image_size=8, schedule="linear", prediction_type="sample")
    nn_init_head_nonzero(model)
    images = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    losses = {}
    for name, schedule in (("unet_loss", None), ("linear", "linear"), ("cosine", "cosine")):
        torch.manual_seed(1)
        if schedule is None:
            losses[name] = unet_loss(model, images)["loss"]
        else:
            losses[name] = diffusion_loss(model, images, make_schedule(schedule, 1000).float(), "sample")["loss"]
    assert torch.equal(losses["unet_loss"], losses["linear"]) and not torch.equal(losses["linear"], losses["cosine"])


def test_a_unet_saved_and_loaded_keeps_its_schedule(tmp_path):
    from minidiff.weights import load_pretrained, save_weights
    model = small(image_size=8, schedule="sigmoid", num_train_steps=300)
    save_weights(model, "tiny", directory=tmp_path, recipe="python -m minidiff train tiny", data="none", steps=0,
                 wall_time_s=0.0, hardware="test")
    loaded = load_pretrained("tiny", directory=tmp_path)
    assert loaded.config == model.config
    for key, value in model.noise_schedule.state_dict().items():
        assert torch.equal(loaded.noise_schedule.state_dict()[key], value)
