"""Every script in benchmarks/ still runs: each one's ``--smoke`` mode (a few training steps, a handful of
samples, few NFEs, one seed) goes end to end through the real code — no mocks — into a temporary folder,
and writes the fields its committed results have. The committed results and the shipped manifest are
never touched (checked byte for byte). A new script fails ``test_every_benchmark_script_is_smoke_tested``
until it gets a check here."""
import hashlib
import json
import math
import runpy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minidiff.datasets.shapes import ATTRIBUTES
from minidiff.diffusion.samplers import SAMPLERS
from minidiff.weights import read_manifest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
COMMITTED = BENCHMARKS / "results"
SHIPPED = [ROOT / "data" / "checkpoints" / "manifest.json", *sorted(COMMITTED.iterdir())]


@pytest.fixture(autouse=True)
def shipped_files_untouched():
    """No smoke run may write the committed results or the manifest."""
    def digests():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in SHIPPED if p.is_file()}
    before = digests()
    yield
    assert digests() == before, "a benchmark's smoke run changed the committed results or the manifest"
    assert sorted(COMMITTED.iterdir()) == SHIPPED[1:], "a benchmark's smoke run wrote into benchmarks/results"


def smoke(script, results, monkeypatch, *options):
    """``python benchmarks/<script> --smoke --results <results> <options>``, in this process (so the
    judge's test statistics are computed once for every script). Returns the folder."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/x.py` does: its own folder first
    main = runpy.run_path(str(BENCHMARKS / script), run_name=f"benchmark_{Path(script).stem}")["main"]
    main(["--smoke", "--results", str(results), *options])
    return results


def written(path, like=None, extra=()):
    """The JSON a smoke run wrote, marked "smoke", with the committed file's fields (``like``) and ``extra``."""
    assert path.exists(), f"{path.name} was not written"
    report = json.loads(path.read_text())
    assert report.pop("smoke") is True
    if like is not None:
        assert set(report) == set(json.loads((COMMITTED / like).read_text())) | set(extra)
    return report


def committed_row_fields(name):
    rows = json.loads((COMMITTED / name).read_text())["rows"]
    return set.intersection(*(set(r) for r in rows))  # the fields every committed row has


def check_sampling_speed(tmp_path, monkeypatch, capsys):
    report = written(smoke("sampling_speed.py", tmp_path, monkeypatch) / "sampling_speed_ddpm_mnist_cpu.json",
                     like="sampling_speed_ddpm_mnist_cpu.json")
    assert (report["batch"], report["device"]) == (4, "cpu") and report["network_calls_per_s"] > 0
    assert [r["sampler"] for r in report["rows"]] == list(SAMPLERS)
    for row in report["rows"]:
        assert set(row) == committed_row_fields("sampling_speed_ddpm_mnist_cpu.json")
        assert row["nfe"] == 3 and row["images_per_s"] > 0


def check_fid_vs_nfe(tmp_path, monkeypatch, capsys):
    out = smoke("fid_vs_nfe.py", tmp_path, monkeypatch) / "fid_vs_nfe_ddpm_mnist.json"
    report = written(out, like="fid_vs_nfe_ddpm_mnist.json")
    assert report["sha256"] == read_manifest()["ddpm_mnist"]["sha256"]
    assert report["real_vs_real_fid"] > 0
    rows = report["rows"]
    assert sorted(r["sampler"] for r in rows) == sorted(SAMPLERS)  # the 4-step DDPM reference is DDPM's row
    for row in rows:
        assert set(row) == committed_row_fields("fid_vs_nfe_ddpm_mnist.json")
        assert (row["samples"], row["seed"]) == (16, 0) and math.isfinite(row["fid"])
    smoke("fid_vs_nfe.py", tmp_path, monkeypatch)  # a re-run resumes: every row is there already
    assert json.loads(out.read_text())["rows"] == rows


def check_samplers_vs_diffusers(tmp_path, monkeypatch, capsys):
    # minidiff's rows come from fid_vs_nfe's file in the same --results folder (same samples and NFE)
    smoke("fid_vs_nfe.py", tmp_path, monkeypatch, "--samplers", "ddim", "dpmpp_2m", "--nfe", "3", "--samples", "8",
          "--reference", "0")
    capsys.readouterr()
    report = written(smoke("samplers_vs_diffusers.py", tmp_path, monkeypatch) / "samplers_vs_diffusers_ddpm_mnist.json",
                     like="samplers_vs_diffusers_ddpm_mnist.json")
    assert report["sha256"] == read_manifest()["ddpm_mnist"]["sha256"]
    assert sorted((r["scheduler"], r["timestep_spacing"]) for r in report["rows"]) == [
        ("ddim", "default"), ("ddim", "trailing"), ("dpmsolver++", "default"), ("dpmsolver++", "trailing")]
    for row in report["rows"]:
        assert set(row) == committed_row_fields("samplers_vs_diffusers_ddpm_mnist.json")
        assert (row["nfe"], row["samples"], row["seed"]) == (3, 8, 0) and math.isfinite(row["fid"])
    table = {line[:34].strip(): line[34:].split() for line in capsys.readouterr().out.splitlines()}
    for sampler in ("minidiff ddim", "minidiff dpmpp_2m", "diffusers ddim (default)"):
        assert math.isfinite(float(table[sampler][0])), f"no FID for {sampler} in the table"


