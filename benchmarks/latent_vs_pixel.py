"""What latent diffusion buys (chapter 07): the latent model ``ldm_shapes`` against its pixel-space
twin ``pixel_shapes`` — the same U-Net and training recipe, on 8×8×4 latents or on 64×64×3 pixels.

1. **Training cost**: seconds per training step (batch 128) of both, timed side by side, alternating, in
   this one process on this machine (a run's own wall time depends on what else the machine did).
2. **Quality against training time**: the judge-FID of the EMA snapshots each recipe keeps every
   250 steps (``runs/<name>/snapshots``), ``--samples`` pictures (seed 0) with DPM-Solver++(2M) × 20
   (decoded, for the latent model), against steps × seconds per step; and the time each needs to reach
   the pixel model's best FID.
3. **Sampling speed**: pictures per second at 20 network calls (DPM-Solver++(2M) × 20), decoding included.

    python benchmarks/latent_vs_pixel.py                   # after training both recipes
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
from minidiff.latents import encode_latents, latent_decoder, load_denoiser
from minidiff.metrics import PROTOCOL_SEED, evaluate_shapes, shapes_real_vs_real_fid
from minidiff.models.autoencoder import VAE, VAEConfig
from minidiff.weights import load_pretrained, read_manifest

NAMES = {"latent": "ldm_shapes", "pixel": "pixel_shapes"}
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


def smoke_models(folder: Path):
    """Untrained twins with two snapshots each, so the smoke run goes through every line."""
    torch.manual_seed(0)
    vae = VAE(VAEConfig(3, SIZE, 8, latent_channels=4, channels=8, likelihood="gaussian")).eval()
    models = {"latent": shapes_unet(4, SIZE // 8), "pixel": shapes_unet(3, SIZE)}
    for key, model in models.items():
        for step in (1, 2):
            save_safetensors_atomic(model.state_dict(), folder / key / f"step-{step:07d}.safetensors",
                                    metadata={"step": str(step)})
    return models, {"latent": latent_decoder(vae), "pixel": None}, vae


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
        folders = {k: args.results / "snapshots" / k for k in NAMES}
        models, decoders, vae = smoke_models(args.results / "snapshots")
    else:
        folders = {k: Path(run_dir(name, False)) / "snapshots" for k, name in NAMES.items()}
        loaded = {k: load_denoiser(name) for k, name in NAMES.items()}
        models, decoders = {k: m for k, (m, _) in loaded.items()}, {k: d for k, (_, d) in loaded.items()}
        vae = None
    pictures = training_pictures(fast=True)[:max(args.batch, 8)]
    if vae is None:
        vae = load_pretrained(read_manifest()[NAMES["latent"]]["autoencoder"]["name"])
    data = {"pixel": pictures, "latent": encode_latents(vae, pictures)}
    seconds = step_seconds({k: copy.deepcopy(m).train() for k, m in models.items()}, data, args.batch,
                           args.steps_timed)
    results = {"hardware": hardware_description(torch.device("cpu")), "threads": torch.get_num_threads(),
               "batch": args.batch, "seconds_per_step": seconds, "samples": args.samples, "nfe": args.nfe,
               "real_vs_real_fid": shapes_real_vs_real_fid(SIZE, n=args.samples), "curves": {}}
    for key in NAMES:
        rows = snapshots(folders[key])[::-1][::args.every][::-1]  # always keep the last snapshot
        results["curves"][key] = [{"step": step, "seconds": round(step * seconds[key], 1),
                                   "fid": score(models[key], path, decoders[key], args.samples, args.nfe)}
                                  for step, path in rows]
        print(key, [(r["step"], round(r["fid"], 1)) for r in results["curves"][key]])
    best = min(results["curves"]["pixel"], key=lambda r: r["fid"])
    reached = first_time_at(results["curves"]["latent"], best["fid"])
    results["pixel_best"] = best
    results["latent_seconds_to_pixel_best"] = reached
    results["training_speedup"] = None if reached in (None, 0) else best["seconds"] / reached
    speed = {k: pictures_per_second(models[k], decoders[k], args.speed_batch, args.nfe) for k in NAMES}
    results["pictures_per_s"] = speed
    results["sampling_speedup"] = speed["latent"] / speed["pixel"]
    if args.smoke:
        results["smoke"] = True
    write_json_atomic(results, args.results / "latent_vs_pixel.json")
    print(f"training: {seconds}; sampling: {speed}; to the pixel model's best FID {best['fid']:.1f}: "
          f"{best['seconds']:.0f} s (pixel) vs {reached} s (latent)")


if __name__ == "__main__":
    main()
