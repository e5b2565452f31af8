"""Chapter 09: text to image — ``t2i_shapes``, chapter 07's latent diffusion steered by chapter 08's CLIP
(and ``t2i_mnist``, "a handwritten seven", with the digits' CLIP).

**Model.** Chapter 07's U-Net on ``vae_shapes_f8``'s 8×8×4 latents, with attention at both levels (8×8
and 4×4 positions) and, in every attention block, cross-attention from the latent's positions to the
prompt's per-token states: the frozen text tower of the shipped ``clip_shapes`` (width 128, up to 40
tokens, padding masked). Both the autoencoder and the CLIP are recorded in the manifest entry by
sha256, so the model is never paired with other weights than the ones it learned with.

**Data.** The latents of the 20,000 training renders (training compositions only: no held-out
composition is ever seen), each with every training wording of its caption in English and Chinese
(``CaptionedPictures``: 240,000 pairs); 10 % of the captions are replaced by the empty prompt
(``text_diffusion_loss``), so the one network is conditional and unconditional, which
classifier-free guidance needs. For ``t2i_shapes``, 30 % of the captions also get a few characters the
tokenizer never learned inserted (``insert_unseen``), so that a prompt's unknown words do not throw
the words it knows off (in Chinese each falls apart into byte tokens: without this, the evaluation
wording's four such characters cost 5 points of all-five accuracy). The rest is chapter 05's training (v-prediction, cosine schedule,
min-SNR weighting, constant learning rate after a warm-up, EMA): a run of n steps is the start of
every longer one, and ``--from-shipped`` trains the shipped model on.

**Measurement** (``prompt_following``): pictures drawn with DPM-Solver++(2M) × 20 at the default
guidance for prompts in the *evaluation* wording (which no training caption uses), English and Chinese,
of 2,000 test attribute tuples of the training compositions and 1,000 of the held-out compositions;
the shapes judge reads them: per-attribute accuracy, all five right, judge-FID against the test
renders of the same compositions (the floor beside it), and the CLIP score.
"""
import dataclasses

import torch

from minidiff.course.recipes.clip import COMBINATIONS, CaptionedPictures, attribute_groups, digits_training_set
from minidiff.course.recipes.common import RECIPES, finish, run_dir
from minidiff.course.recipes.ddpm import ddpm_mnist_config
from minidiff.course.recipes.latent import SIZE, TRAIN_PICTURES
from minidiff.datasets.mnist import digit_caption, eval_digit_caption, mnist_dataset
from minidiff.datasets.shapes import CHINESE_WORDS, TEST_SEED, TRAIN_SEED, ShapesDataset, all_captions, eval_caption
from minidiff.diffusion.loss import unet_loss
from minidiff.latents import cached_latents, latent_decoder
from minidiff.metrics import (
    PROTOCOL_SEED,
    evaluate_samples,
    prompt_following,
    real_vs_real_fid,
    shapes_real_vs_real_fid,
)
from minidiff.models.unet import UNet, UNetConfig
from minidiff.text2image import PromptEncoder, text_to_image
from minidiff.train import train
from minidiff.weights import load_clip, load_pretrained, read_manifest, shipped_start

TEXT_ENCODER, AUTOENCODER = "clip_shapes", "vae_shapes_f8"
CAPTION_DROPOUT = 0.1
UNSEEN_SHARE = 0.3          # t2i_shapes: captions that get 1–4 characters the tokenizer never learned
GUIDANCE = 3.0              # the default guidance scale s (chosen from the guidance curve)
T2I_STEPS = 30_000
PROMPTS, HELD_OUT_PROMPTS = 2_000, 1_000


def t2i_unet(in_channels: int, image_size: int, context_dim: int) -> UNet:
    """Chapter 07's denoiser with attention at both levels, each block also cross-attending to the text."""
    return UNet(UNetConfig(in_channels=in_channels, image_size=image_size, channels=(32, 64),
                           attention=(True, True), num_res_blocks=2, dropout=0.0, feed_forward=2,
                           prediction_type="v_prediction", schedule="cosine", context_dim=context_dim))


