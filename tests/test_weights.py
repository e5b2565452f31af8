import json
import os
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from minidiff import resume, weights
from minidiff.devices import hardware_description
from minidiff.files import DataError, save_safetensors_atomic, write_json_atomic
from minidiff.resume import log_segment
from minidiff.weights import describe_segments, load_pretrained, read_manifest, record_metrics, save_weights


@dataclass
class NetConfig:
    width: int = 8
    sizes: tuple = (1, 2)


class Net(nn.Module):
    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        self.layer = nn.Linear(3, config.width)
        self.norm = nn.BatchNorm1d(config.width)


@dataclass
class OtherConfig:
    width: int = 8


class Other(nn.Module):
    def __init__(self, config: OtherConfig):
        super().__init__()
        self.config = config
        self.layer = nn.Linear(3, config.width)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The test models join the registry of model classes, as a chapter's model would."""
    monkeypatch.setitem(weights.MODELS, "Net", (Net, NetConfig))
    monkeypatch.setitem(weights.MODELS, "Other", (Other, OtherConfig))


def save(model, name, directory):
    return save_weights(model, name, directory=directory, recipe=f"python -m minidiff train {name}",
                        data="random", steps=3, wall_time_s=1.25, hardware="test rig", metrics={"acc": 0.5})


def test_round_trip(tmp_path):
    model = Net(NetConfig(width=4))
    nn.init.normal_(model.layer.weight)
    path = save(model, "net", tmp_path)
    save(Other(OtherConfig()), "other", tmp_path)

    loaded = load_pretrained("net", directory=tmp_path)  # the manifest says which class and config
    assert isinstance(loaded, Net) and not loaded.training and loaded.config == NetConfig(4, [1, 2])
    assert isinstance(load_pretrained("other", directory=tmp_path), Other)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])

    entry = read_manifest(tmp_path)["net"]
    assert entry["file"] == "net.safetensors" and entry["model"] == "Net"
    assert entry["config"] == {"width": 4, "sizes": [1, 2]}
    assert entry["recipe"] == "python -m minidiff train net" and entry["metrics"] == {"acc": 0.5}
    assert {"sha256", "data", "steps", "wall_time_s", "hardware", "created"} <= entry.keys()
    assert set(read_manifest(tmp_path)) == {"net", "other"}
    assert load_file(path).keys() == model.state_dict().keys()  # plain safetensors, no pickle

    before = read_manifest(tmp_path)
    assert record_metrics("net", {"fid": 3.5}, directory=tmp_path) == {"acc": 0.5, "fid": 3.5}
    after = read_manifest(tmp_path)
    assert after["net"] == {**entry, "metrics": {"acc": 0.5, "fid": 3.5}} and after["other"] == before["other"]
    load_pretrained("net", directory=tmp_path)  # the weights' hash still matches
    with pytest.raises(DataError, match="ship it first"):
        record_metrics("nope", {"fid": 1.0}, directory=tmp_path)


def test_unknown_name_lists_available(tmp_path):
    save(Net(NetConfig()), "net", tmp_path)
    with pytest.raises(DataError, match=r"'vae'.*manifest\.json.*available: net.*python -m minidiff train vae"):
        load_pretrained("vae", directory=tmp_path)


def test_missing_file_names_recipe(tmp_path):
    save(Net(NetConfig()), "net", tmp_path).unlink()
    with pytest.raises(DataError, match=r"net\.safetensors is missing.*python -m minidiff train net"):
        load_pretrained("net", directory=tmp_path)


def test_corrupt_file(tmp_path):
    path = save(Net(NetConfig()), "net", tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"net\.safetensors is corrupt.*file or its manifest entry changed.*"
                                        r"git checkout.*python -m minidiff train net"):
        load_pretrained("net", directory=tmp_path)


def test_a_file_and_its_manifest_entry_must_agree_on_the_class(tmp_path, monkeypatch):
    save(Other(OtherConfig()), "other", tmp_path)
    manifest = read_manifest(tmp_path)
    manifest["other"]["model"] = "Net"
    write_json_atomic(manifest, tmp_path / "manifest.json")
    with pytest.raises(DataError, match=r"other\.safetensors holds a Other, but the manifest says Net"):
        load_pretrained("other", directory=tmp_path)
    manifest["other"]["model"] = "Other"
    write_json_atomic(manifest, tmp_path / "manifest.json")
    monkeypatch.delitem(weights.MODELS, "Other")
    with pytest.raises(DataError, match=r"holds a Other, which this version of minidiff does not know"):
        load_pretrained("other", directory=tmp_path)


