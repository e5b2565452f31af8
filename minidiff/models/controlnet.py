"""ControlNet (Zhang, Rao & Agrawala, 2023): a copy of the denoiser's encoder that is steered by a drawing.

The article's picture: copy the denoising network; one copy keeps denoising as it always did (the
base, frozen), the other reads a condition — an outline, a mask — and the two are merged. In modules:

    condition c ──hint encoder (strided convs, last one zero)──┐
                                                               + after the stem
    z_t, t, prompt ──copy of the U-Net's way down and middle ──┴─→ skips s₀…s_K, middle m
                                                 zero 1×1 convs Z_k ↓ (one per skip, one for the middle)
    z_t, t, prompt ──frozen base U-Net: way down → skips + λ·Z_k(s_k), middle + λ·Z(m) → way up → output

The copy starts as the base's own weights, so from the first step it already "understands" noisy
latents and prompts; it only has to learn where the condition should go. The **zero convolutions**
(1×1, weights and biases 0) make the whole added branch output exactly 0 at the start: the steered
model *is* the base model until training moves them, so training cannot wreck what the base knows
with large random residuals. They still learn: for y = W·s + b with W = 0, ∂L/∂W = ∂L/∂y · sᵀ ≠ 0
(the input s is not zero), so the first step makes W ≠ 0 and gradients flow on into the copy.
``zero_init=False`` starts them Gaussian instead (the ablation: the base's pictures are spoilt at step 0).

λ, the *control strength* (``cond["control_scale"]``, one per picture, default 1), scales the added
residuals: 0 gives the base model exactly. The condition enters through the conditioning path — the
condition picture is ``cond["control"]`` — so the samplers, guidance and the pipeline are unchanged.
"""
import dataclasses
import json
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from minidiff.models.unet import ResBlock, UNet, UNetConfig


@dataclass
class ControlNetConfig:
    base: dict = field(default_factory=dict)  # the UNetConfig (as a dict) of the U-Net it steers
    condition_channels: int = 1                # the condition picture's channels (an outline, a mask: 1)
    condition_size: int = 64                   # its side in pixels (the picture's, not the latent's)
    hint_channels: tuple = (16, 32, 64)        # the hint encoder's convs; the last ones halve the side to the grid's
    zero_init: bool = True                     # False: Gaussian 1×1 convs (the ablation)


def plain_config(config) -> dict:
    """A config dataclass as the JSON-ready dict a manifest keeps (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def zero_conv(channels: int, zero: bool = True) -> nn.Conv2d:
    """A 1×1 convolution that starts at exactly 0 (weights and bias), or, for the ablation, Gaussian with
    std 1/√channels (what a default initialisation gives: outputs as large as its inputs)."""
    conv = nn.Conv2d(channels, channels, 1)
    if zero:
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    else:
        nn.init.normal_(conv.weight, std=1 / math.sqrt(channels))
        nn.init.normal_(conv.bias, std=1 / math.sqrt(channels))
    return conv


def skip_widths(unet: UNet) -> list[int]:
    """The channels of every skip the U-Net's way up reads (the stem's, then each floor's) and of its middle."""
    widths = [unet.stem.out_channels]
    for layers in unet.down:
        widths.append(layers[0].conv2.out_channels if isinstance(layers[0], ResBlock) else layers[0].out_channels)
    return widths + [unet.middle[-1].conv2.out_channels]


