"""Chapters 01–02: the autoencoders (one per bottleneck) and the VAEs (MNIST, a 2-d map, shapes)."""
import functools

import torch
from torch.utils.data import TensorDataset

from minidiff.course.recipes.common import RECIPES, finish, recipe_config
from minidiff.datasets.mnist import mnist_dataset
from minidiff.datasets.shapes import ShapesDataset
from minidiff.metrics import PROTOCOL_SAMPLES, PROTOCOL_SEED, classifier_fid, evaluate_samples, psnr, real_vs_real_fid
from minidiff.models.autoencoder import (
    VAE,
    Autoencoder,
    AutoencoderConfig,
    VAEConfig,
    autoencoder_loss,
    decode_all,
    encode_all,
    evaluate_elbo,
    random_codes,
    vae_loss,
)
from minidiff.train import train

AE_LATENT_CHANNELS = (1, 2, 4, 8)  # chapter 01's bottlenecks: 7×7×c = 49, 98, 196, 392 numbers for 784 pixels


def _train_codec(name, model, loss_fn, data, steps, batch_size, fast, device):
    """Settings every autoencoder shares: AdamW 2e-3, warm-up then cosine decay; the EMA weights ship."""
    config = recipe_config(name, fast, device, steps=steps, batch_size=batch_size, lr=2e-3,
                           warmup_steps=10 if fast else 200, ema_decay=0.999)
    result = train(model, loss_fn, data, config, resume=True)
    return result.ema.cpu().eval(), result


def _ae_mnist(latent_channels: int, fast: bool = False, device: str = "auto") -> dict:
    """Convolutional autoencoder on MNIST, f=4, a 7×7×c code; 600 steps (1.3 epochs), 6–10 min on 1 core.

    Metrics: test PSNR, and the classifier-FID of 2,000 decoded *random* codes (protocol seed),
    drawn from a Gaussian with the per-number mean and std of the 10,000 test codes (the fairest
    random code an AE allows) and, for comparison, from N(0, I).
    """
    name = f"ae_mnist_c{latent_channels}"
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(in_channels=1, image_size=28, downsample=4, latent_channels=latent_channels,
                                          channels=16))
    ae, result = _train_codec(name, model, autoencoder_loss, mnist_dataset("train"), 600, 128, fast, device)
    test = mnist_dataset("test").tensors[0]
    codes = encode_all(ae, test)
    generator = torch.Generator().manual_seed(PROTOCOL_SEED)
    matched = decode_all(ae, random_codes(ae, PROTOCOL_SAMPLES, generator, like=codes))
    standard = decode_all(ae, random_codes(ae, PROTOCOL_SAMPLES, generator))
    metrics = {"test_psnr": psnr(decode_all(ae, codes), test), "latent_numbers": codes[0].numel(),
               "random_code_fid": classifier_fid(matched), "standard_normal_code_fid": classifier_fid(standard),
               "real_vs_real_fid": real_vs_real_fid()}
    return finish(ae, name, result, fast, "MNIST train (60,000); PSNR on MNIST test (10,000); FID of 2,000 "
                  "random codes (seed 0) matched to the test codes' per-number mean/std", metrics,
                  better=("test_psnr", "higher"))


for _c in AE_LATENT_CHANNELS:
    RECIPES.register(functools.partial(_ae_mnist, _c), name=f"ae_mnist_c{_c}")


@RECIPES.register
def ae_mnist(fast: bool = False, device: str = "auto") -> dict:
    """Chapter 01's bottleneck family: trains ``ae_mnist_c1``, ``_c2``, ``_c4`` and ``_c8`` in turn."""
    return {f"ae_mnist_c{c}": _ae_mnist(c, fast, device) for c in AE_LATENT_CHANNELS}


def _vae_mnist(name: str, latent_dim: int, steps: int, fast: bool, device: str) -> dict:
    """Dense-latent VAE on MNIST with a Bernoulli likelihood and β = 1 (the true ELBO).

    Metrics: test PSNR of μ's reconstruction, test reconstruction NLL / KL / ELBO in nats per image
    (one posterior sample per image), and the protocol's evaluation of 2,000 prior samples (seed 0).
    """
    torch.manual_seed(0)
    model = VAE(VAEConfig(in_channels=1, image_size=28, downsample=4, latent_dim=latent_dim, channels=16,
                          likelihood="bernoulli"))
    vae, result = _train_codec(name, model, vae_loss, mnist_dataset("train"), steps, 128, fast, device)
    test = mnist_dataset("test").tensors[0]
    samples = vae.sample(PROTOCOL_SAMPLES, torch.Generator().manual_seed(PROTOCOL_SEED)).clamp(-1, 1)
    report = evaluate_samples(samples)
    metrics = {"test_psnr": psnr(decode_all(vae, encode_all(vae, test)), test),
               **{f"test_{k}_nats": v for k, v in evaluate_elbo(vae, test).items()},
               "prior_sample_fid": report["fid"], "prior_sample_confidence": report["confidence"],
               "prior_sample_class_histogram": report["class_histogram"], "real_vs_real_fid": real_vs_real_fid()}
    return finish(vae, name, result, fast, "MNIST train (60,000); ELBO and PSNR on MNIST test (10,000); "
                  "FID of 2,000 prior samples (seed 0)", metrics, better=("prior_sample_fid", "lower"))


@RECIPES.register
def vae_mnist(fast: bool = False, device: str = "auto") -> dict:
    """Chapter 02's VAE: a 16-number global code whose prior samples are recognisable digits."""
    return _vae_mnist("vae_mnist", 16, 1200, fast, device)


@RECIPES.register
def vae_mnist_2d(fast: bool = False, device: str = "auto") -> dict:
    """A VAE with a 2-number code, so the whole latent space is one picture (chapter 02's map)."""
    return _vae_mnist("vae_mnist_2d", 2, 800, fast, device)


@RECIPES.register
def vae_shapes(fast: bool = False, device: str = "auto") -> dict:
    """VAE on the shapes set, f=4: 32×32×3 → 8×8×4, the latent space of latent diffusion (chapter 07).

    Gaussian likelihood with σ_x = 0.1 and β = 0.5, so the KL term weighs only β·2σ_x² = 1 % of a
    plain sum of squared errors and reconstructions keep shape, colour and position (PSNR on 2,000
    held-out shapes, seed 1). Records the latent μ's mean and std over the training set and
    ``scaling_factor`` = 1/std, which scales latents to unit variance for diffusion (Stable
    Diffusion's 0.18215 plays the same role).
    """
    torch.manual_seed(0)
    model = VAE(VAEConfig(in_channels=3, image_size=32, downsample=4, latent_channels=4, channels=16,
                          likelihood="gaussian", sigma_x=0.1))
    train_images = ShapesDataset(20000, seed=0).images
    vae, result = _train_codec("vae_shapes", model, functools.partial(vae_loss, beta=0.5),
                               TensorDataset(train_images), 2000, 64, fast, device)
    test = ShapesDataset(2000, seed=1).images
    latents = encode_all(vae, train_images)
    metrics = {"test_psnr": psnr(decode_all(vae, encode_all(vae, test)), test), "beta": 0.5,
               **{f"test_{k}_nats": v for k, v in evaluate_elbo(vae, test).items()},
               "latent_mean": latents.mean().item(), "latent_std": latents.std().item(),
               "scaling_factor": 1 / latents.std().item()}
    return finish(vae, "vae_shapes", result, fast, "shapes seed 0 (20,000) for training; PSNR and ELBO on "
                  "shapes seed 1 (2,000)", metrics, better=("test_psnr", "higher"))
