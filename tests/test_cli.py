import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from minidiff.__main__ import main
from minidiff.course.generators import load_samples, save_samples, sources
from minidiff.files import DataError


@pytest.mark.slow
def test_sample_then_evaluate_real_digits(tmp_path, capsys):
    main(["sample", "mnist", "-n", "400", "--seed", "3", "--out", str(tmp_path / "s.png")])
    assert Image.open(tmp_path / "s.png").size[0] > 20 * 28
    images, labels = load_samples(tmp_path / "s.safetensors")
    assert images.shape == (400, 1, 28, 28) and labels.shape == (400,)
    capsys.readouterr()
    main(["evaluate", str(tmp_path / "s.safetensors")])
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 400 and report["accuracy"] > 0.98 and sum(report["class_histogram"]) == 400


def test_generators_are_seeded():
    for name in ("mnist", "shapes"):
        a, _ = sources()[name](4, 1)
        b, _ = sources()[name](4, 1)
        c, _ = sources()[name](4, 2)
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_evaluate_refuses_what_it_cannot_score(tmp_path):
    save_samples(torch.zeros(2, 3, 30, 30), None, tmp_path / "odd.png")
    with pytest.raises(DataError, match=r"digits or \(N, 3, 64, 64\)"):
        load_samples(tmp_path / "odd.safetensors")
    save_samples(torch.full((2, 3, 32, 32), -0.5), torch.zeros(2, dtype=torch.long), tmp_path / "colour.png")
    with pytest.raises(DataError, match="five attribute labels each"):
        load_samples(tmp_path / "colour.safetensors")
    with pytest.raises(DataError, match="not a samples file"):
        load_samples(tmp_path / "colour.png")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="junk.safetensors"):
        load_samples(tmp_path / "junk.safetensors")


def test_cli_turns_data_errors_into_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path))  # an empty data folder
    with pytest.raises(SystemExit, match="^error: .*t10k-images-idx3-ubyte.gz is missing.*git checkout"):
        main(["sample", "mnist", "--out", str(tmp_path / "s.png")])
    with pytest.raises(SystemExit, match="unknown recipe 'nonexistent'; available: .*mnist_classifier"):
        main(["train", "nonexistent"])


@pytest.mark.slow
def test_demo_sheet(tmp_path):
    from minidiff.course.demo import PANELS, make_demo
    path = make_demo(tmp_path / "demo.png")
    picture = np.asarray(Image.open(path))
    assert picture.shape[1] > 800 and picture.shape[0] > 100 * len(PANELS)
    leftovers = list(tmp_path.glob(".*.tmp"))  # write_atomic's temporary files: ".demo.png.<random>.tmp"
    assert not leftovers, leftovers


def test_shipped_generative_models_can_be_sampled_and_scored(tmp_path, capsys):
    main(["sample", "vae_mnist", "-n", "300", "--out", str(tmp_path / "vae.png")])
    capsys.readouterr()
    main(["evaluate", str(tmp_path / "vae.safetensors")])
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 300 and report["fid"] < 500 and min(report["class_histogram"]) > 0
    images, _ = sources()["dcgan_mnist"](8, 0)
    assert images.shape == (8, 1, 28, 28) and torch.equal(images, sources()["dcgan_mnist"](8, 0)[0])


def test_diffusion_models_sample_with_any_sampler(tmp_path):
    main(["sample", "ddpm_mnist_cond", "-n", "20", "--sampler", "ddim", "--steps", "4",
          "--out", str(tmp_path / "d.png")])
    images, labels = load_samples(tmp_path / "d.safetensors")
    assert images.shape == (20, 1, 28, 28) and torch.equal(labels, torch.arange(20) % 10)
    with pytest.raises(SystemExit, match="for diffusion models"):
        main(["sample", "vae_mnist", "--steps", "5", "--out", str(tmp_path / "v.png")])
    with pytest.raises(SystemExit, match="unknown sampler 'bogus'"):
        main(["sample", "ddpm_mnist", "--sampler", "bogus", "--out", str(tmp_path / "b.png")])
    assert not (tmp_path / "v.png").exists() and not (tmp_path / "b.png").exists()


