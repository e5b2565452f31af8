"""Chapter 08: CLIP from scratch — ``clip_shapes`` (and its bag-of-words twin ``clip_shapes_bow``) on the
shapes with every caption wording in English and Chinese, and ``clip_mnist`` on the digits with templated
captions; plus the measurements every CLIP target of the chapter is read from.

**Data.** Each recipe learns its own byte-level BPE tokenizer (``train_bpe``, at most ``VOCAB_SIZE``
tokens, deterministic) from every *training* wording of every caption in both languages
(``all_captions`` over the training compositions, ``all_digit_captions``), and ships it beside the
weights (``<name>.tokenizer.json``, read back with ``minidiff.weights.load_clip``). The training set
holds every (picture, wording) pair as one item (``CaptionedPictures``; a picture is stored once), with
its ``group``: the index of the full attribute tuple (shape, colour, background, size, position) for
a shape, the digit for MNIST. Equal groups mean equal captions — in any wording, English or Chinese —
so ``clip_loss`` counts them as positives of each other. No picture of a ``HELD_OUT`` composition and no
evaluation wording (``eval_caption``, ``eval_digit_caption``) is ever trained on.

**Unseen words.** The evaluation wordings hold words no caption trained on ("against", 张, 照片),
and the tokenizer spells them from pieces (bytes, half-merged words) that no training caption uses,
whose embeddings training would leave at their random start. ``augmented_clip_loss`` threads up to 4
such pieces into each training caption at random places, so the text tower learns to pass over
what it does not know. Measured on 600-step ``clip_mnist`` runs (2,000 test digits): without it, the
evaluation wording scored 97.75 % (English) and 93.80 % (Chinese), a training wording 99.00 % in both;
with it, 99.15 % and 99.05 % (a training wording 98.95 % and 98.90 %).

**Sizes**, chosen to train in 30–60 minutes on the project's 2-core CPU (one thread, beside other
training): shapes at 32 px, which the judge reads too; ``CLIP.encode_image`` averages the course's
64-px pictures over 2×2 blocks first (``images_for_clip``). Image tower: four CNN stages of
16-32-64-128 channels (32, 16, 8, 4 px; 0.37M parameters); text tower: 3 causal transformer blocks of
width 128 (0.67M); a shared space of 128 dimensions; context 40 tokens (the longest evaluation
caption, in Chinese, is 36): 1.04M parameters, about 1.2 s a step at batch 256, 2,500 steps. The
bag-of-words twin has the same image tower and 0.07M parameters of text tower (0.6 s a step).
Digits: three stages of 24-48-96 channels at 28 px, 2 blocks of width 64, 64 dimensions, context 24
(0.33M parameters, about 1.05 s a step, 3,000 steps); each digit moved by up to 2 px, as the MNIST
classifier trains.

**Measurements** (the evaluation wording only, in each language; ``measure_shapes_clip``):
zero-shot reading of every attribute (``zero_shot_shapes``: each picture against the captions of
all 3·8·8·2·9 = 3,456 attribute tuples, held-out compositions included, the best caption's
attributes read off), on test renders (``TEST_SEED``) of the training compositions and on renders
of the held-out compositions; retrieval both ways over 1,000 test pairs (``retrieval``: an item
counts as found when its attributes equal the query's, since captions repeat); binding
(``binding``: the true caption must score above the same caption with the shape's and the
background's colours swapped); and for digits, zero-shot classification of the 10,000 test digits
against one prompt per digit (``zero_shot_digits``). Scores within ``TIE`` of each other are ties,
and a tie never counts in the model's favour.
"""
import functools
import itertools

import torch

from minidiff.course.recipes.common import RECIPES, finish, recipe_config
from minidiff.datasets.mnist import all_digit_captions, eval_digit_caption, mnist_dataset
from minidiff.datasets.shapes import (
    ATTRIBUTES,
    TEST_SEED,
    TRAIN_SEED,
    ShapesDataset,
    all_captions,
    attribute_labels,
    eval_caption,
    is_held_out,
)
from minidiff.models.classifier import random_shift
from minidiff.models.clip import CLIP, CLIPConfig, clip_loss
from minidiff.models.tokenizer import Tokenizer, train_bpe
from minidiff.train import train

