"""Text to image, measured (chapter 09): how guidance trades prompt-following against realism, whether
editing one word at a fixed seed edits one attribute, and what a picture costs on this machine.

    python benchmarks/text_to_image.py                       # t2i_shapes on the CPU
    python benchmarks/text_to_image.py --device cuda
    python benchmarks/text_to_image.py --smoke --results /tmp/t2i   # seconds: the same code, tiny counts

**The guidance curve.** For each guidance scale s ∈ {1, 1.5, 2, 3, 5, 7.5} (s = 1: no guidance), one
picture per prompt for 2,000 test attribute tuples of the training compositions and 1,000 of the held-out
compositions, in the evaluation wording (which no training caption uses), English and Chinese, drawn with
DPM-Solver++(2M) × 20 from the protocol's seed: the judge's accuracy per attribute and on all five, and
judge-FID against the test renders of the same compositions (``minidiff.metrics.prompt_following``).

**Prompt editing.** For each attribute, 400 test tuples and the same tuple with that one attribute
changed (to a random other value that keeps a training composition and a shape unlike its background),
drawn from the same noise: the share where the judge reads the edited attribute as asked, and the share
where it reads every other attribute the same in both pictures.

**Speed.** One picture at 20 steps, prompt to pixels (after a warm-up), and pictures per second for a
batch with guidance (two network calls per step, in one doubled batch) and without.

Results: ``benchmarks/results/text_to_image.json`` and the curve as ``text_to_image_guidance.png``.
"""
import argparse
import random

import matplotlib
import torch
from sampling_speed import timed
from smoke import add_output_options, parse_args

from minidiff.datasets.shapes import ATTRIBUTES, TEST_SEED, ShapesDataset, eval_caption, is_held_out
from minidiff.devices import hardware_description, pick_device
from minidiff.files import write_atomic, write_json_atomic
from minidiff.metrics import PROTOCOL_SEED, judge_read, prompt_following, shapes_real_vs_real_fid
from minidiff.text2image import load_text_to_image, text_to_image
from minidiff.weights import read_manifest

SCALES = [1.0, 1.5, 2.0, 3.0, 5.0, 7.5]
SMOKE = dict(scales=[1.0, 3.0], prompts=12, held_out=6, edits=4, batch=4, languages=["en"])


def edited(attributes: dict, name: str, rng: random.Random) -> dict:
    """``attributes`` with ``name`` changed to another value that keeps a training composition whose shape
    colour differs from its background."""
    options = [value for value in ATTRIBUTES[name] if value != attributes[name]]
    rng.shuffle(options)
    for value in options:
        new = {**attributes, name: value}
        if not is_held_out(new) and new["color"] != new["background"]:
            return new
    raise ValueError(f"no edit of {name} keeps {attributes} a training composition")


def prompt_editing(model, encoder, decode, n: int, scale: float, steps: int) -> dict:
    """Per attribute: the share of edits the judge reads as asked, and the share whose other attributes stay."""
    rng = random.Random(0)
    tuples = ShapesDataset(n, seed=TEST_SEED + 1, size=64, compositions="train").attributes
    names = list(ATTRIBUTES)
    out = {}
    for k, name in enumerate(names):
        after = [edited(a, name, rng) for a in tuples]
        pictures = [text_to_image(model, encoder, [eval_caption(a) for a in side], guidance_scale=scale,
                                  decode=decode, sampler="dpmpp_2m", num_inference_steps=steps, seed=PROTOCOL_SEED,
                                  progress=False) for side in (tuples, after)]
        read_before, read_after = (judge_read(p)[1] for p in pictures)
        asked = torch.tensor([ATTRIBUTES[name].index(a[name]) for a in after])
        others = [j for j in range(len(names)) if j != k]
        out[name] = {"edited_as_asked": (read_after[:, k] == asked).float().mean().item(),
                     "others_kept": (read_after[:, others] == read_before[:, others]).all(1).float().mean().item()}
    return out


def speed(model, encoder, decode, batch: int, steps: int, repeat: int) -> dict:
    prompt = "a large red circle on a blue background, top left"
    draw = lambda n, s: text_to_image(model, encoder, prompt, n=n, guidance_scale=s, decode=decode,  # noqa: E731
                                      sampler="dpmpp_2m", num_inference_steps=steps, progress=False)
    one = timed(lambda: draw(1, 3.0), repeat)
    guided, plain = timed(lambda: draw(batch, 3.0), repeat), timed(lambda: draw(batch, 1.0), repeat)
    return {"one_picture_s": round(one, 3), "batch": batch, "guided_pictures_per_s": round(batch / guided, 1),
            "unguided_pictures_per_s": round(batch / plain, 1), "guidance_cost": round(guided / plain, 2)}


