import numpy as np
import pytest
import torch

from minidiff import metrics
from minidiff.course.solutions import mosaic
from minidiff.datasets.mnist import load_mnist, to_tensor


def test_frechet_distance_of_1d_gaussians_is_the_closed_form():
    # For N(m1, s1²) and N(m2, s2²): FID = (m1 − m2)² + (s1 − s2)²
    d = metrics.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]])
    assert d == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)


def test_frechet_distance_of_commuting_covariances():
    # Same eigenvectors: Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) = Σ (√λ1 − √λ2)²
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))
    lam1, lam2 = np.array([1, 2, 3, 4, 5.0]), np.array([5, 1, 0.5, 2, 3.0])
    s1, s2 = rotation @ np.diag(lam1) @ rotation.T, rotation @ np.diag(lam2) @ rotation.T
    assert metrics.frechet_distance(np.zeros(5), s1, np.ones(5), s2) == pytest.approx(
        5 + ((np.sqrt(lam1) - np.sqrt(lam2)) ** 2).sum())


def test_frechet_distance_is_symmetric_and_zero_on_itself():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 6)), rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    sa, sb = (np.cov(x, rowvar=False) for x in (a, b))
    assert metrics.frechet_distance(a.mean(0), sa, b.mean(0), sb) == pytest.approx(
        metrics.frechet_distance(b.mean(0), sb, a.mean(0), sa))
    assert abs(metrics.frechet_distance(a.mean(0), sa, a.mean(0), sa)) < 1e-8


@pytest.fixture(scope="module")
def real_digits():
    images = load_mnist("train")[0]
    return to_tensor(images[np.random.default_rng(0).choice(len(images), 500, replace=False)])


@pytest.mark.slow
def test_shipped_classifier_reaches_99_percent():
    images, labels = load_mnist("test")
    report = metrics.evaluate_samples(to_tensor(images), labels)
    assert report["accuracy"] >= 0.99
    assert min(report["per_class_accuracy"]) >= 0.97


def test_real_vs_real_matches_the_manifest():
    from minidiff.weights import read_manifest
    recorded = read_manifest()["mnist_classifier"]["metrics"]["real_vs_real_fid"]
    assert metrics.real_vs_real_fid() == pytest.approx(recorded, rel=1e-3)


def test_fid_ranks_damage(real_digits):
    """Real digits score near the floor; mosaicked ones and noise score far worse, in that order."""
    real = metrics.classifier_fid(real_digits)
    blurred = metrics.classifier_fid(mosaic(real_digits, 4))
    noise = metrics.classifier_fid(torch.rand_like(real_digits) * 2 - 1)
    assert real < blurred < noise
    assert blurred > 5 * real


def test_evaluate_reports_class_coverage(real_digits):
    only_ones = to_tensor(load_mnist("test")[0][load_mnist("test")[1] == 1][:300])
    report = metrics.evaluate_samples(only_ones, torch.ones(300, dtype=torch.long))
    assert report["class_histogram"][1] >= 295 and report["accuracy"] >= 0.98
    assert report["confidence"] > 0.9


def test_psnr_known_values():
    x = torch.zeros(3, 1, 4, 4)
    assert metrics.psnr(x + 0.2, x) == pytest.approx(10 * np.log10(4 / 0.04))
    assert metrics.psnr(x + 2, x) == pytest.approx(10 * np.log10(4 / 1.0))  # clamped to [-1, 1] first
