"""The denoiser: one readable U-Net (Ronneberger et al., 2015, as used by DDPM, Ho et al., 2020).

The article pictures it as two buildings side by side: the left one goes down floor by floor
(each floor halves the image and doubles the channels — "what is in the picture"), the right one
comes back up (restoring detail), and a bridge joins each floor to its twin — the *skip
connections* — so that fine detail does not have to squeeze through the bottom floor.

Inputs: noisy images x_t (B, C, H, W), the noise step t (B,) — an integer in [0, T) or a fractional
one from a sampler — and ``cond``, one mapping of conditions: class ``labels`` (B,), a text
``context`` (B, L, D) with its ``context_mask`` (B, L), pictures to read beside x_t, ``concat``
(B, C', H, W). Output: a tensor shaped like x_t, read as
ε, x_0 or v according to the config's ``prediction_type``.

``patch_size`` p > 1 first folds each p×p patch of pixels into channels (``pixel_unshuffle``: a
28×28×1 digit becomes 14×14×4) and unfolds the output at the end, the "patching" of DiT/U-ViT and of
simple diffusion (Hoogeboom et al., 2023). Nothing is lost — the fold is a rearrangement — but
every layer then works on p² fewer positions: on a laptop CPU that is the difference between a
denoiser that trains in an afternoon and one that does not.

How the conditions get in:
* t: a sinusoidal embedding (as in the Transformer) through a small MLP, added inside every
  residual block, so every layer knows how noisy its input is;
* labels: a learned embedding added to the time embedding; label ``num_classes`` is the "null"
  label (no condition) that classifier-free guidance needs;
* context: cross-attention from image positions to the context tokens, in the attention blocks
  (the shared ``minidiff.models.attention.TransformerBlock``; ``context_dim`` switches it on);
* concat: ``concat_channels`` more input channels, stacked onto x_t before the first convolution —
  a condition that is itself a picture of the same size, such as the inpainting model's masked picture
  and mask (``add_input_channels`` grows a trained U-Net so, starting as the very same function).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minidiff.diffusion.loss import PREDICTION_TYPES
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.models.attention import TransformerBlock


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding: [cos(t·ω_k), sin(t·ω_k)] with ω_k = max_period^(−k/(dim/2)), k < dim/2.
    Nearby steps get similar vectors and the network can read off t at every scale."""
    half = dim // 2
    omega = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * omega[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the embedding (time, label) as a per-channel shift, → GroupNorm →
    SiLU → dropout → conv; added to the input (through a 1×1 conv if the channel count changes)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class ImageAttention(nn.Module):
    """The shared ``TransformerBlock`` over the H·W positions of a (small) feature map, so that
    distant parts of the image can agree and, with ``context_dim``, each position can look up the
    context tokens (the words of a prompt). GroupNorm, as everywhere in the U-Net, normalises."""

    def __init__(self, channels: int, heads: int, groups: int, context_dim: int | None, feed_forward: int):
        super().__init__()
        self.block = TransformerBlock(channels, heads, context_dim=context_dim, feed_forward=feed_forward,
                                      norm="group", groups=groups)

    def forward(self, x, context=None, context_mask=None):
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)                                 # (B, H·W, C)
        return self.block(tokens, context, context_mask).transpose(1, 2).reshape(b, c, h, w)


@dataclass
class UNetConfig:
    """Everything that builds a U-Net. ``prediction_type``, ``schedule`` and ``num_train_steps`` do not
    change the network; they say what it was trained to do, so that it is trained and sampled alike."""
    in_channels: int = 1
    image_size: int = 28
    channels: tuple = (32, 64, 128)       # level i works at resolution H / 2^i with channels[i]
    attention: tuple = (False, False, True)  # per level: attend? (the cost grows with positions²)
    num_res_blocks: int = 2
    dropout: float = 0.1
    heads: int = 4
    groups: int = 8
    num_classes: int | None = None        # class labels (plus one null label for guidance)
    context_dim: int | None = None        # a text context (B, L, context_dim) through cross-attention
    concat_channels: int = 0              # picture-shaped conditions (B, concat_channels, H, W) read beside x_t
    feed_forward: int = 4                 # attention blocks' feed-forward width, × channels (0: none)
    prediction_type: str = "epsilon"
    schedule: str = "cosine"
    num_train_steps: int = 1000
    patch_size: int = 1

    def __post_init__(self):  # a config read back from JSON has lists where tuples were
        self.channels, self.attention = tuple(self.channels), tuple(self.attention)


