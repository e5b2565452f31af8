"""What latent diffusion buys (chapter 07): the same U-Net and training recipe on 64×64×3 pixels
(``pixel_shapes``, f = 1) and on the latents of the autoencoders that squeeze by f = 2, 4 and 8
(``ldm_shapes_f2``, ``ldm_shapes_f4`` and ``ldm_shapes``: 32×32×4, 16×16×4, 8×8×4).

1. **Training cost**: seconds per training step (batch 128) of every model, timed side by side,
   alternating, in this one process on this machine — so a run's snapshots can have been trained on any
   hardware: its training time here is steps × these seconds.
2. **Quality against training time**: the judge-FID of the EMA snapshots each recipe keeps every
   250 steps (``runs/<name>/snapshots``), ``--samples`` pictures (seed 0) with DPM-Solver++(2M) × 20
   (decoded, for a latent model), against training time; and the time f = 8 needs to reach the pixel
   model's best FID (the training speed-up).
3. **The compression sweep at an equal budget**: each model's last snapshot within the training time
   of the one that trained least (LDM's figure 6, on our pictures), beside how much of the pictures
   its autoencoder keeps (the judge's reading of 10,000 test reconstructions, from the manifest).
4. **Sampling speed**: pictures per second at 20 network calls, decoding included.

    python benchmarks/latent_vs_pixel.py                   # after training the recipes (missing ones are skipped)
    python benchmarks/latent_vs_pixel.py --every 2         # score every other snapshot
    python benchmarks/latent_vs_pixel.py --smoke --results /tmp/lvp   # seconds: untrained twins, tiny sizes

Results: ``benchmarks/results/latent_vs_pixel.json`` with the hardware and thread count. FIDs from
fewer than the protocol's 2,000 samples sit higher (the floor at the same count is reported beside them).
"""
import argparse
import copy
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from smoke import add_output_options, parse_args

from minidiff.course.recipes.common import run_dir
from minidiff.course.recipes.latent import SIZE, shapes_unet, training_pictures
from minidiff.devices import hardware_description
from minidiff.diffusion.loss import unet_loss
from minidiff.diffusion.pipeline import generate
from minidiff.files import save_safetensors_atomic, write_json_atomic
from minidiff.latents import encode_latents, latent_decoder
from minidiff.metrics import PROTOCOL_SEED, evaluate_shapes, shapes_real_vs_real_fid
from minidiff.models.autoencoder import VAE, VAEConfig
from minidiff.weights import load_pretrained, read_manifest

NAMES = {1: "pixel_shapes", 2: "ldm_shapes_f2", 4: "ldm_shapes_f4", 8: "ldm_shapes"}  # f → recipe
SMOKE = dict(samples=8, batch=8, steps_timed=1, speed_batch=4, nfe=3)


def step_seconds(models: dict, data: dict, batch: int, steps: int) -> dict:
    """Seconds per training step (forward, backward, Adam) of each model, alternating between them."""
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    totals = dict.fromkeys(models, 0.0)
    for step in range(steps + 1):  # the first round warms up and is not counted
        for key, model in models.items():
            x = data[key][torch.randint(len(data[key]), (batch,), generator=torch.Generator().manual_seed(step))]
            started = time.perf_counter()
            loss = unet_loss(model, x)["loss"]
            optimizers[key].zero_grad()
            loss.backward()
            optimizers[key].step()
            if step:
                totals[key] += time.perf_counter() - started
    return {k: v / steps for k, v in totals.items()}


def snapshots(folder: Path) -> list[tuple[int, Path]]:
    return sorted((int(p.stem.split("-")[1]), p) for p in folder.glob("step-*.safetensors"))


def score(model, path, decode, samples, nfe) -> float:
    model.load_state_dict(load_file(str(path)))
    images = generate(model, samples, sampler="dpmpp_2m", num_inference_steps=nfe, seed=PROTOCOL_SEED,
                      decode=decode, progress=False)
    return evaluate_shapes(images)["fid"]


def pictures_per_second(model, decode, batch, nfe) -> float:
    generate(model, 2, sampler="dpmpp_2m", num_inference_steps=2, decode=decode, progress=False)  # warm-up
    started = time.perf_counter()
    generate(model, batch, sampler="dpmpp_2m", num_inference_steps=nfe, decode=decode, batch_size=batch,
             progress=False)
    return batch / (time.perf_counter() - started)


def first_time_at(curve: list[dict], fid: float):
    """Training seconds of the first snapshot whose FID is at most ``fid`` (None if none is)."""
    return next((row["seconds"] for row in curve if row["fid"] <= fid), None)


def at_budget(curve: list[dict], seconds: float) -> dict:
    """The last snapshot trained within ``seconds`` (none yet: step 0, no FID)."""
    within = [row for row in curve if row["seconds"] <= seconds]
    return within[-1] if within else {"step": 0, "seconds": 0.0, "fid": None}


