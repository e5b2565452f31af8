"""Autoencoders and variational autoencoders (chapters 01 and 02; the VAE returns in chapter 07).

An **autoencoder** squeezes an image x through a small code z and back:

    z = E(x),   x̂ = D(z),   trained to minimise ‖x − x̂‖².

It reconstructs well, but nothing shapes the space of codes, so a *random* z decodes to a smudge:
there is no distribution to sample new images from. A **VAE** (Kingma & Welling, 2014) makes the
encoder output a Gaussian q(z|x) = N(μ(x), σ²(x)) and pulls it towards the prior p(z) = N(0, I) with
a KL term, so that z ~ N(0, I) lands where the decoder has learned to draw digits. It maximises the
evidence lower bound (ELBO) on the log-likelihood of an image:

    log p(x) ≥ ELBO = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)).

**Two shapes of code**, one pair of building blocks (``Encoder``/``Decoder``) serves both:

* *spatial* (``latent_channels=c``): stride-2 stages shrink H×W by the downsampling factor f and the
  code is a small image of c channels, e.g. MNIST 28×28×1 → 7×7×4 or shapes 32×32×3 → 8×8×4 at f=4.
  This is the latent space of latent diffusion (chapter 07): each latent pixel describes its own
  patch, so the code keeps *where* things are and reconstructions are sharp.
* *dense* (``latent_dim=d``): the final feature map is flattened and a linear layer maps it to one
  global vector of d numbers. A VAE whose prior samples are whole, recognisable digits needs this:
  with a spatial code, N(0, I) draws every patch independently and the patches do not agree on
  which digit they are drawing. d = 2 gives a latent *map* we can draw on a page.

Sizes need not divide by f: the encoder's stride-2 convolutions round up (28 → 14 → 7 → 4 at f=8),
and the decoder upsamples back to the exact sizes the encoder went through.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

DOWNSAMPLE_FACTORS = (1, 2, 4, 8)
LIKELIHOODS = ("bernoulli", "gaussian", "laplace")


def widths(channels: int, downsample: int) -> list[int]:
    """Feature channels at each resolution: the base width, doubled per stride-2 stage (capped at 4×)."""
    return [channels * min(2 ** i, 4) for i in range(int(math.log2(downsample)) + 1)]


def conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3×3 convolution → GroupNorm → SiLU, the one layer both halves are built from."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                         nn.GroupNorm(min(8, c_out // 4), c_out), nn.SiLU())


def stage_sizes(image_size: int, downsample: int) -> list[int]:
    """Side length after each stride-2 stage: a 3×3 conv with stride 2 and padding 1 maps s to ⌈s/2⌉."""
    sizes = [image_size]
    for _ in range(int(math.log2(downsample))):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class Encoder(nn.Module):
    """x (B, C, H, W) → features at 1/f resolution → ``out_channels`` maps, or ``out_dim`` numbers if dense."""

    def __init__(self, in_channels, image_size, downsample, channels, out_channels=None, out_dim=None):
        super().__init__()
        w = widths(channels, downsample)
        layers = [conv_block(in_channels, w[0])]
        for c_in, c_out in zip(w, w[1:]):
            layers += [conv_block(c_in, c_out, stride=2), conv_block(c_out, c_out)]
        self.body = nn.Sequential(*layers)
        side = stage_sizes(image_size, downsample)[-1]
        self.head = (nn.Conv2d(w[-1], out_channels, 1) if out_dim is None
                     else nn.Sequential(nn.Flatten(), nn.Linear(w[-1] * side * side, out_dim)))

    def forward(self, x):
        return self.head(self.body(x))


class Decoder(nn.Module):
    """The mirror image: code → features at 1/f → per stage: conv (halving channels at the low
    resolution, which is cheaper), nearest-neighbour upsampling to the encoder's size, conv → image."""

    def __init__(self, out_channels, image_size, downsample, channels, latent_channels=None, latent_dim=None):
        super().__init__()
        w = widths(channels, downsample)
        self.sizes = stage_sizes(image_size, downsample)[::-1]  # e.g. [7, 14, 28]
        side = self.sizes[0]
        self.stem = (conv_block(latent_channels, w[-1]) if latent_dim is None
                     else nn.Sequential(nn.Linear(latent_dim, w[-1] * side * side),
                                        nn.Unflatten(1, (w[-1], side, side)), nn.SiLU()))
        self.ups = nn.ModuleList(nn.ModuleList([conv_block(c_in, c_out), conv_block(c_out, c_out)])
                                 for c_in, c_out in zip(w[::-1], w[::-1][1:]))
        self.out = nn.Conv2d(w[0], out_channels, 3, padding=1)

    def forward(self, z):
        h = self.stem(z)
        for (narrow, refine), size in zip(self.ups, self.sizes[1:]):
            h = refine(F.interpolate(narrow(h), size=(size, size), mode="nearest"))
        return self.out(h)


