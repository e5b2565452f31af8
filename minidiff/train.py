"""One training loop for every model in the course.

Each chapter supplies only a loss function::

    def loss_fn(model, batch):                   # batch: what the dataset yields, stacked, on device
        x, _ = batch
        return {"loss": F.mse_loss(model(x), x)}  # "loss" is optimized; other scalars are logged

    result = train(model, loss_fn, dataset, TrainConfig(steps=2000, lr=2e-4))

Models with several optimizers (a GAN's generator and discriminator) pass ``parts``, an ordered
dict name -> submodule; every step then calls ``loss_fn(model, batch, part)`` once per part, in
order, and updates only that part's parameters (alternating updates, as in DCGAN).

The loop does AdamW with linear warm-up and cosine decay, gradient clipping, an exponential moving
average (EMA) of the weights, bfloat16 autocast on CUDA, periodic callbacks, and checkpoints that
resume *exactly*: batches are a pure function of (seed, step) and every RNG state is saved, so on
CPU N steps straight and N/2 + resume + N/2 give bit-identical weights. A checkpoint also logs which
hardware trained which steps, so a run begun on a laptop and finished on a GPU says so in the manifest.

Multi-GPU: run the same script under ``torchrun --nproc_per_node W``. Each rank takes its slice of
every global batch and gradients are averaged across ranks with one all-reduce per part and step,
which is what ``DistributedDataParallel`` does (DDP adds bucketing to overlap communication with
the backward pass). We do it by hand rather than wrap the model in DDP because DDP only syncs
gradients computed through its own ``forward``, while our loss functions call whatever methods they
like (``model.encode``, ``model.generator(...)``) and GAN parts leave some parameters unused. So
``loss_fn`` always receives the plain, unwrapped model.
"""
import contextlib
import copy
import math
import os
import random
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, TensorDataset, default_collate
from tqdm.auto import tqdm

from minidiff.devices import hardware_description, pick_device
from minidiff.files import folder_lock
from minidiff.resume import (
    check_same_recipe,
    check_same_run,
    check_start,
    load_checkpoint,
    log_segment,
    restore_training_state,
    rng_state,
    run_identity,
    save_training_state,
    set_rng_state,
)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128                  # global batch; under DDP each of W ranks takes batch_size // W
    lr: float | dict = 1e-3                # a float, or a dict part -> float
    weight_decay: float = 0.0              # applied to weight matrices/kernels only, not biases or norms
    betas: tuple | dict = (0.9, 0.999)     # a pair, or a dict part -> pair
    warmup_steps: int = 100                # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0          # max global gradient norm; None = no clipping
    ema_decay: float | None = 0.999        # None = no EMA; see ema_decay_at
    seed: int = 0
    device: str = "auto"                   # auto = cuda > mps > cpu
    bf16: bool = True                      # autocast to bfloat16 (CUDA only)
    log_every: int = 10
    checkpoint_every: int | None = None
    out_dir: str | None = None             # where checkpoints go; None = no checkpoints
    progress: bool = True                  # tqdm bar with loss and images/s


@dataclass
class TrainState:
    """What callbacks see: ``step`` steps are done, in ``wall_time_s`` seconds of training so far."""
    step: int
    model: torch.nn.Module
    ema: torch.nn.Module | None
    history: list
    wall_time_s: float = 0.0


@dataclass
class TrainResult:
    model: torch.nn.Module
    ema: torch.nn.Module | None
    history: list = field(default_factory=list)  # one dict per logged step
    wall_time_s: float = 0.0                     # including time before a resume
    steps: int = 0
    segments: list = field(default_factory=list)  # where the steps ran: see describe_segments


# ----------------------------------------------------------------------------- schedule and EMA

