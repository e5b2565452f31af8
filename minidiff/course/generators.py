"""Everything ``python -m minidiff sample`` can draw from, and the file format samples are kept in.

A source is a function ``(n, seed) -> (images (n, C, H, W) in [-1, 1], labels or None)``: the data
sources registered here (the baseline every model is compared with), and every shipped generative
model, found in the manifest — a chapter that ships a model adds nothing here. Samples are saved as
a PNG grid (to look at) and a safetensors file (to score with ``python -m minidiff evaluate``).
"""
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from minidiff.datasets.mnist import load_fashion_mnist, load_mnist, to_tensor
from minidiff.datasets.shapes import attribute_labels, make_shapes
from minidiff.diffusion.pipeline import generate
from minidiff.files import DataError, save_safetensors_atomic, write_atomic
from minidiff.latents import load_denoiser
from minidiff.registry import Registry
from minidiff.viz import image_grid
from minidiff.weights import load_pretrained, read_manifest

DATA_SOURCES = Registry("data source")
SAMPLING_MODELS = ("VAE", "GAN")  # shipped models with a .sample(n, generator); every UNet is a denoiser


def _draw_real(load, n, seed):
    images, labels = load("test")
    if n > len(images):
        raise ValueError(f"the test set has {len(images):,} pictures: ask for at most that many (-n {len(images)})")
    pick = np.random.default_rng(seed).choice(len(images), n, replace=False)
    return to_tensor(images[pick]), torch.from_numpy(labels[pick].astype(np.int64))


@DATA_SOURCES.register(name="mnist")
def real_mnist(n, seed):
    """Real test digits: what a perfect generator would give."""
    return _draw_real(load_mnist, n, seed)


@DATA_SOURCES.register(name="fashion-mnist")
def real_fashion_mnist(n, seed):
    return _draw_real(load_fashion_mnist, n, seed)


@DATA_SOURCES.register(name="shapes")
def shapes(n, seed):
    """Shapes renders as chapter 07's models learn them (64 px, training compositions; the renderer is
    its own seeded generator): what a perfect generator would give. Their labels are the attributes."""
    data = make_shapes(n, seed=seed, size=64, compositions="train")
    return to_tensor(data["images"]), attribute_labels(data["attributes"])


def _shipped_sampler(name):
    """A shipped VAE's or GAN's ``.sample(n, generator)``."""
    def draw(n, seed):
        with torch.no_grad():
            return load_pretrained(name).sample(n, torch.Generator().manual_seed(seed)).clamp(-1, 1), None
    draw.__doc__ = f"Samples from the shipped checkpoint {name!r}."
    return draw


def _shipped_denoiser(name):
    """A shipped denoiser walked back from noise; a class-conditional one is asked for the digits
    0, 1, …, 9, 0, 1, … in turn (with classifier-free guidance)."""
    def draw(n, seed, sampler="dpmpp_2m", steps=20, guidance_scale=None):
        model, decode = load_denoiser(name)
        classes = model.config.num_classes
        if classes is None and guidance_scale is not None:
            conditional = [other for other in diffusion_sources()
                           if read_manifest()[other]["config"].get("num_classes") is not None]
            raise ValueError(f"{name} is unconditional: guidance needs a class-conditional model "
                             f"({', '.join(conditional)})")
        guidance_scale = 3.0 if guidance_scale is None else guidance_scale
        labels = None if classes is None else torch.arange(n) % classes
        images = generate(model, n, sampler=sampler, num_inference_steps=steps, seed=seed,
                          cond=None if labels is None else {"labels": labels},
                          guidance_scale=1.0 if labels is None else guidance_scale, decode=decode)
        return images, labels
    draw.__doc__ = f"Samples from the shipped denoiser {name!r} (any sampler, any number of steps)."
    return draw


def diffusion_sources() -> list[str]:
    """The shipped denoisers that draw without a prompt, as the manifest lists them (text-to-image
    models are ``text_sources``: ``python -m minidiff generate``)."""
    return sorted(name for name, entry in read_manifest().items()
                  if entry["model"] == "UNet" and entry["config"].get("context_dim") is None)