def empty_prompt_ids(encoder: PromptEncoder, length: int) -> torch.Tensor:
    """The empty prompt as a row of ``length`` ids: ``<start> <end> <pad>…``."""
    ids = encoder.tokenizer([""], max(length, 2))[0]
    return ids[:length]


def unseen_characters(tokenizer, avoid: str = "") -> list[list[int]]:
    """The token ids of every CJK character (U+4E00–U+9FA5) the tokenizer never learned — each falls
    apart into its 3 byte tokens — except those in ``avoid``."""
    pieces = (tokenizer.encode(ch) for ch in map(chr, range(0x4E00, 0x9FA6)) if ch not in avoid)
    return [ids for ids in pieces if len(ids) > 1]


def insert_unseen(ids: torch.Tensor, pool: list, share: float, pad_id: int, context_length: int) -> torch.Tensor:
    """Into a share ``share`` of the caption rows ``ids`` (B, L), insert 1–4 characters of ``pool`` at
    random places between ``<start>`` and ``<end>`` (as long as the row still fits ``context_length``).

    Why: a prompt people type holds words the captions never used. In Chinese, each such character
    falls apart into byte tokens ("一张…的图片" has four), which shifts and disturbs the causal text
    tower's states of every word after them. Seeing such noise in training teaches the denoiser to
    read the words it knows through it."""
    lengths = (ids != pad_id).sum(1).tolist()
    rows = (torch.rand(len(ids)) < share).nonzero().flatten().tolist()
    if not rows:
        return ids
    out = torch.full((len(ids), context_length), pad_id, dtype=ids.dtype, device=ids.device)
    out[:, :ids.shape[1]] = ids[:, :context_length]
    for r in rows:
        row = ids[r, :lengths[r]].tolist()
        for _ in range(int(torch.randint(1, 5, ()))):
            piece = pool[int(torch.randint(len(pool), ()))]
            if len(row) + len(piece) > context_length:
                break
            at = int(torch.randint(1, len(row), ()))  # after <start>, up to just before <end>
            row[at:at] = piece
        out[r, :len(row)], out[r, len(row):] = torch.tensor(row, dtype=ids.dtype), pad_id
    return out[:, :max(int((out != pad_id).sum(1).max()), 1)]


def text_diffusion_loss(model: UNet, batch: dict, encoder: PromptEncoder, caption_dropout: float = CAPTION_DROPOUT,
                        unseen: list | None = None):
    """``unet_loss`` on a batch of latents (``"image"``) and caption ids (``"ids"``): a share
    ``caption_dropout`` of the captions is replaced by the empty prompt, then the frozen text tower
    turns every caption into its per-token states, the condition the U-Net cross-attends to. Other
    conditions in the batch (an inpainting model's ``"concat"``) go to the U-Net as they are. With
    ``unseen`` (a pool of ``unseen_characters``), ``UNSEEN_SHARE`` of the captions get some inserted first."""
    ids = batch["ids"]
    if unseen:
        ids = insert_unseen(ids, unseen, UNSEEN_SHARE, encoder.tokenizer.pad_id, encoder.clip.config.context_length)
    dropped = torch.rand(len(ids), device=ids.device) < caption_dropout
    ids = torch.where(dropped[:, None], empty_prompt_ids(encoder, ids.shape[1]).to(ids.device), ids)
    others = {k: v for k, v in batch.items() if k not in ("image", "ids", "group")}
    return unet_loss(model, {"images": batch["image"], **encoder.states(ids), **others}, cond_dropout=0.0)


def _options(steps, default: int, from_shipped: bool) -> str:
    return (f" --steps {steps}" if steps and steps != default else "") + (" --from-shipped" if from_shipped else "")


