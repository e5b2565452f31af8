"""LoRA (Hu et al., 2021): teach a frozen network something new through small low-rank changes.

A frozen linear layer y = W x (W is d_out × d_in) gets a trainable change of rank r ≪ d:

    y = W x + s · (α / r) · B A x        A: r × d_in,  B: d_out × r,

so a layer learns r · (d_in + d_out) numbers instead of d_in · d_out. A starts random and **B starts at
zero**: the adapted network is exactly the frozen one at step 0 (the same idea as ControlNet's zero
convolutions), and its first gradient reaches B (∂y/∂B = s (α/r) · (A x)ᵀ ≠ 0) while A's waits for B to move
(∂y/∂(A x) = s (α/r) · Bᵀ = 0). α / r keeps the change's size the same when r changes (α defaults to r);
the **LoRA scale** s (0 … 1) dials the adapter in at use time, and ``merge_lora`` folds W + s (α/r) B A
into one plain layer, so an adapted model samples as fast as the base.

In the course's U-Net the adapters go on the attention projections (``q``, ``k``, ``v``, ``out`` of every
``Attention``: the self-attention and the cross-attention that reads the prompt), where a new word has to
meet a new picture — or on the cross-attentions alone (``where="cross"``), about half as many numbers — and,
optionally, on the convolutions that draw (``convolutions=True``; for a k×k convolution, W is c_out × c_in·k²). What is trained and shipped is only ``lora_state_dict``: a small file of A's and B's.
"""
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.models.attention import Attention, TransformerBlock
from minidiff.models.unet import ResBlock

TARGETS = ("q", "k", "v", "out")  # the projections of every attention block
WHERE = ("all", "cross")          # every attention block, or the cross-attentions that read the prompt


class LoRALayer(nn.Module):
    """A frozen ``nn.Linear`` or ``nn.Conv2d`` plus a rank-``rank`` change B A, scaled by ``alpha / rank`` and
    by ``scale``. For a convolution W is (c_out, c_in·k·k): A is r small kernels of the layer's size, B a
    1×1 convolution mixing their r maps into c_out channels."""

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float | None = None):
        super().__init__()
        d_in, d_out = (base.in_features, base.out_features) if isinstance(base, nn.Linear) else (
            base.weight[0].numel(), base.out_channels)
        if not isinstance(rank, int) or rank < 1 or rank > min(d_in, d_out):
            raise ValueError(f"the LoRA rank must be an integer from 1 to {min(d_in, d_out)}, got {rank!r}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, float(alpha or rank), 1.0
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initialises its own weight

    def delta(self) -> torch.Tensor:
        """The change to the weight, s (α / r) B A, in the weight's own shape."""
        return (self.scale * (self.alpha / self.rank) * (self.B @ self.A)).view_as(self.base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = self.scale * (self.alpha / self.rank)
        if isinstance(self.base, nn.Linear):
            return self.base(x) + factor * ((x @ self.A.T) @ self.B.T)
        conv = self.base
        h = F.conv2d(x, self.A.view(self.rank, *conv.weight.shape[1:]), None, conv.stride, conv.padding, conv.dilation)
        return conv(x) + factor * F.conv2d(h, self.B[:, :, None, None])

    def merged(self) -> nn.Module:
        """One plain layer computing the same: weight W + s (α / r) B A."""
        layer = copy.deepcopy(self.base)
        with torch.no_grad():
            layer.weight.add_(self.delta())
        return layer.requires_grad_(False)


def _targets(model: nn.Module, targets=TARGETS, where: str = "all", convolutions: bool = False):
    """(parent module, attribute name, full name) of every target projection of every attention block —
    ``where="cross"``: of the cross-attentions only (a ``TransformerBlock``'s ``attn2``, reading the prompt) —
    and with ``convolutions`` of both 3×3 convolutions of every ``ResBlock`` (where the picture is drawn)."""
    if where not in WHERE:
        raise ValueError(f"LoRA goes on {' or '.join(WHERE)} attention, not {where!r}")
    cross = {id(m.attn2) for m in model.modules() if isinstance(m, TransformerBlock) and m.context_dim is not None}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, Attention) and (where == "all" or id(module) in cross):
            for target in targets:
                yield module, target, prefix + target
        if convolutions and isinstance(module, ResBlock):
            for target in ("conv1", "conv2"):
                yield module, target, prefix + target


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, targets=TARGETS, where: str = "all",
             convolutions: bool = False, layers=None) -> nn.Module:
    """Freeze ``model`` and put a ``LoRALayer`` of ``rank`` on every target projection of its attention
    blocks (``where="cross"``: of its cross-attentions only; ``convolutions``: on its ResBlocks' convolutions
    too; ``layers``: only those full names), in place; returns it. Only the adapters' A and B then train."""
    model.requires_grad_(False)
    found = 0
    for parent, target, name in list(_targets(model, targets, where, convolutions)):
        if layers is not None and name not in layers:
            continue
        layer = getattr(parent, target)
        if isinstance(layer, LoRALayer):
            raise ValueError("this model already has LoRA adapters: merge them (merge_lora) or start from the base")
        setattr(parent, target, LoRALayer(layer, rank, alpha))
        found += 1
    if not found:
        raise ValueError(f"no attention projection named {', '.join(targets)} to adapt: LoRA needs attention layers")
    return model


def lora_layers(model: nn.Module) -> dict:
    """{full name: LoRALayer} of ``model``."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALayer)}


def lora_state_dict(model: nn.Module) -> dict:
    """The adapters alone, {"<layer>.A": …, "<layer>.B": …}: all that a LoRA run trains and ships."""
    return {f"{name}.{part}": getattr(layer, part).detach().clone()
            for name, layer in lora_layers(model).items() for part in ("A", "B")}


def load_lora(model: nn.Module, state: dict, alpha: float | None = None) -> nn.Module:
    """Put the adapters ``state`` (from ``lora_state_dict``) on ``model``, a base of the same architecture."""
    ranks = {state[key].shape[0] for key in state if key.endswith(".A")}
    if len(ranks) != 1:
        raise ValueError("a LoRA file holds one rank for every layer (an A and a B per adapted layer)")
    wanted = {key.rsplit(".", 1)[0] for key in state}
    known = {name for _, _, name in _targets(model, convolutions=True)}
    if not wanted <= known or {f"{name}.{part}" for name in wanted for part in ("A", "B")} != set(state):
        raise ValueError("this LoRA adapts other layers than this model has: it was made for another U-Net")
    add_lora(model, ranks.pop(), alpha, convolutions=True, layers=wanted)
    layers = lora_layers(model)
    with torch.no_grad():
        for key, value in state.items():
            name, part = key.rsplit(".", 1)
            getattr(layers[name], part).copy_(value)
    return model


def set_lora_scale(model: nn.Module, scale: float) -> nn.Module:
    """The LoRA scale s of every adapter (0: the base alone, 1: the adapter as trained)."""
    for layer in lora_layers(model).values():
        layer.scale = float(scale)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer (W ← W + s (α/r) B A), in place: a plain model again, as fast as the base."""
    for parent, target, _ in _targets(model, convolutions=True):
        layer = getattr(parent, target)
        if isinstance(layer, LoRALayer):
            setattr(parent, target, layer.merged())
    return model
