"""Reference solutions to the chapters' coding exercises, for teachers.

Students: try the exercise first — the notebook's check tells you when you are right, and which
mistake you made when you are not. No chapter imports this file.

Each answer is written out the way a student would write it, from the formula, and not by calling
the library: the checks compare against minidiff's own implementation, so ``tests/test_exercises.py``
running these answers through the checks is two independent implementations agreeing.
"""
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- chapter 00

def mosaic(images, block):
    """Average each block×block tile, then paint the tile with its average."""
    averages = F.avg_pool2d(images, block)
    return averages.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)


def add_noise(images, noise, amount):
    """√(1 − a)·x + √a·ε: with unit-variance x and ε the result has unit variance for every a."""
    return (1 - amount) ** 0.5 * images + amount ** 0.5 * noise


# ----------------------------------------------------------------------------- chapter 01

def psnr_per_image(reconstructions, images):
    """10·log10(peak² / MSE) per image; pixels in [−1, 1] make the peak 2."""
    mse = (reconstructions - images).square().flatten(1).mean(1)
    return 10 * torch.log10(4 / mse)


# ----------------------------------------------------------------------------- chapter 02

def reparameterize(mean, logvar, noise):
    """z = μ + σ·ε, with σ = exp(½ log σ²)."""
    return mean + torch.exp(0.5 * logvar) * noise


def kl_divergence(mean, logvar):
    """½ Σ (μ² + σ² − log σ² − 1), summed over each image's latent numbers."""
    return 0.5 * (mean.square() + logvar.exp() - logvar - 1).flatten(1).sum(1)


# ----------------------------------------------------------------------------- chapter 03

def discriminator_loss(real_logits, fake_logits):
    """mean −log σ(D(x)) + mean −log(1 − σ(D(G(z)))), written with softplus so it never overflows."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits):
    """mean −log σ(D(G(z))) = mean softplus(−D(G(z)))."""
    return F.softplus(-fake_logits).mean()


# ----------------------------------------------------------------------------- chapter 04

def q_sample(x0, t, noise, alphas_cumprod):
    """x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, each image at its own step."""
    alpha_bar = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


# ----------------------------------------------------------------------------- chapter 05

def epsilon_loss(model, x0, t, noise, alphas_cumprod):
    """DDPM's "simple" loss: noise x_0 to step t, ask the model for ε, mean squared error."""
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    return (model(x_t, t) - noise).square().mean()


def x0_from_epsilon(x_t, t, epsilon, alphas_cumprod):
    """Undo q_sample for x_0: x_0 = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t."""
    alpha_bar = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return (x_t - (1 - alpha_bar).sqrt() * epsilon) / alpha_bar.sqrt()


def ddpm_step(x_t, t, epsilon, alphas_cumprod, z):
    """One step of DDPM's sampler from step t to t − 1 (Ho et al., 2020, eq. 6–7): x̂_0 from ε, then a
    draw from the posterior q(x_{t−1} | x_t, x̂_0) = N(μ̃, β̃)."""
    alpha_bar = alphas_cumprod[t]
    alpha_bar_prev = alphas_cumprod[t - 1] if t > 0 else torch.tensor(1.0)
    beta = 1 - alpha_bar / alpha_bar_prev
    x0 = (x_t - (1 - alpha_bar).sqrt() * epsilon) / alpha_bar.sqrt()
    mean = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar) * x0
            + (1 - beta).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar) * x_t)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    return mean + variance.sqrt() * z


def sample_loop(eps_model, x_T, alphas_cumprod, noises):
    """DDPM's sampler: from pure noise x_T, one ``ddpm_step`` for each t = T−1, …, 0."""
    x = x_T
    for t in range(len(alphas_cumprod) - 1, -1, -1):
        epsilon = eps_model(x, torch.full((len(x),), t))
        x = ddpm_step(x, t, epsilon, alphas_cumprod, noises[t])
    return x


# ----------------------------------------------------------------------------- chapter 06

def ddim_step(x_t, t, t_prev, epsilon, alphas_cumprod):
    """One deterministic DDIM step: estimate x_0 from ε, then re-noise it to step t_prev with the
    *same* ε: x_{t_prev} = √ᾱ_{t_prev} · x̂_0 + √(1 − ᾱ_{t_prev}) · ε."""
    return q_sample(x0_from_epsilon(x_t, t, epsilon, alphas_cumprod), t_prev, epsilon, alphas_cumprod)


def euler_step(x, sigma, sigma_next, denoised):
    """One Euler step of the probability-flow ODE in σ-space: x + (x − D)/σ · (σ' − σ)."""
    return x + (x - denoised) / sigma * (sigma_next - sigma)