def _train_t2i(name: str, model: UNet, data: CaptionedPictures, encoder: PromptEncoder, steps: int, fast: bool,
               device: str, from_shipped: bool, unseen: list | None = None):
    """What both recipes share: chapter 05's training (``ddpm_mnist_config``) of ``text_diffusion_loss``,
    resumable, or trained on from the shipped weights; returns (EMA model on the CPU, result, start)."""
    config = ddpm_mnist_config(20 if fast else steps, fast, run_dir(name, fast), device)
    if fast:  # a fixture's few pictures make a batch of their own
        config = dataclasses.replace(config, batch_size=min(config.batch_size, len(data)))
    start = shipped_start(name, model) if from_shipped else None
    result = train(model, lambda m, b: text_diffusion_loss(m, b, encoder, unseen=unseen), data, config, resume=True,
                   start_from=start)
    encoder.clip.cpu()
    return result.ema.cpu().eval(), result, start


def _used(manifest: dict, **names) -> dict:
    """The manifest record of the shipped models a recipe builds on: {role: {"name", "sha256"}}."""
    return {role: {"name": name, "sha256": manifest[name]["sha256"]} for role, name in names.items()}


def shapes_latents(vae, manifest: dict, fast: bool):
    """What the shapes recipes of chapters 09–10 train on: the training renders (training compositions),
    the description their latent cache is filed under, their latents (encoded once by ``vae``), each
    picture's caption group and every group's training wordings: ``(pictures, what, latents, groups, texts)``."""
    n = 2000 if fast else TRAIN_PICTURES
    pictures = ShapesDataset(n, seed=TRAIN_SEED, size=SIZE, compositions="train")
    what = {"pictures": "shapes", "seed": TRAIN_SEED, "size": SIZE, "n": n, "compositions": "train"}
    latents = cached_latents(vae, manifest[AUTOENCODER]["sha256"], what, lambda: pictures.images,
                             run_dir("latents", fast))
    groups = attribute_groups(pictures.attributes)
    return pictures, what, latents, groups, {g: all_captions(COMBINATIONS[g]) for g in groups.unique().tolist()}


@RECIPES.register
def t2i_shapes(fast: bool = False, device: str = "auto", steps: int | None = None,
               from_shipped: bool = False) -> dict:
    """Text-to-image on the shapes: see the module's docstring. ``steps`` defaults to 30,000."""
    options = _options(steps, T2I_STEPS, from_shipped)
    torch.manual_seed(0)
    manifest = read_manifest()
    vae, (clip, tokenizer) = load_pretrained(AUTOENCODER), load_clip(TEXT_ENCODER)
    encoder = PromptEncoder(clip, tokenizer)
    pictures, what, latents, groups, texts = shapes_latents(vae, manifest, fast)
    n = len(pictures)
    data = CaptionedPictures(latents, groups, texts, tokenizer, clip.config.context_length)
    model = t2i_unet(vae.latent_shape[0], vae.latent_shape[1], encoder.width)
    words = "".join(word for values in CHINESE_WORDS.values() for word in values.values())
    unseen = unseen_characters(tokenizer, avoid=eval_caption(pictures.attributes[0], language="zh") + words)
    model, result, start = _train_t2i("t2i_shapes", model, data, encoder, steps or T2I_STEPS, fast, device,
                                      from_shipped, unseen)
    decode = latent_decoder(vae)
    test = ShapesDataset(25 if fast else PROMPTS, seed=TEST_SEED, size=SIZE, compositions="train")
    held = ShapesDataset(12 if fast else HELD_OUT_PROMPTS, seed=TEST_SEED, size=SIZE, compositions="held_out")
    metrics = {"parameters": sum(p.numel() for p in model.parameters()), "guidance_scale": GUIDANCE,
               "real_vs_real_fid": shapes_real_vs_real_fid(SIZE)}
    for language in ("en", "zh"):
        metrics[language] = {
            "train_compositions": prompt_following(model, encoder, decode, test.attributes, language,
                                                   guidance_scale=GUIDANCE, clip=(clip, tokenizer)),
            "held_out_compositions": prompt_following(model, encoder, decode, held.attributes, language,
                                                      compositions="held_out", guidance_scale=GUIDANCE)}
    metrics["all_correct"] = metrics["en"]["train_compositions"]["all_correct"]
    metrics["loss_curve"] = [[h["step"], round(h["loss"], 5)] for h in result.history]
    note = (f"latents of {n:,} shapes renders (seed {TRAIN_SEED}, training compositions, 64 px) by {AUTOENCODER}, "
            f"each with its {data.wordings} training wordings (English and Chinese) read by {TEXT_ENCODER}'s text "
            f"tower; measured with the evaluation wordings of {len(test):,} test and {len(held):,} held-out "
            "attribute tuples")
    return finish(model, "t2i_shapes", result, fast, note, metrics, options, better=("all_correct", "higher"),
                  started_from=start, **_used(manifest, autoencoder=AUTOENCODER, text_encoder=TEXT_ENCODER))


