"""Chapter 07: latent diffusion on the 64×64 shapes — the autoencoders (f = 2, 4, 8), the latent
denoiser ``ldm_shapes`` and its pixel-space twin ``pixel_shapes``, all trained on the training
compositions only (``HELD_OUT`` is never seen) and measured with the shapes protocol."""
import functools
import math

import torch
from torch.utils.data import TensorDataset

from minidiff.course.recipes.common import RECIPES, finish, recipe_config, run_dir
from minidiff.course.recipes.ddpm import ddpm_mnist_config
from minidiff.datasets.shapes import ATTRIBUTES, TEST_SEED, TRAIN_SEED, ShapesDataset, attribute_labels
from minidiff.diffusion.loss import unet_loss
from minidiff.diffusion.pipeline import generate
from minidiff.files import save_safetensors_atomic
from minidiff.latents import cached_latents, latent_decoder, measure_scaling_factor
from minidiff.metrics import (
    PROTOCOL_SAMPLES,
    PROTOCOL_SEED,
    SHAPES_REFERENCE,
    evaluate_shapes,
    frechet_distance,
    gaussian_stats,
    judge_read,
    psnr,
    shapes_real_vs_real_fid,
)
from minidiff.models.autoencoder import VAE, VAEConfig, decode_all, encode_all, vae_loss
from minidiff.models.gan import PatchDiscriminator
from minidiff.models.latent_codec import VAEWithCritic, adversarial_vae_loss, critic_parts
from minidiff.models.unet import UNet, UNetConfig
from minidiff.train import train
from minidiff.weights import load_pretrained, read_manifest

SIZE = 64                  # the colour chapters' pictures: 64×64×3 = 12,288 numbers
TRAIN_PICTURES = 20_000    # training renders (seed TRAIN_SEED, training compositions) for every model here
SNAPSHOT_EVERY = 250       # EMA weights kept this often, for the FID-against-wall-time curves


def training_pictures(fast: bool) -> torch.Tensor:
    """The pictures every chapter-07 model trains on: (N, 3, 64, 64) in [-1, 1]."""
    return ShapesDataset(2000 if fast else TRAIN_PICTURES, seed=TRAIN_SEED, size=SIZE, compositions="train").images


# ---------------------------------------------------------------------------------------------
# The autoencoders

CODEC_FACTORS = (2, 4, 8)  # 64×64×3 → 32×32×4 (3×), 16×16×4 (12×), 8×8×4 (48×, Stable Diffusion's squeeze)


def reconstruction_report(vae, images: torch.Tensor, attributes: list[dict]) -> dict:
    """How much of the pictures an autoencoder keeps: the judge's per-attribute accuracy on the
    reconstructions (and its shape accuracy for each shape and size, where small squares fail first),
    the share with every attribute kept, PSNR, and the judge-FID of the reconstructions against the
    pictures themselves (0: the judge sees no difference)."""
    recon = decode_all(vae, encode_all(vae, images))
    labels = attribute_labels(attributes)
    features, read = judge_read(recon)
    right = read == labels
    report = {"accuracy": {name: right[:, k].float().mean().item() for k, name in enumerate(ATTRIBUTES)},
              "all_correct": right.all(1).float().mean().item(), "psnr": psnr(recon, images)}
    report["shape_accuracy"] = {f"{size} {shape}": right[kind, 0].float().mean().item()
                                for shape in ATTRIBUTES["shape"] for size in ATTRIBUTES["size"]
                                if (kind := (labels[:, 0] == ATTRIBUTES["shape"].index(shape))
                                    & (labels[:, 3] == ATTRIBUTES["size"].index(size))).any()}
    original, _ = judge_read(images)
    report["reconstruction_fid"] = frechet_distance(*gaussian_stats(features), *gaussian_stats(original))
    return report


