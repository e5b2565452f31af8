"""Chapter 12's exercises: a LoRA layer, and merging an adapter into its weight. Each ``check_<name>(fn)``
prints one verdict (``checks.verdict``), against the library's ``LoRALayer`` on a real ``nn.Linear`` — code
that shares nothing with the reference answers.
"""
import torch
import torch.nn as nn

from minidiff.course.checks import Mistake, verdict
from minidiff.models.lora import LoRALayer


def _check(name: str, fn, cases, shape_hint: str = None) -> bool:
    return verdict(name, fn, cases, shape_hint, MISTAKES[name])


def _layer(seed: int, d_in: int, d_out: int, rank: int, alpha: float) -> LoRALayer:
    """A LoRA layer whose A, B, W and bias are all random (a trained adapter: B is no longer zero)."""
    g = torch.Generator().manual_seed(seed)
    layer = LoRALayer(nn.Linear(d_in, d_out), rank, alpha)
    with torch.no_grad():
        for p in (layer.base.weight, layer.base.bias, layer.A, layer.B):
            p.copy_(torch.randn(p.shape, generator=g))
    return layer


def _parts(layer: LoRALayer):
    return layer.base.weight.detach(), layer.base.bias.detach(), layer.A.detach(), layer.B.detach()


def check_lora_forward(fn) -> bool:
    """``fn(x, W, b, A, B, alpha)``: a LoRA linear layer's output for inputs x (N, d_in), with the frozen
    weight W (d_out, d_in) and bias b (d_out,), the adapter's A (r, d_in) and B (d_out, r):

        y = x Wᵀ + b + (α / r) · (x Aᵀ) Bᵀ            (r = A's number of rows)

    x Aᵀ squeezes each input to r numbers; Bᵀ spreads them back over the d_out outputs."""
    cases = []
    for seed, d_in, d_out, rank, alpha, hint in [
            (120, 6, 5, 2, 2.0, "the frozen layer's own output x Wᵀ + b, plus the adapter's (α / r) · (x Aᵀ) Bᵀ"),
            (122, 8, 8, 4, 1.0, "α / r with α = 1 and r = 4: the adapter's path is multiplied by 0.25"),
            (124, 5, 7, 1, 3.0, "r is the number of rows of A (A.shape[0]), here 1")]:
        layer = _layer(seed, d_in, d_out, rank, alpha)
        x = torch.randn(3, d_in, generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            cases.append(((x, *_parts(layer), alpha), layer(x), hint))
    return _check("lora_forward", fn, cases, "y has one row per input and d_out columns: (N, d_out)")


def check_merge_lora(fn) -> bool:
    """``fn(W, A, B, alpha, scale)``: the one weight that computes what the adapted layer computes at LoRA
    scale ``scale`` — W + s · (α / r) · B A, with W (d_out, d_in), A (r, d_in), B (d_out, r). After
    merging, the model is a plain one again: as fast as the base, and the adapter can no longer be dialled."""
    cases = []
    for seed, d_in, d_out, rank, alpha, scale, hint in [
            (130, 6, 5, 2, 2.0, 1.0, "add (α / r) · B A to W: B A has W's shape (d_out, d_in)"),
            (132, 4, 4, 2, 2.0, 0.5, "the LoRA scale s multiplies the change too: W + s · (α / r) · B A"),
            (134, 7, 3, 3, 1.0, 1.0, "α / r with α = 1 and r = 3")]:
        layer = _layer(seed, d_in, d_out, rank, alpha)
        layer.scale = scale
        W, _, A, B = _parts(layer)
        cases.append(((W, A, B, alpha, scale), layer.merged().weight.detach(), hint))
    return _check("merge_lora", fn, cases, "the merged weight has W's shape (d_out, d_in): B (d_out, r) @ A (r, d_in)")


MISTAKES = {  # what students get wrong in each exercise, and the hint for it
    "lora_forward": [
        Mistake("you left out the frozen layer", lambda x, W, b, A, B, a: a / A.shape[0] * (x @ A.T) @ B.T,
                "LoRA *adds* a change to the frozen layer: y = x Wᵀ + b + (α / r) · (x Aᵀ) Bᵀ"),
        Mistake("you forgot α / r", lambda x, W, b, A, B, a: x @ W.T + b + (x @ A.T) @ B.T,
                "the adapter's path is multiplied by α / r, so that changing r does not change its size"),
        Mistake("you multiplied by α instead of α / r", lambda x, W, b, A, B, a: x @ W.T + b + a * (x @ A.T) @ B.T,
                "divide α by the rank r = A.shape[0]"),
        Mistake("you forgot the bias", lambda x, W, b, A, B, a: x @ W.T + a / A.shape[0] * (x @ A.T) @ B.T,
                "the frozen layer is x Wᵀ + b: keep its bias")],
    "merge_lora": [
        Mistake("you forgot the LoRA scale", lambda W, A, B, a, s: W + a / A.shape[0] * B @ A,
                "the scale s dials the adapter in: W + s · (α / r) · B A"),
        Mistake("you forgot α / r", lambda W, A, B, a, s: W + s * B @ A,
                "the layer multiplies its change by α / r: so must the merged weight"),
        Mistake("you subtracted the change", lambda W, A, B, a, s: W - s * a / A.shape[0] * B @ A,
                "the adapter's path is added to the frozen one's: W + s · (α / r) · B A")],
}
