"""Chapters 04–05: the pixel-space MNIST denoisers, unconditional and class-conditional."""
import torch

from minidiff.course.recipes.common import RECIPES, finish, run_dir
from minidiff.datasets.mnist import mnist_diffusion_dataset
from minidiff.diffusion.loss import unet_loss
from minidiff.diffusion.pipeline import generate
from minidiff.metrics import PROTOCOL_SAMPLES, PROTOCOL_SEED, evaluate_samples, real_vs_real_fid
from minidiff.models.unet import UNet, UNetConfig
from minidiff.train import TrainConfig, train
from minidiff.weights import shipped_start


def ddpm_mnist_model(num_classes: int | None = None) -> UNet:
    """The course's MNIST denoiser: 2×2 patches (28×28×1 → 14×14×4), then 32-64 channels at 14-7
    positions, two residual blocks per level, attention at 7×7; 1.0M parameters and 70M
    multiply-adds per image, 350–550 images/s forward on 2 CPU cores (AVX2). v-prediction on the
    cosine schedule. Its one attention level has no feed-forward (``feed_forward=0``): it was designed
    before the shared transformer block, and the shipped weights keep that design."""
    return UNet(UNetConfig(in_channels=1, image_size=28, channels=(32, 64), attention=(False, True),
                           num_res_blocks=2, dropout=0.0, num_classes=num_classes, feed_forward=0,
                           prediction_type="v_prediction", schedule="cosine", patch_size=2))


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


def _ddpm_mnist(name: str, num_classes: int | None, steps: int | None, fast: bool, device: str,
                from_shipped: bool) -> dict:
    """Train (``steps`` defaults to ``DDPM_MNIST_STEPS``; more resumes and extends a finished run;
    ``from_shipped`` trains on from the shipped weights where there is no run to resume), measure with
    the protocol (DPM-Solver++(2M), 20 steps: the quick figure; the 1,000-step ancestral figure comes
    from ``benchmarks/fid_vs_nfe.py``), and save the EMA weights in the run folder."""
    options = (f" --steps {steps}" if steps and steps != DDPM_MNIST_STEPS else "") + \
        (" --from-shipped" if from_shipped else "")
    steps = steps or DDPM_MNIST_STEPS
    torch.manual_seed(0)
    config = ddpm_mnist_config(20 if fast else steps, fast, run_dir(name, fast), device)
    dataset = mnist_diffusion_dataset("train", conditional=num_classes is not None)
    model = ddpm_mnist_model(num_classes)
    start = shipped_start(name, model) if from_shipped else None
    result = train(model, unet_loss, dataset, config, resume=True, start_from=start)
    model = result.ema.cpu().eval()
    n = 200 if fast else PROTOCOL_SAMPLES
    labels = None if num_classes is None else torch.arange(n) % num_classes
    guidance = 1.0 if num_classes is None else 3.0
    images = generate(model, n, sampler="dpmpp_2m", num_inference_steps=20,
                      cond=None if labels is None else {"labels": labels}, guidance_scale=guidance, seed=PROTOCOL_SEED)
    report = evaluate_samples(images, labels)
    metrics = {"parameters": sum(p.numel() for p in model.parameters()), "fid_dpmpp_2m_20": report["fid"],
               "class_histogram": report["class_histogram"], "confidence": report["confidence"],
               "real_vs_real_fid": real_vs_real_fid(),
               "loss_curve": [[h["step"], round(h["loss"], 5)] for h in result.history]}
    if labels is not None:
        metrics.update(guidance_scale=guidance, accuracy=report["accuracy"],
                       per_class_accuracy=report["per_class_accuracy"])
    data = "MNIST train (60,000); FID of 2,000 samples (seed 0) vs MNIST test"
    return finish(model, name, result, fast, data, metrics, options, better=("fid_dpmpp_2m_20", "lower"),
                  started_from=start)


@RECIPES.register
def ddpm_mnist(fast: bool = False, device: str = "auto", steps: int | None = None, from_shipped: bool = False) -> dict:
    """Chapter 05's unconditional denoiser."""
    return _ddpm_mnist("ddpm_mnist", None, steps, fast, device, from_shipped)


@RECIPES.register
def ddpm_mnist_cond(fast: bool = False, device: str = "auto", steps: int | None = None,
                    from_shipped: bool = False) -> dict:
    """Chapter 05's class-conditional denoiser ("draw me a 7"): 10 % of labels dropped to the null
    label during training, so classifier-free guidance works."""
    return _ddpm_mnist("ddpm_mnist_cond", 10, steps, fast, device, from_shipped)
