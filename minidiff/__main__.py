"""The command line: ``python -m minidiff --help``."""
import argparse
import inspect
import json
import math
import sys
import warnings

from minidiff.devices import pick_device
from minidiff.diffusion.samplers import SAMPLERS
from minidiff.edit_protocol import KEEP_OUTLINE, object_mask
from minidiff.files import DataError


def cmd_demo(args):
    from minidiff.course.demo import make_demo
    print(f"wrote {make_demo(args.out)}")


def cmd_train(args):
    from minidiff.course.recipes.catalog import RECIPES
    from minidiff.course.recipes.common import run_dir
    if args.recipe not in RECIPES:
        sys.exit(f"unknown recipe {args.recipe!r}; available: {', '.join(sorted(RECIPES))}")
    recipe = RECIPES[args.recipe]
    try:
        pick_device(args.device)  # before any work: a device this machine lacks is one line
    except ValueError as err:
        sys.exit(f"error: {err}")
    if args.fast and (args.ship or args.steps is not None or args.from_shipped):
        sys.exit("error: --fast is a smoke run of a few steps, never shipped: drop --ship, --steps and --from-shipped")
    options = {"fast": args.fast, "device": args.device}
    for option, value in [("steps", args.steps), ("from_shipped", args.from_shipped or None)]:
        if value is not None:
            if option not in inspect.signature(recipe).parameters:
                sys.exit(f"error: recipe {args.recipe!r} has a fixed length; --{option.replace('_', '-')} is for "
                         "the diffusion recipes")
            options[option] = value
    metrics = recipe(**options)
    print(json.dumps(metrics, indent=2))
    trained = [name for name in metrics if name in RECIPES] or [args.recipe]  # ae_mnist trains ae_mnist_c1 … c8
    if args.ship:
        for name in trained:
            ship_one(name, args.force)
    elif not args.fast:
        print(f"trained into {', '.join(run_dir(name, False) for name in trained)}; the shipped weights are "
              f"unchanged. Ship it with `python -m minidiff ship {' '.join(trained)}`.", file=sys.stderr)


def ship_one(name: str, force: bool) -> None:
    from minidiff.course.recipes.common import run_dir
    from minidiff.weights import ship
    entry = ship(name, run_dir(name, False), force=force)
    replaced = f", replacing {entry['previous']['steps']:,} steps" if "previous" in entry else ""
    print(f"shipped {name}: {entry['steps']:,} steps{replaced} (data/checkpoints/{entry['file']})")


def cmd_ship(args):
    for name in args.names:
        ship_one(name, args.force)


def cmd_sample(args):
    from minidiff.course.generators import (
        check_samples_path,
        diffusion_sources,
        save_samples,
        sources,
        text_sources,
    )
    check_samples_path(args.out)  # before any work: an hour of sampling is not lost to a typo
    available = sources()
    if args.source in text_sources():
        sys.exit(f'{args.source} draws what a prompt asks for: `python -m minidiff generate "a red circle" '
                 f'--model {args.source}`')
    if args.source not in available:
        sys.exit(f"unknown source {args.source!r}; available: {', '.join(sorted(available))}")
    options = {key: value for key, value in [("sampler", args.sampler), ("steps", args.steps),
                                             ("guidance_scale", args.guidance)] if value is not None}
    if options and args.source not in diffusion_sources():
        sys.exit(f"--sampler, --steps and --guidance are for diffusion models ({', '.join(diffusion_sources())}), "
                 f"not {args.source!r}")
    try:
        images, labels = available[args.source](args.n, args.seed, **options)
    except ValueError as err:  # e.g. an unknown sampler name, with the list to choose from
        sys.exit(f"error: {err}")
    for path in save_samples(images, labels, args.out):
        print(f"wrote {path}")


