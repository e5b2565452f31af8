"""Saving and loading weights and training state, without pickle.

Two kinds of files live here:

* **Shipped weights**: ``data/checkpoints/<name>.safetensors`` plus one entry in
  ``data/checkpoints/manifest.json`` saying which class and config built it, its SHA-256, and the one
  command (the *recipe*) that re-creates it. ``load_pretrained`` checks all of that before use.
* **Training checkpoints**: ``<out>/checkpoint-<step>.safetensors`` (every tensor: weights, EMA,
  optimizer moments, RNG states) and ``<out>/checkpoint.json`` (everything else, and the name of the
  tensor file that belongs to it). ``train.py`` uses these to resume bit-exactly.

Tensors go to safetensors and everything else to JSON, so loading a file can never run code
(unlike ``torch.save``/``pickle``). Every write goes to a temporary file in the same folder, is
fsynced, and is renamed into place with ``os.replace``, which is atomic: a crash leaves either the
old file or the new one, never half of one.
"""
import dataclasses
import datetime
import json
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minidiff.download import DataError, data_dir, sha256sum, verify_sha256, write_atomic


# ----------------------------------------------------------------------------- atomic writes

def save_safetensors_atomic(tensors: dict, path, metadata: dict | None = None) -> Path:
    """Write ``tensors`` (name -> Tensor) and string ``metadata`` to a safetensors file, atomically."""
    # safetensors refuses views and tensors sharing memory (tied weights), so store plain copies
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_json_atomic(obj, path) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2) + "\n"
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


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
    """The constructor kwargs of ``model`` as a JSON-ready dict (tuples become lists)."""
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict):
        raise TypeError(f"{type(model).__name__} needs a .config (dataclass or dict of constructor "
                        "kwargs) so it can be rebuilt from a checkpoint")
    return json.loads(json.dumps(config))


def hardware_description(device: torch.device | str | None = None, world: int = 1) -> str:
    """What ``device`` is (default: the fastest device here, all its GPUs), for the manifest and the
    benchmark results, e.g. '2-core CPU (x86_64), torch 2.13.0+cpu'. ``world``: how many such devices
    a distributed run used."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        world = torch.cuda.device_count() if device == "cuda" else 1
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = f"Apple MPS ({platform.machine()})"
    else:
        name = f"{os.cpu_count()}-core CPU ({platform.machine()})"
    return f"{f'{world}x ' if world > 1 else ''}{name}, torch {torch.__version__}"


def log_segment(segments: list[dict], first: int, last: int, hardware: str, seconds: float) -> list[dict]:
    """``segments`` with a stretch of training (steps first..last on ``hardware``) appended, if it has steps."""
    if last < first:
        return segments
    return segments + [{"steps": [first, last], "hardware": hardware, "wall_time_s": round(seconds, 1)}]


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


def save_weights(model, name: str, *, directory=None, recipe: str, data: str, steps: int,
                 wall_time_s: float, hardware: str | None = None, metrics: dict | None = None) -> Path:
    """Save ``model``'s weights as ``<name>.safetensors`` and record how they were made in the manifest.

    The file's metadata names the model class and config too, so a file copied without its manifest
    still says what it is. Other manifest entries are left untouched.
    """
    directory = checkpoints_dir(directory)
    path = directory / f"{name}.safetensors"
    config = model_config(model)
    metadata = {"minidiff_model": type(model).__name__, "config": json.dumps(config, sort_keys=True)}
    save_safetensors_atomic(model.state_dict(), path, metadata)
    manifest = read_manifest(directory)
    manifest[name] = {
        "file": path.name,
        "sha256": sha256sum(path),
        "model": type(model).__name__,
        "config": config,
        "recipe": recipe,
        "data": data,
        "steps": steps,
        "wall_time_s": round(wall_time_s, 1),
        "hardware": hardware or hardware_description(),
        "metrics": metrics or {},
        "created": datetime.date.today().isoformat(),
    }
    write_json_atomic(dict(sorted(manifest.items())), directory / "manifest.json")
    return path


def record_metrics(name: str, metrics: dict, *, directory=None) -> dict:
    """Add measurements made after training (e.g. a slow benchmark) to ``name``'s manifest entry;
    the weights and their hash are untouched. Returns the entry's updated metrics."""
    directory = checkpoints_dir(directory)
    manifest = read_manifest(directory)
    if name not in manifest:
        raise DataError(f"No checkpoint named {name!r} in {directory / 'manifest.json'}: ship it first with "
                        f"`python -m minidiff train {name}`.")
    manifest[name]["metrics"] = {**manifest[name]["metrics"], **metrics}
    write_json_atomic(manifest, directory / "manifest.json")
    return manifest[name]["metrics"]


