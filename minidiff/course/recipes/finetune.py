"""Fine-tuning (chapter 12): teach a text-to-image model a new word from a few pictures of it.

**A word first.** The base model cannot even read a word it never saw: its tokenizer spells it from
pieces ("heart" → " ", "he", "ar", "t") that its text encoder was trained to pass over. So teaching
starts by giving the word a token of its own (``Tokenizer.with_words``) and the text encoder a new row
in its embedding table, started at the mean of the rows of the words it is most like (``like``: for
a new shape, the shape words). Started there, the word reads as "some shape" to everything after it,
so the colour and place words around it keep their meaning from the first step.

**Three ways to teach it** (``FinetuneConfig.method``), all through the one trainer, all learning the
word's row too:

* ``"word"`` — textual inversion (Gal et al., 2022): only the row learns. The U-Net is the base,
  bit for bit: nothing it knew can be lost, and nothing it cannot already draw can be learned.
* ``"lora"`` — LoRA (Hu et al., 2021): rank-r adapters on the U-Net's attention projections
  (``minidiff.models.lora``), the base frozen; the adapter (A's, B's and the row) is a small file.
* ``"full"`` — every weight of the U-Net.

**Pivotal tuning** (``word_steps``): the word's row first, alone, for a few hundred steps, then the
method's weights with it. While tuning (LoRA r4 on the cross-attentions, prior preservation, guidance
7.5): 200 + 200 steps drew the heart in 88 % of the tuning pictures, against 65–77 % without the pivot,
and memorised less (the training captions' own pictures came back hearts 88 %, not 100 %).

**Prior preservation** (DreamBooth; Ruiz et al., 2022). A few pictures, many steps: the model learns
them, and forgets the rest — a circle comes out as the new shape. DreamBooth's remedy replays what
the model knew: pictures the *base* model drew for prompts of its own (``prior``) join the training
set, and the loss becomes

    L = E ‖ε − ε_θ(x_t, t, c)‖² (the new pictures) + λ · E ‖ε − ε_θ(x'_t, t, c')‖² (the base's own),

with λ = 1 here: the new pictures are repeated until they are as many as the prior ones, so a batch
is about half of each.

**Step sizes.** One optimizer trains everything at ``lr``; the word's row is stored as
``start + g · δ`` with g = word_lr / lr. Adam moves each parameter by about lr a step whatever the
size of its gradient, so δ moves by lr and the row by about ``word_lr``: a word learns at its own pace
(textual inversion's 5e-3) beside a U-Net that must move more slowly (5e-4 for every weight).
"""
import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from minidiff.concept_protocol import prior_prompts
from minidiff.course.recipes.clip import CaptionedPictures
from minidiff.course.recipes.text2image import text_diffusion_loss
from minidiff.files import DataError, save_safetensors_atomic, verify_sha256
from minidiff.latents import encode_latents
from minidiff.models.lora import add_lora, load_lora, lora_state_dict, set_lora_scale
from minidiff.text2image import PromptEncoder, load_text_to_image, text_to_image
from minidiff.train import TrainConfig, train
from minidiff.weights import checkpoints_dir, read_manifest

METHODS = ("word", "lora", "full")
LIKE_SHAPES = ("circle", "square", "triangle")  # where a new shape's word starts


