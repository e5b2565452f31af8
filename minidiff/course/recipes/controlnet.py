"""Chapter 11: ControlNets that steer ``t2i_shapes`` by an outline (``controlnet_shapes_edge``) or a
filled mask (``controlnet_shapes_mask``).

**Model.** ``minidiff.models.controlnet``: a copy of ``t2i_shapes``' way down and middle, initialised
from its weights, a hint encoder that brings the 64 × 64 condition to the latent's 8 × 8 grid, and zero
1 × 1 convolutions into the frozen base's skips and middle. Only the ControlNet trains (and is shipped:
its file names the base it steers, by sha256).

**Data.** ``t2i_shapes``' own training latents and captions (training compositions only, both
languages), each picture with its condition — its 1-pixel outline or its filled mask, from the renderer
(``ShapesDataset.edges``/``.masks``). As the paper does, half of the captions are replaced by the empty
prompt, so that the condition alone draws the object and the ControlNet cannot lean on the words.

**The sudden convergence.** Every 25 steps up to step 1,000, then every 100, a callback draws ``CURVE_PICTURES`` test
conditions with the *empty* prompt (the base alone cannot place them: IoU ≈ 0) from the weights being
trained (not their EMA) and records the object's mask IoU with the condition (and the edge F1): the
curve of ``metrics["convergence"]``, and the step where it first passes 0.5 (``metrics["converged_at"]``).

**Measurement** (``minidiff.edit_protocol.control_task``/``control_scores``): ``TASKS`` test renders of
training compositions and ``HELD_OUT_TASKS`` of held-out ones, each condition with its own caption
(evaluation wording, guidance 3, 20 DPM-Solver++(2M) steps): mask IoU, edge F1 and the judge's
all-five accuracy, beside the base model's accuracy on the same prompts and seeds without control.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from minidiff.course.recipes.clip import CaptionedPictures
from minidiff.course.recipes.common import RECIPES, finish, recipe_config, run_dir
from minidiff.course.recipes.latent import SIZE
from minidiff.course.recipes.text2image import (
    AUTOENCODER,
    GUIDANCE,
    TEXT_ENCODER,
    _options,
    _used,
    shapes_latents,
    text_diffusion_loss,
)
from minidiff.datasets.shapes import TEST_SEED, TRAIN_SEED
from minidiff.edit_protocol import control_scores, control_task
from minidiff.files import save_safetensors_atomic, write_json_atomic
from minidiff.latents import latent_decoder
from minidiff.metrics import PROTOCOL_SEED
from minidiff.models.controlnet import ControlNet, Controlled
from minidiff.text2image import PromptEncoder, text_to_image
from minidiff.train import TrainState, train
from minidiff.weights import load_clip, load_pretrained, read_manifest

BASE = "t2i_shapes"
CONTROL_STEPS = 6_000
BATCH_SIZE = 64
PROMPT_DROPOUT = 0.5        # the paper's: half the captions are the empty prompt
CURVE_EVERY, CURVE_DENSE, CURVE_PICTURES, CURVE_STEPS = 100, (25, 1_000), 64, 10  # every 25 steps up to 1,000
STRIP = 6                   # pictures of every curve point kept for the strip of samples over training
SHIPPED_STRIP, SHIPPED_EVERY = 4, 500   # the shipped strip: 4 pictures, every point up to 1,000 then every 500
TASKS, HELD_OUT_TASKS = 1_000, 500


def draw(model, encoder, decode, task: dict, *, prompts=None, guidance_scale: float = GUIDANCE, steps: int = 20,
         control_strength: float = 1.0, batch_size: int = 250) -> torch.Tensor:
    """The pictures a ControlNet-steered ``model`` draws for ``task``'s conditions (with its prompts, or
    ``prompts``), by DPM-Solver++(2M) at the protocol's seed; a plain U-Net draws the prompts alone."""
    control = {"control": task["conditions"], "control_strength": control_strength} if isinstance(model, Controlled) else {}
    return text_to_image(model, encoder, task["prompts"] if prompts is None else prompts, decode=decode,
                         guidance_scale=guidance_scale, sampler="dpmpp_2m", num_inference_steps=steps,
                         seed=PROTOCOL_SEED, batch_size=batch_size, progress=False, **control)


def convergence_callback(encoder, decode, kind: str, folder: Path, n: int, every: int, until: int):
    """``(fn, curve)`` for ``train``: ``fn`` measures the empty-prompt IoU and edge F1 of the weights being
    trained and keeps ``curve`` (a list of [step, IoU, F1]) in ``folder``, with the first ``STRIP``
    pictures of every measurement (``convergence.safetensors``: the strip of samples over the steps), so a
    resumed run keeps the points measured before it stopped (and drops those after its checkpoint)."""
    task = control_task(n, kind, seed=TEST_SEED, size=SIZE)
    curve_path, strip_path = folder / "convergence.json", folder / "convergence.safetensors"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else []
    strip = load_file(strip_path) if strip_path.exists() else {}

    def measure(state: TrainState):
        if state.step > until and state.step % every:
            return
        pictures = draw(state.model, encoder, decode, task, prompts=[""] * n, guidance_scale=1.0, steps=CURVE_STEPS)
        scores = control_scores(pictures, task)
        curve[:] = [c for c in curve if c[0] < state.step]
        curve.append([state.step, round(scores["object_iou"], 4), round(scores["edge_f1"], 4)])
        kept = {k: v for k, v in strip.items() if int(k) < state.step}
        strip.clear()
        strip.update(kept, **{str(state.step): to_uint8(pictures[:STRIP])})
        save_safetensors_atomic(strip, strip_path)
        write_json_atomic(curve, curve_path)
    return measure, curve


