"""Quality against cost: classifier-FID of a shipped denoiser for every sampler at several numbers of
network evaluations (NFE), with the course's protocol (2,000 samples, seed 0, vs MNIST test).

    python benchmarks/fid_vs_nfe.py                       # every sampler × NFE 5…100, plus DDPM × 1000
    python benchmarks/fid_vs_nfe.py --samplers dpmpp_2m --nfe 10 --samples 500
    python benchmarks/fid_vs_nfe.py --device cuda        # minutes instead of hours (same starting noise)
    python benchmarks/fid_vs_nfe.py --seeds 1 2 3 --samplers ddpm --nfe 100   # how far the seed moves it
    python benchmarks/fid_vs_nfe.py --samplers dpmpp_2m_sde --nfe 10 --sigma-min 0.03 --sigma-max 20  # a short range
    python benchmarks/fid_vs_nfe.py --smoke --results /tmp/fid   # seconds: every sampler, 16 samples, NFE 4

Each finished row is written at once to ``benchmarks/results/fid_vs_nfe_<model>.json`` (atomically), and
a re-run skips the rows already there (measured on the same weights: the file records their sha256), so a
long run can be stopped and resumed. DDPM × 1000 — the
ancestral sampler on every training step — is the reference the others are held to; its FID is also
recorded in the model's manifest entry (``fid_ddpm_1000``) — only by a protocol run into the committed
results (not with ``--out`` or ``--results``, never with ``--smoke``).

``--smoke`` checks that the script still runs: every sampler at NFE 4 and a 4-step DDPM reference, 16
samples, one seed, into ``outputs/benchmarks-smoke/`` unless ``--results`` names another folder.

NFE: Euler, DDIM, DDPM, Euler ancestral and DPM-Solver++(2M) call the network once per step; Heun
twice, except on its last step, so n steps cost 2n − 1.
"""
import argparse
import json
import time
from pathlib import Path

import torch
from smoke import RESULTS, add_output_options, parse_args

from minidiff import metrics
from minidiff.devices import hardware_description, pick_device
from minidiff.diffusion.pipeline import generate
from minidiff.diffusion.samplers import SAMPLERS, default_spacing, nfe_for_steps, steps_for_nfe
from minidiff.files import write_json_atomic
from minidiff.weights import load_pretrained, read_manifest, record_metrics

SMOKE = dict(nfe=[4], reference=4, samples=16, seeds=[metrics.PROTOCOL_SEED])
KARRAS_RANGE = {"sigma_min": "σ_min", "sigma_max": "σ_max", "rho": "ρ"}  # options that move it, as rows record them


def measure(model, sampler, steps, spacing, karras_range, samples, labels, guidance_scale, seed):
    started = time.perf_counter()
    images = generate(model, samples, sampler=sampler, num_inference_steps=steps, spacing=spacing, **karras_range,
                      cond=None if labels is None else {"labels": labels[:samples]},
                      guidance_scale=1.0 if labels is None else guidance_scale, seed=seed)
    seconds = time.perf_counter() - started
    report = metrics.evaluate_samples(images, None if labels is None else labels[:samples])
    row = dict(sampler=sampler, spacing=spacing, **karras_range, steps=steps, nfe=nfe_for_steps(sampler, steps),
               samples=samples, seed=seed, fid=report["fid"], seconds=round(seconds, 1),
               images_per_s=round(samples / seconds, 2))
    if labels is not None:
        row.update(accuracy=report["accuracy"], guidance_scale=guidance_scale)
    return row


def spacing_label(row):
    """The row's spacing, with the Karras range when it was moved: "karras σ_min 0.03 σ_max 20"."""
    moved = [f"{name} {row[key]:g}" for key, name in KARRAS_RANGE.items() if key in row]
    return " ".join([row["spacing"], *moved])