def check_ddpm_vs_diffusers(tmp_path, monkeypatch, capsys):
    """Both sides train (a step or so each) and are sampled: diffusers' UNet2DModel through
    ``sample_diffusers`` (which once got a lambda, and crashed after all the training)."""
    report = written(smoke("ddpm_vs_diffusers.py", tmp_path, monkeypatch) / "ddpm_vs_diffusers.json",
                     like="ddpm_vs_diffusers.json", extra=["batch_size"])  # said when not the default
    assert (report["sampler"], report["sampling_steps"], report["samples"], report["batch_size"]) == ("ddim", 3, 8, 8)
    committed = json.loads((COMMITTED / "ddpm_vs_diffusers.json").read_text())["rows"]
    assert report["rows"].keys() == committed.keys() == {"minidiff", "diffusers"}
    for name, row in report["rows"].items():
        assert row.keys() == committed[name].keys()
        assert row["train_steps"] >= 1 and math.isfinite(row["fid"])


def check_protocol_cost(tmp_path, monkeypatch, capsys):
    report = written(smoke("protocol_cost.py", tmp_path, monkeypatch) / "protocol_cost.json")
    assert set(report) == {"hardware", "threads", "scoring_images", "scoring_images_per_s", "evaluation_samples",
                           "evaluation_s", "trainer_steps", "trainer_images_per_s", "unet_like_parameters",
                           "unet_like_batch", "unet_like_images_per_s", "protocol_hours", "real_vs_real_fid"}
    assert (report["scoring_images"], report["evaluation_samples"], report["trainer_steps"]) == (500, 100, 4)
    assert 0.9e6 < report["unet_like_parameters"] < 1.1e6 and report["trainer_images_per_s"] > 0
    assert list(report["real_vs_real_fid"]) == ["500"] and report["real_vs_real_fid"]["500"] > 0


def check_latent_vs_pixel(tmp_path, monkeypatch, capsys):
    """Untrained models (f = 1, 2, 4, 8) with two snapshots each: every part runs (step timing, the
    curves, the equal-budget sweep, the speed)."""
    report = written(smoke("latent_vs_pixel.py", tmp_path, monkeypatch) / "latent_vs_pixel.json")
    f = ["1", "2", "4", "8"]
    assert list(report["curves"]) == f and all(len(c) == 2 for c in report["curves"].values())
    assert report["curves"]["1"][1]["seconds"] == pytest.approx(2 * report["seconds_per_step"]["1"], abs=0.1)
    assert report["pixel_best"]["fid"] == min(r["fid"] for r in report["curves"]["1"])
    assert report["sampling_speedup"] == pytest.approx(report["pictures_per_s"]["8"] / report["pictures_per_s"]["1"])
    budget = report["budget_seconds"]
    assert budget == min(c[-1]["seconds"] for c in report["curves"].values())
    assert all(report["sweep"][k]["seconds"] <= budget for k in f) and report["sweep"]["8"]["fid"] is not None
    assert report["sweep"]["1"]["autoencoder_keeps"]["all_correct"] == 1.0


def check_clip_speed(tmp_path, monkeypatch, capsys):
    report = written(smoke("clip_speed.py", tmp_path, monkeypatch) / "clip_speed.json", like="clip_speed.json")
    assert (report["batch"], report["device"]) == (8, "cpu")
    manifest = read_manifest()
    assert [r["name"] for r in report["rows"]] == ["clip_shapes", "clip_shapes_bow", "clip_mnist"]
    for row in report["rows"]:
        assert set(row) == committed_row_fields("clip_speed.json")
        assert row["trained_steps"] == manifest[row["name"]]["steps"]
        assert min(row["train_images_per_s"], row["encode_images_per_s"], row["encode_captions_per_s"]) > 0


def check_text_to_image(tmp_path, monkeypatch, capsys):
    out = smoke("text_to_image.py", tmp_path, monkeypatch)
    report = written(out / "text_to_image.json", like="text_to_image.json")
    assert (out / "text_to_image_guidance.png").stat().st_size > 0
    assert report["trained_steps"] == read_manifest()["t2i_shapes"]["steps"]
    assert [r["guidance_scale"] for r in report["rows"]] == [1.0, 3.0]
    for row in report["rows"]:
        for where in ("train_compositions", "held_out_compositions"):
            measured = row["en"][where]
            assert set(measured["accuracy"]) == set(ATTRIBUTES) and 0 <= measured["all_correct"] <= 1
    assert set(report["prompt_editing"]) == set(ATTRIBUTES)
    assert all(0 <= e["edited_as_asked"] <= 1 and 0 <= e["others_kept"] <= 1 for e in report["prompt_editing"].values())
    speed = report["speed"]
    assert speed["one_picture_s"] > 0 and speed["guided_pictures_per_s"] > 0 and speed["guidance_cost"] > 0