VOCAB_SIZE = 1000         # at most; the captions' words are all single tokens well before that
SIZE = 32                 # shapes pictures CLIP trains on (64-px pictures are averaged down to it)
TRAIN_PICTURES = 20_000   # shapes renders (TRAIN_SEED, training compositions) × 12 wordings each
TEST_PICTURES = 2_000     # test renders for zero-shot and binding, and as many of the held-out compositions
RETRIEVAL_PAIRS = 1_000
TIE = 1e-5                # cosines closer than this are equal (float32 rounding), and ties count as misses
LANGUAGES = ("en", "zh")

# every attribute tuple, in the order of ``attribute_groups``: COMBINATIONS[g] has group g
COMBINATIONS = [dict(zip(ATTRIBUTES, values)) for values in itertools.product(*ATTRIBUTES.values())]
COMBINATION_LABELS = attribute_labels(COMBINATIONS)


# ---------------------------------------------------------------------------------------------
# The training data


def attribute_groups(attributes) -> torch.Tensor:
    """(N,) the index of each example's full attribute tuple among ``COMBINATIONS`` (mixed radix over
    shape, colour, background, size, position): equal exactly when every attribute is equal."""
    labels = attribute_labels(attributes)
    groups = torch.zeros(len(labels), dtype=torch.long)
    for k, values in enumerate(ATTRIBUTES.values()):
        groups = groups * len(values) + labels[:, k]
    return groups


def shapes_corpus() -> list[str]:
    """What the shapes tokenizer learns from: every training wording, English and Chinese, of every
    attribute tuple of the training compositions (20,736 captions)."""
    return [text for a in COMBINATIONS if a["color"] != a["background"] and not is_held_out(a)
            for text in all_captions(a)]


def digits_corpus() -> list[str]:
    """Every training wording of every digit, English and Chinese (100 captions)."""
    return [text for digit in range(10) for text in all_digit_captions(digit)]