@dataclass
class FinetuneConfig:
    method: str = "lora"               # "word" (textual inversion), "lora" or "full"
    rank: int = 4                      # LoRA's r
    where: str = "all"                 # LoRA on every attention block, or on the cross-attentions ("cross")
    convolutions: bool = False         # LoRA on the ResBlocks' convolutions too
    steps: int = 400
    word_steps: int = 0                # pivotal tuning: first this many steps of the word's row alone
    lr: float | None = None            # None: 2e-3 for LoRA's adapters, 5e-4 for every weight
    word_lr: float = 5e-3              # the new words' rows (textual inversion's step size)
    batch_size: int = 16
    caption_dropout: float = 0.1       # as the base trained: guidance needs the empty prompt too
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"the method is one of {', '.join(METHODS)}, not {self.method!r}")
        for name in ("steps", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a whole number ≥ 1, got {getattr(self, name)!r}")
        if not isinstance(self.word_steps, int) or self.word_steps < 0:
            raise ValueError(f"word_steps must be a whole number ≥ 0, got {self.word_steps!r}")

    @property
    def step_size(self) -> float:
        """The optimizer's lr: the given one, else the method's (textual inversion: the word's)."""
        return self.lr or {"word": self.word_lr, "lora": 2e-3, "full": 5e-4}[self.method]


class NewWords(nn.Module):
    """A text encoder's token-embedding table with rows for new words: the old rows frozen, the new
    ones ``start + gain · delta`` with ``delta`` learned (zero at first: the rows start at ``start``)."""

    def __init__(self, table: torch.Tensor, start: torch.Tensor, gain: float = 1.0):
        super().__init__()
        self.register_buffer("table", table.detach().clone())
        self.register_buffer("start", start.detach().clone())
        self.delta = nn.Parameter(torch.zeros_like(self.start))
        self.gain = float(gain)

    def rows(self) -> torch.Tensor:
        """The new words' embeddings (words, width)."""
        return self.start + self.gain * self.delta

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, torch.cat([self.table, self.rows()]))


def add_words(encoder: PromptEncoder, words, like=LIKE_SHAPES, rows: torch.Tensor | None = None) -> PromptEncoder:
    """A new ``PromptEncoder`` that reads ``words`` each as one token: its tokenizer ``with_words``, its
    CLIP a copy whose embedding table (``NewWords``) has their rows — ``rows`` if given (a trained
    adapter's), else each the mean embedding of the tokens of ``like``. The given encoder is unchanged."""
    tokenizer = encoder.tokenizer.with_words(words)
    clip = copy.deepcopy(encoder.clip)
    table = clip.token_embedding.weight
    if rows is None:
        liked = [i for word in like for i in in_sentence(encoder.tokenizer, word)]
        rows = table[liked].mean(0).expand(len(tokenizer.words) - len(encoder.tokenizer.words), -1)
    clip.token_embedding = NewWords(table, rows)
    clip.config = dataclasses.replace(clip.config, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                                      end_id=tokenizer.end_id)
    return PromptEncoder(clip, tokenizer)


def in_sentence(tokenizer, word: str) -> list[int]:
    """The tokens of ``word`` as it reads inside a sentence, after a space (" circle" is one token)."""
    return tokenizer.encode("a " + word)[len(tokenizer.encode("a")):]


class Learner(nn.Module):
    """What one fine-tuning run trains: the U-Net (its adapters, or all of it) and the new words' rows."""

    def __init__(self, unet: nn.Module, words: NewWords):
        super().__init__()
        self.unet, self.words = unet, words


def training_set(encoder: PromptEncoder, decode, pictures: torch.Tensor, captions: list,
                 prior: tuple | None = None) -> CaptionedPictures:
    """The pictures (N, 3, H, W) in [-1, 1] as latents, each with its captions (a list of wordings),
    joined by the ``prior`` pictures and captions repeated so both weigh the same (λ = 1). Each picture's
    captions are repeated in turn to the largest number any picture has, so every wording weighs the same."""
    if len(captions) != len(pictures) or (prior and len(prior[1]) != len(prior[0])):
        raise ValueError("give one list of captions per picture")
    most = max(len(c) for c in captions + (list(prior[1]) if prior else []))
    captions = [[c[k % len(c)] for k in range(most)] for c in captions]
    if prior:
        prior = (prior[0], [[c[k % len(c)] for k in range(most)] for c in prior[1]])
    latents = encode_latents(decode.vae, pictures)
    texts = dict(enumerate(captions))
    groups = torch.arange(len(latents))
    if prior is not None:
        prior_latents = encode_latents(decode.vae, prior[0])
        repeat = max(1, round(len(prior_latents) / len(latents)))
        latents, groups = torch.cat([latents.repeat(repeat, 1, 1, 1), prior_latents]), torch.cat(
            [groups.repeat(repeat), len(captions) + torch.arange(len(prior_latents))])
        texts.update({len(captions) + k: c for k, c in enumerate(prior[1])})
    return CaptionedPictures(latents, groups, texts, encoder.tokenizer, encoder.clip.config.context_length)


