"""Latent diffusion (Rombach et al., 2022): denoise a small code of the picture, not its pixels.

A 64×64×3 shapes picture is 12,288 numbers; the autoencoder of chapter 07 squeezes it into an
8×8×4 latent, 256 numbers, 48× fewer — Stable Diffusion's 512×512×3 → 64×64×4 is the same 48×.
The denoiser is the same U-Net, trained on latents instead of pixels, and the pipeline ends with
the decoder:

    training:  picture x → encoder → z = s·μ(x) → the usual diffusion loss on z
    sampling:  noise z_T → sampler(U-Net) → z_0 → decoder(z_0 / s) → picture

**The scaling factor s.** The noise schedules assume data of about unit variance: at the largest σ
the noisy sample should be almost pure noise, and the signal-to-noise ratio at each step is what
the schedule says only if the data's spread is 1. An autoencoder's latents have whatever spread
training gave them, so we measure their standard deviation over the training set once and store
s = 1 / std with the autoencoder (``VAEConfig.scaling_factor``; Stable Diffusion's 0.18215 is the
same number for its autoencoder). Latents are multiplied by s before diffusion and divided by it
before decoding.

**The cache.** The autoencoder is frozen while the denoiser trains, so every training picture is
encoded once (its posterior mean μ) and the scaled latents are kept in a file beside the runs,
named after the autoencoder's sha256 and the pictures, and reused by every later run.
"""
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from minidiff.files import DataError, project_dir, save_safetensors_atomic
from minidiff.models.autoencoder import encode_all
from minidiff.models.controlnet import ControlNet, Controlled
from minidiff.weights import built_on, load_pretrained, read_manifest


def measure_scaling_factor(latents: torch.Tensor) -> float:
    """s = 1 / std of the training latents (over every number of every latent), so s·z has unit spread."""
    return 1.0 / latents.float().std().item()


def encode_latents(vae, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Pictures in [-1, 1] → scaled latents s·μ(x), on the CPU."""
    device = next(vae.parameters()).device
    codes = torch.cat([encode_all(vae, chunk.to(device)).cpu() for chunk in images.split(batch_size)])
    return codes * vae.config.scaling_factor


def to_model_space(decode, images: torch.Tensor) -> torch.Tensor:
    """Pictures in [-1, 1] → what the denoiser works on: the pictures themselves for a pixel model
    (``decode`` None), their scaled latents for a latent one (by ``decode.vae``, see ``latent_decoder``)."""
    return images if decode is None else encode_latents(decode.vae, images)


def latent_decoder(vae):
    """The pipeline's last step for a latent model: scaled latents → pictures, decode(z / s). The
    autoencoder travels with it as ``decode.vae`` (to encode pictures for the same model)."""
    @torch.no_grad()
    def decode(z: torch.Tensor) -> torch.Tensor:
        vae.eval()
        device = next(vae.parameters()).device
        return vae.decode(z.to(device) / vae.config.scaling_factor)
    decode.vae = vae
    return decode


def cached_latents(vae, vae_sha256: str, what: dict, images, folder=None) -> torch.Tensor:
    """The scaled latents of the pictures ``what`` describes (a JSON-able dict, e.g. the dataset's
    seed, size, count and split), encoded by the autoencoder with this sha256 once and read back on
    every later call. ``images`` is a function that makes the pictures, called only on a miss. A file
    whose description does not match (another autoencoder, other pictures) is never used. The files
    live in ``folder`` (default: ``runs/latents``, or under ``$MINIDIFF_RUNS``)."""
    key = json.dumps({"autoencoder": vae_sha256, **what}, sort_keys=True)
    folder = Path(folder) if folder else Path(os.environ.get("MINIDIFF_RUNS", project_dir() / "runs")) / "latents"
    path = folder / f"{vae_sha256[:12]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("what") == key:
                    return load_file(str(path))["latents"]
        except (SafetensorError, OSError, KeyError):  # a damaged cache is only a cache: encode again
            pass
    latents = encode_latents(vae, images())
    save_safetensors_atomic({"latents": latents.contiguous()}, path, metadata={"what": key})
    return latents


def load_denoiser(name: str, directory=None):
    """A shipped denoiser and how its samples become pictures: ``(model, decode)``, where ``decode`` is
    None for a pixel model and, for a latent one, the decoder of the autoencoder its manifest entry
    names — only if that autoencoder is the very one it was trained on (same sha256). A ControlNet
    comes attached to the base U-Net it was trained to steer (``Controlled``), checked alike."""
    model, entry = load_pretrained(name, directory=directory), read_manifest(directory)[name]
    if isinstance(model, ControlNet):  # (a grown model, like inpaint_shapes, names its base too, but stands alone)
        base = built_on(name, "base", "to steer", "it would steer it wrongly", directory=directory)
        base, decode = load_denoiser(base, directory)
        return Controlled(base, model), decode
    if "autoencoder" not in entry:
        return model, None
    vae = built_on(name, "autoencoder", "on the latents of", "its pictures would decode wrongly", directory=directory)
    return model, latent_decoder(load_pretrained(vae, directory=directory))
