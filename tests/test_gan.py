"""The GAN: shapes, losses against hand computation, R1 against a closed form, the two-part trainer
step, and the shipped generators' quality re-measured on a smaller sample."""
import math

import pytest
import torch
import torch.nn as nn

from minidiff.datasets.mnist import mnist_dataset
from minidiff.metrics import PROTOCOL_SEED, evaluate_samples
from minidiff.models.gan import (
    GAN,
    GANConfig,
    discriminator_loss,
    gan_loss,
    gan_parts,
    generator_loss,
    make_gan_loss,
    r1_penalty,
)
from minidiff.train import TrainConfig, train
from minidiff.weights import load_pretrained, read_manifest

QUALITY_SAMPLES = 500


def test_generator_and_discriminator_shapes():
    model = GAN(GANConfig(z_dim=8, g_channels=4, d_channels=4))
    images = model.generator(torch.randn(5, 8))
    assert images.shape == (5, 1, 28, 28)
    assert images.min() >= -1 and images.max() <= 1
    assert model.discriminator(images).shape == (5,)
    assert model.sample(3, torch.Generator().manual_seed(0)).shape == (3, 1, 28, 28)


def test_wrong_shapes_are_explained():
    model = GAN(GANConfig(z_dim=8, g_channels=4, d_channels=4))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model.discriminator(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        model.generator(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="'batch' or 'none'"):
        GAN(GANConfig(g_norm="layer"))


def test_sampling_is_reproducible_with_a_seed():
    model = GAN(GANConfig(z_dim=8, g_channels=4, d_channels=4))
    a, b = (model.sample(4, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a, b)


def test_nonsaturating_losses_at_an_undecided_discriminator():
    """D(x) = D(G(z)) = 0 logits means σ = ½ everywhere: L_D = 2·log 2, L_G = log 2."""
    zeros = torch.zeros(7)
    assert discriminator_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert generator_loss(zeros).item() == pytest.approx(math.log(2))


def test_nonsaturating_losses_match_the_log_form():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    expected_d = (-torch.log(torch.sigmoid(real)) - torch.log(1 - torch.sigmoid(fake))).mean()
    assert discriminator_loss(real, fake).item() == pytest.approx(expected_d.item(), rel=1e-6)
    assert generator_loss(fake).item() == pytest.approx((-torch.log(torch.sigmoid(fake))).mean().item(), rel=1e-6)


def test_hinge_losses_known_values():
    zeros = torch.zeros(3)
    assert discriminator_loss(zeros, zeros, "hinge").item() == pytest.approx(2.0)
    # beyond the margins (real ≥ 1, fake ≤ −1) D is not pushed any further
    assert discriminator_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -5.0]), "hinge").item() == 0.0
    assert discriminator_loss(torch.tensor([0.5]), torch.tensor([0.0]), "hinge").item() == pytest.approx(1.5)
    assert generator_loss(torch.tensor([2.0, -4.0]), "hinge").item() == pytest.approx(1.0)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="nonsaturating"):
        make_gan_loss("wasserstein")


def test_r1_of_a_linear_discriminator_is_the_squared_weight_norm():
    """D(x) = w·x + b has ∇_x D = w everywhere, so E‖∇_x D(x)‖² = ‖w‖²."""
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(784, 1))
    penalty = r1_penalty(linear, torch.randn(6, 1, 28, 28))
    assert penalty.item() == pytest.approx(linear[1].weight.pow(2).sum().item(), rel=1e-5)
    penalty.backward()  # differentiable in D's weights: d‖w‖²/dw = 2w
    assert torch.allclose(linear[1].weight.grad, 2 * linear[1].weight, rtol=1e-5)


def _digits(n=64):
    return mnist_dataset("test", limit=n)


def test_discriminator_loss_only_reaches_the_discriminator():
    model = GAN(GANConfig(z_dim=8, g_channels=4, d_channels=4))
    out = gan_loss(model, _digits(8).tensors, "discriminator", r1_gamma=1.0)
    out["loss"].backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())
    assert {"d_real", "d_fake", "r1"} <= out.keys()


@pytest.mark.parametrize("frozen", ["discriminator", "generator"])
def test_each_trainer_part_updates_only_its_own_parameters(frozen):
    """One two-part step with the other part's learning rate 0: the frozen part's weights stay put."""
    torch.manual_seed(0)
    model = GAN(GANConfig(z_dim=8, g_channels=4, d_channels=4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr = {"discriminator": 1e-2, "generator": 1e-2, frozen: 0.0}
    train(model, make_gan_loss(r1_gamma=1.0), _digits(), TrainConfig(
        steps=2, batch_size=32, lr=lr, warmup_steps=1, ema_decay=None, device="cpu", progress=False),
        parts=gan_parts(model))
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == name.startswith(frozen), name


def test_discriminator_learns_to_reject_a_frozen_generator():
    torch.manual_seed(0)
    model = GAN(GANConfig(z_dim=8, g_channels=4, d_channels=8))
    loss_fn = make_gan_loss()
    result = train(model, loss_fn, _digits(), TrainConfig(
        steps=30, batch_size=64, lr=2e-3, warmup_steps=1, ema_decay=None, log_every=1, device="cpu",
        progress=False), parts={"discriminator": model.discriminator})
    losses = [h["discriminator.loss"] for h in result.history]
    assert losses[0] == pytest.approx(2 * math.log(2), abs=0.1)  # an untrained D is undecided
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]


# ----------------------------------------------------------------------------- shipped weights

@pytest.fixture(scope="module")
def shipped():
    """name -> its measurements on QUALITY_SAMPLES samples with the protocol seed (FID, the judge's label
    histogram, and the pixel std across samples)."""
    out = {}
    for name in ("dcgan_mnist", "dcgan_mnist_collapse"):
        model = load_pretrained(name)  # checks sha256 and config
        samples = model.sample(QUALITY_SAMPLES, torch.Generator().manual_seed(PROTOCOL_SEED))
        out[name] = evaluate_samples(samples) | {"pixel_std": samples.std(0).mean().item()}
    return out


def _shares(report):
    histogram = torch.tensor(report["class_histogram"], dtype=torch.float)
    return histogram / histogram.sum()


def test_shipped_gan_is_far_better_than_the_collapsed_one(shipped):
    assert shipped["dcgan_mnist"]["fid"] < 0.5 * shipped["dcgan_mnist_collapse"]["fid"]


@pytest.mark.parametrize("name", ["dcgan_mnist", "dcgan_mnist_collapse"])
def test_shipped_fid_matches_the_manifest(shipped, name):
    recorded = read_manifest()[name]["metrics"][f"fid_{QUALITY_SAMPLES}"]
    assert shipped[name]["fid"] == pytest.approx(recorded, rel=0.1)


def test_shipped_gan_draws_every_digit(shipped):
    assert (_shares(shipped["dcgan_mnist"]) >= 0.05).sum() >= 9


def test_collapsed_gan_draws_one_or_two_digits(shipped):
    """Mode collapse, as the judge sees it: its labels pile up on at most two digits."""
    shares = _shares(shipped["dcgan_mnist_collapse"])
    assert (shares >= 0.05).sum() <= 2
    assert shares.max() >= 0.5


def test_collapse_is_mode_collapse_not_a_blank_image(shipped):
    """The collapsed samples still differ a little (a saturated G gives one constant image, std 0), but
    far less than the healthy GAN's."""
    std = shipped["dcgan_mnist_collapse"]["pixel_std"]
    assert 0.02 < std < 0.6 * shipped["dcgan_mnist"]["pixel_std"]
