"""Editing a picture, measured (chapter 10): img2img's trade-off between the input and the prompt, and
inpainting by RePaint against a mask-conditioned model — accuracy, harmony and cost.

    python benchmarks/editing.py                              # t2i_shapes (and inpaint_shapes) on the CPU
    python benchmarks/editing.py --smoke --results /tmp/edit  # seconds: the same code, tiny counts

**SDEdit's trade-off** (``minidiff.edit_protocol.recolour_task``). For each strength s = 0.1 … 1.0,
test renders are redrawn from their own picture with their caption in another colour (evaluation
wording, DPM-Solver++(2M) × 20, guidance 3, seeds 0 and 1): the share drawn in the asked colour (and
with all five attributes as asked), faithfulness — the object read by colour against the input's
(IoU) and the RMS distance to the input — and realism, judge-FID against the test renders (beside
the real-vs-real floor at the same count, and the inputs' own score: the same renders repeated as the
curve's pictures are, which no edit can beat by keeping them). Low s keeps the picture and ignores the
prompt; s = 1 is plain text-to-image, which obeys and forgets.

**Keeping the outline by a control** (chapter 11). In the 8 × 8 latent an object's colour and its outline
are decided at the same noise levels, so no strength of plain SDEdit changes the one and keeps the other.
The same curve with ``controlnet_shapes_mask`` steering ``t2i_shapes``: the condition is the input's own
object, read by colour (``object_mask``: nothing a user would not have), so the outline is held by the
control and the strength decides only how freely the colour is redrawn (``KEEP_OUTLINE``). Beside it, plain
SDEdit with the same sampler and steps, to show that the sampler is not what keeps the outline.

**Inpainting** (``replacement_task``: a new object in the box hole; ``completion_task``: half the object
hidden, the picture's own caption). Methods, each with its network calls per picture (a guided call on
a doubled batch counts once):
  * paste only: text-to-image from the prompt, the kept pixels pasted over it (20 calls);
  * RePaint without resampling (the "replacement" method) at 20 and at 80 steps;
  * RePaint with resampling — 20 steps, jumps of 5, 5 resamplings: 80 calls, as many as 80 steps;
  * the mask-conditioned ``inpaint_shapes`` (if shipped): DPM-Solver++(2M) at 20 steps, and at 8 and 4
    steps spaced evenly in t — at 8 calls or fewer it costs a tenth of RePaint's 80.
Reported: all five attributes right, the object's IoU with the render's own (completion), the seam
error at the hole's edge, that the kept pixels are exact, and the seconds per picture on this machine.

**RePaint in pixel space** (``repaint_on_digits``): ``t2i_mnist`` completes 1,000 test digits whose right
half is hidden — 20 steps, 80 steps, and 20 steps with 5 resamplings (80 calls), to test RePaint's
finding that at equal calls resampling beats more steps.

Results: ``benchmarks/results/editing.json`` and the trade-off as ``editing_tradeoff.png``.
"""
import argparse
import time

import matplotlib
import numpy as np
import torch
from smoke import add_output_options, parse_args

from minidiff.datasets.mnist import digit_caption, load_mnist, to_tensor
from minidiff.datasets.shapes import TEST_SEED
from minidiff.devices import hardware_description, pick_device
from minidiff.diffusion.samplers import nfe_for_steps
from minidiff.edit_protocol import (
    KEEP_OUTLINE,
    completion_task,
    img2img_scores,
    inpainting_scores,
    object_mask,
    recolour_task,
    replacement_task,
)
from minidiff.files import write_atomic, write_json_atomic
from minidiff.inpainting import inpaint, paste_kept, repaint_calls
from minidiff.metrics import evaluate_samples, evaluate_shapes, shapes_real_vs_real_fid
from minidiff.text2image import load_text_to_image, text_to_image
from minidiff.weights import read_manifest

STRENGTHS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
GUIDANCE = 3.0
# 8 calls or fewer: a tenth of RePaint's 80. Spaced evenly in t: on 96 tuning tasks (TUNE_SEED) Karras's
# spacing at 8 steps drew 88.5 % of the replacements right, even spacing 100 % (at 20 steps both 100 %).
MASK_MODEL_STEPS = [(20, None), (8, "uniform_t"), (4, "uniform_t")]
SMOKE = dict(strengths=[0.3, 1.0], recolour=4, seeds=[0], tasks=4, digits=4)
PLAIN = dict(sampler="dpmpp_2m", num_inference_steps=20)
STEERED = {key: KEEP_OUTLINE[key] for key in ("sampler", "num_inference_steps")}  # (how they were chosen: there)