def load_pretrained(name: str, model_cls, *, directory=None, device="cpu"):
    """Build ``model_cls(**config)`` from the manifest entry ``name``, load its verified weights, eval mode.

    Every way this can go wrong raises one DataError that names the file and says how to fix it.
    """
    directory = checkpoints_dir(directory)
    manifest = read_manifest(directory)
    if name not in manifest:
        available = ", ".join(sorted(manifest)) or "none"
        raise DataError(f"No checkpoint named {name!r} in {directory / 'manifest.json'} "
                        f"(available: {available}). Create it with its chapter's recipe, e.g. "
                        f"`python -m minidiff train {name}`.")
    entry = manifest[name]
    path = directory / entry["file"]
    recipe = entry["recipe"]
    if not path.exists():
        raise DataError(f"{path} is missing. Re-create it with `{recipe}`, "
                        f"or restore it with `git checkout -- {path}`.")
    verify_sha256(path, entry["sha256"], f"Re-create it with `{recipe}`, "
                                         f"or restore it with `git checkout -- {path}`.")

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    held = metadata.get("minidiff_model", "unknown model")
    if held != model_cls.__name__ or entry["model"] != model_cls.__name__:
        raise DataError(f"{path} holds a {held}, not a {model_cls.__name__}. "
                        f"Load it with {held}, or pick another checkpoint.")
    if json.loads(metadata.get("config", "null")) != entry["config"]:
        raise DataError(f"{path} was saved with config {metadata.get('config')}, but the manifest says "
                        f"{json.dumps(entry['config'], sort_keys=True)}. Re-create it with `{recipe}`.")

    model = model_cls(**entry["config"])
    state = load_file(str(path), device="cpu")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        problems = [f"missing {k}" for k in expected.keys() - found.keys()]
        problems += [f"unexpected {k}" for k in found.keys() - expected.keys()]
        problems += [f"{k} is {found[k]}, expected {expected[k]}"
                     for k in expected.keys() & found.keys() if found[k] != expected[k]]
        raise DataError(f"{path} does not fit {model_cls.__name__}({entry['config']}): "
                        f"{'; '.join(sorted(problems)[:5])}. The code changed since it was saved: "
                        f"re-create it with `{recipe}`.")
    model.load_state_dict(state)
    return model.to(device).eval()


# ----------------------------------------------------------------------------- training state

def optimizer_state(optimizer, prefix: str) -> tuple[dict, dict]:
    """Split ``optimizer.state_dict()`` into tensors (``<prefix>.<param index>.<key>``) and JSON."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer, tensors: dict, saved: dict, prefix: str) -> None:
    """Inverse of ``optimizer_state``."""
    state = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            index, key = name[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for name, value in saved["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def rng_state(device=None) -> tuple[dict, dict]:
    """Every random number generator's state: torch (CPU and ``device``) as uint8 tensors, Python and
    NumPy as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if device is not None and torch.device(device).type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    if device is not None and torch.device(device).type == "mps":
        tensors["mps"] = torch.mps.get_rng_state()
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, keys.tolist(), pos, has_gauss, cached]}
    return tensors, state


def set_rng_state(tensors: dict, state: dict, device=None) -> None:
    """Inverse of ``rng_state``. An accelerator's generator is restored only when resuming on that kind
    of device: a run checkpointed on a GPU resumes on a CPU (inexactly: its GPU draws are gone)."""
    torch.set_rng_state(tensors["torch"])
    kind = None if device is None else torch.device(device).type
    if "cuda" in tensors and kind == "cuda":
        torch.cuda.set_rng_state(tensors["cuda"], device)
    if "mps" in tensors and kind == "mps":
        torch.mps.set_rng_state(tensors["mps"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(out_dir, step: int, tensors: dict, state: dict) -> Path:
    """Write a training checkpoint: tensors first, then the JSON that points at them.

    The JSON is replaced last, so until it is, ``checkpoint.json`` still names the previous complete
    tensor file; a crash at any moment leaves a checkpoint whose two halves belong together. Tensor
    files no longer named by the JSON are deleted afterwards.
    """
    out_dir = Path(out_dir)
    tensor_file = f"checkpoint-{step:08d}.safetensors"
    save_safetensors_atomic(tensors, out_dir / tensor_file)
    json_path = write_json_atomic({**state, "step": step, "tensors": tensor_file},
                                  out_dir / "checkpoint.json")
    for old in out_dir.glob("checkpoint-*.safetensors"):
        if old.name != tensor_file:
            old.unlink()
    return json_path


def load_checkpoint(out_dir) -> tuple[dict, dict] | None:
    """The latest training checkpoint in ``out_dir`` as (tensors, state), or None if there is none."""
    json_path = Path(out_dir) / "checkpoint.json"
    if not json_path.exists():
        return None
    try:
        state = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{json_path} is not valid JSON ({e}). Delete {out_dir} to start over.")
    tensor_path = Path(out_dir) / state["tensors"]
    if not tensor_path.exists():
        raise DataError(f"{tensor_path}, named by {json_path}, is missing. Delete {out_dir} to start over.")
    return load_file(str(tensor_path)), state