# ----------------------------------------------------------------------------- chapter 07

def scaling_factor(latents):
    """s = 1 / std of every number of every latent: 1 / √(Σ (z − z̄)² / (N − 1))."""
    centred = latents - latents.mean()
    return 1 / (centred.square().sum() / (latents.numel() - 1)).sqrt()


# ----------------------------------------------------------------------------- chapter 08

def similarity_matrix(image_embeddings, text_embeddings):
    """S_ij = u_i · w_j / (‖u_i‖ ‖w_j‖): each picture (a row) against each caption (a column), cosines."""
    u = image_embeddings / image_embeddings.norm(dim=1, keepdim=True)
    w = text_embeddings / text_embeddings.norm(dim=1, keepdim=True)
    return u @ w.T


def info_nce(similarities, inverse_temperature):
    """CLIP's symmetric InfoNCE loss with logits L = (1/τ) · S and the pairs on the diagonal:
    −(1/2N) Σ_i [log softmax_j(L_i·)_i + log softmax_j(L_·i)_i], each picture picking its caption
    along its row and each caption its picture down its column."""
    logits = inverse_temperature * similarities
    pictures_pick = logits.log_softmax(dim=1).diagonal()
    captions_pick = logits.log_softmax(dim=0).diagonal()
    return -(pictures_pick.mean() + captions_pick.mean()) / 2


def zero_shot(image_embeddings, prompt_embeddings):
    """Each picture's best prompt, argmax_k u_i · w_k: for unit vectors the dot product is the cosine."""
    return (image_embeddings @ prompt_embeddings.T).argmax(dim=1)


# ----------------------------------------------------------------------------- chapter 09

def cross_attention(q, k, v, mask):
    """softmax_j(q_i · k_j / √d) · v over the real tokens j: each image position's scores for the S
    tokens, the padding's set to −∞ so that e^−∞ = 0 takes it out of the softmax."""
    scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5        # (B, L, S)
    scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    return scores.softmax(dim=-1) @ v                            # (B, L, d)


def classifier_free_guidance(conditional, unconditional, guidance_scale):
    """ε̂ = ε(z | ∅) + s · (ε(z | c) − ε(z | ∅)): from the empty prompt's prediction, s steps towards
    the prompt's."""
    return unconditional + guidance_scale * (conditional - unconditional)


def guidance_from_w(conditional, unconditional, w):
    """ε̂ = (1 + w) · ε(z | c) − w · ε(z | ∅): Imagen's way of writing the same, with w = s − 1."""
    return (1 + w) * conditional - w * unconditional


# ----------------------------------------------------------------------------- chapter 10

def img2img_start(latent, noise, sigmas, strength):
    """SDEdit's start: k = ⌊s · N⌋ of the N steps are re-run, so the walk begins at level
    σ = sigmas[N − k], and the picture's latent gets noise of that size."""
    steps = len(sigmas) - 1
    sigma = sigmas[steps - int(strength * steps)]
    return latent + sigma * noise


def repaint_merge(x, known, mask, sigma, noise):
    """RePaint: the sampler's state in the hole (mask 1), the known latent noised to the same level σ
    elsewhere."""
    return mask * x + (1 - mask) * (known + sigma * noise)


def zero_conv_gradient(s, upstream):
    """∂L/∂W[o, i] = Σ_{b, h, w} upstream[b, o, h, w] · s[b, i, h, w]: the input, not the zero weight."""
    return torch.einsum("bohw,bihw->oi", upstream, s)


def add_control(unet, x, t, residuals):
    """A ControlNet's residuals on the skips and the middle, then the U-Net's way up as usual."""
    skips, h, emb = unet.encode(x, t, {})
    skips = [skip + r for skip, r in zip(skips, residuals[:-1])]
    h = h + residuals[-1]
    for layers in unet.up:
        if type(layers[0]).__name__ == "ResBlock":
            h = torch.cat([h, skips.pop()], dim=1)
        h = unet._run(layers, h, emb, {})
    return F.pixel_shuffle(unet.head(h), unet.config.patch_size)


def lora_forward(x, W, b, A, B, alpha):
    """The frozen layer plus the low-rank path: x Wᵀ + b + (α / r) (x Aᵀ) Bᵀ."""
    return x @ W.T + b + alpha / A.shape[0] * (x @ A.T) @ B.T


def merge_lora(W, A, B, alpha, scale):
    """One weight for the adapted layer at LoRA scale s: W + s (α / r) B A."""
    return W + scale * alpha / A.shape[0] * B @ A
