"""Latent diffusion's plumbing (minidiff.latents): the scaling factor, the decoder, the cache."""
import pytest
import torch

from minidiff import latents
from minidiff.datasets.shapes import ShapesDataset
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


def test_a_latent_denoiser_comes_with_the_decoder_it_was_trained_for_and_no_other(vae, tmp_path):
    from minidiff.files import DataError
    from minidiff.models.unet import UNet, UNetConfig
    from minidiff.weights import read_manifest, save_weights

    def ship(model, name, **record):
        save_weights(model, name, directory=tmp_path, recipe=f"python -m minidiff train {name}", data="test",
                     steps=1, wall_time_s=0.0, **record)
    unet = UNet(UNetConfig(in_channels=4, image_size=8, channels=(8, 16), attention=(False, False), groups=4))
    ship(vae, "vae_x")
    ship(unet, "ldm_x", autoencoder={"name": "vae_x", "sha256": read_manifest(tmp_path)["vae_x"]["sha256"]})
    ship(unet, "pixel_x")
    assert latents.load_denoiser("pixel_x", directory=tmp_path)[1] is None
    model, decode = latents.load_denoiser("ldm_x", directory=tmp_path)
    z = torch.randn(2, 4, 8, 8)
    assert torch.allclose(decode(z), vae.decode(z / 2.5), atol=1e-5)
    with torch.no_grad():
        vae.decoder.out.bias.add_(0.1)  # another autoencoder under the same name
    ship(vae, "vae_x")
    with pytest.raises(DataError, match="was trained on the latents of vae_x .* would decode wrongly"):
        latents.load_denoiser("ldm_x", directory=tmp_path)


# ----------------------------------------------------------------------------- the shipped autoencoder


def test_the_shipped_autoencoder_squeezes_48_times_and_keeps_every_attribute():
    """1,000 test renders (the manifest has 10,000): the judge reads every attribute of ≥ 99.5 % of the
    reconstructions, as recorded; 64×64×3 = 12,288 numbers become 8×8×4 = 256."""
    from minidiff.course.recipes.latent import reconstruction_report
    from minidiff.datasets.shapes import TEST_SEED
    from minidiff.weights import load_pretrained, read_manifest
    vae = load_pretrained("vae_shapes_f8")
    assert vae.latent_shape == (4, 8, 8) and 3 * 64 * 64 // (4 * 8 * 8) == 48
    data = ShapesDataset(1000, seed=TEST_SEED, size=64, compositions="train")
    report = reconstruction_report(vae, data.images, data.attributes)
    recorded = read_manifest()["vae_shapes_f8"]["metrics"]["test"]
    assert min(report["accuracy"].values()) >= 0.99 and min(recorded["accuracy"].values()) >= 0.995
    assert min(recorded["shape_accuracy"].values()) >= 0.995  # small squares and triangles included
    assert abs(report["psnr"] - recorded["psnr"]) < 0.5


@pytest.mark.parametrize("f", [4, 8])
def test_each_shipped_autoencoder_keeps_every_attribute_of_the_held_out_compositions(f):
    """The compression sweep's autoencoders, on 300 renders of compositions no model trained on."""
    from minidiff.course.recipes.latent import reconstruction_report
    from minidiff.datasets.shapes import TEST_SEED
    from minidiff.weights import load_pretrained
    vae = load_pretrained(f"vae_shapes_f{f}")
    assert vae.latent_shape == (4, 64 // f, 64 // f)
    held = ShapesDataset(300, seed=TEST_SEED, size=64, compositions="held_out")
    assert reconstruction_report(vae, held.images, held.attributes)["all_correct"] >= 0.99


def test_the_shipped_scaling_factor_gives_the_training_latents_unit_spread():
    from minidiff.course.recipes.latent import training_pictures
    from minidiff.weights import load_pretrained
    vae = load_pretrained("vae_shapes_f8")
    z = latents.encode_latents(vae, training_pictures(fast=True))
    assert z.std().item() == pytest.approx(1.0, abs=0.05)  # measured on all 20,000; these are the first 2,000


@pytest.mark.slow
def test_the_shipped_latent_model_draws_shapes_the_judge_accepts_in_the_datas_proportions():
    """500 samples (DPM-Solver++(2M) × 20, decoded): judge-FID within 2× the floor at the same count
    (at the protocol's 2,000: 1.30×), every value of every attribute drawn."""
    from minidiff.diffusion.pipeline import generate
    from minidiff.metrics import evaluate_shapes, shapes_real_vs_real_fid
    model, decode = latents.load_denoiser("ldm_shapes")
    assert decode is not None and model.sample_shape == (4, 8, 8)
    pictures = generate(model, 500, sampler="dpmpp_2m", num_inference_steps=20, seed=0, decode=decode,
                        progress=False)
    assert pictures.shape == (500, 3, 64, 64)
    report = evaluate_shapes(pictures)
    assert report["fid"] < 2 * shapes_real_vs_real_fid(64, n=500)
    assert report["worst_share"] < 0.5 and all(min(h.values()) > 0 for h in report["histograms"].values())