def test_a_model_outside_the_registry_cannot_be_shipped(tmp_path, monkeypatch):
    monkeypatch.delitem(weights.MODELS, "Other")
    with pytest.raises(TypeError, match="add it, with its config dataclass, to minidiff.weights.MODELS"):
        save(Other(OtherConfig()), "other", tmp_path)


def test_config_mismatch(tmp_path):
    save(Net(NetConfig()), "net", tmp_path)
    manifest = read_manifest(tmp_path)
    manifest["net"]["config"]["width"] = 16
    write_json_atomic(manifest, tmp_path / "manifest.json")
    with pytest.raises(DataError, match=r"net\.safetensors was saved with config"):
        load_pretrained("net", directory=tmp_path)


def test_state_dict_mismatch(tmp_path, monkeypatch):
    save(Net(NetConfig()), "net", tmp_path)

    class Changed(nn.Module):  # the code changed since the file was saved
        def __init__(self, config: NetConfig):
            super().__init__()
            self.layer = nn.Linear(5, config.width)

    monkeypatch.setitem(weights.MODELS, "Net", (Changed, NetConfig))
    with pytest.raises(DataError, match=r"net\.safetensors does not fit Net.*layer\.weight is \(8, 3\).*"
                                        r"unexpected norm"):
        load_pretrained("net", directory=tmp_path)


