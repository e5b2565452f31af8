"""How fast a shipped denoiser draws images on this machine: images per second for one batch, per
sampler, at a given number of network calls (NFE), through ``generate`` (the sampler's own arithmetic
included), plus the bare network's throughput.

    python benchmarks/sampling_speed.py                    # CPU, batch 256, NFE 10 and 20
    python benchmarks/sampling_speed.py --device cuda --batch 2000
    python benchmarks/sampling_speed.py --smoke --results /tmp/speed   # seconds: the same code, tiny sizes

Images per second falls as 1/NFE: the network call is nearly all of the cost, so a sampler's speed is
its NFE. Results go to ``benchmarks/results/sampling_speed_<model>_<device>.json`` (``--results``
another folder) with the hardware and thread count. ``--smoke`` (batch 4, NFE 3, one repeat, results in
``outputs/benchmarks-smoke/`` unless ``--results`` says otherwise) checks that the script still runs.
"""
import argparse
import time

import torch
from smoke import add_output_options, parse_args

from minidiff.devices import hardware_description, pick_device
from minidiff.diffusion.pipeline import generate
from minidiff.diffusion.samplers import SAMPLERS, nfe_for_steps, steps_for_nfe
from minidiff.files import write_json_atomic
from minidiff.weights import load_pretrained

SMOKE = dict(batch=4, nfe=[3], repeat=1)  # --smoke: seconds, never the committed results


def timed(fn, repeat: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeat



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ddpm_mnist")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--nfe", nargs="+", type=int, default=[10, 20])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    add_output_options(parser, help="folder of the results file")
    args = parse_args(parser, argv, SMOKE)

    device = pick_device(args.device)
    model = load_pretrained(args.model, device=device)
    x = torch.randn(args.batch, *model.sample_shape, device=device)
    t = torch.full((args.batch,), model.config.num_train_steps // 2, device=device)
    with torch.no_grad():
        per_call = timed(lambda: model(x, t), args.repeat)
    results = {"model": args.model, "batch": args.batch, "hardware": hardware_description(device),
               "device": device.type, "threads": torch.get_num_threads(),
               "network_calls_per_s": round(args.batch / per_call, 1), "rows": []}
    print(f"{results['hardware']}, {results['threads']} threads, batch {args.batch}: "
          f"{results['network_calls_per_s']:.0f} network calls per second")
    for nfe in args.nfe:
        for sampler in SAMPLERS:
            steps = steps_for_nfe(sampler, nfe)
            seconds = timed(lambda: generate(model, args.batch, sampler=sampler, num_inference_steps=steps,
                                             batch_size=args.batch, progress=False), args.repeat)
            row = dict(sampler=sampler, steps=steps, nfe=nfe_for_steps(sampler, steps),
                       seconds=round(seconds, 3), images_per_s=round(args.batch / seconds, 1))
            results["rows"].append(row)
            print(f"{sampler:16s} NFE {row['nfe']:4d}  {row['images_per_s']:8.1f} images/s")
    if args.smoke:
        results["smoke"] = True
    write_json_atomic(results, args.results / f"sampling_speed_{args.model}_{device.type}.json")


if __name__ == "__main__":
    main()
