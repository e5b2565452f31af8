import json
import math
import os
import runpy
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from minidiff import resume
from minidiff.files import DataError
from minidiff.train import TrainConfig, batch_indices, ema_decay_at, ema_update, lr_at, train
from minidiff.weights import describe_segments


@pytest.fixture(autouse=True)
def _tiny_models(one_thread):
    """Tiny models run fastest on one thread (``conftest.one_thread``)."""


def tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x @ torch.randn(4, 2, generator=g))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def noisy_loss(model, batch):
    """Dropout and fresh noise: both draw from the global torch RNG, so resume must restore it."""
    x, y = batch
    pred = model(x + 0.1 * torch.randn_like(x))
    return {"loss": F.mse_loss(pred, y), "mae": (pred - y).abs().mean()}


def config(**kw):
    defaults = dict(steps=20, batch_size=16, lr=1e-2, warmup_steps=3, ema_decay=0.9, device="cpu",
                    log_every=5, progress=False)
    return TrainConfig(**{**defaults, **kw})


def optimizer_tensors(out_dir):
    tensors, _ = resume.load_checkpoint(out_dir)
    return {k: v for k, v in tensors.items() if k.startswith("optimizer.")}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Stop(Exception):
    pass


def stop(state):
    raise Stop


def test_resume_is_bit_identical(tmp_path):
    straight = train(tiny_model(), noisy_loss, tiny_data(), config(out_dir=str(tmp_path / "a")))

    with pytest.raises(Stop):  # a "crash" right after the step-10 checkpoint
        train(tiny_model(), noisy_loss, tiny_data(),
              config(out_dir=str(tmp_path / "b"), checkpoint_every=10), callbacks=[(10, stop)])
    torch.manual_seed(1234)  # the resumed run must not depend on the RNG state it finds
    resumed = train(tiny_model(seed=99), noisy_loss, tiny_data(),
                    config(out_dir=str(tmp_path / "b"), checkpoint_every=10), resume=True)

    assert resumed.steps == straight.steps == 20
    assert_same(straight.model.state_dict(), resumed.model.state_dict())
    assert_same(straight.ema.state_dict(), resumed.ema.state_dict())
    assert_same(optimizer_tensors(tmp_path / "a"), optimizer_tensors(tmp_path / "b"))
    assert [h["step"] for h in resumed.history] == [5, 10, 15, 20]
    assert resumed.history == [{**h, "images_per_s": r["images_per_s"]}
                               for h, r in zip(straight.history, resumed.history)]
    assert [seg["steps"] for seg in resumed.segments] == [[1, 10], [11, 20]]  # where the steps ran
    assert straight.segments[0]["hardware"] == resumed.segments[1]["hardware"] == describe_segments(resumed.segments)
    assert "CPU" in resumed.segments[0]["hardware"] and resumed.segments[0]["hardware"].endswith("fp32")


def test_a_checkpoint_from_before_the_hardware_log_resumes_with_its_steps_marked_unknown(tmp_path):
    train(tiny_model(), noisy_loss, tiny_data(), config(steps=4, out_dir=str(tmp_path)))
    state = json.loads((tmp_path / "checkpoint.json").read_text())
    del state["segments"]
    (tmp_path / "checkpoint.json").write_text(json.dumps(state))
    resumed = train(tiny_model(), noisy_loss, tiny_data(), config(steps=6, out_dir=str(tmp_path)), resume=True)
    assert [(seg["steps"], seg["hardware"]) for seg in resumed.segments][0] == ([1, 4], "not recorded")
    assert resumed.segments[1]["steps"] == [5, 6]


def test_resume_refuses_a_changed_recipe(tmp_path):
    train(tiny_model(), noisy_loss, tiny_data(), config(steps=2, out_dir=str(tmp_path)))
    with pytest.raises(DataError, match=r"other settings \(lr: 0.01 → 0.5\).*Delete that folder"):
        train(tiny_model(), noisy_loss, tiny_data(), config(steps=4, lr=0.5, out_dir=str(tmp_path)), resume=True)


def test_resume_refuses_another_model_and_a_damaged_checkpoint(tmp_path):
    train(tiny_model(), noisy_loss, tiny_data(), config(steps=2, out_dir=str(tmp_path)))
    wider = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))
    with pytest.raises(DataError, match=r"holds a checkpoint of another model \(size mismatch for 0.weight"):
        train(wider, noisy_loss, tiny_data(), config(steps=4, out_dir=str(tmp_path)), resume=True)
    tensors = tmp_path / "checkpoint-00000002.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])  # cut short, as a full disk would
    with pytest.raises(DataError, match=r"checkpoint-00000002.safetensors is corrupt.*Delete"):
        train(tiny_model(), noisy_loss, tiny_data(), config(steps=4, out_dir=str(tmp_path)), resume=True)


