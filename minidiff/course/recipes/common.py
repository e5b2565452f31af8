"""Recipes: one command re-creates each shipped checkpoint, e.g. ``python -m minidiff train mnist_classifier``.

A recipe builds a model, trains it with the one trainer (``minidiff.train``), measures it, and saves
its weights with a manifest entry (sha256, data, steps, wall time, hardware, metrics) in its run
folder, ``runs/<name>/``, where its training state lets an interrupted recipe resume where it stopped.
Nothing a recipe does touches the shipped weights: ``minidiff.weights.ship`` puts a trained model
into ``data/checkpoints/`` when asked, and only if it measures no worse. ``fast=True`` is a few-step
smoke run, in ``runs/<name>-fast/``.

Each chapter's recipes live in their own module of this folder and register here with
``@RECIPES.register``; ``catalog.py`` lists the modules (add a new chapter's there).
"""
import os
from pathlib import Path

import torch

from minidiff.files import project_dir
from minidiff.registry import Registry
from minidiff.train import TrainConfig
from minidiff.weights import describe_segments, save_weights

RECIPES = Registry("recipe")


def run_dir(name, fast):
    """Resumable training state: the repository's ``runs/<name>`` (or under ``$MINIDIFF_RUNS``), the same
    folder whether a recipe is started from the repository, from ``chapters/`` or from anywhere else."""
    return str(Path(os.environ.get("MINIDIFF_RUNS", project_dir() / "runs")) / (f"{name}-fast" if fast else name))


def recipe_config(name: str, fast: bool, device: str, *, steps: int, fast_steps: int = 20, **settings) -> TrainConfig:
    """What every recipe's training shares — seed 0, a log line every 50 steps, a checkpoint every 500
    in ``runs/<name>`` — under its own ``settings``; a ``fast`` run takes ``fast_steps`` steps."""
    shared = dict(seed=0, device=device, log_every=50, checkpoint_every=500, out_dir=run_dir(name, fast))
    return TrainConfig(steps=fast_steps if fast else steps, **{**shared, **settings})


def finish(model, name, result, fast, data, metrics, recipe_options="", *, better: tuple[str, str],
           started_from: dict | None = None, **record) -> dict:
    """The end of every recipe: the trained model and the manifest entry it would ship with go into its
    run folder (``runs/<name>/<name>.safetensors`` and ``manifest.json``, beside the training
    checkpoint). Shipping it over ``data/checkpoints/`` is a separate, explicit act — ``python -m
    minidiff ship <name>`` (or ``train … --ship``) — which first compares ``better`` = (metric,
    "lower" or "higher") with the shipped model's. A run that trained on from shipped weights
    (``started_from``) records their sha256 and step; ``record`` adds other fields to the entry (a
    latent denoiser's ``autoencoder``), and ``companions`` files the model needs beside it (CLIP's
    ``{"tokenizer.json": tokenizer.save}``: see ``save_weights``)."""
    metrics["torch_threads"] = torch.get_num_threads()  # wall time means little without it
    recipe = f"python -m minidiff train {name}{recipe_options} --ship"
    save_weights(model, name, directory=run_dir(name, fast), recipe=recipe, data=data, steps=result.steps,
                 wall_time_s=result.wall_time_s, hardware=describe_segments(result.segments), metrics=metrics,
                 better=better, segments=result.segments,
                 started_from=started_from and {k: started_from[k] for k in ("sha256", "step")}, **record)
    return metrics
