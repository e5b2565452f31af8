"""``make demo``: one picture sheet (``outputs/demo.png``) of what the course has built so far.

Each panel is a function returning ``(title, picture)``; every chapter adds its own with
``@panel``, so the sheet grows with the course. Everything here runs from shipped data and weights
in well under two minutes on a 2-core laptop.
"""
from pathlib import Path

import matplotlib
import numpy as np
import torch

from minidiff.course.article import add_noise, mosaic
from minidiff.datasets.mnist import load_mnist, to_tensor
from minidiff.datasets.shapes import make_shapes
from minidiff.files import write_atomic
from minidiff.registry import Registry
from minidiff.viz import image_grid

PANELS = Registry("demo panel")
panel = PANELS.register


def _rgb(grid: np.ndarray) -> np.ndarray:
    return np.repeat(grid[..., None], 3, axis=2) if grid.ndim == 2 else grid


@panel
def real_digits():
    images, labels = load_mnist("test")
    pick = np.random.default_rng(0).choice(len(images), 32, replace=False)
    return "MNIST: real handwritten digits (all 70,000 ship in data/mnist)", image_grid(images[pick], ncols=16)


@panel
def shapes_with_captions():
    shapes = make_shapes(16, seed=0)
    captions = "; ".join(f'"{c}"' for c in shapes["captions"][:2])
    return f"Shapes with captions, e.g. {captions}", image_grid(shapes["images"], ncols=16)


@panel
def mosaic_and_noise():
    """The article's picture of diffusion: an image disappears under mosaic, or under noise."""
    x = to_tensor(load_mnist("test")[0][:1]).repeat(6, 1, 1, 1)
    mosaics = torch.cat([mosaic(x[:1], b) for b in (1, 2, 4, 7, 14, 28)])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    noisy = torch.cat([add_noise(x[i:i + 1], noise[i:i + 1], a) for i, a in enumerate(np.linspace(0, 1, 6))])
    return "Mosaic (block 1 → 28) and noise (amount 0 → 1): the forward process", \
        image_grid(torch.cat([mosaics, noisy]).clamp(-1, 1), ncols=12)


@panel
def classifier_judge():
    from minidiff.metrics import load_classifier
    from minidiff.models.classifier import predict
    images, labels = load_mnist("test")
    pick = np.random.default_rng(1).choice(len(images), 16, replace=False)
    _, logits = predict(load_classifier(), to_tensor(images[pick]))
    said = " ".join(str(k) for k in logits.argmax(1).tolist())
    return f"The judge (MNIST classifier) reads: {said}", image_grid(images[pick], ncols=16)


@panel
def vae_prior_vs_ae_random_codes():
    """Chapters 01–02: decode random codes. The AE's are smudges; the VAE's prior samples are digits."""
    from minidiff.models.autoencoder import decode_all, encode_all, random_codes
    from minidiff.weights import load_pretrained, read_manifest
    vae, ae = load_pretrained("vae_mnist"), load_pretrained("ae_mnist_c4")
    manifest = read_manifest()
    vae_fid, ae_fid, floor = (manifest["vae_mnist"]["metrics"]["prior_sample_fid"],
                              manifest["ae_mnist_c4"]["metrics"]["random_code_fid"],
                              manifest["mnist_classifier"]["metrics"]["real_vs_real_fid"])
    real_codes = encode_all(ae, to_tensor(load_mnist("test")[0][:1000]))
    ae_decodes = decode_all(ae, random_codes(ae, 16, torch.Generator().manual_seed(0), like=real_codes))
    vae_samples = vae.sample(16, torch.Generator().manual_seed(0)).clamp(-1, 1)
    return f"Random codes decoded (ch. 01–02): VAE prior samples, FID {vae_fid:.0f} (left) vs autoencoder, " \
        f"FID {ae_fid:.0f} (right); real vs real {floor:.1f}", \
        image_grid(torch.cat([torch.cat([vae_samples[i:i + 8], ae_decodes[i:i + 8]]) for i in (0, 8)]), ncols=16)


@panel
def gan_good_vs_collapsed():
    """Chapter 03: the same GAN code trained well (top) and into mode collapse (bottom)."""
    from minidiff.weights import load_pretrained, read_manifest
    manifest = read_manifest()
    names = ("dcgan_mnist", "dcgan_mnist_collapse")
    rows = [load_pretrained(name).sample(16, torch.Generator().manual_seed(0)) for name in names]
    good, bad = (manifest[name]["metrics"] for name in names)
    return (f"GAN (ch. 03): dcgan_mnist, FID {good['fid']:.0f}, {good['classes_over_5_percent']} digits ≥ 5 % "
            f"(top) vs a collapsed run, FID {bad['fid']:.0f}, {bad['classes_over_5_percent']} (bottom); "
            f"real vs real {good['real_vs_real_fid']:.1f}",
            image_grid(torch.cat(rows), ncols=16))


