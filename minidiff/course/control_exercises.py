"""Chapter 11's exercises: why a zero convolution still learns, and where a ControlNet's residuals go.
Each ``check_<name>(fn)`` prints one verdict (``checks.verdict``): the zero convolution's gradient is
checked against autograd on a real ``nn.Conv2d``, the controlled forward pass against
``UNet.forward(…, residuals=)`` — implementations that share no code with the answers.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from minidiff.course.checks import Mistake, verdict
from minidiff.models.unet import ResBlock, UNet, UNetConfig


def _check(name: str, fn, cases, shape_hint: str = None) -> bool:
    return verdict(name, fn, cases, shape_hint, MISTAKES[name])


def _randn(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def check_zero_conv_gradient(fn) -> bool:
    """``fn(s, upstream)``: the gradient of the loss with respect to the weight W (C_out, C_in) of a 1×1
    convolution y = W·s + b whose W and b are all zero, given its input s (B, C_in, H, W) and the
    gradient arriving at its output, upstream = ∂L/∂y (B, C_out, H, W). Every output pixel is
    y[b, o, h, w] = Σ_i W[o, i] · s[b, i, h, w] + b[o], so

        ∂L/∂W[o, i] = Σ_{b, h, w} upstream[b, o, h, w] · s[b, i, h, w]      — not zero, though W is."""
    cases = []
    for seed, c_in, c_out, hint in [
            (90, 3, 5, "sum upstream[b, o, h, w] · s[b, i, h, w] over the batch and every pixel: W's value does "
                       "not appear in its own gradient"),
            (92, 4, 2, "one number per (output channel, input channel) pair: the result is (C_out, C_in)"),
            (94, 6, 6, "the batch and the pixels are summed, not averaged: the loss adds every pixel's share")]:
        s, upstream = _randn(seed, 2, c_in, 3, 3), _randn(seed + 1, 2, c_out, 3, 3)
        conv = nn.Conv2d(c_in, c_out, 1)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        conv(s).backward(upstream)
        cases.append(((s, upstream), conv.weight.grad[:, :, 0, 0], hint))
    return _check("zero_conv_gradient", fn, cases, "∂L/∂W has W's shape without the 1×1: (C_out, C_in)")


def _tiny_unet() -> UNet:
    torch.manual_seed(0)
    unet = UNet(UNetConfig(1, 8, channels=(8, 16), attention=(False, True), num_res_blocks=1, groups=4, heads=2))
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return unet.eval()


def check_add_control(fn) -> bool:
    """``fn(unet, x, t, residuals)``: the U-Net's prediction with a ControlNet's ``residuals`` added —
    one per skip (in the order ``unet.encode`` returns the skips), then one for the middle. Run the way
    down (``skips, h, emb = unet.encode(x, t, {})``), add each residual to its skip and the last to the
    middle's output h, then the way up as ``UNet.forward`` does: for every layer list in ``unet.up``, a
    list that starts with a ``ResBlock`` first reads the last skip across its bridge,
    h = cat([h, skips.pop()], dim=1); then ``unet._run(layers, h, emb, {})``; finally
    ``F.pixel_shuffle(unet.head(h), unet.config.patch_size)``."""
    unet = _tiny_unet()
    cases = []
    for seed, hint in [(100, "add residuals[k] to skip k, and the last residual to the middle's output"),
                       (102, "every skip gets its residual *before* the way up reads it across the bridge"),
                       (104, "the middle's residual goes on h before the first up layer, not on a skip")]:
        x, t = _randn(seed, 2, 1, 8, 8), torch.tensor([50, 700])
        with torch.no_grad():
            skips, middle, _ = unet.encode(x, t, {})
            residuals = [_randn(seed + 1 + k, *h.shape) for k, h in enumerate([*skips, middle])]
            cases.append(((unet, x, t, residuals), unet(x, t, {}, residuals=residuals), hint))
    return _check("add_control", fn, cases, "the prediction has x's shape")


# ----------------------------------------------------------------------------- the mistakes students make

def _way_up(unet, skips, h, emb):
    for layers in unet.up:
        if isinstance(layers[0], ResBlock):
            h = torch.cat([h, skips.pop()], dim=1)
        h = unet._run(layers, h, emb, {})
    return F.pixel_shuffle(unet.head(h), unet.config.patch_size)


def _controlled(add_skips: bool, add_middle: bool):
    def forward(unet, x, t, residuals):
        skips, h, emb = unet.encode(x, t, {})
        if add_skips:
            skips = [a + b for a, b in zip(skips, residuals[:-1])]
        return _way_up(unet, skips, h + residuals[-1] if add_middle else h, emb)
    return forward


MISTAKES = {  # what students get wrong in each exercise, and the hint for it
    "zero_conv_gradient": [
        Mistake("you answered zero because W is zero",
                lambda s, g: torch.zeros(g.shape[1], s.shape[1]),
                "W = 0 makes the *output* zero, not W's gradient: ∂y/∂W = s, the input, which is not zero — so "
                "∂L/∂W = Σ upstream · s"),
        Mistake("you averaged over the batch and the pixels instead of summing",
                lambda s, g: torch.einsum("bohw,bihw->oi", g, s) / (s.shape[0] * s.shape[2] * s.shape[3]),
                "the loss is already what it is: each pixel's contribution adds to W's gradient, so sum over b, h, w"),
        Mistake("you used only the first picture of the batch",
                lambda s, g: torch.einsum("ohw,ihw->oi", g[0], s[0]),
                "W is shared by every picture of the batch: sum their contributions"),
        Mistake("you took the gradient of the bias", lambda s, g: g.sum((0, 2, 3))[:, None].expand(-1, s.shape[1]),
                "Σ upstream is ∂L/∂b; W's gradient multiplies by the input s: Σ upstream[b, o, h, w] · s[b, i, h, w]")],
    "add_control": [
        Mistake("you left the residuals out", _controlled(False, False),
                "that is the base alone (control strength 0): add residuals[k] to skip k and the last to the middle"),
        Mistake("you added only the middle's residual", _controlled(False, True),
                "the skips carry most of the control — the fine layout travels across the bridges: add "
                "residuals[k] to skip k too"),
        Mistake("you forgot the middle's residual", _controlled(True, False),
                "the last residual belongs to the middle's output h, before the way up starts")],
}
