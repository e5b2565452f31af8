"""How the course measures generated pictures: one protocol for digits (chapters 00–06) and one for
the colour shapes (chapters 07–12), each used by every chapter and benchmark.

**The protocol.** Generate ``PROTOCOL_SAMPLES`` = 2,000 images with seed ``PROTOCOL_SEED`` = 0.
Embed them, and the 10,000 MNIST *test* digits (the reference), with the shipped classifier's
128-d feature layer (``MNISTClassifier.features``), fit a Gaussian to each set and report

    FID = ‖μ_g − μ_r‖² + Tr(Σ_g + Σ_r − 2 (Σ_g Σ_r)^½)           (Heusel et al., 2017)

beside the **real-vs-real** figure: 2,000 *training* digits (seed 0) scored the same way. That
floor is what a perfect generator would get with this many samples (FID is biased upwards at
small sample counts), so a model is judged as "FID / real-vs-real". We use our own classifier
rather than Inception because Inception weights cannot be had offline and were never meant for
28×28 digits; numbers are therefore comparable within this course, not with papers.

The classifier also judges samples directly: the label distribution (are all ten digits drawn?),
the mean confidence (are they clean?), and, for class-conditional models, the accuracy.

**The shapes protocol** is the same with the shipped ``ShapesJudge`` (trained on real renders
only) in place of the digit classifier: 2,000 samples, seed 0; FID in the judge's 256-d features
against ``SHAPES_REFERENCE`` = 10,000 test renders (``TEST_SEED``) of the compositions the model
trained on (``"train"``: every generative model leaves ``HELD_OUT`` out) and of the samples' size,
beside the real-vs-real floor (2,000 *training* renders scored the same way); the judge's
**attribute histograms** (how often it sees each shape, colour, background, size and position) with
each value's share relative to its share in the data — a model that only draws red circles has a
red share 8× too high and scores badly however clean its circles are; and, for pictures that were
asked for (``attributes``), the **per-attribute accuracy** and the **all-attributes-correct** rate.
"""
from functools import lru_cache

import numpy as np
import torch

from minidiff.datasets.mnist import load_mnist, to_tensor
from minidiff.datasets.shapes import ATTRIBUTES, TEST_SEED, TRAIN_SEED, ShapesDataset, attribute_labels, eval_caption
from minidiff.models.classifier import MNISTClassifier, ShapesJudge, predict
from minidiff.text2image import text_to_image
from minidiff.weights import load_pretrained

PROTOCOL_SAMPLES = 2000
PROTOCOL_SEED = 0
CLASSIFIER = "mnist_classifier"
SHAPES_JUDGE = "shapes_judge"
SHAPES_REFERENCE = 10_000


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """FID between N(μ1, Σ1) and N(μ2, Σ2).

    Tr (Σ1 Σ2)^½ is computed as Σ √λ over the eigenvalues λ of the symmetric matrix
    Σ1^½ Σ2 Σ1^½ (similar to Σ1 Σ2), which avoids a non-symmetric matrix square root.
    """
    mu1, mu2, sigma1, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, sigma1, sigma2))
    eigval, eigvec = np.linalg.eigh(sigma1)
    sqrt1 = (eigvec * np.sqrt(eigval.clip(min=0))) @ eigvec.T
    cross = np.linalg.eigvalsh(sqrt1 @ sigma2 @ sqrt1).clip(min=0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(cross).sum())


def gaussian_stats(features: torch.Tensor):
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = features.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


@lru_cache(maxsize=1)
def load_classifier() -> MNISTClassifier:
    """The shipped judge (hash- and config-checked)."""
    return load_pretrained(CLASSIFIER)


@lru_cache(maxsize=4)
def reference_stats(classifier: MNISTClassifier):
    """Gaussian statistics of the 10,000 MNIST test digits in ``classifier``'s feature space."""
    features, _ = predict(classifier, to_tensor(load_mnist("test")[0]))
    return gaussian_stats(features)


def classifier_fid(images: torch.Tensor, classifier=None) -> float:
    """FID of (N, 1, 28, 28) images in [-1, 1] against the MNIST test set, in classifier features."""
    classifier = classifier or load_classifier()
    features, _ = predict(classifier, images)
    return frechet_distance(*gaussian_stats(features), *reference_stats(classifier))