def plot(rows: list, floor: float, path) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    scales = [r["guidance_scale"] for r in rows]
    for language, style in (("en", "-"), ("zh", "--")):
        if language not in rows[0]:
            continue
        for where, colour in (("train_compositions", "C0"), ("held_out_compositions", "C1")):
            left.plot(scales, [100 * r[language][where]["all_correct"] for r in rows], style, color=colour, marker="o",
                      label=f"{where.replace('_', ' ')}, {language}")
            right.plot(scales, [r[language][where]["fid"] for r in rows], style, color=colour, marker="o")
    right.axhline(floor, color="gray", ls=":", label="real vs real")
    left.set_ylabel("all five attributes right (%)"), right.set_ylabel("judge-FID")
    for ax in (left, right):
        ax.set_xlabel("guidance scale s (1 = none)"), ax.set_xscale("log"), ax.minorticks_off()
        ax.set_xticks(scales, [f"{s:g}" for s in scales])
    left.legend(fontsize=7), right.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="t2i_shapes")
    parser.add_argument("--scales", nargs="+", type=float, default=SCALES)
    parser.add_argument("--prompts", type=int, default=2000, help="test tuples of the training compositions")
    parser.add_argument("--held-out", type=int, default=1000, help="tuples of the held-out compositions")
    parser.add_argument("--edits", type=int, default=400, help="edited prompts per attribute")
    parser.add_argument("--languages", nargs="+", default=["en", "zh"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64, help="the speed test's batch")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    add_output_options(parser, help="folder of the results")
    args = parse_args(parser, argv, SMOKE)
    device = pick_device(args.device)
    model, decode, encoder = load_text_to_image(args.model)
    model.to(device)
    entry = read_manifest()[args.model]
    default = entry["metrics"]["guidance_scale"]
    results = {"model": args.model, "trained_steps": entry["steps"], "hardware": hardware_description(device),
               "device": device.type, "threads": torch.get_num_threads(), "default_guidance_scale": default,
               "real_vs_real_fid": shapes_real_vs_real_fid(64), "rows": []}
    train = ShapesDataset(args.prompts, seed=TEST_SEED, size=64, compositions="train").attributes
    held = ShapesDataset(args.held_out, seed=TEST_SEED, size=64, compositions="held_out").attributes
    for scale in args.scales:
        row = {"guidance_scale": scale}
        for language in args.languages:
            row[language] = {where: prompt_following(model, encoder, decode, tuples, language, compositions,
                                                     scale, num_inference_steps=args.steps)
                             for where, tuples, compositions in [("train_compositions", train, "train"),
                                                                 ("held_out_compositions", held, "held_out")]}
        results["rows"].append(row)
        print(f"s = {scale:4g}: " + "; ".join(
            f"{language} all five {100 * row[language]['train_compositions']['all_correct']:.1f} % (held-out "
            f"{100 * row[language]['held_out_compositions']['all_correct']:.1f} %), judge-FID "
            f"{row[language]['train_compositions']['fid']:.1f}" for language in args.languages))
    results["prompt_editing"] = prompt_editing(model, encoder, decode, args.edits, default, args.steps)
    results["speed"] = speed(model, encoder, decode, args.batch, args.steps, args.repeat)
    print(f"editing one word (s = {default:g}): " + ", ".join(
        f"{name} {100 * e['edited_as_asked']:.0f} %/{100 * e['others_kept']:.0f} %"
        for name, e in results["prompt_editing"].items()))
    print(f"speed: one picture {results['speed']['one_picture_s']:.2f} s; "
          f"{results['speed']['guided_pictures_per_s']:.1f} pictures/s guided, "
          f"{results['speed']['unguided_pictures_per_s']:.1f} unguided")
    if args.smoke:
        results["smoke"] = True
    args.results.mkdir(parents=True, exist_ok=True)
    plot(results["rows"], results["real_vs_real_fid"], args.results / "text_to_image_guidance.png")
    write_json_atomic(results, args.results / "text_to_image.json")


if __name__ == "__main__":
    main()
