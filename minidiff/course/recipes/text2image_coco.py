"""Chapter 09 beyond the toy data: ``t2i_coco``, the same text-to-image code on COCO's photos and captions.

A user who has COCO runs three commands — ``python -m minidiff data coco`` (the photos and captions,
checksummed, cached as 64-px squares), ``python -m minidiff train clip_coco --ship`` (chapter 08's
CLIP on them) and ``python -m minidiff train t2i_coco`` — and then ``python -m minidiff generate "a
dog on a beach" --model t2i_coco``. Nothing of it is shipped: COCO cannot be downloaded where the
course is built, so the recipe is tested on the COCO-format fixture, after a fast ``clip_coco`` run
(``--fast`` reads the fast CLIP in ``runs/clip_coco-fast/``), for a few steps.

**What changes from ``t2i_shapes``**: only the data and the sizes. The photos are denoised in pixel
space (no autoencoder has learned photos here), 64 px in 2×2 patches, so the U-Net's first level is
32×32; the condition is ``clip_coco``'s frozen text tower (width 256, 77 tokens); every caption of a
training photo is one of its wordings, 10 % dropped to the empty prompt. The held-out photos of
``clip_coco``'s split train neither model.

**Measurement.** No judge reads photos, so the CLIP score stands in: ``clip_coco``'s cosine between
each picture drawn for a held-out photo's first caption and that caption, beside the same score of the
real photo with its caption (what a perfect generator would reach) and of the real photo with another
photo's caption (what ignoring the prompt reaches). A web-scale model's pictures are judged the same
way, with a far larger CLIP.
"""
import torch

from minidiff.course.recipes.clip import CaptionedPictures
from minidiff.course.recipes.clip_coco import coco_subset_path, split_photos
from minidiff.course.recipes.common import RECIPES, finish, run_dir
from minidiff.course.recipes.text2image import GUIDANCE, _options, _train_t2i, _used
from minidiff.datasets.coco import load_coco_subset
from minidiff.files import DataError
from minidiff.metrics import PROTOCOL_SEED, clip_score
from minidiff.models.unet import UNet, UNetConfig
from minidiff.text2image import PromptEncoder, text_to_image
from minidiff.weights import load_clip, read_manifest

COCO_T2I_STEPS = 50_000
MEASURED_PROMPTS = 500


def coco_text_encoder(fast: bool) -> tuple[PromptEncoder, dict]:
    """``clip_coco``'s text tower — the shipped one, or in a fast run the fast run's — and the manifest
    it is recorded in; one clear line if there is none yet."""
    directory = run_dir("clip_coco", True) if fast else None
    manifest = read_manifest(directory)
    if "clip_coco" not in manifest:
        command = "python -m minidiff train clip_coco --fast" if fast else "python -m minidiff train clip_coco --ship"
        raise DataError(f"t2i_coco reads the prompts with clip_coco's text tower, and there is none yet: run `{command}` "
                        "first (after `python -m minidiff data coco`).")
    return PromptEncoder(*load_clip("clip_coco", directory=directory)), manifest


def coco_unet(context_dim: int) -> UNet:
    return UNet(UNetConfig(in_channels=3, image_size=64, channels=(64, 128, 256), attention=(False, True, True),
                           num_res_blocks=2, dropout=0.0, feed_forward=2, prediction_type="v_prediction",
                           schedule="cosine", patch_size=2, context_dim=context_dim))


@RECIPES.register
def t2i_coco(fast: bool = False, device: str = "auto", steps: int | None = None,
             from_shipped: bool = False) -> dict:
    """Text-to-image on the cached COCO photos: see the module's docstring. ``steps`` defaults to 50,000."""
    options = _options(steps, COCO_T2I_STEPS, from_shipped)
    photos, captions, _ = load_coco_subset(coco_subset_path())  # a missing or foreign file stops here
    encoder, clip_manifest = coco_text_encoder(fast)
    torch.manual_seed(0)
    train_idx, test_idx = split_photos(len(photos))
    wordings = min(len(captions[i]) for i in train_idx.tolist())
    pixels = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 127.5 - 1
    texts = {g: captions[i][:wordings] for g, i in enumerate(train_idx.tolist())}
    data = CaptionedPictures(pixels[train_idx], torch.arange(len(train_idx)), texts, encoder.tokenizer,
                             encoder.clip.config.context_length)
    model = coco_unet(encoder.width)
    model, result, start = _train_t2i("t2i_coco", model, data, encoder, steps or COCO_T2I_STEPS, fast, device,
                                      from_shipped)
    measured = test_idx[:MEASURED_PROMPTS]
    prompts = [captions[i][0] for i in measured.tolist()]
    drawn = text_to_image(model, encoder, prompts, guidance_scale=GUIDANCE, sampler="dpmpp_2m",
                          num_inference_steps=20, seed=PROTOCOL_SEED, progress=False)
    clip = (encoder.clip, encoder.tokenizer)
    real = pixels[measured]
    metrics = {"parameters": sum(p.numel() for p in model.parameters()), "guidance_scale": GUIDANCE,
               "prompts": len(prompts),
               "clip_score": clip_score(*clip, drawn, prompts).mean().item(),
               "clip_score_real_photos": clip_score(*clip, real, prompts).mean().item(),
               "clip_score_other_captions": clip_score(*clip, real, prompts[1:] + prompts[:1]).mean().item(),
               "loss_curve": [[h["step"], round(h["loss"], 5)] for h in result.history]}
    note = (f"{len(train_idx):,} COCO photos ({coco_subset_path().name}, 64 px) × their first {wordings} captions read "
            f"by clip_coco's text tower; CLIP score of pictures drawn for {len(prompts):,} held-out photos' captions")
    return finish(model, "t2i_coco", result, fast, note, metrics, options, better=("clip_score", "higher"),
                  started_from=start, **_used(clip_manifest, text_encoder="clip_coco"))
