"""What the course's CLIPs cost to train and to use on this machine, side by side in one run: for each
shipped CLIP, the recorded training (steps, wall time, hardware, threads, and the images per second that
makes), then measured here a training step of its recipe (the loss, backward and an AdamW step at the
recipe's batch of 256 pairs), encoding pictures and encoding captions.

    python benchmarks/clip_speed.py                       # CPU, every shipped CLIP
    python benchmarks/clip_speed.py --device cuda
    python benchmarks/clip_speed.py --smoke --results /tmp/clip   # seconds: the same code, tiny batches

A CLIP step costs two encoders and a B×B similarity matrix: the image tower is most of it at these
sizes (the bag-of-words text tower, with no attention, saves about half of the text's share). Results
go to ``benchmarks/results/clip_speed.json`` with the hardware and thread count; ``--smoke`` (batch
8, one repeat, results in ``outputs/benchmarks-smoke/`` unless ``--results`` says otherwise) checks that
the script still runs.
"""
import argparse

import torch
from sampling_speed import timed
from smoke import add_output_options, parse_args

from minidiff.course.recipes.clip import trim_padding
from minidiff.datasets.mnist import all_digit_captions
from minidiff.datasets.shapes import TRAIN_SEED, ShapesDataset, all_captions
from minidiff.devices import hardware_description, pick_device
from minidiff.files import write_json_atomic
from minidiff.models.clip import clip_loss
from minidiff.weights import load_clip, read_manifest

NAMES = ("clip_shapes", "clip_shapes_bow", "clip_mnist")
SMOKE = dict(batch=8, repeat=1)
RECIPE_BATCH = 256  # every CLIP recipe trains at this batch (minidiff.course.recipes.clip)


def example_batch(name: str, model, tokenizer, batch: int) -> dict:
    """``batch`` training-like pairs for ``name``: shapes renders or (random) digit-sized pictures, with
    their training captions, grouped as the recipes group them."""
    if name == "clip_mnist":
        images = torch.rand(batch, 1, 28, 28) * 2 - 1
        groups = torch.arange(batch) % 10
        texts = [all_digit_captions(int(g))[k % 10] for k, g in enumerate(groups)]
    else:
        pictures = ShapesDataset(batch, seed=TRAIN_SEED, size=model.config.image_size, compositions="train")
        images, groups = pictures.images, torch.arange(batch)
        texts = [all_captions(a)[k % 8] for k, a in enumerate(pictures.attributes)]
    ids = trim_padding(tokenizer(texts, model.config.context_length), tokenizer.pad_id)
    return {"image": images, "ids": ids, "group": groups}


def measure(name: str, batch: int, repeat: int, device) -> dict:
    entry = read_manifest()[name]
    model, tokenizer = load_clip(name, device=device)
    data = {k: v.to(device) for k, v in example_batch(name, model, tokenizer, batch).items()}
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step():
        optimizer.zero_grad(set_to_none=True)
        clip_loss(model, data)["loss"].backward()
        optimizer.step()

    per_step = timed(step, repeat)
    model.eval()
    with torch.no_grad():
        per_images = timed(lambda: model.encode_image(data["image"]), repeat)
        per_texts = timed(lambda: model.encode_text(data["ids"]), repeat)
    metrics = entry["metrics"]
    return {"name": name, "text_tower": model.config.text_tower, "parameters": metrics["parameters"],
            "trained_steps": entry["steps"], "trained_wall_time_min": round(entry["wall_time_s"] / 60, 1),
            "trained_on": entry["hardware"], "trained_threads": metrics.get("torch_threads"),
            "trained_images_per_s": round(entry["steps"] * RECIPE_BATCH / entry["wall_time_s"], 1),
            "train_step_s": round(per_step, 4), "train_images_per_s": round(batch / per_step, 1),
            "encode_images_per_s": round(batch / per_images, 1), "encode_captions_per_s": round(batch / per_texts, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    add_output_options(parser, help="folder of the results file")
    args = parse_args(parser, argv, SMOKE)
    device = pick_device(args.device)
    results = {"hardware": hardware_description(device), "device": device.type, "threads": torch.get_num_threads(),
               "batch": args.batch, "rows": []}
    print(f"{results['hardware']}, {results['threads']} threads, batch {args.batch}")
    print(f"{'':16s} {'weights':>9s} {'trained':>22s} {'train img/s':>12s} {'encode img/s':>13s} {'captions/s':>11s}")
    for name in NAMES:
        row = measure(name, args.batch, args.repeat, device)
        results["rows"].append(row)
        print(f"{name:16s} {row['parameters']:>9,} {row['trained_steps']:>6,} steps, {row['trained_wall_time_min']:5.1f} min"
              f" {row['train_images_per_s']:>12.0f} {row['encode_images_per_s']:>13.0f} {row['encode_captions_per_s']:>11.0f}")
    if args.smoke:
        results["smoke"] = True
    write_json_atomic(results, args.results / "clip_speed.json")


if __name__ == "__main__":
    main()