def check_editing(tmp_path, monkeypatch, capsys):
    out = smoke("editing.py", tmp_path, monkeypatch)
    report = written(out / "editing.json")
    assert (out / "editing_tradeoff.png").stat().st_size > 0
    assert list(report["sdedit"]) == ["plain", "plain, steered's sampler", "mask ControlNet"]
    for curve in report["sdedit"].values():
        assert [r["strength"] for r in curve] == [0.3, 1.0]
        for row in curve:
            assert row["n"] == 4 and 0 <= row["accuracy"]["color"] <= 1 and 0 <= row["object_iou"] <= 1
            assert row["colour_and_layout_kept"] <= min(row["accuracy"]["color"], row["layout_kept"])
    methods = [r["method"] for r in report["inpainting"]]
    assert methods[:4] == ["paste only", "RePaint, 20 steps", "RePaint, 80 steps", "RePaint, 20 steps, 5 resamplings of 5"]
    assert [r["network_calls"] for r in report["inpainting"][:4]] == [20, 20, 80, 80]  # equal calls, compared
    for row in report["inpainting"]:
        for kind in ("replacement", "completion"):
            assert row[kind]["kept_exactly"] is True and 0 <= row[kind]["all_correct"] <= 1


def check_finetune(tmp_path, monkeypatch, capsys):
    out = smoke("finetune.py", tmp_path, monkeypatch)
    report = written(out / "finetune.json")
    assert (out / "finetune_overfitting.png").stat().st_size > 0
    rows = {(r["method"], r["prior_preservation"]): r for r in report["methods"]}
    assert set(rows) == {(m, p) for m in ("LoRA r4", "full") for p in (False, True)}
    lora, full = rows[("LoRA r4", False)], rows[("full", False)]
    assert lora["trainable_numbers"] < 0.05 * full["trainable_numbers"] and lora["adapter_kb"] < full["adapter_kb"]
    # the cross-attentions' r·Σ(in + out), and the word's row
    assert [r["trainable_numbers"] for r in report["ranks"]] == [6_080 + 128, 2 * 6_080 + 128]
    assert lora["trainable_numbers"] == 4 * 6_080 + 128 and lora["word_steps"] == 2
    assert [r["seed"] for r in report["seeds"]] == [0, 1] and "drift_points" in report["seeds"][1]
    curve = report["overfitting"]["curve"]
    assert [p["step"] for p in curve] == [0, 3, 6] and curve[-1]["train"] < curve[0]["train"]
    assert report["overfitting"]["early_stopping_step"] in (3, 6)
    strips = load_file(out / "finetune_overfitting.safetensors")
    assert strips["held_out_captions.6"].shape == (4, 3, 64, 64) and strips["base_prompts.0"].dtype == torch.uint8


def check_controlnet(tmp_path, monkeypatch, capsys):
    out = smoke("controlnet.py", tmp_path, monkeypatch)
    report = written(out / "controlnet.json")
    assert (out / "controlnet_convergence.png").stat().st_size > 0 and (out / "controlnet_conflicts.png").stat().st_size > 0
    assert report["step_zero"]["zero"]["largest_difference_from_base"] == 0  # zero convolutions: the base exactly
    assert report["step_zero"]["gaussian"]["largest_difference_from_base"] > 0
    assert [c[0] for c in report["ablation"]["curves"]["gaussian"]] == [10, 20]
    cost = report["cost"]
    assert cost["ControlNet"]["trainable_parameters"] < cost["fine-tune the base"]["trainable_parameters"]
    assert cost["ControlNet"]["frozen_parameters"] == cost["fine-tune the base"]["trainable_parameters"]
    assert [r["control_strength"] for r in report["conflicts"]["edge"]] == [0.0, 1.0]
    assert all(r["condition_wins"] + r["prompt_wins"] <= 1 for r in report["conflicts"]["edge"])


CHECKS = {"sampling_speed.py": check_sampling_speed, "clip_speed.py": check_clip_speed, "latent_vs_pixel.py": check_latent_vs_pixel,
          "fid_vs_nfe.py": check_fid_vs_nfe, "samplers_vs_diffusers.py": check_samplers_vs_diffusers,
          "ddpm_vs_diffusers.py": check_ddpm_vs_diffusers, "protocol_cost.py": check_protocol_cost,
          "text_to_image.py": check_text_to_image, "editing.py": check_editing,
          "controlnet.py": check_controlnet, "finetune.py": check_finetune}