def test_atomic_write_keeps_old_file_when_rename_fails(tmp_path, monkeypatch):
    path = save_safetensors_atomic({"x": torch.zeros(2)}, tmp_path / "w.safetensors")
    write_json_atomic({"a": 1}, tmp_path / "m.json")

    def fail(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        save_safetensors_atomic({"x": torch.ones(2)}, path)
    with pytest.raises(OSError):
        write_json_atomic({"a": 2}, tmp_path / "m.json")
    assert torch.equal(load_file(path)["x"], torch.zeros(2))
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "w.safetensors"]  # no temp files left


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    path = save_safetensors_atomic({"x": torch.zeros(2)}, tmp_path / "w.safetensors")
    with pytest.raises(Exception):
        save_safetensors_atomic({"x": torch.ones(2)}, path, metadata={"not": 1})  # metadata must be str
    assert torch.equal(load_file(path)["x"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_optimizer_and_rng_state_round_trip():
    param = nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(3)
    opt.step()
    tensors, saved = resume.optimizer_state(opt, "optimizer.x")
    saved = json.loads(json.dumps(saved))  # as it comes back from checkpoint.json
    copy = torch.optim.AdamW([nn.Parameter(param.detach().clone())], lr=0.5)
    resume.load_optimizer_state(copy, tensors, saved, "optimizer.x")
    assert copy.param_groups[0]["lr"] == 0.1
    for key, value in opt.state[param].items():
        assert torch.equal(value, copy.state[copy.param_groups[0]["params"][0]][key])

    rng_tensors, rng = resume.rng_state()
    expected = (torch.rand(2), random.random(), np.random.rand())
    resume.set_rng_state(rng_tensors, json.loads(json.dumps(rng)))
    assert torch.equal(torch.rand(2), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]


def test_rng_state_from_a_gpu_run_resumes_on_cpu(monkeypatch):
    """A checkpoint written on a GPU carries the CUDA generator too; resuming on a CPU restores the
    CPU generator and leaves CUDA alone (on a machine with a GPU it would initialise CUDA for nothing)."""
    def no_cuda(*args):
        raise AssertionError("resuming on the CPU touched the CUDA generator")
    monkeypatch.setattr(torch.cuda, "set_rng_state", no_cuda)
    rng_tensors, rng = resume.rng_state()
    expected = torch.rand(3)
    gpu_tensors = rng_tensors | {"cuda": torch.zeros(16, dtype=torch.uint8)}  # as saved on a GPU
    resume.set_rng_state(gpu_tensors, json.loads(json.dumps(rng)), "cpu")
    assert torch.equal(torch.rand(3), expected)


def test_hardware_description():
    assert f"torch {torch.__version__}" in hardware_description()
    assert hardware_description("cpu").startswith(f"{os.cpu_count()}-core CPU")
    assert hardware_description("cpu", world=4).startswith("4x ")


def test_describe_segments_names_each_machine_with_its_steps():
    log = log_segment([], 1, 8000, "laptop", 7000.04)
    assert log_segment(log, 8001, 8000, "laptop", 3.0) == log  # a resume that trains nothing adds nothing
    assert describe_segments(log_segment(log, 8001, 9000, "laptop", 900)) == "laptop"
    log = log_segment(log_segment(log, 8001, 15000, "GPU", 269), 15001, 15500, "laptop", 500)
    assert log[0] == {"steps": [1, 8000], "hardware": "laptop", "wall_time_s": 7000.0}
    assert describe_segments(log) == ("laptop: steps 1–8,000 (7,000 s); GPU: steps 8,001–15,000 (269 s); "
                                      "laptop: steps 15,001–15,500 (500 s)")
    merged = log_segment(log_segment(log[:2], 15001, 16000, "GPU", 31), 16001, 17000, "GPU", 30)
    assert describe_segments(merged) == "laptop: steps 1–8,000 (7,000 s); GPU: steps 8,001–17,000 (330 s)"


def test_a_file_that_matches_its_hash_but_is_no_safetensors_is_blamed_on_the_manifest(tmp_path):
    from minidiff.files import sha256sum
    save(Net(NetConfig()), "net", tmp_path)
    (tmp_path / "net.safetensors").write_bytes(b"\xff" * 64)  # not safetensors at all
    manifest = read_manifest(tmp_path)
    manifest["net"]["sha256"] = sha256sum(tmp_path / "net.safetensors")
    write_json_atomic(manifest, tmp_path / "manifest.json")
    with pytest.raises(DataError, match=r"matches the manifest's sha256 but is not a safetensors file"):
        load_pretrained("net", directory=tmp_path)


def trained(directory, accuracy, width=8):
    """What a recipe leaves in its run folder: the model and the entry it would ship with."""
    model = Net(NetConfig(width=width))
    save_weights(model, "net", directory=directory, recipe="python -m minidiff train net --ship", data="random",
                 steps=int(accuracy * 100), wall_time_s=1.0, hardware="test rig", metrics={"acc": accuracy},
                 better=("acc", "higher"))
    return model


def test_shipping_refuses_a_worse_model_unless_forced_and_keeps_what_it_replaces(tmp_path):
    runs, shipped = tmp_path / "runs", tmp_path / "checkpoints"
    trained(runs / "good", 0.9)
    weights.ship("net", runs / "good", directory=shipped)
    good = (shipped / "net.safetensors").read_bytes()
    trained(runs / "worse", 0.5, width=4)
    with pytest.raises(DataError, match=r"Refusing to replace the shipped net \(acc 0.9, 90 steps\) with one that "
                                        r"measures worse \(acc 0.5, 50 steps\).*--force"):
        weights.ship("net", runs / "worse", directory=shipped)
    assert (shipped / "net.safetensors").read_bytes() == good and read_manifest(shipped)["net"]["steps"] == 90
    entry = weights.ship("net", runs / "worse", force=True, directory=shipped)
    assert entry["previous"]["metrics"] == {"acc": 0.9} and entry["previous"]["steps"] == 90
    assert load_pretrained("net", directory=shipped).config.width == 4
    with pytest.raises(DataError, match=r"No trained net in .*train it first"):
        weights.ship("net", runs / "nothing", directory=shipped)


MANIFEST_WRITER = """
import sys
from minidiff.weights import record_metrics
for i in range(40):
    record_metrics("net", {f"{sys.argv[2]}-{i}": i}, directory=sys.argv[1])
"""


def test_two_processes_writing_one_manifest_lose_no_update(tmp_path):
    import subprocess
    import sys
    save(Net(NetConfig()), "net", tmp_path)
    writers = [subprocess.Popen([sys.executable, "-c", MANIFEST_WRITER, str(tmp_path), name]) for name in "ab"]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    recorded = read_manifest(tmp_path)["net"]["metrics"]
    assert {f"{name}-{i}" for name in "ab" for i in range(40)} <= recorded.keys()


def test_a_deleted_manifest_and_a_file_minidiff_did_not_write_get_the_right_advice(tmp_path):
    from safetensors.torch import save_file
    save(Net(NetConfig()), "net", tmp_path)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "net.safetensors"))  # no minidiff metadata
    manifest = read_manifest(tmp_path)
    from minidiff.files import sha256sum
    manifest["net"]["sha256"] = sha256sum(tmp_path / "net.safetensors")
    write_json_atomic(manifest, tmp_path / "manifest.json")
    with pytest.raises(DataError, match=r"was not saved by minidiff \(its metadata names no model\)"):
        load_pretrained("net", directory=tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json is missing: restore it with `git checkout"):
        load_pretrained("net", directory=tmp_path)


# ----------------------------------------------------------------------------- companion files


def tokenizer(vocab=300):
    from minidiff.models.tokenizer import train_bpe
    return train_bpe(["a red circle", "a blue square", "a red square", "两个红色圆形"] * 3, vocab_size=vocab)


def trained_clip(directory, accuracy, text=None, seed=0):
    """What a CLIP recipe leaves in its run folder: the weights, the tokenizer beside them, the entry."""
    from minidiff.models.clip import CLIP, CLIPConfig
    text = text or tokenizer()
    torch.manual_seed(seed)
    model = CLIP(CLIPConfig(vocab_size=text.vocab_size, pad_id=text.pad_id, end_id=text.end_id, context_length=8,
                            text_width=8, text_layers=1, text_heads=2, image_size=8, channels=(8,), groups=4,
                            embed_dim=4))
    save_weights(model, "clip", directory=directory, recipe="python -m minidiff train clip --ship", data="captions",
                 steps=int(accuracy * 100), wall_time_s=1.0, hardware="test rig", metrics={"acc": accuracy},
                 better=("acc", "higher"), companions={"tokenizer.json": text.save})
    return model, text


def test_a_companion_file_is_saved_shipped_and_loaded_with_its_weights(tmp_path):
    runs, shipped = tmp_path / "runs", tmp_path / "checkpoints"
    model, text = trained_clip(runs, 0.9)
    entry = read_manifest(runs)["clip"]
    from minidiff.files import sha256sum
    assert entry["companions"] == {"tokenizer.json": {"file": "clip.tokenizer.json",
                                                      "sha256": sha256sum(runs / "clip.tokenizer.json")}}
    weights.ship("clip", runs, directory=shipped)
    assert (shipped / "clip.tokenizer.json").read_bytes() == (runs / "clip.tokenizer.json").read_bytes()
    assert read_manifest(shipped)["clip"]["companions"] == entry["companions"]
    assert weights.companion_path("clip", "tokenizer.json", directory=shipped) == shipped / "clip.tokenizer.json"
    loaded, loaded_text = weights.load_clip("clip", directory=shipped)
    assert loaded.config == model.config and loaded_text.merges == text.merges
    ids = text(["a red circle"], 8)
    assert torch.equal(loaded.encode_text(ids), model.eval().encode_text(ids))
    assert sorted(p.name for p in shipped.iterdir() if not p.name.startswith(".")) == [
        "clip.safetensors", "clip.tokenizer.json", "manifest.json"]


def test_a_worse_model_ships_neither_its_weights_nor_its_tokenizer(tmp_path):
    runs, shipped = tmp_path / "runs", tmp_path / "checkpoints"
    trained_clip(runs / "good", 0.9)
    weights.ship("clip", runs / "good", directory=shipped)
    before = {p.name: p.read_bytes() for p in shipped.iterdir() if p.suffix != ".lock"}
    trained_clip(runs / "worse", 0.5, text=tokenizer(280), seed=1)
    with pytest.raises(DataError, match="Refusing to replace the shipped clip"):
        weights.ship("clip", runs / "worse", directory=shipped)
    assert {p.name: p.read_bytes() for p in shipped.iterdir() if p.suffix != ".lock"} == before
    weights.ship("clip", runs / "worse", force=True, directory=shipped)
    assert weights.load_clip("clip", directory=shipped)[1].vocab_size == 280


def test_a_run_whose_tokenizer_changed_is_not_shipped(tmp_path):
    runs, shipped = tmp_path / "runs", tmp_path / "checkpoints"
    trained_clip(runs, 0.9)
    (runs / "clip.tokenizer.json").write_text("{}")
    with pytest.raises(DataError, match=r"clip\.tokenizer\.json is corrupt.*python -m minidiff train clip"):
        weights.ship("clip", runs, directory=shipped)
    assert not shipped.exists() or not any(shipped.glob("clip*"))


def test_a_missing_or_altered_tokenizer_is_one_data_error_saying_what_to_do(tmp_path):
    trained_clip(tmp_path, 0.9)
    path = tmp_path / "clip.tokenizer.json"
    good = path.read_text()
    path.write_text(good.replace("[", "[ ", 1))  # the same merges, other bytes: still refused
    with pytest.raises(DataError, match=r"clip\.tokenizer\.json is corrupt.*changed: restore.*git checkout.*"
                                        r"python -m minidiff train clip") as error:
        weights.load_clip("clip", directory=tmp_path)
    assert "\n" not in str(error.value)
    path.unlink()
    with pytest.raises(DataError, match=r"clip\.tokenizer\.json is missing.*git checkout"):
        weights.load_clip("clip", directory=tmp_path)
    path.write_text(good)
    manifest = read_manifest(tmp_path)
    del manifest["clip"]["companions"]
    write_json_atomic(manifest, tmp_path / "manifest.json")
    with pytest.raises(DataError, match=r"lists no tokenizer\.json.*python -m minidiff train clip"):
        weights.load_clip("clip", directory=tmp_path)


def test_only_a_clip_loads_as_a_clip(tmp_path):
    save(Net(NetConfig()), "net", tmp_path)
    with pytest.raises(DataError, match="net is a Net, not a CLIP"):
        weights.load_clip("net", directory=tmp_path)
