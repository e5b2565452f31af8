"""Fine-tuning, measured (chapter 12): which way of teaching ``t2i_shapes`` the heart learns it, what each one
costs, what it makes the model forget, and how overfitting looks.

    python benchmarks/finetune.py                                   # about 20 minutes on the project's CPU
    python benchmarks/finetune.py --smoke --results /tmp/finetune   # seconds: the same code, tiny counts

Every run teaches the new-concept protocol's ten pictures (``minidiff.concept_protocol``; the recipe
``lora_heart``'s data, ``concepts.concept_training_set``) and is scored by ``concepts.measure_concept``: the
24 recontextualisation prompts × ``--draws`` pictures, read by the judge and by the outline (the heart counts
only when both agree), and the drift — the base prompts' all-five accuracy, in points, below the base model's.

**Methods.** As the recipe teaches: the new word's row alone for ``--word-steps`` steps (pivotal tuning),
then ``--steps`` steps of the method — textual inversion (the word's row alone all along), LoRA (rank 4 on
the cross-attentions, the recipe's; and on every attention block) and full fine-tuning — each without
and with prior preservation (the same ``--prior`` pictures for every run), at batch 16: concept accuracy,
drift, trainable numbers, adapter file size, wall time (the prior pictures' drawing not included: it is
timed once, ``prior_pictures_s``).

**Rank.** The recipe (LoRA on the cross-attentions, prior preservation) at r ∈ ``--ranks``.

**Seeds.** The recipe again with each training seed of ``--seeds``: how far one run's numbers are from
another's — the yardstick for every difference in the tables (ten pictures, 96 test pictures).

**Overfitting.** Full fine-tuning without prior preservation for ``--long`` steps. Every ``--every`` steps:
the loss on the ten training pictures and on the ten held-out pictures of the same corner of the world
(the same noise and steps each time), the samples' distance to the nearest training picture (pictures drawn
for the held-out pictures' captions; the held-out pictures' own distance is the floor for pictures that are
new), and the accuracy on ``--curve-base`` base prompts. Early stopping keeps the step of the lowest held-out
loss. The first four pictures of each kind at every measured step are kept as sample strips.

Results: ``benchmarks/results/finetune.json``, ``finetune_overfitting.png`` and the strips,
``finetune_overfitting.safetensors`` (uint8 pictures, ``<kind>.<step>``; chapter 12 shows them).
"""
import argparse
import copy
import time
from types import SimpleNamespace

import matplotlib
import torch
from smoke import add_output_options, parse_args

from minidiff.concept_protocol import CONCEPT, SHOWN_PICTURES, base_prompts, concept_pictures, concept_scores
from minidiff.course.recipes import concepts
from minidiff.course.recipes.clip import CaptionedPictures
from minidiff.course.recipes.finetune import FinetuneConfig, add_words, adapter_state, finetune
from minidiff.datasets.shapes import all_captions
from minidiff.devices import hardware_description
from minidiff.diffusion.loss import unet_loss
from minidiff.files import save_safetensors_atomic, write_atomic, write_json_atomic
from minidiff.latents import encode_latents
from minidiff.metrics import PROTOCOL_SEED
from minidiff.text2image import load_text_to_image, text_to_image

METHODS = [("textual inversion", dict(method="word")), ("LoRA r4", dict(method="lora", rank=4, where=concepts.WHERE)),
           ("LoRA r4, every attention", dict(method="lora", rank=4, where="all")), ("full", dict(method="full"))]
SMOKE = dict(steps=4, word_steps=2, draws=1, base=4, curve_base=4, ranks=[1, 2], seeds=[0, 1], long=6, every=3,
             prior=4, methods=["LoRA r4", "full"])
STRIP = 4  # pictures of each kind kept at every step of the overfitting curve


