"""Fine-tuning (chapter 12): a new word reads as one token without changing any other prompt, each method
trains exactly what it says, the word's row moves at its own step size, and prior pictures weigh as much
as the new ones."""
import pytest
import torch

from minidiff.concept_protocol import base_prompts, concept_pictures
from minidiff.course.recipes.finetune import (
    FinetuneConfig,
    NewWords,
    adapter_state,
    add_words,
    finetune,
    in_sentence,
    load_adapter,
    pivot,
    prepare,
    read_adapter,
    save_adapter,
    training_set,
)
from minidiff.files import DataError, save_safetensors_atomic
from minidiff.datasets.shapes import all_captions
from minidiff.models.lora import LoRALayer
from minidiff.text2image import load_text_to_image


@pytest.fixture(scope="module")
def shipped():
    return load_text_to_image("t2i_shapes")


@pytest.fixture(scope="module")
def taught(shipped):
    return add_words(shipped[2], ["heart"])


@pytest.fixture(scope="module")
def hearts():
    shown = concept_pictures(4, shape="heart")
    return shown["images"], [all_captions(a, languages=("en",)) for a in shown["attributes"]]


def test_a_new_word_is_one_token_and_every_other_prompt_reads_exactly_as_before(shipped, taught):
    encoder = shipped[2]
    prompts = ["a large red circle on a white background, top left", "蓝色背景上的一个小绿色三角形，右下角"]
    before, after = encoder(prompts), taught(prompts)
    assert torch.equal(before["context"], after["context"]) and torch.equal(before["context_mask"], after["context_mask"])
    heart = taught.tokenizer.word_ids["heart"]
    assert taught.ids(["a red heart"])[0].tolist() == encoder.ids(["a red"])[0, :-1].tolist() + [heart, taught.tokenizer.end_id]
    assert encoder.ids(["a red heart"]).shape[1] == 8  # before: spelled " ", "he", "ar", "t"
    assert encoder.tokenizer.words == () and encoder.clip.token_embedding.weight.shape[0] == encoder.tokenizer.vocab_size
    table = encoder.clip.token_embedding.weight
    shapes = [i for w in ("circle", "square", "triangle") for i in in_sentence(encoder.tokenizer, w)]
    assert len(shapes) == 3 and torch.allclose(taught.clip.token_embedding.rows()[0], table[shapes].mean(0))


def test_the_word_row_moves_at_its_own_step_size(shipped, taught):
    for method, lr in [("lora", 2e-3), ("full", 5e-4), ("word", 5e-3)]:
        config = FinetuneConfig(method=method, word_lr=5e-3)
        assert config.step_size == lr
        learner = prepare(shipped[0], add_words(shipped[2], ["heart"]), config)
        optimizer = torch.optim.AdamW([p for p in learner.parameters() if p.requires_grad], lr=lr, weight_decay=0)
        learner.words.delta.grad = torch.randn_like(learner.words.delta).sign()  # far above Adam's eps
        start = learner.words.rows().detach().clone()
        optimizer.step()  # Adam's first step moves each parameter by lr · sign(gradient)
        assert torch.allclose((learner.words.rows().detach() - start).abs(), torch.full_like(start, 5e-3), rtol=1e-3)


@pytest.mark.parametrize("method", ["word", "lora", "full"])
def test_each_method_trains_what_it_says_and_ships_only_that(shipped, hearts, method):
    model, decode, encoder = shipped
    encoder = add_words(encoder, ["heart"])
    data = training_set(encoder, decode, *hearts)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune(model, encoder, data, FinetuneConfig(method=method, steps=3, batch_size=4), progress=False)
    learner = result.model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the base is never touched
    assert not torch.equal(learner.words.rows(), learner.words.start)
    changed = {k for k, v in learner.unet.state_dict().items() if k in before and not torch.equal(v, before[k])}
    lora = [m for m in learner.unet.modules() if isinstance(m, LoRALayer)]
    state = adapter_state(learner, method)
    assert state["words.rows"].shape == (1, encoder.width)
    if method == "word":
        assert not changed and not lora and set(state) == {"words.rows"}
    elif method == "lora":
        assert not changed and lora and all(m.B.abs().sum() > 0 for m in lora)
        assert set(state) == {"words.rows"} | {f"unet.{k}" for k in learner.unet.state_dict() if k.endswith((".A", ".B"))}
    else:
        assert changed and not lora and len(state) == len(model.state_dict()) + 1


