"""Attention, written out: one block for the U-Net's image positions and, later, CLIP's text tokens.

Each position of a sequence x (B, L, D) asks a question (its query q), every position it may look at
offers a key k and a value v, and the answer is the values averaged by how well the keys fit:

    Attention(Q, K, V) = softmax(Q Kᵀ / √d) · V,      Q = x W_q,   K = c W_k,   V = c W_v

(Vaswani et al., 2017), computed by ``heads`` independent heads of width d = D / heads whose answers
are concatenated and mixed by W_out. With c = x it is *self*-attention (the parts of a picture
agree with each other); with c a context — the words of a prompt — it is *cross*-attention (each
image position looks up the words that concern it). A *causal* mask lets token i see only tokens
≤ i (CLIP's text encoder reads left to right); a padding mask hides the padding after a prompt.

``TransformerBlock`` is the pre-norm residual block of Stable Diffusion's U-Net and of CLIP:

    x ← x + SelfAttention(norm₁(x))
    x ← x + CrossAttention(norm₂(x), context)        (only with ``context_dim``)
    x ← x + FeedForward(norm₃(x))                    (only with ``feed_forward`` > 0)

Every sub-layer reads the residual stream x and adds to it, so a block that has learnt nothing yet
passes x through unchanged. The four projections are separate ``nn.Linear`` layers so that LoRA
(chapter 12) can wrap them one by one.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Multi-head attention from x (B, L, dim) to ``context`` (B, S, context_dim), or to x itself."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, causal: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} must be divisible by heads = {heads}")
        self.heads, self.causal = heads, causal
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(context_dim or dim, dim)
        self.v = nn.Linear(context_dim or dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, S), True where a context position may be looked at (a padding mask)."""
        source = x if context is None else context
        b, length, dim = x.shape

        def split_heads(t):                                               # (B, L, D) → (B, heads, L, D/heads)
            return t.reshape(b, t.shape[1], self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split_heads(self.q(x)), split_heads(self.k(source)), split_heads(self.v(source))
        allowed = None if mask is None else mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        if self.causal:
            causal = torch.ones(length, source.shape[1], dtype=torch.bool, device=x.device).tril()
            allowed = causal if allowed is None else allowed & causal
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # softmax(q kᵀ / √d) v, per head
        return self.out(out.transpose(1, 2).reshape(b, length, dim))


class TokenGroupNorm(nn.GroupNorm):
    """GroupNorm over a sequence of image positions (B, L, C): the statistics of each channel group
    over all positions, as the U-Net's convolutions normalise."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def _norm(kind: str, dim: int, groups: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "group":
        return TokenGroupNorm(groups, dim)
    raise ValueError(f"norm must be 'layer' or 'group', not {kind!r}")


class TransformerBlock(nn.Module):
    """Pre-norm residual self-attention, optional cross-attention and optional feed-forward
    (width ``feed_forward`` × dim, GELU), on sequences (B, L, dim). ``norm="group"`` normalises over
    positions (image tokens in the U-Net), ``"layer"`` over each token's channels (text)."""

    def __init__(self, dim: int, heads: int, *, context_dim: int | None = None, causal: bool = False,
                 feed_forward: int = 4, norm: str = "layer", groups: int = 8):
        super().__init__()
        self.norm1, self.attn1 = _norm(norm, dim, groups), Attention(dim, heads, causal=causal)
        self.context_dim = context_dim
        if context_dim is not None:
            self.norm2, self.attn2 = _norm(norm, dim, groups), Attention(dim, heads, context_dim)
        if feed_forward:
            self.norm3 = _norm(norm, dim, groups)
            self.ff = nn.Sequential(nn.Linear(dim, feed_forward * dim), nn.GELU(), nn.Linear(feed_forward * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.context_dim is not None:
            x = x + self.attn2(self.norm2(x), context, context_mask)
        if hasattr(self, "ff"):
            x = x + self.ff(self.norm3(x))
        return x
