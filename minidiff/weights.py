"""Shipped weights: ``data/checkpoints/<name>.safetensors`` and the manifest that vouches for them.

Each file has one entry in ``data/checkpoints/manifest.json`` saying which model class and config
built it, its SHA-256, the data, steps, wall time, hardware and metrics, and the one command (the
*recipe*) that re-creates it. ``load_pretrained(name)`` checks all of that and rebuilds the model
from the manifest alone: ``MODELS`` is the one list of model classes a checkpoint may hold (add a new
model there). A checkpoint may have *companion files* beside it, ``<name>.<suffix>``, that it cannot
be used without — CLIP's tokenizer, ``<name>.tokenizer.json`` — each with its sha256 in the entry
(``"companions"``): they are written with the weights, shipped with them and checked on loading
(``companion_path``, ``load_clip``). Training checkpoints, for resuming a run, are ``minidiff.resume``'s.

Tensors go to safetensors and everything else to JSON, so loading a file can never run code (unlike
``torch.save``/``pickle``). Every write goes to a temporary file in the same folder, is fsynced, and is
renamed into place with ``os.replace``, which is atomic: a crash leaves the old file or the new one.
"""
import dataclasses
import datetime
import json
import shutil
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from minidiff.devices import hardware_description
from minidiff.files import (
    DataError,
    data_dir,
    folder_lock,
    save_safetensors_atomic,
    sha256sum,
    verify_sha256,
    write_atomic,
    write_json_atomic,
)
from minidiff.models.autoencoder import VAE, Autoencoder, AutoencoderConfig, VAEConfig
from minidiff.models.classifier import ClassifierConfig, MNISTClassifier, ShapesJudge, ShapesJudgeConfig
from minidiff.models.clip import CLIP, CLIPConfig
from minidiff.models.controlnet import ControlNet, ControlNetConfig
from minidiff.models.gan import GAN, GANConfig
from minidiff.models.tokenizer import Tokenizer
from minidiff.models.unet import UNet, UNetConfig

# the model classes a checkpoint may hold, each with the config dataclass that builds it
MODELS = {cls.__name__: (cls, config_cls) for cls, config_cls in [
    (Autoencoder, AutoencoderConfig), (VAE, VAEConfig), (GAN, GANConfig), (MNISTClassifier, ClassifierConfig),
    (ShapesJudge, ShapesJudgeConfig), (UNet, UNetConfig), (CLIP, CLIPConfig), (ControlNet, ControlNetConfig)]}


# ----------------------------------------------------------------------------- shipped weights

def checkpoints_dir(directory=None) -> Path:
    return Path(directory) if directory is not None else data_dir() / "checkpoints"


def read_manifest(directory=None) -> dict:
    """The manifest (name -> entry); empty if there is none yet."""
    path = checkpoints_dir(directory) / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}). Restore it with `git checkout -- {path}`.")


def model_config(model) -> dict:
    """``model.config`` (its config dataclass) as a JSON-ready dict (tuples become lists)."""
    if type(model).__name__ not in MODELS or not dataclasses.is_dataclass(model.config):
        raise TypeError(f"{type(model).__name__} cannot be shipped: add it, with its config dataclass, "
                        "to minidiff.weights.MODELS")
    return json.loads(json.dumps(dataclasses.asdict(model.config)))


def describe_segments(segments: list[dict]) -> str:
    """The manifest's ``hardware`` line from a run's log of where it trained (``TrainResult.segments``:
    one ``{"steps": [first, last], "hardware", "wall_time_s"}`` per stretch between resumes). A run on
    one machine is that machine; a run resumed elsewhere lists each machine with its steps and time."""
    merged = []
    for segment in segments:
        if merged and merged[-1]["hardware"] == segment["hardware"]:
            last = merged[-1]
            merged[-1] = {"steps": [last["steps"][0], segment["steps"][1]], "hardware": segment["hardware"],
                          "wall_time_s": last["wall_time_s"] + segment["wall_time_s"]}
        else:
            merged.append(segment)
    if len(merged) == 1:
        return merged[0]["hardware"]
    return "; ".join(f"{s['hardware']}: steps {s['steps'][0]:,}–{s['steps'][1]:,} ({s['wall_time_s']:,.0f} s)"
                     for s in merged)


def manifest_lock(directory: Path):
    """One writer of a manifest at a time (``minidiff.files.folder_lock``, waiting its turn)."""
    return folder_lock(directory, wait=True, what="manifest update")


