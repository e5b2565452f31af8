"""The text-to-image pipeline: prompts become the U-Net's cross-attention condition (the negative
prompt's with the same number of tokens), caption dropout trains the empty prompt, a picture's noise
depends only on (seed, i), and a model is never paired with another CLIP than the one it learned with."""
import numpy as np
import pytest
import torch

from minidiff import metrics
from minidiff.__main__ import main
from minidiff.course.generators import load_samples
from minidiff.course.recipes.text2image import (
    empty_prompt_ids,
    insert_unseen,
    t2i_unet,
    text_diffusion_loss,
    unseen_characters,
)
from minidiff.datasets.shapes import ATTRIBUTES, TEST_SEED, ShapesDataset, attribute_labels, eval_caption
from minidiff.files import DataError
from minidiff.models.autoencoder import VAE, VAEConfig
from minidiff.models.clip import CLIP, CLIPConfig
from minidiff.models.tokenizer import train_bpe
from minidiff.text2image import PromptEncoder, load_text_to_image, text_to_image
from minidiff.weights import read_manifest, save_weights

CAPTIONS = ["a red circle on a blue background", "a small green square, top left", "一个红色圆形", "a yellow triangle"]


@pytest.fixture(autouse=True)
def _tiny_models(one_thread):
    """Tiny models run fastest on one thread (``conftest.one_thread``)."""


@pytest.fixture(scope="module")
def encoder():
    tokenizer = train_bpe(CAPTIONS, 300)
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, end_id=tokenizer.end_id,
                           context_length=48, text_width=32, text_layers=1, text_heads=2, image_size=16,
                           channels=(8, 16), groups=4, embed_dim=16))
    return PromptEncoder(clip, tokenizer)


@pytest.fixture(scope="module")
def unet(encoder):
    torch.manual_seed(1)
    model = t2i_unet(4, 8, encoder.width).eval()
    with torch.no_grad():  # as after training: the zero-initialised output layers no longer hide every path
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_prompts_and_the_negative_prompt_get_the_same_number_of_tokens(encoder):
    cond, uncond = encoder.pair(["a red circle", "a small green square, top left"], negative_prompt="blue")
    assert cond["context"].shape[:2] == cond["context_mask"].shape == (2, uncond["context"].shape[1])
    assert uncond["context"].shape[0] == 1
    assert cond["context_mask"][1].all() and not cond["context_mask"][0].all()  # the longest prompt fills L
    assert uncond["context_mask"][0].sum() == len(encoder.tokenizer.encode("blue")) + 2  # <start> blue <end>
    _, empty = encoder.pair(["a red circle"])
    assert empty["context_mask"][0].sum() == 2  # the empty prompt: <start> <end>


def test_padding_after_the_prompt_changes_no_prediction(encoder, unet):
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    short = encoder.states(encoder.ids(CAPTIONS[:2]))
    long = encoder.states(encoder.tokenizer(CAPTIONS[:2], 48))  # padded to the full context
    assert long["context"].shape[1] > short["context"].shape[1]
    torch.testing.assert_close(unet(x, t, short), unet(x, t, long), atol=1e-5, rtol=1e-5)


def test_the_prompt_reaches_the_prediction(encoder, unet):
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    assert (unet(x, t, encoder(CAPTIONS[:1])) - unet(x, t, encoder(CAPTIONS[1:2]))).abs().max() > 1e-4


def test_caption_dropout_trains_on_the_empty_prompt(encoder, unet):
    ids = encoder.ids(CAPTIONS)
    batch = {"image": torch.randn(4, 4, 8, 8), "ids": ids}
    empty = empty_prompt_ids(encoder, ids.shape[1])
    assert empty[:2].tolist() == [encoder.tokenizer.start_id, encoder.tokenizer.end_id]
    assert (empty[2:] == encoder.tokenizer.pad_id).all()
    losses = []
    for p, rows in [(1.0, ids), (0.0, empty.expand_as(ids)), (0.0, ids)]:
        torch.manual_seed(3)  # the same timesteps and noise each time
        losses.append(text_diffusion_loss(unet, {**batch, "ids": rows}, encoder, caption_dropout=p)["loss"])
    torch.testing.assert_close(losses[0], losses[1])  # every caption dropped = every caption empty
    assert abs(losses[0] - losses[2]) > 1e-6


