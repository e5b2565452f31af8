"""The BPE tokenizer: text survives the round trip, frequent words become tokens, batches are laid out
as CLIP's text encoder expects, and the merges agree with a naive reference."""
import json
import random
import warnings
from collections import Counter

import pytest
import torch

from minidiff.files import DataError
from minidiff.models.tokenizer import Tokenizer, normalize, pretokenize, train_bpe

SIZES = {"small": "小", "large": "大", "tiny": "很小的"}
COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色",
           "white": "白色"}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形"}
PLACES = {"top left": "左上角", "top right": "右上角", "bottom left": "左下角", "bottom right": "右下角"}


def captions(count=400, seed=0):
    """Shape captions in three wordings, one of them Chinese."""
    rng = random.Random(seed)
    for _ in range(count):
        size, colour, shape, background, place = (rng.choice(list(d)) for d in
                                                  (SIZES, COLOURS, SHAPES, COLOURS, PLACES))
        yield rng.choice([
            f"a {size} {colour} {shape} on a {background} background, {place}",
            f"{size.capitalize()} {colour} {shape}; {place}, {background} background.",
            f"{COLOURS[background]}背景上的一个{SIZES[size]}{COLOURS[colour]}{SHAPES[shape]}，{PLACES[place]}",
        ])


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(captions(), vocab_size=500)


TEXTS = [
    "a large red circle on a blue background, top left",
    "  A   LARGE\tRed\n circle  ",
    "蓝色背景上的一个大红色圆形，左上角",
    "猫在键盘上睡觉",  # Chinese never seen in training
    "a 🍕 and a 👩🏽‍🚀 walk into a bar 🎉🎉",
    "mixed: Ελληνικά, русский, العربية, हिन्दी, 日本語のテキスト",
    "punctuation!!! (nested [brackets]) ... --- ___ @#$%^&* 3.14159 1st 22nd",
    "control \x00 characters \x07 and \x1b[31m escapes",
    "<start> <end> <pad>",
    "",
    "   ",
]


def test_normalize_lowercases_strips_and_collapses_whitespace():
    assert normalize("  A   LARGE\tRed\n\n circle  ") == "a large red circle"


def test_pre_tokens_join_back_to_the_normalized_text():
    assert pretokenize("a red circle, 3rd") == ["a", " red", " circle", ",", " 3", "rd"]
    assert pretokenize("蓝色背景上，左上角") == ["蓝", "色", "背", "景", "上", "，", "左", "上", "角"]
    for text in TEXTS:
        assert "".join(pretokenize(normalize(text))) == normalize(text)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_inverts_encode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == normalize(text)


def test_decode_inverts_encode_on_long_random_unicode(tokenizer):
    rng = random.Random(1)
    valid = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]  # lone surrogates are not text
    for _ in range(20):
        text = "".join(chr(rng.choice(valid)) for _ in range(300)) + "".join(rng.choices(" \n\t a1,", k=100))
        text = "".join(rng.sample(text, len(text)))
        assert tokenizer.decode(tokenizer.encode(text)) == normalize(text)


def test_frequent_words_become_single_tokens(tokenizer):
    assert tokenizer.pieces("a large red circle") == ["a", " large", " red", " circle"]
    assert " background" in tokenizer.pieces("on a blue background")
    assert tokenizer.pieces("蓝色背景上的一个大红色圆形，左上角")[:3] == ["蓝", "色", "背"]  # one token a character


def test_unseen_words_fall_back_to_more_smaller_pieces(tokenizer):
    assert tokenizer.pieces("a circle") == ["a", " circle"]
    unseen = tokenizer.pieces("a zebra")[1:]
    assert len(unseen) > 1 and "".join(unseen) == " zebra"


def test_any_text_encodes_even_unseen_scripts_emoji_nul_and_lone_surrogates(tokenizer):
    for text in ["猫在键盘上睡觉", "🦄🌈", "\x00", "a\x00b", "\ud800 broken"]:
        ids = tokenizer.encode(text)
        assert ids and all(0 <= i < tokenizer.start_id for i in ids)


def test_partial_characters_show_as_byte_escapes():
    assert Tokenizer([]).pieces("蓝") == ["\\xe8", "\\x93", "\\x9d"]


def test_special_ids_are_distinct_and_never_produced_by_encode(tokenizer):
    specials = {tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id}
    assert len(specials) == 3 and max(specials) == tokenizer.vocab_size - 1
    for text in TEXTS:
        assert not specials & set(tokenizer.encode(text))
    assert tokenizer.decode(tokenizer.encode("<start>")) == "<start>"