@dataclass
class AutoencoderConfig:
    """An autoencoder's shape: images (in_channels, image_size²) → a code at 1/``downsample`` of the
    resolution with ``latent_channels`` maps, or, with ``latent_dim``, one dense vector of that many
    numbers instead; ``channels`` is the base width of the convolutions."""
    in_channels: int = 1
    image_size: int = 28
    downsample: int = 4
    latent_channels: int | None = 4
    latent_dim: int | None = None
    channels: int = 32

    def __post_init__(self):
        if self.downsample not in DOWNSAMPLE_FACTORS:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_FACTORS}, got {self.downsample}")
        if self.latent_dim is not None:
            self.latent_channels = None  # a dense code replaces the spatial one


@dataclass
class VAEConfig(AutoencoderConfig):
    """An autoencoder's shape plus what p(x|z) is: ``likelihood`` "bernoulli", or "gaussian" or
    "laplace" with scale σ_x (``sigma_x``). ``scaling_factor`` s is what latent diffusion multiplies
    the latents by (1 / their std over the training set, measured after training; see
    ``minidiff.latents``): it travels with the weights, as in Stable Diffusion."""
    likelihood: str = "bernoulli"
    sigma_x: float = 0.1
    scaling_factor: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {self.likelihood!r}")


class _CodecBase(nn.Module):
    """What the autoencoder and the VAE share: the config, input checks and the code's shape."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = c = config
        side = stage_sizes(c.image_size, c.downsample)[-1]
        self.latent_shape = (c.latent_dim,) if c.latent_dim is not None else (c.latent_channels, side, side)

    def _check(self, x):
        c, s = self.config.in_channels, self.config.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"{type(self).__name__} takes images of shape (B, {c}, {s}, {s}) in [-1, 1], "
                             f"got {tuple(x.shape)}")

    def _check_code(self, z):
        if tuple(z.shape[1:]) != self.latent_shape:
            shape = ", ".join(map(str, self.latent_shape))
            raise ValueError(f"{type(self).__name__} decodes codes of shape (B, {shape}), got {tuple(z.shape)}")


class Autoencoder(_CodecBase):
    """Deterministic autoencoder: ``encode(x) -> z``, ``decode(z) -> x̂``, trained with ``autoencoder_loss``."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__(config)
        c = config
        self.encoder = Encoder(c.in_channels, c.image_size, c.downsample, c.channels, c.latent_channels, c.latent_dim)
        self.decoder = Decoder(c.in_channels, c.image_size, c.downsample, c.channels, c.latent_channels, c.latent_dim)

    def encode(self, x):
        self._check(x)
        return self.encoder(x)

    def decode(self, z):
        self._check_code(z)
        return self.decoder(z)

    def forward(self, x):
        return self.decode(self.encode(x))


class VAE(_CodecBase):
    """Variational autoencoder with a Gaussian posterior q(z|x) = N(μ, diag σ²) and prior N(0, I).

    ``config.likelihood`` says what p(x|z) is, i.e. what the reconstruction term of the ELBO measures:

    * ``"bernoulli"`` (MNIST): each pixel, rescaled to p = (x + 1)/2 ∈ [0, 1], is a Bernoulli variable
      with probability sigmoid(logit) from the decoder, so −log p(x|z) is the binary cross-entropy
      summed over pixels. ``decode`` returns the mean image, 2·sigmoid(logit) − 1.
    * ``"gaussian"`` (colour shapes): p(x|z) = N(x̂, σ_x² I) with a fixed σ_x = ``sigma_x``, so
      −log p(x|z) = ‖x − x̂‖² / (2σ_x²) + (D/2)·log(2πσ_x²). A small σ_x asks for sharp
      reconstructions.
    * ``"laplace"`` (latent diffusion's autoencoder): p(x|z) = Laplace(x̂, b = σ_x), so
      −log p(x|z) = ‖x − x̂‖₁ / b + D·log(2b): the L1 loss Stable Diffusion's autoencoder trains
      with. Against squared error, a small error costs relatively more (|e| ≫ e² for |e| < 1), so
      the last few wrong pixels — a square's corners — keep pulling after the big errors are gone.
    """

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        c = config
        # the encoder predicts μ and log σ² for every latent number: twice the channels (or dims)
        self.encoder = Encoder(c.in_channels, c.image_size, c.downsample, c.channels,
                               c.latent_channels and 2 * c.latent_channels, c.latent_dim and 2 * c.latent_dim)
        self.decoder = Decoder(c.in_channels, c.image_size, c.downsample, c.channels, c.latent_channels, c.latent_dim)

    def encode(self, x):
        """x → (μ, log σ²) of q(z|x), each of shape (B, *latent_shape)."""
        self._check(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)  # keeps exp() finite early in training

    def decode_logits(self, z):
        """The decoder's raw output: Bernoulli logits, or the Gaussian mean x̂."""
        self._check_code(z)
        return self.decoder(z)

    def decode(self, z):
        """z → the mean image of p(x|z), in [-1, 1] for the Bernoulli likelihood."""
        out = self.decode_logits(z)
        return 2 * torch.sigmoid(out) - 1 if self.config.likelihood == "bernoulli" else out

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None):
        """n images decoded from codes drawn from the prior, z ~ N(0, I)."""
        device = next(self.parameters()).device
        z = torch.randn((n, *self.latent_shape), generator=generator).to(device)
        return self.decode(z)

    def forward(self, x):
        mean, logvar = self.encode(x)
        return self.decode(reparameterize(mean, logvar))