def test_unseen_characters_are_byte_tokens_inserted_between_start_and_end(encoder):
    tokenizer = encoder.tokenizer
    pool = unseen_characters(tokenizer, avoid="张图片")
    assert len(pool) > 20_000 and all(len(ids) in (2, 3) and len(tokenizer.decode(ids)) == 1 for ids in pool)
    assert tokenizer.encode("张") not in pool and tokenizer.encode("丁") in pool
    ids = encoder.ids(CAPTIONS)  # cut to the longest caption
    torch.manual_seed(0)
    assert torch.equal(insert_unseen(ids, pool, 0.0, tokenizer.pad_id, 80), ids)
    noisy = insert_unseen(ids, pool, 1.0, tokenizer.pad_id, 80)
    for before, after in zip(ids.tolist(), noisy.tolist()):
        before = [i for i in before if i != tokenizer.pad_id]
        after = [i for i in after if i != tokenizer.pad_id]
        assert after[0] == tokenizer.start_id and after[-1] == tokenizer.end_id
        added = len(after) - len(before)
        assert 2 <= added <= 12 and len(after) <= 80
        rest = iter(after)
        assert all(token in rest for token in before)  # the caption's own tokens, in order
    short = insert_unseen(ids, pool, 1.0, tokenizer.pad_id, ids.shape[1])
    assert short.shape[1] <= ids.shape[1]  # a row that would not fit the context gets nothing more


def test_a_pictures_noise_depends_only_on_the_seed_and_its_place(encoder, unet):
    options = dict(sampler="ddim", num_inference_steps=3, seed=5, progress=False, guidance_scale=2.0)
    both = text_to_image(unet, encoder, CAPTIONS[:2], **options)
    first = text_to_image(unet, encoder, CAPTIONS[0], **options)
    edited = text_to_image(unet, encoder, [CAPTIONS[0], CAPTIONS[3]], **options)
    assert both.shape == (2, 4, 8, 8)
    torch.testing.assert_close(both[:1], first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[0], edited[0], atol=1e-5, rtol=1e-5)  # same seed, prompt 2 edited
    assert (both[1] - edited[1]).abs().max() > 1e-4
    assert text_to_image(unet, encoder, CAPTIONS[0], n=3, **options).shape[0] == 3
    with pytest.raises(ValueError, match="2 prompts but n = 3"):
        text_to_image(unet, encoder, CAPTIONS[:2], n=3, **options)


def test_a_negative_prompt_changes_a_guided_picture_only(encoder, unet):
    options = dict(sampler="ddim", num_inference_steps=3, seed=0, progress=False)
    plain = text_to_image(unet, encoder, CAPTIONS[0], guidance_scale=3.0, **options)
    negative = text_to_image(unet, encoder, CAPTIONS[0], negative_prompt="blue", guidance_scale=3.0, **options)
    assert (plain - negative).abs().max() > 1e-4
    unguided = [text_to_image(unet, encoder, CAPTIONS[0], negative_prompt=neg, guidance_scale=1.0, **options)
                for neg in ("", "blue")]
    torch.testing.assert_close(*unguided)


def ship_tiny(encoder, unet, directory):
    """A tiny autoencoder, CLIP and text-to-image U-Net saved as the recipes save them."""
    save = dict(directory=directory, recipe="pytest", data="none", steps=0, wall_time_s=0.0)
    vae = VAE(VAEConfig(in_channels=3, image_size=32, downsample=4, latent_channels=4, channels=8))
    save_weights(vae, "vae_tiny", **save)
    save_weights(encoder.clip, "clip_tiny", companions={"tokenizer.json": encoder.tokenizer.save}, **save)
    shas = {name: entry["sha256"] for name, entry in read_manifest(directory).items()}
    save_weights(unet, "t2i_tiny", autoencoder={"name": "vae_tiny", "sha256": shas["vae_tiny"]},
                 text_encoder={"name": "clip_tiny", "sha256": shas["clip_tiny"]}, **save)
    return save


