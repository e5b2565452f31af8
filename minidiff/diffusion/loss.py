"""The diffusion core: noising images (the forward process) and the denoiser's training loss.

The article's question 4 — how does the model know which noise to remove? — is answered by the
four-step recipe in ``diffusion_loss``: take an image x_0, pick a random step t, add noise
x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, and train a network to predict it back from (x_t, t).

What the network predicts is a choice (``prediction_type``, diffusers' names), and any one of the
three determines the others given x_t and ᾱ_t:

    "epsilon"        ε                       the noise that was added (DDPM)
    "sample"         x_0                     the clean image
    "v_prediction"   v = √ᾱ·ε − √(1 − ᾱ)·x_0  a mix that stays well scaled at every t (Salimans & Ho, 2022)

Schedules (ᾱ) come from ``minidiff.diffusion.schedules``; t is an integer in [0, T).
"""
import torch
import torch.nn.functional as F

from minidiff.diffusion.schedules import snr

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def at_step(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast against a batch x of shape (B, C, H, W)."""
    return values.to(x.device)[t].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Jump straight to step t:  x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε."""
    alpha_bar = at_step(alphas_cumprod, t, x0)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def q_step(x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """One link of the Markov chain, from x_{t−1} to x_t:  x_t = √(1 − β_t) · x_{t−1} + √β_t · ε
    (x_{−1} is the image). Chaining t + 1 of these has the same distribution as ``q_sample``."""
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    beta = 1 - at_step(alphas_cumprod / previous, t, x_prev)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise


def convert_prediction(prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor,
                       source: str, target: str) -> torch.Tensor:
    """Turn a prediction of one type into another, exactly, using x_t = a·x_0 + b·ε with
    a = √ᾱ, b = √(1 − ᾱ) (so a² + b² = 1); ``alpha_bar`` broadcasts against x_t (e.g. (B, 1, 1, 1)):

        x_0 = (x_t − b·ε) / a         ε = (x_t − a·x_0) / b
        v = a·ε − b·x_0               x_0 = a·x_t − b·v        ε = b·x_t + a·v
    """
    for name in (source, target):
        if name not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, not {name!r}")
    a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if source == "epsilon":
        x0, eps = (x_t - b * prediction) / a, prediction
    elif source == "sample":
        x0, eps = prediction, (x_t - a * prediction) / b
    else:
        x0, eps = a * x_t - b * prediction, b * x_t + a * prediction
    return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - b * x0}[target]


def loss_weight(snr_t: torch.Tensor, prediction_type: str, weighting: str = "min_snr", gamma: float = 5.0):
    """Per-example weight of the mean-squared error, so the loss balances the noise levels.

    Every prediction type's MSE is the x_0-error times a factor: ‖ε̂ − ε‖² = SNR·‖x̂_0 − x_0‖² and
    ‖v̂ − v‖² = (1 + SNR)·‖x̂_0 − x_0‖². Min-SNR-γ (Hang et al., 2023) weights the x_0-error by
    min(SNR, γ): at low noise (huge SNR) the easy steps stop dominating the gradient. So

        epsilon: min(SNR, γ) / SNR     sample: min(SNR, γ)     v_prediction: min(SNR, γ) / (SNR + 1)

    ``weighting="none"`` is the plain MSE of the chosen prediction (DDPM's "simple" loss for ε).
    """
    if weighting == "none":
        return torch.ones_like(snr_t)
    if weighting != "min_snr":
        raise ValueError(f"loss weighting must be 'min_snr' or 'none', not {weighting!r}")
    clipped = snr_t.clamp(max=gamma)
    return {"epsilon": clipped / snr_t, "sample": clipped, "v_prediction": clipped / (snr_t + 1)}[prediction_type]


def check_twin(cond: dict, uncond: dict) -> None:
    """The unconditional twin of a condition mapping must name the same conditions."""
    if set(uncond) != set(cond):
        raise ValueError(f"uncond must have the same keys as cond ({sorted(cond)}), got {sorted(uncond)}")


def drop_conditions(cond: dict, uncond: dict, p: float) -> dict:
    """Replace each example's condition by its unconditional twin with probability ``p`` (the same
    examples for every key), so one network also learns the unconditional model that classifier-free
    guidance needs (Ho & Salimans, 2022): labels become the null label, a caption the empty prompt."""
    if not cond or p <= 0:
        return cond
    check_twin(cond, uncond)
    first = next(iter(cond.values()))
    dropped = torch.rand(first.shape[0], device=first.device) < p
    return {k: torch.where(dropped.reshape(-1, *[1] * (v.ndim - 1)), uncond[k].expand_as(v), v)
            for k, v in cond.items()}


def diffusion_loss(model, x0: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                   weighting: str = "min_snr", gamma: float = 5.0, cond: dict | None = None,
                   uncond: dict | None = None, cond_dropout: float = 0.0, t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None) -> dict:
    """The training step of every diffusion model in the course (Ho et al., 2020, algorithm 1):

        1. take a batch of images x_0            (given)
        2. pick a random step t ~ U{0, …, T−1}
        3. add noise: x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε,  ε ~ N(0, I)
        4. predict the target from (x_t, t) and take the weighted squared error

    ``cond`` (a mapping: labels, text context, …) reaches the network unchanged, except that a
    fraction ``cond_dropout`` of the examples get ``uncond`` instead (``drop_conditions``); without
    ``cond`` the network is called as ``model(x_t, t)``. ``t`` and ``noise`` are drawn at random
    unless given: fixing them gives a held-out loss without sampling noise, and the exercises a
    checkable answer.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, not {prediction_type!r}")
    if t is None:
        t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), device=x0.device)
    if noise is None:
        noise = torch.randn_like(x0)
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    if cond:
        prediction = model(x_t, t, drop_conditions(cond, uncond, cond_dropout))
    else:
        prediction = model(x_t, t)
    v = convert_prediction(noise, x_t, at_step(alphas_cumprod, t, x0), "epsilon", "v_prediction")
    target = {"epsilon": noise, "sample": x0, "v_prediction": v}
    per_example = F.mse_loss(prediction.float(), target[prediction_type].float(), reduction="none").flatten(1).mean(1)
    weight = loss_weight(at_step(snr(alphas_cumprod), t, x0).flatten(), prediction_type, weighting, gamma)
    return {"loss": (weight * per_example).mean(), "mse": per_example.mean()}


def split_batch(batch) -> tuple[torch.Tensor, dict]:
    """A batch as (images, conditions): a mapping ``{"images": …, <condition>: …}`` (what
    ``minidiff.datasets.mnist.ConditionedImages`` yields), or a bare tensor of images (no conditions)."""
    if isinstance(batch, torch.Tensor):
        return batch, {}
    if isinstance(batch, dict) and "images" in batch:
        return batch["images"], {k: v for k, v in batch.items() if k != "images"}
    raise ValueError("a diffusion batch is a tensor of images or a mapping {'images': …, <condition>: …}; "
                     f"got {type(batch).__name__}" + (f" with keys {sorted(batch)}" if isinstance(batch, dict) else ""))


def unet_loss(model, batch, weighting: str = "min_snr", cond_dropout: float = 0.1) -> dict:
    """The one trainer's ``loss_fn`` for a U-Net: the batch's conditions go to the network unchanged
    (``cond_dropout`` of them replaced by the model's null condition), with the schedule and the
    prediction type the model records."""
    images, cond = split_batch(batch)
    model.check_cond(cond, images.shape[0])
    uncond = model.null_cond(cond) if cond and cond_dropout > 0 else None
    return diffusion_loss(model, images, model.noise_schedule.alphas_cumprod, model.config.prediction_type,
                          weighting, cond=cond, uncond=uncond, cond_dropout=cond_dropout)