def sdedit_curve(model, encoder, decode, n: int, strengths: list, seeds: list, control_strength=None,
                 **sampling) -> list:
    """The recolouring task at every strength; with ``control_strength`` λ, ``model`` is a mask ControlNet
    (``Controlled``), given the input's own object read by colour as its condition."""
    task = recolour_task(n)
    control = {} if control_strength is None else {"control": object_mask(task["images"]),
                                                   "control_strength": control_strength}
    rows = []
    for strength in strengths:
        pictures = torch.cat([text_to_image(model, encoder, task["prompts"], image=task["images"], strength=strength,
                                            guidance_scale=GUIDANCE, decode=decode, seed=seed, progress=False,
                                            **control, **sampling) for seed in seeds])
        twice = {**task, "images": task["images"].repeat(len(seeds), 1, 1, 1), "asked": task["asked"] * len(seeds)}
        row = {"strength": strength, **img2img_scores(pictures, twice)}
        rows.append(row)
        print(f"s = {strength:.1f}: colour as asked {100 * row['accuracy']['color']:.1f} %, object IoU "
              f"{row['object_iou']:.3f} (≥ 0.9: {100 * row['layout_kept']:.1f} %; with the colour "
              f"{100 * row['colour_and_layout_kept']:.1f} %), RMS to input {row['rms_to_input']:.3f}, "
              f"judge-FID {row['fid']:.1f}", flush=True)
    return rows


def sdedit_curves(model, encoder, decode, n: int, strengths: list, seeds: list, device) -> dict:
    """Plain SDEdit (DPM-Solver++(2M) × 20, and ``STEERED``'s sampler), and SDEdit steered by the mask ControlNet."""
    steering, decode_steered, encoder_steered = load_text_to_image(KEEP_OUTLINE["model"])
    curves = {}
    for name, drawer, control_strength, sampling in (
            ("plain", (model, encoder, decode), None, PLAIN),
            ("plain, steered's sampler", (model, encoder, decode), None, STEERED),
            ("mask ControlNet", (steering.to(device), encoder_steered, decode_steered), KEEP_OUTLINE["control_strength"],
             STEERED)):
        print(f"SDEdit, {name}: {sampling}" + (f", λ = {control_strength}" if control_strength else ""), flush=True)
        curves[name] = sdedit_curve(*drawer, n, strengths, seeds, control_strength, **sampling)
    return curves

def inpainting_methods(n: int) -> list:
    """(name, model name, options, network calls per picture) for every method compared."""
    methods = [("paste only", "t2i_shapes", None, nfe_for_steps("dpmpp_2m", 20))]
    for steps, jump, resamplings in ((20, 5, 1), (80, 5, 1), (20, 5, 5)):
        calls = repaint_calls(steps, jump, resamplings)
        name = f"RePaint, {steps} steps" + (f", {resamplings} resamplings of {jump}" if resamplings > 1 else "")
        methods.append((name, "t2i_shapes", dict(sampler="ddpm", num_inference_steps=steps, jump_length=jump,
                                                 resamplings=resamplings), calls))
    if "inpaint_shapes" in read_manifest():
        for steps, spacing in MASK_MODEL_STEPS:
            options = dict(sampler="dpmpp_2m", num_inference_steps=steps, **({"spacing": spacing} if spacing else {}))
            methods.append((f"mask-conditioned model, {steps} steps" + (f" ({spacing})" if spacing else ""),
                            "inpaint_shapes", options, nfe_for_steps("dpmpp_2m", steps)))
    return methods


def compare_inpainting(n: int, device) -> list:
    tasks = {"replacement": replacement_task(n), "completion": completion_task(n)}
    models, rows = {}, []
    for name, model_name, options, calls in inpainting_methods(n):
        if model_name not in models:
            model, decode, encoder = load_text_to_image(model_name)
            models[model_name] = (model.to(device), decode, encoder)
        model, decode, encoder = models[model_name]
        row = {"method": name, "model": model_name, "network_calls": calls}
        for kind, task in tasks.items():
            started = time.perf_counter()
            if options is None:
                drawn = text_to_image(model, encoder, task["prompts"], guidance_scale=GUIDANCE, decode=decode,
                                      sampler="dpmpp_2m", num_inference_steps=20, progress=False)
                pictures = paste_kept(drawn, task["images"], task["masks"])
            else:
                pictures = inpaint(model, encoder, task["images"], task["masks"], task["prompts"], decode=decode,
                                   guidance_scale=GUIDANCE, progress=False, **options)
            row[kind] = {**inpainting_scores(pictures, task), "seconds_per_picture": (time.perf_counter() - started) / n}
        rows.append(row)
        print(f"{name} ({calls} calls): " + "; ".join(
            f"{kind} all five {100 * row[kind]['all_correct']:.1f} %, object IoU {row[kind]['object_iou']:.3f}, "
            f"seam {row[kind]['seam_error']:.4f}" for kind in tasks) +
            f"; {row['replacement']['seconds_per_picture']:.2f} s/picture", flush=True)
    return rows


DIGIT_WALKS = [(20, 5, 1), (80, 5, 1), (20, 5, 5)]  # 20 steps; 80 steps; 20 steps × 5 resamplings (80 calls)