def cmd_generate(args):
    """generate, img2img and inpaint: a prompt drawn by a shipped text-to-image model, from noise, from a
    picture, or into a picture's hole."""
    from minidiff.course.generators import check_samples_path, load_condition, load_mask, load_picture, save_samples
    from minidiff.inpainting import inpaint
    from minidiff.models.controlnet import Controlled
    from minidiff.text2image import load_text_to_image, picture_shape, text_to_image
    check_samples_path(args.out)  # before any work
    keep_outline = getattr(args, "keep_outline", False)
    if keep_outline:
        args.model = args.model or KEEP_OUTLINE["model"]
    elif getattr(args, "control_strength", None) is not None and not getattr(args, "control", None):
        sys.exit("error: --control-strength scales a ControlNet's condition: give one (--control, or img2img's "
                 "--keep-outline)")
    if getattr(args, "lora", None):
        from minidiff.course.recipes.finetune import load_adapter, read_adapter
        model, decode, encoder = load_adapter(args.lora, args.model, args.lora_scale)
        args.model = read_adapter(args.lora)[1]["base"]
    else:
        args.model = args.model or "t2i_shapes"
        model, decode, encoder = load_text_to_image(args.model)
    masked = bool(model.config.concat_channels)
    if masked and not getattr(args, "mask", None):
        sys.exit(f"error: {args.model} draws into the hole of a picture: use `python -m minidiff inpaint IMAGE MASK PROMPT "
                 f"--model {args.model}`")
    control = getattr(args, "control", None)
    steered = isinstance(model, Controlled)
    if keep_outline and not steered:
        sys.exit(f"error: --keep-outline needs a ControlNet that reads masks: leave out --model (it is then "
                 f"{KEEP_OUTLINE['model']})")
    if steered and not (control or keep_outline):
        sys.exit(f'error: {args.model} is steered by a condition picture: `python -m minidiff generate PROMPT --model '
                 f'{args.model} --control OUTLINE.png` (or `img2img IMAGE PROMPT --keep-outline`)')
    if control and not steered:
        sys.exit("error: --control needs a ControlNet: add --model controlnet_shapes_edge (an outline) or "
                 "--model controlnet_shapes_mask (a filled mask)")
    defaults = KEEP_OUTLINE if keep_outline else {}
    sampler = args.sampler or defaults.get("sampler") or (
        "dpmpp_2m" if masked or not getattr(args, "mask", None) else "ddpm")
    steps = args.steps or defaults.get("num_inference_steps", 20)
    warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)  # one line
    draw, options = text_to_image, {}
    if control or keep_outline:
        options = {"control_strength": defaults.get("control_strength", 1.0) if args.control_strength is None
                   else args.control_strength}
    if control:
        options["control"] = load_condition(control, model.controlnet.config.condition_size)
    if getattr(args, "image", None):
        channels, size = picture_shape(model, decode)
        image = load_picture(args.image, size, channels)
        if getattr(args, "mask", None):
            draw, options = inpaint, {"mask": load_mask(args.mask, args.image, size)}
            if not masked:
                options.update(jump_length=args.jump_length, resamplings=args.resamplings)
            elif args.jump_length or args.resamplings:
                sys.exit(f"error: {args.model} sees the picture at every step and needs no RePaint resampling: "
                         "leave out --jump-length and --resamplings")
        else:
            options["strength"] = args.strength
        if keep_outline:
            options["control"] = object_mask(image)
            if not options["control"].any():
                sys.exit(f"error: {args.image} shows no object to keep: every pixel has the colour of its border")
        options["image"] = image
    try:
        images = draw(model, encoder, prompt=args.prompt, n=args.n, negative_prompt=args.negative,
                      guidance_scale=args.guidance, decode=decode, sampler=sampler,
                      num_inference_steps=steps, seed=args.seed, **options)
    except ValueError as err:  # e.g. an unknown sampler, with the list to choose from
        sys.exit(f"error: {err}")
    for path in save_samples(images, None, args.out):
        print(f"wrote {path}")


FINETUNE_STEPS = 200


