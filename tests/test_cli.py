import json

import numpy as np
import pytest
import torch
from PIL import Image

from minidiff.__main__ import main
from minidiff.download import DataError
from minidiff.generators import GENERATORS, load_samples, save_samples


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
        a, _ = GENERATORS[name](4, 1)
        b, _ = GENERATORS[name](4, 1)
        c, _ = GENERATORS[name](4, 2)
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_evaluate_refuses_what_it_cannot_score(tmp_path):
    save_samples(torch.zeros(2, 3, 32, 32), None, tmp_path / "colour.png")
    with pytest.raises(DataError, match="digits"):
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


def test_demo_sheet(tmp_path):
    from minidiff.demo import PANELS, make_demo
    path = make_demo(tmp_path / "demo.png")
    picture = np.asarray(Image.open(path))
    assert picture.shape[1] > 800 and picture.shape[0] > 100 * len(PANELS)
    assert not list(tmp_path.glob("partial-*"))


def test_shipped_generative_models_can_be_sampled_and_scored(tmp_path, capsys):
    main(["sample", "vae_mnist", "-n", "300", "--out", str(tmp_path / "vae.png")])
    capsys.readouterr()
    main(["evaluate", str(tmp_path / "vae.safetensors")])
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 300 and report["fid"] < 500 and min(report["class_histogram"]) > 0
    images, _ = GENERATORS["dcgan_mnist"](8, 0)
    assert images.shape == (8, 1, 28, 28) and torch.equal(images, GENERATORS["dcgan_mnist"](8, 0)[0])
