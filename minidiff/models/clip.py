"""CLIP: a text encoder and an image encoder trained to agree (Radford et al., 2021).

Two towers map a picture and a caption into the same space of unit vectors of width ``embed_dim``:
an image x to u = f(x)/‖f(x)‖, a caption to w = g(ids)/‖g(ids)‖. For a batch of N (picture, caption)
pairs, the *similarity matrix* holds every picture against every caption, scaled by 1/τ:

    S_ij = (1/τ) · u_i · w_j          (N, N), cosines in [-1, 1] stretched to [-1/τ, 1/τ]

The pairs the data set made are on the diagonal; everything else in a row is some other picture's
caption. Training is a matching game played both ways (the symmetric InfoNCE loss, van den Oord et
al., 2018): each picture must pick its caption out of the batch, and each caption its picture,

    L = ½ [ (1/N) Σ_i −log softmax_j(S_i·)_i  +  (1/N) Σ_j −log softmax_i(S_·j)_j ]

so the towers learn what makes *this* caption fit *this* picture better than the others: colours,
shapes, positions. The temperature τ is learned too (as log 1/τ, ``logit_scale``, starting at
τ = 0.07): a small τ sharpens the softmax. CLIP caps 1/τ at 100 so that the logits cannot grow
until training becomes unstable.

The text tower is a causal transformer that reads ``<start> words… <end> <pad>…`` from the BPE
tokenizer (``minidiff.models.tokenizer``); its summary of the caption is the state at ``<end>``,
the one position whose causal attention has seen every word. ``text_tower="bag_of_words"`` replaces
it by the mean of the token embeddings: no positions, no attention, so "a red circle left of a blue
square" and "a blue circle left of a red square" look the same to it — the evidence that word order
needs a transformer. The image tower is a small CNN (residual GroupNorm/SiLU stages, stride-2
downsampling, global average pooling); a picture an integer k times larger than ``image_size`` is
first averaged over k×k blocks (``images_for_clip``), so a CLIP trained on 32-px shapes reads the
course's 64-px pictures as the shapes judge does.

``clip_loss(model, batch)`` is the loss for ``minidiff.train.train``. Procedural captions repeat,
so it also takes ``batch["group"]``, where equal ids mean equal captions, and then counts every
matching pair as correct (see ``contrastive_loss``); under a process group of W ranks it contrasts
each rank's pairs with the whole global batch (see ``gather_with_grad``).
"""
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from minidiff.models.attention import TransformerBlock

TEXT_TOWERS = ("transformer", "bag_of_words")
MAX_LOGIT_SCALE = math.log(100.0)  # 1/τ ≤ 100, as in CLIP


@dataclass
class CLIPConfig:
    """Everything that builds a CLIP. Build it from the tokenizer the ids come from:
    ``CLIPConfig(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, end_id=tokenizer.end_id)``;
    left out, ``pad_id`` and ``end_id`` are the tokenizer's layout (its last ids: start, end, pad)."""
    vocab_size: int = 1024
    context_length: int = 32               # the longest token sequence the text tower reads
    pad_id: int | None = None              # None: vocab_size − 1
    end_id: int | None = None              # None: vocab_size − 2
    text_tower: str = "transformer"        # or "bag_of_words"
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    image_size: int = 64
    image_channels: int = 3
    channels: tuple = (32, 64, 128, 256)   # CNN stage i works at H / 2^i with channels[i]
    groups: int = 8                        # GroupNorm groups in the CNN
    embed_dim: int = 128                   # the shared space both towers project into
    init_temperature: float = 0.07

    def __post_init__(self):  # a config read back from JSON has lists where tuples were
        self.channels = tuple(self.channels)
        self.pad_id = self.vocab_size - 1 if self.pad_id is None else self.pad_id
        self.end_id = self.vocab_size - 2 if self.end_id is None else self.end_id


