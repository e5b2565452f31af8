"""Recipes: one command re-creates each shipped checkpoint, e.g. ``python -m minidiff train mnist_classifier``.

A recipe builds a model, trains it with the one trainer (``minidiff.train``), measures it, and saves
its weights with a manifest entry (sha256, data, steps, wall time, hardware, metrics). Training
state goes to ``runs/<name>/`` so an interrupted recipe resumes where it stopped. ``fast=True`` is a
few-step smoke run that writes to ``runs/`` only and never touches the shipped weights.
"""
import time
from pathlib import Path

import torch

from .checkpoints import save_weights
from .classifier import MNISTClassifier, classifier_loss, predict
from .data import mnist_dataset
from .metrics import real_vs_real_fid
from .train import TrainConfig, train

RECIPES = {}


def recipe(fn):
    RECIPES[fn.__name__] = fn
    return fn


def _out_dir(name, fast):
    return str(Path("runs") / (f"{name}-fast" if fast else name))


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
    if not fast:
        save_weights(classifier, "mnist_classifier", recipe="python -m minidiff train mnist_classifier",
                     data="MNIST train (60,000, data/mnist); evaluated on MNIST test (10,000)",
                     steps=result.steps, wall_time_s=result.wall_time_s, metrics=metrics)
    return metrics
