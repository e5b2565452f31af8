"""Recipes: one command re-creates each shipped checkpoint, e.g. ``python -m minidiff train mnist_classifier``.

A recipe builds a model, trains it with the one trainer (``minidiff.train``), measures it, and saves
its weights with a manifest entry (sha256, data, steps, wall time, hardware, metrics). Training
state goes to ``runs/<name>/`` so an interrupted recipe resumes where it stopped. ``fast=True`` is a
few-step smoke run that writes to ``runs/`` only and never touches the shipped weights.
"""
import functools
import os
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from .autoencoder import (VAE, Autoencoder, autoencoder_loss, decode_all, encode_all, evaluate_elbo,
                          random_codes, vae_loss)
from .checkpoints import describe_segments, save_weights
from .classifier import MNISTClassifier, classifier_loss, predict
from .data import mnist_dataset
from .diffusion import unet_loss
from .gan import GAN, gan_parts, make_gan_loss
from .metrics import (PROTOCOL_SAMPLES, PROTOCOL_SEED, classifier_fid, evaluate_samples, psnr,
                      real_vs_real_fid)
from .samplers import generate
from .shapes import ShapesDataset
from .train import TrainConfig, train
from .unet import UNet

RECIPES = {}


def recipe(fn):
    RECIPES[fn.__name__] = fn
    return fn


def _out_dir(name, fast):
    """Resumable training state: ``runs/<name>`` (or under ``$MINIDIFF_RUNS``)."""
    return str(Path(os.environ.get("MINIDIFF_RUNS", "runs")) / (f"{name}-fast" if fast else name))


@recipe
def mnist_classifier(fast: bool = False, device: str = "auto") -> dict:
    """The judge for the course's evaluation protocol: ≥ 99 % MNIST test accuracy, ~6 min on 2 cores.

    8 epochs of 60,000 shifted digits (±2 px), AdamW 2e-3 with warm-up and cosine decay; the EMA
    weights are shipped. Its 128-d features define the course's FID (``minidiff.metrics``).
    """
    torch.manual_seed(0)
    model = MNISTClassifier()
    config = TrainConfig(steps=30 if fast else 3750, batch_size=128, lr=2e-3, weight_decay=0.05,
                         warmup_steps=200, ema_decay=0.999, seed=0, device=device, log_every=50,
                         checkpoint_every=500, out_dir=_out_dir("mnist_classifier", fast))
    result = train(model, classifier_loss, mnist_dataset("train"), config, resume=True)
    classifier = result.ema.cpu()
    test = mnist_dataset("test")
    _, logits = predict(classifier, test.tensors[0])
    metrics = {"test_accuracy": (logits.argmax(1) == test.tensors[1]).float().mean().item()}
    started = time.perf_counter()
    metrics["real_vs_real_fid"] = real_vs_real_fid(classifier=classifier)
    metrics["real_vs_real_seconds"] = round(time.perf_counter() - started, 1)
    return _ship(classifier, "mnist_classifier", result, fast,
                 "MNIST train (60,000, data/mnist); evaluated on MNIST test (10,000)", metrics)


# ----------------------------------------------------------------------------- chapters 01–02: autoencoders and VAEs

AE_LATENT_CHANNELS = (1, 2, 4, 8)  # chapter 01's bottlenecks: 7×7×c = 49, 98, 196, 392 numbers for 784 pixels


def _train_codec(name, model, loss_fn, data, steps, batch_size, fast, device):
    """Settings every autoencoder shares: AdamW 2e-3, warm-up then cosine decay; the EMA weights ship."""
    config = TrainConfig(steps=20 if fast else steps, batch_size=batch_size, lr=2e-3,
                         warmup_steps=10 if fast else 200, ema_decay=0.999, seed=0, device=device,
                         log_every=50, checkpoint_every=500, out_dir=_out_dir(name, fast))
    result = train(model, loss_fn, data, config, resume=True)
    return result.ema.cpu().eval(), result


def _ship(model, name, result, fast, data, metrics, recipe_options=""):
    metrics["torch_threads"] = torch.get_num_threads()  # wall time means little without it
    if not fast:
        save_weights(model, name, recipe=f"python -m minidiff train {name}{recipe_options}", data=data,
                     steps=result.steps, wall_time_s=result.wall_time_s, hardware=describe_segments(result.segments),
                     metrics=metrics)
    return metrics