def strip(pictures: torch.Tensor) -> torch.Tensor:
    """The first ``STRIP`` pictures, (N, 3, H, W) in [-1, 1], as uint8 (the strips' file format)."""
    return ((pictures[:STRIP] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def run(name, settings, prior, args, base, decode, encoder, replay, callbacks=()):
    """One teaching run and its scores (and the taught model, for the overfitting curves)."""
    taught = add_words(encoder, [CONCEPT])
    data = concepts.concept_training_set(base, decode, taught, prior=args.prior if prior else 0, replay=replay)
    steps, word_steps = settings.pop("steps", args.steps), args.word_steps
    if settings["method"] == "word":  # the word alone all along: as many steps as the others' two stages
        steps, word_steps = steps + word_steps, 0
    config = FinetuneConfig(steps=steps, word_steps=settings.pop("word_steps", word_steps), **settings)
    start = time.time()
    result = finetune(base, taught, data, config, callbacks=callbacks, progress=False)
    wall = time.time() - start
    learner = result.model.eval()
    scores = concepts.measure_concept(learner.unet, decode, taught, draws=args.draws, base=args.base)
    state = adapter_state(learner, config.method)
    row = {"method": name, "prior_preservation": prior, "steps": config.steps, "word_steps": config.word_steps,
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


def overfitting(args, base, decode, encoder, replay) -> dict:
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
    prompts, asked = base_prompts(args.curve_base)
    curve, strips = [], {}

    def measure(state):
        unet = state.model.unet.eval()
        losses = diffusion_losses(unet, taught, sets)
        drawn = text_to_image(unet, taught, held["captions"] * 2, decode=decode, seed=PROTOCOL_SEED, **concepts.DRAW)
        old = text_to_image(unet, taught, prompts, decode=decode, seed=PROTOCOL_SEED, **concepts.DRAW)
        kept = concept_scores(old, asked)["all_correct"]
        curve.append({"step": state.step, **losses, "nearest_training_picture": nearest(drawn).mean().item(),
                      "held_out_captions_shape": concept_scores(drawn, held["attributes"] * 2)["shape"],
                      "base_prompts_all_correct": kept})
        for kind, pictures in (("held_out_captions", drawn), ("base_prompts", old)):
            strips[f"{kind}.{state.step}"] = strip(pictures)
        print(curve[-1], flush=True)
        unet.train()

    measure(SimpleNamespace(step=0, model=SimpleNamespace(unet=copy.deepcopy(base))))
    run("full, long", dict(method="full", steps=args.long, word_steps=0), False, args, base, decode, encoder, replay,
        callbacks=[(args.every, measure)])
    best = min(curve[1:], key=lambda point: point["held_out"])
    strips["training_pictures"] = strip(shown["images"])
    return {"curve": curve, "held_out_floor": floor, "early_stopping_step": best["step"],
            "held_out_captions": held["captions"][:STRIP], "base_prompts": prompts[:STRIP]}, strips


def plot(results: dict, folder) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curve = results["overfitting"]["curve"]
    steps = [p["step"] for p in curve]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    axes[0].plot(steps, [p["train"] for p in curve], label=f"the {SHOWN_PICTURES} training pictures")
    axes[0].plot(steps, [p["held_out"] for p in curve], label=f"{SHOWN_PICTURES} held-out pictures")
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
    parser.add_argument("--word-steps", type=int, default=concepts.WORD_STEPS)
    parser.add_argument("--draws", type=int, default=concepts.DRAWS)
    parser.add_argument("--base", type=int, default=concepts.BASE_PROMPTS)
    parser.add_argument("--curve-base", type=int, default=96, help="base prompts at each step of the long run")
    parser.add_argument("--prior", type=int, default=concepts.PRIOR)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=[name for name, _ in METHODS])
    parser.add_argument("--long", type=int, default=2_000)
    parser.add_argument("--every", type=int, default=200)
    add_output_options(parser, help="folder of the results")
    args = parse_args(parser, argv, SMOKE)
    base, decode, encoder = load_text_to_image(concepts.BASE)
    before = concepts.measure_concept(base, decode, encoder, draws=args.draws, base=args.base)
    start = time.time()
    replay = concepts.concept_prior(base, decode, encoder, args.prior)
    results = {"hardware": hardware_description(torch.device("cpu")), "threads": torch.get_num_threads(),
               "prior_pictures_s": round(time.time() - start, 1),
               "base_model": {"recontext_shape": before["concept"]["shape"],
                              "base_prompts_all_correct": before["base_prompts_all_correct"]},
               "methods": [run(name, dict(settings), prior, args, base, decode, encoder, replay)[0]
                           for name, settings in METHODS if name in args.methods for prior in (False, True)]}
    recipe = {row["method"]: row for row in results["methods"] if row["prior_preservation"]}.get(f"LoRA r{concepts.RANK}")
    results["ranks"] = [recipe if r == concepts.RANK and recipe else
                        run(f"LoRA r{r}", dict(method="lora", rank=r, where=concepts.WHERE), True, args, base, decode,
                            encoder, replay)[0] for r in args.ranks]
    results["seeds"] = [dict(recipe, seed=0) if seed == 0 and recipe else
                        dict(run(f"LoRA r{concepts.RANK}", dict(method="lora", rank=concepts.RANK, where=concepts.WHERE,
                                                              seed=seed), True, args, base, decode, encoder, replay)[0],
                             seed=seed) for seed in args.seeds]
    results["overfitting"], strips = overfitting(args, base, decode, encoder, replay)
    for row in results["methods"] + results["ranks"] + results["seeds"]:
        row["drift_points"] = round(100 * (results["base_model"]["base_prompts_all_correct"]
                                           - row["base_prompts_all_correct"]), 1)
    if args.smoke:
        results["smoke"] = True
    args.results.mkdir(parents=True, exist_ok=True)
    plot(results, args.results)
    save_safetensors_atomic(strips, args.results / "finetune_overfitting.safetensors")
    write_json_atomic(results, args.results / "finetune.json")


if __name__ == "__main__":
    main()
