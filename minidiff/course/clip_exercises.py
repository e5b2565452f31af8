"""Chapter 08's exercises: CLIP's similarity matrix, its symmetric InfoNCE loss and zero-shot reading —
the three computations between the towers' embeddings and what CLIP says. Each ``check_<name>(fn)``
prints one verdict (``checks.verdict``): the loss is checked against the library's own
``contrastive_loss``, the cosines against ``F.cosine_similarity``, the zero-shot answers against the
best score of each row.
"""
import torch
import torch.nn.functional as F

from minidiff.course.checks import Mistake, verdict
from minidiff.models.clip import contrastive_loss


def _check(name: str, fn, cases, shape_hint: str = None) -> bool:
    return verdict(name, fn, cases, shape_hint, MISTAKES[name])


def _vectors(seed: int, n: int, d: int = 8, unit: bool = False) -> torch.Tensor:
    """n embeddings of width d from a seed: unit vectors, or of lengths between ½ and 3 (as a tower's
    output before it is normalised)."""
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(n, d, generator=g), dim=1)
    return v if unit else v * (0.5 + 2.5 * torch.rand(n, 1, generator=g))


def check_similarity_matrix(fn) -> bool:
    """``fn(image_embeddings, text_embeddings)``: the cosine of every picture (N, D) against every caption
    (M, D), an (N, M) matrix, S_ij = u_i · w_j / (‖u_i‖ ‖w_j‖); the embeddings are not unit vectors."""
    images = _vectors(20, 3)
    lengths = torch.tensor([[3.0], [0.2], [1.5]])
    cases = []
    for args, hint in [((images, lengths * F.normalize(images, dim=1)),
                        "a caption pointing the way its picture points has cosine 1, whatever the two lengths: "
                        "divide each embedding by its own length, the norm over dim 1"),
                       ((images, _vectors(21, 3)),
                        "row i holds picture i against every caption: S_ij = cos(image i, text j)"),
                       ((_vectors(22, 2), _vectors(23, 5)), "N pictures and M captions give an (N, M) matrix")]:
        cases.append((args, F.cosine_similarity(args[0][:, None], args[1][None], dim=-1), hint))
    return _check("similarity_matrix", fn, cases, "one row per picture and one column per caption, every pair, "
                                                  "not only the matching ones: (N, D) @ (D, M) = (N, M)")


def check_info_nce(fn) -> bool:
    """``fn(similarities, inverse_temperature)``: CLIP's symmetric InfoNCE loss (chapter 08) for N pairs
    whose cosines are ``similarities`` (N, N), picture i's own caption on the diagonal: with logits
    L = (1/τ) · S, the mean of the cross-entropies of the rows (each picture picks its caption) and of
    the columns (each caption picks its picture), ½ [CE(L, diag) + CE(Lᵀ, diag)], a scalar tensor."""
    one = _vectors(24, 1, unit=True)
    cases = []
    for (images, texts), scale, hint in [
            ((one.expand(4, -1), one.expand(4, -1)), 14.3,
             "when every caption fits every picture equally well, each softmax is 1/N everywhere and the "
             "loss is −log(1/N) = log N, at any temperature"),
            ((torch.eye(4, 8), torch.eye(4, 8)), 100.0,
             "each picture's own caption at cosine 1 and every other at 0: at 1/τ = 100 the loss is ≈ 0"),
            ((_vectors(25, 5, unit=True), _vectors(26, 5, unit=True)), 1 / 0.07,
             "average the two directions: the rows are pictures choosing captions, the columns captions "
             "choosing pictures")]:
        scale = torch.tensor(scale)
        cases.append(((images @ texts.T, scale), contrastive_loss(images, texts, scale)["loss"], hint))
    return _check("info_nce", fn, cases, "the loss is one number: average the cross-entropy over the N rows, "
                                         "the same over the columns, then the two")


