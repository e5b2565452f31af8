"""Chapter 10: ``inpaint_shapes``, a text-to-image model that also reads a picture with a hole.

**Model.** The shipped ``t2i_shapes`` grown by five input channels (``add_input_channels``): beside
the noisy latent z_t it reads the latent of the picture with its hole filled and the mask on the
latent's 8 × 8 grid (``minidiff.inpainting.inpainting_condition``), as Stable Diffusion's inpainting
model does. The new channels' weights start at zero, so training starts from the very text-to-image
model — it already draws; it only has to learn to use what it is now shown.

**Data.** ``t2i_shapes``' training pictures and captions (training compositions only, both languages),
each picture twice with a hole of one of two kinds: its own shape's mask grown by 1–6 pixels (the hole
that fits the object: "replace this"), and a box of random size and place (anywhere, over the object
or not: "redraw this part"); one hole in ten is the whole picture, which is plain text-to-image. The
masked pictures are encoded once and cached, like the latents. The caption always describes the whole
picture (the hole's content included); as in ``t2i_shapes``, 10 % of them are the empty prompt.

**Measurement** (``minidiff.edit_protocol``): test renders with a box around the object as the hole
and a prompt for another object there (``replacement_task``), or half the box as the hole and the
picture's own caption (``completion_task``), in the evaluation wording; the shapes judge checks all
five attributes, the object read back is compared with the render's (IoU), the seam error at the hole's
edge; 20 DPM-Solver++(2M) steps at guidance 3 — the network calls of one text-to-image picture.
"""
import torch

from minidiff.course.recipes.clip import CaptionedPictures
from minidiff.course.recipes.common import RECIPES, finish, run_dir
from minidiff.course.recipes.latent import SIZE
from minidiff.course.recipes.text2image import (
    AUTOENCODER,
    GUIDANCE,
    TEXT_ENCODER,
    _options,
    _train_t2i,
    _used,
    shapes_latents,
)
from minidiff.datasets.shapes import TEST_SEED, TRAIN_SEED, ShapesDataset
from minidiff.edit_protocol import completion_task, grow, inpainting_scores, replacement_task
from minidiff.inpainting import fill_hole, inpaint, mask_to_grid
from minidiff.latents import cached_latents, latent_decoder
from minidiff.models.unet import add_input_channels
from minidiff.text2image import PromptEncoder
from minidiff.weights import load_clip, load_pretrained, read_manifest

BASE = "t2i_shapes"
INPAINT_STEPS = 4_000
FULL_HOLES = 0.1            # the share of holes that are the whole picture
TASKS, HELD_OUT_TASKS = 1_000, 500


def training_holes(pictures: ShapesDataset, seed: int = 0) -> torch.Tensor:
    """(2N, 1, H, W): for every picture its shape's mask grown by 1–6 pixels, then for every picture a
    random box (sides of 10 to 44 pixels at 64 px, anywhere inside); ``FULL_HOLES`` of all made whole."""
    generator = torch.Generator().manual_seed(seed)
    n, size = len(pictures), pictures.images.shape[-1]
    scale = size / 64
    grown = torch.randint(1, 7, (n,), generator=generator)
    own = torch.cat([grow(pictures.masks[i:i + 1], int(round(g * scale))) for i, g in enumerate(grown.tolist())])
    sides = (torch.randint(10, 45, (n, 2), generator=generator) * scale).long().clamp(1, size)
    corners = (torch.rand(n, 2, generator=generator) * (size - sides + 1)).long()
    pixels = torch.arange(size)
    inside = [(pixels >= corners[:, k, None]) & (pixels < (corners + sides)[:, k, None]) for k in range(2)]
    boxes = (inside[0][:, :, None] & inside[1][:, None, :]).float()[:, None]
    holes = torch.cat([own, boxes])
    holes[torch.rand(2 * n, generator=generator) < FULL_HOLES] = 1.0
    return holes


@RECIPES.register
def inpaint_shapes(fast: bool = False, device: str = "auto", steps: int | None = None,
                   from_shipped: bool = False) -> dict:
    """The mask-conditioned inpainting model: see the module's docstring. ``steps`` defaults to 4,000."""
    options = _options(steps, INPAINT_STEPS, from_shipped)
    torch.manual_seed(0)
    manifest = read_manifest()
    vae, (clip, tokenizer) = load_pretrained(AUTOENCODER), load_clip(TEXT_ENCODER)
    encoder, decode = PromptEncoder(clip, tokenizer), latent_decoder(vae)
    model = add_input_channels(load_pretrained(BASE), vae.config.latent_channels + 1)
    pictures, what, latents, groups, texts = shapes_latents(vae, manifest, fast)
    n = len(pictures)
    holes = training_holes(pictures)
    twice = torch.cat([pictures.images, pictures.images])
    filled = cached_latents(vae, manifest[AUTOENCODER]["sha256"], {**what, "holes": "inpaint_shapes v1"},
                            lambda: fill_hole(twice, holes), run_dir("latents", fast))
    grid = mask_to_grid(holes, filled.shape[-1])
    data = CaptionedPictures(torch.cat([latents, latents]), torch.cat([groups, groups]), texts, tokenizer,
                             clip.config.context_length, concat=torch.cat([filled, grid], dim=1))
    model, result, start = _train_t2i("inpaint_shapes", model, data, encoder, steps or INPAINT_STEPS, fast, device,
                                      from_shipped)
    metrics = {"parameters": sum(p.numel() for p in model.parameters()), "guidance_scale": GUIDANCE,
               "sampler": "dpmpp_2m", "num_inference_steps": 20}
    for compositions, count in (("train", 25 if fast else TASKS), ("held_out", 12 if fast else HELD_OUT_TASKS)):
        for kind, make in (("replacement", replacement_task), ("completion", completion_task)):
            task = make(count, seed=TEST_SEED, size=SIZE, compositions=compositions)
            pictures = inpaint(model, encoder, task["images"], task["masks"], task["prompts"], decode=decode,
                               guidance_scale=GUIDANCE, sampler="dpmpp_2m", num_inference_steps=20, progress=False)
            metrics[f"{kind}_{compositions}"] = inpainting_scores(pictures, task)
    metrics["all_correct"] = metrics["replacement_train"]["all_correct"]
    metrics["loss_curve"] = [[h["step"], round(h["loss"], 5)] for h in result.history]
    note = (f"{BASE} grown by {model.config.concat_channels} input channels (hole-filled latent and mask), trained "
            f"on the latents of {n:,} shapes renders (seed {TRAIN_SEED}, training compositions, 64 px), each with "
            "two holes (its shape's mask grown by 1–6 px, a random box; 10 % whole) and every training wording; "
            f"measured on replacement tasks from {TASKS:,} test and {HELD_OUT_TASKS:,} held-out renders")
    return finish(model, "inpaint_shapes", result, fast, note, metrics, options, better=("all_correct", "higher"),
                  started_from=start, **_used(manifest, base=BASE, autoencoder=AUTOENCODER, text_encoder=TEXT_ENCODER))
