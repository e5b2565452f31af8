import math

import pytest
import torch

from minidiff.datasets.mnist import mnist_dataset
from minidiff.datasets.shapes import ShapesDataset
from minidiff.metrics import classifier_fid, psnr
from minidiff.models.autoencoder import (
    VAE,
    Autoencoder,
    AutoencoderConfig,
    VAEConfig,
    autoencoder_loss,
    decode_all,
    encode_all,
    evaluate_elbo,
    kl_divergence,
    random_codes,
    reconstruction_nll,
    reparameterize,
    stage_sizes,
    vae_loss,
)
from minidiff.train import TrainConfig, train
from minidiff.weights import load_pretrained, read_manifest


@pytest.mark.parametrize("downsample", [1, 2, 4, 8])
@pytest.mark.parametrize("in_channels, image_size", [(1, 28), (3, 32)])
def test_spatial_code_shapes_and_round_trip(downsample, in_channels, image_size):
    x = torch.rand(2, in_channels, image_size, image_size) * 2 - 1
    side = math.ceil(image_size / downsample)
    ae = Autoencoder(AutoencoderConfig(in_channels, image_size, downsample, latent_channels=3, channels=8))
    vae = VAE(VAEConfig(in_channels, image_size, downsample, latent_channels=3, channels=8))
    assert ae.encode(x).shape == (2, 3, side, side) == (2, *ae.latent_shape)
    assert ae(x).shape == x.shape
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, 3, side, side)
    assert vae.decode(mean).shape == x.shape


@pytest.mark.parametrize("downsample", [1, 4, 8])
def test_dense_code_shapes(downsample):
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    ae = Autoencoder(AutoencoderConfig(1, 28, downsample, latent_dim=7, channels=8))
    vae = VAE(VAEConfig(1, 28, downsample, latent_dim=2, channels=8))
    assert ae.encode(x).shape == (5, 7) and ae(x).shape == x.shape
    assert vae.encode(x)[0].shape == (5, 2) and vae(x).shape == x.shape
    assert vae.sample(3, torch.Generator().manual_seed(0)).shape == (3, 1, 28, 28)


def test_the_paper_sizes():
    """MNIST 28×28×1 → 7×7×4 and shapes 32×32×3 → 8×8×4 at f=4, as latent diffusion uses them."""
    assert VAE(VAEConfig(1, 28, 4, latent_channels=4)).latent_shape == (4, 7, 7)
    assert VAE(VAEConfig(3, 32, 4, latent_channels=4)).latent_shape == (4, 8, 8)
    assert stage_sizes(28, 8) == [28, 14, 7, 4]


def test_wrong_input_is_a_clear_error():
    vae = VAE(VAEConfig(1, 28, 4, latent_dim=2, channels=8))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        vae.encode(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        vae.decode(torch.zeros(2, 4, 7, 7))
    with pytest.raises(ValueError, match="downsample"):
        Autoencoder(AutoencoderConfig(downsample=3))


def test_bernoulli_decode_stays_in_range():
    vae = VAE(VAEConfig(1, 28, 4, latent_dim=2, channels=8))
    out = vae.decode(torch.randn(4, 2) * 100)
    assert out.min() >= -1 and out.max() <= 1


def test_kl_of_the_prior_itself_is_zero():
    zeros = torch.zeros(3, 4, 7, 7)
    assert torch.equal(kl_divergence(zeros, zeros), torch.zeros(3))


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(10), torch.ones(10))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(kl_divergence(mean, logvar), expected, atol=1e-5)


def test_kl_matches_a_monte_carlo_estimate():
    """KL(q‖p) = E_q[log q(z) − log p(z)], estimated with 200,000 reparameterised samples."""
    mean, logvar = torch.tensor([[0.8, -0.3]]), torch.tensor([[-1.0, 0.5]])
    torch.manual_seed(0)
    z = reparameterize(mean.expand(200_000, 2), logvar.expand(200_000, 2))
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(0.0, 1.0)
    estimate = (q.log_prob(z) - p.log_prob(z)).sum(1).mean()
    assert abs(estimate.item() - kl_divergence(mean, logvar).item()) < 0.01


def test_reparameterised_samples_have_the_requested_mean_and_variance():
    torch.manual_seed(0)
    z = reparameterize(torch.full((200_000,), 3.0), torch.full((200_000,), math.log(0.25)))
    assert abs(z.mean().item() - 3.0) < 0.01 and abs(z.var().item() - 0.25) < 0.01


def test_reparameterisation_passes_gradients_to_mean_and_variance():
    mean, logvar = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    reparameterize(mean, logvar).sum().backward()
    assert mean.grad is not None and logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_elbo_is_below_the_log_likelihood_bound():
    """For a Bernoulli likelihood log p(x|z) ≤ 0, so the ELBO is negative; and it equals −(rec + KL)."""
    vae = VAE(VAEConfig(1, 28, 4, latent_dim=4, channels=8))
    x = mnist_dataset("test", limit=16).tensors[0]
    report = evaluate_elbo(vae, x)
    assert report["reconstruction"] > 0 and report["kl"] >= 0
    assert report["elbo"] == pytest.approx(-(report["reconstruction"] + report["kl"])) and report["elbo"] < 0


