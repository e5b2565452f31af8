"""Fine-tuning, measured (chapter 12): which way of teaching ``t2i_shapes`` the heart learns it, what each one
costs, what it makes the model forget, and how overfitting looks.

    python benchmarks/finetune.py                                   # about an hour on the project's CPU
    python benchmarks/finetune.py --smoke --results /tmp/finetune   # seconds: the same code, tiny counts

Every run teaches the new-concept protocol's eight pictures (``minidiff.concept_protocol``; the recipe
``lora_heart``'s data, ``concepts.concept_training_set``) and is scored by ``concepts.measure_concept``: the
24 recontextualisation prompts × ``--draws`` pictures, read by the judge and by the outline (the heart counts
only when both agree), and the drift — the base prompts' all-five accuracy, in points, below the base model's.

**Methods.** Textual inversion (the word's row alone), LoRA (rank 4, every attention block; and the
cross-attentions alone) and full fine-tuning, each without and with prior preservation, ``--steps`` steps at
batch 16: concept accuracy, drift, trainable numbers, adapter file size, wall time.

**Rank.** LoRA on every attention block at r ∈ ``--ranks``, with the recipe's setting of prior preservation.

**Overfitting.** Full fine-tuning without prior preservation for ``--long`` steps. Every ``--every`` steps:
the loss on the eight training pictures and on the eight held-out pictures of the same corner of the world
(the same noise and steps each time), the samples' distance to the nearest training picture (pictures drawn
for the held-out pictures' captions; the held-out pictures' own distance is the floor for pictures that are
new), and the base prompts' accuracy. Early stopping keeps the step of the lowest held-out loss.

Results: ``benchmarks/results/finetune.json`` and ``finetune_overfitting.png``.
"""
import argparse
import copy
import time
from types import SimpleNamespace

import matplotlib
import torch
from smoke import add_output_options, parse_args

from minidiff.concept_protocol import CONCEPT, base_prompts, concept_pictures, concept_scores
from minidiff.course.recipes import concepts
from minidiff.course.recipes.clip import CaptionedPictures
from minidiff.course.recipes.finetune import FinetuneConfig, add_words, adapter_state, finetune
from minidiff.datasets.shapes import all_captions
from minidiff.devices import hardware_description
from minidiff.diffusion.loss import unet_loss
from minidiff.files import write_atomic, write_json_atomic
from minidiff.latents import encode_latents
from minidiff.metrics import PROTOCOL_SEED
from minidiff.text2image import load_text_to_image, text_to_image

METHODS = [("textual inversion", dict(method="word")), ("LoRA r4", dict(method="lora", rank=4)),
           ("LoRA r4, cross-attention", dict(method="lora", rank=4, where="cross")), ("full", dict(method="full"))]
SMOKE = dict(steps=4, draws=1, base=4, ranks=[1, 2], long=6, every=3, prior=4, methods=["LoRA r4", "full"])


def run(name, settings, prior, args, base, decode, encoder, callbacks=()):
    """One teaching run and its scores (and the taught model, for the overfitting curves)."""
    taught = add_words(encoder, [CONCEPT])
    data = concepts.concept_training_set(base, decode, taught, prior=args.prior if prior else 0)
    config = FinetuneConfig(steps=settings.pop("steps", args.steps), **settings)
    start = time.time()
    result = finetune(base, taught, data, config, callbacks=callbacks, progress=False)
    wall = time.time() - start
    learner = result.model.eval()
    scores = concepts.measure_concept(learner.unet, decode, taught, draws=args.draws, base=args.base)
    state = adapter_state(learner, config.method)
    row = {"method": name, "prior_preservation": prior, "steps": config.steps,
           "recontext_shape": scores["concept"]["shape"], "recontext_all_correct": scores["concept"]["all_correct"],
           "judge_shape": scores["concept"]["judge_shape"], "outline_shape": scores["concept"]["outline_shape"],
           "base_prompts_all_correct": scores["base_prompts_all_correct"],
           "trainable_numbers": sum(v.numel() for v in state.values()),
           "adapter_kb": round(sum(v.numel() * v.element_size() for v in state.values()) / 1024, 1),
           "wall_time_s": round(wall, 1)}
    print(row, flush=True)
    return row, result


def diffusion_losses(unet, taught, sets: dict, draws: int = 16) -> dict:
    """The mean diffusion loss of each set of pictures with their captions, over the same ``draws`` noises
    and steps every time it is measured (the global random state is left as it was)."""
    state, out = torch.random.get_rng_state(), {}
    for name, data in sets.items():
        torch.manual_seed(PROTOCOL_SEED)
        batch = data.take(torch.arange(len(data)).repeat(draws))
        with torch.no_grad():
            out[name] = unet_loss(unet, {"images": batch["image"], **taught.states(batch["ids"])},
                                  cond_dropout=0.0)["loss"].item()
    torch.random.set_rng_state(state)
    return out


