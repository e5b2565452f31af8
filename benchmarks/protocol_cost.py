"""What the evaluation protocol costs on this machine, and why it uses 2,000 samples.

    python benchmarks/protocol_cost.py
    python benchmarks/protocol_cost.py --results benchmarks/results   # also save the figures as JSON
    python benchmarks/protocol_cost.py --smoke --results /tmp/cost      # seconds: the same code, tiny sizes

Measures (1) the classifier's throughput when scoring images, (2) the time of one protocol
evaluation (2,000 images vs the cached test statistics), (3) the one trainer's throughput on the
classifier, and (4) the forward throughput at batch 500 of a network shaped like a ~1M-parameter
diffusion U-Net: 2,000 samples × 1,000 sampling steps must fit in about an hour.
The real-vs-real FID at several sample counts shows how the floor shrinks with more samples.

The figures are printed; with ``--results DIR`` they are also written (atomically) to
``DIR/protocol_cost.json`` with the hardware and thread count. ``--smoke`` (500 images scored, 100
evaluated, 4 training steps, batch 16, one repeat, into ``outputs/benchmarks-smoke/`` unless
``--results`` says otherwise) checks that the script still runs.
"""
import argparse
import time

import numpy as np
import torch
import torch.nn as nn
from smoke import add_output_options, parse_args

from minidiff import metrics
from minidiff.datasets.mnist import load_mnist, mnist_dataset, to_tensor
from minidiff.devices import hardware_description
from minidiff.files import write_json_atomic
from minidiff.models.classifier import MNISTClassifier, classifier_loss, predict
from minidiff.train import TrainConfig, train

SMOKE = dict(images=500, samples=100, train_steps=4, batch=16, repeat=1, floor=[500])


def seconds(fn, repeat=3):
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def unet_shaped_net() -> nn.Module:
    """Convolutions with a U-Net's cost profile (32 → 64 → 128 channels at 28 → 14 → 7 pixels and
    back, ~1M parameters), a stand-in until the diffusion chapters measure their real U-Net."""
    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
    return nn.Sequential(*block(1, 32), nn.Conv2d(32, 64, 3, 2, 1), *block(64, 64), nn.Conv2d(64, 128, 3, 2, 1),
                         *block(128, 128), *block(128, 128), nn.ConvTranspose2d(128, 64, 4, 2, 1), *block(64, 64),
                         nn.ConvTranspose2d(64, 32, 4, 2, 1), *block(32, 32), nn.Conv2d(32, 1, 3, padding=1))



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None, help="test digits scored for (1) (default: all 10,000)")
    parser.add_argument("--samples", type=int, default=metrics.PROTOCOL_SAMPLES, help="images in (2)'s evaluation")
    parser.add_argument("--train-steps", type=int, default=60, help="classifier training steps for (3)")
    parser.add_argument("--batch", type=int, default=500, help="batch of (4)'s forward passes")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats of (2) and (4), after a warm-up")
    parser.add_argument("--floor", nargs="+", type=int, default=[500, 1000, 2000, 5000],
                        help="sample counts of the real-vs-real FID")
    add_output_options(parser, default=None, help="folder for protocol_cost.json (default: print only)")
    args = parse_args(parser, argv, SMOKE)

    torch.manual_seed(0)
    judge = metrics.load_classifier()
    images = to_tensor(load_mnist("test")[0])[:args.images]
    metrics.reference_stats(judge)
    scoring = len(images) / seconds(lambda: predict(judge, images), 1)
    print(f"classifier scoring: {scoring:,.0f} images/s")
    sample = images[:args.samples]
    evaluation = seconds(lambda: metrics.classifier_fid(sample), args.repeat)
    print(f"one protocol evaluation ({len(sample):,} images): {evaluation:.2f} s")

    log_every = max(1, min(20, args.train_steps // 3))  # throughput after the first window (warm-up)
    result = train(MNISTClassifier(), classifier_loss, mnist_dataset("train"),
                   TrainConfig(steps=args.train_steps, warmup_steps=10, log_every=log_every, progress=False))
    trainer = float(np.mean([h["images_per_s"] for h in result.history[1:]]))
    print(f"trainer on the classifier: {trainer:,.0f} images/s")

    unet_like = unet_shaped_net().eval()
    params = sum(p.numel() for p in unet_like.parameters())
    batch = torch.randn(args.batch, 1, 28, 28)
    with torch.no_grad():
        rate = args.batch / seconds(lambda: unet_like(batch), args.repeat)
    hours = metrics.PROTOCOL_SAMPLES * 1000 / rate / 3600
    print(f"{params / 1e6:.2f}M-parameter conv net forward: {rate:,.0f} images/s → "
          f"2,000 samples × 1,000 steps ≈ {hours:.1f} h")

    floor = {}
    for n in args.floor:
        floor[str(n)] = metrics.real_vs_real_fid(n)
        print(f"real-vs-real FID with {n:>5} samples: {floor[str(n)]:.3f}")

    if args.results is not None:
        report = dict(hardware=hardware_description("cpu"), threads=torch.get_num_threads(),
                      scoring_images=len(images), scoring_images_per_s=round(scoring, 1),
                      evaluation_samples=len(sample), evaluation_s=round(evaluation, 3),
                      trainer_steps=args.train_steps, trainer_images_per_s=round(trainer, 1),
                      unet_like_parameters=params, unet_like_batch=args.batch,
                      unet_like_images_per_s=round(rate, 1), protocol_hours=round(hours, 2),
                      real_vs_real_fid=floor)
        if args.smoke:
            report["smoke"] = True
        write_json_atomic(report, args.results / "protocol_cost.json")


if __name__ == "__main__":
    main()
