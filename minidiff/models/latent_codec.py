"""Latent diffusion's autoencoder: a VAE trained against a patch discriminator, as Stable Diffusion's is.

A VAE trained on squared error alone keeps what costs many pixels (colour, place, size) and lets go
of what costs few: the corners of a small square are a handful of pixels, so they come back rounded
and the square reads as a circle. Rombach et al. (2022, appendix G) train their autoencoder with
two more terms that care about such detail: a perceptual loss and a *patch-adversarial* one — a
``PatchDiscriminator`` learns to tell real patches from reconstructed ones, and the decoder is
rewarded for fooling it (hinge losses, as in their code):

    L_critic = E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̂))]
    L_VAE    = −ELBO_β(x) / D  +  λ · (−E[D(x̂)])          (only after ``start`` steps)

λ is set afresh at every step so that the adversarial gradient is ``weight`` times the size of the
reconstruction gradient at the decoder's last layer (Esser et al., 2021):

    λ = weight · ‖∇_w L_rec‖ / (‖∇_w L_adv‖ + 10⁻⁴),   w = the decoder's output convolution,

so the discriminator sharpens what the reconstruction already gets about right instead of taking over. The
discriminator starts late (``start``): against the blurry reconstructions of the first steps it would win
at once and teach nothing. (The perceptual loss needs a network pre-trained on photos, LPIPS's VGG,
which cannot be had offline; chapter 07 measures what the discriminator alone adds.)
"""
import torch
import torch.nn as nn

from minidiff.models.autoencoder import VAE, kl_divergence, reconstruction_nll, reparameterize
from minidiff.models.gan import PatchDiscriminator, discriminator_loss, generator_loss


class VAEWithCritic(nn.Module):
    """The VAE and its patch discriminator in one module, so one training checkpoint (and the EMA) holds both;
    only ``.vae`` ships. ``vae_steps`` counts the VAE's updates (saved with the weights, so a resumed
    run knows when the discriminator starts)."""

    def __init__(self, vae: VAE, critic: PatchDiscriminator):
        super().__init__()
        self.vae, self.critic = vae, critic
        self.register_buffer("vae_steps", torch.zeros((), dtype=torch.long))


def critic_parts(model: VAEWithCritic) -> dict:
    """The trainer's ``parts``: the discriminator first, then the VAE, each with its own optimizer."""
    return {"critic": model.critic, "vae": model.vae}


def adversarial_vae_loss(model: VAEWithCritic, batch, part: str, *, beta: float, weight: float = 0.5,
                         start: int = 0) -> dict:
    """The per-part loss for the one trainer (see the module docstring); before ``start`` VAE steps it
    is the plain ``vae_loss`` and the discriminator sits out."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    judging = model.vae_steps.item() >= start
    if part == "critic":
        if not judging:
            return {"loss": 0.0 * model.critic(x).mean()}  # no update yet (every parameter's gradient is 0)
        with torch.no_grad():
            fake = model.vae(x)
        real_logits, fake_logits = model.critic(x), model.critic(fake)
        return {"loss": discriminator_loss(real_logits, fake_logits, "hinge"),
                "d_real": real_logits.mean(), "d_fake": fake_logits.mean()}
    if part != "vae":
        raise ValueError(f"part must be 'critic' or 'vae', got {part!r}")
    model.vae_steps += 1
    mean, logvar = model.vae.encode(x)
    z = reparameterize(mean, logvar)
    reconstruction, kl = reconstruction_nll(model.vae, z, x).mean(), kl_divergence(mean, logvar).mean()
    loss = (reconstruction + beta * kl) / x[0].numel()
    out = {"reconstruction": reconstruction, "kl": kl}
    if judging:
        adversarial = generator_loss(model.critic(model.vae.decode(z)), "hinge")
        last = model.vae.decoder.out.weight
        (g_rec,) = torch.autograd.grad(loss, last, retain_graph=True)
        (g_adv,) = torch.autograd.grad(adversarial, last, retain_graph=True)
        lam = (weight * g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(max=1e4).detach()
        loss = loss + lam * adversarial
        out.update(adversarial=adversarial, adversarial_weight=lam)
    return {"loss": loss, **out}