def test_the_prior_pictures_weigh_as_much_as_the_new_ones(shipped, taught, hearts):
    pictures, captions = hearts
    prompts, attributes = base_prompts(12)
    prior = (torch.zeros(12, 3, 64, 64), [all_captions(a, languages=("en",)) for a in attributes])
    data = training_set(taught, shipped[1], pictures, captions, prior)
    assert len(data.images) == 24 and (data.groups < 4).sum() == 12 and (data.groups >= 4).sum() == 12
    data = training_set(taught, shipped[1], pictures, [c[:1] for c in captions], prior)
    assert data.wordings == 4 and len({tuple(row) for row in data.ids[0].tolist()}) == 1  # one caption, 4 times
    with pytest.raises(ValueError, match="one list of captions per picture"):
        training_set(taught, shipped[1], pictures, captions[:3], prior)


def test_bad_settings_are_one_clear_line(shipped):
    with pytest.raises(ValueError, match="word, lora, full"):
        FinetuneConfig(method="dreambooth")
    with pytest.raises(ValueError, match="steps must be"):
        FinetuneConfig(steps=0)
    with pytest.raises(ValueError, match="add_words"):
        prepare(shipped[0], shipped[2], FinetuneConfig())
    assert isinstance(add_words(shipped[2], ["heart"]).clip.token_embedding, NewWords)


@pytest.mark.parametrize("method", ["word", "lora"])
def test_an_adapter_file_brings_back_exactly_what_was_taught(shipped, hearts, method, tmp_path):
    model, decode, encoder = shipped
    encoder = add_words(encoder, ["heart", "心形"])
    config = FinetuneConfig(method=method, steps=3, batch_size=4, rank=2)
    learner = finetune(model, encoder, training_set(encoder, decode, *hearts), config, progress=False).model
    path = save_adapter(tmp_path / "heart.safetensors", learner, encoder, config, "t2i_shapes", steps=3)
    assert read_adapter(path)[1]["words"] == '["heart", "心形"]'
    loaded, _, reader = load_adapter(path)
    prompt = ["a small green heart on a blue background, top left", "一个绿色心形"]
    assert torch.equal(reader(prompt)["context"], encoder(prompt)["context"])
    x, t = torch.randn(2, *model.sample_shape), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        assert torch.allclose(loaded(x, t, reader(prompt)), learner.unet.eval()(x, t, encoder(prompt)), atol=1e-6)
    off, _, _ = load_adapter(path, scale=0.0)  # LoRA scale 0: the base's U-Net (textual inversion never left it)
    with torch.no_grad():
        assert torch.equal(off(x, t, reader(prompt)), model(x, t, reader(prompt)))


