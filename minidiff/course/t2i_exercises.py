"""Chapter 09's exercises: the two computations by which a prompt steers the denoiser — cross-attention
from the latent's positions to the prompt's token states, and classifier-free guidance, in diffusers'
convention (s) and in Imagen's (w = s − 1). Each ``check_<name>(fn)`` prints one verdict
(``checks.verdict``): cross-attention is checked against ``F.scaled_dot_product_attention``, the two
guidance formulas against ``torch.lerp``, implementations that share no code with the answers.
"""
import torch
import torch.nn.functional as F

from minidiff.course.checks import Mistake, verdict


def _check(name: str, fn, cases, shape_hint: str = None) -> bool:
    return verdict(name, fn, cases, shape_hint, MISTAKES[name])


def _randn(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _attention(q, k, v, mask):
    """The reference: torch's own attention, with the padding mask as a boolean "may look" mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, :])


def check_cross_attention(fn) -> bool:
    """``fn(q, k, v, mask)``: one head of cross-attention. Queries q (B, L, d) from the latent's L
    positions, keys k and values v (B, S, d) from the prompt's S tokens, ``mask`` (B, S) True on real
    tokens and False on padding; the answer (B, L, d) is

        softmax_j( q_i · k_j / √d ) · v,     the softmax over the unmasked tokens j only."""
    mask = torch.tensor([[True, True, True, False, False], [True, True, True, True, False]])
    cases = []
    for args, hint in [((_randn(40, 2, 3, 4), _randn(41, 2, 5, 4), _randn(42, 2, 5, 4), mask),
                        "each image position takes one softmax over the prompt's tokens (the last dimension of "
                        "the scores), and the padding after a prompt must get no weight at all: set its scores "
                        "to −∞ before that softmax, so that the real tokens' weights add up to 1"),
                       ((3 * _randn(43, 1, 6, 16), 3 * _randn(44, 1, 2, 16), _randn(45, 1, 2, 16),
                         torch.ones(1, 2, dtype=torch.bool)),
                        "divide the scores by √d (d = q.shape[-1], the width of one query) before the softmax"),
                       ((_randn(46, 3, 7, 8), _randn(47, 3, 4, 8), _randn(48, 3, 4, 8),
                         torch.tensor([[True, False, False, False], [True, True, False, False],
                                       [True, True, True, True]])),
                        "L positions and S tokens: the weights are (B, L, S), one row of S per position, and "
                        "they mix the values (B, S, d) into (B, L, d)")]:
        cases.append((args, _attention(*args), hint))
    return _check("cross_attention", fn, cases, "one answer per image position, as wide as a value: the weights "
                                                "(B, L, S) times v (B, S, d) give (B, L, d)")


def _predictions(seed: int):
    return _randn(seed, 2, 4, 8, 8), _randn(seed + 1, 2, 4, 8, 8)


def check_classifier_free_guidance(fn) -> bool:
    """``fn(conditional, unconditional, guidance_scale)``: diffusers' classifier-free guidance,

        ε̂ = ε(z | ∅) + s · (ε(z | c) − ε(z | ∅)),     s = guidance_scale,

    from the prediction with the prompt (``conditional``) and with the empty prompt (``unconditional``);
    s = 1 gives the conditional prediction itself, s = 0 the unconditional one."""
    cases = []
    for seed, scale, hint in [(50, 7.5, "start from the unconditional prediction and go s times the step from it "
                                        "to the conditional one"),
                              (52, 1.0, "s = 1 means no guidance: the answer is the conditional prediction itself"),
                              (54, 0.0, "s = 0 leaves only the unconditional prediction: start from it")]:
        conditional, unconditional = _predictions(seed)
        cases.append(((conditional, unconditional, scale), torch.lerp(unconditional, conditional, scale), hint))
    return _check("classifier_free_guidance", fn, cases)


def check_guidance_from_w(fn) -> bool:
    """``fn(conditional, unconditional, w)``: the same guidance in Imagen's convention (Saharia et al.,
    2022; Ho & Salimans, 2022),

        ε̂ = (1 + w) · ε(z | c) − w · ε(z | ∅),     w = s − 1,

    so that w = 0 means no guidance, and diffusers' s = 7.5 is w = 6.5."""
    cases = []
    for seed, w, hint in [(56, 6.5, "(1 + w) times the conditional prediction, minus w times the unconditional one"),
                          (58, 0.0, "w = 0 means no guidance: the answer is the conditional prediction itself"),
                          (60, -1.0, "w = −1 is s = 0: only the unconditional prediction is left")]:
        conditional, unconditional = _predictions(seed)
        cases.append(((conditional, unconditional, w), torch.lerp(unconditional, conditional, 1 + w), hint))
    return _check("guidance_from_w", fn, cases)