def results_file(args) -> Path:
    return args.out or args.results / f"fid_vs_nfe_{args.model}.json"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ddpm_mnist", help="a shipped UNet checkpoint")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 20, 50, 100])
    parser.add_argument("--reference", type=int, default=1000, help="NFE of the DDPM reference row (0: none)")
    parser.add_argument("--spacing", choices=["uniform_t", "karras"], help="one spacing for all samplers")
    parser.add_argument("--sigma-min", type=float, help="Karras spacing from this σ (default: the schedule's least)")
    parser.add_argument("--sigma-max", type=float, help="Karras spacing up to this σ (default: 80)")
    parser.add_argument("--rho", type=float, help="Karras spacing's ρ (default: 7)")
    parser.add_argument("--samples", type=int, default=metrics.PROTOCOL_SAMPLES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[metrics.PROTOCOL_SEED],
                        help="seeds of the starting (and ancestral) noise; the protocol's is 0, others show the spread")
    parser.add_argument("--guidance", type=float, default=3.0, help="class-conditional models only")
    add_output_options(parser, help="folder of the results file")
    parser.add_argument("--out", type=Path, help="results file (default <results>/fid_vs_nfe_<model>.json)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    args = parse_args(parser, argv, SMOKE, written=lambda args: results_file(args).parent)
    args.out = results_file(args)

    torch.manual_seed(0)
    device = pick_device(args.device)
    hardware = hardware_description(device)
    model = load_pretrained(args.model, device=device)
    num_classes = model.config.num_classes
    labels = None if num_classes is None else torch.arange(args.samples) % num_classes
    out = args.out
    # only a protocol run into the committed results speaks for the shipped weights in their manifest
    records = not args.smoke and out.resolve() == (RESULTS / f"fid_vs_nfe_{args.model}.json").resolve()
    sha256 = read_manifest()[args.model]["sha256"]
    results = json.loads(out.read_text()) if out.exists() else None
    if results is None or results["sha256"] != sha256:  # rows measured on other weights do not count
        results = {"model": args.model, "sha256": sha256, "seed": metrics.PROTOCOL_SEED,
                   "real_vs_real_fid": metrics.real_vs_real_fid(), "hardware": hardware,
                   "threads": torch.get_num_threads(), "rows": []}
    if args.smoke:
        results["smoke"] = True  # a file a smoke run wrote to says so
    moved = {k: getattr(args, k) for k in KARRAS_RANGE if getattr(args, k) is not None}  # a row without them: defaults
    plan = [(s, steps_for_nfe(s, n), moved) for s in args.samplers for n in args.nfe]
    if args.reference:
        plan.append(("ddpm", args.reference, {}))  # the reference always on DDPM's own steps
    for seed, (sampler, steps, karras_range) in ((seed, step) for seed in args.seeds for step in plan):
        spacing = args.spacing or ("karras" if karras_range else default_spacing(sampler, steps))
        key = dict(sampler=sampler, spacing=spacing, steps=steps, samples=args.samples, seed=seed)
        done = [r for r in results["rows"] if all(r[k] == v for k, v in key.items())
                and all(r.get(k) == karras_range.get(k) for k in KARRAS_RANGE)]
        row = done[0] if done else measure(model, sampler, steps, spacing, karras_range, args.samples, labels,
                                           args.guidance, seed)
        if not done:
            if hardware != results["hardware"]:  # a row added later, elsewhere, says where
                row["hardware"] = hardware
            results["rows"].append(row)
            write_json_atomic(results, out)
        accuracy = f"  accuracy {row['accuracy']:.3f}" if "accuracy" in row else ""
        print(f"seed {seed}  {sampler:16s} {spacing_label(row):22s} NFE {row['nfe']:5d}  FID {row['fid']:8.2f}  "
              f"{row['images_per_s']:8.1f} images/s{accuracy}")
        if ((sampler, steps, seed) == ("ddpm", 1000, metrics.PROTOCOL_SEED) and args.samples == metrics.PROTOCOL_SAMPLES
                and records):
            record_metrics(args.model, {"fid_ddpm_1000": row["fid"]} |
                           ({"accuracy_ddpm_1000": row["accuracy"]} if "accuracy" in row else {}))


if __name__ == "__main__":
    main()