def text_sources() -> list[str]:
    """The shipped text-to-image models."""
    return sorted(name for name, entry in read_manifest().items()
                  if entry["model"] == "UNet" and entry["config"].get("context_dim") is not None)


def sources() -> dict:
    """Everything ``sample`` can draw from: the data sources, then every shipped generative model."""
    shipped = {name: _shipped_sampler(name) for name, entry in sorted(read_manifest().items())
               if entry["model"] in SAMPLING_MODELS}
    return {**DATA_SOURCES, **shipped, **{name: _shipped_denoiser(name) for name in diffusion_sources()}}


def check_samples_path(png_path) -> Path:
    """Where ``save_samples`` will write, checked before any sampling starts: a name ending in .png
    (the tensors go beside it, as .safetensors) in a folder that exists or can be made, and is writable."""
    path = Path(png_path)
    if path.suffix.lower() != ".png":
        raise DataError(f"--out {path}: give the picture's file name, ending in .png; the tensors are written "
                        f"beside it as {path.with_suffix('.safetensors').name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the folder {path.parent} ({err.strerror}): choose another --out") from err
    if not os.access(path.parent, os.W_OK):
        raise DataError(f"the folder {path.parent} is not writable: choose another --out")
    return path


def save_samples(images: torch.Tensor, labels, png_path) -> list:
    """Write ``<png_path>`` (a grid) and the same name with ``.safetensors`` (the exact tensors)."""
    png_path = check_samples_path(png_path)
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
    if path.suffix != ".safetensors":
        raise DataError(f"{path} is not a samples file: pass the .safetensors that `sample` wrote.")
    if not path.exists():
        raise DataError(f"{path} does not exist: make it with `python -m minidiff sample … --out "
                        f"{path.with_suffix('.png')}`.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise DataError(f"{path} is not a readable safetensors file ({err}).") from err
    if "images" not in tensors:
        raise DataError(f"{path} holds no 'images' tensor; was it written by `python -m minidiff sample`?")
    images, labels = tensors["images"], tensors.get("labels")
    digits = images.ndim == 4 and images.shape[1:] == (1, 28, 28)
    shapes = images.ndim == 4 and images.shape[1] == 3 and images.shape[2] == images.shape[3] in (32, 64)
    if not (digits or shapes):
        raise DataError(f"{path}: the protocols score (N, 1, 28, 28) digits or (N, 3, 64, 64) / (N, 3, 32, 32) "
                        f"shapes pictures, got {tuple(images.shape)}.")
    if len(images) < 2:
        raise DataError(f"{path} holds {len(images)} picture(s): FID needs at least 2 (the protocol uses 2,000).")
    if not torch.isfinite(images).all():
        raise DataError(f"{path} holds NaN or infinite pixels: the model that drew them diverged.")
    low, high = images.min().item(), images.max().item()
    if low < -1.001 or high > 1.001 or low >= 0:  # no pixel below 0: no digit's background, no dark colour
        raise DataError(f"{path}: pixels run from {low:.3g} to {high:.3g}, but the protocol scores pictures in "
                        "[-1, 1] (a digit's background is -1); rescale them, e.g. 2·x − 1 for pictures in [0, 1].")
    wanted = (len(images),) if digits else (len(images), 5)
    if labels is not None and tuple(labels.shape) != wanted:
        raise DataError(f"{path}: {tuple(labels.shape)} labels for {len(images)} pictures; give "
                        + ("one label each." if digits else "five attribute labels each (shape, colour, background, "
                           "size, position)."))
    return images, labels


def _open_picture(path, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist: give the path of a PNG or JPEG file")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read {what} {path} as a picture ({err}): give a PNG or JPEG file") from err


def load_picture(path, size: int, channels: int) -> torch.Tensor:
    """A picture file as the models see it: (1, channels, size, size) in [-1, 1]. Colour or grey is
    converted to what the model draws (RGB or grey; transparency onto white), and a picture of another
    size is resized (Lanczos), with one warning that says so."""
    image = _open_picture(path, "the picture")
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    image = image.convert("RGB" if channels == 3 else "L")
    if image.size != (size, size):
        warnings.warn(f"{path} is {image.size[0]}×{image.size[1]}; resized to the model's {size}×{size}")
        image = image.resize((size, size), Image.LANCZOS)
    array = np.asarray(image, dtype=np.float32).reshape(size, size, channels) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def load_mask(path, picture, size: int) -> torch.Tensor:
    """A mask file for the picture file ``picture``: (1, 1, size, size), 1 where the picture is to be
    redrawn (white) and 0 where it is kept (black), as in diffusers. It must have the picture's size and
    be black and white only (a grey pixel would leave it unclear whether it is kept exactly); it is
    resized with the picture, to the nearest pixel, so it stays black and white."""
    image = _open_picture(path, "the mask")
    with Image.open(picture) as original:
        wanted = original.size
    if image.size != wanted:
        raise DataError(f"the mask {path} is {image.size[0]}×{image.size[1]} but the picture is "
                        f"{wanted[0]}×{wanted[1]}: give a mask of the picture's size")
    image = image.convert("L")
    if not np.isin(np.asarray(image), (0, 255)).all():
        raise DataError(f"the mask {path} has grey pixels: make it black (keep) and white (redraw) only")
    array = np.asarray(image.resize((size, size), Image.NEAREST)) == 255
    return torch.from_numpy(array).float()[None, None]


def load_condition(path, size: int) -> torch.Tensor:
    """A ControlNet's condition picture file: (1, 1, size, size) in [0, 1], white where the outline or
    mask is, black elsewhere (grey allowed: a soft edge). It must be exactly the ControlNet's size — an
    outline resized would blur to grey and move — and is read as grey whatever its mode."""
    image = _open_picture(path, "the condition picture")
    if image.size != (size, size):
        raise DataError(f"the condition picture {path} is {image.size[0]}×{image.size[1]}, but this ControlNet reads "
                        f"{size}×{size}: draw it at that size (white outline or mask on black)")
    array = np.asarray(image.convert("L"), dtype=np.float32) / 255
    return torch.from_numpy(array)[None, None]


PICTURE_FILES = (".png", ".jpg", ".jpeg")


def load_picture_folder(folder, size: int, word: str) -> tuple[torch.Tensor, list]:
    """What a student teaches a new word with: every PNG or JPEG in ``folder`` (sorted by name) as
    (N, 3, size, size) in [-1, 1], and each one's captions — the lines of ``NAME.txt`` beside
    ``NAME.png`` if there is one, else "a WORD". Every caption must hold the word; pictures of mixed
    sizes are refused (one size resized to the model's, with a note, is fine)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: give a folder of PNG or JPEG pictures of what to teach")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICTURE_FILES)
    if not files:
        raise DataError(f"{folder} holds no PNG or JPEG pictures: put 5 to 10 pictures of the new {word} in it")
    sizes = {}
    for path in files:
        sizes.setdefault(_open_picture(path, "the picture").size, path.name)
    if len(sizes) > 1:
        (a, first), (b, second) = list(sizes.items())[:2]
        raise DataError(f"the pictures in {folder} have mixed sizes ({first} is {a[0]}×{a[1]}, {second} is "
                        f"{b[0]}×{b[1]}): give pictures of one size, best the model's {size}×{size}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pictures = torch.cat([load_picture(path, size, 3) for path in files])
    if caught:
        first = files[0]
        warnings.warn(f"the pictures are {Image.open(first).size[0]}×{Image.open(first).size[1]}; "
                      f"resized to the model's {size}×{size}")
    captions = []
    for path in files:
        text = path.with_suffix(".txt")
        lines = [line.strip() for line in text.read_text(encoding="utf-8").splitlines() if line.strip()] \
            if text.is_file() else [f"a {word}"]
        missing = [line for line in lines if word.lower() not in line.lower()]
        if not lines or missing:
            raise DataError(f"{text} has a caption without the word {word!r} ({missing[0] if missing else 'none'}): "
                            f"every caption of a picture should name what it teaches")
        captions.append(lines)
    return pictures, captions