FAST = {"sampling_speed.py"}  # about a second; the others load the judge's test statistics or train


SHARED = {"smoke.py"}  # the scripts' shared plumbing (results folders, --smoke), not a benchmark


def test_every_benchmark_script_is_smoke_tested():
    assert set(CHECKS) == {p.name for p in BENCHMARKS.glob("*.py")} - SHARED


@pytest.mark.parametrize("script", [s if s in FAST else pytest.param(s, marks=pytest.mark.slow) for s in CHECKS])
def test_benchmark_smoke_run_writes_its_results(script, tmp_path, monkeypatch, capsys):
    CHECKS[script](tmp_path, monkeypatch, capsys)


@pytest.mark.slow
def test_fid_vs_nfe_smoke_on_a_conditional_model_with_a_karras_range(tmp_path, monkeypatch):
    """The class labels go to ``generate`` as ``cond`` (with guidance), and a moved Karras range is recorded."""
    out = smoke("fid_vs_nfe.py", tmp_path, monkeypatch, "--model", "ddpm_mnist_cond", "--samplers", "dpmpp_2m_sde",
                "--sigma-min", "0.2", "--sigma-max", "20", "--reference", "0") / "fid_vs_nfe_ddpm_mnist_cond.json"
    [row] = written(out)["rows"]
    assert (row["sampler"], row["spacing"], row["sigma_min"], row["sigma_max"]) == ("dpmpp_2m_sde", "karras", 0.2, 20)
    assert row["guidance_scale"] == 3.0 and 0 <= row["accuracy"] <= 1


@pytest.mark.parametrize("script", sorted(CHECKS))
def test_smoke_refuses_to_write_the_committed_results(script, monkeypatch, capsys):
    with pytest.raises(SystemExit) as refused:
        smoke(script, COMMITTED, monkeypatch)
    assert refused.value.code == 2 and "--smoke does not write into" in capsys.readouterr().err


README_SAMPLER_ROWS = {  # the README's FID-vs-NFE table: row label → (sampler, the row's Karras options)
    "minidiff DDPM (ancestral, 2-core CPU)": ("ddpm", {}),
    "minidiff Euler ancestral (2-core CPU)": ("euler_ancestral", {}),
    "minidiff Euler": ("euler", {}),
    "minidiff Heun (NFE 5, 9, 19, 49, 99)": ("heun", {}),
    "minidiff DDIM (η = 0)": ("ddim", {}),
    "minidiff DPM-Solver++(2M)": ("dpmpp_2m", {}),
    "minidiff DPM-Solver++(2M) SDE (2-core CPU)": ("dpmpp_2m_sde", {}),
    "minidiff DPM-Solver++(2M) SDE, σ 0.2–20 (2-core CPU)": ("dpmpp_2m_sde", {"sigma_min": 0.2, "sigma_max": 20.0}),
}


def test_the_readmes_sampler_table_quotes_the_committed_results():
    """Every figure of the README's FID-vs-NFE table (minidiff's rows) is the committed protocol row
    (seed 0, 2,000 samples) to two decimals, so a re-measured benchmark cannot leave stale prose."""
    from minidiff.diffusion.samplers import default_spacing, steps_for_nfe
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    results = json.loads((Path(__file__).resolve().parent.parent / "benchmarks" / "results" /
                          "fid_vs_nfe_ddpm_mnist.json").read_text())
    lines = readme.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| network calls (NFE) |"))
    table = lines[start:start + next(i for i, line in enumerate(lines[start:]) if not line.startswith("|"))]
    nfes = [int(cell) for cell in table[0].strip().strip("|").split("|")[1:]]
    found = 0
    for line in table[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] not in README_SAMPLER_ROWS:
            continue
        sampler, karras = README_SAMPLER_ROWS[cells[0]]
        for nfe, cell in zip(nfes, cells[1:]):
            if not cell:
                continue
            steps = steps_for_nfe(sampler, nfe)
            spacing = "karras" if karras else default_spacing(sampler, steps)
            [row] = [r for r in results["rows"] if (r["sampler"], r["steps"], r["seed"], r["samples"], r["spacing"])
                     == (sampler, steps, 0, 2000, spacing) and all(r.get(k) == karras.get(k)
                                                                  for k in ("sigma_min", "sigma_max", "rho"))]
            quoted = float(cell.replace("*", "").replace(",", ""))
            assert f"{row['fid']:.2f}" == f"{quoted:.2f}" or (quoted >= 1000 and round(row["fid"]) == quoted), \
                f"README quotes {quoted} for {cells[0]} at NFE {nfe}; the results say {row['fid']:.2f}"
            found += 1
    assert found >= 30, "the README's sampler table was not found"
