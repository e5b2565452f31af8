"""Latent diffusion's plumbing (minidiff.latents): the scaling factor, the decoder, the cache."""
import pytest
import torch

from minidiff.datasets.shapes import ShapesDataset
from minidiff import latents
from minidiff.models.autoencoder import VAE, VAEConfig, encode_all


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return VAE(VAEConfig(3, 32, 4, latent_channels=4, channels=8, likelihood="laplace", scaling_factor=2.5)).eval()


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_RUNS", str(tmp_path))
    return tmp_path


def test_the_scaling_factor_gives_latents_unit_spread():
    z = 7.0 * torch.randn(4000, 4, 8, 8, generator=torch.Generator().manual_seed(0)) + 3.0
    s = latents.measure_scaling_factor(z)
    assert s == pytest.approx(1 / 7.0, rel=0.01) and (s * z).std().item() == pytest.approx(1.0, rel=1e-4)


def test_latents_are_the_posterior_mean_scaled_and_the_decoder_undoes_the_scale(vae):
    images = ShapesDataset(6, seed=0).images
    z = latents.encode_latents(vae, images, batch_size=4)
    assert torch.allclose(z, 2.5 * encode_all(vae, images), atol=1e-6)
    assert torch.allclose(latents.latent_decoder(vae)(z), vae.decode(z / 2.5), atol=1e-6)


def test_the_cache_encodes_once_and_never_serves_another_autoencoders_latents(vae, runs):
    images = ShapesDataset(5, seed=0).images
    calls = []

    def make():
        calls.append(1)
        return images
    what = {"pictures": "shapes", "n": 5}
    first = latents.cached_latents(vae, "ab" * 32, what, make)
    again = latents.cached_latents(vae, "ab" * 32, what, make)
    assert torch.equal(first, again) and len(calls) == 1
    other = latents.cached_latents(vae, "cd" * 32, what, make)  # another autoencoder: encoded anew
    latents.cached_latents(vae, "ab" * 32, {"pictures": "shapes", "n": 6}, make)  # other pictures too
    assert len(calls) == 3 and torch.equal(other, first)
    assert len(list((runs / "latents").glob("*.safetensors"))) == 3


def test_a_damaged_cache_file_is_encoded_again(vae, runs):
    images = ShapesDataset(5, seed=0).images
    what = {"pictures": "shapes", "n": 5}
    first = latents.cached_latents(vae, "ab" * 32, what, lambda: images)
    (path,) = (runs / "latents").glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    assert torch.equal(latents.cached_latents(vae, "ab" * 32, what, lambda: images), first)
    assert path.read_bytes() != b"not a safetensors file"