def test_a_model_is_only_loaded_with_the_clip_it_learned_with(encoder, unet, tmp_path):
    save = ship_tiny(encoder, unet, tmp_path)
    model, decode, loaded = load_text_to_image("t2i_tiny", directory=tmp_path)
    torch.testing.assert_close(loaded(CAPTIONS[:1])["context"], encoder(CAPTIONS[:1])["context"])
    assert decode(torch.zeros(1, 4, 8, 8)).shape == (1, 3, 32, 32)
    torch.manual_seed(9)
    save_weights(CLIP(encoder.clip.config), "clip_tiny", companions={"tokenizer.json": encoder.tokenizer.save}, **save)
    with pytest.raises(DataError, match="trained with the text states of clip_tiny.*read every prompt wrongly"):
        load_text_to_image("t2i_tiny", directory=tmp_path)
    with pytest.raises(DataError, match="vae_tiny is not a text-to-image model"):
        load_text_to_image("vae_tiny", directory=tmp_path)


def test_img2img_starts_from_the_pictures_latent(encoder, unet, tmp_path):
    """``text_to_image(image=…)`` encodes the picture with the model's own autoencoder: strength 0 gives
    back the autoencoder's reconstruction, strength 1 forgets the picture, in between it matters."""
    ship_tiny(encoder, unet, tmp_path)
    model, decode, loaded = load_text_to_image("t2i_tiny", directory=tmp_path)
    torch.manual_seed(3)
    picture = torch.rand(1, 3, 32, 32) * 2 - 1
    options = dict(decode=decode, sampler="ddim", num_inference_steps=4, seed=2, progress=False)
    with torch.no_grad():
        reconstruction = decode.vae.eval().decode(decode.vae.encode(picture)[0]).clamp(-1, 1)  # z·s / s
    kept = text_to_image(model, loaded, CAPTIONS[0], image=picture, strength=0.0, **options)
    torch.testing.assert_close(kept, reconstruction, atol=1e-5, rtol=1e-5)
    fresh = text_to_image(model, loaded, CAPTIONS[0], **options)
    assert torch.equal(text_to_image(model, loaded, CAPTIONS[0], image=picture, strength=1.0, **options), fresh)
    half = text_to_image(model, loaded, CAPTIONS[0], image=picture, strength=0.5, **options)
    other = text_to_image(model, loaded, CAPTIONS[0], image=-picture, strength=0.5, **options)
    assert (half - other).abs().max() > 1e-3


