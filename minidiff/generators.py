"""Everything ``python -m minidiff sample`` can draw from, and the file format samples are kept in.

A generator is a function ``(n, seed) -> (images (n, C, H, W) in [-1, 1], labels or None)``.
The data sources here are the baseline every model is compared with; each model chapter
registers its trained model the same way. Samples are saved as a PNG grid (to look at) and a
safetensors file (to score with ``python -m minidiff evaluate``).
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from .autoencoder import VAE
from .checkpoints import load_pretrained, save_safetensors_atomic
from .data import load_fashion_mnist, load_mnist, to_tensor
from .download import DataError, write_atomic
from .gan import GAN
from .samplers import generate
from .shapes import make_shapes
from .unet import UNet
from .viz import image_grid

GENERATORS = {}


def generator(name):
    def register(fn):
        GENERATORS[name] = fn
        return fn
    return register


def _draw_real(load, n, seed):
    images, labels = load("test")
    pick = np.random.default_rng(seed).choice(len(images), n, replace=False)
    return to_tensor(images[pick]), torch.from_numpy(labels[pick].astype(np.int64))


@generator("mnist")
def real_mnist(n, seed):
    """Real test digits: what a perfect generator would give."""
    return _draw_real(load_mnist, n, seed)


@generator("fashion-mnist")
def real_fashion_mnist(n, seed):
    return _draw_real(load_fashion_mnist, n, seed)


@generator("shapes")
def shapes(n, seed):
    """The procedural shapes-with-captions set (its own seeded generator)."""
    return to_tensor(make_shapes(n, seed=seed)["images"]), None


def _shipped(name, model_cls):
    """A generator that samples a shipped checkpoint's ``.sample(n, generator)``."""
    def draw(n, seed):
        with torch.no_grad():
            return load_pretrained(name, model_cls).sample(n, torch.Generator().manual_seed(seed)).clamp(-1, 1), None
    draw.__doc__ = f"Samples from the shipped checkpoint {name!r}."
    return draw


for _name, _model_cls in [("vae_mnist", VAE), ("dcgan_mnist", GAN), ("dcgan_mnist_collapse", GAN)]:
    GENERATORS[_name] = _shipped(_name, _model_cls)


def _shipped_diffusion(name):
    """A generator that walks a shipped denoiser back from noise; a class-conditional model is asked
    for the digits 0, 1, …, 9, 0, 1, … in turn (with classifier-free guidance)."""
    def draw(n, seed, sampler="dpmpp_2m", steps=20, guidance_scale=3.0):
        model = load_pretrained(name, UNet)
        labels = None if model.num_classes is None else torch.arange(n) % model.num_classes
        images = generate(model, n, sampler=sampler, num_inference_steps=steps, labels=labels, seed=seed,
                          guidance_scale=1.0 if labels is None else guidance_scale)
        return images, labels
    draw.__doc__ = f"Samples from the shipped denoiser {name!r} (any sampler, any number of steps)."
    return draw


DIFFUSION_SOURCES = ("ddpm_mnist", "ddpm_mnist_cond")
for _name in DIFFUSION_SOURCES:
    GENERATORS[_name] = _shipped_diffusion(_name)


def save_samples(images: torch.Tensor, labels, png_path) -> list:
    """Write ``<png_path>`` (a grid) and the same name with ``.safetensors`` (the exact tensors)."""
    png_path = Path(png_path)
    tensors = {"images": images.float().contiguous()}
    if labels is not None:
        tensors["labels"] = torch.as_tensor(labels).long()
    data_path = save_safetensors_atomic(tensors, png_path.with_suffix(".safetensors"))
    grid = Image.fromarray(image_grid(images, ncols=int(np.ceil(np.sqrt(len(images))))))
    write_atomic(png_path, lambda tmp: grid.save(tmp, format="PNG"))
    return [png_path, data_path]


def load_samples(path):
    """``(images, labels or None)`` from a file written by ``save_samples``."""
    path = Path(path)
    if not path.exists() or path.suffix != ".safetensors":
        raise DataError(f"{path} is not a samples file: pass the .safetensors that `sample` wrote.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise DataError(f"{path} is not a readable safetensors file ({err}).") from err
    if "images" not in tensors:
        raise DataError(f"{path} holds no 'images' tensor; was it written by `python -m minidiff sample`?")
    images, labels = tensors["images"], tensors.get("labels")
    if images.ndim != 4 or images.shape[1:] != (1, 28, 28):
        raise DataError(f"{path}: the protocol scores (N, 1, 28, 28) digits, got {tuple(images.shape)}.")
    return images, labels