def cmd_finetune(args):
    """Teach a shipped text-to-image model a new word from a folder of pictures; write the adapter."""
    import time
    from pathlib import Path

    from minidiff.course.generators import load_picture_folder
    from minidiff.course.recipes.finetune import (FinetuneConfig, add_words, finetune, prior_set, save_adapter,
                                                  training_set)
    from minidiff.text2image import load_text_to_image, picture_shape
    from minidiff.weights import read_manifest
    out = Path(args.out or f"outputs/{args.word}-{args.method}.safetensors")
    if out.suffix != ".safetensors":
        sys.exit(f"error: --out {out}: an adapter is a .safetensors file")
    if args.prior and "shapes" not in read_manifest().get(args.model, {}).get("data", "shapes"):
        sys.exit(f"error: prior preservation replays prompts of the shapes; {args.model} draws something else: "
                 "add --prior 0")
    model, decode, encoder = load_text_to_image(args.model)
    try:
        config = FinetuneConfig(method=args.method, rank=args.rank, where="cross", steps=args.steps, seed=args.seed,
                                word_steps=0 if args.method == "word" else args.word_steps)
        encoder = add_words(encoder, [args.word])
    except ValueError as err:
        sys.exit(f"error: {err}")
    warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)  # one line
    pictures, captions = load_picture_folder(args.pictures, picture_shape(model, decode)[1], args.word)
    out.parent.mkdir(parents=True, exist_ok=True)  # before the work, so a bad --out costs nothing
    start = time.time()
    prior = prior_set(model, decode, encoder, args.prior, args.seed) if args.prior else None
    result = finetune(model, encoder, training_set(encoder, decode, pictures, captions, prior), config)
    save_adapter(out, result.model, encoder, config, args.model, steps=config.steps, pictures=len(pictures),
                 prior=args.prior, wall_time_s=round(time.time() - start))
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB, {len(pictures)} pictures, {config.steps} steps, "
          f"{time.time() - start:.0f} s)\ntry: python -m minidiff generate \"a {args.word}\" --lora {out}")


def cmd_evaluate(args):
    from minidiff.course.generators import load_samples
    from minidiff.metrics import (
        PROTOCOL_SAMPLES,
        evaluate_samples,
        evaluate_shapes,
        real_vs_real_fid,
        shapes_real_vs_real_fid,
    )
    if args.samples is None:
        print(f"real-vs-real classifier-FID ({PROTOCOL_SAMPLES} train digits vs the test set): "
              f"{real_vs_real_fid():.4f}")
        print(f"real-vs-real shapes judge-FID ({PROTOCOL_SAMPLES} training renders vs 10,000 test renders, "
              f"64 px): {shapes_real_vs_real_fid(64):.4f}")
        return
    images, labels = load_samples(args.samples)
    shapes = images.shape[1] == 3
    if len(images) < PROTOCOL_SAMPLES:
        print(f"note: {len(images):,} pictures; FID is biased upwards at small counts, so compare it with "
              f"real vs real at the same count (`python -m minidiff sample {'shapes' if shapes else 'mnist'} "
              f"-n {len(images)}` then `evaluate`), or draw the protocol's {PROTOCOL_SAMPLES:,}.", file=sys.stderr)
    report = evaluate_shapes(images, labels) if shapes else evaluate_samples(images, labels)
    print(json.dumps(report, indent=2))


def cmd_data(args):
    from minidiff.datasets.cifar10 import fetch_cifar10
    from minidiff.datasets.coco import build_coco_subset, fetch_coco
    from minidiff.datasets.mnist import fetch_fashion_mnist
    fetchers = {"fashion-mnist": fetch_fashion_mnist, "cifar10": fetch_cifar10,
                "coco": lambda: build_coco_subset(*fetch_coco(), size=64)}
    print(f"ready: {fetchers[args.dataset]()}")