def real_vs_real_fid(n: int = PROTOCOL_SAMPLES, seed: int = PROTOCOL_SEED, classifier=None) -> float:
    """The floor: ``n`` random training digits scored like samples (the protocol's n and seed)."""
    images = load_mnist("train")[0]
    pick = np.random.default_rng(seed).choice(len(images), n, replace=False)
    return classifier_fid(to_tensor(images[pick]), classifier)


def evaluate_samples(images: torch.Tensor, labels=None, classifier=None) -> dict:
    """Everything the protocol reports about generated digits: FID, how often the classifier
    sees each digit, its mean confidence, and (when the digits were asked for) its accuracy."""
    classifier = classifier or load_classifier()
    features, logits = predict(classifier, images)
    probs = logits.softmax(1)
    predicted = probs.argmax(1)
    report = {
        "n": len(images),
        "fid": frechet_distance(*gaussian_stats(features), *reference_stats(classifier)),
        "confidence": probs.max(1).values.mean().item(),
        "class_histogram": torch.bincount(predicted, minlength=10).tolist(),
    }
    if labels is not None:
        labels = torch.as_tensor(labels)
        report["accuracy"] = (predicted == labels).float().mean().item()
        report["per_class_accuracy"] = [(predicted[labels == k] == k).float().mean().item()
                                        for k in range(10) if (labels == k).any()]
    return report


def psnr_per_image(reconstructions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image, for images in [-1, 1] (peak-to-peak 2):
    PSNR = 10 · log10(2² / MSE). 20 dB is blurry, 30 dB hard to tell apart by eye."""
    mse = ((reconstructions - images) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(4 / mse)


def psnr(reconstructions: torch.Tensor, images: torch.Tensor) -> float:
    """Mean PSNR over images, with reconstructions first clipped to the valid range [-1, 1]."""
    return psnr_per_image(reconstructions.clamp(-1, 1), images).mean().item()


# ---------------------------------------------------------------------------------------------
# The shapes protocol (chapters 07–12)


@lru_cache(maxsize=1)
def load_shapes_judge() -> ShapesJudge:
    """The shipped shapes judge (hash- and config-checked)."""
    return load_pretrained(SHAPES_JUDGE)


def judge_read(images: torch.Tensor, judge: ShapesJudge | None = None):
    """The judge's features (N, 256) and the attributes it reads, (N, 5) value indices per ``ATTRIBUTES``."""
    judge = judge or load_shapes_judge()
    features, logits = predict(judge, images)
    return features, torch.stack([out.argmax(1) for out in judge.split(logits).values()], 1)


@lru_cache(maxsize=8)
def shapes_reference_stats(judge: ShapesJudge, size: int, compositions: str = "train"):
    """Gaussian statistics of the reference renders in ``judge``'s features, and each attribute
    value's share among them (the data's share, from the renders' true attributes)."""
    reference = ShapesDataset(SHAPES_REFERENCE, seed=TEST_SEED, size=size, compositions=compositions)
    features, _ = judge_read(reference.images, judge)
    return (*gaussian_stats(features), _shares(attribute_labels(reference.attributes)))


def _shares(labels: torch.Tensor) -> dict:
    return {name: (torch.bincount(labels[:, k], minlength=len(values)).double() / len(labels)).tolist()
            for k, (name, values) in enumerate(ATTRIBUTES.items())}


def _check_pictures(images):
    if images.dim() != 4 or images.shape[1] != 3 or len(images) < 2:
        raise ValueError(f"the shapes protocol scores at least 2 colour pictures (N, 3, S, S), "
                         f"got {tuple(images.shape)}")
    if not torch.isfinite(images).all() or images.min() < -1.001 or images.max() > 1.001:
        raise ValueError("the shapes protocol scores pictures in [-1, 1] (finite); clamp or rescale them first")


def evaluate_shapes(images: torch.Tensor, attributes=None, compositions: str = "train",
                    judge: ShapesJudge | None = None) -> dict:
    """Everything the shapes protocol reports about (N, 3, S, S) pictures in [-1, 1]:

      fid            judge-FID against the reference renders of ``compositions`` at size S
      histograms     {attribute: {value: how many pictures the judge reads it in}}
      share_ratios   {attribute: {value: its share here / its share in the data}} (1 = as in the data)
      worst_share    the ratio farthest from 1, as |ratio − 1| (≤ 0.3: every value within ±30 %)
    and, when ``attributes`` (dicts, or (N, 5) labels) say what each picture was asked to show,
      accuracy       {attribute: share of pictures the judge reads as asked}
      all_correct    share with every attribute as asked.
    """
    _check_pictures(images)
    judge = judge or load_shapes_judge()
    features, read = judge_read(images, judge)
    mu, sigma, data_shares = shapes_reference_stats(judge, images.shape[-1], compositions)
    shares = _shares(read)
    report = {"n": len(images), "fid": frechet_distance(*gaussian_stats(features), mu, sigma),
              "histograms": {name: dict(zip(values, torch.bincount(read[:, k], minlength=len(values)).tolist()))
                             for k, (name, values) in enumerate(ATTRIBUTES.items())},
              "share_ratios": {name: {v: s / d for v, s, d in zip(values, shares[name], data_shares[name]) if d > 0}
                               for name, values in ATTRIBUTES.items()}}
    report["worst_share"] = max(abs(r - 1) for ratios in report["share_ratios"].values() for r in ratios.values())
    if attributes is not None:
        asked = attributes if torch.is_tensor(attributes) else attribute_labels(attributes)
        if asked.shape != read.shape:
            raise ValueError(f"got {len(images)} pictures but attributes for {len(asked)}")
        right = read == asked
        report["accuracy"] = {name: right[:, k].float().mean().item() for k, name in enumerate(ATTRIBUTES)}
        report["all_correct"] = right.all(1).float().mean().item()
    return report


def shapes_real_vs_real_fid(size: int = 64, n: int = PROTOCOL_SAMPLES, compositions: str = "train",
                            judge: ShapesJudge | None = None) -> float:
    """The shapes floor: ``n`` training renders (``TRAIN_SEED``) of ``compositions`` scored like samples."""
    judge = judge or load_shapes_judge()
    renders = ShapesDataset(n, seed=TRAIN_SEED, size=size, compositions=compositions).images
    features, _ = judge_read(renders, judge)
    return frechet_distance(*gaussian_stats(features), *shapes_reference_stats(judge, size, compositions)[:2])


# ---------------------------------------------------------------------------------------------
# The CLIP score and prompt following (chapters 09–12)


@torch.no_grad()
def clip_score(model, tokenizer, images: torch.Tensor, prompts, batch_size: int = 256) -> torch.Tensor:
    """How well each picture fits its prompt under the course's CLIP (``minidiff.weights.load_clip``):

        CLIP score_i = 100 · cos(u_i, w_i) = 100 · u_i · w_i      in [−100, 100]

    with u_i the picture's and w_i its prompt's unit embedding; the factor 100 is customary (Hessel et
    al., 2021, and torchmetrics, which also clip at 0; we keep the sign). ``images`` (N, C, H, W) in
    [-1, 1], at the CLIP's size or an integer multiple of it (64-px shapes for a 32-px CLIP);
    ``prompts``: N strings, or one for every picture. Returns (N,) scores, encoded in batches."""
    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"got {len(images)} pictures but {len(prompts)} prompts")
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(images), batch_size):
        ids = tokenizer(prompts[start:start + batch_size], model.config.context_length).to(device)
        u = model.encode_image(images[start:start + batch_size].to(device))
        scores.append(100 * (u * model.encode_text(ids)).sum(1).float().cpu())
    return torch.cat(scores)