def _vae_shapes(downsample: int, fast: bool = False, device: str = "auto", adversarial: bool = False) -> dict:
    """Chapter 07's autoencoder at factor f: 64×64×3 → (64/f)×(64/f)×4.

    A Gaussian-likelihood VAE (σ_x = 0.1) with a small KL weight (β = 0.01: the latent is regularised,
    not squeezed), 10,000 steps at batch 32 on the 20,000 training pictures. Stable Diffusion's
    autoencoder also trains against a patch discriminator; ``adversarial`` adds ours (from step 2,000:
    ``minidiff.models.latent_codec``, hinge loss, adaptive weight 0.5, the critic's Adam at 5e-4 with
    β1 = 0.5) — at 5,000 steps it kept no more shapes than the same run without it and cost 0.6 dB of
    PSNR, while training twice as long kept the small shapes (the README says how the recipe was
    chosen), so the shipped recipe goes without (``vae_shapes_f8_adversarial`` is the ablation). After
    training, the scaling factor is measured on the training latents and stored in the config. Measured on 10,000
    test renders and 2,000 renders of the held-out compositions (which it never saw): the judge's
    accuracy on the reconstructions, PSNR, judge-FID.
    """
    name = f"vae_shapes_f{downsample}" + ("_adversarial" if adversarial else "")
    torch.manual_seed(0)
    vae = VAE(VAEConfig(in_channels=3, image_size=SIZE, downsample=downsample, latent_channels=4, channels=16,
                        likelihood="gaussian", sigma_x=0.1))
    pictures = TensorDataset(training_pictures(fast))
    settings = dict(steps=10_000, batch_size=32, warmup_steps=10 if fast else 200, ema_decay=0.999)
    if adversarial:
        model = VAEWithCritic(vae, PatchDiscriminator(3, 32, 3))
        config = recipe_config(name, fast, device, lr={"critic": 5e-4, "vae": 2e-3},
                               betas={"critic": (0.5, 0.9), "vae": (0.9, 0.999)}, **settings)
        loss = functools.partial(adversarial_vae_loss, beta=0.01, weight=0.5, start=10 if fast else 2000)
        result = train(model, loss, pictures, config, parts=critic_parts(model), resume=True)
        vae = result.ema.vae.cpu().eval()
    else:
        config = recipe_config(name, fast, device, lr=2e-3, **settings)
        result = train(vae, functools.partial(vae_loss, beta=0.01), pictures, config, resume=True)
        vae = result.ema.cpu().eval()
    vae.config.scaling_factor = measure_scaling_factor(encode_all(vae, pictures.tensors[0]))
    n = 500 if fast else SHAPES_REFERENCE
    test = ShapesDataset(n, seed=TEST_SEED, size=SIZE, compositions="train")
    held = ShapesDataset(n // 5, seed=TEST_SEED, size=SIZE, compositions="held_out")
    metrics = {"parameters": sum(p.numel() for p in vae.parameters()), "latent_shape": list(vae.latent_shape),
               "compression": 3 * SIZE * SIZE // math.prod(vae.latent_shape),
               "scaling_factor": vae.config.scaling_factor,
               "test": reconstruction_report(vae, test.images, test.attributes),
               "held_out": reconstruction_report(vae, held.images, held.attributes)}
    metrics["worst_attribute_accuracy"] = min(metrics["test"]["accuracy"].values())
    note = (f"{len(pictures):,} shapes renders (seed {TRAIN_SEED}, training compositions, 64 px); measured on "
            f"{n:,} test renders (seed {TEST_SEED}) and {n // 5:,} of the held-out compositions")
    return finish(vae, name, result, fast, note, metrics, better=("worst_attribute_accuracy", "higher"))


for _f in CODEC_FACTORS:
    RECIPES.register(functools.partial(_vae_shapes, _f), name=f"vae_shapes_f{_f}")
RECIPES.register(functools.partial(_vae_shapes, 8, adversarial=True), name="vae_shapes_f8_adversarial")


# ---------------------------------------------------------------------------------------------
# The denoisers


def shapes_unet(in_channels: int, image_size: int) -> UNet:
    """The chapter's denoiser, chapter 05's U-Net and settings: two levels of 32 and 64 channels,
    attention at the lower one, v-prediction on the cosine schedule, and inputs larger than 16×16
    folded into 2×2 patches (as chapter 05's 28×28 digits are). On 8×8×4 latents it works at 8×8 and
    4×4 positions; on 64×64×3 pixels (32×32×12 after patching) at 32×32 and 16×16 — 16× the positions,
    so the two models have the same weights' count and differ in what they denoise."""
    return UNet(UNetConfig(in_channels=in_channels, image_size=image_size, channels=(32, 64),
                           attention=(False, True), num_res_blocks=2, dropout=0.0, feed_forward=2,
                           prediction_type="v_prediction", schedule="cosine", patch_size=2 if image_size > 16 else 1))


def keep_snapshots(name: str, fast: bool):
    """A callback that saves the EMA weights every ``SNAPSHOT_EVERY`` steps with the training time so
    far, into ``runs/<name>/snapshots/`` (``benchmarks/latent_vs_pixel.py`` scores them later)."""
    folder = f"{run_dir(name, fast)}/snapshots"

    def save(state):
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.ema.state_dict().items()}
        save_safetensors_atomic(tensors, f"{folder}/step-{state.step:07d}.safetensors",
                                metadata={"step": str(state.step), "wall_time_s": f"{state.wall_time_s:.1f}"})
    return SNAPSHOT_EVERY, save