MNIST_STEPS = 6_000


@RECIPES.register
def t2i_mnist(fast: bool = False, device: str = "auto", steps: int | None = None,
              from_shipped: bool = False) -> dict:
    """"a handwritten seven": chapter 05's MNIST U-Net in pixel space (2×2 patches, attention at 7×7)
    cross-attending to the shipped ``clip_mnist``'s token states (width 64), trained on the 60,000
    training digits with every training wording in both languages (10 per digit), 10 % of captions
    dropped to the empty prompt. Measured on 2,000 pictures (200 per digit, seed 0, DPM-Solver++(2M) ×
    20 at the default guidance) for the prompt "a handwritten k" (the issue's wording), for the
    evaluation wording "a photo of the number k" that no caption trains on, and for both in Chinese:
    the MNIST classifier's accuracy overall and per digit, and the classifier-FID."""
    options = _options(steps, MNIST_STEPS, from_shipped)
    torch.manual_seed(0)
    manifest = read_manifest()
    encoder = PromptEncoder(*load_clip("clip_mnist"))
    images, labels = mnist_dataset("train", limit=256 if fast else None).tensors
    data = digits_training_set(images, labels, encoder.tokenizer, encoder.clip.config.context_length)
    model = UNet(UNetConfig(in_channels=1, image_size=28, channels=(32, 64), attention=(False, True),
                            num_res_blocks=2, dropout=0.0, feed_forward=2, prediction_type="v_prediction",
                            schedule="cosine", patch_size=2, context_dim=encoder.width))
    model, result, start = _train_t2i("t2i_mnist", model, data, encoder, steps or MNIST_STEPS, fast, device,
                                      from_shipped)
    digits = torch.arange(40 if fast else PROMPTS) % 10
    metrics = {"parameters": sum(p.numel() for p in model.parameters()), "guidance_scale": GUIDANCE,
               "real_vs_real_fid": real_vs_real_fid()}
    for wording, caption in [("handwritten", digit_caption), ("eval", eval_digit_caption)]:
        for language in ("en", "zh"):
            prompts = [caption(int(d), language=language) for d in digits]
            drawn = text_to_image(model, encoder, prompts, guidance_scale=GUIDANCE, sampler="dpmpp_2m",
                                  num_inference_steps=20, seed=PROTOCOL_SEED, progress=False)
            report = evaluate_samples(drawn, digits)
            metrics[f"{wording}_{language}"] = {k: report[k] for k in ("accuracy", "per_class_accuracy", "fid")}
    metrics["worst_digit_accuracy"] = min(metrics["handwritten_en"]["per_class_accuracy"])
    metrics["loss_curve"] = [[h["step"], round(h["loss"], 5)] for h in result.history]
    note = (f"MNIST train ({len(images):,} digits) × {data.wordings} training wordings (English and Chinese) read by "
            f"clip_mnist's text tower; measured on {len(digits):,} pictures per prompt wording and language")
    return finish(model, "t2i_mnist", result, fast, note, metrics, options, better=("worst_digit_accuracy", "higher"),
                  started_from=start, **_used(manifest, text_encoder="clip_mnist"))