def _in_range(convert, what: str, low, high, shown: str):
    """An argparse type: ``convert(text)`` (a ``what``), finite and from ``low`` to ``high``, or one clear line."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low:{shown}} to {high:{shown}}")
        return value
    return parse


def count(low: int, high: int):
    """A whole number from ``low`` to ``high``."""
    return _in_range(int, "a whole number", low, high, ",")


def number(low: float, high: float):
    """A finite number from ``low`` to ``high``."""
    return _in_range(float, "a number", low, high, "g")


def control_strength_option(p, default: str = "1") -> None:
    p.add_argument("--control-strength", type=number(0, 2),
                   help=f"how strongly the condition steers, 0 (not at all: the base model) to 2 (default {default})")


def drawing_options(p, out: str, sampler: str = "dpmpp_2m") -> None:
    """What every text-to-image command takes besides the prompt (``sampler``: its default, as help text)."""
    p.add_argument("--negative", default="", help="a negative prompt: what to steer away from (default: none)")
    p.add_argument("--guidance", type=number(0, 50), default=3.0, help="guidance scale s (1: none; default 3)")
    p.add_argument("--steps", type=count(1, 1000), help="sampling steps (default 20)")
    p.add_argument("--sampler", help=f"default {sampler}; any of " + ", ".join(SAMPLERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-n", type=count(1, 10_000), default=4, help="how many pictures (1 to 10,000; default 4)")
    p.add_argument("--model", help="a shipped text-to-image model (default t2i_shapes, or the one --lora teaches)")
    p.add_argument("--out", default=out)
    p.set_defaults(run=cmd_generate)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minidiff",
                                     description="minidiff: how AI image generation works, from scratch.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="write a picture sheet of what the course has built so far")
    p.add_argument("--out", default="outputs/demo.png")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("train", help="run a recipe: train and measure a model in runs/<recipe>/ (--ship to ship it)")
    p.add_argument("recipe", help="e.g. mnist_classifier")
    p.add_argument("--fast", action="store_true", help="a few steps only, to see it run (runs/<recipe>-fast/)")
    p.add_argument("--ship", action="store_true", help="then ship it over data/checkpoints/, if it measures no worse")
    p.add_argument("--force", action="store_true", help="with --ship: ship even if it measures worse")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    p.add_argument("--steps", type=count(1, 10_000_000), help="diffusion recipes: train this long (more than a "
                                                             "finished run's steps resumes and extends it)")
    p.add_argument("--from-shipped", action="store_true", help="diffusion recipes: with no run in runs/<recipe>/ "
                   "to resume, train on from the shipped weights to --steps (fresh optimizer, new warm-up)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("ship", help="ship what `train` left in runs/<name>/ over data/checkpoints/ (never worse)")
    p.add_argument("names", nargs="+", help="e.g. ddpm_mnist")
    p.add_argument("--force", action="store_true", help="ship even if it measures worse than the shipped model")
    p.set_defaults(run=cmd_ship)

    p = sub.add_parser("sample", help="draw images from a model or data source into a PNG grid + safetensors")
    p.add_argument("source", help="what to sample, e.g. mnist, shapes")
    p.add_argument("-n", type=count(1, 100_000), default=64, help="how many pictures (1 to 100,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/samples.png")
    p.add_argument("--sampler", help="diffusion models only (default dpmpp_2m): " + "; ".join(
        f"{name}: {info.summary}" for name, info in SAMPLERS.items()))
    p.add_argument("--steps", type=count(1, 10_000), help="diffusion models only: number of sampling steps "
                                                         "(default 20)")
    p.add_argument("--guidance", type=float, help="class-conditional diffusion: guidance scale (default 3)")
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser("generate", help="text to image: draw pictures of a prompt (English or Chinese) into a PNG "
                                         "grid + safetensors")
    p.add_argument("prompt", help='what to draw, e.g. "a large red circle on a blue background, top left"')
    p.add_argument("--control", help="a ControlNet's condition picture (with --model controlnet_shapes_edge: a white "
                                     "outline on black; controlnet_shapes_mask: a white mask), 64×64")
    control_strength_option(p)
    p.add_argument("--lora", help="an adapter written by `finetune`: its new word and what it taught, on its base")
    p.add_argument("--lora-scale", type=number(0, 1), default=1.0,
                   help="how much of the adapter, 0 (the base alone) to 1 (as trained; default)")
    drawing_options(p, "outputs/generated.png")

    p = sub.add_parser("finetune", help="teach a text-to-image model a new word from a folder of 5-10 pictures; "
                                         "writes an adapter for `generate --lora`")
    p.add_argument("pictures", help="a folder of PNG or JPEG pictures of one size; NAME.txt beside NAME.png may hold "
                                    "its captions, one a line, each with the word (default: \"a WORD\")")
    p.add_argument("--word", required=True, help="the new word, e.g. heart: one word of letters")
    p.add_argument("--method", choices=["lora", "full", "word"], default="lora",
                   help="lora: small adapters on the cross-attention (default); full: every U-Net weight; word: the "
                        "word's embedding alone (textual inversion)")
    p.add_argument("--rank", type=count(1, 64), default=4, help="LoRA's rank r (default 4)")
    p.add_argument("--steps", type=count(1, 100_000), default=FINETUNE_STEPS, help=f"default {FINETUNE_STEPS}")
    p.add_argument("--word-steps", type=count(0, 100_000), default=FINETUNE_STEPS,
                   help=f"pivotal tuning: first this many steps of the word alone (default {FINETUNE_STEPS}; 0: none)")
    p.add_argument("--prior", type=count(0, 10_000), default=200, help="prior preservation: how many pictures the "
                   "base draws of what it knows, to keep knowing it (default 200; 0: none)")
    p.add_argument("--model", default="t2i_shapes", help="the shipped text-to-image model to teach (default t2i_shapes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="the adapter file (default outputs/WORD-METHOD.safetensors)")
    p.set_defaults(run=cmd_finetune)

    p = sub.add_parser("img2img", help="start from a picture: noise it by --strength and redraw it with a prompt")
    p.add_argument("image", help="a PNG or JPEG (resized to the model's size, with a note)")
    p.add_argument("prompt", help='what to draw, e.g. "a red circle on a yellow background"; "" for none')
    p.add_argument("--strength", type=number(0, 1), default=0.6,
                   help="how much is redrawn: the share of the steps run, from 0 (the picture) to 1 (all new; "
                        "default 0.6)")
    p.add_argument("--keep-outline", action="store_true",
                   help="keep the object's outline and redraw the rest, e.g. its colour: the object's mask, read from "
                        "the picture by colour, steers --model (a ControlNet that reads masks; default "
                        f"{KEEP_OUTLINE['model']}, chapter 11); then by default "
                        f"--control-strength {KEEP_OUTLINE['control_strength']}, --sampler {KEEP_OUTLINE['sampler']}, "
                        f"--steps {KEEP_OUTLINE['num_inference_steps']}")
    control_strength_option(p, f"1; {KEEP_OUTLINE['control_strength']} with --keep-outline")
    drawing_options(p, "outputs/img2img.png")

    p = sub.add_parser("inpaint", help="redraw the white part of a mask in a picture with a prompt (RePaint on a "
                                        "text-to-image model, or --model inpaint_shapes); the black part is kept exactly")
    p.add_argument("image", help="a PNG or JPEG (resized to the model's size, with a note)")
    p.add_argument("mask", help="a black (keep) and white (redraw) PNG of the model's size")
    p.add_argument("prompt", help='what to draw in the hole, e.g. "a small blue square on a red background"')
    p.add_argument("--jump-length", type=count(1, 1000), help="RePaint: steps walked down before going back up "
                   "(default 5)")
    p.add_argument("--resamplings", type=count(1, 100), help="RePaint: how often each stretch is walked "
                   "(1: no resampling; default 5)")
    drawing_options(p, "outputs/inpainted.png", sampler="ddpm for RePaint, dpmpp_2m for a mask-conditioned model "
                                                       "such as --model inpaint_shapes")

    p = sub.add_parser("evaluate", help="score samples with the course's protocols (digits: classifier-FID and more; "
                                         "shapes: judge-FID, attribute histograms and accuracy)")
    p.add_argument("samples", nargs="?", help="a .safetensors written by `sample`; omit for the real-vs-real floor")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("data", help="fetch a dataset that does not ship with minidiff (checksummed, resumable)")
    p.add_argument("dataset", choices=["fashion-mnist", "cifar10", "coco"])
    p.set_defaults(run=cmd_data)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except DataError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