def test_batch_rows_are_start_tokens_end_then_padding(tokenizer):
    prompts = ["a red circle", "", "蓝色背景上的一个大红色圆形，左上角"]
    ids = tokenizer(prompts, context_length=24)
    assert ids.shape == (3, 24) and ids.dtype == torch.long
    for row, prompt in zip(ids, prompts):
        tokens = tokenizer.encode(prompt)
        end = len(tokens) + 1
        assert row[0] == tokenizer.start_id and row[1:end].tolist() == tokens and row[end] == tokenizer.end_id
        assert (row[end + 1:] == tokenizer.pad_id).all()
        assert tokenizer.decode(row) == normalize(prompt)
    lengths = torch.tensor([len(tokenizer.encode(p)) + 2 for p in prompts])
    assert tokenizer.padding_mask(ids).equal(torch.arange(24) < lengths[:, None])
    assert tokenizer.end_positions(ids).equal(lengths - 1)
    assert tokenizer("a red circle", 24).equal(ids[:1])


def test_too_long_prompt_keeps_start_and_end_and_warns_once_with_counts(tokenizer):
    prompt = " ".join(["a large red circle on a blue background"] * 5)
    tokens = tokenizer.encode(prompt)
    with pytest.warns(UserWarning) as caught:
        ids = tokenizer([prompt, "a red circle", prompt + " again"], context_length=10)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"is {len(tokens) + 2} tokens" in message and "reads 10" in message and prompt[:40] in message
    assert "1 more in this batch" in message
    assert ids.shape == (3, 10)
    assert ids[0].tolist() == [tokenizer.start_id, *tokens[:8], tokenizer.end_id]
    assert tokenizer.end_positions(ids)[0] == 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer(["a red circle"], context_length=5)  # exactly fits: no warning


def test_training_is_deterministic_and_respects_the_vocabulary_size():
    first, second = train_bpe(captions(), 300), train_bpe(captions(), 300)
    assert first.merges == second.merges and first.vocab_size == 300
    assert train_bpe(captions(), 300).merges == train_bpe(captions(), 350).merges[:41]
    assert train_bpe(["cd", "ab", "cd", "ab"], 260).merges == [(ord("a"), ord("b"))]  # a tie: smallest ids win
    with pytest.raises(ValueError, match="at least 259"):
        train_bpe(captions(), 258)


def test_training_stops_when_no_pair_occurs_twice():
    assert Tokenizer([]).vocab_size == 259
    assert train_bpe(["ab"], 1000).merges == []
    assert train_bpe(["ab ab"], 1000).merges == [(ord("a"), ord("b"))]  # "ab" and " ab" share the pair


def test_save_then_load_gives_the_same_tokenizer(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "tokenizer.json")
    assert json.loads(path.read_text())["merges"][0] == list(tokenizer.merges[0])
    loaded = Tokenizer.load(path)
    assert loaded.merges == tokenizer.merges and loaded.pad_id == tokenizer.pad_id
    assert loaded(TEXTS, 128).equal(tokenizer(TEXTS, 128))


@pytest.mark.parametrize("content, problem", [
    ("not json {", "is not JSON"),
    ("[1, 2, 3]", 'lacks the entry "format"'),
    ('{"format": "minidiff byte-level BPE", "merges": []}', '"special_tokens" should be'),
    ('{"format": "minidiff byte-level BPE", "special_tokens": ["<start>", "<end>", "<pad>"]}',
     '"merges" should be a list'),
    ('{"format": "minidiff byte-level BPE", "special_tokens": ["<start>", "<end>", "<pad>"], '
     '"merges": [[97, 98], ["a", "b"]]}', r'merge 1 is \["a", "b"\]'),
    ('{"format": "minidiff byte-level BPE", "special_tokens": ["<start>", "<end>", "<pad>"], '
     '"merges": [[97, 256]]}', r"merge 0 is \[97, 256\], not two ids of tokens made before it \(0 to 255\)"),
])
def test_broken_file_raises_data_error_saying_what_is_wrong(tmp_path, content, problem):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(DataError, match=problem) as caught:
        Tokenizer.load(path)
    assert "train_bpe()" in str(caught.value)


def abc_words(count, seed):
    """Words of three letters, where many overlapping merges compete for the same bytes."""
    rng = random.Random(seed)
    return ["".join(rng.choices("abc", k=rng.randint(2, 12))) for _ in range(count)]


def naive_merge(ids, pair, new_id):
    ids, i = list(ids), 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            ids[i:i + 2] = [new_id]
        i += 1
    return ids


