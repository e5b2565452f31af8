"""Latent diffusion's autoencoder training (minidiff.models.latent_codec) and its patch discriminator."""
import pytest
import torch

from minidiff.datasets.shapes import ShapesDataset
from minidiff.models.autoencoder import VAE, VAEConfig, vae_loss
from minidiff.models.gan import PatchDiscriminator
from minidiff.models.latent_codec import VAEWithCritic, adversarial_vae_loss, critic_parts


@pytest.fixture
def model():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(3, 32, 4, latent_channels=4, channels=8, likelihood="gaussian"))
    return VAEWithCritic(vae, PatchDiscriminator(3, 8, 3))


@pytest.fixture
def pictures():
    return ShapesDataset(4, seed=0).images


def test_the_patch_discriminator_answers_once_per_patch():
    critic = PatchDiscriminator(3, 8, 3)
    assert critic(torch.zeros(2, 3, 64, 64)).shape == (2, 8, 8)
    assert critic(torch.zeros(2, 3, 32, 32)).shape == (2, 4, 4)


def test_before_the_start_it_is_the_plain_vae_loss_and_the_critic_learns_nothing(model, pictures):
    critic = adversarial_vae_loss(model, pictures, "critic", beta=0.01, start=5)["loss"]
    critic.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.critic.parameters())
    torch.manual_seed(1)
    ours = adversarial_vae_loss(model, pictures, "vae", beta=0.01, start=5)
    torch.manual_seed(1)
    plain = vae_loss(model.vae, pictures, beta=0.01)
    assert torch.allclose(ours["loss"], plain["loss"]) and "adversarial" not in ours
    assert model.vae_steps.item() == 1


def test_the_adaptive_weight_makes_the_critics_pull_a_fixed_share_of_the_reconstructions(model, pictures):
    """At the decoder's last layer, ‖∇(λ·L_adv)‖ = weight · ‖∇L_rec‖ (up to the 10⁻⁴ guard)."""
    last = model.vae.decoder.out.weight
    torch.manual_seed(2)
    out = adversarial_vae_loss(model, pictures, "vae", beta=0.01, weight=0.3, start=0)
    torch.manual_seed(2)
    plain = vae_loss(model.vae, pictures, beta=0.01)["loss"]
    (g_rec,) = torch.autograd.grad(plain, last, retain_graph=True)
    (g_added,) = torch.autograd.grad(out["loss"] - plain, last, retain_graph=True)
    (g_adv,) = torch.autograd.grad(out["adversarial"], last)
    guard = g_adv.norm() / (g_adv.norm() + 1e-4)
    assert g_added.norm().item() == pytest.approx(0.3 * g_rec.norm().item() * guard.item(), rel=1e-4)


def test_the_critic_learns_to_tell_pictures_from_reconstructions(model, pictures):
    optimizer = torch.optim.Adam(model.critic.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = adversarial_vae_loss(model, pictures, "critic", beta=0.01, start=0)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # hinge: 2 when it cannot tell them apart, 0 when it always can
    assert list(critic_parts(model)) == ["critic", "vae"]