def denoiser(f: int):
    """The f's U-Net (untrained) and how its samples become pictures (None for pixels): the decoder of
    the shipped ``vae_shapes_f<f>``, which the recipe encoded its training pictures with."""
    if f == 1:
        return shapes_unet(3, SIZE), None
    vae = load_pretrained(f"vae_shapes_f{f}")
    return shapes_unet(*vae.latent_shape[:2]), latent_decoder(vae)


def smoke_models(folder: Path):
    """Untrained models with two snapshots each, so the smoke run goes through every line."""
    torch.manual_seed(0)
    models, decoders = {}, {}
    for f in NAMES:
        models[f] = shapes_unet(3 if f == 1 else 4, SIZE // f)
        decoders[f] = None if f == 1 else latent_decoder(VAE(VAEConfig(3, SIZE, f, latent_channels=4, channels=8,
                                                                       likelihood="gaussian")).eval())
        for step in (1, 2):
            save_safetensors_atomic(models[f].state_dict(), folder / str(f) / f"step-{step:07d}.safetensors",
                                    metadata={"step": str(step)})
    return models, decoders, {f: folder / str(f) for f in NAMES}


def kept_by_autoencoder(f: int, smoke: bool) -> dict:
    """How much of the pictures f's autoencoder keeps, as its recipe measured (pixels keep everything)."""
    if f == 1 or smoke:
        return {"all_correct": 1.0, "shape": 1.0, "psnr": float("inf")} if f == 1 else {}
    test = read_manifest()[f"vae_shapes_f{f}"]["metrics"]["test"]
    return {"all_correct": test["all_correct"], "shape": test["accuracy"]["shape"], "psnr": test["psnr"],
            "worst_shape": min(test["shape_accuracy"].values())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=500, help="pictures per snapshot's FID")
    parser.add_argument("--every", type=int, default=1, help="score every k-th snapshot")
    parser.add_argument("--batch", type=int, default=128, help="training batch for the step timing")
    parser.add_argument("--steps-timed", type=int, default=10, help="training steps timed per model")
    parser.add_argument("--speed-batch", type=int, default=256, help="pictures per sampling-speed run")
    parser.add_argument("--nfe", type=int, default=20, help="network calls per picture")
    add_output_options(parser)
    args = parse_args(parser, argv, SMOKE)

    if args.smoke:
        models, decoders, folders = smoke_models(args.results / "snapshots")
    else:
        folders = {f: Path(run_dir(name, False)) / "snapshots" for f, name in NAMES.items()}
        for f in [f for f in NAMES if not snapshots(folders[f])]:
            print(f"skipped f = {f}: no snapshots in {folders.pop(f)} (train {NAMES[f]} first)")
        models, decoders = {}, {}
        for f in folders:
            models[f], decoders[f] = denoiser(f)
    pictures = training_pictures(fast=True)[:max(args.batch, 8)]
    data = {f: pictures if decoders[f] is None else encode_latents(decoders[f].vae, pictures) for f in models}
    seconds = step_seconds({f: copy.deepcopy(m).train() for f, m in models.items()}, data, args.batch,
                           args.steps_timed)
    results = {"hardware": hardware_description(torch.device("cpu")), "threads": torch.get_num_threads(),
               "recipes": {f: NAMES[f] for f in models}, "batch": args.batch, "seconds_per_step": seconds,
               "samples": args.samples, "nfe": args.nfe,
               "real_vs_real_fid": shapes_real_vs_real_fid(SIZE, n=args.samples), "curves": {}}
    for f in models:
        rows = snapshots(folders[f])[::-1][::args.every][::-1]  # always keep the last snapshot
        results["curves"][f] = [{"step": step, "seconds": round(step * seconds[f], 1),
                                 "fid": score(models[f], path, decoders[f], args.samples, args.nfe)}
                                for step, path in rows]
        print(f"f = {f}:", [(r["step"], round(r["fid"], 1)) for r in results["curves"][f]])
    if {1, 8} <= set(models):
        best = min(results["curves"][1], key=lambda r: r["fid"])
        reached = first_time_at(results["curves"][8], best["fid"])
        results["pixel_best"] = best
        results["latent_seconds_to_pixel_best"] = reached
        results["training_speedup"] = None if reached in (None, 0) else best["seconds"] / reached
    budget = min(curve[-1]["seconds"] for curve in results["curves"].values())
    speed = {f: pictures_per_second(models[f], decoders[f], args.speed_batch, args.nfe) for f in models}
    results["pictures_per_s"] = speed
    if {1, 8} <= set(models):
        results["sampling_speedup"] = speed[8] / speed[1]
    results["budget_seconds"] = budget
    results["sweep"] = {f: {**at_budget(results["curves"][f], budget), "pictures_per_s": speed[f],
                            "autoencoder_keeps": kept_by_autoencoder(f, args.smoke)} for f in models}
    if args.smoke:
        results["smoke"] = True
    write_json_atomic(results, args.results / "latent_vs_pixel.json")
    print(f"seconds per training step: {seconds}; pictures/s: {speed}")
    for f, row in results["sweep"].items():
        print(f"f = {f}: after {budget:.0f} s of training ({row['step']} steps), FID {row['fid']}")


if __name__ == "__main__":
    main()
