"""Chapter 08 beyond the toy data: ``clip_coco``, the same CLIP code on real photos and their captions.

A user who has COCO runs two commands — ``python -m minidiff data coco`` (downloads val2017's 5,000
photos and 25,000 captions with their checksums and caches them as 64-px squares) and ``python -m
minidiff train clip_coco`` — and gets a CLIP of their own, trained and measured like the shipped ones.
Nothing of it is shipped: COCO cannot be downloaded where the course is built, so the recipe is tested
on a COCO-format fixture (a few solid-colour photos in the official JSON layout) for a few steps.

**Data.** Every photo is a group of its own, and each of its first ``W`` captions (COCO gives five or
more; ``W`` is the fewest any photo has) is a wording: the same ``CaptionedPictures`` as the shapes, so
a photo's five captions are positives of each other in the loss. A seeded tenth of the photos (at most
1,000) is held out: no caption of theirs trains the tokenizer or the model.

**Measurement.** Retrieval both ways over the held-out photos with their first caption: R@1, R@5 and
R@10, where only the photo's own caption counts (chance is k / N). Published CLIPs are measured the same
way on COCO's 5,000 test photos; a CLIP trained on 4,500 photos will be far below them — real photos
need many more pairs than the course's shapes, which is the point the chapter makes about scale.

**Sizes**: 64-px photos, four CNN stages of 32-64-128-256 channels; 4 causal blocks of width 256 over
77 tokens (CLIP's context length); a BPE vocabulary of up to 4,096 tokens; a shared space of 256. Batch
256 for 20,000 steps: minutes on a GPU, most of a day on a 2-core CPU (``--steps`` shortens it).
"""
import torch

from minidiff.course.recipes.clip import (
    CaptionedPictures,
    _finish_clip,
    _train_clip,
    embed_images,
    embed_texts,
    recall_at,
)
from minidiff.course.recipes.common import RECIPES
from minidiff.datasets.coco import load_coco_subset
from minidiff.files import data_dir
from minidiff.models.clip import CLIP, CLIPConfig
from minidiff.models.tokenizer import Tokenizer, train_bpe

COCO_STEPS = 20_000
VOCAB_SIZE = 4096
HELD_OUT_SHARE, MAX_HELD_OUT = 0.1, 1_000


def coco_subset_path():
    """The file ``python -m minidiff data coco`` writes: val2017, every captioned photo, 64 px."""
    return data_dir() / "coco" / "val2017_64px_all.safetensors"


def split_photos(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, held-out) photo indices: a seeded tenth of ``n`` photos (at least 1, at most 1,000)
    held out, both sorted."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = min(MAX_HELD_OUT, max(1, round(n * HELD_OUT_SHARE)))
    return order[held:].sort().values, order[:held].sort().values


def coco_clip_config(tokenizer: Tokenizer) -> CLIPConfig:
    return CLIPConfig(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, end_id=tokenizer.end_id,
                      context_length=77, text_width=256, text_layers=4, text_heads=4, image_size=64,
                      image_channels=3, channels=(32, 64, 128, 256), groups=8, embed_dim=256)


def photo_retrieval(model: CLIP, tokenizer: Tokenizer, images: torch.Tensor, captions: list,
                    ks=(1, 5, 10)) -> dict:
    """R@k both ways over N photos and their first captions; only the photo's own caption is a hit."""
    scores = embed_images(model, images) @ embed_texts(model, tokenizer, captions).T
    own = torch.eye(len(captions), dtype=torch.bool)
    return {"image_to_text": recall_at(scores, own, ks), "text_to_image": recall_at(scores.T, own, ks)}


@RECIPES.register
def clip_coco(fast: bool = False, device: str = "auto", steps: int | None = None) -> dict:
    """CLIP on the cached COCO photos (``coco_subset_path``) and every caption of each training photo:
    20,000 steps at batch 256, AdamW 1e-3 with warm-up and cosine decay, filler tokens as the shapes'
    CLIP; measured by retrieval over the held-out photos (``photo_retrieval``)."""
    photos, captions, _ = load_coco_subset(coco_subset_path())  # a missing or foreign file stops here
    train_idx, test_idx = split_photos(len(photos))
    wordings = min(len(captions[i]) for i in train_idx.tolist())
    pixels = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 127.5 - 1
    texts = {g: captions[i][:wordings] for g, i in enumerate(train_idx.tolist())}
    torch.manual_seed(0)
    tokenizer = train_bpe([t for group in texts.values() for t in group], VOCAB_SIZE)
    model = CLIP(coco_clip_config(tokenizer))
    data = CaptionedPictures(pixels[train_idx], torch.arange(len(train_idx)), texts, tokenizer,
                             model.config.context_length)
    steps = steps or COCO_STEPS
    model, result = _train_clip("clip_coco", model, data, tokenizer, steps, fast, device,
                                fast_batch=min(32, len(data)))
    found = photo_retrieval(model, tokenizer, pixels[test_idx], [captions[i][0] for i in test_idx.tolist()])
    metrics = {"retrieval": found, "retrieval_R@5": min(way["R@5"] for way in found.values()),
               "held_out_photos": len(test_idx), "chance_R@5": min(1.0, 5 / len(test_idx))}
    note = (f"{len(train_idx):,} COCO photos ({coco_subset_path().name}) × their first {wordings} captions; "
            f"retrieval over {len(test_idx):,} held-out photos with their first caption")
    return _finish_clip("clip_coco", model, tokenizer, result, fast, note, metrics, steps, COCO_STEPS,
                        "retrieval_R@5")
