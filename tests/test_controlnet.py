"""ControlNet: a trainable copy of the U-Net's way down, joined to the frozen base by zero convolutions —
so the untrained ControlNet draws exactly what the base draws, the zero convolutions still learn, only
the copy trains, and a ControlNet is only ever attached to the base it was made for."""
import numpy as np
import pytest
import torch
from PIL import Image
from test_text2image import CAPTIONS, assert_one_line_error, encoder, ship_tiny, unet  # noqa: F401 (fixtures)

from minidiff.__main__ import main
from minidiff.course.generators import load_samples
from minidiff.course.recipes.text2image import text_diffusion_loss
from minidiff.files import DataError
from minidiff.models.controlnet import ControlNet, Controlled, skip_widths
from minidiff.models.unet import UNet, UNetConfig, add_input_channels
from minidiff.text2image import load_text_to_image, text_to_image
from minidiff.train import TrainConfig, train
from minidiff.weights import read_manifest, save_weights


@pytest.fixture(autouse=True)
def _tiny_models(one_thread):
    """Tiny models run fastest on one thread (``conftest.one_thread``)."""


def perturbed(module, scale=0.05, seed=5):
    """``module`` with every weight moved a little, as after training (no zero layer hides a path)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def condition(n=1, size=32, seed=0):
    torch.manual_seed(seed)
    return (torch.rand(n, 1, size, size) > 0.7).float()


def text_cond(encoder, n):  # noqa: F811 (the fixture)
    return encoder(CAPTIONS[:n])


def test_the_copy_starts_from_the_bases_weights_and_its_residuals_fit_every_skip(unet):  # noqa: F811
    net = ControlNet.from_base(unet, condition_size=32)
    own = net.trunk.state_dict()
    assert own and all(torch.equal(v, unet.state_dict()[k]) for k, v in own.items())
    assert not any(k.startswith(("up.", "head.")) for k in own)  # only the way down and the middle
    x, t = torch.randn(2, *unet.sample_shape), torch.tensor([3, 700])
    cond = {"context": torch.randn(2, 5, unet.config.context_dim), "context_mask": torch.ones(2, 5, dtype=torch.bool)}
    skips, middle, _ = unet.encode(x, t, cond)
    residuals = net(x, t, cond, condition(2))
    assert [r.shape for r in residuals] == [h.shape for h in [*skips, middle]]
    assert [r.shape[1] for r in residuals] == skip_widths(unet)
    assert all(torch.equal(r, torch.zeros_like(r)) for r in residuals)  # zero convolutions: nothing added yet


@pytest.mark.parametrize("guidance_scale, strength", [(1.0, 1.0), (3.0, 1.0), (3.0, 2.0), (7.5, 0.5)])
def test_an_untrained_controlnet_draws_exactly_what_its_base_draws(encoder, unet, guidance_scale, strength):  # noqa: F811
    model = Controlled(unet, ControlNet.from_base(unet, condition_size=32))
    perturbed(model.controlnet.trunk)  # even a copy that has drifted adds nothing through zero convolutions
    options = dict(guidance_scale=guidance_scale, sampler="dpmpp_2m", num_inference_steps=3, seed=4, progress=False)
    plain = text_to_image(unet, encoder, CAPTIONS[:3], **options)
    steered = text_to_image(model, encoder, CAPTIONS[:3], control=condition(3), control_strength=strength, **options)
    assert torch.equal(plain, steered)


@pytest.mark.parametrize("kind", ["labels", "concat"])
def test_an_untrained_controlnet_equals_its_base_under_every_other_condition(kind):
    torch.manual_seed(0)
    extra = {"num_classes": 10} if kind == "labels" else {}
    base = perturbed(UNet(UNetConfig(1, 8, channels=(8, 16), attention=(False, True), num_res_blocks=1, groups=4,
                                     heads=2, **extra)))
    if kind == "concat":
        base = add_input_channels(base, 2)
    cond = {"labels": torch.tensor([3, 10])} if kind == "labels" else {"concat": torch.randn(2, 2, 8, 8)}
    model = Controlled(base, ControlNet.from_base(base, condition_size=16, hint_channels=(8,))).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(model(x, t, {**cond, "control": condition(2, 16)}), base(x, t, cond))


def test_a_zero_convolution_still_receives_a_gradient_and_then_passes_it_on(encoder, unet):  # noqa: F811
    """y = W·s + b with W = 0: ∂L/∂W = ∂L/∂y · sᵀ ≠ 0, while the copy behind it gets ∂L/∂s = Wᵀ·∂L/∂y = 0 —
    until one step has made W ≠ 0."""
    model = Controlled(unet, ControlNet.from_base(unet, condition_size=32))
    x, t = torch.randn(2, *unet.sample_shape), torch.tensor([100, 600])
    cond = {**text_cond(encoder, 2), "control": condition(2)}

    def gradients():
        model.zero_grad()
        model(x, t, cond).pow(2).mean().backward()
        return ([p.grad for p in model.controlnet.zero_convs.parameters()],
                [p.grad for p in model.controlnet.trunk.parameters()])

    zero, copy = gradients()
    assert all(g.abs().sum() > 0 for g in zero[::2])  # every zero convolution's weight learns
    assert all(g is None or g.abs().sum() == 0 for g in copy)
    with torch.no_grad():
        for p, g in zip(model.controlnet.zero_convs.parameters(), zero):
            p -= 0.1 * g
    assert any(g is not None and g.abs().sum() > 0 for g in gradients()[1])
    assert all(p.grad is None for p in model.base.parameters())  # the base is frozen


def test_gaussian_convolutions_change_the_base_at_step_zero_and_strength_zero_is_the_base(encoder, unet):  # noqa: F811
    model = Controlled(unet, perturbed(ControlNet.from_base(unet, condition_size=32, zero_init=False)))
    x, t = torch.randn(2, *unet.sample_shape), torch.tensor([100, 600])
    cond = text_cond(encoder, 2)
    with torch.no_grad():
        base = unet(x, t, cond)
        assert (model(x, t, {**cond, "control": condition(2)}) - base).abs().max() > 1e-2
        off = model(x, t, {**cond, "control": condition(2), "control_scale": torch.zeros(2)})
    assert torch.equal(off, base)


def test_only_the_controlnet_trains(encoder, unet, tmp_path):  # noqa: F811
    model = Controlled(unet, ControlNet.from_base(unet, condition_size=32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = encoder.ids(CAPTIONS)
    data = {"image": torch.randn(8, *unet.sample_shape), "ids": ids.repeat(2, 1), "group": torch.zeros(8),
            "control": condition(8)}

    class Batches(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def take(self, i):
            return {k: v[i] for k, v in data.items()}

    train(model, lambda m, b: text_diffusion_loss(m, b, encoder, caption_dropout=0.5), Batches(),
          TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=1, ema_decay=None, progress=False))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("base."))
    assert all(not torch.equal(after[k], before[k]) for k in before if k.startswith("controlnet.zero_convs."))


def ship_controlnet(encoder, unet, directory, **options):  # noqa: F811
    save = ship_tiny(encoder, unet, directory)
    shas = {name: entry["sha256"] for name, entry in read_manifest(directory).items()}
    net = perturbed(ControlNet.from_base(unet, condition_size=32, **options))
    save_weights(net, "control_tiny", base={"name": "t2i_tiny", "sha256": shas["t2i_tiny"]},
                 text_encoder={"name": "clip_tiny", "sha256": shas["clip_tiny"]}, **save)
    return net, save


def test_a_controlnet_is_loaded_only_with_the_base_it_was_trained_to_steer(encoder, unet, tmp_path):  # noqa: F811
    net, save = ship_controlnet(encoder, unet, tmp_path)
    model, decode, loaded = load_text_to_image("control_tiny", directory=tmp_path)
    assert isinstance(model, Controlled) and decode(torch.zeros(1, 4, 8, 8)).shape == (1, 3, 32, 32)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in model.controlnet.state_dict().items())
    other = UNet(unet.config)
    with pytest.raises(ValueError, match="made for another U-Net"):
        Controlled(UNet(UNetConfig(**{**unet.config.__dict__, "channels": (16, 32)})), net)
    save_weights(perturbed(other, seed=8), "t2i_tiny", **save)
    with pytest.raises(DataError, match="trained to steer t2i_tiny .* would steer it wrongly"):
        load_text_to_image("control_tiny", directory=tmp_path)


def test_the_generate_command_reads_a_condition_picture_and_says_what_goes_wrong_in_one_line(
        encoder, unet, tmp_path, monkeypatch, capsys):  # noqa: F811
    ship_controlnet(encoder, unet, tmp_path / "data" / "checkpoints")
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    edge, small = tmp_path / "edge.png", tmp_path / "small.png"
    Image.fromarray((condition()[0, 0].numpy() * 255).astype(np.uint8)).save(edge)
    Image.new("L", (16, 16)).save(small)
    out = tmp_path / "out" / "steered.png"
    main(["generate", CAPTIONS[0], "--model", "control_tiny", "--control", str(edge), "-n", "2", "--steps", "2",
          "--control-strength", "0.5", "--out", str(out)])
    assert load_samples(out.with_suffix(".safetensors"))[0].shape == (2, 3, 32, 32)
    for argv, said in [(["--control", str(small)], "is 16×16, but this ControlNet reads 32×32"),
                       (["--control", str(tmp_path / "none.png")], "does not exist"),
                       ([], "is steered by a condition picture"),
                       (["--control", str(edge), "--control-strength", "5"], "out of range")]:
        assert_one_line_error(["generate", "a red circle", "--model", "control_tiny", *argv], said, capsys)
    assert_one_line_error(["generate", "a red circle", "--model", "t2i_tiny", "--control", str(edge)],
                          "--control needs a ControlNet", capsys)


def test_a_grown_model_that_names_its_base_is_not_taken_for_a_controlnet():
    """inpaint_shapes records the t2i_shapes it grew from as its base, like a ControlNet does; it loads alone."""
    from minidiff.latents import load_denoiser
    from minidiff.models.unet import UNet
    model, decode = load_denoiser("inpaint_shapes")
    assert type(model) is UNet and decode is not None
    steered, _ = load_denoiser("controlnet_shapes_mask")
    assert isinstance(steered, Controlled) and type(steered.base) is UNet


def test_img2img_keep_outline_steers_with_the_pictures_own_object_read_by_colour(
        encoder, unet, tmp_path, monkeypatch, capsys):  # noqa: F811
    """``img2img --keep-outline``: the picture's object (``object_mask``) is the ControlNet's condition, with the
    documented defaults (λ 1.5, Euler ancestral) — the same pictures as ``text_to_image`` called by hand."""
    from minidiff.__main__ import KEEP_OUTLINE
    from minidiff.edit_protocol import object_mask
    ship_controlnet(encoder, unet, tmp_path / "data" / "checkpoints")
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[..., 2] = 255                                                       # a blue background
    rows, columns = np.mgrid[:32, :32]
    pixels[(rows - 12) ** 2 + (columns - 18) ** 2 < 49] = (255, 0, 0)          # a red disc
    picture, plain, out = tmp_path / "disc.png", tmp_path / "plain.png", tmp_path / "out.png"
    Image.fromarray(pixels).save(picture)
    Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(plain)
    main(["img2img", str(picture), CAPTIONS[1], "--keep-outline", "--model", "control_tiny", "--strength", "0.5",
          "-n", "2", "--steps", "4", "--seed", "3", "--out", str(out)])
    drawn = load_samples(out.with_suffix(".safetensors"))[0]
    model, decode, loaded = load_text_to_image("control_tiny")
    start = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
    held = object_mask(start)
    assert held.sum() == (((rows - 12) ** 2 + (columns - 18) ** 2) < 49).sum()  # the disc, pixel for pixel
    common = dict(n=2, image=start, strength=0.5, guidance_scale=3.0, decode=decode, sampler=KEEP_OUTLINE["sampler"],
                  num_inference_steps=4, seed=3, progress=False)
    by_hand = text_to_image(model, loaded, CAPTIONS[1], control=held, control_strength=KEEP_OUTLINE["control_strength"],
                            **common)
    torch.testing.assert_close(drawn, by_hand, atol=1e-5, rtol=1e-5)
    unsteered = text_to_image(model, loaded, CAPTIONS[1], control=torch.zeros_like(held), control_strength=1.5, **common)
    assert (drawn - unsteered).abs().max() > 1e-3  # the condition is really read
    for argv, said in [([str(plain), "x", "--keep-outline", "--model", "control_tiny"], "shows no object to keep"),
                       ([str(picture), "x", "--keep-outline", "--model", "t2i_tiny"], "needs a ControlNet that reads masks"),
                       ([str(picture), "x", "--model", "t2i_tiny", "--control-strength", "1"],
                        "--control-strength scales a ControlNet's condition")]:
        assert_one_line_error(["img2img", *argv, "--steps", "2", "--out", str(out)], said, capsys)
