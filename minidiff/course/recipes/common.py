"""Recipes: one command re-creates each shipped checkpoint, e.g. ``python -m minidiff train mnist_classifier``.

A recipe builds a model, trains it with the one trainer (``minidiff.train``), measures it, and saves
its weights with a manifest entry (sha256, data, steps, wall time, hardware, metrics). Training
state goes to ``runs/<name>/`` so an interrupted recipe resumes where it stopped. ``fast=True`` is a
few-step smoke run that writes to ``runs/`` only and never touches the shipped weights.

Each chapter's recipes live in their own module of this folder and register here with
``@RECIPES.register``; ``catalog.py`` lists the modules (add a new chapter's there).
"""
import os
from pathlib import Path

import torch

from minidiff.registry import Registry
from minidiff.train import TrainConfig
from minidiff.weights import describe_segments, save_weights

RECIPES = Registry("recipe")


def run_dir(name, fast):
    """Resumable training state: ``runs/<name>`` (or under ``$MINIDIFF_RUNS``)."""
    return str(Path(os.environ.get("MINIDIFF_RUNS", "runs")) / (f"{name}-fast" if fast else name))


def recipe_config(name: str, fast: bool, device: str, *, steps: int, fast_steps: int = 20, **settings) -> TrainConfig:
    """What every recipe's training shares — seed 0, a log line every 50 steps, a checkpoint every 500
    in ``runs/<name>`` — under its own ``settings``; a ``fast`` run takes ``fast_steps`` steps."""
    shared = dict(seed=0, device=device, log_every=50, checkpoint_every=500, out_dir=run_dir(name, fast))
    return TrainConfig(steps=fast_steps if fast else steps, **{**shared, **settings})


def ship(model, name, result, fast, data, metrics, recipe_options=""):
    metrics["torch_threads"] = torch.get_num_threads()  # wall time means little without it
    if not fast:
        save_weights(model, name, recipe=f"python -m minidiff train {name}{recipe_options}", data=data,
                     steps=result.steps, wall_time_s=result.wall_time_s, hardware=describe_segments(result.segments),
                     metrics=metrics)
    return metrics