def save_weights(model, name: str, *, directory=None, recipe: str, data: str, steps: int,
                 wall_time_s: float, hardware: str | None = None, metrics: dict | None = None,
                 better: tuple[str, str] | None = None, companions: dict | None = None, **record) -> Path:
    """Save ``model``'s weights as ``<name>.safetensors`` and record how they were made in the manifest.

    The file's metadata names the model class and config too, so a file copied without its manifest
    still says what it is. Other manifest entries are left untouched. ``better`` = (metric, "lower" or
    "higher") says which figure decides whether this model may replace another (``ship``);
    ``companions`` = {suffix: write} adds files the model needs, ``write(path)`` writing each
    atomically to ``<name>.<suffix>`` (``{"tokenizer.json": tokenizer.save}``); ``record`` adds anything
    else the entry should keep (a run's ``segments``, the weights it ``started_from``).
    """
    directory = checkpoints_dir(directory)
    path = directory / f"{name}.safetensors"
    config = model_config(model)
    metadata = {"minidiff_model": type(model).__name__, "config": json.dumps(config, sort_keys=True)}
    with manifest_lock(directory):
        save_safetensors_atomic(model.state_dict(), path, metadata)
        manifest = read_manifest(directory)
        manifest[name] = _entry(path, type(model).__name__, config, recipe, data, steps, wall_time_s, hardware,
                                metrics, better)
        if companions:
            manifest[name]["companions"] = {}
            for suffix, write in companions.items():
                write(directory / f"{name}.{suffix}")
                manifest[name]["companions"][suffix] = {"file": f"{name}.{suffix}",
                                                        "sha256": sha256sum(directory / f"{name}.{suffix}")}
        manifest[name].update(record)
        write_json_atomic(dict(sorted(manifest.items())), directory / "manifest.json")
    return path


def record_file(name: str, path, *, model: str, config: dict, recipe: str, data: str, steps: int,
                wall_time_s: float, hardware: str | None = None, metrics: dict | None = None,
                better: tuple[str, str] | None = None, **record) -> dict:
    """Record a file that is no model of its own — a LoRA adapter, written beside its manifest by other
    code — in that folder's manifest, as ``save_weights`` records a model: ``model`` says what it is
    (e.g. "LoRA adapter"), ``config`` how it was made. It ships like any model (``ship``)."""
    path = Path(path)
    with manifest_lock(path.parent):
        manifest = read_manifest(path.parent)
        manifest[name] = {**_entry(path, model, config, recipe, data, steps, wall_time_s, hardware, metrics, better),
                          **record}
        write_json_atomic(dict(sorted(manifest.items())), path.parent / "manifest.json")
    return manifest[name]


def _entry(path, model: str, config, recipe, data, steps, wall_time_s, hardware, metrics, better) -> dict:
    entry = {
        "file": path.name,
        "sha256": sha256sum(path),
        "model": model,
        "config": config,
        "recipe": recipe,
        "data": data,
        "steps": steps,
        "wall_time_s": round(wall_time_s, 1),
        "hardware": hardware or hardware_description(),
        "metrics": metrics or {},
        "created": datetime.date.today().isoformat(),
    }
    if better is not None:
        entry["better"] = {"metric": better[0], "is": better[1]}
    return entry