def prompt_following(model, encoder, decode, attributes: list, language: str = "en",
                     compositions: str = "train", guidance_scale: float = 3.0, clip=None,
                     num_inference_steps: int = 20, seed: int = PROTOCOL_SEED) -> dict:
    """The prompt-following score of a text-to-image model (``minidiff.text2image``; ``encoder`` its
    ``PromptEncoder``, ``decode`` its decoder): one picture for each attribute tuple's evaluation-wording
    prompt (``eval_caption``, a wording no training caption uses) in ``language``, drawn with
    DPM-Solver++(2M); the shapes judge's per-attribute accuracy and all-five rate, judge-FID against
    the test renders of ``compositions``, and the mean CLIP score under ``clip`` (a (model, tokenizer)
    pair) if given."""
    prompts = [eval_caption(a, language) for a in attributes]
    images = text_to_image(model, encoder, prompts, guidance_scale=guidance_scale, decode=decode,
                           sampler="dpmpp_2m", num_inference_steps=num_inference_steps, seed=seed, progress=False)
    report = evaluate_shapes(images, attributes, compositions=compositions)
    out = {"accuracy": report["accuracy"], "all_correct": report["all_correct"], "fid": report["fid"]}
    if clip is not None:
        out["clip_score"] = clip_score(*clip, images, prompts).mean().item()
    return out