def overfitting(args, base, decode, encoder) -> dict:
    """The long run's curves (see the module's docstring)."""
    taught = add_words(encoder, [CONCEPT])
    shown, held = concept_pictures(), concept_pictures(held_out=True)

    def pictures_with_captions(pictures):
        captions = [all_captions(a, languages=("en",))[:1] for a in pictures["attributes"]]
        return CaptionedPictures(encode_latents(decode.vae, pictures["images"]), torch.arange(len(captions)),
                                 dict(enumerate(captions)), taught.tokenizer, taught.clip.config.context_length)

    sets = {"train": pictures_with_captions(shown), "held_out": pictures_with_captions(held)}
    nearest = lambda x: torch.cdist(x.flatten(1), shown["images"].flatten(1)).min(1).values / x[0].numel() ** 0.5
    floor = nearest(held["images"]).mean().item()
    prompts, asked = base_prompts(args.base)
    curve = []

    def measure(state):
        unet = state.model.unet.eval()
        losses = diffusion_losses(unet, taught, sets)
        drawn = text_to_image(unet, taught, held["captions"] * 2, decode=decode, seed=PROTOCOL_SEED, **concepts.DRAW)
        kept = concept_scores(text_to_image(unet, taught, prompts, decode=decode, seed=PROTOCOL_SEED, **concepts.DRAW),
                              asked)["all_correct"]
        curve.append({"step": state.step, **losses, "nearest_training_picture": nearest(drawn).mean().item(),
                      "base_prompts_all_correct": kept})
        print(curve[-1], flush=True)
        unet.train()

    measure(SimpleNamespace(step=0, model=SimpleNamespace(unet=copy.deepcopy(base))))
    run("full, long", dict(method="full", steps=args.long), False, args, base, decode, encoder,
        callbacks=[(args.every, measure)])
    best = min(curve[1:], key=lambda point: point["held_out"])
    return {"curve": curve, "held_out_floor": floor, "early_stopping_step": best["step"]}


def plot(results: dict, folder) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curve = results["overfitting"]["curve"]
    steps = [p["step"] for p in curve]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    axes[0].plot(steps, [p["train"] for p in curve], label="the 8 training pictures")
    axes[0].plot(steps, [p["held_out"] for p in curve], label="8 held-out pictures")
    axes[0].axvline(results["overfitting"]["early_stopping_step"], color="grey", ls=":", label="early stopping")
    axes[0].set(xlabel="step", ylabel="diffusion loss", title="loss")
    axes[1].plot(steps, [p["nearest_training_picture"] for p in curve], label="samples for held-out captions")
    axes[1].axhline(results["overfitting"]["held_out_floor"], color="grey", ls="--", label="held-out pictures")
    axes[1].set(xlabel="step", ylabel="RMS distance", title="distance to the nearest training picture")
    axes[2].plot(steps, [100 * p["base_prompts_all_correct"] for p in curve])
    axes[2].set(xlabel="step", ylabel="% all five right", title="the base's own prompts")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(folder / "finetune_overfitting.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=concepts.STEPS)
    parser.add_argument("--draws", type=int, default=concepts.DRAWS)
    parser.add_argument("--base", type=int, default=concepts.BASE_PROMPTS)
    parser.add_argument("--prior", type=int, default=concepts.PRIOR)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--methods", nargs="+", default=[name for name, _ in METHODS])
    parser.add_argument("--long", type=int, default=3_000)
    parser.add_argument("--every", type=int, default=150)
    add_output_options(parser, help="folder of the results")
    args = parse_args(parser, argv, SMOKE)
    base, decode, encoder = load_text_to_image(concepts.BASE)
    before = concepts.measure_concept(base, decode, encoder, draws=args.draws, base=args.base)
    results = {"hardware": hardware_description(torch.device("cpu")), "threads": torch.get_num_threads(),
               "base_model": {"recontext_shape": before["concept"]["shape"],
                              "base_prompts_all_correct": before["base_prompts_all_correct"]},
               "methods": [run(name, dict(settings), prior, args, base, decode, encoder)[0]
                           for name, settings in METHODS if name in args.methods for prior in (False, True)],
               "ranks": [run(f"LoRA r{r}", dict(method="lora", rank=r), True, args, base, decode, encoder)[0]
                         for r in args.ranks],
               "overfitting": overfitting(args, base, decode, encoder)}
    for row in results["methods"] + results["ranks"]:
        row["drift_points"] = round(100 * (results["base_model"]["base_prompts_all_correct"]
                                           - row["base_prompts_all_correct"]), 1)
    if args.smoke:
        results["smoke"] = True
    args.results.mkdir(parents=True, exist_ok=True)
    plot(results, args.results)
    write_json_atomic(results, args.results / "finetune.json")


if __name__ == "__main__":
    main()
