"""Same weights, same starting noise, same number of network calls: minidiff's DDIM and DPM-Solver++(2M)
beside diffusers' ``DDIMScheduler`` and ``DPMSolverMultistepScheduler`` on a shipped denoiser.

    pip install -c constraints.txt -e '.[bench]'
    python benchmarks/fid_vs_nfe.py                  # minidiff's rows (this script reads them)
    python benchmarks/samplers_vs_diffusers.py       # diffusers' rows, then the side-by-side table
    python benchmarks/samplers_vs_diffusers.py --smoke --results /tmp/vs   # seconds: 8 samples at NFE 3

diffusers' schedulers get exactly the model's training schedule (``trained_betas``, from the ᾱ_t the
model keeps in its ``noise_schedule``) and prediction type;
everything else is left at diffusers' defaults, as a user would (DDIM: "leading" timesteps and x_0
clipping; DPM-Solver: 2nd-order "dpmsolver++" on "linspace" timesteps, lower order on the last steps),
and the "trailing" timestep spacing is also measured. Scored with the course's protocol (classifier-FID
of 2,000 samples, seed 0). Rows are saved as they finish, in ``benchmarks/results/`` (``--results``:
another folder, whose ``fid_vs_nfe_<model>.json`` then gives minidiff's rows), and skipped on a re-run.
``--smoke`` (8 samples, NFE 3, one seed, into ``outputs/benchmarks-smoke/`` unless ``--results`` says
otherwise) checks that the script still runs.
"""
import argparse
import json
import time

import torch
from smoke import add_output_options, parse_args

from minidiff import metrics
from minidiff.devices import pick_device
from minidiff.diffusion.pipeline import starting_noise
from minidiff.diffusion.schedules import betas_from_alphas_cumprod
from minidiff.files import write_json_atomic
from minidiff.weights import load_pretrained, read_manifest

SMOKE = dict(nfe=[3], samples=8, seeds=[metrics.PROTOCOL_SEED])
OURS = {"ddim": "ddim", "dpmsolver++": "dpmpp_2m"}  # diffusers' scheduler → minidiff's sampler


def diffusers_scheduler(kind: str, model, timestep_spacing: str | None):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    betas = betas_from_alphas_cumprod(model.noise_schedule.alphas_cumprod.detach().cpu().double())
    common = dict(num_train_timesteps=model.config.num_train_steps, trained_betas=betas.tolist(),
                  prediction_type=model.config.prediction_type)
    if timestep_spacing:
        common["timestep_spacing"] = timestep_spacing
    if kind == "ddim":
        return DDIMScheduler(**common)
    return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)


@torch.no_grad()
def sample_diffusers(scheduler, model, noise, steps, batch_size=500):
    """diffusers' sampling loop: x_T = noise · init_noise_sigma, then one ``scheduler.step`` per timestep.

    ``model`` is the network itself, run on its own device: a minidiff U-Net (which returns the
    prediction) or a diffusers ``UNet2DModel`` (which returns it as ``.sample``)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(noise), batch_size):
        scheduler.set_timesteps(steps, device=device)  # also resets a multistep solver's memory
        x = noise[start:start + batch_size].to(device) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            prediction = model(scheduler.scale_model_input(x, t), t.expand(len(x)))
            if not isinstance(prediction, torch.Tensor):  # diffusers' models wrap it in an output class
                prediction = prediction.sample
            x = scheduler.step(prediction, t, x).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ddpm_mnist")
    parser.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 20, 50, 100])
    parser.add_argument("--spacings", nargs="+", default=["default", "trailing"])
    parser.add_argument("--samples", type=int, default=metrics.PROTOCOL_SAMPLES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[metrics.PROTOCOL_SEED],
                        help="seeds of the starting noise (minidiff's rows: fid_vs_nfe.py --seeds)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    add_output_options(parser, help="folder of the results (and of minidiff's rows)")
    args = parse_args(parser, argv, SMOKE)

    model = load_pretrained(args.model, device=pick_device(args.device))
    if model.config.num_classes is not None:
        raise SystemExit("this comparison is for unconditional models (e.g. ddpm_mnist)")
    out = args.results / f"samplers_vs_diffusers_{args.model}.json"
    sha256 = read_manifest()[args.model]["sha256"]
    results = json.loads(out.read_text()) if out.exists() else None
    if results is None or results["sha256"] != sha256:  # rows measured on other weights do not count
        results = {"model": args.model, "sha256": sha256, "rows": []}
    if args.smoke:
        results["smoke"] = True  # a file a smoke run wrote to says so
    for seed in args.seeds:
        noise = starting_noise(args.samples, model.sample_shape, seed)
        for kind, spacing, nfe in ((k, s, n) for k in OURS for s in args.spacings for n in args.nfe):
            key = dict(scheduler=kind, timestep_spacing=spacing, nfe=nfe, samples=args.samples, seed=seed)
            if any(all(r[k] == v for k, v in key.items()) for r in results["rows"]):
                continue
            scheduler = diffusers_scheduler(kind, model, None if spacing == "default" else spacing)
            started = time.perf_counter()
            images = sample_diffusers(scheduler, model, noise, nfe)
            results["rows"].append({**key, "fid": metrics.classifier_fid(images),
                                    "seconds": round(time.perf_counter() - started, 1)})
            write_json_atomic(results, out)
    print_table(results, args)


def print_table(results, args):
    ours_path = args.results / f"fid_vs_nfe_{args.model}.json"
    ours = json.loads(ours_path.read_text()) if ours_path.exists() else {"sha256": None}
    ours = ours["rows"] if ours["sha256"] == results["sha256"] else []

    def mean_fid(rows, **match):
        """{nfe: FID averaged over args.seeds}, for the NFEs measured on every one of them."""
        by_nfe = {}
        for r in rows:
            if r["samples"] == args.samples and r["seed"] in args.seeds and all(r[k] == v for k, v in match.items()):
                by_nfe.setdefault(r["nfe"], []).append(r["fid"])
        return {n: sum(f) / len(f) for n, f in by_nfe.items() if len(f) == len(args.seeds)}

    seeds = ", ".join(map(str, args.seeds))
    print(f"classifier-FID, {args.samples} samples, {'seed' if len(args.seeds) == 1 else 'mean over seeds'} "
          f"{seeds} (lower is better)")
    print(f"{'sampler':34s}" + "".join(f"{'NFE ' + str(n):>10s}" for n in args.nfe))
    for kind, sampler in OURS.items():
        mine = mean_fid(ours, sampler=sampler)
        print(f"{'minidiff ' + sampler:34s}" + "".join(f"{mine.get(n, float('nan')):10.2f}" for n in args.nfe))
        for spacing in args.spacings:
            theirs = mean_fid(results["rows"], scheduler=kind, timestep_spacing=spacing)
            print(f"{'diffusers ' + kind + ' (' + spacing + ')':34s}" +
                  "".join(f"{theirs.get(n, float('nan')):10.2f}" for n in args.nfe))


if __name__ == "__main__":
    main()
