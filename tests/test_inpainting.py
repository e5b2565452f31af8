"""Inpainting: RePaint's walk, the merge with the known picture, and what must come back exactly."""
from types import SimpleNamespace

import pytest
import torch

from minidiff.diffusion import schedules
from minidiff.diffusion.loss import convert_prediction
from minidiff.inpainting import fill_hole, mask_to_grid, repaint, repaint_calls, repaint_walk
from minidiff.models.unet import UNet, UNetConfig


def tiny_unet(**kw):
    torch.manual_seed(0)
    model = UNet(UNetConfig(1, 8, channels=(8, 16), attention=(False, True), num_res_blocks=1, groups=4, heads=2,
                            **kw))
    torch.nn.init.normal_(model.head[-1].weight, std=0.1)
    return model


def test_repaint_walk_by_hand():
    """10 steps, jumps of 3, each stretch walked twice: back up at levels 7, 4 and 1 (RePaint counts
    them from the clean end, and never jumps above the start)."""
    assert repaint_walk(10, 3, 2) == [10, 9, 8, 7, 8, 9, 10, 9, 8, 7, 6, 5, 4, 5, 6, 7, 6, 5, 4, 3, 2, 1, 2, 3, 4,
                                      3, 2, 1, 0]
    assert repaint_walk(6, 10, 5) == [6, 5, 4, 3, 2, 1, 0]  # a jump longer than the walk: no resampling
    assert repaint_walk(5) == [5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("steps, jump, r", [(20, 5, 3), (50, 10, 10), (7, 2, 4)])
def test_repaint_walk_moves_one_level_at_a_time_and_walks_each_stretch_r_times(steps, jump, r):
    walk = repaint_walk(steps, jump, r)
    assert walk[0] == steps and walk[-1] == 0 and max(walk) == steps
    assert all(abs(a - b) == 1 for a, b in zip(walk, walk[1:]))
    down = sum(b < a for a, b in zip(walk, walk[1:]))
    jumps = len(range(1, steps - jump + 1, jump))
    assert down == steps + (r - 1) * jump * jumps
    for level in range(1, steps - jump + 1, jump):  # every level in a resampled stretch is left downwards r times
        assert sum(a == level + 1 and b == level for a, b in zip(walk, walk[1:])) == r


def test_mask_on_the_latent_grid_keeps_every_cell_a_pixel_touches():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 5, 5] = 1
    mask[..., 40:49, 17:25] = 1  # rows 40–48 touch cells 5 and 6, columns 17–24 cells 2 and 3
    grid = mask_to_grid(mask, 8)
    assert grid.shape == (1, 1, 8, 8) and grid.sum() == 1 + 2 * 2
    assert grid[0, 0, 0, 0] == 1 and grid[0, 0, 5:7, 2:4].eq(1).all()


def test_the_hole_is_filled_with_the_kept_pixels_mean_colour_before_encoding():
    image = torch.zeros(2, 3, 4, 4)
    image[0, 0], image[1, 2, :, :2] = 0.5, -1.0    # picture 0: red-ish everywhere; picture 1: half blue-less
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1                          # the hole: 4 of 16 pixels
    filled = fill_hole(image, mask)
    assert torch.equal(filled[:, :, mask[0, 0] == 0], image[:, :, mask[0, 0] == 0])
    torch.testing.assert_close(filled[0, :, 1, 1], torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(filled[1, :, 2, 2], torch.tensor([0.0, 0.0, -6 / 12]))  # 6 of 12 kept pixels at −1


@pytest.mark.parametrize("resamplings", [1, 3])
def test_the_kept_pixels_come_back_exactly_and_the_hole_is_drawn(resamplings):
    model, image = tiny_unet(), torch.rand(2, 1, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 3:7] = 1
    out = repaint(model, image, mask, num_inference_steps=6, jump_length=2, resamplings=resamplings, progress=False)
    assert out.dtype == image.dtype
    assert out.shape == (2, 1, 8, 8)
    assert torch.equal(out[:, :, mask[0, 0] == 0], image[:, :, mask[0, 0] == 0])
    assert (out - image)[:, :, mask[0, 0] == 1].abs().max() > 1e-2
    assert torch.equal(repaint(model, image, torch.zeros(1, 1, 8, 8), num_inference_steps=3, progress=False), image)


class ExactModel(torch.nn.Module):
    """A "network" that knows x_0 and answers in v-prediction at a fractional step t."""

    def __init__(self, x0):
        super().__init__()
        self.x0, self.config = x0, SimpleNamespace(prediction_type="v_prediction", num_train_steps=1000)
        self.noise_schedule = schedules.NoiseSchedule("cosine", 1000).double()
        self.weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x_t, t):
        log_sigmas = self.noise_schedule.log_sigmas
        low = t.floor().long().clamp(max=len(log_sigmas) - 2)
        sigma = torch.lerp(log_sigmas[low], log_sigmas[low + 1], t - low).exp()
        alpha_bar = schedules.alphas_cumprod_from_sigmas(sigma).reshape(-1, 1, 1, 1)
        return convert_prediction(self.x0, x_t, alpha_bar, "sample", "v_prediction")


@pytest.mark.parametrize("sampler, resamplings", [("ddim", 1), ("ddpm", 3), ("euler_ancestral", 2)])
def test_a_denoiser_that_knows_the_picture_fills_the_hole_with_it(sampler, resamplings):
    """If D(x, σ) is the picture itself, the hole is drawn back as the picture (up to the last σ's rounding)."""
    image = (torch.rand(1, 1, 8, 8, dtype=torch.float64) * 1.6 - 0.8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    out = repaint(ExactModel(image), image, mask, num_inference_steps=8, jump_length=3, resamplings=resamplings,
                  sampler=sampler, progress=False)
    torch.testing.assert_close(out, image, atol=1e-6, rtol=0)


def test_network_calls_are_the_walks_downward_moves_guided_or_not():
    model = tiny_unet(num_classes=3)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    image, mask = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    for guidance in (1.0, 3.0):
        calls.clear()
        repaint(model, image, mask, 2, cond={"labels": torch.tensor([1, 2])}, guidance_scale=guidance,
                num_inference_steps=9, jump_length=4, resamplings=3, progress=False)
        assert len(calls) == 9 + 2 * 4 * 2 == repaint_calls(9, 4, 3)  # two stretches of 4 walked 3 times: 8 more each


def test_a_mask_that_is_not_black_and_white_is_one_clear_error():
    with pytest.raises(ValueError, match="0 \\(keep\\) or 1 \\(redraw\\)"):
        repaint(tiny_unet(), torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.5), num_inference_steps=2,
                progress=False)
    with pytest.raises(ValueError, match="whole numbers ≥ 1"):
        repaint(tiny_unet(), torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8), num_inference_steps=2, resamplings=0,
                progress=False)