def _ae_mnist(latent_channels: int, fast: bool = False, device: str = "auto") -> dict:
    """Convolutional autoencoder on MNIST, f=4, a 7×7×c code; 600 steps (1.3 epochs), 6–10 min on 1 core.

    Metrics: test PSNR, and the classifier-FID of 2,000 decoded *random* codes (protocol seed),
    drawn from a Gaussian with the per-number mean and std of the 10,000 test codes (the fairest
    random code an AE allows) and, for comparison, from N(0, I).
    """
    name = f"ae_mnist_c{latent_channels}"
    torch.manual_seed(0)
    model = Autoencoder(in_channels=1, image_size=28, downsample=4, latent_channels=latent_channels, channels=16)
    ae, result = _train_codec(name, model, autoencoder_loss, mnist_dataset("train"), 600, 128, fast, device)
    test = mnist_dataset("test").tensors[0]
    codes = encode_all(ae, test)
    generator = torch.Generator().manual_seed(PROTOCOL_SEED)
    matched = decode_all(ae, random_codes(ae, PROTOCOL_SAMPLES, generator, like=codes))
    standard = decode_all(ae, random_codes(ae, PROTOCOL_SAMPLES, generator))
    metrics = {"test_psnr": psnr(decode_all(ae, codes), test), "latent_numbers": codes[0].numel(),
               "random_code_fid": classifier_fid(matched), "standard_normal_code_fid": classifier_fid(standard),
               "real_vs_real_fid": real_vs_real_fid()}
    return _ship(ae, name, result, fast, "MNIST train (60,000); PSNR on MNIST test (10,000); FID of 2,000 "
                 "random codes (seed 0) matched to the test codes' per-number mean/std", metrics)


for _c in AE_LATENT_CHANNELS:
    RECIPES[f"ae_mnist_c{_c}"] = functools.partial(_ae_mnist, _c)


@recipe
def ae_mnist(fast: bool = False, device: str = "auto") -> dict:
    """Chapter 01's bottleneck family: trains ``ae_mnist_c1``, ``_c2``, ``_c4`` and ``_c8`` in turn."""
    return {f"ae_mnist_c{c}": _ae_mnist(c, fast, device) for c in AE_LATENT_CHANNELS}


def _vae_mnist(name: str, latent_dim: int, steps: int, fast: bool, device: str) -> dict:
    """Dense-latent VAE on MNIST with a Bernoulli likelihood and β = 1 (the true ELBO).

    Metrics: test PSNR of μ's reconstruction, test reconstruction NLL / KL / ELBO in nats per image
    (one posterior sample per image), and the protocol's evaluation of 2,000 prior samples (seed 0).
    """
    torch.manual_seed(0)
    model = VAE(in_channels=1, image_size=28, downsample=4, latent_dim=latent_dim, channels=16,
                likelihood="bernoulli")
    vae, result = _train_codec(name, model, vae_loss, mnist_dataset("train"), steps, 128, fast, device)
    test = mnist_dataset("test").tensors[0]
    samples = vae.sample(PROTOCOL_SAMPLES, torch.Generator().manual_seed(PROTOCOL_SEED)).clamp(-1, 1)
    report = evaluate_samples(samples)
    metrics = {"test_psnr": psnr(decode_all(vae, encode_all(vae, test)), test),
               **{f"test_{k}_nats": v for k, v in evaluate_elbo(vae, test).items()},
               "prior_sample_fid": report["fid"], "prior_sample_confidence": report["confidence"],
               "prior_sample_class_histogram": report["class_histogram"], "real_vs_real_fid": real_vs_real_fid()}
    return _ship(vae, name, result, fast, "MNIST train (60,000); ELBO and PSNR on MNIST test (10,000); "
                 "FID of 2,000 prior samples (seed 0)", metrics)


@recipe
def vae_mnist(fast: bool = False, device: str = "auto") -> dict:
    """Chapter 02's VAE: a 16-number global code whose prior samples are recognisable digits."""
    return _vae_mnist("vae_mnist", 16, 1200, fast, device)


@recipe
def vae_mnist_2d(fast: bool = False, device: str = "auto") -> dict:
    """A VAE with a 2-number code, so the whole latent space is one picture (chapter 02's map)."""
    return _vae_mnist("vae_mnist_2d", 2, 800, fast, device)