def naive_encode_word(merges, word):
    """Apply every merge, in the order learned, to the bytes of one pre-token."""
    ids = list(word.encode("utf-8"))
    for rank, pair in enumerate(merges):
        ids = naive_merge(ids, pair, 256 + rank)
    return ids


def naive_train(texts, vocab_size):
    """Recount every pair of the whole corpus before each merge: slow, and plainly right."""
    words, merges = [list(word.encode("utf-8")) for text in texts for word in pretokenize(normalize(text))], []
    while 256 + len(merges) + 3 < vocab_size:
        counts = Counter(pair for word in words for pair in zip(word, word[1:]))
        if not counts or max(counts.values()) < 2:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        words = [naive_merge(word, best, 256 + len(merges)) for word in words]
        merges.append(best)
    return merges


def test_merges_agree_with_a_naive_reference(tokenizer):
    text = "a circle background 蓝色背景上的一个大红色圆形 zebra aaaaaaa，triangles 猫"
    words = pretokenize(text)
    assert len(words) == 21  # 7 words, one piece a Chinese character
    assert tokenizer.encode(text) == [i for word in words for i in naive_encode_word(tokenizer.merges, word)]
    abc = train_bpe(abc_words(300, seed=2), 400)
    for word in abc_words(100, seed=3):
        assert abc.encode(word) == naive_encode_word(abc.merges, word), word


def test_training_agrees_with_a_naive_recount():
    corpus = abc_words(300, seed=2) + list(captions(100))
    assert train_bpe(corpus, 400).merges == naive_train(corpus, 400)


# --------------------------------------------------------------------------------------------- new words
def test_a_new_word_is_one_token_after_the_special_ones_and_every_other_text_encodes_as_before(tokenizer):
    taught = tokenizer.with_words(["heart", "心形"])
    heart, xinxing = tokenizer.pad_id + 1, tokenizer.pad_id + 2
    assert taught.vocab_size == tokenizer.vocab_size + 2 and taught.word_ids == {"heart": heart, "心形": xinxing}
    assert (taught.start_id, taught.end_id, taught.pad_id) == (tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id)
    assert len(tokenizer.encode("a red heart")) > 3  # spelled from pieces before
    assert taught.encode("A red HEART, top left") == tokenizer.encode("a red") + [heart] + tokenizer.encode(", top left")
    assert taught.encode("红色心形，左上角") == tokenizer.encode("红色") + [xinxing] + tokenizer.encode("，左上角")
    for text in TEXTS:
        assert taught.encode(text) == tokenizer.encode(text)
    assert taught.piece(heart) == "heart" and taught(["a heart"], 6)[0].tolist() == [
        taught.start_id, *tokenizer.encode("a"), heart, taught.end_id, taught.pad_id, taught.pad_id]


@pytest.mark.parametrize("text", ["heart of hearts", "sweetheart heart", "heartheart", "a heart!", "hearts: heart",
                                  "红色心形", "心形心形在左上角", "a red heart on a blue background, top left"])
def test_a_new_word_is_matched_whole_and_the_round_trip_still_holds(tokenizer, text):
    taught = tokenizer.with_words(["heart", "心形"])
    ids = taught.encode(text)
    assert taught.decode(ids) == normalize(text)
    whole = [w for w in normalize(text).replace(":", " ").replace("!", " ").split() if w == "heart"]
    assert ids.count(taught.word_ids["heart"]) == len(whole)
    assert ids.count(taught.word_ids["心形"]) == text.count("心形")


def test_a_new_word_reads_back_with_a_space_before_it_unless_first_or_after_chinese(tokenizer):
    taught = tokenizer.with_words(["heart"])  # its token stands for " heart" as " circle"'s does
    assert taught.decode(taught.encode("heart,heart")) == "heart, heart"
    assert taught.decode(taught.encode("红色heart")) == "红色heart"


def test_new_words_survive_saving_and_bad_words_are_refused(tokenizer, tmp_path):
    taught = tokenizer.with_words(["Heart"]).with_words(["spiral"])
    assert taught.words == ("heart", "spiral")
    loaded = Tokenizer.load(taught.save(tmp_path / "t.json"))
    assert loaded.words == taught.words and loaded.encode("a spiral heart") == taught.encode("a spiral heart")
    for bad in ["two words", "h3art", "", "heart!"]:
        with pytest.raises(ValueError, match="one word of letters"):
            tokenizer.with_words([bad])
    with pytest.raises(ValueError, match="repeat"):
        taught.with_words(["heart"])
    (tmp_path / "bad.json").write_text(json.dumps({**taught.to_json(), "words": ["a b"]}))
    with pytest.raises(DataError, match='"words"'):
        Tokenizer.load(tmp_path / "bad.json")
