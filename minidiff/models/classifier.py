"""The course's MNIST classifier: the judge that every chapter's samples are measured with.

A small CNN (three conv/pool stages, then a 128-d feature layer, then 10 logits). Its 128-d
features are the space the course computes FID in (see ``minidiff.metrics``), and its labels and
confidence on generated digits tell whether a sampler draws "a 7" when asked for one.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


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