def prior_set(model: nn.Module, decode, encoder: PromptEncoder, n: int = 200, seed: int = 0, scenes=(),
              progress: bool = True) -> tuple[torch.Tensor, list]:
    """Prior preservation's pictures: what the base model itself draws for ``n`` prompts of the old
    shapes (``prior_prompts``, the taught ``scenes`` first; guidance 3, DPM-Solver++(2M) × 20), with their
    captions."""
    captions, _ = prior_prompts(n, scenes=scenes)
    pictures = text_to_image(model, encoder, [c[0] for c in captions], guidance_scale=3.0, decode=decode,
                             sampler="dpmpp_2m", num_inference_steps=20, seed=seed, progress=progress)
    return pictures, captions


def prepare(model: nn.Module, encoder: PromptEncoder, config: FinetuneConfig) -> Learner:
    """The model to train: the base's U-Net (a copy) with LoRA adapters (A drawn from ``config.seed``), all
    trainable, or frozen, and the encoder's new words' rows with their own step size (see the module's docstring)."""
    unet = copy.deepcopy(model).train()
    if config.method == "lora":
        with torch.random.fork_rng(devices=[]):  # A's random start from the run's seed, whatever ran before
            torch.manual_seed(config.seed)
            add_lora(unet, config.rank, where=config.where, convolutions=config.convolutions)
    else:
        unet.requires_grad_(config.method == "full")
    words = encoder.clip.token_embedding
    if not isinstance(words, NewWords):
        raise ValueError("teach the encoder its new words first (add_words)")
    words.gain = config.word_lr / config.step_size
    words.delta.requires_grad_(True)
    return Learner(unet, words)


def _loss(encoder: PromptEncoder, config: FinetuneConfig):
    """The learner's loss: ``text_diffusion_loss`` of its U-Net, the prompts read by ``encoder`` (with the new words)."""
    return lambda learner, batch: text_diffusion_loss(learner.unet, batch, encoder, caption_dropout=config.caption_dropout)