def test_checkpoint_files_hold_no_pickle(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", None)  # any torch.save call would fail
    train(tiny_model(), noisy_loss, tiny_data(), config(steps=4, out_dir=str(tmp_path), checkpoint_every=2))
    state = json.loads((tmp_path / "checkpoint.json").read_text())
    assert state["step"] == 4 and state["tensors"] == "checkpoint-00000004.safetensors"
    tensors = load_file(tmp_path / state["tensors"])
    assert tensors["rng.0.torch"].dtype == torch.uint8
    assert {"model.0.weight", "ema.0.weight", "optimizer.model.0.exp_avg"} <= tensors.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "checkpoint-00000004.safetensors",
                                                          "checkpoint.json"]  # .lock: the run folder's owner


def test_crash_between_tensors_and_json_keeps_previous_checkpoint(tmp_path, monkeypatch):
    train(tiny_model(), noisy_loss, tiny_data(), config(steps=2, out_dir=str(tmp_path)))

    def crash(obj, path):
        raise OSError("disk full")

    monkeypatch.setattr(resume, "write_json_atomic", crash)
    with pytest.raises(OSError):
        train(tiny_model(), noisy_loss, tiny_data(), config(steps=4, out_dir=str(tmp_path)), resume=True)
    tensors, state = resume.load_checkpoint(tmp_path)
    assert state["step"] == 2 and state["tensors"] == "checkpoint-00000002.safetensors"
    assert "model.0.weight" in tensors


def test_lr_schedule_end_points():
    c = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(99, c) == pytest.approx(0.1)
    assert lr_at(54, c) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 44 / 89)))
    lrs = [lr_at(s, c) for s in range(100)]
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(3, c, lr=2.0) == pytest.approx(2 * lr_at(3, c))
    later = TrainConfig(steps=150, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)  # fresh moments at step 50
    assert [lr_at(50 + s, later, since=50) for s in range(100)] == pytest.approx(lrs)


def _finished(tmp_path, steps=8):
    """Weights of a finished run, as ``shipped_start`` hands them over: no optimizer state, no RNG."""
    done = train(tiny_model(), noisy_loss, tiny_data(), config(steps=steps))
    segments = [{"steps": [1, steps], "hardware": "the laptop", "wall_time_s": 12.0}]
    return {"weights": {k: v.clone() for k, v in done.ema.state_dict().items()}, "sha256": "ab" * 32,
            "step": steps, "wall_time_s": 12.0, "segments": segments}


def test_training_on_from_finished_weights_starts_there_and_resumes_exactly(tmp_path):
    start = _finished(tmp_path)
    seen = []
    straight = train(tiny_model(seed=5), noisy_loss, tiny_data(), config(steps=20, out_dir=str(tmp_path / "a")),
                     start_from=start, callbacks=[(9, lambda state: seen.append(state.step))])
    assert straight.steps == 20 and seen == [9, 18]  # steps 9…20, counted on from the finished run's 8
    assert [seg["steps"] for seg in straight.segments] == [[1, 8], [9, 20]]
    assert straight.segments[0]["hardware"] == "the laptop" and straight.wall_time_s > 12.0
    first = straight.history[0]  # logged after step 10, the second of a fresh 3-step warm-up
    assert first["step"] == 10 and first["lr"] == pytest.approx(1e-2 * 2 / 3)

    with pytest.raises(Stop):  # the run is interrupted after its step-12 checkpoint …
        train(tiny_model(seed=5), noisy_loss, tiny_data(), config(steps=20, out_dir=str(tmp_path / "b"),
              checkpoint_every=12), start_from=start, callbacks=[(12, stop)])
    resumed = train(tiny_model(seed=6), noisy_loss, tiny_data(),  # … and the same command continues it
                    config(steps=20, out_dir=str(tmp_path / "b"), checkpoint_every=12), start_from=start, resume=True)
    assert_same(straight.model.state_dict(), resumed.model.state_dict())
    assert_same(straight.ema.state_dict(), resumed.ema.state_dict())


def test_the_first_step_from_finished_weights_moves_away_from_them(tmp_path):
    start = _finished(tmp_path)
    one = train(tiny_model(seed=5), noisy_loss, tiny_data(), config(steps=9, ema_decay=None), start_from=start)
    changed = [not torch.equal(one.model.state_dict()[k], v) for k, v in start["weights"].items()]
    assert all(changed)  # every tensor was trained from the finished weights (not from tiny_model(seed=5))
    for k, v in start["weights"].items():
        assert (one.model.state_dict()[k] - v).abs().max() < 0.05, k  # one warm-up step, lr / 3


