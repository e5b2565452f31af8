"""The course's judges: the classifiers every chapter's samples are measured with.

``MNISTClassifier`` (chapters 00–06): a small CNN (three conv/pool stages, then a 128-d feature
layer, then 10 logits). Its 128-d features are the space the course computes FID in (see
``minidiff.metrics``), and its labels and confidence on generated digits tell whether a sampler
draws "a 7" when asked for one.

``ShapesJudge`` (chapters 07–12): the same idea for the colour shapes, with one head per attribute
(shape, colour, background, size, position) on a shared feature layer, trained on real renders only.
"""
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn as nn
import torch.nn.functional as F

from minidiff.datasets.shapes import ALL_SHAPES, ATTRIBUTES


@dataclass
class ClassifierConfig:
    channels: int = 32        # the first stage's width (doubled per stage)
    features: int = 128       # the feature layer FID is computed in
    dropout: float = 0.3


class MNISTClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or ClassifierConfig()
        c, features = config.channels, config.features

        def stage(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.body = nn.Sequential(stage(1, c), stage(c, 2 * c), stage(2 * c, 4 * c), nn.Flatten(),
                                  nn.Linear(4 * c * 3 * 3, features), nn.ReLU())
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) images in [-1, 1] → (B, features), the embedding FID is computed in."""
        if x.shape[1:] != (1, 28, 28):
            raise ValueError(f"MNISTClassifier takes (B, 1, 28, 28) images in [-1, 1], got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


@dataclass
class ShapesJudgeConfig:
    channels: int = 32        # the first stage's width (doubled per stage)
    features: int = 256       # the feature layer the shapes protocol's FID is computed in
    dropout: float = 0.2
    image_size: int = 32      # the resolution it reads at: a larger picture is averaged down to it first
    shapes: int = 3           # how many of ``ALL_SHAPES`` it reads: 3 (SHAPES), or 5 with chapter 12's new ones


class ShapesJudge(nn.Module):
    """Reads a shapes picture's attributes: (B, 3, S, S) images in [-1, 1] → logits for every value of
    every attribute, one block per ``ATTRIBUTES`` key (3 shapes, 8 colours, 8 backgrounds, 2 sizes,
    9 positions = 30 logits; with ``shapes=5`` it also reads chapter 12's star and heart: 32 logits).
    S may be 32 or any multiple: a 64×64 picture is averaged over 2×2 blocks to 32×32 first, which is
    what drawing it at 32 would have given (up to the renderer's supersampling), so one judge reads
    every size the course uses and scores them alike. Position needs *where*: the last feature map is
    flattened, not pooled."""

    def __init__(self, config: ShapesJudgeConfig | None = None):
        super().__init__()
        self.config = config = config or ShapesJudgeConfig()
        c, side = config.channels, config.image_size // 8

        def stage(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.body = nn.Sequential(stage(3, c), stage(c, 2 * c), stage(2 * c, 4 * c), nn.Flatten(),
                                  nn.Linear(4 * c * side * side, config.features), nn.ReLU())
        self.dropout = nn.Dropout(config.dropout)
        self.attributes = {**ATTRIBUTES, "shape": ALL_SHAPES[:config.shapes]}  # what it reads, value by value
        self.head = nn.Linear(config.features, sum(len(v) for v in self.attributes.values()))
        self.splits = list(accumulate(len(v) for v in self.attributes.values()))[:-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [-1, 1], S a multiple of 32 → (B, features)."""
        s = self.config.image_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3] or x.shape[2] % s:
            raise ValueError(f"ShapesJudge takes (B, 3, S, S) images in [-1, 1] with S a multiple of {s} "
                             f"(32 or 64), got {tuple(x.shape)}")
        if x.shape[2] != s:
            x = F.avg_pool2d(x, x.shape[2] // s)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))

    def split(self, logits: torch.Tensor) -> dict:
        """(B, 30) logits (32 with five shapes) → {attribute: (B, its values) logits}."""
        return dict(zip(self.attributes, logits.tensor_split(self.splits, dim=1)))


def judge_loss(model: ShapesJudge, batch):
    """Cross-entropy summed over the five attributes, on uint8 renders with a little noise added
    (σ up to 0.05 of the [-1, 1] range per picture), so that the judge reads a generated picture's
    slight grain as the render it resembles. Logs the share of pictures with every attribute right."""
    pixels, labels = batch
    x = pixels.float() / 127.5 - 1
    x = x + torch.rand(len(x), 1, 1, 1, device=x.device) * 0.05 * torch.randn_like(x)
    logits = model.split(model(x))
    losses = [F.cross_entropy(out, labels[:, k]) for k, out in enumerate(logits.values())]
    right = torch.stack([out.argmax(1) == labels[:, k] for k, out in enumerate(logits.values())], 1)
    return {"loss": sum(losses), "all_correct": right.all(1).float().mean()}


def random_shift(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Augmentation: move each image by up to ``max_shift`` pixels (background -1 fills in)."""
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    b, _, h, w = x.shape
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, b))
    rows = (torch.arange(h)[None] + dy[:, None]).to(x.device)          # (B, H)
    cols = (torch.arange(w)[None] + dx[:, None]).to(x.device)          # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[:, 0][batch, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def classifier_loss(model, batch):
    """Cross-entropy on shifted digits; the per-model part the one trainer needs."""
    images, labels = batch
    logits = model(random_shift(images))
    loss = F.cross_entropy(logits, labels)
    return {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean()}


@torch.no_grad()
def predict(model, images: torch.Tensor, batch_size: int = 1000):
    """Features, logits for many images, in batches on the model's device, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    feats, logits = [], []
    for chunk in images.split(batch_size):
        f = model.features(chunk.to(device).float())
        feats.append(f.cpu())
        logits.append(model.head(f).cpu())
    return torch.cat(feats), torch.cat(logits)
