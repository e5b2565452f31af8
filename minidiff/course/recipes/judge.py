"""The judges: the MNIST classifier (chapter 00) and the shapes judge (chapter 07), whose features
define the course's two FIDs."""
import time

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from minidiff.course.recipes.common import RECIPES, finish, recipe_config
from minidiff.datasets.mnist import mnist_dataset
from minidiff.datasets.shapes import (
    ALL_SHAPES,
    ATTRIBUTES,
    JUDGE_SEED,
    NEW_SHAPES,
    SHAPES,
    TEST_SEED,
    ShapesDataset,
    attribute_labels,
)
from minidiff.metrics import SHAPES_REFERENCE, judge_read, real_vs_real_fid, shapes_real_vs_real_fid
from minidiff.models.classifier import (
    MNISTClassifier,
    ShapesJudge,
    ShapesJudgeConfig,
    classifier_loss,
    judge_loss,
    predict,
)
from minidiff.train import train
from minidiff.weights import load_pretrained, read_manifest


@RECIPES.register
def mnist_classifier(fast: bool = False, device: str = "auto") -> dict:
    """The judge for the course's evaluation protocol: ≥ 99 % MNIST test accuracy, ~6 min on 2 cores.

    8 epochs of 60,000 shifted digits (±2 px), AdamW 2e-3 with warm-up and cosine decay; the EMA
    weights are shipped. Its 128-d features define the course's FID (``minidiff.metrics``).
    """
    torch.manual_seed(0)
    model = MNISTClassifier()
    config = recipe_config("mnist_classifier", fast, device, steps=3750, fast_steps=30, batch_size=128, lr=2e-3,
                           weight_decay=0.05, warmup_steps=200, ema_decay=0.999)
    result = train(model, classifier_loss, mnist_dataset("train"), config, resume=True)
    classifier = result.ema.cpu()
    test = mnist_dataset("test")
    _, logits = predict(classifier, test.tensors[0])
    metrics = {"test_accuracy": (logits.argmax(1) == test.tensors[1]).float().mean().item()}
    started = time.perf_counter()
    metrics["real_vs_real_fid"] = real_vs_real_fid(classifier=classifier)
    metrics["real_vs_real_seconds"] = round(time.perf_counter() - started, 1)
    return finish(classifier, "mnist_classifier", result, fast,
                  "MNIST train (60,000, data/mnist); evaluated on MNIST test (10,000)", metrics,
                  better=("test_accuracy", "higher"))