class UNet(nn.Module):
    """A U-Net with ``len(config.channels)`` levels, conditioned on the step t and on ``cond``, a mapping
    of the conditions it was built for: ``{"labels": (B,)}`` with ``num_classes``, ``{"context":
    (B, L, D), "context_mask": (B, L)}`` with ``context_dim``. It owns the noise schedule it was
    trained on (``noise_schedule``, float32 buffers saved with the weights)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        if c.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, not {c.prediction_type!r}")
        if len(c.attention) != len(c.channels):
            raise ValueError("give one attention flag per level (len(attention) == len(channels))")
        levels = len(c.channels)
        if c.image_size % (c.patch_size * 2 ** (levels - 1)):
            raise ValueError(f"image_size {c.image_size} must be divisible by patch_size·2^{levels - 1} = "
                             f"{c.patch_size * 2 ** (levels - 1)} for {levels} levels")
        self.noise_schedule = NoiseSchedule(c.schedule, c.num_train_steps)
        emb_dim = 4 * c.channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(c.channels[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embedding = nn.Embedding(c.num_classes + 1, emb_dim) if c.num_classes else None

        def block(c_in, c_out, attend):
            layers = nn.ModuleList([ResBlock(c_in, c_out, emb_dim, c.dropout, c.groups)])
            if attend:
                layers.append(ImageAttention(c_out, c.heads, c.groups, c.context_dim, c.feed_forward))
            return layers

        self.stem = nn.Conv2d((c.in_channels + c.concat_channels) * c.patch_size ** 2, c.channels[0], 3, padding=1)
        self.down, skips, width = nn.ModuleList(), [c.channels[0]], c.channels[0]
        for level, (c_level, attend) in enumerate(zip(c.channels, c.attention)):
            for _ in range(c.num_res_blocks):
                self.down.append(block(width, c_level, attend))
                width = c_level
                skips.append(width)
            if level < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(width, width, 3, stride=2, padding=1)]))  # halve H, W
                skips.append(width)
        self.middle = nn.ModuleList([*block(width, width, True), ResBlock(width, width, emb_dim, c.dropout, c.groups)])
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            for _ in range(c.num_res_blocks + 1):  # one more than on the way down: the downsampler's skip too
                self.up.append(block(width + skips.pop(), c.channels[level], c.attention[level]))
                width = c.channels[level]
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(width, width, 3, padding=1)]))
        self.head = nn.Sequential(nn.GroupNorm(c.groups, width), nn.SiLU(),
                                  nn.Conv2d(width, c.in_channels * c.patch_size ** 2, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)  # start by predicting 0: a calm first few hundred steps
        nn.init.zeros_(self.head[-1].bias)

    @property
    def sample_shape(self) -> tuple:
        """The shape (C, H, W) of one x_t: what sampling starts from."""
        return (self.config.in_channels, self.config.image_size, self.config.image_size)

    def check_cond(self, cond: dict, batch: int) -> None:
        """Refuse, with one clear line, a condition this U-Net was not built for, or one it lacks."""
        c = self.config
        built = {"labels": c.num_classes is not None, "context": c.context_dim is not None,
                 "context_mask": c.context_dim is not None, "concat": c.concat_channels > 0}
        options = {"labels": "num_classes", "context": "context_dim", "context_mask": "context_dim",
                   "concat": "concat_channels"}
        for key, value in cond.items():
            if key not in built:
                raise ValueError(f"unknown condition {key!r}; a U-Net takes {', '.join(built)}")
            if not built[key]:
                raise ValueError(f"this U-Net was built without {options[key]}: it takes no {key!r} condition")
            if value.shape[0] != batch:
                raise ValueError(f"condition {key!r} holds {value.shape[0]} rows for a batch of {batch}")
        if built["context"] and "context" not in cond:
            raise ValueError(f"this U-Net was built with context_dim={c.context_dim}: pass "
                             "cond={'context': (B, L, context_dim)} (the empty prompt's for no prompt)")
        wanted = (c.concat_channels, c.image_size, c.image_size)
        if built["concat"] and ("concat" not in cond or tuple(cond["concat"].shape[1:]) != wanted):
            got = tuple(cond["concat"].shape[1:]) if "concat" in cond else "none"
            raise ValueError(f"this U-Net reads {c.concat_channels} more channels beside x_t: pass "
                             f"cond={{'concat': (B, {', '.join(map(str, wanted))})}}, got {got}")

    def null_cond(self, cond: dict) -> dict:
        """The unconditional twin of ``cond`` that classifier-free guidance needs, where the U-Net
        itself knows it: the null label. A text context's twin is the empty prompt's, which only the
        text encoder knows: pass it as ``uncond``."""
        if "context" in cond:
            raise ValueError("guidance with a text context needs uncond={'context': …}: the empty prompt's "
                             "(or a negative prompt's) context")
        return {k: torch.full_like(v, self.config.num_classes) if k == "labels" else v for k, v in cond.items()}

    def _run(self, layers, h, emb, cond):
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, ImageAttention):
                h = layer(h, cond.get("context"), cond.get("context_mask"))
            else:
                h = layer(h)
        return h

    def encode(self, x, t, cond: dict, added: torch.Tensor | None = None) -> tuple[list, torch.Tensor, torch.Tensor]:
        """The way down and the middle: ``(skips, h, emb)`` — every floor's output that the way up
        will read across its bridge (the stem's first), the middle's output and the step (and label)
        embedding. ``added`` (B, channels[0], H/p, W/p) is added after the stem: a ControlNet's copy of
        this half reads its condition picture there (``minidiff.models.controlnet``)."""
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.time_mlp[0].in_features))
        if self.label_embedding is not None:
            labels = cond.get("labels")
            if labels is None:
                labels = torch.full((x.shape[0],), self.config.num_classes, device=x.device)  # the null label
            emb = emb + self.label_embedding(labels)
        if "concat" in cond:
            x = torch.cat([x, cond["concat"]], dim=1)
        h = self.stem(F.pixel_unshuffle(x, self.config.patch_size))
        if added is not None:
            h = h + added
        skips = [h]
        for layers in self.down:
            h = self._run(layers, h, emb, cond)
            skips.append(h)
        return skips, self._run(self.middle, h, emb, cond), emb

    def forward(self, x, t, cond: dict | None = None, residuals: list | None = None):
        """``residuals``: one tensor per skip and then one for the middle, added to them before the way
        up reads them (a ControlNet's output; zeros change nothing)."""
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"this U-Net takes images of shape (B, {', '.join(map(str, self.sample_shape))}), "
                             f"got {tuple(x.shape)}")
        cond = cond or {}
        self.check_cond(cond, x.shape[0])
        hs, h, emb = self.encode(x, t, cond)
        if residuals is not None:
            *extra, middle = residuals
            hs, h = [a + b for a, b in zip(hs, extra, strict=True)], h + middle
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)  # the bridge from the twin floor
            h = self._run(layers, h, emb, cond)
        return F.pixel_shuffle(self.head(h), self.config.patch_size)

    @staticmethod
    def upgrade_checkpoint(config: dict, state: dict) -> tuple[dict, dict]:
        """Weights saved before the shared attention block (chapters 04–06 shipped them so): the fused
        ``nn.MultiheadAttention`` projection splits into q, k and v, its out_proj becomes ``out``, and
        those blocks had no feed-forward. The schedule, not yet saved then, is rebuilt from the config.
        The numbers are the same, so the network computes the same function."""
        legacy = [k for k in state if k.endswith(".self_attention.in_proj_weight")]
        if not legacy:
            return config, state
        if any(".cross_attention." in k for k in state):
            raise ValueError("weights with the old cross-attention block cannot be converted: re-train them")
        state = dict(state)
        for key in legacy:
            prefix = key[:-len("self_attention.in_proj_weight")]                 # e.g. "down.2.1."
            block = prefix + "block."
            for name in ("weight", "bias"):
                q, k, v = state.pop(f"{prefix}self_attention.in_proj_{name}").chunk(3)
                state.update({f"{block}attn1.q.{name}": q, f"{block}attn1.k.{name}": k, f"{block}attn1.v.{name}": v,
                              f"{block}attn1.out.{name}": state.pop(f"{prefix}self_attention.out_proj.{name}"),
                              f"{block}norm1.{name}": state.pop(f"{prefix}norm.{name}")})
        config = {**config, "feed_forward": 0}
        schedule = NoiseSchedule(config["schedule"], config["num_train_steps"]).state_dict()
        state.update({f"noise_schedule.{k}": v for k, v in schedule.items()})
        return config, state


def add_input_channels(model: UNet, extra: int) -> UNet:
    """A copy of a trained ``model`` that also reads ``extra`` picture-shaped channels (``cond["concat"]``),
    with the first convolution's weights for them at zero: until training moves them, it computes exactly
    what ``model`` did, whatever it is given there (how Stable Diffusion's inpainting model starts)."""
    config = model.config
    wider = UNet(UNetConfig(**{**config.__dict__, "concat_channels": config.concat_channels + extra}))
    state = dict(model.state_dict())
    stem = state["stem.weight"]
    state["stem.weight"] = torch.cat([stem, stem.new_zeros(stem.shape[0], extra * config.patch_size ** 2,
                                                          *stem.shape[2:])], dim=1)
    wider.load_state_dict(state)
    return wider.to(stem.device)
