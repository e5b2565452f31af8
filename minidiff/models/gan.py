"""A generative adversarial network (GAN): a generator against a judge (Goodfellow et al., 2014).

The generator G turns noise z ~ N(0, I) into an image; the discriminator D looks at an image and
outputs a logit, "real" if large. They play a game: D learns to tell real digits from G's, and G
learns to fool D. When it works, G's images become sharp (D punishes every blur it can spot); the
game has no loss that goes steadily down, though, and G may settle on the few digits D currently
accepts (*mode collapse*). Chapter 03 shows both.

Architecture: DCGAN (Radford et al., 2016) shrunk to 28×28 digits. G upsamples with nearest-neighbour
upsampling followed by a 3×3 conv (transposed convs leave checkerboard artefacts) and BatchNorm;
D downsamples with stride-2 convs and LeakyReLU; neither uses pooling.

Losses, in terms of D's logits l = D(x) and the sigmoid σ (so the probability "real" is σ(l)):

    non-saturating  L_D = −log σ(D(x)) − log(1 − σ(D(G(z)))) = softplus(−D(x)) + softplus(D(G(z)))
                    L_G = −log σ(D(G(z)))                      = softplus(−D(G(z)))
    hinge           L_D = max(0, 1 − D(x)) + max(0, 1 + D(G(z)))
                    L_G = −D(G(z))
    R1 penalty      + γ/2 · E_x ‖∇_x D(x)‖²   on real x, added to L_D (Mescheder et al., 2018)

The minimax game's own G loss, log(1 − σ(D(G(z)))), is flat ("saturates") exactly when D confidently
rejects G's images, i.e. at the start; −log σ(D(G(z))) has the same fixed point and strong gradients
there. R1 keeps D smooth around the real data, so D cannot grow arbitrarily sharp and G's gradients
stay informative.
"""
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

LOSSES = ("nonsaturating", "hinge")