def ship(name: str, source, *, force: bool = False, directory=None) -> dict:
    """Ship the model a recipe left in the run folder ``source`` over ``data/checkpoints`` — the one way
    shipped weights change. It refuses a model that measures worse than the one it would replace (by
    the recipe's ``better`` figure) unless ``force``; the replaced entry's sha256, steps and figures
    stay in the new entry as ``previous``, so nothing measured is lost. Its companion files go with it."""
    source, directory = Path(source), checkpoints_dir(directory)
    candidate = read_manifest(source).get(name)
    if candidate is None:
        raise DataError(f"No trained {name} in {source}: train it first with `python -m minidiff train {name}`.")
    files = [candidate["file"], *(c["file"] for c in candidate.get("companions", {}).values())]
    hashes = [candidate["sha256"], *(c["sha256"] for c in candidate.get("companions", {}).values())]
    for file, sha256 in zip(files, hashes):
        verify_sha256(source / file, sha256, f"Train it again with `{candidate['recipe']}`.")
    with manifest_lock(directory):
        manifest = read_manifest(directory)
        shipped = manifest.get(name)
        if shipped is not None and not force and "better" in candidate:
            metric, better = candidate["better"]["metric"], candidate["better"]["is"]
            new, old = candidate["metrics"].get(metric), shipped["metrics"].get(metric)
            if old is not None and (new is None or (new > old if better == "lower" else new < old)):
                raise DataError(f"Refusing to replace the shipped {name} ({metric} {old:.4g}, {shipped['steps']:,} "
                                f"steps) with one that measures worse ({metric} {new:.4g}, {candidate['steps']:,} "
                                f"steps). Train it longer, or ship it anyway with --force.")
        target = directory / f"{name}.safetensors"
        for file in files[1:]:  # companions are named <name>.<suffix> in both folders
            write_atomic(directory / file, lambda tmp, file=file: shutil.copyfile(source / file, tmp))
        write_atomic(target, lambda tmp: shutil.copyfile(source / candidate["file"], tmp))
        entry = {**candidate, "file": target.name}
        if shipped is not None:
            entry["previous"] = {k: shipped[k] for k in ("sha256", "steps", "hardware", "metrics", "created")}
        manifest[name] = entry
        write_json_atomic(dict(sorted(manifest.items())), directory / "manifest.json")
    return entry


def record_metrics(name: str, metrics: dict, *, directory=None) -> dict:
    """Add measurements made after training (e.g. a slow benchmark) to ``name``'s manifest entry;
    the weights and their hash are untouched. Returns the entry's updated metrics."""
    directory = checkpoints_dir(directory)
    with manifest_lock(directory):
        manifest = read_manifest(directory)
        if name not in manifest:
            raise DataError(f"No checkpoint named {name!r} in {directory / 'manifest.json'}: ship it first with "
                            f"`python -m minidiff train {name} --ship`.")
        manifest[name]["metrics"] = {**manifest[name]["metrics"], **metrics}
        write_json_atomic(manifest, directory / "manifest.json")
    return manifest[name]["metrics"]


def shipped_start(name: str, model, *, directory=None) -> dict:
    """What ``train(start_from=…)`` needs to train the shipped ``name`` on into ``model`` (built by the
    same recipe): its verified weights, their sha256 and step, and where and how long they trained."""
    shipped = load_pretrained(name, directory=directory)
    if shipped.config != model.config:
        raise DataError(f"The shipped {name} was built with another config than this recipe's "
                        f"({shipped.config} vs {model.config}): it cannot be trained on by it.")
    entry = read_manifest(directory)[name]
    one_stretch = [{"steps": [1, entry["steps"]], "hardware": entry["hardware"], "wall_time_s": entry["wall_time_s"]}]
    return {"weights": shipped.state_dict(), "sha256": entry["sha256"], "step": entry["steps"],
            "wall_time_s": entry["wall_time_s"], "segments": entry.get("segments", one_stretch)}


def built_on(name: str, role: str, used: str, harm: str, *, directory=None) -> str:
    """The shipped model that checkpoint ``name`` was trained with in ``role`` (its manifest entry's
    ``{role: {"name", "sha256"}}``), only if it is still the very same file; otherwise one DataError
    that says what ``used`` of it and the ``harm`` a different one would do."""
    manifest = read_manifest(directory)
    wanted = manifest[name][role]
    shipped = manifest.get(wanted["name"], {}).get("sha256", "missing")
    if shipped != wanted["sha256"]:
        raise DataError(f"{name} was trained {used} {wanted['name']} {wanted['sha256'][:12]}…, but the shipped "
                        f"{wanted['name']} is {shipped[:12]}…: {harm}. Retrain it with `python -m minidiff train "
                        f"{name} --ship`, or restore data/checkpoints with git.")
    return wanted["name"]


def _restore(directory: Path, recipe: str) -> str:
    return f"restore the file and its manifest with `git checkout -- {directory}`, or re-create them with `{recipe}`"


def companion_path(name: str, suffix: str, *, directory=None) -> Path:
    """The checked path of checkpoint ``name``'s companion file ``<name>.<suffix>``: it must be listed in
    the manifest entry and match the sha256 recorded there, or one DataError says what to do."""
    directory = checkpoints_dir(directory)
    entry = read_manifest(directory).get(name)
    if entry is None:
        raise DataError(f"No checkpoint named {name!r} in {directory / 'manifest.json'}: train one with "
                        f"`python -m minidiff train {name} --ship`.")
    companion = entry.get("companions", {}).get(suffix)
    if companion is None:
        raise DataError(f"The manifest entry of {name} in {directory} lists no {suffix} beside the weights: "
                        f"re-create both with `{entry['recipe']}`.")
    return verify_sha256(directory / companion["file"], companion["sha256"],
                         f"The file or its manifest entry changed: {_restore(directory, entry['recipe'])}.")


