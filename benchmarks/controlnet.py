"""ControlNet, measured (chapter 11): what zero convolutions buy, what the copy costs, and who wins when the
outline and the prompt disagree.

    python benchmarks/controlnet.py                                # the shipped ControlNets, on the CPU
    python benchmarks/controlnet.py --smoke --results /tmp/control # seconds: the same code, tiny counts

**Step 0.** A fresh ControlNet for ``t2i_shapes`` (its copy from the base's weights), with zero 1×1
convolutions and with Gaussian ones (std 1/√channels, a default initialisation): test renders' outlines
with their captions, drawn as the base draws them (same seeds) — the largest difference from the base's
pictures and the judge's all-five accuracy.

**Ablation.** The same training as ``controlnet_shapes_edge`` (``train_controlnet``, same data, seed and
schedule) with Gaussian convolutions, for its first ``ABLATION_STEPS`` steps, into
``runs/controlnet_shapes_edge_gaussian``: its convergence curve (empty-prompt IoU with the condition against
steps, measured on the weights being trained, resumable) beside the shipped run's over the same steps.

**Cost.** One training step at batch 64 of the ControlNet (base frozen) against fine-tuning the whole
base U-Net, alternated on this machine (median of ``--timed`` steps); memory counted, not sampled:
float32 weights, gradients and AdamW's two moments of what trains, every weight that does not, and the
activations autograd keeps for the backward pass (each tensor once).

**Conflicts.** A test render's outline (or mask) with its caption naming *another* shape: at control
strengths 0 … 2, the share of pictures whose shape (read by the judge) is the condition's, the
prompt's, or neither, and the mean IoU with the condition.

Results: ``benchmarks/results/controlnet.json``, ``controlnet_convergence.png`` and ``controlnet_conflicts.png``.
"""
import argparse
import statistics
import time

import matplotlib
import torch
from smoke import add_output_options, parse_args

from minidiff.course.recipes.controlnet import converged_at, draw, train_controlnet
from minidiff.datasets.shapes import ATTRIBUTES, TEST_SEED, eval_caption
from minidiff.devices import hardware_description
from minidiff.edit_protocol import control_scores, control_task
from minidiff.files import write_atomic, write_json_atomic
from minidiff.metrics import judge_read
from minidiff.models.controlnet import ControlNet, Controlled
from minidiff.text2image import load_text_to_image
from minidiff.weights import read_manifest

STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
ABLATION_STEPS = 3_000       # the first half of the shipped run: the jump and most of the rise
SMOKE = dict(tasks=4, steps=20, timed=2, strengths=[0.0, 1.0], kinds=["edge"])


def step_zero(base, encoder, decode, n: int) -> dict:
    task = control_task(n, "edge")
    plain = draw(base, encoder, decode, task)
    out = {"base": {"all_correct": control_scores(plain, task)["all_correct"]}}
    for name, zero in (("zero", True), ("gaussian", False)):
        torch.manual_seed(0)
        pictures = draw(Controlled(base, ControlNet.from_base(base, zero_init=zero)), encoder, decode, task)
        out[name] = {"largest_difference_from_base": (pictures - plain).abs().max().item(),
                     "rms_difference_from_base": (pictures - plain).pow(2).mean().sqrt().item(),
                     "all_correct": control_scores(pictures, task)["all_correct"]}
    return out


def ablation(steps: int, fast: bool) -> dict:
    """The Gaussian run's convergence curve beside the shipped run's, both up to ``steps`` (the same 64 test
    conditions, empty prompt, on the weights being trained), and where each first reaches IoU 0.5."""
    _, _, gaussian = train_controlnet("controlnet_shapes_edge_gaussian", "edge", fast, "cpu", steps, zero_init=False)
    shipped = [c for c in read_manifest()["controlnet_shapes_edge"]["metrics"]["convergence"] if c[0] <= steps]
    curves = {"zero": shipped, "gaussian": gaussian}
    return {"steps": steps, "curves": curves, "converged_at": {k: converged_at(c) for k, c in curves.items()},
            "last": {k: {"step": c[-1][0], "object_iou": c[-1][1], "edge_f1": c[-1][2]} for k, c in curves.items() if c}}