def judge_renders(n: int, seed: int, size: int, start: int = 0, compositions: str = "all", shapes=SHAPES):
    """Renders as the judge is trained and tested on: uint8 (N, 3, 32, 32) pixels (a 64×64 render
    averaged down to 32×32, as the judge itself reads it, then rounded) and (N, 5) attribute labels."""
    data = ShapesDataset(n, seed=seed, size=size, compositions=compositions, shapes=shapes)
    pixels = data.images if size == 32 else F.avg_pool2d(data.images, size // 32)
    return ((pixels + 1) * 127.5).round().to(torch.uint8), attribute_labels(data.attributes)


def judge_training_set(n: int, shapes=SHAPES) -> TensorDataset:
    """What a shapes judge trains on: ``n`` renders of ``JUDGE_SEED`` drawn at 32 px and the next ``n`` at 64 px."""
    x32, y32 = judge_renders(n, JUDGE_SEED, 32, shapes=shapes)
    x64, y64 = judge_renders(n, JUDGE_SEED, 64, start=n, shapes=shapes)
    return TensorDataset(torch.cat([x32, x64]), torch.cat([y32, y64]))


@torch.no_grad()
def judge_accuracy(judge: ShapesJudge, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-attribute accuracy and the all-attributes-correct rate of ``judge`` on labelled pictures."""
    _, read = judge_read(images, judge)
    right = read == labels
    return {**{name: right[:, k].float().mean().item() for k, name in enumerate(ATTRIBUTES)},
            "all_correct": right.all(1).float().mean().item()}


@RECIPES.register
def shapes_judge(fast: bool = False, device: str = "auto") -> dict:
    """The judge of the shapes protocol (chapters 07–12): ≥ 99.5 % on every attribute, at 32 and 64 px.

    Trained on real renders only — 40,000 drawn at 32×32 and 40,000 at 64×64 (averaged to 32, as the
    judge reads them), of every composition (the judge must read the held-out ones too), from its own
    seed (``JUDGE_SEED``) — for 3,000 steps at batch 256 (~10 epochs), AdamW 2e-3 with warm-up and
    cosine decay; the EMA weights ship. Measured on 10,000 test renders (``TEST_SEED``) at each size,
    and on 2,000 renders of the held-out compositions alone; with the shapes protocol's real-vs-real
    floor at both sizes.
    """
    torch.manual_seed(0)
    data = judge_training_set(2000 if fast else 40_000)
    model = ShapesJudge(ShapesJudgeConfig())
    config = recipe_config("shapes_judge", fast, device, steps=3000, fast_steps=30, batch_size=256, lr=2e-3,
                           weight_decay=0.05, warmup_steps=200, ema_decay=0.999)
    result = train(model, judge_loss, data, config, resume=True)
    judge = result.ema.cpu().eval()
    n_test = 1000 if fast else SHAPES_REFERENCE
    metrics = {"parameters": sum(p.numel() for p in judge.parameters())}
    for size in (32, 64):
        test = ShapesDataset(n_test, seed=TEST_SEED, size=size)
        held = ShapesDataset(n_test // 5, seed=TEST_SEED, size=size, compositions="held_out")
        metrics[f"test_accuracy_{size}"] = judge_accuracy(judge, test.images, attribute_labels(test.attributes))
        metrics[f"held_out_accuracy_{size}"] = judge_accuracy(judge, held.images, attribute_labels(held.attributes))
        metrics[f"real_vs_real_fid_{size}"] = shapes_real_vs_real_fid(size, judge=judge)
    metrics["worst_test_accuracy"] = min(v for size in (32, 64) for k, v in metrics[f"test_accuracy_{size}"].items()
                                         if k != "all_correct")
    return finish(judge, "shapes_judge", result, fast,
                  f"shapes renders of seed {JUDGE_SEED}, all compositions (40,000 at 32 px, 40,000 at 64 px); "
                  f"tested on {SHAPES_REFERENCE:,} renders of seed {TEST_SEED} at each size", metrics,
                  better=("worst_test_accuracy", "higher"))


def grown_judge(judge: ShapesJudge, shapes: int) -> ShapesJudge:
    """``judge`` reading ``shapes`` of ``ALL_SHAPES``: the same layers and, for every value it already reads,
    the same head row; each new shape's row starts at zero weights and a bias 10 below the lowest old shape's,
    so the grown judge reads old pictures as before until it has learned the new shapes."""
    grown = ShapesJudge(ShapesJudgeConfig(**{**vars(judge.config), "shapes": shapes}))
    grown.body.load_state_dict(judge.body.state_dict())
    old, new = judge.config.shapes, shapes
    with torch.no_grad():
        grown.head.weight.zero_()
        grown.head.weight[:old] = judge.head.weight[:old]
        grown.head.weight[new:] = judge.head.weight[old:]
        grown.head.bias[:old] = judge.head.bias[:old]
        grown.head.bias[old:new] = judge.head.bias[:old].min() - 10
        grown.head.bias[new:] = judge.head.bias[old:]
    return grown


@RECIPES.register
def shapes_judge_plus(fast: bool = False, device: str = "auto") -> dict:
    """Chapter 12's judge: the shipped shapes judge grown to read the star and the heart as well (``grown_judge``),
    then trained on renders of all five shapes of its own seed — 20,000 drawn at 32 px and 20,000 at 64 px, two
    in five of them new shapes — for 1,500 steps at batch 256, AdamW 1e-3 with warm-up and cosine decay; the EMA
    weights ship. Measured at each size on 10,000 test renders of the five shapes, on renders of the new shapes
    alone, and on the shapes judge's own test renders (the three old shapes), which it must still read."""
    torch.manual_seed(0)
    n = 2000 if fast else 20_000
    data = judge_training_set(n, shapes=ALL_SHAPES)
    model = grown_judge(load_pretrained("shapes_judge"), len(ALL_SHAPES))
    config = recipe_config("shapes_judge_plus", fast, device, steps=1500, fast_steps=30, batch_size=256, lr=1e-3,
                           weight_decay=0.05, warmup_steps=100, ema_decay=0.999)
    result = train(model, judge_loss, data, config, resume=True)
    judge = result.ema.cpu().eval()
    n_test = 1000 if fast else SHAPES_REFERENCE
    metrics = {"parameters": sum(p.numel() for p in judge.parameters())}
    for size in (32, 64):
        for name, shapes, count in (("test", ALL_SHAPES, n_test), ("new_shapes", NEW_SHAPES, n_test // 5),
                                    ("old_shapes", SHAPES, n_test)):
            test = ShapesDataset(count, seed=TEST_SEED, size=size, shapes=shapes)
            metrics[f"{name}_accuracy_{size}"] = judge_accuracy(judge, test.images, attribute_labels(test.attributes))
    metrics["worst_test_accuracy"] = min(v for size in (32, 64) for k, v in metrics[f"test_accuracy_{size}"].items()
                                         if k != "all_correct")
    return finish(judge, "shapes_judge_plus", result, fast,
                  f"the shipped shapes_judge grown by two shape outputs, trained on shapes renders of seed {JUDGE_SEED} "
                  f"with all five shapes ({n:,} at 32 px, {n:,} at 64 px); tested on {SHAPES_REFERENCE:,} renders of "
                  f"seed {TEST_SEED} at each size", metrics, better=("worst_test_accuracy", "higher"),
                  grown_from={"name": "shapes_judge", "sha256": read_manifest()["shapes_judge"]["sha256"]})
