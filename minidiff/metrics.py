"""How the course measures generated digits: one protocol, used by every chapter and benchmark.

**The protocol.** Generate ``PROTOCOL_SAMPLES`` = 2,000 images with seed ``PROTOCOL_SEED`` = 0.
Embed them, and the 10,000 MNIST *test* digits (the reference), with the shipped classifier's
128-d feature layer (``MNISTClassifier.features``), fit a Gaussian to each set and report

    FID = ‖μ_g − μ_r‖² + Tr(Σ_g + Σ_r − 2 (Σ_g Σ_r)^½)           (Heusel et al., 2017)

beside the **real-vs-real** figure: 2,000 *training* digits (seed 0) scored the same way. That
floor is what a perfect generator would get with this many samples (FID is biased upwards at
small sample counts), so a model is judged as "FID / real-vs-real". We use our own classifier
rather than Inception because Inception weights cannot be had offline and were never meant for
28×28 digits; numbers are therefore comparable within this course, not with papers.

The classifier also judges samples directly: the label distribution (are all ten digits drawn?),
the mean confidence (are they clean?), and, for class-conditional models, the accuracy.
"""
from functools import lru_cache

import numpy as np
import torch

from minidiff.datasets.mnist import load_mnist, to_tensor
from minidiff.models.classifier import MNISTClassifier, predict
from minidiff.weights import load_pretrained

PROTOCOL_SAMPLES = 2000
PROTOCOL_SEED = 0
CLASSIFIER = "mnist_classifier"


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """FID between N(μ1, Σ1) and N(μ2, Σ2).

    Tr (Σ1 Σ2)^½ is computed as Σ √λ over the eigenvalues λ of the symmetric matrix
    Σ1^½ Σ2 Σ1^½ (similar to Σ1 Σ2), which avoids a non-symmetric matrix square root.
    """
    mu1, mu2, sigma1, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, sigma1, sigma2))
    eigval, eigvec = np.linalg.eigh(sigma1)
    sqrt1 = (eigvec * np.sqrt(eigval.clip(min=0))) @ eigvec.T
    cross = np.linalg.eigvalsh(sqrt1 @ sigma2 @ sqrt1).clip(min=0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(cross).sum())


def gaussian_stats(features: torch.Tensor):
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = features.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


@lru_cache(maxsize=1)
def load_classifier() -> MNISTClassifier:
    """The shipped judge (hash- and config-checked)."""
    return load_pretrained(CLASSIFIER)


@lru_cache(maxsize=4)
def reference_stats(classifier: MNISTClassifier):
    """Gaussian statistics of the 10,000 MNIST test digits in ``classifier``'s feature space."""
    features, _ = predict(classifier, to_tensor(load_mnist("test")[0]))
    return gaussian_stats(features)


def classifier_fid(images: torch.Tensor, classifier=None) -> float:
    """FID of (N, 1, 28, 28) images in [-1, 1] against the MNIST test set, in classifier features."""
    classifier = classifier or load_classifier()
    features, _ = predict(classifier, images)
    return frechet_distance(*gaussian_stats(features), *reference_stats(classifier))


def real_vs_real_fid(n: int = PROTOCOL_SAMPLES, seed: int = PROTOCOL_SEED, classifier=None) -> float:
    """The floor: ``n`` random training digits scored like samples (the protocol's n and seed)."""
    images = load_mnist("train")[0]
    pick = np.random.default_rng(seed).choice(len(images), n, replace=False)
    return classifier_fid(to_tensor(images[pick]), classifier)


def evaluate_samples(images: torch.Tensor, labels=None, classifier=None) -> dict:
    """Everything the protocol reports about generated digits: FID, how often the classifier
    sees each digit, its mean confidence, and (when the digits were asked for) its accuracy."""
    classifier = classifier or load_classifier()
    features, logits = predict(classifier, images)
    probs = logits.softmax(1)
    predicted = probs.argmax(1)
    report = {
        "n": len(images),
        "fid": frechet_distance(*gaussian_stats(features), *reference_stats(classifier)),
        "confidence": probs.max(1).values.mean().item(),
        "class_histogram": torch.bincount(predicted, minlength=10).tolist(),
    }
    if labels is not None:
        labels = torch.as_tensor(labels)
        report["accuracy"] = (predicted == labels).float().mean().item()
        report["per_class_accuracy"] = [(predicted[labels == k] == k).float().mean().item()
                                        for k in range(10) if (labels == k).any()]
    return report


def psnr_per_image(reconstructions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image, for images in [-1, 1] (peak-to-peak 2):
    PSNR = 10 · log10(2² / MSE). 20 dB is blurry, 30 dB hard to tell apart by eye."""
    mse = ((reconstructions - images) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(4 / mse)


def psnr(reconstructions: torch.Tensor, images: torch.Tensor) -> float:
    """Mean PSNR over images, with reconstructions first clipped to the valid range [-1, 1]."""
    return psnr_per_image(reconstructions.clamp(-1, 1), images).mean().item()