def assert_one_line_error(argv, said, capsys):
    """The command stops with a message (its exit message, or argparse's usage error) that says ``said``."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    message = str(stop.value.code) if stop.value.code not in (None, 2) else capsys.readouterr().err
    assert said in message and "Traceback" not in message, (argv, message)


def test_the_generate_command_draws_any_prompt_and_says_what_goes_wrong_in_one_line(encoder, unet, tmp_path,
                                                                                     monkeypatch, capsys):
    ship_tiny(encoder, unet, tmp_path / "data" / "checkpoints")
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    out = tmp_path / "out" / "red.png"
    main(["generate", "蓝色背景上的一个大红色圆形，左上角", "--model", "t2i_tiny", "-n", "3", "--steps", "2",
          "--out", str(out)])
    images, labels = load_samples(out.with_suffix(".safetensors"))
    assert images.shape == (3, 3, 32, 32) and labels is None and out.exists()
    capsys.readouterr()
    main(["generate", "a red circle " * 30, "--model", "t2i_tiny", "-n", "2", "--steps", "1", "--out", str(out)])
    err = capsys.readouterr().err
    dropped = [line for line in err.splitlines() if "dropped" in line]
    assert len(dropped) == 1 and dropped[0].startswith("warning: prompt") and "Warning" not in err
    for argv, said in [(["--sampler", "nope"], "unknown sampler"), (["--guidance", "inf"], "out of range"),
                       (["-n", "0"], "out of range"), (["--steps", "-3"], "out of range"),
                       (["--model", "vae_tiny"], "not a text-to-image model"),
                       (["--out", str(tmp_path / "x.jpg")], "ending in .png")]:
        assert_one_line_error(["generate", "a red circle", "--model", "t2i_tiny", *argv], said, capsys)


def test_the_img2img_command_starts_from_a_picture_file_and_says_what_goes_wrong_in_one_line(
        encoder, unet, tmp_path, monkeypatch, capsys):
    from PIL import Image
    ship_tiny(encoder, unet, tmp_path / "data" / "checkpoints")
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    picture, big, out = tmp_path / "in.png", tmp_path / "big.jpg", tmp_path / "out.png"
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(picture)
    Image.fromarray(pixels).resize((50, 40)).save(big)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    common = ["--model", "t2i_tiny", "--steps", "4", "--out", str(out)]
    main(["img2img", str(picture), "a red circle", "--strength", "0", "-n", "2", *common])
    images, _ = load_samples(out.with_suffix(".safetensors"))
    model, decode, _ = load_text_to_image("t2i_tiny")
    start = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        torch.testing.assert_close(images, decode.vae.eval().decode(decode.vae.encode(start)[0]).clamp(-1, 1)
                                   .expand(2, -1, -1, -1), atol=1e-5, rtol=1e-5)
    capsys.readouterr()
    main(["img2img", str(big), "一个红色圆形", "--strength", "0.5", *common])
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "warning" in line] == [
        f"warning: {big} is 50×40; resized to the model's 32×32"]
    assert "dpmpp_2m × 2" in err  # the progress bar counts the steps that run: half of 4
    for argv, said in [([str(picture), "x", "--strength", "1.5"], "out of range"),
                       ([str(tmp_path / "nope.png"), "x"], "does not exist"),
                       ([str(tmp_path / "broken.png"), "x"], "cannot read the picture"),
                       ([str(picture)], "the following arguments are required: prompt")]:
        assert_one_line_error(["img2img", *argv, *common], said, capsys)


def test_a_mask_conditioned_model_reads_the_known_picture_and_mask_and_starts_as_its_base(encoder, unet, tmp_path):
    """``inpaint`` with a model grown by ``add_input_channels``: sampled as usual from noise (no RePaint),
    the kept pixels exact; before training it draws what its text-to-image base draws in the hole."""
    from minidiff.inpainting import inpaint, inpainting_condition
    from minidiff.models.unet import add_input_channels
    ship_tiny(encoder, unet, tmp_path)
    base, decode, loaded = load_text_to_image("t2i_tiny", directory=tmp_path)
    model = add_input_channels(base, 5)
    torch.manual_seed(4)
    picture, mask = torch.rand(1, 3, 32, 32) * 2 - 1, torch.zeros(1, 1, 32, 32)
    mask[..., 4:20, 8:24] = 1
    concat = inpainting_condition(picture, mask, decode)
    assert concat.shape == (1, 5, 8, 8) and torch.equal(concat[0, 4, 1:5, 2:6], torch.ones(4, 4))
    options = dict(decode=decode, sampler="ddim", num_inference_steps=3, seed=1, progress=False)
    out = inpaint(model, loaded, picture, mask, CAPTIONS[1], n=2, **options)
    kept = mask[0, 0] == 0
    assert out.shape == (2, 3, 32, 32) and torch.equal(out[:, :, kept], picture[:, :, kept].expand(2, -1, -1))
    drawn = text_to_image(base, loaded, CAPTIONS[1], n=2, **options)
    torch.testing.assert_close(out[:, :, ~kept], drawn[:, :, ~kept], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="needs no RePaint resampling"):
        inpaint(model, loaded, picture, mask, CAPTIONS[1], resamplings=3, **options)


def picture_and_mask_files(folder, seed: int, hole_rows: slice, hole_cols: slice):
    """A random 32 × 32 picture and a black mask with a white box, saved as PNGs in ``folder``:
    ``(picture path, mask path, the pixels, the mask's pixels)``."""
    from PIL import Image
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "in.png")
    hole = np.zeros((32, 32), np.uint8)
    hole[hole_rows, hole_cols] = 255
    Image.fromarray(hole).save(folder / "mask.png")
    return folder / "in.png", folder / "mask.png", pixels, hole