def reparameterize(mean, logvar, noise=None):
    """z = μ + σ·ε with ε ~ N(0, I) and σ = exp(½ log σ²).

    Sampling z ~ N(μ, σ²) directly has no gradient with respect to μ and σ; writing the sample as
    a deterministic function of (μ, σ) and outside noise ε moves the randomness out of the way, so
    backpropagation reaches the encoder (the "reparameterisation trick").
    """
    noise = torch.randn_like(mean) if noise is None else noise
    return mean + torch.exp(0.5 * logvar) * noise


def kl_divergence(mean, logvar):
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − log σ² − 1), summed over each image's latent numbers."""
    return 0.5 * (mean ** 2 + logvar.exp() - logvar - 1).flatten(1).sum(1)


def reconstruction_nll(model: VAE, z, x):
    """−log p(x|z) in nats per image, for the model's likelihood (see ``VAE``)."""
    out = model.decode_logits(z)
    if model.config.likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(out, (x + 1) / 2, reduction="none").flatten(1).sum(1)
    sigma = model.config.sigma_x
    if model.config.likelihood == "laplace":
        return (x - out).abs().flatten(1).sum(1) / sigma + x[0].numel() * math.log(2 * sigma)
    squared = ((x - out) ** 2).flatten(1).sum(1)
    return squared / (2 * sigma ** 2) + 0.5 * x[0].numel() * math.log(2 * math.pi * sigma ** 2)


def autoencoder_loss(model, batch):
    """Mean squared error between the image and its reconstruction, ‖x − D(E(x))‖² / D."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return {"loss": F.mse_loss(model(x), x)}


def vae_loss(model, batch, beta: float = 1.0):
    """The negative β-ELBO, per pixel for the optimiser; nats per image for the log.

        loss = (−log p(x|z) + β · KL(q(z|x) ‖ N(0, I))) / D,   z = μ + σ·ε,   D = pixels × channels

    β = 1 is the true ELBO; β < 1 trades prior fit for sharper reconstructions, β > 1 the reverse.
    Dividing by D only rescales the gradient (Adam hardly notices); the logged ``elbo`` is always
    the β = 1 bound, −(reconstruction + KL), in nats per image (a lower bound on log p(x)).
    """
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    mean, logvar = model.encode(x)
    z = reparameterize(mean, logvar)
    reconstruction = reconstruction_nll(model, z, x).mean()
    kl = kl_divergence(mean, logvar).mean()
    return {"loss": (reconstruction + beta * kl) / x[0].numel(),
            "reconstruction": reconstruction, "kl": kl, "elbo": -(reconstruction + kl)}


@torch.no_grad()
def encode_all(model, images, batch_size: int = 500, sample: bool = False):
    """Codes of many images in batches: the AE's z, or the VAE's μ (or a posterior sample)."""
    model.eval()
    codes = []
    for chunk in images.split(batch_size):
        out = model.encode(chunk)
        if isinstance(out, tuple):
            out = reparameterize(*out) if sample else out[0]
        codes.append(out)
    return torch.cat(codes)


@torch.no_grad()
def decode_all(model, codes, batch_size: int = 500):
    """Decoded images in batches, clamped to [-1, 1]."""
    model.eval()
    return torch.cat([model.decode(chunk).clamp(-1, 1) for chunk in codes.split(batch_size)])


@torch.no_grad()
def evaluate_elbo(model: VAE, images, batch_size: int = 500, seed: int = 0) -> dict:
    """Mean reconstruction NLL, KL and ELBO (nats per image) over ``images``, one posterior sample each."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    totals = {"reconstruction": 0.0, "kl": 0.0}
    for chunk in images.split(batch_size):
        mean, logvar = model.encode(chunk)
        z = reparameterize(mean, logvar, torch.randn(mean.shape, generator=generator))
        totals["reconstruction"] += reconstruction_nll(model, z, chunk).sum().item()
        totals["kl"] += kl_divergence(mean, logvar).sum().item()
    report = {k: v / len(images) for k, v in totals.items()}
    report["elbo"] = -(report["reconstruction"] + report["kl"])
    return report


def random_codes(model, n: int, generator=None, like=None):
    """n codes drawn from N(0, I), or, when ``like`` holds real codes, from a Gaussian with their
    per-dimension mean and standard deviation: the fairest random code an autoencoder allows."""
    noise = torch.randn((n, *model.latent_shape), generator=generator)
    if like is None:
        return noise
    return like.mean(0) + like.std(0) * noise