def test_training_on_refuses_another_run_and_a_length_already_reached(tmp_path):
    start = _finished(tmp_path)
    with pytest.raises(DataError, match=r"have 8 steps already: ask for more"):
        train(tiny_model(), noisy_loss, tiny_data(), config(steps=8), start_from=start)
    train(tiny_model(), noisy_loss, tiny_data(), config(steps=10, out_dir=str(tmp_path / "run")))
    with pytest.raises(DataError, match=r"holds a run that started from scratch, not from weights abababababab… "
                                        r"at step 8\. Continue it as it was started"):
        train(tiny_model(), noisy_loss, tiny_data(), config(steps=20, out_dir=str(tmp_path / "run")),
              start_from=start, resume=True)


def test_ema_formula():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(8, 0.999) == pytest.approx(9 / 18)
    assert ema_decay_at(10**6, 0.999) == 0.999
    ema, model = nn.Linear(1, 1), nn.Linear(1, 1)
    nn.init.constant_(ema.weight, 1.0), nn.init.constant_(model.weight, 3.0)
    ema_update(ema, model, 0.9)
    assert ema.weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)


def test_ema_after_one_step_mixes_initial_and_trained_weights():
    model = tiny_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, noisy_loss, tiny_data(), config(steps=1, ema_decay=0.999))
    for k, v in result.ema.state_dict().items():  # decay at t=0 is 0.1
        torch.testing.assert_close(v, 0.1 * initial[k] + 0.9 * result.model.state_dict()[k])


def test_grad_clip_bounds_the_norm():
    norms = []

    def record(state):
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in state.model.parameters()]).item())

    def huge_loss(model, batch):
        return {"loss": 1e4 * noisy_loss(model, batch)["loss"]}

    result = train(tiny_model(), huge_loss, tiny_data(), config(steps=3, grad_clip=0.5, log_every=1),
                   callbacks=[(1, record)])
    assert all(n <= 0.5 + 1e-5 for n in norms)
    assert all(h["grad_norm"] > 0.5 for h in result.history)  # logged before clipping


def test_loss_decreases():
    result = train(tiny_model(), noisy_loss, tiny_data(256),
                   config(steps=150, batch_size=32, lr=3e-2, warmup_steps=10, log_every=10))
    assert result.history[-1]["loss"] < 0.2 * result.history[0]["loss"]
    assert {"step", "loss", "mae", "lr", "grad_norm", "images_per_s"} <= result.history[0].keys()


def test_batches_are_a_pure_function_of_seed_and_step():
    first_epoch = torch.cat([batch_indices(s, 10, 3, seed=0) for s in range(3)])
    assert len(set(first_epoch.tolist())) == 9  # a permutation, remainder dropped
    assert torch.equal(batch_indices(4, 10, 3, seed=0), batch_indices(4, 10, 3, seed=0))
    assert not torch.equal(batch_indices(0, 10, 3, seed=0), batch_indices(3, 10, 3, seed=0))


class TwoParts(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)


def test_each_part_updates_only_its_own_parameters():
    torch.manual_seed(0)
    model = TwoParts()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def changed(prefix):
        return [not torch.equal(v, initial[k]) for k, v in model.state_dict().items() if k.startswith(prefix)]

    def loss_fn(model, batch, part):
        seen.append((part, changed("a."), changed("b.")))
        x, y = batch
        return {"loss": F.mse_loss(model.b(model.a(x)), y)}  # both parts get gradients every time

    result = train(model, loss_fn, tiny_data(), config(steps=1, ema_decay=None, lr={"a": 0.1, "b": 0.01}),
                   parts={"a": model.a, "b": model.b})
    assert seen == [("a", [False, False], [False, False]), ("b", [True, True], [False, False])]
    assert all(changed("a.")) and all(changed("b."))
    assert result.history[0]["a.lr"] == pytest.approx(0.1 / 3)
    assert result.history[0]["b.lr"] == pytest.approx(0.01 / 3)


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from torch import nn
    import torch.nn.functional as F
    from torch.utils.data import TensorDataset
    from minidiff.files import save_safetensors_atomic
    from minidiff.train import TrainConfig, train

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    if os.environ.get("RANK") == "1":
        model[0].weight.data += 1  # must be overwritten by rank 0's weights
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g)
    data = TensorDataset(x, torch.randn(16, 2, generator=g))
    grads = {}

    def loss_fn(model, batch):
        x, y = batch
        return {"loss": F.mse_loss(model(x), y)}

    def keep_grads(state):
        grads.update({f"grad.{k}": p.grad for k, p in state.model.named_parameters()})

    result = train(model, loss_fn, data, TrainConfig(steps=2, batch_size=8, lr=0.1, warmup_steps=0,
                   ema_decay=None, grad_clip=None, device="cpu", progress=False, log_every=1),
                   callbacks=[(2, keep_grads)])
    if os.environ.get("RANK", "0") == "0":
        save_safetensors_atomic({**result.model.state_dict(), **grads}, sys.argv[1],
                                {"loss": str(result.history[-1]["loss"])})
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process(tmp_path, monkeypatch):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "single.safetensors")])
    runpy.run_path(str(script), run_name="__main__")
    # what `torchrun --nproc_per_node 2` does: start each rank with the rendezvous in its environment
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, script, tmp_path / "ddp.safetensors"],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    assert [p.wait(timeout=60) for p in ranks] == [0, 0]
    single, ddp = load_file(tmp_path / "single.safetensors"), load_file(tmp_path / "ddp.safetensors")
    assert single.keys() == ddp.keys() and any(k.startswith("grad.") for k in single)
    for k in single:  # the second step's gradients, and the weights after it
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-6)
    meta = [safe_open(str(tmp_path / f), "pt").metadata() for f in ("single.safetensors", "ddp.safetensors")]
    assert float(meta[0]["loss"]) == pytest.approx(float(meta[1]["loss"]), rel=1e-5)  # averaged over ranks