@pytest.mark.parametrize("model, loss_fn", [
    (Autoencoder(AutoencoderConfig(1, 28, 4, latent_channels=2, channels=8)), autoencoder_loss),
    (VAE(VAEConfig(1, 28, 4, latent_dim=8, channels=8)), vae_loss),
    (VAE(VAEConfig(3, 32, 4, latent_channels=4, channels=8, likelihood="gaussian")), vae_loss)])
def test_loss_decreases_on_a_fixed_batch(model, loss_fn):
    torch.manual_seed(0)
    size, channels = model.config.image_size, model.config.in_channels
    batch = mnist_dataset("test", limit=16).tensors[0] if channels == 1 else ShapesDataset(16, seed=3).images
    before = loss_fn(model, batch)["loss"].item()
    result = train(model, loss_fn, batch, TrainConfig(steps=25, batch_size=16, lr=3e-3, warmup_steps=5,
                                                      ema_decay=None, progress=False, device="cpu"))
    after = loss_fn(result.model, batch)["loss"].item()
    assert batch.shape[-1] == size and after < before - 0.1 * abs(before)


def test_random_codes_match_the_given_statistics():
    ae = Autoencoder(AutoencoderConfig(1, 28, 4, latent_dim=3, channels=8))
    like = torch.tensor([[0.0, 10.0, -5.0], [2.0, 14.0, -5.5]])
    codes = random_codes(ae, 50_000, torch.Generator().manual_seed(0), like=like)
    assert torch.allclose(codes.mean(0), like.mean(0), atol=0.05)
    assert torch.allclose(codes.std(0), like.std(0), rtol=0.03)


# ----------------------------------------------------------------------------- shipped weights

MNIST_MODELS = sorted(name for name, entry in read_manifest().items()  # the shipped MNIST codecs
                      if entry["model"] in ("Autoencoder", "VAE") and entry["config"]["in_channels"] == 1)


@pytest.fixture(scope="module")
def test_digits():
    return mnist_dataset("test", limit=1000).tensors[0]


@pytest.mark.parametrize("name", MNIST_MODELS)
def test_shipped_mnist_models_reconstruct_as_recorded(name, test_digits):
    """Hash-checked load, then PSNR on 1,000 test digits within 0.5 dB of the manifest's 10,000."""
    model = load_pretrained(name)
    measured = psnr(decode_all(model, encode_all(model, test_digits)), test_digits)
    assert abs(measured - read_manifest()[name]["metrics"]["test_psnr"]) < 0.5


def test_bigger_bottleneck_reconstructs_better():
    """49 < 98 < 196 numbers improve PSNR; at 392 the short training, not the bottleneck, limits it."""
    c1, c2, c4, c8 = (read_manifest()[f"ae_mnist_c{c}"]["metrics"]["test_psnr"] for c in (1, 2, 4, 8))
    assert c1 < c2 < c4 and c8 > c4 - 0.5


@pytest.mark.slow
def test_vae_prior_samples_beat_decoded_random_codes(test_digits):
    """500 prior samples of the VAE against 500 decoded random codes of the 7×7×4 autoencoder."""
    vae = load_pretrained("vae_mnist")
    ae = load_pretrained("ae_mnist_c4")
    vae_fid = classifier_fid(vae.sample(500, torch.Generator().manual_seed(0)))
    codes = random_codes(ae, 500, torch.Generator().manual_seed(0), like=encode_all(ae, test_digits))
    ae_fid = classifier_fid(decode_all(ae, codes))
    assert vae_fid < 0.6 * ae_fid  # recorded at 2,000 samples: 302 vs 673


def test_shapes_vae_keeps_the_shapes():
    vae = load_pretrained("vae_shapes")
    assert vae.latent_shape == (4, 8, 8)
    held_out = ShapesDataset(300, seed=1).images
    measured = psnr(decode_all(vae, encode_all(vae, held_out)), held_out)
    metrics = read_manifest()["vae_shapes"]["metrics"]
    assert measured >= 28 and abs(measured - metrics["test_psnr"]) < 0.5
    assert 0.1 < metrics["scaling_factor"] < 10


@pytest.mark.parametrize("likelihood, distribution", [
    ("gaussian", lambda mean, s: torch.distributions.Normal(mean, s)),
    ("laplace", lambda mean, s: torch.distributions.Laplace(mean, s))])
def test_reconstruction_nll_is_the_likelihoods_log_density(likelihood, distribution):
    """−log p(x|z) per image equals torch.distributions' log-density summed over the pixels."""
    torch.manual_seed(0)
    vae = VAE(VAEConfig(3, 32, 4, latent_channels=4, channels=8, likelihood=likelihood, sigma_x=0.2))
    x, z = ShapesDataset(3, seed=3).images, torch.randn(3, 4, 8, 8)
    reference = -distribution(vae.decode_logits(z), 0.2).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(reconstruction_nll(vae, z, x), reference, rtol=1e-5)