def check_zero_shot(fn) -> bool:
    """``fn(image_embeddings, prompt_embeddings)``: zero-shot reading (chapter 08) of N pictures (N, D)
    with K prompts (K, D), unit vectors both: for each picture the index of the prompt it scores
    highest against, argmax_k u_i · w_k, an (N,) tensor of whole numbers."""
    images = _vectors(27, 4, unit=True)
    described = images[[1, 2, 3, 0]] + 0.3 * _vectors(28, 4, unit=True)  # prompt k describes picture (k + 1) mod 4
    cases = []
    for args, hint in [((images, F.normalize(described, dim=1)),
                        "prompt k describes picture (k + 1) mod 4: picture 0's best prompt is 3, picture 1's is 0"),
                       ((_vectors(29, 5, unit=True), _vectors(30, 3, unit=True)),
                        "5 pictures and 3 prompts: 5 answers, each a prompt's index 0, 1 or 2")]:
        cases.append((args, (args[0] @ args[1].T).argmax(dim=1), hint))
    return _check("zero_shot", fn, cases, "one answer per picture, an (N,) tensor: score every picture against "
                                          "every prompt (N, K), then take .argmax(dim=1) along each row")


# ----------------------------------------------------------------------------- the mistakes students make

def _symmetric(logits, loss=F.cross_entropy):
    """½ [loss(rows, diagonal) + loss(columns, diagonal)] of (N, N) logits."""
    targets = torch.arange(len(logits))
    return (loss(logits, targets) + loss(logits.T, targets)) / 2


MISTAKES = {  # what students get wrong in each exercise, and the hint for it
    "similarity_matrix": [
        Mistake("you forgot to normalise", lambda u, w: u @ w.T,
                "a dot product grows with the vectors' lengths; a cosine divides them out: normalise each "
                "embedding to length 1 (x / x.norm(dim=1, keepdim=True), or F.normalize(x, dim=1)) first"),
        Mistake("you normalised only the image embeddings", lambda u, w: F.normalize(u, dim=1) @ w.T,
                "the text embeddings are not unit vectors either: normalise them too"),
        Mistake("you normalised only the text embeddings", lambda u, w: u @ F.normalize(w, dim=1).T,
                "the image embeddings are not unit vectors either: normalise them too"),
        Mistake("you transposed the result (texts × pictures)",
                lambda u, w: F.normalize(w, dim=1) @ F.normalize(u, dim=1).T,
                "row i belongs to picture i: image_embeddings @ text_embeddings.T, not the other way round"),
        Mistake("you normalised over the wrong dimension", lambda u, w: F.normalize(u, dim=0) @ F.normalize(w, dim=0).T,
                "each embedding is a row: take its length along dim 1 (the D numbers), not down the column"),
        Mistake("you divided by the length of the whole matrix", lambda u, w: (u / u.norm()) @ (w / w.norm()).T,
                "each embedding by its own length: .norm(dim=1, keepdim=True), one length per row")],
    "info_nce": [
        Mistake("you took only one direction (pictures → captions)",
                lambda s, a: F.cross_entropy(a * s, torch.arange(len(s))),
                "the loss is symmetric: add the columns' cross-entropy (each caption picks its picture, "
                "F.cross_entropy of the transposed logits) and average the two"),
        Mistake("you forgot the temperature", lambda s, a: _symmetric(s),
                "multiply the cosines by inverse_temperature before the softmax: at 1/τ = 1 even a perfect "
                "batch costs log(1 + (N − 1)/e)"),
        Mistake("you summed over the rows instead of averaging",
                lambda s, a: _symmetric(a * s, lambda x, t: F.cross_entropy(x, t, reduction="sum")),
                "average the cross-entropy over the N rows (F.cross_entropy's default): a bigger batch must "
                "not mean a bigger loss"),
        Mistake("you used the softmax probabilities without the log",
                lambda s, a: _symmetric(a * s, lambda x, t: F.nll_loss(x.softmax(dim=1), t)),
                "the cross-entropy is −log of the right caption's probability: use log_softmax, or hand the "
                "logits themselves to F.cross_entropy, which takes the log-softmax for you")],
    "zero_shot": [
        Mistake("you took each prompt's best picture", lambda u, w: (u @ w.T).argmax(dim=0),
                "argmax over dim 0 runs down the columns and finds the best picture for each prompt; each "
                "picture's best prompt is the argmax along its row, dim=1"),
        Mistake("you returned the best score, not its index", lambda u, w: (u @ w.T).max(dim=1).values,
                "the answer is which prompt wins, an index: .argmax(dim=1), or .max(dim=1).indices"),
        Mistake("you took the worst prompt", lambda u, w: (u @ w.T).argmin(dim=1),
                "a cosine is a similarity, not a distance: the best prompt scores the highest, so argmax")],
}