def trim_padding(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Token ids (B, L) cut to as many columns as the longest caption needs: padding after ``<end>``
    changes no embedding (the text tower is causal, or averages the real tokens only), and the
    transformer's cost grows with the length."""
    return ids[:, :int((ids != pad_id).sum(1).max())]


class CaptionedPictures(torch.utils.data.Dataset):
    """Every (picture, wording) pair as one item, each picture stored once: item k is picture k // W
    in wording k % W, as {"image", "ids", "group"}. ``groups`` (N,) gives each picture's caption group
    and ``texts`` {group: its W captions} the captions, tokenized once to ``context_length``.

    A batch (``take``) keeps only as many token columns as its longest caption needs (``trim_padding``).
    ``per_picture`` tensors (N, …), e.g. an inpainting model's ``concat``, come with each picture."""

    def __init__(self, images: torch.Tensor, groups: torch.Tensor, texts: dict, tokenizer: Tokenizer,
                 context_length: int, **per_picture: torch.Tensor):
        present = sorted(texts)
        self.wordings = len(texts[present[0]])
        if any(len(texts[g]) != self.wordings for g in present):
            raise ValueError("every group needs the same number of wordings")
        row = {g: i for i, g in enumerate(present)}
        self.images, self.groups, self.pad_id, self.per_picture = images, groups, tokenizer.pad_id, per_picture
        self.rows = torch.tensor([row[int(g)] for g in groups])  # picture → its group's row of ``ids``
        self.ids = tokenizer([t for g in present for t in texts[g]], context_length).view(
            len(present), self.wordings, context_length)

    def __len__(self) -> int:
        return len(self.images) * self.wordings

    def __getitem__(self, k: int) -> dict:
        picture, wording = divmod(range(len(self))[k], self.wordings)
        return {"image": self.images[picture], "ids": self.ids[self.rows[picture], wording],
                "group": self.groups[picture], **{k: v[picture] for k, v in self.per_picture.items()}}

    def take(self, indices: torch.Tensor) -> dict:
        picture, wording = indices // self.wordings, indices % self.wordings
        ids = trim_padding(self.ids[self.rows[picture], wording], self.pad_id)
        return {"image": self.images[picture], "ids": ids, "group": self.groups[picture],
                **{k: v[picture] for k, v in self.per_picture.items()}}


def shapes_training_set(pictures: ShapesDataset, tokenizer: Tokenizer, context_length: int) -> CaptionedPictures:
    """The pictures of a ``ShapesDataset`` with every training wording of their captions, both languages."""
    groups = attribute_groups(pictures.attributes)
    texts = {g: all_captions(COMBINATIONS[g]) for g in groups.unique().tolist()}
    return CaptionedPictures(pictures.images, groups, texts, tokenizer, context_length)


def digits_training_set(images: torch.Tensor, labels: torch.Tensor, tokenizer: Tokenizer,
                        context_length: int) -> CaptionedPictures:
    """Digits with every training wording of their captions, both languages; the group is the digit."""
    texts = {digit: all_digit_captions(digit) for digit in range(10)}
    return CaptionedPictures(images, labels, texts, tokenizer, context_length)


def unused_tokens(data: CaptionedPictures, tokenizer: Tokenizer) -> torch.Tensor:
    """The ids of every token (bytes and merges, no special token) that no training caption uses: the
    pieces an unseen word falls apart into, whose embeddings the captions alone never train."""
    return torch.tensor(sorted(set(range(tokenizer.start_id)) - set(data.ids.unique().tolist())))


def insert_fillers(ids: torch.Tensor, fillers: torch.Tensor, pad_id: int, max_fillers: int = 4) -> torch.Tensor:
    """Token ids (B, L) → (B, L + max_fillers): each caption with 0 to ``max_fillers`` (uniformly)
    random tokens of ``fillers`` put at random places between ``<start>`` and ``<end>``.

    Every token gets a sort key: its position for the caption's own tokens, a uniform draw in
    [0, n − 1) for a filler (n: the caption's length with ``<start>`` and ``<end>``), +∞ for the fillers
    a caption does not get; sorting by key (stably) threads the fillers in."""
    b, length = ids.shape
    real = (ids != pad_id).sum(1, keepdim=True)
    device = ids.device
    keys = torch.arange(length, device=device).float().expand(b, length)
    filler_keys = torch.rand(b, max_fillers, device=device) * (real - 1)
    unused = torch.arange(max_fillers, device=device) >= torch.randint(0, max_fillers + 1, (b, 1), device=device)
    tokens = fillers.to(device)[torch.randint(0, len(fillers), (b, max_fillers), device=device)]
    tokens = tokens.masked_fill(unused, pad_id)
    order = torch.cat([keys, filler_keys.masked_fill(unused, float("inf"))], 1).argsort(dim=1, stable=True)
    return torch.cat([ids, tokens], 1).gather(1, order)


def augmented_clip_loss(model: CLIP, batch: dict, fillers: torch.Tensor | None = None, max_fillers: int = 4,
                        max_shift: int = 0) -> dict:
    """``clip_loss`` on augmented pairs: captions with up to ``max_fillers`` tokens of ``fillers``
    (``unused_tokens``) threaded in, so that the text tower learns that pieces it never saw carry
    no meaning — an unseen word in a prompt (the evaluation wordings are full of them) then changes
    little — and pictures moved by up to ``max_shift`` pixels (digits, as the MNIST classifier trains)."""
    if fillers is not None:
        batch = {**batch, "ids": insert_fillers(batch["ids"], fillers, model.config.pad_id, max_fillers)}
    if max_shift:
        batch = {**batch, "image": random_shift(batch["image"], max_shift)}
    return clip_loss(model, batch)


# ---------------------------------------------------------------------------------------------
# Measuring


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_texts(model: CLIP, tokenizer: Tokenizer, texts, batch_size: int = 512) -> torch.Tensor:
    """Unit embeddings (N, D) of N texts, encoded in batches (each cut to its longest caption)."""
    model.eval()
    texts, out = list(texts), []
    for start in range(0, len(texts), batch_size):
        ids = trim_padding(tokenizer(texts[start:start + batch_size], model.config.context_length), tokenizer.pad_id)
        out.append(model.encode_text(ids.to(_device(model))).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_images(model: CLIP, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Unit embeddings (N, D) of N pictures in [-1, 1], encoded in batches."""
    model.eval()
    return torch.cat([model.encode_image(images[start:start + batch_size].to(_device(model))).float().cpu()
                      for start in range(0, len(images), batch_size)])


def combination_embeddings(model: CLIP, tokenizer: Tokenizer, language: str = "en") -> torch.Tensor:
    """(3,456, D): the evaluation-wording caption of every attribute tuple, in ``COMBINATIONS`` order."""
    return embed_texts(model, tokenizer, [eval_caption(a, language) for a in COMBINATIONS])


def read_attributes(model: CLIP, tokenizer: Tokenizer, images: torch.Tensor, language: str = "en",
                    captions: torch.Tensor | None = None, u: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 5) attribute labels read off the best-scoring caption among all 3,456 attribute tuples'
    (``captions``: their ``combination_embeddings``, and ``u``: the pictures' ``embed_images``, if
    already computed)."""
    captions = combination_embeddings(model, tokenizer, language) if captions is None else captions
    u = embed_images(model, images) if u is None else u
    best = torch.cat([(chunk @ captions.T).argmax(1) for chunk in u.split(1024)])
    return COMBINATION_LABELS[best]


def zero_shot_shapes(model: CLIP, tokenizer: Tokenizer, images: torch.Tensor, attributes, language: str = "en",
                     captions: torch.Tensor | None = None, u: torch.Tensor | None = None) -> dict:
    """Zero-shot reading of pictures with known ``attributes``: the share read right per attribute,
    with every attribute right (``all_correct``), and with shape, colour and background right
    (``composition``, the exact-composition figure for the held-out compositions)."""
    right = read_attributes(model, tokenizer, images, language, captions, u) == attribute_labels(attributes)
    return {"accuracy": {name: right[:, k].float().mean().item() for k, name in enumerate(ATTRIBUTES)},
            "all_correct": right.all(1).float().mean().item(),
            "composition": right[:, :3].all(1).float().mean().item()}


def recall_at(scores: torch.Tensor, hits: torch.Tensor, ks=(1, 5)) -> dict:
    """R@k for queries (rows) against items (columns): the share of queries with a hit (``hits``
    True) among their k best-scoring items. An item that ties with the best hit (within ``TIE``) is
    ranked ahead of it, so ties never help."""
    best_hit = scores.masked_fill(~hits, float("-inf")).max(1).values
    ahead = ((scores >= best_hit[:, None] - TIE) & ~hits).sum(1)  # misses ranked above the best hit
    return {f"R@{k}": (ahead < k).float().mean().item() for k in ks}


def retrieval(model: CLIP, tokenizer: Tokenizer, images: torch.Tensor, attributes, language: str = "en",
              ks=(1, 5), u: torch.Tensor | None = None) -> dict:
    """Retrieval over N (picture, evaluation caption) pairs, both ways: each picture looks for its
    caption among the N captions (``image_to_text``) and each caption for its picture. Captions repeat,
    so any item whose attributes all equal the query's counts as found."""
    labels = attribute_labels(attributes)
    same = (labels[:, None] == labels[None]).all(-1)  # (N, N)
    u = embed_images(model, images) if u is None else u
    scores = u @ embed_texts(model, tokenizer, [eval_caption(a, language)
                                                                          for a in attributes]).T
    return {"image_to_text": recall_at(scores, same, ks), "text_to_image": recall_at(scores.T, same.T, ks)}


def swap_colours(attributes: dict) -> dict:
    """The same attributes with the shape's and the background's colours exchanged."""
    return {**attributes, "color": attributes["background"], "background": attributes["color"]}


def binding(model: CLIP, tokenizer: Tokenizer, images: torch.Tensor, attributes, language: str = "en",
            u: torch.Tensor | None = None) -> float:
    """The share of pictures whose true caption scores above the same caption (same wording) with the
    two colours swapped, "a red circle against a blue background" against "a blue circle against a
    red background". A model that only knows which words occur scores both alike: a tie, a miss."""
    u = embed_images(model, images) if u is None else u
    true = embed_texts(model, tokenizer, [eval_caption(a, language) for a in attributes])
    swapped = embed_texts(model, tokenizer, [eval_caption(swap_colours(a), language) for a in attributes])
    return (((u * true).sum(1) - (u * swapped).sum(1)) > TIE).float().mean().item()


def zero_shot_digits(model: CLIP, tokenizer: Tokenizer, images: torch.Tensor, labels: torch.Tensor,
                     language: str = "en") -> float:
    """Zero-shot classification: the share of digits whose best-scoring prompt, among one evaluation
    caption per digit ("a photo of the number seven", "一张数字七的照片"), is their own."""
    prompts = embed_texts(model, tokenizer, [eval_digit_caption(digit, language) for digit in range(10)])
    return ((embed_images(model, images) @ prompts.T).argmax(1) == torch.as_tensor(labels)).float().mean().item()


def measure_shapes_clip(model: CLIP, tokenizer: Tokenizer, n: int = TEST_PICTURES,
                        pairs: int = RETRIEVAL_PAIRS) -> dict:
    """Every shapes target, in each language: zero-shot on ``n`` test renders (``TEST_SEED``) of the
    training compositions and on ``n`` of the held-out compositions, retrieval over the first
    ``pairs`` test renders, binding on the test renders; and zero-shot on the same test renders at
    64 px (English), which CLIP reads averaged down to 32."""
    test = ShapesDataset(n, seed=TEST_SEED, size=SIZE, compositions="train")
    held = ShapesDataset(n, seed=TEST_SEED, size=SIZE, compositions="held_out")
    report = {"zero_shot": {}, "held_out": {}, "retrieval": {}, "binding": {}}
    u_test, u_held = embed_images(model, test.images), embed_images(model, held.images)  # both languages read them
    for language in LANGUAGES:
        captions = combination_embeddings(model, tokenizer, language)
        report["zero_shot"][language] = zero_shot_shapes(model, tokenizer, test.images, test.attributes,
                                                         language, captions, u_test)
        report["held_out"][language] = zero_shot_shapes(model, tokenizer, held.images, held.attributes,
                                                        language, captions, u_held)
        report["retrieval"][language] = retrieval(model, tokenizer, test.images[:pairs], test.attributes[:pairs],
                                                  language, u=u_test[:pairs])
        report["binding"][language] = binding(model, tokenizer, test.images, test.attributes, language, u_test)
        if language == "en":
            big = ShapesDataset(n, seed=TEST_SEED, size=2 * SIZE, compositions="train")
            report["zero_shot_64px"] = zero_shot_shapes(model, tokenizer, big.images, big.attributes,
                                                        language, captions)
    report["worst_attribute_accuracy"] = min(v for language in LANGUAGES
                                             for v in report["zero_shot"][language]["accuracy"].values())
    report["held_out_composition"] = min(report["held_out"][language]["composition"] for language in LANGUAGES)
    return report


# ---------------------------------------------------------------------------------------------
# The recipes


def shapes_clip_config(tokenizer: Tokenizer, text_tower: str = "transformer") -> CLIPConfig:
    return CLIPConfig(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, end_id=tokenizer.end_id,
                      context_length=40, text_tower=text_tower, text_width=128, text_layers=3, text_heads=4,
                      image_size=SIZE, image_channels=3, channels=(16, 32, 64, 128), groups=8, embed_dim=128)


def digits_clip_config(tokenizer: Tokenizer) -> CLIPConfig:
    return CLIPConfig(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, end_id=tokenizer.end_id,
                      context_length=24, text_width=64, text_layers=2, text_heads=4,
                      image_size=28, image_channels=1, channels=(24, 48, 96), groups=8, embed_dim=64)


def _sizes(model: CLIP) -> dict:
    image = sum(p.numel() for name, p in model.named_parameters() if name.startswith("image"))
    total = sum(p.numel() for p in model.parameters())
    return {"parameters": total, "image_parameters": image, "text_parameters": total - image}


def _train_clip(name: str, model: CLIP, data: CaptionedPictures, tokenizer: Tokenizer, steps: int, fast: bool,
                device: str, fast_batch: int = 32, **augment):
    """What the CLIP recipes share: batch 256 (``fast_batch`` in a fast run), AdamW 1e-3 with warm-up and
    cosine decay, EMA, filler tokens (``augmented_clip_loss``, with ``augment``'s other options); returns
    (EMA model, result)."""
    config = recipe_config(name, fast, device, steps=steps, batch_size=fast_batch if fast else 256, lr=1e-3,
                           weight_decay=0.05, warmup_steps=10 if fast else 200, ema_decay=0.999)
    loss = functools.partial(augmented_clip_loss, fillers=unused_tokens(data, tokenizer), **augment)
    result = train(model, loss, data, config, resume=True)
    return result.ema.cpu().eval(), result


def _finish_clip(name: str, model: CLIP, tokenizer: Tokenizer, result, fast: bool, note: str, metrics: dict,
                 steps: int, default_steps: int, better: str) -> dict:
    """Sizes, vocabulary and loss curve beside ``metrics``; the weights saved with their tokenizer."""
    metrics = {**_sizes(model), "vocab_size": tokenizer.vocab_size, **metrics,
               "loss_curve": [[h["step"], round(h["loss"], 4)] for h in result.history]}
    options = f" --steps {steps}" if steps != default_steps else ""
    return finish(model, name, result, fast, note, metrics, options, better=(better, "higher"),
                  companions={"tokenizer.json": tokenizer.save})


SHAPES_STEPS = 2500


def _clip_shapes(name: str, text_tower: str, fast: bool = False, device: str = "auto",
                 steps: int | None = None) -> dict:
    """CLIP on 20,000 shapes renders (training compositions, 32 px) × every training wording in English
    and Chinese (4 + 8 wordings: 240,000 pairs), up to 4 filler tokens threaded into each caption
    (``augmented_clip_loss``): 2,500 steps at batch 256, AdamW 1e-3 with warm-up and cosine decay, EMA weights shipped with their
    tokenizer; measured by ``measure_shapes_clip``. A run can be extended by resuming it with more ``steps``."""
    torch.manual_seed(0)
    tokenizer = train_bpe(shapes_corpus(), VOCAB_SIZE)
    model = CLIP(shapes_clip_config(tokenizer, text_tower))
    pictures = ShapesDataset(64 if fast else TRAIN_PICTURES, seed=TRAIN_SEED, size=SIZE, compositions="train")
    data = shapes_training_set(pictures, tokenizer, model.config.context_length)
    steps = steps or SHAPES_STEPS
    model, result = _train_clip(name, model, data, tokenizer, steps, fast, device)
    metrics = measure_shapes_clip(model, tokenizer, 24 if fast else TEST_PICTURES, 24 if fast else RETRIEVAL_PAIRS)
    note = (f"{len(pictures):,} shapes renders (seed {TRAIN_SEED}, training compositions, {SIZE} px) × "
            f"{data.wordings} training wordings (English and Chinese); measured with the evaluation wordings on "
            f"test renders (seed {TEST_SEED}) of the training and of the held-out compositions")
    return _finish_clip(name, model, tokenizer, result, fast, note, metrics, steps, SHAPES_STEPS,
                        "held_out_composition")


RECIPES.register(functools.partial(_clip_shapes, "clip_shapes", "transformer"), name="clip_shapes")
RECIPES.register(functools.partial(_clip_shapes, "clip_shapes_bow", "bag_of_words"), name="clip_shapes_bow")

DIGITS_STEPS = 3000


@RECIPES.register
def clip_mnist(fast: bool = False, device: str = "auto", steps: int | None = None) -> dict:
    """CLIP on the 60,000 MNIST training digits × 10 training wordings (6 English, 4 Chinese): 3,000
    steps at batch 256 (about 13 passes over the digits), digits shifted by up to 2 px and up to 4
    filler tokens threaded into each caption, AdamW 1e-3 with warm-up and cosine decay; measured by
    zero-shot classification of the 10,000 test digits with one evaluation-wording prompt per digit,
    in each language. A run can be extended by resuming it with more ``steps``."""
    torch.manual_seed(0)
    tokenizer = train_bpe(digits_corpus(), VOCAB_SIZE)
    model = CLIP(digits_clip_config(tokenizer))
    images, labels = mnist_dataset("train", limit=256 if fast else None).tensors
    data = digits_training_set(images, labels, tokenizer, model.config.context_length)
    steps = steps or DIGITS_STEPS
    model, result = _train_clip("clip_mnist", model, data, tokenizer, steps, fast, device, max_shift=2)
    test_images, test_labels = mnist_dataset("test", limit=200 if fast else None).tensors
    zero_shot = {language: zero_shot_digits(model, tokenizer, test_images, test_labels, language)
                 for language in LANGUAGES}
    metrics = {"zero_shot": zero_shot, "zero_shot_accuracy": min(zero_shot.values())}
    note = (f"MNIST train ({len(images):,} digits, data/mnist) × {data.wordings} training wordings (English and "
            f"Chinese); zero-shot on MNIST test ({len(test_images):,}) with the evaluation wordings")
    return _finish_clip("clip_mnist", model, tokenizer, result, fast, note, metrics, steps, DIGITS_STEPS,
                        "zero_shot_accuracy")