def test_any_dataset_or_a_plain_tensor_works():
    class Pairs(torch.utils.data.Dataset):
        def __init__(self, data):
            self.data = data

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            return self.data[i]

    data = tiny_data()
    generic = train(tiny_model(), noisy_loss, Pairs(data), config(steps=3))
    fast = train(tiny_model(), noisy_loss, data, config(steps=3))
    assert_same(generic.model.state_dict(), fast.model.state_dict())

    def autoencode(model, x):
        return {"loss": F.mse_loss(model(x)[:, :2], x[:, :2])}

    assert train(tiny_model(), autoencode, data.tensors[0], config(steps=3)).steps == 3


def test_a_run_folder_has_one_owner_at_a_time(tmp_path):
    """While one training holds its run folder, a second one into it stops at once with one clear line;
    the lock goes with its process, however it ends, and stale temporary files are cleared."""
    from minidiff.files import folder_lock
    (tmp_path / ".checkpoint.json.abc123.tmp").write_text("left by a process killed mid-write")
    with folder_lock(tmp_path, wait=False, what="training"):
        assert not list(tmp_path.glob(".*.tmp"))
        with pytest.raises(DataError, match=r"is in use by another training: wait for it to finish"):
            train(tiny_model(), noisy_loss, tiny_data(), config(steps=2, out_dir=str(tmp_path)))
    held = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                             "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                             str(tmp_path / ".lock")], stdout=subprocess.PIPE, text=True)
    assert held.stdout.readline().strip() == "held"
    with pytest.raises(DataError, match="in use"):
        train(tiny_model(), noisy_loss, tiny_data(), config(steps=2, out_dir=str(tmp_path)))
    held.kill()
    held.wait()  # killed with its lock held: the lock is gone with it
    result = train(tiny_model(), noisy_loss, tiny_data(), config(steps=2, out_dir=str(tmp_path)))
    assert result.steps == 2


def test_resume_refuses_a_run_of_another_model_loss_or_data_and_a_flipped_byte(tmp_path):
    """Shapes alone do not tell runs apart: a U-Net with another schedule has the same tensors."""
    from minidiff.diffusion.loss import unet_loss
    from minidiff.models.unet import UNet, UNetConfig

    def unet(schedule):
        return UNet(UNetConfig(1, 8, channels=(8, 16), attention=(False, True), num_res_blocks=1, groups=4, heads=2,
                               schedule=schedule))
    images = torch.randn(16, 1, 8, 8)
    settings = dict(steps=2, batch_size=4, out_dir=str(tmp_path))
    train(unet("cosine"), unet_loss, images, config(**settings))
    with pytest.raises(DataError, match=r"another run \(model_config.schedule: 'cosine' → 'linear'\)"):
        train(unet("linear"), unet_loss, images, config(**{**settings, "steps": 4}), resume=True)
    with pytest.raises(DataError, match=r"another run \(examples\)"):
        train(unet("cosine"), unet_loss, images[:8], config(**{**settings, "steps": 4}), resume=True)
    tensors = tmp_path / "checkpoint-00000002.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-3] ^= 0x01  # one flipped bit in a weight
    tensors.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"checkpoint-00000002.safetensors is corrupt"):
        train(unet("cosine"), unet_loss, images, config(**{**settings, "steps": 4}), resume=True)
