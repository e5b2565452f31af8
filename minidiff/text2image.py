"""Text to image: the article's whole pipeline, from a typed sentence to a picture.

    prompt ──tokenizer──→ ids ──CLIP text tower (frozen)──→ per-token states c (L × D) ─┐ cross-attention
    noise z_T ──sampler(U-Net ε/v(z_t, t | c), guided)──→ z_0 ──autoencoder's decoder──→ picture

Nothing here is a second pipeline: ``PromptEncoder`` turns prompts into the ``cond`` mapping the U-Net
reads (``{"context": c, "context_mask": m}``), and ``text_to_image`` hands it, with the negative
prompt's as ``uncond``, to ``minidiff.diffusion.pipeline.generate``. Classifier-free guidance mixes
the two predictions at every step,

    ε̂ = ε(z_t | ∅) + s · (ε(z_t | c) − ε(z_t | ∅)),     s = ``guidance_scale`` (s = 1: no guidance),

where ∅ is the empty prompt's context — or a negative prompt's, which the picture is then pushed away
from. (Imagen writes the same thing with w = s − 1: ε̂ = (1 + w) ε(z_t | c) − w ε(z_t | ∅).) One network
knows both because training replaced about 10 % of the captions with the empty prompt.
"""
import torch

from minidiff.diffusion.pipeline import generate
from minidiff.files import DataError
from minidiff.latents import load_denoiser, to_model_space
from minidiff.models.clip import CLIP
from minidiff.models.tokenizer import Tokenizer
from minidiff.weights import built_on, load_clip, read_manifest


class PromptEncoder:
    """A CLIP's text tower and its tokenizer, frozen: prompts → the U-Net's text condition.

    ``encoder(["a red circle", "一个红色圆形"])`` gives ``{"context": (B, L, D), "context_mask": (B, L)}``
    with L the longest prompt's tokens (padding after ``<end>`` is masked out of the cross-attention).
    A prompt longer than the CLIP's context is cut, with one warning (the tokenizer's rule)."""

    def __init__(self, clip: CLIP, tokenizer: Tokenizer):
        self.clip, self.tokenizer = clip.eval().requires_grad_(False), tokenizer

    @property
    def width(self) -> int:
        return self.clip.config.text_width

    def ids(self, prompts) -> torch.Tensor:
        """Token ids (B, L), cut to the longest prompt's length."""
        ids = self.tokenizer(prompts, self.clip.config.context_length)
        return ids[:, :int((ids != self.tokenizer.pad_id).sum(1).max())]

    def states(self, ids: torch.Tensor) -> dict:
        """The text condition of token ids. Without gradients, unless part of the text encoder trains
        (a new word's embedding: chapter 12's textual inversion)."""
        device = next(self.clip.parameters()).device
        if device != ids.device:
            self.clip.to(ids.device)
        learns = torch.is_grad_enabled() and any(p.requires_grad for p in self.clip.parameters())
        with torch.set_grad_enabled(learns):
            context, mask = self.clip.text_states(ids)
        return {"context": context, "context_mask": mask}

    def __call__(self, prompts) -> dict:
        return self.states(self.ids(prompts))

    def pair(self, prompts, negative_prompt: str = "") -> tuple[dict, dict]:
        """(cond, uncond) for guidance: the prompts' contexts and the negative prompt's (the empty
        prompt's by default), encoded together so both have the same number of tokens."""
        both = self([*prompts, negative_prompt])
        return ({k: v[:-1] for k, v in both.items()}, {k: v[-1:] for k, v in both.items()})


def load_text_to_image(name: str, directory=None):
    """A shipped text-to-image model: ``(model, decode, encoder)`` — the U-Net, its autoencoder's
    decoder (``load_denoiser``) and the ``PromptEncoder`` of the CLIP its manifest entry names, only if
    that CLIP is the very one it was trained with (same sha256)."""
    model, decode = load_denoiser(name, directory)
    manifest = read_manifest(directory)
    if "text_encoder" not in manifest[name]:
        raise DataError(f"{name} is not a text-to-image model (it reads no prompt): pick one such as t2i_shapes.")
    clip = built_on(name, "text_encoder", "with the text states of", "it would read every prompt wrongly",
                    directory=directory)
    return model, decode, PromptEncoder(*load_clip(clip, directory=directory))


def prompt_list(prompt, n: int | None = None) -> list[str]:
    """One prompt ``n`` times (default once), or a list of prompts, one per picture (then n must agree)."""
    prompts = [prompt] * (n or 1) if isinstance(prompt, str) else list(prompt)
    if n is not None and len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts but n = {n}: give one prompt, or one per picture")
    return prompts