class ControlNet(nn.Module):
    """The trainable half: a copy of the base U-Net's way down and middle (``trunk``, the U-Net's own
    code with its way up removed), the hint encoder for the condition picture and the zero
    convolutions. ``forward`` gives the residuals ``UNet.forward(…, residuals=)`` adds."""

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.config = c = config
        base = UNetConfig(**c.base)
        self.trunk = UNet(base)
        del self.trunk.up, self.trunk.head  # only the way down and the middle are copied
        factor = c.condition_size // (base.image_size // base.patch_size)
        if factor < 1 or factor & (factor - 1) or factor.bit_length() - 1 > len(c.hint_channels):
            raise ValueError(f"a {c.condition_size}-pixel condition cannot be brought to the U-Net's "
                             f"{base.image_size // base.patch_size}×{base.image_size // base.patch_size} grid by "
                             f"halving it at most {len(c.hint_channels)} times")
        halvings, layers, width = factor.bit_length() - 1, [], c.condition_channels
        for i, out in enumerate(c.hint_channels):  # the last `halvings` widths halve the side
            stride = 2 if i >= len(c.hint_channels) - halvings else 1
            layers += [nn.Conv2d(width, out, 3, stride=stride, padding=1), nn.SiLU()]
            width = out
        last = nn.Conv2d(width, base.channels[0], 3, padding=1)  # zero: the hint adds nothing at first
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.hint = nn.Sequential(*layers, last)
        self.zero_convs = nn.ModuleList(zero_conv(w, c.zero_init) for w in skip_widths(self.trunk))

    @classmethod
    def from_base(cls, base: UNet, **options) -> "ControlNet":
        """A ControlNet for the trained ``base``, its copy initialised from the base's weights."""
        net = cls(ControlNetConfig(base=plain_config(base.config), **options))
        own = net.trunk.state_dict()
        net.trunk.load_state_dict({k: v for k, v in base.state_dict().items() if k in own})
        return net.to(next(base.parameters()).device)

    def condition_shape(self) -> tuple:
        return (self.config.condition_channels, self.config.condition_size, self.config.condition_size)

    def forward(self, x, t, cond: dict, control: torch.Tensor) -> list:
        """Residuals for the base's skips and middle from (x_t, t, the base's ``cond``, the condition picture)."""
        skips, middle, _ = self.trunk.encode(x, t, cond, added=self.hint(control.to(x.dtype)))
        return [conv(h) for conv, h in zip(self.zero_convs, [*skips, middle], strict=True)]


class Controlled(nn.Module):
    """The base U-Net (frozen) steered by a ``ControlNet``: a denoiser like any other — ``config``,
    ``noise_schedule`` and ``sample_shape`` are the base's — that also reads ``cond["control"]`` (B, C, H, W)
    in [0, 1] and, optionally, ``cond["control_scale"]`` (B,), the control strength λ."""

    def __init__(self, base: UNet, controlnet: ControlNet):
        super().__init__()
        if plain_config(UNetConfig(**controlnet.config.base)) != plain_config(base.config):
            raise ValueError("this ControlNet was made for another U-Net (its copied config differs from the base's)")
        self.base, self.controlnet = base.requires_grad_(False).eval(), controlnet

    @property
    def config(self) -> UNetConfig:
        return self.base.config

    @property
    def noise_schedule(self):
        return self.base.noise_schedule

    @property
    def sample_shape(self) -> tuple:
        return self.base.sample_shape

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()  # the frozen half never trains (no dropout), whatever mode the trainer asks for
        return self

    def check_cond(self, cond: dict, batch: int) -> None:
        if "control" not in cond:
            raise ValueError("a ControlNet-steered U-Net needs cond['control'], the condition picture "
                             f"(B, {', '.join(map(str, self.controlnet.condition_shape()))})")
        control = cond["control"]
        if control.ndim != 4 or tuple(control.shape[1:]) != self.controlnet.condition_shape():
            raise ValueError(f"the condition picture must be (B, {', '.join(map(str, self.controlnet.condition_shape()))}), "
                             f"got {tuple(control.shape)}")
        for key in ("control", "control_scale"):
            if key in cond and cond[key].shape[0] != batch:
                raise ValueError(f"condition {key!r} holds {cond[key].shape[0]} rows for a batch of {batch}")
        self.base.check_cond(self._base_cond(cond), batch)

    @staticmethod
    def _base_cond(cond: dict) -> dict:
        return {k: v for k, v in cond.items() if k not in ("control", "control_scale")}

    def null_cond(self, cond: dict) -> dict:
        return {**self.base.null_cond(self._base_cond(cond)),
                **{k: cond[k] for k in ("control", "control_scale") if k in cond}}

    def forward(self, x, t, cond: dict):
        self.check_cond(cond, x.shape[0])
        base_cond = self._base_cond(cond)
        residuals = self.controlnet(x, t, base_cond, cond["control"])
        if "control_scale" in cond:
            scale = cond["control_scale"].to(x.dtype).reshape(-1, 1, 1, 1)
            residuals = [scale * r for r in residuals]
        return self.base(x, t, base_cond, residuals=residuals)