@recipe
def vae_shapes(fast: bool = False, device: str = "auto") -> dict:
    """VAE on the shapes set, f=4: 32×32×3 → 8×8×4, the latent space of latent diffusion (chapter 07).

    Gaussian likelihood with σ_x = 0.1 and β = 0.5, so the KL term weighs only β·2σ_x² = 1 % of a
    plain sum of squared errors and reconstructions keep shape, colour and position (PSNR on 2,000
    held-out shapes, seed 1). Records the latent μ's mean and std over the training set and
    ``scaling_factor`` = 1/std, which scales latents to unit variance for diffusion (Stable
    Diffusion's 0.18215 plays the same role).
    """
    torch.manual_seed(0)
    model = VAE(in_channels=3, image_size=32, downsample=4, latent_channels=4, channels=16,
                likelihood="gaussian", sigma_x=0.1)
    train_images = ShapesDataset(20000, seed=0).images
    vae, result = _train_codec("vae_shapes", model, functools.partial(vae_loss, beta=0.5),
                               TensorDataset(train_images), 2000, 64, fast, device)
    test = ShapesDataset(2000, seed=1).images
    latents = encode_all(vae, train_images)
    metrics = {"test_psnr": psnr(decode_all(vae, encode_all(vae, test)), test), "beta": 0.5,
               **{f"test_{k}_nats": v for k, v in evaluate_elbo(vae, test).items()},
               "latent_mean": latents.mean().item(), "latent_std": latents.std().item(),
               "scaling_factor": 1 / latents.std().item()}
    return _ship(vae, "vae_shapes", result, fast, "shapes seed 0 (20,000) for training; PSNR and ELBO on "
                 "shapes seed 1 (2,000)", metrics)


# ----------------------------------------------------------------------------- chapter 03: GAN

def _measure_gan(model) -> dict:
    """The protocol for an unconditional generator: classifier-FID of 2,000 samples (seed 0), beside
    real-vs-real; the FID of 500 (what ``tests/test_gan.py`` re-measures); and class coverage, the
    judge's labels on 10,000 samples: how many digits get ≥ 5 % and the entropy (log2 10 = 3.32 bits
    when every digit is equally common); and the pixel std across those samples (0 if all are equal)."""
    def seeded():
        return torch.Generator().manual_seed(PROTOCOL_SEED)
    many = model.sample(10_000, seeded())
    histogram = torch.tensor(evaluate_samples(many)["class_histogram"])
    shares = histogram.double() / histogram.sum()
    return {"fid": classifier_fid(model.sample(PROTOCOL_SAMPLES, seeded())),
            "fid_500": classifier_fid(model.sample(500, seeded())),
            "real_vs_real_fid": real_vs_real_fid(),
            "class_histogram": histogram.tolist(),
            "classes_over_5_percent": int((shares >= 0.05).sum()),
            "class_entropy_bits": float((shares[shares > 0] * (1 / shares[shares > 0]).log2()).sum()),
            "sample_pixel_std": many.std(0).mean().item()}


def _train_gan(name, fast, device, data_note, *, steps, lr, betas, warmup_steps=50, g_norm="batch",
               loss="nonsaturating", r1_gamma=0.0):
    """Both GAN recipes: DCGAN on the 60,000 MNIST training digits, batch 64, the one trainer with
    ``parts`` (D step, then G step); the EMA weights (G's running average) ship."""
    torch.manual_seed(0)
    model = GAN(z_dim=64, g_channels=16, d_channels=32, g_norm=g_norm)
    config = TrainConfig(steps=20 if fast else steps, batch_size=64, lr=lr, betas=betas, grad_clip=None,
                         warmup_steps=10 if fast else warmup_steps, ema_decay=0.999, seed=0, device=device,
                         log_every=50, checkpoint_every=500, out_dir=_out_dir(name, fast))
    result = train(model, make_gan_loss(loss, r1_gamma), mnist_dataset("train"), config,
                   parts=gan_parts(model), resume=True)
    gan = result.ema.cpu().eval()
    return _ship(gan, name, result, fast, data_note, _measure_gan(gan))


@recipe
def dcgan_mnist(fast: bool = False, device: str = "auto") -> dict:
    """Chapter 03's GAN: non-saturating loss, Adam(β1 = 0.5) at 3e-4 for both players (DCGAN's settings).

    2,400 steps at batch 64 (2.6 epochs): ~0.4 s/step on one CPU thread, so ~16 min on an idle
    2-core laptop (the shipped run took 33 min on 1 thread sharing its 2 cores with other training).
    """
    return _train_gan("dcgan_mnist", fast, device, "MNIST train (60,000); FID of 2,000 samples (seed 0) vs "
                      "MNIST test; class histogram of 10,000 samples", steps=2400, lr=3e-4, betas=(0.5, 0.999))


@recipe
def dcgan_mnist_collapse(fast: bool = False, device: str = "auto") -> dict:
    """Chapter 03's failure: the same GAN collapses to a single image, reproducibly (seed 0, CPU).

    Three changes from ``dcgan_mnist``: no BatchNorm in G (which the DCGAN paper found "critical ...
    preventing the generator from collapsing all samples to a single point"), G's learning rate 5× D's,
    and Adam's β1 = 0.9 instead of 0.5 (more momentum, so G overshoots). Unnormalised activations
    grow, and G's large steps push its output pre-activations to ≈ −30, deep in tanh's flat tail:
    every z gives the same all-black image, D rejects it with certainty, and since tanh'(−30) ≈ 0,
    G's gradient is practically zero (< 1e-3) from step 100 on — the game is over.
    """
    return _train_gan("dcgan_mnist_collapse", fast, device, "MNIST train (60,000); FID of 2,000 samples "
                      "(seed 0) vs MNIST test; class histogram of 10,000 samples", steps=300,
                      lr={"discriminator": 2e-4, "generator": 1e-3}, betas=(0.9, 0.999), warmup_steps=20,
                      g_norm="none")