# ----------------------------------------------------------------------------- the mistakes students make

def _scores(q, k):
    return q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5


MISTAKES = {  # what students get wrong in each exercise, and the hint for it
    "cross_attention": [
        Mistake("you forgot the padding mask", lambda q, k, v, m: _scores(q, k).softmax(-1) @ v,
                "the padding tokens after <end> carry no meaning: fill their scores with −∞ "
                "(scores.masked_fill(~mask[:, None, :], float('-inf'))) before the softmax"),
        Mistake("you masked the real tokens instead of the padding",
                lambda q, k, v, m: _scores(q, k).masked_fill(m[:, None, :], float("-inf")).softmax(-1) @ v,
                "mask is True where a token may be looked at: hide the places where it is False (~mask)"),
        Mistake("you set the padding's scores to 0 instead of −∞",
                lambda q, k, v, m: (_scores(q, k) * m[:, None, :]).softmax(-1) @ v,
                "a score of 0 still gets weight e⁰ = 1 in the softmax; only −∞ gets e^−∞ = 0"),
        Mistake("you zeroed the padding's weights after the softmax",
                lambda q, k, v, m: (_scores(q, k).softmax(-1) * m[:, None, :]) @ v,
                "after the softmax the remaining weights no longer add up to 1: mask the scores before it"),
        Mistake("you forgot to divide by √d", lambda q, k, v, m: (q @ k.transpose(-1, -2)).masked_fill(
                    ~m[:, None, :], float("-inf")).softmax(-1) @ v,
                "the dot product of two d-wide vectors grows like √d; divide the scores by √d (d = q.shape[-1]) "
                "so that the softmax does not saturate"),
        Mistake("you divided by d instead of √d",
                lambda q, k, v, m: (q @ k.transpose(-1, -2) / q.shape[-1]).masked_fill(
                    ~m[:, None, :], float("-inf")).softmax(-1) @ v,
                "the scale is 1/√d, the square root of the query's width: q.shape[-1] ** 0.5")],
    "classifier_free_guidance": [
        Mistake("you swapped the conditional and the unconditional prediction",
                lambda c, u, s: c + s * (u - c),
                "guidance starts at the unconditional prediction and steps towards the conditional one: "
                "unconditional + s · (conditional − unconditional)"),
        Mistake("you left out the starting point", lambda c, u, s: s * (c - u),
                "s · (conditional − unconditional) is only the step; add it to the unconditional prediction"),
        Mistake("you used Imagen's formula with s in the place of w", lambda c, u, s: c + s * (c - u),
                "that is Imagen's (1 + w) · c − w · u with w = s: one step too far. In diffusers' convention "
                "the step is taken from the unconditional prediction: u + s · (c − u)"),
        Mistake("you only scaled the conditional prediction", lambda c, u, s: s * c,
                "guidance mixes two predictions: the difference c − u is the direction the prompt adds"),
        Mistake("you averaged the two predictions", lambda c, u, s: u + s * (c - u) / 2,
                "no ½: the full difference c − u, times s, is added to the unconditional prediction")],
    "guidance_from_w": [
        Mistake("you used diffusers' formula with w in the place of s", lambda c, u, w: u + w * (c - u),
                "with w the step is counted from the conditional prediction: c + w · (c − u) = (1 + w) c − w u; "
                "diffusers' u + s · (c − u) needs s = w + 1"),
        Mistake("you forgot the 1 in 1 + w", lambda c, u, w: w * c - w * u,
                "w · (c − u) is only the extra step: the conditional prediction itself comes first, (1 + w) · c"),
        Mistake("you added the unconditional prediction instead of subtracting it",
                lambda c, u, w: (1 + w) * c + w * u,
                "guidance pushes away from the unconditional prediction: − w · u"),
        Mistake("you swapped the conditional and the unconditional prediction",
                lambda c, u, w: (1 + w) * u - w * c,
                "the prompt's prediction c gets the weight 1 + w; the empty prompt's u is subtracted")],
}