def repaint_on_digits(n: int, device) -> list:
    """RePaint in pixel space: ``t2i_mnist`` completes n test digits (seed ``TEST_SEED``) whose right half
    is hidden, asked for the digit they are. Reported: the share the MNIST classifier reads as asked, the
    RMS distance to the real digit's hidden half (the real one is one good continuation: the closer, the
    better the drawn half fits the kept one), and the mean step between the two columns at the hole's
    edge (the real digits' own step beside it)."""
    model, _, encoder = load_text_to_image("t2i_mnist")
    model.to(device)
    images, labels = load_mnist("test")
    pick = np.random.default_rng(TEST_SEED).choice(len(images), n, replace=False)
    digits, labels = to_tensor(images[pick]), torch.from_numpy(labels[pick].astype(np.int64))
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 14:] = 1
    prompts = [digit_caption(int(d)) for d in labels]
    rows = [{"method": "the real digits", "seam_step": (digits[..., 14] - digits[..., 13]).abs().mean().item()}]
    for steps, jump, resamplings in DIGIT_WALKS:
        started = time.perf_counter()
        pictures = inpaint(model, encoder, digits, mask, prompts, guidance_scale=GUIDANCE, sampler="ddpm",
                           num_inference_steps=steps, jump_length=jump, resamplings=resamplings, progress=False)
        rows.append({"method": f"RePaint, {steps} steps" + (f", {resamplings} resamplings of {jump}" if resamplings > 1 else ""),
                     "network_calls": repaint_calls(steps, jump, resamplings),
                     "read_as_asked": evaluate_samples(pictures, labels)["accuracy"],
                     "rms_to_real_half": (pictures - digits)[..., 14:].pow(2).mean().sqrt().item(),
                     "seam_step": (pictures[..., 14] - pictures[..., 13]).abs().mean().item(),
                     "seconds_per_picture": (time.perf_counter() - started) / n, "n": n})
        print(f"digits, {rows[-1]['method']} ({rows[-1]['network_calls']} calls): read as asked "
              f"{100 * rows[-1]['read_as_asked']:.1f} %, RMS to the real half {rows[-1]['rms_to_real_half']:.3f}, "
              f"seam step {rows[-1]['seam_step']:.3f} (real digits {rows[0]['seam_step']:.3f})", flush=True)
    return rows


def plot(curves: dict, floor: float, inputs: float, path) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, name in zip(axes, ("plain", "mask ControlNet")):
        rows = curves[name]
        s = [r["strength"] for r in rows]
        ax.plot(s, [100 * r["accuracy"]["color"] for r in rows], "o-", label="colour as asked (%)")
        ax.plot(s, [100 * r["layout_kept"] for r in rows], "s-", label="object kept: IoU with the input ≥ 0.9 (%)")
        ax.plot(s, [100 * r["colour_and_layout_kept"] for r in rows], "D-", label="both at once (%)")
        ax.plot(s, [100 * r["object_iou"] for r in rows], "v--", label="mean IoU with the input (× 100)")
        ax.plot(s, [100 * r["rms_to_input"] for r in rows], "^-", label="RMS distance to the input (× 100)")
        ax.set_ylim(0, 102), ax.set_title(f"SDEdit, {name}", fontsize=9)
        ax.set_xlabel("strength s (share of the steps redrawn)"), ax.legend(fontsize=7)
    for name, rows in curves.items():
        axes[2].plot([r["strength"] for r in rows], [r["fid"] for r in rows], "o-", label=f"SDEdit, {name}")
    axes[2].axhline(floor, color="gray", ls=":", label="real vs real, same count")
    axes[2].axhline(inputs, color="black", ls="--", label="the inputs themselves (each repeated as often)")
    axes[2].set_xlabel("strength s"), axes[2].set_ylabel("judge-FID"), axes[2].legend(fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strengths", nargs="+", type=float, default=STRENGTHS)
    parser.add_argument("--recolour", type=int, default=500, help="test renders recoloured at each strength")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--tasks", type=int, default=300, help="inpainting tasks of each kind")
    parser.add_argument("--digits", type=int, default=1000, help="test digits completed by RePaint in pixel space")
    parser.add_argument("--device", default="cpu", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    add_output_options(parser, help="folder of the results")
    args = parse_args(parser, argv, SMOKE)
    device = pick_device(args.device)
    model, decode, encoder = load_text_to_image("t2i_shapes")
    model.to(device)
    count = args.recolour * len(args.seeds)
    results = {"hardware": hardware_description(device), "device": device.type, "threads": torch.get_num_threads(),
               "real_vs_real_fid_same_count": shapes_real_vs_real_fid(64, n=max(count, 2)),
               "inputs_fid": evaluate_shapes(recolour_task(args.recolour)["images"].repeat(len(args.seeds), 1, 1, 1))["fid"],
               "sdedit_settings": {"plain": PLAIN, "steered": {**STEERED, "control_strength": KEEP_OUTLINE["control_strength"]},
                                   "guidance_scale": GUIDANCE},
               "sdedit": sdedit_curves(model, encoder, decode, args.recolour, args.strengths, args.seeds, device),
               "inpainting": compare_inpainting(args.tasks, device),
               "repaint_digits": repaint_on_digits(args.digits, device)}
    if args.smoke:
        results["smoke"] = True
    args.results.mkdir(parents=True, exist_ok=True)
    plot(results["sdedit"], results["real_vs_real_fid_same_count"], results["inputs_fid"],
         args.results / "editing_tradeoff.png")
    write_json_atomic(results, args.results / "editing.json")


if __name__ == "__main__":
    main()