# ----------------------------------------------------------------------------- chapters 04–05: the pixel-space denoiser

def ddpm_mnist_model(num_classes: int | None = None) -> UNet:
    """The course's MNIST denoiser: 2×2 patches (28×28×1 → 14×14×4), then 32-64 channels at 14-7
    positions, two residual blocks per level, attention at 7×7; 1.0M parameters and 70M
    multiply-adds per image, 350–550 images/s forward on 2 CPU cores (AVX2). v-prediction on the
    cosine schedule."""
    return UNet(1, 28, channels=(32, 64), attention=(False, True), num_res_blocks=2, dropout=0.0,
                num_classes=num_classes, prediction_type="v_prediction", schedule="cosine", patch_size=2)


def ddpm_mnist_config(steps: int, fast: bool, out_dir: str | None, device: str = "auto",
                      progress: bool = True) -> TrainConfig:
    """How minidiff trains a diffusion model on a CPU budget: as DDPM did, a constant learning rate
    after a warm-up and an EMA of the weights (whose warm-up lets a short run's average forget its
    random start), with min-SNR-5 weighting (in ``unet_loss``). Nothing depends on the total number
    of steps, so a run of n steps is the start of every longer run: train as long as you can afford,
    and extend a finished run later by resuming it with more ``steps``."""
    return TrainConfig(steps=steps, batch_size=128, lr=1e-3, weight_decay=0.0, warmup_steps=5 if fast else 500,
                       min_lr_ratio=1.0, grad_clip=1.0, ema_decay=0.9995, seed=0, device=device, log_every=50,
                       checkpoint_every=None if fast else 250, out_dir=out_dir, progress=progress)


DDPM_MNIST_STEPS = 3000


def _ddpm_mnist(name: str, num_classes: int | None, steps: int | None, fast: bool, device: str) -> dict:
    """Train (``steps`` defaults to ``DDPM_MNIST_STEPS``; more resumes and extends a finished run),
    measure with the protocol (DPM-Solver++(2M), 20 steps: the quick figure; the 1,000-step ancestral
    figure comes from ``benchmarks/fid_vs_nfe.py``), and ship the EMA weights."""
    options = f" --steps {steps}" if steps and steps != DDPM_MNIST_STEPS else ""
    steps = steps or DDPM_MNIST_STEPS
    torch.manual_seed(0)
    config = ddpm_mnist_config(20 if fast else steps, fast, _out_dir(name, fast), device)
    result = train(ddpm_mnist_model(num_classes), unet_loss, mnist_dataset("train"), config, resume=True)
    model = result.ema.cpu().eval()
    n = 200 if fast else PROTOCOL_SAMPLES
    labels = None if num_classes is None else torch.arange(n) % num_classes
    guidance = 1.0 if num_classes is None else 3.0
    images = generate(model, n, sampler="dpmpp_2m", num_inference_steps=20, labels=labels,
                      guidance_scale=guidance, seed=PROTOCOL_SEED)
    report = evaluate_samples(images, labels)
    metrics = {"parameters": sum(p.numel() for p in model.parameters()), "fid_dpmpp_2m_20": report["fid"],
               "class_histogram": report["class_histogram"], "confidence": report["confidence"],
               "real_vs_real_fid": real_vs_real_fid(),
               "loss_curve": [[h["step"], round(h["loss"], 5)] for h in result.history]}
    if labels is not None:
        metrics.update(guidance_scale=guidance, accuracy=report["accuracy"],
                       per_class_accuracy=report["per_class_accuracy"])
    data = "MNIST train (60,000); FID of 2,000 samples (seed 0) vs MNIST test"
    return _ship(model, name, result, fast, data, metrics, options)


@recipe
def ddpm_mnist(fast: bool = False, device: str = "auto", steps: int | None = None) -> dict:
    """Chapter 05's unconditional denoiser."""
    return _ddpm_mnist("ddpm_mnist", None, steps, fast, device)


@recipe
def ddpm_mnist_cond(fast: bool = False, device: str = "auto", steps: int | None = None) -> dict:
    """Chapter 05's class-conditional denoiser ("draw me a 7"): 10 % of labels dropped to the null
    label during training, so classifier-free guidance works."""
    return _ddpm_mnist("ddpm_mnist_cond", 10, steps, fast, device)