def test_only_the_diffusion_recipes_take_a_length():
    with pytest.raises(SystemExit, match="fixed length"):
        main(["train", "mnist_classifier", "--steps", "5"])


def test_a_diffusion_run_is_the_start_of_every_longer_one():
    """Nothing in the DDPM recipe's settings depends on the total number of steps (constant learning
    rate after warm-up), so ``--steps`` can extend a finished run by resuming it."""
    from dataclasses import asdict

    from minidiff.course.recipes.ddpm import ddpm_mnist_config
    from minidiff.train import lr_at
    short, long = ddpm_mnist_config(3000, False, None), ddpm_mnist_config(9000, False, None)
    assert {k: v for k, v in asdict(short).items() if k != "steps"} == \
        {k: v for k, v in asdict(long).items() if k != "steps"}
    assert [lr_at(s, short) for s in range(0, 3000, 100)] == [lr_at(s, long) for s in range(0, 3000, 100)]


def _samples(path, images, labels=None):
    """A samples file as `sample` writes it, with whatever pictures a careless student made."""
    from minidiff.files import save_safetensors_atomic
    tensors = {"images": images} if labels is None else {"images": images, "labels": labels}
    save_safetensors_atomic(tensors, path)
    return str(path)


def _digits(n):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _shipped_copy(tmp, monkeypatch, change=None):
    """A copy of the shipped manifest (and MNIST) in ``tmp/data``, used as the data folder, with
    ``change(checkpoints_folder, manifest)`` applied: a careless student's edits, never the real files."""
    import shutil

    from minidiff.files import project_dir
    data = tmp / "data"
    shutil.copytree(project_dir() / "data" / "mnist", data / "mnist")
    (data / "checkpoints").mkdir()
    manifest = json.loads((project_dir() / "data" / "checkpoints" / "manifest.json").read_text())
    if change:
        change(data / "checkpoints", manifest)
    (data / "checkpoints" / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("MINIDIFF_DATA", str(data))


def _not_safetensors_with_its_hash(folder, manifest):
    from minidiff.files import sha256sum
    (folder / "ddpm_mnist.safetensors").write_bytes(b"\xff" * 64)
    manifest["ddpm_mnist"]["sha256"] = sha256sum(folder / "ddpm_mnist.safetensors")


def _stale_hash(folder, manifest):
    import shutil

    from minidiff.files import project_dir
    shipped = project_dir() / "data" / "checkpoints" / "ddpm_mnist.safetensors"
    shutil.copyfile(shipped, folder / "ddpm_mnist.safetensors")
    manifest["ddpm_mnist"]["sha256"] = "0" * 64


def _run_checkpoint(tmp, tensors: bytes, config=None, sha256=None):
    """A training checkpoint of ``mnist_classifier`` in ``tmp/runs`` as a crash or an edit left it."""
    from minidiff.files import sha256sum
    folder = tmp / "runs" / "mnist_classifier"
    folder.mkdir(parents=True)
    (folder / "checkpoint-00000500.safetensors").write_bytes(tensors)
    state = {"step": 500, "tensors": "checkpoint-00000500.safetensors", "config": config or {},
             "sha256": sha256 or sha256sum(folder / "checkpoint-00000500.safetensors")}
    (folder / "checkpoint.json").write_text(json.dumps(state))


def _valid_tensors():
    from safetensors.torch import save
    return save({"model.weight": torch.zeros(2)})


def _no_cuda(tmp, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


BAD_INPUT = [  # (case, argv with {tmp} for the temporary folder, setup(tmp, monkeypatch), expected line, exit code)
    ("--out names the tensors file", ["sample", "mnist", "--out", "{tmp}/x.safetensors"], None,
     r"give the picture's file name, ending in \.png; the tensors are written beside it as x\.safetensors", None),
    ("--out in a folder that cannot be made", ["sample", "mnist", "--out", "/proc/no/such/x.png"], None,
     r"cannot create the folder /proc/no/such", None),
    ("-n 0", ["sample", "mnist", "-n", "0", "--out", "{tmp}/s.png"], None, r"argument -n: 0 is out of range", 2),
    ("-n -3", ["sample", "mnist", "-n", "-3", "--out", "{tmp}/s.png"], None, r"argument -n: -3 is out of range", 2),
    ("-n more than the test set", ["sample", "mnist", "-n", "20000", "--out", "{tmp}/s.png"], None,
     r"the test set has 10,000 pictures: ask for at most that many", None),
    ("--steps 0", ["sample", "ddpm_mnist", "--steps", "0", "--out", "{tmp}/s.png"], None,
     r"argument --steps: 0 is out of range", 2),
    ("--steps x", ["sample", "ddpm_mnist", "--steps", "x", "--out", "{tmp}/s.png"], None,
     r"argument --steps: 'x' is not a whole number", 2),
    ("--guidance on an unconditional model", ["sample", "ddpm_mnist", "--guidance", "3", "-n", "2",
                                              "--out", "{tmp}/s.png"], None,
     r"ddpm_mnist is unconditional: guidance needs a class-conditional model \(ddpm_mnist_cond\)", None),
    ("train --steps 0", ["train", "ddpm_mnist", "--steps", "0"], None, r"argument --steps: 0 is out of range", 2),
    ("train --steps -5", ["train", "ddpm_mnist", "--steps", "-5"], None, r"argument --steps: -5 is out of range", 2),
    ("train --device gpu", ["train", "mnist_classifier", "--device", "gpu"], None,
     r"unknown device 'gpu'; choose one of auto, cpu, cuda, mps", None),
    ("train --device cuda without a GPU", ["train", "mnist_classifier", "--device", "cuda"], _no_cuda,
     r"--device cuda: this machine has no CUDA GPU .*use --device cpu or auto", None),
    ("train --fast --steps",
     ["train", "ddpm_mnist", "--fast", "--steps", "50"], None, r"--fast is a smoke run of a few steps, never shipped",
     None),
    ("train --from-shipped on a fixed-length recipe", ["train", "mnist_classifier", "--from-shipped"], None,
     r"recipe 'mnist_classifier' has a fixed length; --from-shipped is for the diffusion recipes", None),
    ("train --from-shipped to no more steps than shipped", ["train", "ddpm_mnist", "--from-shipped", "--steps",
                                                            "31000"], None,
     r"have 31,000 steps already: ask for more \(e\.g\. --steps 36000\)", None),
    ("resume a training checkpoint with a flipped byte", ["train", "mnist_classifier"],
     lambda tmp, mp: _run_checkpoint(tmp, _valid_tensors(), sha256="1" * 64),
     r"checkpoint-00000500\.safetensors is corrupt: sha256 .* Delete .*mnist_classifier to start over", None),
    ("resume a training checkpoint that is not safetensors", ["train", "mnist_classifier"],
     lambda tmp, mp: _run_checkpoint(tmp, b"\x00" * 40),
     r"checkpoint-00000500\.safetensors is damaged .* Delete .*mnist_classifier to start over", None),
    ("resume a checkpoint trained with other settings", ["train", "mnist_classifier"],
     lambda tmp, mp: _run_checkpoint(tmp, _valid_tensors(), config={"lr": 0.5}),
     r"holds a checkpoint trained with other settings \(.*lr: 0\.5 → .*Delete that folder", None),
    ("a shipped file that is not safetensors but matches its hash", ["sample", "ddpm_mnist", "--out", "{tmp}/s.png"],
     lambda tmp, mp: _shipped_copy(tmp, mp, _not_safetensors_with_its_hash),
     r"matches the manifest's sha256 but is not a safetensors file .*the manifest entry is wrong", None),
    ("a manifest entry whose hash is stale", ["sample", "ddpm_mnist", "--out", "{tmp}/s.png"],
     lambda tmp, mp: _shipped_copy(tmp, mp, _stale_hash),
     r"is corrupt: sha256 .*The file or its manifest entry changed: restore the file and its manifest", None),
    ("a truncated MNIST file", ["sample", "mnist", "--out", "{tmp}/s.png"],
     lambda tmp, mp: (_shipped_copy(tmp, mp), (tmp / "data/mnist/t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b")),
     r"t10k-images-idx3-ubyte\.gz is (corrupt|not a readable gzip file)", None),
    ("evaluate a file that is not there", ["evaluate", "{tmp}/missing.safetensors"], None,
     r"missing\.safetensors does not exist: make it with `python -m minidiff sample", None),
    ("evaluate pictures in [0, 1]", ["evaluate", "{tmp}/s.safetensors"],
     lambda tmp, mp: _samples(tmp / "s.safetensors", (_digits(50) + 1) / 2),
     r"pixels run from .* but the protocol scores pictures in \[-1, 1\].*2·x − 1", None),
    ("evaluate one picture", ["evaluate", "{tmp}/s.safetensors"],
     lambda tmp, mp: _samples(tmp / "s.safetensors", _digits(1)), r"holds 1 picture\(s\): FID needs at least 2", None),
    ("evaluate NaN pictures", ["evaluate", "{tmp}/s.safetensors"],
     lambda tmp, mp: _samples(tmp / "s.safetensors", _digits(4) * float("nan")), r"NaN or infinite pixels", None),
    ("evaluate mismatched labels", ["evaluate", "{tmp}/s.safetensors"],
     lambda tmp, mp: _samples(tmp / "s.safetensors", _digits(5), torch.arange(3)),
     r"\(3,\) labels for 5 pictures", None),
    ("finetune an empty folder", ["finetune", "{tmp}/pics", "--word", "heart"], lambda tmp, mp: (tmp / "pics").mkdir(),
     r"pics holds no PNG or JPEG pictures: put 5 to 10 pictures of the new heart in it", None),
    ("finetune a folder that is not there", ["finetune", "{tmp}/none", "--word", "heart"], None,
     r"none is not a folder", None),
    ("finetune pictures of mixed sizes", ["finetune", "{tmp}/pics", "--word", "heart"],
     lambda tmp, mp: _pictures(tmp / "pics", [64, 64, 32]), r"mixed sizes \(a0\.png is 64×64, a2\.png is 32×32\)", None),
    ("finetune with a caption that lacks the word", ["finetune", "{tmp}/pics", "--word", "heart"],
     lambda tmp, mp: (_pictures(tmp / "pics", [64, 64]), (tmp / "pics/a1.txt").write_text("a red circle\n")),
     r"a1\.txt has a caption without the word 'heart' \(a red circle\)", None),
    ("finetune two words", ["finetune", "{tmp}/pics", "--word", "red heart"],
     lambda tmp, mp: _pictures(tmp / "pics", [64]), r"a new word is one word of letters", None),
    ("finetune --out not safetensors", ["finetune", "{tmp}/pics", "--word", "heart", "--out", "{tmp}/a.png"],
     lambda tmp, mp: _pictures(tmp / "pics", [64]), r"an adapter is a \.safetensors file", None),
    ("finetune --rank 0", ["finetune", "{tmp}/pics", "--word", "heart", "--rank", "0"], None,
     r"argument --rank: 0 is out of range", 2),
    ("generate --lora with no such file", ["generate", "a heart", "--lora", "{tmp}/x.safetensors", "--out",
                                           "{tmp}/g.png"], None, r"x\.safetensors does not exist", None),
    ("generate --lora for another base model", ["generate", "a heart", "--lora", "{tmp}/h.safetensors", "--model",
                                                "t2i_mnist", "--out", "{tmp}/g.png"],
     lambda tmp, mp: _adapter(tmp / "h.safetensors"), r"teaches t2i_shapes, not t2i_mnist", None),
    ("generate --lora trained beside other weights", ["generate", "a heart", "--lora", "{tmp}/h.safetensors",
                                                      "--out", "{tmp}/g.png"],
     lambda tmp, mp: _adapter(tmp / "h.safetensors", base_sha256="0" * 64), r"trained beside other t2i_shapes", None),
    ("generate --lora-scale 2", ["generate", "a heart", "--lora", "{tmp}/h.safetensors", "--lora-scale", "2"], None,
     r"argument --lora-scale: 2(\.0)? is out of range: use 0 to 1", 2),
]


def _pictures(folder, sizes):
    from PIL import Image
    folder.mkdir()
    for k, size in enumerate(sizes):
        Image.new("RGB", (size, size), "white").save(folder / f"a{k}.png")


def _adapter(path, **metadata):
    """A word-only adapter file for t2i_shapes (its metadata changed by ``metadata``)."""
    from minidiff.files import save_safetensors_atomic
    from minidiff.weights import read_manifest
    tags = {"format": "minidiff adapter", "method": "word", "rank": "0", "words": '["heart"]', "base": "t2i_shapes",
            "base_sha256": read_manifest()["t2i_shapes"]["sha256"], **metadata}
    save_safetensors_atomic({"words.rows": torch.zeros(1, 128)}, path, tags)


@pytest.mark.parametrize("case, argv, setup, line, code", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_one_clear_line_and_changes_nothing(case, argv, setup, line, code, tmp_path, capsys,
                                                         monkeypatch):
    from minidiff.files import project_dir

    def files(folder):  # every file's bytes (a run folder's lock file is how a training owns it, not data)
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}

    shipped = files(project_dir() / "data")
    monkeypatch.setenv("MINIDIFF_RUNS", str(tmp_path / "runs"))
    if setup:
        setup(tmp_path, monkeypatch)
    before = files(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([a.format(tmp=tmp_path) for a in argv])
    message = str(exit_.value.code) if code is None else capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(line, message), message
    assert (exit_.value.code == code) if code is not None else message.startswith("error: ")
    assert "\n" not in message and "Traceback" not in message
    assert files(tmp_path) == before
    assert files(project_dir() / "data") == shipped


def test_evaluating_fewer_pictures_than_the_protocol_says_fid_is_biased(tmp_path, capsys):
    real, _ = sources()["mnist"](300, 0)
    main(["evaluate", _samples(tmp_path / "s.safetensors", real)])
    assert "FID is biased upwards at small counts" in capsys.readouterr().err


def test_training_never_ships_unless_asked_and_shipping_needs_a_trained_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_RUNS", str(tmp_path))
    with pytest.raises(SystemExit, match="--fast is a smoke run of a few steps, never shipped"):
        main(["train", "mnist_classifier", "--fast", "--ship"])
    with pytest.raises(SystemExit, match=r"No trained ddpm_mnist in .*ddpm_mnist: train it first"):
        main(["ship", "ddpm_mnist"])


@pytest.mark.slow
def test_a_fresh_clone_trains_the_shipped_model_on(tmp_path, monkeypatch, capsys):
    """No runs/ folder (a fresh clone): ``--from-shipped`` continues the shipped 31,000 steps, and the
    run's manifest entry says so — steps, the command, where every stretch trained, what it started
    from. (The protocol's 2,000 samples are cut to 100 here: the figure is not what is tested.)"""
    from minidiff.course.recipes import ddpm
    from minidiff.weights import checkpoints_dir, read_manifest
    monkeypatch.setenv("MINIDIFF_RUNS", str(tmp_path))
    monkeypatch.setattr(ddpm, "PROTOCOL_SAMPLES", 100)
    shipped = read_manifest()["ddpm_mnist"]
    before = (checkpoints_dir() / "ddpm_mnist.safetensors").read_bytes()
    main(["train", "ddpm_mnist", "--from-shipped", "--steps", f"{shipped['steps'] + 2}", "--device", "cpu"])
    entry = read_manifest(tmp_path / "ddpm_mnist")["ddpm_mnist"]
    assert entry["steps"] == shipped["steps"] + 2
    steps = shipped["steps"] + 2
    assert entry["recipe"] == f"python -m minidiff train ddpm_mnist --steps {steps} --from-shipped --ship"
    assert entry["started_from"] == {"sha256": shipped["sha256"], "step": shipped["steps"]}
    assert entry["segments"][:-1] == shipped["segments"]
    assert entry["segments"][-1]["steps"] == [shipped["steps"] + 1, shipped["steps"] + 2]
    assert entry["metrics"]["loss_curve"][-1][1] < 0.05  # a trained model's loss (from scratch: about 0.33)
    assert "the shipped weights are unchanged" in capsys.readouterr().err
    assert (checkpoints_dir() / "ddpm_mnist.safetensors").read_bytes() == before