def training_cost(base, encoder, timed: int) -> dict:
    """Seconds per step and bytes, ControlNet against full fine-tuning, alternated."""
    torch.manual_seed(0)
    batch = 64
    x, t = torch.randn(batch, *base.sample_shape), torch.randint(0, 1000, (batch,))
    cond = encoder([eval_caption(a) for a in control_task(batch, "edge")["given"]])
    control = (torch.rand(batch, 1, 64, 64) > 0.9).float()
    full = load_text_to_image("t2i_shapes")[0].train().requires_grad_(True)
    steered = Controlled(base, ControlNet.from_base(base)).train()
    setups = {"fine-tune the base": (full, cond), "ControlNet": (steered, {**cond, "control": control})}
    optimizers = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad]) for k, (m, _) in setups.items()}
    times = {k: [] for k in setups}

    def step(name):
        model, c = setups[name]
        start = time.perf_counter()
        optimizers[name].zero_grad()
        model(x, t, c).pow(2).mean().backward()
        optimizers[name].step()
        return time.perf_counter() - start

    for i in range(timed + 2):
        for name in setups:
            seconds = step(name)
            if i >= 2:
                times[name].append(seconds)
    out = {}
    for name, (model, c) in setups.items():
        saved = {}

        def pack(tensor):
            saved[(tensor.data_ptr(), tuple(tensor.shape))] = tensor.numel() * tensor.element_size()
            return tensor
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(x, t, c).pow(2).mean().backward()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        memory = 4 * (4 * trainable + frozen) + sum(saved.values())
        out[name] = {"seconds_per_step": statistics.median(times[name]), "trainable_parameters": trainable,
                     "frozen_parameters": frozen, "activation_bytes": sum(saved.values()), "memory_bytes": memory}
    a, b = out["ControlNet"], out["fine-tune the base"]
    out["extra_time"] = a["seconds_per_step"] / b["seconds_per_step"] - 1
    out["extra_memory"] = a["memory_bytes"] / b["memory_bytes"] - 1
    out["batch_size"] = batch
    return out


def conflicts(encoder, decode, kind: str, n: int, strengths: list) -> list:
    """Each condition with its caption naming the next shape instead of its own."""
    model = load_text_to_image(f"controlnet_shapes_{kind}")[0]
    task = control_task(n, kind)
    shapes = ATTRIBUTES["shape"]
    asked = [dict(a, shape=shapes[(shapes.index(a["shape"]) + 1) % len(shapes)]) for a in task["given"]]
    prompts = [eval_caption(a) for a in asked]
    column = list(ATTRIBUTES).index("shape")
    own = torch.tensor([shapes.index(a["shape"]) for a in task["given"]])
    other = torch.tensor([shapes.index(a["shape"]) for a in asked])
    rows = []
    for strength in strengths:
        pictures = draw(model, encoder, decode, task, prompts=prompts, control_strength=strength)
        read = judge_read(pictures)[1][:, column]
        rows.append({"control_strength": strength, "condition_wins": (read == own).float().mean().item(),
                     "prompt_wins": (read == other).float().mean().item(),
                     "object_iou": control_scores(pictures, task)["object_iou"]})
        print(f"{kind}, λ = {strength}: condition {100 * rows[-1]['condition_wins']:.1f} %, prompt "
              f"{100 * rows[-1]['prompt_wins']:.1f} %, IoU {rows[-1]['object_iou']:.3f}", flush=True)
    return rows


def plot(results: dict, folder) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, curve in results["ablation"]["curves"].items():
        ax.plot([c[0] for c in curve], [c[1] for c in curve], "o-", ms=3, label=f"{name} 1×1 convolutions")
    ax.set_xlabel("training step"), ax.set_ylabel("IoU with the outline (empty prompt)"), ax.legend()
    fig.tight_layout()
    write_atomic(folder / "controlnet_convergence.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    fig, axes = plt.subplots(1, len(results["conflicts"]), figsize=(5 * len(results["conflicts"]), 3.4), squeeze=False)
    for ax, (kind, rows) in zip(axes[0], results["conflicts"].items()):
        s = [r["control_strength"] for r in rows]
        ax.plot(s, [100 * r["condition_wins"] for r in rows], "o-", label=f"the {kind}'s shape")
        ax.plot(s, [100 * r["prompt_wins"] for r in rows], "s-", label="the prompt's shape")
        ax.set_xlabel("control strength λ"), ax.set_ylabel("% of pictures"), ax.set_title(f"{kind} vs prompt")
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(folder / "controlnet_conflicts.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=500, help="test conditions per measurement")
    parser.add_argument("--steps", type=int, default=ABLATION_STEPS, help="training steps of the ablation")
    parser.add_argument("--timed", type=int, default=10, help="training steps timed for the cost")
    parser.add_argument("--strengths", nargs="+", type=float, default=STRENGTHS)
    parser.add_argument("--kinds", nargs="+", default=["edge", "mask"], help="ControlNets in the conflict test")
    add_output_options(parser, help="folder of the results")
    args = parse_args(parser, argv, SMOKE)
    base, decode, encoder = load_text_to_image("t2i_shapes")
    results = {"hardware": hardware_description(torch.device("cpu")), "threads": torch.get_num_threads(),
               "tasks": args.tasks, "test_seed": TEST_SEED,
               "step_zero": step_zero(base, encoder, decode, args.tasks),
               "ablation": ablation(args.steps, args.smoke),
               "cost": training_cost(base, encoder, args.timed),
               "conflicts": {kind: conflicts(encoder, decode, kind, args.tasks, args.strengths) for kind in args.kinds}}
    if args.smoke:
        results["smoke"] = True
    args.results.mkdir(parents=True, exist_ok=True)
    plot(results, args.results)
    write_json_atomic(results, args.results / "controlnet.json")


if __name__ == "__main__":
    main()
