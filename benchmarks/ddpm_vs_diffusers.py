"""Quality per CPU-minute: minidiff's MNIST DDPM recipe against the peer a user would otherwise pick.

    pip install -c constraints.txt -e '.[bench]'
    python benchmarks/ddpm_vs_diffusers.py --minutes 20 --sampler ddim --steps 50   # the committed run
    python benchmarks/ddpm_vs_diffusers.py --smoke --results /tmp/peer   # seconds: a few steps each, 8 samples

The table is printed and written (atomically) to ``benchmarks/results/ddpm_vs_diffusers.json`` (or into
``--results``) with the hardware and thread count, since a wall-clock budget means little without them.
``--smoke`` checks that the script still runs: both sides time 1 step and train for a 0.005-minute
budget (a step or two) on batches of 8, then draw 8 samples in 3 steps, into
``outputs/benchmarks-smoke/`` unless ``--results`` names another folder.

Both sides get the same MNIST training set, the same wall-clock budget on this machine, a U-Net of
about the same size, and are sampled the same way, then scored with the course's protocol
(classifier-FID of 2,000 samples, seed 0, beside the real-vs-real floor). The peer's U-Net is diffusers'
``UNet2DModel`` configured for 28×28 digits the usual way (32-64-64 channels, one block per level,
attention at 7×7: 1.11M parameters, 189M multiply-adds per image); minidiff's is its recipe's (2×2
patches, 32-64 channels, two blocks per level: 1.00M parameters, 70M multiply-adds).

The peer is diffusers' own recipe (its ``train_unconditional`` example): ``DDPMScheduler`` with the
linear schedule, ε-prediction, plain MSE, AdamW at 1e-4 with cosine decay after 500 warm-up steps,
and an EMA of the weights; sampled with ``DDIMScheduler``/``DDPMScheduler`` from the same config.
minidiff's side is its recipe: cosine schedule, v-prediction with min-SNR-5 weighting, a larger
learning rate, EMA with warm-up — all through the one trainer.
"""
import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F
from samplers_vs_diffusers import sample_diffusers
from smoke import add_output_options, parse_args

from minidiff import metrics
from minidiff.course.recipes.ddpm import ddpm_mnist_config, ddpm_mnist_model
from minidiff.datasets.mnist import mnist_dataset, mnist_diffusion_dataset
from minidiff.devices import hardware_description
from minidiff.diffusion.loss import unet_loss
from minidiff.diffusion.pipeline import generate, starting_noise
from minidiff.files import write_json_atomic
from minidiff.train import batch_indices, train

BATCH_SIZE, PROBE_STEPS = 128, 12  # both sides' batch; steps timed to size the budget
SMOKE = dict(minutes=0.005, steps=3, samples=8, batch_size=8, probe_steps=1)


def steps_for(seconds_per_step: float, minutes: float) -> int:
    return max(1, int(minutes * 60 / seconds_per_step))


def train_minidiff(minutes, batch_size=BATCH_SIZE, probe_steps=PROBE_STEPS):
    """minidiff's recipe through the one trainer, for as many steps as fit in ``minutes`` — on the CPU,
    as the peer is trained, whatever else the machine has."""
    data = mnist_diffusion_dataset("train")
    probe = dataclasses.replace(ddpm_mnist_config(steps=probe_steps, fast=False, out_dir=None, device="cpu",
                                                  progress=False), batch_size=batch_size)
    seconds = train(ddpm_mnist_model(), unet_loss, data, probe).wall_time_s / probe.steps
    config = dataclasses.replace(ddpm_mnist_config(steps=steps_for(seconds, minutes), fast=False, out_dir=None,
                                                   device="cpu"), batch_size=batch_size)
    result = train(ddpm_mnist_model(), unet_loss, data, config)
    return result.ema, config.steps, result.wall_time_s


def diffusers_unet():
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def train_diffusers(minutes, batch_size=BATCH_SIZE, seed=0, probe_steps=PROBE_STEPS):
    """diffusers' train_unconditional recipe, written the way its example writes it."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    images = mnist_dataset("train").tensors[0]
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")

    def run(total):
        torch.manual_seed(seed)
        model = diffusers_unet()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-6)
        lr_schedule = get_cosine_schedule_with_warmup(optimizer, 500, total)
        ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
        started = time.perf_counter()
        for step in range(total):
            x0 = images[batch_indices(step, len(images), batch_size, seed)]
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (len(x0),))
            loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad()
            ema.step(model.parameters())
        ema.copy_to(model.parameters())
        return model.eval(), time.perf_counter() - started

    total = steps_for(run(probe_steps)[1] / probe_steps, minutes)
    model, seconds = run(total)
    return model, scheduler, total, seconds


def sample_peer(model, train_scheduler, sampler, steps, n):
    """The peer sampled with diffusers' own scheduler loop, from the same starting noise as minidiff
    (``sample_diffusers`` runs the UNet2DModel itself: it needs its device and reads its ``.sample``)."""
    from diffusers import DDIMScheduler, DDPMScheduler
    scheduler = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(train_scheduler.config)
    return sample_diffusers(scheduler, model, starting_noise(n, (1, 28, 28)), steps)



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="training wall time for each side")
    parser.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    parser.add_argument("--steps", type=int, default=100, help="sampling steps for both")
    parser.add_argument("--samples", type=int, default=metrics.PROTOCOL_SAMPLES)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="training batch for both sides")
    parser.add_argument("--probe-steps", type=int, default=PROBE_STEPS, help="steps timed to size each budget")
    add_output_options(parser, help="folder of the results file")
    args = parse_args(parser, argv, SMOKE)

    ours, our_steps, our_time = train_minidiff(args.minutes, args.batch_size, args.probe_steps)
    peer, peer_scheduler, peer_steps, peer_time = train_diffusers(args.minutes, args.batch_size,
                                                                  probe_steps=args.probe_steps)
    rows = {
        "minidiff": (our_steps, our_time, generate(ours, args.samples, sampler=args.sampler,
                                                   num_inference_steps=args.steps)),
        "diffusers": (peer_steps, peer_time, sample_peer(peer, peer_scheduler, args.sampler, args.steps,
                                                         args.samples)),
    }
    floor = metrics.real_vs_real_fid()
    print(f"{'':10s} {'train steps':>11s} {'train s':>8s} {'FID':>8s} {'FID/floor':>9s}   "
          f"({args.sampler}, {args.steps} steps, {args.samples} samples; real-vs-real {floor:.2f})")
    report = dict(minutes=args.minutes, sampler=args.sampler, sampling_steps=args.steps, samples=args.samples,
                  seed=metrics.PROTOCOL_SEED, real_vs_real_fid=floor, hardware=hardware_description(),
                  threads=torch.get_num_threads(), rows={})
    if args.batch_size != BATCH_SIZE:  # the committed run's batch goes unsaid
        report["batch_size"] = args.batch_size
    if args.smoke:
        report["smoke"] = True
    for name, (steps, seconds, images) in rows.items():
        fid = metrics.classifier_fid(images)
        report["rows"][name] = dict(train_steps=steps, train_seconds=round(seconds), fid=fid)
        print(f"{name:10s} {steps:11d} {seconds:8.0f} {fid:8.2f} {fid / floor:9.2f}")
    print(f"minidiff's FID is {report['rows']['minidiff']['fid'] / report['rows']['diffusers']['fid']:.2f}× the peer's")
    write_json_atomic(report, args.results / "ddpm_vs_diffusers.json")


if __name__ == "__main__":
    main()