@panel
def noising_strip():
    """Chapter 04: one digit under the linear and the cosine schedule, t = 0 … 999."""
    from minidiff.diffusion.loss import q_sample
    from minidiff.diffusion.schedules import cosine_schedule, linear_schedule
    x0 = to_tensor(load_mnist("test")[0][:1])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    steps = torch.tensor([0, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999])
    rows = [q_sample(x0.expand(len(steps), -1, -1, -1), steps, noise, schedule())
            for schedule in (linear_schedule, cosine_schedule)]
    return "Forward noising, t = 0 → 999: linear schedule (top) vs cosine (bottom)", \
        image_grid(torch.cat(rows).clamp(-1, 1), ncols=len(steps))


@panel
def ddpm_samples():
    """Chapter 05: the shipped denoisers walked back from noise (DPM-Solver++(2M), 20 steps)."""
    from minidiff.course.generators import sources
    from minidiff.weights import read_manifest
    unconditional, _ = sources()["ddpm_mnist"](20, 0)
    conditional, _ = sources()["ddpm_mnist_cond"](20, 0)
    manifest = read_manifest()
    fid = manifest["ddpm_mnist"]["metrics"]["fid_dpmpp_2m_20"]
    accuracy = manifest["ddpm_mnist_cond"]["metrics"]["accuracy"]
    return (f"DDPM (ch. 05): unconditional samples, FID {fid:.1f} (top two rows);\n"
            f"\"draw me a 0 … 9\" with guidance 3, {100 * accuracy:.1f} % read as the digit asked for (bottom two)",
            image_grid(torch.cat([unconditional, conditional]), ncols=10))


@panel
def sampler_comparison():
    """Chapter 06: the same starting noise walked back by each sampler, 10 network calls each."""
    from minidiff.diffusion.pipeline import generate
    from minidiff.diffusion.samplers import SAMPLERS, steps_for_nfe
    from minidiff.weights import load_pretrained
    model = load_pretrained("ddpm_mnist")
    rows = [generate(model, 10, sampler=name, num_inference_steps=steps_for_nfe(name, 10), seed=1,
                     progress=False) for name in SAMPLERS]
    return (f"Samplers (ch. 06), same noise, ~10 network calls each; rows: {', '.join(SAMPLERS)}",
            image_grid(torch.cat(rows), ncols=10))


@panel
def latent_diffusion():
    """Chapter 07: pictures squeezed to 8×8×4 latents and back (top), and pictures the latent U-Net
    drew, decoded once at the end (bottom)."""
    from minidiff.datasets.shapes import TEST_SEED, ShapesDataset
    from minidiff.diffusion.pipeline import generate
    from minidiff.latents import load_denoiser
    from minidiff.models.autoencoder import decode_all, encode_all
    from minidiff.weights import read_manifest
    model, decode = load_denoiser("ldm_shapes")
    vae = decode.vae
    originals = ShapesDataset(8, seed=TEST_SEED, size=64, compositions="train").images
    round_trip = torch.stack([x for pair in zip(originals, decode_all(vae, encode_all(vae, originals))) for x in pair])
    samples = generate(model, 16, sampler="dpmpp_2m", num_inference_steps=20, seed=0, decode=decode, progress=False)
    metrics = read_manifest()["ldm_shapes"]["metrics"]
    return (f"Latent diffusion (ch. 07): a picture and its 64×64×3 → 8×8×4 → 64×64×3 round trip, in pairs (top); "
            f"samples drawn in latent space,\njudge-FID {metrics['fid_dpmpp_2m_20']:.0f} beside "
            f"{metrics['real_vs_real_fid']:.0f} for real pictures against real ones (bottom)",
            image_grid(torch.cat([round_trip, samples]).clamp(-1, 1), ncols=16))