def test_the_inpaint_command_keeps_the_black_part_and_says_what_goes_wrong_in_one_line(
        encoder, unet, tmp_path, monkeypatch, capsys):
    from PIL import Image
    ship_tiny(encoder, unet, tmp_path / "data" / "checkpoints")
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    picture, mask, pixels, hole = picture_and_mask_files(tmp_path, 0, slice(8, 20), slice(10, 30))
    out = tmp_path / "out.png"
    Image.fromarray(hole[:16]).save(tmp_path / "short.png")
    Image.fromarray(hole // 2).save(tmp_path / "grey.png")
    common = ["--model", "t2i_tiny", "--steps", "4", "--out", str(out)]
    main(["inpaint", str(picture), str(mask), "a red circle", "-n", "2", "--jump-length", "2", "--resamplings", "2",
          *common])
    images, _ = load_samples(out.with_suffix(".safetensors"))
    start = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1
    kept = torch.from_numpy(hole == 0)
    assert images.shape == (2, 3, 32, 32) and torch.equal(images[:, :, kept], start[:, kept].expand(2, -1, -1))
    assert (images[:, :, ~kept] - start[:, ~kept]).abs().max() > 0.01
    for argv, said in [([str(picture), str(tmp_path / "short.png"), "x"], "is 32×16 but the picture is 32×32"),
                       ([str(picture), str(tmp_path / "grey.png"), "x"], "has grey pixels"),
                       ([str(picture), str(tmp_path / "none.png"), "x"], "the mask"),
                       ([str(picture), str(mask), "x", "--resamplings", "0"], "out of range")]:
        assert_one_line_error(["inpaint", *argv, *common], said, capsys)


def test_the_inpaint_command_samples_a_mask_conditioned_model_without_repaint(encoder, unet, tmp_path, monkeypatch,
                                                                               capsys):
    """``inpaint --model`` a grown model: its own sampler (DPM-Solver++, no resampling walk), the kept
    pixels exact; RePaint's options, or generate with it, are one clear line."""
    from minidiff.models.unet import add_input_channels
    save = ship_tiny(encoder, unet, tmp_path / "data" / "checkpoints")
    shas = {name: entry["sha256"] for name, entry in read_manifest(tmp_path / "data" / "checkpoints").items()}
    save_weights(add_input_channels(unet, 5), "inpaint_tiny", autoencoder={"name": "vae_tiny", "sha256": shas["vae_tiny"]},
                 text_encoder={"name": "clip_tiny", "sha256": shas["clip_tiny"]}, **save)
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    picture, mask, pixels, hole = picture_and_mask_files(tmp_path, 1, slice(4, 16), slice(4, 28))
    out = tmp_path / "out.png"
    common = ["--model", "inpaint_tiny", "--steps", "3", "--out", str(out)]
    capsys.readouterr()
    main(["inpaint", str(picture), str(mask), "a red circle", "-n", "2", *common])
    assert "dpmpp_2m × 3" in capsys.readouterr().err  # sampled as usual: 3 steps, no RePaint walk
    images, _ = load_samples(out.with_suffix(".safetensors"))
    kept = torch.from_numpy(hole == 0)
    start = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(images[:, :, kept], start[:, kept].expand(2, -1, -1))
    assert_one_line_error(["inpaint", str(picture), str(mask), "x", "--resamplings", "3", *common],
                          "needs no RePaint resampling", capsys)
    assert_one_line_error(["generate", "x", *common], "draws into the hole of a picture", capsys)


@pytest.mark.slow  # the judge's reference statistics: 10,000 renders
@pytest.mark.parametrize("language", ["en", "zh"])
def test_prompt_following_reads_the_pictures_against_what_each_prompt_asked(monkeypatch, language):
    """A stand-in model that draws exactly the asked pictures scores 100 %; the same pictures handed to
    the wrong prompts (shifted by one) score what the judge reads of the mismatch."""
    drawn = ShapesDataset(40, seed=TEST_SEED, size=64, compositions="train")
    asked = []

    def draws(shift):
        def text_to_image(model, encoder, prompts, **options):
            asked.append(prompts)
            return drawn.images.roll(shift, 0)
        return text_to_image

    monkeypatch.setattr(metrics, "text_to_image", draws(0))
    exact = metrics.prompt_following(None, None, None, drawn.attributes, language)
    assert asked[0] == [eval_caption(a, language) for a in drawn.attributes]
    assert exact["all_correct"] == 1.0 and set(exact["accuracy"].values()) == {1.0}
    monkeypatch.setattr(metrics, "text_to_image", draws(1))
    shifted = metrics.prompt_following(None, None, None, drawn.attributes, language)
    labels = attribute_labels(drawn.attributes)
    expected = (labels.roll(1, 0) == labels).float().mean(0)
    assert [shifted["accuracy"][name] for name in ATTRIBUTES] == pytest.approx(expected.tolist())


def test_cross_attention_maps_are_each_layers_softmax_over_the_prompts_real_tokens(encoder, unet):
    """The maps against an independent computation: every cross-attention layer's weights from
    ``nn.MultiheadAttention`` (need_weights, averaged over heads) loaded with the layer's projections,
    on the inputs the layer really got, averaged over the layers at each resolution."""
    from minidiff.models.attention import TransformerBlock
    from minidiff.text2image import cross_attention_maps
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([300, 800])
    cond = encoder.states(encoder.tokenizer(CAPTIONS[:2], 48))  # padded well past both prompts
    assert not cond["context_mask"].all(1).any()
    maps = cross_attention_maps(unet, x, t, cond)
    assert sorted(maps) == [4, 8] and maps[8].shape == (2, 48, 8, 8) and maps[4].shape == (2, 48, 4, 4)

    layers = [m.attn2 for m in unet.modules() if isinstance(m, TransformerBlock) and m.context_dim is not None]
    seen = {}

    def keep(layer, args, out):  # returns None: the output goes on unchanged
        seen[layer] = (args, out)

    hooks = [layer.register_forward_hook(keep) for layer in layers]
    with torch.no_grad():
        unet(x, t, cond)
    for hook in hooks:
        hook.remove()
    sums, counts = {}, {}
    for layer, ((tokens, context, mask), out) in seen.items():
        dim = layer.q.in_features
        reference = torch.nn.MultiheadAttention(dim, layer.heads, kdim=context.shape[-1], vdim=context.shape[-1],
                                                batch_first=True)
        with torch.no_grad():
            if reference._qkv_same_embed_dim:  # torch keeps q, k, v in one matrix when their widths agree
                reference.in_proj_weight.copy_(torch.cat([layer.q.weight, layer.k.weight, layer.v.weight]))
            else:
                reference.q_proj_weight.copy_(layer.q.weight), reference.k_proj_weight.copy_(layer.k.weight)
                reference.v_proj_weight.copy_(layer.v.weight)
            reference.in_proj_bias.copy_(torch.cat([layer.q.bias, layer.k.bias, layer.v.bias]))
            reference.out_proj.weight.copy_(layer.out.weight), reference.out_proj.bias.copy_(layer.out.bias)
            answer, weights = reference(tokens, context, context, key_padding_mask=~mask, need_weights=True)
        torch.testing.assert_close(answer, out, atol=1e-5, rtol=1e-4)  # the same layer, computed apart
        side = int(tokens.shape[1] ** 0.5)
        sums[side] = sums.get(side, 0) + weights.transpose(1, 2).reshape(2, 48, side, side)
        counts[side] = counts.get(side, 0) + 1
    assert counts == {8: 5, 4: 6}  # t2i_unet: 2 down + 3 up at 8×8; 2 down, the middle and 3 up at 4×4
    for side, total in sums.items():
        torch.testing.assert_close(maps[side], total / counts[side], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(maps[side].sum(1), torch.ones(2, side, side))  # each position spreads 1
        assert (maps[side][~cond["context_mask"]] == 0).all()  # padding gets nothing, at every position


def test_cross_attention_maps_of_a_single_head_by_hand():
    """One head, one resolution: the map is softmax(q · k / √d) written out with exp and a sum."""
    from minidiff.models.unet import UNet, UNetConfig
    from minidiff.text2image import cross_attention_maps
    torch.manual_seed(2)
    model = UNet(UNetConfig(in_channels=2, image_size=4, channels=(8,), attention=(True,), num_res_blocks=1,
                            heads=1, groups=4, feed_forward=0, context_dim=6)).eval()
    context, mask = torch.randn(1, 3, 6), torch.tensor([[True, True, False]])
    x, t = torch.randn(1, 2, 4, 4), torch.tensor([10])
    layers = [m.block.attn2 for m in model.modules() if hasattr(m, "block")]
    caught = []
    hooks = [layer.register_forward_pre_hook(lambda layer, args: caught.append((layer, args[0]))) for layer in layers]
    maps = cross_attention_maps(model, x, t, {"context": context, "context_mask": mask})
    for hook in hooks:
        hook.remove()
    by_hand = 0
    for layer, tokens in caught:
        q, k = layer.q(tokens)[0], layer.k(context)[0]                  # (16, 8), (3, 8)
        e = torch.exp(torch.stack([q @ k[j] for j in range(2)], 1) / 8 ** 0.5)
        by_hand = by_hand + torch.cat([e / e.sum(1, keepdim=True), torch.zeros(16, 1)], 1)
    expected = (by_hand / len(caught)).T.reshape(1, 3, 4, 4)
    assert len(caught) == 4 and list(maps) == [4]  # one block down, the middle and two up, all at 4×4
    torch.testing.assert_close(maps[4], expected.detach(), atol=1e-6, rtol=1e-5)
