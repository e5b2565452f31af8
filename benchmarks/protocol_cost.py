"""What the evaluation protocol costs on this machine, and why it uses 2,000 samples.

    python benchmarks/protocol_cost.py

Measures (1) the classifier's throughput when scoring images, (2) the time of one protocol
evaluation (2,000 images vs the cached test statistics), (3) the one trainer's throughput on the
classifier, and (4) the forward throughput at batch 500 of a network shaped like a ~1M-parameter
diffusion U-Net: 2,000 samples × 1,000 sampling steps must fit in about an hour.
The real-vs-real FID at several sample counts shows how the floor shrinks with more samples.
"""
import time

import numpy as np
import torch
import torch.nn as nn

from minidiff import metrics
from minidiff.classifier import MNISTClassifier, classifier_loss, predict
from minidiff.data import load_mnist, mnist_dataset, to_tensor
from minidiff.train import TrainConfig, train


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


def main():
    torch.manual_seed(0)
    judge = metrics.load_classifier()
    images = to_tensor(load_mnist("test")[0])
    metrics.reference_stats(judge)
    print(f"classifier scoring: {len(images) / seconds(lambda: predict(judge, images), 1):,.0f} images/s")
    sample = images[:metrics.PROTOCOL_SAMPLES]
    print(f"one protocol evaluation (2,000 images): {seconds(lambda: metrics.classifier_fid(sample)):.2f} s")

    result = train(MNISTClassifier(), classifier_loss, mnist_dataset("train"),
                   TrainConfig(steps=60, warmup_steps=10, log_every=20, progress=False))
    print(f"trainer on the classifier: {np.mean([h['images_per_s'] for h in result.history[1:]]):,.0f} images/s")

    unet_like = unet_shaped_net().eval()
    params = sum(p.numel() for p in unet_like.parameters())
    batch = torch.randn(500, 1, 28, 28)
    with torch.no_grad():
        rate = 500 / seconds(lambda: unet_like(batch))
    hours = metrics.PROTOCOL_SAMPLES * 1000 / rate / 3600
    print(f"{params / 1e6:.2f}M-parameter conv net forward: {rate:,.0f} images/s → "
          f"2,000 samples × 1,000 steps ≈ {hours:.1f} h")

    for n in (500, 1000, 2000, 5000):
        print(f"real-vs-real FID with {n:>5} samples: {metrics.real_vs_real_fid(n):.3f}")


if __name__ == "__main__":
    main()