def _norm(channels: int, norm: str) -> nn.Module:
    """BatchNorm, as DCGAN; "none" is there to show why: without it G saturates — its tanh pinned at
    −1, all-black squares that D rejects with certainty, so G's gradient vanishes (chapter 03)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")


def _up_block(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1),
                         _norm(c_out, norm), nn.ReLU())


class Generator(nn.Module):
    """z (B, z_dim) → linear → (4c, 7, 7) → up ×2 → (2c, 14, 14) → up ×2 → (c, 28, 28) → conv, tanh."""

    def __init__(self, z_dim: int = 64, channels: int = 32, norm: str = "batch"):
        super().__init__()
        self.z_dim, c = z_dim, channels
        self.project = nn.Sequential(nn.Linear(z_dim, 4 * c * 7 * 7), nn.Unflatten(1, (4 * c, 7, 7)),
                                     _norm(4 * c, norm), nn.ReLU())
        self.body = nn.Sequential(_up_block(4 * c, 2 * c, norm), _up_block(2 * c, c, norm),
                                  nn.Conv2d(c, 1, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"Generator takes noise of shape (B, {self.z_dim}), got {tuple(z.shape)}")
        return self.body(self.project(z))


class Discriminator(nn.Module):
    """(B, 1, 28, 28) → stride-2 convs (c, 14²) → (2c, 7²) → (4c, 4²) → one logit per image."""

    def __init__(self, channels: int = 32):
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2),            # 28 → 14
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.LeakyReLU(0.2),        # 14 → 7
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2),    # 7 → 4
            nn.Flatten(), nn.Linear(4 * c * 4 * 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"Discriminator takes (B, 1, 28, 28) images in [-1, 1], got {tuple(x.shape)}")
        return self.body(x).squeeze(1)


class PatchDiscriminator(nn.Module):
    """A "PatchGAN" discriminator (Isola et al., 2017): stride-2 convs and no final linear layer, so it answers
    with a *map* of logits, one per overlapping patch (64×64 pictures → 8×8 answers, each seeing about
    a third of the picture). It cannot judge the picture as a whole, only whether every patch looks
    like a real one — a rounded corner where a square's should be, a smear where an edge should be.
    Latent diffusion's autoencoder is trained against one (``minidiff.models.latent_codec``)."""

    def __init__(self, in_channels: int = 3, channels: int = 32, layers: int = 3):
        super().__init__()
        blocks, c_in = [], in_channels
        for i in range(layers):
            c_out = channels * 2 ** i
            blocks += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.body = nn.Sequential(*blocks, nn.Conv2d(c_in, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(1)


@dataclass
class GANConfig:
    z_dim: int = 64           # the generator's noise
    g_channels: int = 32      # G's narrowest width (at 28×28; 4× at 7×7)
    d_channels: int = 32      # D's first width
    g_norm: str = "batch"     # "batch" (DCGAN) or "none" (chapter 03's saturating run)


class GAN(nn.Module):
    """The two players in one module, so one checkpoint (and the trainer's EMA) holds both."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config.z_dim, config.g_channels, config.g_norm)
        self.discriminator = Discriminator(config.d_channels)

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I), (n, z_dim), on the model's device."""
        z = torch.randn(n, self.config.z_dim, generator=generator)
        return z.to(next(self.parameters()).device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, batch_size: int = 500) -> torch.Tensor:
        """n images (n, 1, 28, 28) in [-1, 1] from G in eval mode (BatchNorm uses its running statistics)."""
        self.eval()
        z = self.noise(n, generator)
        return torch.cat([self.generator(chunk) for chunk in z.split(batch_size)]).cpu()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       loss: str = "nonsaturating") -> torch.Tensor:
    """L_D, averaged over the batch (see the module docstring)."""
    if loss == "nonsaturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if loss == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def generator_loss(fake_logits: torch.Tensor, loss: str = "nonsaturating") -> torch.Tensor:
    """L_G, averaged over the batch (see the module docstring)."""
    if loss == "nonsaturating":
        return F.softplus(-fake_logits).mean()
    if loss == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def r1_penalty(discriminator, real: torch.Tensor) -> torch.Tensor:
    """E_x ‖∇_x D(x)‖² over real x (multiply by γ/2). ``create_graph`` lets D's step differentiate it."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(real).sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def gan_loss(model: GAN, batch, part: str, *, loss: str = "nonsaturating", r1_gamma: float = 0.0) -> dict:
    """The per-part loss for the one trainer, with ``parts={"discriminator": …, "generator": …}``.

    ``part == "discriminator"``: L_D (+ γ/2·R1 when ``r1_gamma`` > 0) with G's images detached, so
    only D learns; ``part == "generator"``: L_G through a D whose parameters the trainer does not
    step. Logged: ``d_real`` = mean σ(D(x)), ``d_fake`` = mean σ(D(G(z))) and ``r1``.
    """
    real = batch[0] if isinstance(batch, (tuple, list)) else batch
    z = model.noise(len(real))
    if part == "discriminator":
        with torch.no_grad():
            fake = model.generator(z)
        real_logits, fake_logits = model.discriminator(real), model.discriminator(fake)
        out = {"loss": discriminator_loss(real_logits, fake_logits, loss),
               "d_real": torch.sigmoid(real_logits).mean(), "d_fake": torch.sigmoid(fake_logits).mean()}
        if r1_gamma > 0:
            out["r1"] = r1_penalty(model.discriminator, real)
            out["loss"] = out["loss"] + r1_gamma / 2 * out["r1"]
        return out
    if part == "generator":
        fake_logits = model.discriminator(model.generator(z))
        return {"loss": generator_loss(fake_logits, loss), "d_fake": torch.sigmoid(fake_logits).mean()}
    raise ValueError(f"part must be 'discriminator' or 'generator', got {part!r}")


def gan_parts(model: GAN) -> dict:
    """The trainer's ``parts``: D first, then G, each with its own optimizer (alternating updates)."""
    return {"discriminator": model.discriminator, "generator": model.generator}


def make_gan_loss(loss: str = "nonsaturating", r1_gamma: float = 0.0):
    """``gan_loss`` with its settings fixed, as the trainer's ``loss_fn(model, batch, part)``."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return partial(gan_loss, loss=loss, r1_gamma=r1_gamma)
