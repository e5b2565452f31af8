"""Which device to run on, and how to describe it (for the manifest and the benchmark results)."""
import os
import platform

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks the fastest available: CUDA, then Apple's MPS, then CPU. Asking for a device
    this machine lacks is one clear error."""
    kind = str(name).split(":")[0]
    if kind not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA GPU (PyTorch {torch.__version__}); "
                         "use --device cpu or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: Apple's MPS is not available here; use --device cpu or auto")
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def hardware_description(device: torch.device | str | None = None, world: int = 1) -> str:
    """What ``device`` is (default: the fastest device here, all its GPUs), for the manifest and the
    benchmark results, e.g. '2-core CPU (x86_64), torch 2.13.0+cpu'. ``world``: how many such devices
    a distributed run used."""
    if device is None:
        device = pick_device()
        world = torch.cuda.device_count() if device.type == "cuda" else 1
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = f"Apple MPS ({platform.machine()})"
    else:
        name = f"{os.cpu_count()}-core CPU ({platform.machine()})"
    return f"{f'{world}x ' if world > 1 else ''}{name}, torch {torch.__version__}"