def lr_at(step: int, config: TrainConfig, lr: float | None = None, since: int = 0) -> float:
    """Learning rate for 0-based ``step``: linear warm-up, then cosine decay.

        warm-up  (s < S_w):  lr * (s + 1) / S_w                      reaches lr at s = S_w - 1
        cosine   (s >= S_w): lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2,
                             p = (s - S_w) / (S - 1 - S_w)           lr at s = S_w, lr_min at s = S - 1

    with lr_min = lr * min_lr_ratio and S = config.steps. Warm-up keeps Adam's first, badly
    estimated, moments from taking large steps. A run that trains on from shipped weights starts
    with fresh moments at step ``since``, so its warm-up is counted from there (s → s − since).
    """
    lr = config.lr if lr is None else lr
    step, steps = step - since, config.steps - since
    if step < config.warmup_steps:
        return lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, steps - 1 - config.warmup_steps))
    lr_min = lr * config.min_lr_ratio
    return lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_decay_at(t: int, ema_decay: float) -> float:
    """EMA decay for the t-th update (t = 0, 1, ...): ``min(ema_decay, (1 + t) / (10 + t))``.

    A fixed decay of 0.999 averages over ~1000 steps, so a short run's EMA would still be mostly
    the random initial weights. The warm-up starts at 0.1 (mostly the new weights) and rises
    towards ``ema_decay``, so the EMA only ever averages over the steps that exist.
    """
    return min(ema_decay, (1 + t) / (10 + t))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta, in place, for float params and buffers.

    Integer buffers (e.g. BatchNorm's step counter) cannot be averaged and are copied.
    """
    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(m, 1 - decay)
        else:
            e.copy_(m)


# ----------------------------------------------------------------------------- batches

@lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return torch.randperm(n, generator=generator)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Dataset indices of the global batch for ``step``: a pure function of (seed, step).

    Epoch e is a permutation drawn from a generator seeded with (seed, e); step s takes the next
    ``batch_size`` indices, dropping each epoch's remainder so every batch is full. Because nothing
    depends on earlier steps, resuming needs no data-loader state.
    """
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} items)")
    epoch, i = divmod(step, per_epoch)
    return _epoch_permutation(seed, epoch, n)[i * batch_size:(i + 1) * batch_size]


def _fetch(data, indices: torch.Tensor):
    if isinstance(data, torch.Tensor):
        return data[indices]
    if hasattr(data, "take"):  # e.g. ConditionedImages: a mapping of tensors, gathered at once
        return data.take(indices)
    if isinstance(data, TensorDataset):  # data in memory (MNIST): one gather per tensor, no Python loop
        return tuple(t[indices] for t in data.tensors)
    return default_collate([data[i] for i in indices.tolist()])


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


# ----------------------------------------------------------------------------- distributed