def _train_config(config: FinetuneConfig, steps: int, n: int, progress: bool, seed: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=min(config.batch_size, n), lr=config.step_size,
                       warmup_steps=min(20, steps // 10), min_lr_ratio=1.0, ema_decay=None, seed=seed,
                       device=config.device, log_every=max(1, steps // 20), progress=progress)


def pivot(learner: Learner, encoder: PromptEncoder, data: CaptionedPictures, config: FinetuneConfig,
          progress: bool = True):
    """Pivotal tuning's first stage: ``config.word_steps`` steps that train the new words' rows alone
    (textual inversion), every other weight held — so that the adapters then start from a word that
    already points at something the U-Net can draw. Returns the trainer's result."""
    held = [p for p in learner.unet.parameters() if p.requires_grad]
    for p in held:
        p.requires_grad_(False)
    try:
        return train(learner, _loss(encoder, config),
                     data, _train_config(config, config.word_steps, len(data), progress, config.seed + 1))
    finally:
        for p in held:
            p.requires_grad_(True)


def finetune(model: nn.Module, encoder: PromptEncoder, data: CaptionedPictures, config: FinetuneConfig,
             callbacks=(), progress: bool = True):
    """Teach ``model`` (a text-to-image U-Net) what ``data`` shows (``training_set``), reading prompts
    with ``encoder`` (``add_words``): ``config.word_steps`` steps of the word alone first (``pivot``),
    then ``config.steps`` of the method's. Returns the trainer's result of the second stage (its wall
    time counts both); ``result.model`` is the ``Learner``."""
    learner = prepare(model, encoder, config)
    first = pivot(learner, encoder, data, config, progress) if config.word_steps else None
    result = train(learner, _loss(encoder, config),
                   data, _train_config(config, config.steps, len(data), progress, config.seed), callbacks=callbacks)
    if first is not None:
        result.wall_time_s += first.wall_time_s
    return result


def adapter_state(learner: Learner, method: str) -> dict:
    """What a run ships: the adapters (LoRA), every U-Net weight (full), or nothing of the U-Net (word),
    and the new words' rows."""
    unet = {"word": {}, "lora": lora_state_dict(learner.unet), "full": learner.unet.state_dict()}[method]
    return {**{f"unet.{k}": v for k, v in unet.items()}, "words.rows": learner.words.rows().detach()}


# --------------------------------------------------------------------------------------------- adapter files
ADAPTER = "minidiff adapter"


def save_adapter(path, learner: Learner, encoder: PromptEncoder, config: FinetuneConfig, base: str,
                 directory=None, **record) -> Path:
    """Write what a run taught (``adapter_state``) as a safetensors file, atomically, with what it needs:
    the method, the LoRA rank, the new words, and the base model's name and sha256 — an adapter only fits
    the very weights it was trained beside. ``record`` adds strings (steps, wall time) to the metadata."""
    lora = config.method == "lora"
    metadata = {"format": ADAPTER, "method": config.method, "rank": str(config.rank if lora else 0),
                "where": config.where if lora else "", "convolutions": str(config.convolutions and lora),
                "words": json.dumps(list(encoder.tokenizer.words), ensure_ascii=False),
                "base": base, "base_sha256": read_manifest(directory)[base]["sha256"],
                **{k: str(v) for k, v in record.items()}}
    return save_safetensors_atomic(adapter_state(learner, config.method), path, metadata)


def adapter_file(name_or_path, directory=None) -> Path:
    """An adapter's file: the path itself, or a shipped adapter's by name (e.g. "lora_heart"), checked
    against its manifest entry's sha256."""
    manifest = read_manifest(directory)
    entry = manifest.get(str(name_or_path))
    if entry is None or Path(name_or_path).suffix or entry.get("model") != "LoRA adapter":
        return Path(name_or_path)
    return verify_sha256(checkpoints_dir(directory) / entry["file"], entry["sha256"],
                         f"Restore it with `git checkout -- data/checkpoints`, or re-create it with `{entry['recipe']}`.")


def read_adapter(path, directory=None) -> tuple[dict, dict]:
    """(tensors, metadata) of an adapter file (or a shipped adapter, by name); DataError, saying what to do,
    if it is not one."""
    path = adapter_file(path, directory)
    if not path.is_file():
        raise DataError(f"the adapter {path} does not exist: make one with `python -m minidiff finetune PICTURES_DIR "
                        "--word WORD`")
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise DataError(f"cannot read {path} as a safetensors file ({err}): give an adapter written by "
                        "`python -m minidiff finetune`") from None
    if metadata.get("format") != ADAPTER or "words.rows" not in tensors:
        raise DataError(f"{path} is a safetensors file but no minidiff adapter (it names no base model and no new "
                        "words): give one written by `python -m minidiff finetune`")
    return tensors, metadata


def load_adapter(path, model_name: str | None = None, scale: float = 1.0, directory=None):
    """A shipped text-to-image model with an adapter on: ``(model, decode, encoder)`` as ``load_text_to_image``
    gives, the encoder reading the adapter's words, the U-Net with its LoRA (at LoRA ``scale``) or its weights.
    The adapter must be for ``model_name`` (default: the base it names) and for the very weights shipped."""
    tensors, metadata = read_adapter(path, directory)
    base = metadata["base"]
    if model_name not in (None, base):
        raise DataError(f"{path} teaches {base}, not {model_name}: leave out --model, or make an adapter for "
                        f"{model_name} with `python -m minidiff finetune ... --model {model_name}`")
    manifest = read_manifest(directory)
    if base not in manifest or manifest[base]["sha256"] != metadata["base_sha256"]:
        raise DataError(f"{path} was trained beside other {base} weights (sha256 {metadata['base_sha256'][:12]}…) than "
                        "the ones here: its changes would land on the wrong numbers; train it again on these")
    model, decode, encoder = load_text_to_image(base, directory)
    encoder = add_words(encoder, json.loads(metadata["words"]), rows=tensors.pop("words.rows"))
    unet = {k.removeprefix("unet."): v for k, v in tensors.items()}
    if metadata["method"] == "lora":
        set_lora_scale(load_lora(model, unet), scale)
    elif metadata["method"] == "full":
        model.load_state_dict(unet)
    return model.eval(), decode, encoder