@panel
def clip_matching():
    """Chapter 08: CLIP's similarity matrix for eight test pictures and their captions (left), and the
    best pictures among 1,000 for one prompt, typed in English and in Chinese (right)."""
    from matplotlib import colormaps

    from minidiff.course.recipes.clip import embed_images, embed_texts
    from minidiff.datasets.shapes import TEST_SEED, ShapesDataset, caption
    from minidiff.weights import load_clip
    model, tokenizer = load_clip("clip_shapes")
    batch = ShapesDataset(8, seed=TEST_SEED + 7, size=32, compositions="train")
    cosines = embed_images(model, batch.images) @ embed_texts(model, tokenizer, [caption(a) for a in batch.attributes]).T
    cells = np.kron(colormaps["RdBu_r"]((cosines.numpy() + 1) / 2)[..., :3], np.ones((34, 34, 1)))
    for i in range(8):  # frame the diagonal: each picture with its own caption
        cell = cells[34 * i:34 * (i + 1), 34 * i:34 * (i + 1)]
        cell[[0, 1, -2, -1]], cell[:, [0, 1, -2, -1]] = 0, 0
    matrix = np.concatenate([image_grid(batch.images, ncols=1)[:-2], np.full((8 * 34, 6, 3), 255, np.uint8),
                             (255 * cells).astype(np.uint8)], 1)
    pool = ShapesDataset(1000, seed=TEST_SEED, size=32, compositions="all").images
    u = embed_images(model, pool)
    wanted = dict(shape="circle", color="red", background="blue", size="large", position="top left")
    rows = [image_grid(pool[(u @ embed_texts(model, tokenizer, [caption(wanted, language=language)])[0]).topk(7).indices],
                       ncols=7) for language in ("en", "zh")]
    right = np.full((matrix.shape[0], rows[0].shape[1], 3), 255, np.uint8)
    right[60:60 + rows[0].shape[0]], right[150:150 + rows[1].shape[0]] = rows
    return (f"CLIP (ch. 08): pictures (rows) against their captions (columns; red = similar, the diagonal is each "
            f"picture's own); right: the best of 1,000 pictures\nfor \"{caption(wanted)}\" (top) and for the same "
            "prompt in Chinese (bottom)",
            np.concatenate([matrix, np.full((matrix.shape[0], 40, 3), 255, np.uint8), right], 1))


@panel
def text_to_image_grid():
    """Chapter 09: typed prompts drawn by t2i_shapes — one row per prompt, one column per seed (the same
    seed gives the same starting noise in every row) — and the ten digits asked for by name."""
    from minidiff.datasets.mnist import digit_caption
    from minidiff.datasets.shapes import HELD_OUT, eval_caption
    from minidiff.text2image import load_text_to_image, text_to_image
    model, decode, encoder = load_text_to_image("t2i_shapes")
    held = dict(shape=HELD_OUT[0][0], color=HELD_OUT[0][1], background=HELD_OUT[0][2], size="large", position="center")
    prompts = ["a large red circle on a blue background, top left", "蓝色背景上的一个红色大圆形，在左上角",
               "a small white triangle on a black background, bottom right", eval_caption(held)]
    rows = [text_to_image(model, encoder, prompt, n=8, decode=decode, sampler="dpmpp_2m", num_inference_steps=20,
                          seed=0, progress=False) for prompt in prompts]
    digits, _, digit_encoder = load_text_to_image("t2i_mnist")
    asked = text_to_image(digits, digit_encoder, [digit_caption(d) for d in range(10)], sampler="dpmpp_2m",
                          num_inference_steps=20, seed=0, progress=False)
    shapes = image_grid(torch.cat(rows).clamp(-1, 1), ncols=8)
    written = _rgb(image_grid(asked.clamp(-1, 1), ncols=10))
    below = np.full((written.shape[0] + 10, shapes.shape[1], 3), 255, np.uint8)
    below[10:, :written.shape[1]] = written
    return (f"Text to image (ch. 09), one row per prompt, seeds 0–7: \"{prompts[0]}\"; the same in Chinese; "
            f"\"{prompts[2]}\";\n\"{prompts[3]}\" (a combination never trained on); "
            "last row: \"a handwritten zero\" … \"nine\" (t2i_mnist)", np.concatenate([shapes, below]))


@panel
def img2img_and_inpainting():
    """Chapter 10: two test renders redrawn with their caption in another colour at growing strength
    (img2img), and holes filled with a new object, by RePaint on t2i_shapes and by the mask-conditioned
    inpaint_shapes (if shipped)."""
    from minidiff.edit_protocol import recolour_task, replacement_task
    from minidiff.inpainting import inpaint
    from minidiff.text2image import load_text_to_image, text_to_image
    from minidiff.weights import read_manifest
    model, decode, encoder = load_text_to_image("t2i_shapes")
    draw = dict(decode=decode, sampler="dpmpp_2m", num_inference_steps=20, seed=0, progress=False)
    strengths = [0.2, 0.4, 0.6, 0.8, 1.0]
    recolour = recolour_task(2)
    strips = [torch.cat([recolour["images"][i:i + 1]] + [
        text_to_image(model, encoder, recolour["prompts"][i], image=recolour["images"][i:i + 1], strength=s, **draw)
        for s in strengths]) for i in range(2)]
    holes = replacement_task(3)
    columns = [holes["images"], holes["images"] * (1 - holes["masks"]) + holes["masks"],
               inpaint(model, encoder, holes["images"], holes["masks"], holes["prompts"], decode=decode, progress=False)]
    if "inpaint_shapes" in read_manifest():
        masked, masked_decode, masked_encoder = load_text_to_image("inpaint_shapes")
        columns.append(inpaint(masked, masked_encoder, holes["images"], holes["masks"], holes["prompts"],
                               decode=masked_decode, sampler="dpmpp_2m", num_inference_steps=20, progress=False))
    rows = torch.stack(columns, 1).flatten(0, 1)
    left = image_grid(torch.cat(strips).clamp(-1, 1), ncols=len(strengths) + 1)
    right = image_grid(rows.clamp(-1, 1), ncols=len(columns))
    sheet = np.full((max(len(left), len(right)), left.shape[1] + 30 + right.shape[1], 3), 255, np.uint8)
    sheet[:len(left), :left.shape[1]] = left
    sheet[:len(right), left.shape[1] + 30:] = right
    methods = "RePaint (t2i_shapes, 80 calls)" + (", the mask-conditioned inpaint_shapes (20 calls)"
                                                   if len(columns) == 4 else "")
    return (f"img2img and inpainting (ch. 10). Left: a render, then redrawn as \"{recolour['prompts'][0]}\" (top) at "
            f"strength {', '.join(map(str, strengths))}.\nRight: a render, the hole, and the new object asked for "
            f"(\"{holes['prompts'][0]}\", …) by {methods}", sheet)