def test_a_wrong_adapter_file_is_one_clear_line(shipped, hearts, tmp_path):
    model, decode, encoder = shipped
    encoder = add_words(encoder, ["heart"])
    config = FinetuneConfig(method="word", steps=1, batch_size=4)
    learner = finetune(model, encoder, training_set(encoder, decode, *hearts), config, progress=False).model
    path = save_adapter(tmp_path / "heart.safetensors", learner, encoder, config, "t2i_shapes")
    with pytest.raises(DataError, match="teaches t2i_shapes, not t2i_mnist"):
        load_adapter(path, "t2i_mnist")
    tensors, metadata = read_adapter(path)
    save_safetensors_atomic(tensors, tmp_path / "other.safetensors", {**metadata, "base_sha256": "0" * 64})
    with pytest.raises(DataError, match="other t2i_shapes weights"):
        load_adapter(tmp_path / "other.safetensors")
    save_safetensors_atomic({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(DataError, match="no minidiff adapter"):
        load_adapter(tmp_path / "plain.safetensors")
    (tmp_path / "text.safetensors").write_text("not a tensor file")
    with pytest.raises(DataError, match="cannot read"):
        load_adapter(tmp_path / "text.safetensors")
    with pytest.raises(DataError, match="does not exist"):
        load_adapter(tmp_path / "missing.safetensors")


def test_the_shipped_heart_adapter_is_small_and_says_what_it_was_made_on():
    from minidiff.weights import read_manifest
    entry, base = read_manifest()["lora_heart"], read_manifest()["t2i_shapes"]
    tensors, metadata = read_adapter("lora_heart")
    assert metadata["base_sha256"] == base["sha256"] == entry["base"]["sha256"] and metadata["where"] == "cross"
    numbers = sum(v.numel() for k, v in tensors.items() if k.startswith("unet."))
    assert numbers == entry["metrics"]["adapter_parameters"]
    assert numbers <= 0.02 * sum(p.numel() for p in load_text_to_image("t2i_shapes")[0].parameters())


@pytest.mark.slow
def test_the_shipped_heart_adapter_draws_hearts_where_it_never_saw_one_and_keeps_the_old_shapes():
    """Measured when shipped (24 recontextualisation prompts × 4 seeds, guidance 7.5; 200 base prompts):
    87.5 % hearts by both readers (the base: 0 %), the base prompts all five right 97.5 % (the base: 99.5 %)."""
    from minidiff.course.recipes.concepts import measure_concept
    from minidiff.weights import read_manifest
    recorded = read_manifest()["lora_heart"]["metrics"]
    scores = measure_concept(*load_adapter("lora_heart"))
    assert abs(scores["concept"]["shape"] - recorded["recontext_shape"]) < 0.03
    assert abs(scores["base_prompts_all_correct"] - recorded["base_prompts_all_correct"]) < 0.02
    assert scores["concept"]["shape"] >= 0.85 and recorded["drift_points"] <= 3


def test_the_pivot_trains_the_word_alone_and_leaves_the_adapters_trainable(shipped, hearts):
    model, decode, encoder = shipped
    encoder = add_words(encoder, ["heart"])
    config = FinetuneConfig(method="lora", steps=2, word_steps=3, batch_size=4)
    learner = prepare(model, encoder, config)
    before = {k: v.clone() for k, v in learner.unet.state_dict().items()}
    pivot(learner, encoder, training_set(encoder, decode, *hearts), config, progress=False)
    assert all(torch.equal(v, learner.unet.state_dict()[k]) for k, v in before.items())  # B still zero: the base
    assert not torch.equal(learner.words.rows(), learner.words.start)
    assert all(m.A.requires_grad and m.B.requires_grad for m in learner.unet.modules() if isinstance(m, LoRALayer))
    result = finetune(model, encoder, training_set(encoder, decode, *hearts), config, progress=False)
    assert any(m.B.abs().sum() > 0 for m in result.model.unet.modules() if isinstance(m, LoRALayer))
    with pytest.raises(ValueError, match="word_steps"):
        FinetuneConfig(word_steps=-1)


def test_a_run_starts_from_its_seed_whatever_ran_before(shipped):
    """The adapters' random A comes from the run's seed, not from the global random state: a recipe and a
    benchmark that ran other things first still train the very same adapter."""
    model, _, encoder = shipped
    encoder = add_words(encoder, ["heart"])
    starts = []
    for noise, seed in [(1, 0), (2, 0), (1, 5)]:
        torch.manual_seed(noise)
        state = torch.random.get_rng_state()
        learner = prepare(model, encoder, FinetuneConfig(method="lora", seed=seed))
        assert torch.equal(torch.random.get_rng_state(), state)  # and the global state is left as it was
        starts.append(torch.cat([m.A.flatten() for m in learner.unet.modules() if isinstance(m, LoRALayer)]))
    assert torch.equal(starts[0], starts[1]) and not torch.equal(starts[0], starts[2])