def picture_shape(model, decode=None) -> tuple[int, int]:
    """(channels, size) of the pictures a model draws: its own sample's for a pixel model, its
    autoencoder's for a latent one."""
    if decode is None:
        return model.sample_shape[0], model.sample_shape[-1]
    return decode.vae.config.in_channels, decode.vae.config.image_size


def text_to_image(model, encoder: PromptEncoder, prompt, *, n: int | None = None, negative_prompt: str = "",
                  guidance_scale: float = 3.0, decode=None, image=None, strength: float = 1.0, control=None,
                  control_strength: float = 1.0, **options) -> torch.Tensor:
    """Pictures (N, C, H, W) in [-1, 1] for ``prompt`` — one string drawn ``n`` times (default 1), or a
    list of N prompts, one picture each — guided away from ``negative_prompt``; ``options`` go to
    ``generate`` (``sampler``, ``num_inference_steps``, ``seed``, …). Picture i's noise depends only
    on (seed, i): the same seed with an edited prompt starts from the same noise.

    img2img: with ``image`` (pictures in [-1, 1], one for all or one per prompt), start from it noised
    and redraw a share ``strength`` of the steps (``minidiff.diffusion.pipeline``'s SDEdit).

    ControlNet: with a ``Controlled`` model, ``control`` is the condition picture (one for all or one per
    prompt, values in [0, 1]) and ``control_strength`` λ (a number, or one per prompt) scales what it
    adds; both branches of guidance see it, as in diffusers."""
    cond, uncond = encoder.pair(prompt_list(prompt, n), negative_prompt)
    if control is not None:
        rows = len(cond["context"])
        control = torch.as_tensor(control, dtype=torch.float32)
        scale = torch.as_tensor(control_strength, dtype=torch.float32).reshape(-1)
        extra = {"control": control.expand(rows, *control.shape[1:]), "control_scale": scale.expand(rows)}
        cond, uncond = {**cond, **extra}, {**uncond, **extra}
    init = None if image is None else to_model_space(decode, torch.as_tensor(image))
    return generate(model, len(cond["context"]), cond=cond, uncond=uncond, guidance_scale=guidance_scale, decode=decode,
                    init=init, strength=strength, **options)


@torch.no_grad()
def cross_attention_maps(model, x_t: torch.Tensor, t, cond: dict) -> dict:
    """Where each latent position looks in the prompt: one forward pass of a text-to-image U-Net on
    (x_t, t | cond), with a forward hook on every cross-attention layer (``TransformerBlock.attn2``)
    that catches what it was given — the image tokens x (B, H·W, C), the context c (B, L, D) and its
    padding mask m — and recomputes its attention weights from the layer's own projections,

        A = softmax_j( q_i · k_j / √d ),   q = x W_q, k = c W_k,   j over the unmasked tokens only,

    head by head (d = C / heads). Each latent position i spreads a weight of 1 over the prompt's tokens
    j; ``maps[side][b, j]`` is token j's share at every position, a (side × side) picture.

    Returns ``{side: (B, L, side, side)}``, one entry per resolution the U-Net attends at (8 and 4 for
    ``t2i_shapes``), each averaged over the heads and over every block at that resolution (on the way
    down, in the middle and on the way up). Padding gets exactly 0."""
    from minidiff.models.attention import TransformerBlock
    layers = [m.attn2 for m in model.modules() if isinstance(m, TransformerBlock) and m.context_dim is not None]
    if not layers:
        raise ValueError("this U-Net has no cross-attention (it was built without context_dim): it reads no prompt")
    sums, counts = {}, {}

    def catch(layer, args, kwargs, output):
        given = dict(zip(("x", "context", "mask"), args), **kwargs)
        x, context, mask = given["x"], given["context"], given.get("mask")
        b, length, dim = x.shape
        heads, width = layer.heads, dim // layer.heads
        q = layer.q(x).reshape(b, length, heads, width).transpose(1, 2)                  # (B, heads, H·W, d)
        k = layer.k(context).reshape(b, context.shape[1], heads, width).transpose(1, 2)  # (B, heads, L, d)
        scores = q @ k.transpose(-1, -2) / width ** 0.5                                  # (B, heads, H·W, L)
        if mask is not None:
            scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        weights = scores.softmax(-1).mean(1)                                              # (B, H·W, L)
        side = int(round(length ** 0.5))
        sums[side] = sums.get(side, 0) + weights.transpose(1, 2).reshape(b, -1, side, side)
        counts[side] = counts.get(side, 0) + 1

    hooks = [layer.register_forward_hook(catch, with_kwargs=True) for layer in layers]
    try:
        model.eval()(x_t, t, cond)
    finally:
        for hook in hooks:
            hook.remove()
    return {side: sums[side] / counts[side] for side in sorted(sums, reverse=True)}
