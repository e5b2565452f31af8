import pytest
import torch

from minidiff.diffusion import diffusion_loss
from minidiff.schedules import cosine_schedule
from minidiff.train import TrainConfig, train
from minidiff.unet import UNet, timestep_embedding

SMALL = dict(channels=(8, 16), attention=(False, True), num_res_blocks=1, groups=4, heads=2, dropout=0.0)


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
    model = UNet(in_channels, image_size, channels, attention, num_res_blocks=1, groups=4, heads=2,
                 patch_size=patch_size)
    nn_init_head_nonzero(model)
    x = torch.randn(3, in_channels, image_size, image_size)
    out = model(x, torch.tensor([0, 5, 999]))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def nn_init_head_nonzero(model):
    """The head starts at zero (a calm start); give it weights so gradients reach every layer."""
    torch.nn.init.normal_(model.head[-1].weight, std=0.1)


def test_patching_keeps_every_pixel_its_own_output():
    """With 2×2 patches the network sees a 14×14×4 rearrangement of the digit; folding and unfolding
    are exact inverses, so output pixel (i, j) still answers for input pixel (i, j): a change of one
    input pixel, with the network reduced to the identity, moves only that output pixel."""
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(torch.nn.functional.pixel_shuffle(torch.nn.functional.pixel_unshuffle(x, 2), 2), x)
    model = UNet(**SMALL, patch_size=2).eval()
    assert model.stem.in_channels == 4 and model.head[-1].out_channels == 4
    nn_init_head_nonzero(model)
    t = torch.tensor([10, 10])
    bumped = x.clone()
    bumped[:, :, 5, 9] += 1.0
    changed = (model(bumped, t) - model(x, t)).abs().sum(dim=(0, 1))
    assert changed[5, 9] > 0 and changed.shape == (28, 28)


def test_class_labels_change_the_output_and_the_null_label_is_the_default():
    torch.manual_seed(0)
    model = UNet(**SMALL, num_classes=10).eval()
    nn_init_head_nonzero(model)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([100, 100])
    a, b = model(x, t, torch.tensor([3, 3])), model(x, t, torch.tensor([7, 7]))
    assert not torch.allclose(a, b)
    assert torch.equal(model(x, t), model(x, t, torch.tensor([10, 10])))


def test_context_goes_in_through_cross_attention():
    torch.manual_seed(0)
    model = UNet(**SMALL, context_dim=12).eval()
    nn_init_head_nonzero(model)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([100, 100])
    a, b = model(x, t, context=torch.randn(2, 5, 12)), model(x, t, context=torch.randn(2, 5, 12))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="pass context"):
        model(x, t)


def test_fractional_and_scalar_timesteps():
    model = UNet(**SMALL).eval()
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.tensor(10.5)).shape == x.shape
    assert model(x, torch.tensor([10.5, 3.0])).shape == x.shape


def test_timestep_embedding_tells_every_step_apart():
    e = timestep_embedding(torch.arange(1000), 64)
    assert e.shape == (1000, 64) and torch.allclose(e.norm(dim=1), torch.full((1000,), 32 ** 0.5))
    distances = torch.cdist(e, e) + torch.eye(1000) * 1e3
    assert distances.min() > 0.1


def test_wrong_inputs_are_clear_errors():
    model = UNet(**SMALL)
    with pytest.raises(ValueError, match=r"images of shape \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="divisible by patch_size·2\\^2 = 4"):
        UNet(image_size=30, channels=(8, 16, 32), attention=(False, False, True))
    with pytest.raises(ValueError, match="divisible by patch_size·2\\^1 = 4"):
        UNet(image_size=14, channels=(8, 16), attention=(False, True), patch_size=2)


def test_overfits_a_fixed_batch():
    """With a fixed seed, the one trainer drives the diffusion loss on a single 8×8 image towards 0:
    with one image in the data set, predicting x_0 is learnable at every noise level."""
    torch.manual_seed(0)
    image = torch.rand(1, 1, 8, 8).round() * 2 - 1
    alphas_cumprod = cosine_schedule(1000)
    model = UNet(image_size=8, channels=(8, 16), attention=(False, True), num_res_blocks=1, groups=4, heads=2,
                 dropout=0.0)

    def loss_fn(model, batch):
        return diffusion_loss(model, batch.repeat(32, 1, 1, 1), alphas_cumprod, prediction_type="sample",
                              weighting="none")
    result = train(model, loss_fn, image, TrainConfig(steps=150, batch_size=1, lr=3e-3, warmup_steps=10,
                                                      ema_decay=None, progress=False, log_every=10, device="cpu"))
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.1 * losses[0]
