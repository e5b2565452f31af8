"""``clip_coco`` and ``t2i_coco``: the CLIP and text-to-image recipes on COCO's photos and captions. COCO
cannot be downloaded here, so they run on the COCO-format fixture (``coco_files``), cached exactly as
``python -m minidiff data coco`` does."""
import pytest
import torch

from minidiff.course.recipes import clip_coco as recipe
from minidiff.course.recipes.text2image_coco import t2i_coco
from minidiff.datasets.coco import build_coco_subset, load_coco_subset
from minidiff.files import DataError
from minidiff.models.tokenizer import normalize
from minidiff.text2image import PromptEncoder, text_to_image
from minidiff.weights import checkpoints_dir, load_clip, load_pretrained, read_manifest

from coco_files import make_coco_files


@pytest.mark.parametrize("n, held", [(5, 1), (4_000, 400), (5_000, 500), (20_000, 1_000)])
def test_a_seeded_tenth_of_the_photos_is_held_out_and_never_trained_on(n, held):
    train, test = recipe.split_photos(n)
    assert len(test) == held and len(train) + len(test) == n
    assert sorted(torch.cat([train, test]).tolist()) == list(range(n))
    assert all(torch.equal(a, b) for a, b in zip(recipe.split_photos(n), (train, test)))
    if n > 5:
        assert not torch.equal(recipe.split_photos(n, seed=1)[1], test)


def test_photo_retrieval_counts_only_the_photos_own_caption(monkeypatch):
    """Captions embedded as the one-hot code of the photo they point at: photo i's caption points at
    photo order[i], so exactly the photos with order[i] = i find their caption first."""
    order = torch.tensor([0, 1, 2, 4, 3, 5, 7, 6])
    eye = torch.eye(8)
    monkeypatch.setattr(recipe, "embed_images", lambda model, images: eye)
    monkeypatch.setattr(recipe, "embed_texts", lambda model, tokenizer, texts: eye[order])
    found = recipe.photo_retrieval(None, None, torch.zeros(8, 3, 4, 4), [f"caption {i}" for i in range(8)],
                                   ks=(1, 2))
    for way in found.values():
        assert way["R@1"] == 0.5  # photos 0, 1, 2 and 5; the others' own caption ties at 0 with six others
        assert way["R@2"] == 0.5  # a tie never counts in the model's favour


def test_without_the_cached_photos_it_says_which_command_makes_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path))
    monkeypatch.setenv("MINIDIFF_RUNS", str(tmp_path / "runs"))
    with pytest.raises(DataError, match=r"val2017_64px_all\.safetensors is missing.*python -m minidiff data coco"):
        recipe.clip_coco(fast=True, device="cpu")
    assert not (tmp_path / "runs").exists()  # stopped before any training


@pytest.mark.slow
def test_the_recipe_trains_on_coco_format_files_and_its_clip_loads_with_its_tokenizer(tmp_path, monkeypatch):
    shipped = checkpoints_dir()
    before = {p.name: p.read_bytes() for p in shipped.iterdir()}
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MINIDIFF_RUNS", str(tmp_path / "runs"))
    subset = build_coco_subset(*make_coco_files(tmp_path / "coco"), size=64)
    assert subset == recipe.coco_subset_path()
    metrics = recipe.clip_coco(fast=True, device="cpu")
    assert metrics["held_out_photos"] == 1 and metrics["chance_R@5"] == 1.0  # 5 captioned photos: 4 train
    assert metrics["retrieval"]["image_to_text"]["R@1"] == 1.0  # one held-out photo finds its only caption
    model, tokenizer = load_clip("clip_coco", directory=tmp_path / "runs" / "clip_coco-fast")
    caption = load_coco_subset(subset)[1][0][0]
    assert tokenizer.decode(tokenizer.encode(caption)) == normalize(caption)
    ids = tokenizer([caption], model.config.context_length)
    assert model.encode_text(ids).shape == (1, model.config.embed_dim)
    assert model.encode_image(torch.zeros(1, 3, 64, 64)).norm().item() == pytest.approx(1.0, abs=1e-5)
    assert {p.name: p.read_bytes() for p in shipped.iterdir()} == before  # nothing shipped


def test_t2i_coco_without_a_clip_coco_says_which_command_trains_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MINIDIFF_RUNS", str(tmp_path / "runs"))
    build_coco_subset(*make_coco_files(tmp_path / "coco"), size=64)
    for fast, command in [(True, "train clip_coco --fast"), (False, "train clip_coco --ship")]:
        with pytest.raises(DataError, match=f"clip_coco's text tower.*`python -m minidiff {command}`"):
            t2i_coco(fast=fast, device="cpu")
    assert not (tmp_path / "runs").exists()  # stopped before any training


@pytest.mark.slow
def test_t2i_coco_trains_on_coco_format_files_with_clip_cocos_text_tower(tmp_path, monkeypatch):
    shipped = checkpoints_dir()
    before = {p.name: p.read_bytes() for p in shipped.iterdir()}
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MINIDIFF_RUNS", str(tmp_path / "runs"))
    build_coco_subset(*make_coco_files(tmp_path / "coco"), size=64)
    recipe.clip_coco(fast=True, device="cpu")
    metrics = t2i_coco(fast=True, device="cpu")
    assert metrics["prompts"] == 1  # the one held-out photo of the fixture's five
    assert all(-100 <= metrics[k] <= 100 for k in ("clip_score", "clip_score_real_photos", "clip_score_other_captions"))
    clip_run, t2i_run = tmp_path / "runs" / "clip_coco-fast", tmp_path / "runs" / "t2i_coco-fast"
    entry = read_manifest(t2i_run)["t2i_coco"]
    assert entry["text_encoder"] == {"name": "clip_coco", "sha256": read_manifest(clip_run)["clip_coco"]["sha256"]}
    model = load_pretrained("t2i_coco", directory=t2i_run)
    encoder = PromptEncoder(*load_clip("clip_coco", directory=clip_run))
    pictures = text_to_image(model, encoder, ["a red photo", "一张照片"], num_inference_steps=2, progress=False)
    assert pictures.shape == (2, 3, 64, 64) and pictures.abs().max() <= 1
    assert {p.name: p.read_bytes() for p in shipped.iterdir()} == before  # nothing shipped