class ConvBlock(nn.Module):
    """GroupNorm → SiLU → conv, twice, added to the input (through a 1×1 conv if the width changes)."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class CLIP(nn.Module):
    """The two towers and the temperature. ``encode_image`` (B, C, H, W) in [-1, 1] → (B, embed_dim)
    and ``encode_text`` (B, L) ids → (B, embed_dim) give unit vectors; ``text_states`` gives the
    per-token states and padding mask that a text-to-image U-Net cross-attends to."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = c = config
        if c.text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower must be one of {TEXT_TOWERS}, not {c.text_tower!r}")
        if c.image_size % 2 ** (len(c.channels) - 1):
            raise ValueError(f"image_size {c.image_size} must be divisible by 2^{len(c.channels) - 1} "
                             f"for {len(c.channels)} stages")
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        if c.text_tower == "transformer":
            self.position_embedding = nn.Parameter(0.01 * torch.randn(c.context_length, c.text_width))
            self.blocks = nn.ModuleList(TransformerBlock(c.text_width, c.text_heads, causal=True)
                                        for _ in range(c.text_layers))
            self.final_norm = nn.LayerNorm(c.text_width)
        self.text_projection = nn.Linear(c.text_width, c.embed_dim, bias=False)

        stages, width = [nn.Conv2d(c.image_channels, c.channels[0], 3, padding=1)], c.channels[0]
        for i, c_stage in enumerate(c.channels):
            if i > 0:
                stages.append(nn.Conv2d(width, width, 3, stride=2, padding=1))  # halve H, W
            stages.append(ConvBlock(width, c_stage, c.groups))
            width = c_stage
        stages += [nn.GroupNorm(c.groups, width), nn.SiLU()]
        self.image_encoder = nn.Sequential(*stages)
        self.image_projection = nn.Linear(width, c.embed_dim, bias=False)

        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c.init_temperature)))

    def padding_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """True where ``ids`` holds a real token (<start>, text or <end>), False on padding."""
        return ids != self.config.pad_id

    def end_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """The index of each row's ``<end>`` token: (B,) long."""
        return (ids == self.config.end_id).int().argmax(dim=-1)

    def text_states(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token states (B, L, text_width) and the padding mask (B, L) of token ids (B, L ≤ context_length).

        Transformer: h⁰ = E[ids] + P[:L], then pre-norm causal blocks and a final LayerNorm. The
        causal mask (token i sees tokens ≤ i) already hides the padding from every real token, since
        padding only follows ``<end>``: so more padding changes no real token's state. The states *at*
        padding positions are meaningless, which is why the mask comes along for a reader of all of
        them (the U-Net's cross-attention). Bag of words: the token embeddings E[ids] themselves.
        """
        if ids.shape[1] > self.config.context_length:
            raise ValueError(f"{ids.shape[1]} tokens, but this text encoder reads at most "
                             f"context_length = {self.config.context_length}")
        mask = self.padding_mask(ids)
        h = self.token_embedding(ids)
        if self.config.text_tower == "transformer":
            h = h + self.position_embedding[:ids.shape[1]]
            for block in self.blocks:
                h = block(h)
            h = self.final_norm(h)
        return h, mask

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """w = W_text · h_end / ‖·‖: the projected state at each row's ``<end>`` token (transformer),
        or of the mean Σ_k m_k E[ids_k] / Σ_k m_k over the real tokens (bag of words), normalised."""
        states, mask = self.text_states(ids)
        if self.config.text_tower == "transformer":
            pooled = states[torch.arange(len(ids), device=ids.device), self.end_positions(ids)]
        else:
            weights = mask.to(states.dtype)[:, :, None]
            pooled = (weights * states).sum(1) / weights.sum(1).clamp(min=1)
        return F.normalize(self.text_projection(pooled), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """u = W_image · mean_{H,W} CNN(x) / ‖·‖ for images x (B, C, H, W) in [-1, 1] (``images_for_clip``)."""
        images = images_for_clip(images, self.config.image_size)
        features = self.image_encoder(images).mean(dim=(2, 3))  # global average pool: (B, channels[-1])
        return F.normalize(self.image_projection(features), dim=-1)

    def inverse_temperature(self) -> torch.Tensor:
        """1/τ = exp(logit_scale), clamped at 100: past it the clamp passes no gradient back."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The similarity matrix S = (1/τ) · U Wᵀ (B_images, B_texts): row i scores every caption for image i."""
        return self.inverse_temperature() * self.encode_image(images) @ self.encode_text(ids).T


def images_for_clip(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Pictures at the size the image tower was trained on: a side k·``image_size`` (k = 2, 3, …) is
    averaged over k×k blocks (64-px shapes → 32 px); any other size passes unchanged (the CNN and its
    average pooling take any size, but read best the size they learned)."""
    side = images.shape[-1]
    if side > image_size and side % image_size == 0 and images.shape[-2] == side:
        return F.avg_pool2d(images, side // image_size)
    return images


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 in the forward pass; in the backward pass, sum each rank's gradient
    with respect to the gathered tensor over ranks and return this rank's slice."""

    @staticmethod
    def forward(ctx, x):
        ctx.rank, ctx.size = dist.get_rank(), len(x)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # Σ_r ∂L_r/∂(all rows)
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """This rank's rows x (b, …) → every rank's rows (W·b, …) in rank order, and where this rank's
    rows start. Every rank must bring the same b (the trainer's batch_size // W).

    Gradients go back to where each row was computed. Rank r's loss L_r reads all N = W·b rows, so the
    gradient of a row e_k of rank r is Σ_r' ∂L_r'/∂e_k, a sum over every rank's loss: the backward
    all-reduces (sums) the gradient of the gathered tensor and keeps this rank's slice. (Concatenating
    the local rows with *detached* copies of the others would drop the terms ∂L_r'/∂e_k with r' ≠ r.)
    Then the parameters' gradients summed over ranks are ∇ Σ_r L_r, and the trainer's average over
    ranks is ∇ (1/W) Σ_r L_r: the gradient of the mean of the per-rank losses, which ``contrastive_loss``
    makes equal to the loss of one process on the whole global batch.
    """
    world = _world()
    if world == 1:
        return x, 0
    return _GatherWithGrad.apply(x), dist.get_rank() * len(x)


def _gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of a tensor that needs no gradient (group ids)."""
    if _world() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_world())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def contrastive_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, scale: torch.Tensor,
                     groups: torch.Tensor | None = None) -> dict:
    """The symmetric InfoNCE loss of b matching pairs of unit vectors u_i, w_i (b, D), ``scale`` = 1/τ.

    With ``groups`` (b,) ids, where equal ids mean equal captions, the targets are soft: a batch of
    procedural captions holds the same caption several times, and then the picture of pair i fits
    the caption of pair j just as well as its own. Calling that a mistake (the one-hot diagonal)
    would push apart a picture and its own caption's exact words. So each row's target spreads
    evenly over its positives P_i = {j : group_j = group_i}:

        q_ij = [j ∈ P_i] / |P_i|,     L_image→text = (1/N) Σ_i  −Σ_j q_ij log softmax_j(S_ij)

    and likewise down the columns for text→image; L is their mean. Without ``groups`` every pair is
    its own group, P_i = {i}, and this is the standard diagonal loss. Its lowest value is the mean of
    log |P_i|, reached when each row spreads its softmax evenly over its positives.

    Under a process group, rank r scores its b images against all N = W·b captions (rows of S) and
    its b captions against all N images (columns), averaging over its b rows: the mean of L_r over
    ranks is L of the whole batch, and the trainer's averaged gradient is its gradient
    (``gather_with_grad``). Returns "loss" and "accuracy": how often a row's best score is a positive.
    """
    b = len(image_embeddings)
    all_images, start = gather_with_grad(image_embeddings)
    all_texts, _ = gather_with_grad(text_embeddings)
    groups = torch.arange(len(all_images), device=image_embeddings.device) if groups is None else _gather(groups)
    mine = slice(start, start + b)
    positive = groups[mine, None] == groups[None, :]            # (b, N): P_i for this rank's rows
    targets = positive.float() / positive.sum(1, keepdim=True)  # q_ij
    # logits in float32 even under bf16 autocast: at 1/τ = 100, bf16 would round them to the nearest 0.5
    with torch.autocast(image_embeddings.device.type, enabled=False):
        scale = scale.float()
        image_to_text = scale * all_images[mine].float() @ all_texts.float().T  # (b, N): rows S_i·
        text_to_image = scale * all_texts[mine].float() @ all_images.float().T  # (b, N): columns S_·j
        loss = (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets)) / 2
    hits = [positive.gather(1, logits.argmax(1, keepdim=True)) for logits in (image_to_text, text_to_image)]
    return {"loss": loss, "accuracy": torch.cat(hits).float().mean()}


def clip_loss(model: CLIP, batch: dict) -> dict:
    """The trainer's loss for CLIP: ``batch`` holds "image" (B, C, H, W), "ids" (B, L) and optionally
    "group" (B,), equal where the captions are equal. Logs the loss, the matching accuracy and τ."""
    scale = model.inverse_temperature()
    out = contrastive_loss(model.encode_image(batch["image"]), model.encode_text(batch["ids"]), scale,
                           batch.get("group"))
    return {**out, "temperature": 1 / scale.detach()}
