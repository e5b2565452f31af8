"""Resuming training exactly: what a run saves every ``checkpoint_every`` steps, and how it comes back.

A training checkpoint is two files in the run's folder (``runs/<recipe>/``):
``checkpoint-<step>.safetensors`` (every tensor: weights, EMA, optimizer moments, RNG states) and
``checkpoint.json`` (everything else — the training settings, the loss history, which hardware
trained which steps — and the name of the tensor file that belongs to it). Batches are a pure
function of (seed, step), so with every RNG state restored, N steps straight and N/2 + resume + N/2
give bit-identical weights on a CPU. Shipped weights are ``minidiff.weights``'s business.

Tensors go to safetensors and everything else to JSON, so loading can never run code (unlike
``torch.save``/``pickle``); every file is written atomically.
"""
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file

from minidiff.files import DataError, save_safetensors_atomic, sha256sum, verify_sha256, write_json_atomic


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
    json_path = write_json_atomic({**state, "step": step, "tensors": tensor_file,
                                   "sha256": sha256sum(out_dir / tensor_file)}, out_dir / "checkpoint.json")
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
    if "sha256" in state:  # (checkpoints from before the checksum resume unchecked)
        verify_sha256(tensor_path, state["sha256"], f"Delete {out_dir} to start over.")
    try:
        return load_file(str(tensor_path)), state
    except (SafetensorError, OSError) as err:
        raise DataError(f"{tensor_path} is damaged ({err}). Delete {out_dir} to start over.") from err


def log_segment(segments: list[dict], first: int, last: int, hardware: str, seconds: float) -> list[dict]:
    """``segments`` with a stretch of training (steps first..last on ``hardware``) appended, if it has steps."""
    if last < first:
        return segments
    return segments + [{"steps": [first, last], "hardware": hardware, "wall_time_s": round(seconds, 1)}]