@panel
def controlnet_grid():
    """Chapter 11: conditions drawn by code (an outline, a filled mask) and what t2i_shapes draws for one
    prompt per row, steered by controlnet_shapes_edge / _mask at control strengths 0 (the base alone) to 1."""
    from minidiff.course.sketches import condition
    from minidiff.text2image import load_text_to_image, text_to_image
    strengths = [0.0, 0.25, 0.5, 0.75, 1.0]
    rows = []
    for kind, shape, centre, radius, prompt in [
            ("edge", "triangle", (18, 18), 12, "a large yellow triangle on a blue background, top left"),
            ("edge", "circle", (34, 30), 7, "a small red circle on a white background, center"),
            ("mask", "square", (46, 46), 12, "a large green square on a black background, bottom right")]:
        model, decode, encoder = load_text_to_image(f"controlnet_shapes_{kind}")
        given = condition(shape, centre, radius, kind=kind)
        drawn = text_to_image(model, encoder, [prompt] * len(strengths), control=given, control_strength=strengths,
                              decode=decode, sampler="dpmpp_2m", num_inference_steps=20, seed=0, progress=False)
        rows.append(torch.cat([given.expand(1, 3, -1, -1) * 2 - 1, drawn]))
    return ("ControlNet (ch. 11): a condition drawn by code (outline, outline, filled mask), then the prompt drawn at "
            f"control strength {', '.join(map(str, strengths))}\n(0: t2i_shapes alone; the prompts name the "
            "shape, colour and corner, the condition says exactly where and how large)",
            image_grid(torch.cat(rows).clamp(-1, 1), ncols=len(strengths) + 1))


@panel
def finetuning_before_after():
    """Chapter 12: four prompts with the new word "heart" drawn by t2i_shapes before it was taught (its
    tokenizer spells the word from pieces it passes over) and after, with the shipped LoRA adapter lora_heart."""
    from minidiff.course.recipes.concepts import GUIDANCE
    from minidiff.course.recipes.finetune import load_adapter
    from minidiff.text2image import load_text_to_image, text_to_image
    prompts = ["a large purple heart on a green background, top right", "a small white heart on a red background, left",
               "a large orange heart on a blue background, bottom", "a small black heart on a yellow background, center"]
    draw = dict(n=4, guidance_scale=GUIDANCE, sampler="dpmpp_2m", num_inference_steps=20, seed=0, progress=False)
    rows = []
    for model, decode, encoder in (load_text_to_image("t2i_shapes"), load_adapter("lora_heart")):
        rows.append(torch.cat([text_to_image(model, encoder, prompt, decode=decode, **draw) for prompt in prompts]))
    return ("Fine-tuning (ch. 12): four prompts with a word t2i_shapes never saw, 4 seeds each — top: before; bottom: "
            "with lora_heart,\na LoRA adapter taught from 8 pictures of hearts in other colours, on other backgrounds", image_grid(torch.cat(rows).clamp(-1, 1), ncols=16))


def make_demo(path="outputs/demo.png") -> Path:
    """Draw every panel, one above the other, into ``path`` (written atomically)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pictures = [fn() for fn in PANELS.values()]
    heights = [picture.shape[0] / picture.shape[1] * 12 + 0.5 for _, picture in pictures]
    fig, axes = plt.subplots(len(pictures), 1, figsize=(12, sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    for ax, (title, picture) in zip(np.atleast_1d(axes), pictures):
        ax.imshow(_rgb(picture), interpolation="nearest")
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_axis_off()
    fig.suptitle("minidiff — what the course has built so far", fontsize=14)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png"))
    plt.close(fig)
    return Path(path)