def _init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes in the environment; returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` over ranks in place, flattened into one buffer so it is one message."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for t, f in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(f.view_as(t))


# ----------------------------------------------------------------------------- the loop

def _make_optimizer(module, lr, betas, weight_decay) -> torch.optim.AdamW:
    """AdamW that decays only weight matrices and kernels (dim >= 2); decaying biases and norm scales
    just pulls them towards 0 for no benefit."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def _per_part(value, name):
    return value[name] if isinstance(value, dict) else value


def _update(optimizer, loss, lr, grad_clip, world) -> torch.Tensor:
    """One optimizer step on ``loss``: backward, average gradients over ranks, clip, step.

    Only this optimizer's parameters are updated; gradients that ``loss`` leaves on other parts'
    parameters are cleared by their own optimizer's ``zero_grad`` before they are used.
    Returns the gradient norm before clipping.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if world > 1 and params:
        _all_reduce_mean([p.grad for p in params])
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    optimizer.step()
    return grad_norm


@contextlib.contextmanager
def _rng_preserved(device):
    """Run a callback without consuming the training RNG, so sampling in a notebook changes nothing."""
    tensors, state = rng_state(device)
    try:
        yield
    finally:
        set_rng_state(tensors, state, device)


def train(model, loss_fn, data: Dataset | torch.Tensor, config: TrainConfig | None = None, *,
          parts=None, callbacks=(), resume: bool = False, start_from: dict | None = None) -> TrainResult:
    """Train ``model`` to minimise ``loss_fn(model, batch)["loss"]`` over ``data`` (see module docstring).

    ``data`` is a Dataset (a TensorDataset is indexed directly) or a tensor of examples.
    ``callbacks`` is a list of ``(every_n_steps, fn)``; ``fn(TrainState)`` runs on rank 0.
    ``resume=True`` continues from ``config.out_dir``'s checkpoint if there is one. A run folder has
    one owner at a time: a second training into it stops at once with one clear line.

    ``start_from`` trains on from finished weights that have no training checkpoint (shipped ones:
    ``minidiff.weights.shipped_start``): model and EMA start from them at their step, with fresh
    optimizer moments and a fresh warm-up. The batches are those a straight run would draw (they
    depend on the step alone); the noise is not, so this extends a model, inexactly.
    """
    config = config or TrainConfig()
    owns_folder = config.out_dir and int(os.environ.get("RANK", 0)) == 0
    with folder_lock(config.out_dir, wait=False, what="training") if owns_folder else contextlib.nullcontext():
        return _train(model, loss_fn, data, config, parts, callbacks, resume, start_from)


def _train(model, loss_fn, data, config, parts, callbacks, resume, start_from) -> TrainResult:
    device = pick_device(config.device)
    rank, world, device = _init_distributed(device)
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} does not split evenly over {world} ranks")
    random.seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    torch.manual_seed(config.seed + rank)  # each rank draws its own noise and dropout masks

    if start_from is not None:
        check_start(start_from, config)
        model.load_state_dict(start_from["weights"])
    model = model.to(device).train()
    if world > 1:
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)  # all ranks start from rank 0's weights, as DDP does
    ema = copy.deepcopy(model).eval().requires_grad_(False) if config.ema_decay is not None else None
    parts = dict(parts) if parts is not None else None
    modules = parts or {"model": model}
    optimizers = {name: _make_optimizer(module, _per_part(config.lr, name), _per_part(config.betas, name),
                                        config.weight_decay) for name, module in modules.items()}

    start, history, previous_time, segments = 0, [], 0.0, []
    checkpoint = load_checkpoint(config.out_dir) if resume and config.out_dir else None
    identity = run_identity(model, loss_fn, data, start_from)
    if checkpoint is not None:
        check_same_recipe(checkpoint[1]["config"], config)
        check_same_run(checkpoint[1].get("run"), identity, config.out_dir)
        start, history, previous_time, segments = restore_training_state(checkpoint, model, ema, optimizers,
                                                                         device, rank)
    elif start_from is not None:
        start, previous_time, segments = start_from["step"], start_from["wall_time_s"], start_from["segments"]
    since = 0 if start_from is None else start_from["step"]  # where the optimizer's moments began

    n = len(data)
    bf16 = device.type == "cuda" and config.bf16
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    hardware = f"{hardware_description(device, world)}, {'bf16 autocast' if bf16 else 'fp32'}"
    bar = tqdm(total=config.steps, initial=start, disable=not config.progress or rank != 0, dynamic_ncols=True)
    sums, window_steps, window_start, run_start = {}, 0, time.perf_counter(), time.perf_counter()

    for step in range(start, config.steps):
        indices = batch_indices(step, n, config.batch_size, config.seed)[rank::world]
        batch = _to_device(_fetch(data, indices), device)
        logged, lrs = {}, {}
        for name, optimizer in optimizers.items():
            prefix = "" if parts is None else f"{name}."
            lrs[f"{prefix}lr"] = lr_at(step, config, _per_part(config.lr, name), since)
            with autocast:
                out = loss_fn(model, batch) if parts is None else loss_fn(model, batch, name)
            out["grad_norm"] = _update(optimizer, out["loss"], lrs[f"{prefix}lr"], config.grad_clip, world)
            logged.update({f"{prefix}{k}": v.detach().float() for k, v in out.items()})
        if world > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)  # e.g. BatchNorm statistics: keep rank 0's, as DDP does
        if ema is not None:
            ema_update(ema, model, ema_decay_at(step, config.ema_decay))
        bar.update(1)

        # sum as tensors and only call .item() when logging, so the GPU never waits on the CPU
        for k, v in logged.items():
            sums[k] = sums.get(k, 0) + v
        window_steps += 1
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            keys = sorted(sums)
            means = torch.stack([sums[k].to(device) for k in keys]) / window_steps
            if world > 1:
                _all_reduce_mean([means])
            seconds = time.perf_counter() - window_start
            entry = {"step": done, **lrs, **dict(zip(keys, means.tolist())),
                     "images_per_s": config.batch_size * window_steps / seconds}
            history.append(entry)
            bar.set_postfix({k: f"{v:.4g}" for k, v in entry.items() if k.endswith("loss")} |
                            {"img/s": f"{entry['images_per_s']:.0f}"})
            sums, window_steps, window_start = {}, 0, time.perf_counter()

        wall_time_s = previous_time + time.perf_counter() - run_start
        periodic = config.checkpoint_every and done % config.checkpoint_every == 0
        if config.out_dir and (periodic or done == config.steps):
            save_training_state(config, done, model, ema, optimizers, history, wall_time_s,
                  log_segment(segments, start + 1, done, hardware, wall_time_s - previous_time),
                  device, rank, world, identity)
        if rank == 0:
            for every, fn in callbacks:
                if done % every == 0:
                    with _rng_preserved(device):
                        fn(TrainState(done, model, ema, history, wall_time_s))
                    model.train()  # a callback that samples will have switched to eval mode
    bar.close()
    if world > 1:
        dist.barrier()  # no rank leaves before rank 0 has written its checkpoint
    seconds = time.perf_counter() - run_start
    return TrainResult(model, ema, history, previous_time + seconds, max(start, config.steps),
                       log_segment(segments, start + 1, config.steps, hardware, seconds))
