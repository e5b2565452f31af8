"""The denoiser: one readable U-Net (Ronneberger et al., 2015, as used by DDPM, Ho et al., 2020).

The article pictures it as two buildings side by side: the left one goes down floor by floor
(each floor halves the image and doubles the channels — "what is in the picture"), the right one
comes back up (restoring detail), and a bridge joins each floor to its twin — the *skip
connections* — so that fine detail does not have to squeeze through the bottom floor.

Inputs: noisy images x_t (B, C, H, W), the noise step t (B,) — an integer in [0, T) or a fractional
one from a sampler — and optionally class labels (B,) or a text ``context`` (B, L, D). Output: a
tensor shaped like x_t, read as ε, x_0 or v according to the model's ``prediction_type``.

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
  (used by the text-to-image chapters; ``context_dim`` switches it on).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class AttentionBlock(nn.Module):
    """Self-attention over all positions of a (small) feature map, so distant parts of the image
    can agree; with ``context_dim``, then cross-attention in which each position looks up the
    context tokens (e.g. the words of a prompt). Both are residual."""

    def __init__(self, channels: int, heads: int, groups: int, context_dim: int | None = None):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.self_attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.cross_attention = None
        if context_dim is not None:
            self.cross_norm = nn.LayerNorm(channels)
            self.cross_attention = nn.MultiheadAttention(channels, heads, kdim=context_dim, vdim=context_dim,
                                                         batch_first=True)

    def forward(self, x, context=None):
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)                      # (B, H·W, C)
        out = self.self_attention(tokens, tokens, tokens, need_weights=False)[0]
        if self.cross_attention is not None:
            if context is None:
                raise ValueError("this U-Net was built with context_dim: pass context (B, L, context_dim)")
            query = self.cross_norm(tokens + out)
            out = out + self.cross_attention(query, context, context, need_weights=False)[0]
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """A U-Net with ``len(channels)`` levels; level i works at resolution H / 2^i with channels[i].

    ``attention`` lists, per level, whether its blocks attend (typically only the lowest
    resolutions: attention costs grow with the square of the number of positions).
    ``prediction_type``, ``schedule`` and ``num_train_steps`` do not change the network; they record
    what it was trained on (``minidiff.diffusion``) so a checkpoint can be sampled correctly.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, channels=(32, 64, 128), attention=(False, False, True),
                 num_res_blocks: int = 2, dropout: float = 0.1, heads: int = 4, groups: int = 8,
                 num_classes: int | None = None, context_dim: int | None = None,
                 prediction_type: str = "epsilon", schedule: str = "cosine", num_train_steps: int = 1000,
                 patch_size: int = 1):
        super().__init__()
        if len(attention) != len(channels):
            raise ValueError("give one attention flag per level (len(attention) == len(channels))")
        if image_size % (patch_size * 2 ** (len(channels) - 1)):
            raise ValueError(f"image_size {image_size} must be divisible by patch_size·2^{len(channels) - 1} = "
                             f"{patch_size * 2 ** (len(channels) - 1)} for {len(channels)} levels")
        self.config = dict(in_channels=in_channels, image_size=image_size, channels=list(channels),
                           attention=list(attention), num_res_blocks=num_res_blocks, dropout=dropout, heads=heads,
                           groups=groups, num_classes=num_classes, context_dim=context_dim,
                           prediction_type=prediction_type, schedule=schedule, num_train_steps=num_train_steps,
                           patch_size=patch_size)
        # what the network was trained to do, so that samplers read its output correctly
        self.prediction_type, self.schedule, self.num_train_steps = prediction_type, schedule, num_train_steps
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.patch_size = patch_size
        emb_dim = 4 * channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embedding = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

        def block(c_in, c_out, attend):
            layers = nn.ModuleList([ResBlock(c_in, c_out, emb_dim, dropout, groups)])
            if attend:
                layers.append(AttentionBlock(c_out, heads, groups, context_dim))
            return layers

        self.stem = nn.Conv2d(in_channels * patch_size ** 2, channels[0], 3, padding=1)
        self.down, skips, c = nn.ModuleList(), [channels[0]], channels[0]
        for level, (c_level, attend) in enumerate(zip(channels, attention)):
            for _ in range(num_res_blocks):
                self.down.append(block(c, c_level, attend))
                c = c_level
                skips.append(c)
            if level < len(channels) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))  # halve H and W
                skips.append(c)
        self.middle = nn.ModuleList([*block(c, c, True), ResBlock(c, c, emb_dim, dropout, groups)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(channels))):
            for _ in range(num_res_blocks + 1):  # one more than on the way down: it takes the downsampler's skip too
                self.up.append(block(c + skips.pop(), channels[level], attention[level]))
                c = channels[level]
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]))
        self.head = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, in_channels * patch_size ** 2, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)  # start by predicting 0: a calm first few hundred steps
        nn.init.zeros_(self.head[-1].bias)

    def _run(self, layers, h, emb, context):
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, AttentionBlock):
                h = layer(h, context)
            else:
                h = layer(h)
        return h

    def forward(self, x, t, labels=None, context=None):
        expected = (self.in_channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"this U-Net takes images of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.time_mlp[0].in_features))
        if self.label_embedding is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, device=x.device)  # the null label
            emb = emb + self.label_embedding(labels)
        h = self.stem(F.pixel_unshuffle(x, self.patch_size))
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb, context)
            hs.append(h)
        h = self._run(self.middle, h, emb, context)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)  # the bridge from the twin floor
            h = self._run(layers, h, emb, context)
        return F.pixel_shuffle(self.head(h), self.patch_size)