def to_uint8(pictures: torch.Tensor) -> torch.Tensor:
    """Pictures in [-1, 1] as the bytes of a PNG (N, H, W, C)."""
    return ((pictures.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def train_controlnet(name: str, kind: str, fast: bool, device: str, steps: int, zero_init: bool = True):
    """Train a ControlNet for ``BASE`` on ``kind`` conditions into ``runs/<name>``: returns (the EMA
    ControlNet attached to the base, on the CPU, the training result, the convergence curve)."""
    torch.manual_seed(0)
    manifest = read_manifest()
    vae, (clip, tokenizer) = load_pretrained(AUTOENCODER), load_clip(TEXT_ENCODER)
    encoder, decode = PromptEncoder(clip, tokenizer), latent_decoder(vae)
    base = load_pretrained(BASE)
    model = Controlled(base, ControlNet.from_base(base, zero_init=zero_init))
    pictures, _, latents, groups, texts = shapes_latents(vae, manifest, fast)
    conditions = (pictures.edges if kind == "edge" else pictures.masks).to(torch.uint8)
    data = CaptionedPictures(latents, groups, texts, tokenizer, clip.config.context_length, control=conditions)
    config = recipe_config(name, fast, device, steps=steps, batch_size=min(BATCH_SIZE, len(data)), lr=2e-4,
                           warmup_steps=5 if fast else 100, min_lr_ratio=1.0, ema_decay=0.999, checkpoint_every=250)
    every, (dense, until) = (10, (10, 0)) if fast else (CURVE_EVERY, CURVE_DENSE)
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    callback, curve = convergence_callback(encoder, decode, kind, Path(config.out_dir), 8 if fast else CURVE_PICTURES,
                                           every, until)
    result = train(model, lambda m, b: text_diffusion_loss(m, b, encoder, caption_dropout=PROMPT_DROPOUT), data,
                   config, callbacks=[(dense, callback)], resume=True)
    encoder.clip.cpu()
    return result.ema.cpu().eval(), result, curve


def shipped_strip(strip: dict) -> dict:
    """The strip of samples over training as shipped beside the weights: the first ``SHIPPED_STRIP`` pictures
    of every point of the dense part of the curve, then of every ``SHIPPED_EVERY``-th step (about 2 MB)."""
    return {k: v[:SHIPPED_STRIP].contiguous() for k, v in strip.items()
            if int(k) <= CURVE_DENSE[1] or int(k) % SHIPPED_EVERY == 0 or int(k) == max(map(int, strip))}


def converged_at(curve: list, threshold: float = 0.5) -> int | None:
    """The first step whose empty-prompt IoU reaches ``threshold`` (None if none does)."""
    return next((step for step, iou, _ in curve if iou >= threshold), None)


def _controlnet(name: str, kind: str, fast: bool, device: str, steps: int | None) -> dict:
    options = _options(steps, CONTROL_STEPS, False)
    manifest = read_manifest()
    model, result, curve = train_controlnet(name, kind, fast, device, steps or CONTROL_STEPS)
    clip, tokenizer = load_clip(TEXT_ENCODER)
    encoder, decode = PromptEncoder(clip, tokenizer), latent_decoder(load_pretrained(AUTOENCODER))
    trainable = sum(p.numel() for p in model.controlnet.parameters())
    metrics = {"parameters": trainable, "base_parameters": sum(p.numel() for p in model.base.parameters()),
               "guidance_scale": GUIDANCE, "sampler": "dpmpp_2m", "num_inference_steps": 20,
               "convergence": curve, "converged_at": converged_at(curve)}
    for compositions, count in (("train", 25 if fast else TASKS), ("held_out", 12 if fast else HELD_OUT_TASKS)):
        task = control_task(count, kind, seed=TEST_SEED, size=SIZE, compositions=compositions)
        metrics[compositions] = control_scores(draw(model, encoder, decode, task), task)
        metrics[compositions]["base_all_correct"] = control_scores(draw(model.base, encoder, decode, task),
                                                                   task)["all_correct"]
        metrics[compositions]["empty_prompt"] = control_scores(
            draw(model, encoder, decode, task, prompts=[""] * count, guidance_scale=1.0), task)
    metrics["object_iou"] = metrics["train"]["object_iou"]
    metrics["loss_curve"] = [[h["step"], round(h["loss"], 5)] for h in result.history]
    note = (f"a ControlNet ({kind} conditions) for {BASE}, trained on the latents of "
            f"the {BASE} training renders (seed {TRAIN_SEED}, training compositions, 64 px), each with its {kind} "
            f"and every training wording ({PROMPT_DROPOUT:.0%} replaced by the empty prompt); measured on {TASKS:,} "
            f"test and {HELD_OUT_TASKS:,} held-out renders' conditions with their captions")
    strip = load_file(Path(run_dir(name, fast)) / "convergence.safetensors")
    companions = {"convergence.safetensors": lambda path: save_safetensors_atomic(shipped_strip(strip), path)}
    return finish(model.controlnet, name, result, fast, note, metrics, options, better=("object_iou", "higher"),
                  companions=companions, **_used(manifest, base=BASE, autoencoder=AUTOENCODER, text_encoder=TEXT_ENCODER))


@RECIPES.register
def controlnet_shapes_edge(fast: bool = False, device: str = "auto", steps: int | None = None) -> dict:
    """A ControlNet that draws the object along a given outline: see the module's docstring."""
    return _controlnet("controlnet_shapes_edge", "edge", fast, device, steps)


@RECIPES.register
def controlnet_shapes_mask(fast: bool = False, device: str = "auto", steps: int | None = None) -> dict:
    """A ControlNet that fills a given mask with the object: see the module's docstring."""
    return _controlnet("controlnet_shapes_mask", "mask", fast, device, steps)