def _gather(tensor: torch.Tensor, device) -> list[torch.Tensor]:
    """Every rank's copy of ``tensor`` (same shape on all ranks), on the CPU."""
    parts = [torch.empty_like(tensor, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.to(device))
    return [p.cpu() for p in parts]


def _rng_tensors(device, world: int) -> tuple[dict, dict]:
    """RNG states to save. Under DDP each rank draws its own noise, so every rank's torch states are
    gathered; Python's and NumPy's come from rank 0 (loss functions should use torch's RNG)."""
    tensors, state = rng_state(device)
    if world == 1:
        return {f"rng.0.{k}": v for k, v in tensors.items()}, state
    return {f"rng.{r}.{k}": v for k, t in tensors.items() for r, v in enumerate(_gather(t, device))}, state


def run_identity(model, loss_fn, data, start_from: dict | None = None) -> dict:
    """What a checkpoint must have been trained on to be resumed by this run: the model (its class and
    config), the loss function, the number of examples and the weights it started from (none, or
    shipped ones: their sha256 and step). The training settings are checked apart."""
    config = getattr(model, "config", None)
    loss = getattr(loss_fn, "func", loss_fn)  # a functools.partial names the function it wraps
    return json.loads(json.dumps({
        "model": type(model).__name__,
        "model_config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None,
        "loss": f"{getattr(loss, '__module__', '')}.{getattr(loss, '__qualname__', type(loss).__name__)}",
        "examples": len(data),
        "started_from": None if start_from is None else {k: start_from[k] for k in ("sha256", "step")}}))


def check_start(start_from: dict, config) -> None:
    """Training on from finished weights must have steps left to take."""
    if start_from["step"] >= config.steps:
        raise DataError(f"The weights to train on from have {start_from['step']:,} steps already: ask for more "
                        f"(e.g. --steps {start_from['step'] + 5000}).")


def check_same_run(saved: dict | None, identity: dict, out_dir) -> None:
    """Refuse to resume a checkpoint of another model, loss or data set, naming what differs."""
    if saved is None:  # (checkpoints from before this record resume as they did)
        return
    if saved.get("started_from") != identity["started_from"]:
        def origin(start):
            return "from scratch" if start is None else \
                f"from weights {start['sha256'][:12]}… at step {start['step']:,}"
        raise DataError(f"{out_dir} holds a run that started {origin(saved.get('started_from'))}, not "
                        f"{origin(identity['started_from'])}. Continue it as it was started, or delete that "
                        "folder to start afresh.")
    changed = [k for k in identity if saved.get(k) != identity[k]]
    if "model_config" in changed and saved.get("model_config") and identity["model_config"]:
        old, new = saved["model_config"], identity["model_config"]
        changed = [f"model_config.{k}: {old.get(k)!r} → {new.get(k)!r}" for k in new if old.get(k) != new[k]] + \
            [k for k in changed if k != "model_config"]
    if changed:
        raise DataError(f"{out_dir} holds a checkpoint of another run ({', '.join(changed)}). Delete that folder "
                        "to start afresh, or resume with the model, loss and data it was made with.")


def save_training_state(config, step, model, ema, optimizers, history, wall_time_s, segments, device, rank, world,
                        identity):
    """Everything a run needs to continue exactly, written by rank 0 into ``config.out_dir``."""
    tensors, rng = _rng_tensors(device, world)  # a collective: every rank takes part
    if rank != 0:
        return
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    saved_optimizers = {}
    for name, optimizer in optimizers.items():
        optimizer_tensors, saved_optimizers[name] = optimizer_state(optimizer, f"optimizer.{name}")
        tensors.update(optimizer_tensors)
    # the schedule needs no state of its own: the learning rate is lr_at(step)
    state = {"config": dataclasses.asdict(config), "run": identity, "optimizers": saved_optimizers, "rng": rng,
             "history": history, "wall_time_s": wall_time_s, "segments": segments}
    save_checkpoint(config.out_dir, step, tensors, state)


# settings a resumed run may change: how long to train, and how it reports and saves progress
RESUMABLE_CHANGES = {"steps", "device", "log_every", "checkpoint_every", "out_dir", "progress"}


def check_same_recipe(saved: dict, config) -> None:
    """Refuse to resume a checkpoint that was trained with other settings (a changed recipe)."""
    now = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = sorted(k for k in now.keys() - RESUMABLE_CHANGES if saved.get(k) != now[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} → {now[k]!r}" for k in changed)
        raise DataError(f"{config.out_dir} holds a checkpoint trained with other settings ({details}). "
                        f"Delete that folder to start afresh, or resume with the settings it was made with.")


def restore_training_state(checkpoint, model, ema, optimizers, device, rank) -> tuple[int, list, float, list]:
    """Load a checkpoint's weights, EMA, optimizer moments and RNG states in place; returns
    (step, history, wall time so far, segments: which hardware trained which steps)."""
    tensors, state = checkpoint

    def prefixed(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        model.load_state_dict(prefixed("model."))
        if ema is not None:
            ema.load_state_dict(prefixed("ema."))
    except RuntimeError as err:  # another architecture: missing, unexpected or reshaped weights
        first = str(err).strip().splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise DataError(f"{state['config']['out_dir']} holds a checkpoint of another model ({first}). Delete "
                        "that folder to start afresh, or resume with the model it was made with.") from None
    for name, optimizer in optimizers.items():
        load_optimizer_state(optimizer, tensors, state["optimizers"][name], f"optimizer.{name}")
    rng = prefixed(f"rng.{rank}.") or prefixed("rng.0.")  # a different world size resumes inexactly
    set_rng_state(rng, state["rng"], device)
    unrecorded = [{"steps": [1, state["step"]], "hardware": "not recorded", "wall_time_s": state["wall_time_s"]}]
    return state["step"], state["history"], state["wall_time_s"], state.get("segments", unrecorded)
