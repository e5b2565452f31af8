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
meet a new picture — or on the cross-attentions alone (``where="cross"``), about half as many numbers. What is trained and shipped is only ``lora_state_dict``: a small file of A's and B's.
"""
import math

import torch
from torch import nn

from minidiff.models.attention import Attention, TransformerBlock

TARGETS = ("q", "k", "v", "out")  # the projections of every attention block
WHERE = ("all", "cross")          # every attention block, or the cross-attentions that read the prompt


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a rank-``rank`` change B A, scaled by ``alpha / rank`` and by ``scale``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        if not isinstance(rank, int) or rank < 1 or rank > min(base.in_features, base.out_features):
            raise ValueError(f"the LoRA rank must be an integer from 1 to {min(base.in_features, base.out_features)}, "
                             f"got {rank!r}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, float(alpha or rank), 1.0
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initialises its own weight

    def delta(self) -> torch.Tensor:
        """The change to the weight, s (α / r) B A: (d_out, d_in)."""
        return self.scale * (self.alpha / self.rank) * (self.B @ self.A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (self.alpha / self.rank) * ((x @ self.A.T) @ self.B.T)

    def merged(self) -> nn.Linear:
        """One plain layer computing the same: weight W + s (α / r) B A."""
        layer = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            layer.weight.copy_(self.base.weight + self.delta())
            if self.base.bias is not None:
                layer.bias.copy_(self.base.bias)
        return layer.requires_grad_(False).to(self.base.weight.device)


def _attention_projections(model: nn.Module, targets=TARGETS, where: str = "all"):
    """(parent module, attribute name, full name) of every target projection of every attention block —
    ``where="cross"``: of the cross-attentions only (a ``TransformerBlock``'s ``attn2``, reading the prompt)."""
    if where not in WHERE:
        raise ValueError(f"LoRA goes on {' or '.join(WHERE)} attention, not {where!r}")
    cross = {id(m.attn2) for m in model.modules() if isinstance(m, TransformerBlock) and m.context_dim is not None}
    for name, module in model.named_modules():
        if isinstance(module, Attention) and (where == "all" or id(module) in cross):
            for target in targets:
                yield module, target, f"{name}.{target}" if name else target


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, targets=TARGETS, where: str = "all",
             layers=None) -> nn.Module:
    """Freeze ``model`` and put a ``LoRALinear`` of ``rank`` on every target projection of its attention
    blocks (``where="cross"``: of its cross-attentions only; ``layers``: only those full names), in place;
    returns it. Only the adapters' A and B then train."""
    model.requires_grad_(False)
    found = 0
    for parent, target, name in list(_attention_projections(model, targets, where)):
        if layers is not None and name not in layers:
            continue
        layer = getattr(parent, target)
        if isinstance(layer, LoRALinear):
            raise ValueError("this model already has LoRA adapters: merge them (merge_lora) or start from the base")
        setattr(parent, target, LoRALinear(layer, rank, alpha))
        found += 1
    if not found:
        raise ValueError(f"no attention projection named {', '.join(targets)} to adapt: LoRA needs attention layers")
    return model


def lora_layers(model: nn.Module) -> dict:
    """{full name: LoRALinear} of ``model``."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


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
    known = {name for _, _, name in _attention_projections(model)}
    if not wanted <= known or {f"{name}.{part}" for name in wanted for part in ("A", "B")} != set(state):
        raise ValueError("this LoRA adapts other layers than this model has: it was made for another U-Net")
    add_lora(model, ranks.pop(), alpha, layers=wanted)
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
    for parent, target, _ in _attention_projections(model):
        layer = getattr(parent, target)
        if isinstance(layer, LoRALinear):
            setattr(parent, target, layer.merged())
    return model