def measure_shapes_model(model, decode=None, fast: bool = False) -> dict:
    """The shapes protocol for an unconditional 64×64 model: 2,000 samples (seed 0) with DPM-Solver++(2M)
    × 20, judge-FID beside the real-vs-real floor, the attribute histograms and the worst share."""
    images = generate(model, 16 if fast else PROTOCOL_SAMPLES, sampler="dpmpp_2m",
                      num_inference_steps=5 if fast else 20, seed=PROTOCOL_SEED, decode=decode)
    report = evaluate_shapes(images)
    return {"parameters": sum(p.numel() for p in model.parameters()), "fid_dpmpp_2m_20": report["fid"],
            "real_vs_real_fid": shapes_real_vs_real_fid(SIZE), "worst_share": report["worst_share"],
            "histograms": report["histograms"]}


def _train_denoiser(name, model, data, steps, fast, device, note, decode=None, **record):
    """What both denoisers share: chapter 05's training settings (constant learning rate after a
    warm-up, EMA, min-SNR weighting, batch 128; extend a run by resuming it with more ``steps``)."""
    torch.manual_seed(0)
    config = ddpm_mnist_config(20 if fast else steps, fast, run_dir(name, fast), device)
    if fast:  # a 64 × 64 pixel U-Net step at batch 128 takes seconds: the fast mode only shows the run works
        config.batch_size = 16
    result = train(model, unet_loss, data, config, resume=True, callbacks=[keep_snapshots(name, fast)])
    model = result.ema.cpu().eval()
    metrics = {**measure_shapes_model(model, decode, fast),
               "loss_curve": [[h["step"], round(h["loss"], 5)] for h in result.history]}
    options = f" --steps {steps}" if steps != DENOISER_STEPS else ""
    return finish(model, name, result, fast, note, metrics, options, better=("fid_dpmpp_2m_20", "lower"), **record)


DENOISER_STEPS = 6000


def _ldm_shapes(downsample: int, fast: bool = False, device: str = "auto", steps: int | None = None) -> dict:
    """Latent diffusion at factor f: the U-Net on the shipped ``vae_shapes_f<f>``'s latents of the 20,000
    training pictures (encoded once and cached, scaled by the autoencoder's scaling factor), sampled
    through the pipeline with the decoder as its last step. f = 8 is chapter 07's ``ldm_shapes``
    (8×8×4 latents, Stable Diffusion's squeeze); ``ldm_shapes_f4`` (16×16×4 latents) and f = 2 are
    the compression sweep's (``benchmarks/latent_vs_pixel.py`` compares them with ``pixel_shapes``,
    f = 1, at an equal training budget)."""
    name = "ldm_shapes" if downsample == 8 else f"ldm_shapes_f{downsample}"
    autoencoder = f"vae_shapes_f{downsample}"
    vae, entry = load_pretrained(autoencoder), read_manifest()[autoencoder]
    what = {"pictures": "shapes", "seed": TRAIN_SEED, "size": SIZE, "n": 2000 if fast else TRAIN_PICTURES,
            "compositions": "train"}
    latents = cached_latents(vae, entry["sha256"], what, lambda: training_pictures(fast), run_dir("latents", fast))
    model = shapes_unet(vae.latent_shape[0], vae.latent_shape[1])
    note = (f"latents of {what['n']:,} shapes renders (seed {TRAIN_SEED}, training compositions, 64 px) by "
            f"{autoencoder} ({entry['sha256'][:12]}); FID of 2,000 samples (seed 0) vs 10,000 test renders")
    return _train_denoiser(name, model, latents, steps or DENOISER_STEPS, fast, device, note,
                           decode=latent_decoder(vae), autoencoder={"name": autoencoder, "sha256": entry["sha256"]})


for _f in (4, 8):  # the shipped autoencoders' (ldm_shapes_f2 follows vae_shapes_f2)
    RECIPES.register(functools.partial(_ldm_shapes, _f), name="ldm_shapes" if _f == 8 else f"ldm_shapes_f{_f}")


@RECIPES.register
def pixel_shapes(fast: bool = False, device: str = "auto", steps: int | None = None) -> dict:
    """Chapter 07's baseline: the same U-Net and training on the same 20,000 pictures in pixel space."""
    note = (f"{TRAIN_PICTURES:,} shapes renders (seed {TRAIN_SEED}, training compositions, 64 px); FID of "
            "2,000 samples (seed 0) vs 10,000 test renders")
    return _train_denoiser("pixel_shapes", shapes_unet(3, SIZE), training_pictures(fast),
                           steps or DENOISER_STEPS, fast, device, note)