def load_clip(name: str, *, directory=None, device="cpu") -> tuple[CLIP, Tokenizer]:
    """A shipped CLIP and the tokenizer it reads (``<name>.tokenizer.json``, checked against its
    sha256 in the manifest): ``model, tokenizer = load_clip("clip_shapes")``."""
    model = load_pretrained(name, directory=directory, device=device)
    if not isinstance(model, CLIP):
        raise DataError(f"{name} is a {type(model).__name__}, not a CLIP: pick a CLIP checkpoint (clip_shapes, "
                        "clip_mnist).")
    tokenizer = Tokenizer.load(companion_path(name, "tokenizer.json", directory=directory))
    if tokenizer.vocab_size != model.config.vocab_size:
        raise DataError(f"{name}'s tokenizer has {tokenizer.vocab_size} tokens but its text encoder reads "
                        f"{model.config.vocab_size}: re-create both with `{read_manifest(directory)[name]['recipe']}`.")
    return model, tokenizer


def load_pretrained(name: str, *, directory=None, device="cpu"):
    """The shipped model ``name``, rebuilt from its manifest entry (class and config), with its
    verified weights, in eval mode. Every way this can go wrong raises one DataError that names the
    file and says how to fix it."""
    directory = checkpoints_dir(directory)
    if not (directory / "manifest.json").exists():
        raise DataError(f"{directory / 'manifest.json'} is missing: restore it with "
                        f"`git checkout -- {directory / 'manifest.json'}`.")
    manifest = read_manifest(directory)
    if name not in manifest:
        raise DataError(f"No checkpoint named {name!r} in {directory / 'manifest.json'} "
                        f"(available: {', '.join(sorted(manifest)) or 'none'}). Train one with "
                        f"`python -m minidiff train {name} --ship`.")
    entry = manifest[name]
    path = directory / entry["file"]
    recipe = entry["recipe"]
    restore = _restore(directory, recipe)
    if not path.exists():
        raise DataError(f"{path} is missing: {restore}.")
    verify_sha256(path, entry["sha256"], f"The file or its manifest entry changed: {restore}.")

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise DataError(f"{path} matches the manifest's sha256 but is not a safetensors file ({err}): the "
                        f"manifest entry is wrong. Re-create both with `{recipe}`.") from err
    held = metadata.get("minidiff_model")
    if held is None:
        raise DataError(f"{path} was not saved by minidiff (its metadata names no model): {restore}.")
    if held != entry["model"]:
        raise DataError(f"{path} holds a {held}, but the manifest says {entry['model']}. "
                        f"Re-create it with `{recipe}`, or restore both with `git checkout -- {directory}`.")
    if held not in MODELS:
        raise DataError(f"{path} holds a {held}, which this version of minidiff does not know "
                        f"(it knows {', '.join(MODELS)}). Update minidiff, or pick another checkpoint.")
    if json.loads(metadata.get("config", "null")) != entry["config"]:
        raise DataError(f"{path} was saved with config {metadata.get('config')}, but the manifest says "
                        f"{json.dumps(entry['config'], sort_keys=True)}. Re-create it with `{recipe}`.")

    model_cls, config_cls = MODELS[held]
    config, state = entry["config"], load_file(str(path), device="cpu")
    upgrade = getattr(model_cls, "upgrade_checkpoint", None)
    if upgrade is not None:
        config, state = upgrade(config, state)
    try:
        model = model_cls(config_cls(**config))
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: its config no longer builds a {held} ({err}). Re-create it with `{recipe}`.")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        problems = [f"missing {k}" for k in expected.keys() - found.keys()]
        problems += [f"unexpected {k}" for k in found.keys() - expected.keys()]
        problems += [f"{k} is {found[k]}, expected {expected[k]}"
                     for k in expected.keys() & found.keys() if found[k] != expected[k]]
        raise DataError(f"{path} does not fit {held}({entry['config']}): "
                        f"{'; '.join(sorted(problems)[:5])}. The code changed since it was saved: "
                        f"re-create it with `{recipe}`.")
    model.load_state_dict(state)
    return model.to(device).eval()
