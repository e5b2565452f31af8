"""Captions in English and Chinese: the training wordings, the evaluation wordings kept out of
training, and the promise that adding Chinese changed nothing that already existed."""
import hashlib
import itertools
import json
import re

import pytest

from minidiff.datasets.mnist import (
    DIGIT_NAMES_ZH, all_digit_captions, digit_caption, digit_captions, eval_digit_caption,
)
from minidiff.datasets.shapes import (
    CHINESE_WORDS, COLORS, LANGUAGES, POSITIONS, SHAPES, SIZES, ShapesDataset, all_captions, caption,
    eval_caption, make_shapes,
)

EVERY_EXAMPLE = [  # every attribute combination a caption can describe
    {"shape": shape, "color": color, "background": background, "size": size, "position": position}
    for shape, color, background, size, position in itertools.product(SHAPES, COLORS, COLORS, SIZES, POSITIONS)
    if background != color
]
RED_CIRCLE = {"shape": "circle", "color": "red", "background": "blue", "size": "large", "position": "top left"}


def _digest(data: dict) -> str:
    h = hashlib.sha256()
    for key in ("images", "masks", "edges"):
        h.update(data[key].tobytes())
    h.update(json.dumps(data["captions"]).encode())
    h.update(json.dumps(data["attributes"], sort_keys=True).encode())
    return h.hexdigest()


def _text_digest(texts) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def test_existing_data_and_english_captions_are_unchanged():
    # Digests taken before Chinese was added: trained models and measured results depend on these.
    assert _digest(make_shapes(200, seed=0, size=32)) == (
        "088ed02b3f4ce49b6e2e51a309c2e2ed8ea60c0e5c5d1439f7a75e2df86f1531")
    assert _digest(make_shapes(100, seed=1, size=64, compositions="train")) == (
        "aba9bb2ebfaa97d37c8dc6e55bed877b456fb6960073bbde8694acee2299d668")
    assert hashlib.sha256(json.dumps(digit_captions(range(10), seed=0)).encode()).hexdigest() == (
        "3e055a13a657f4090c77ce202f0dfaa51da26aa343129c9a5ce5f0debdbbc48d")
    assert _text_digest(caption(a, t) for a in EVERY_EXAMPLE for t in range(4)) == (
        "2273ea876ecbace8bcd4cbf62373452819a9faab60c1ebddf1b9211f95321309")
    assert _text_digest(digit_caption(y, t) for y in range(10) for t in range(-6, 12)) == (
        "77abc1725ac61711828d562029379d5b9218424427acd31d2885716f8e47a3dc")


def _words(key: str) -> str:
    """A regex alternative of every Chinese word for one attribute."""
    return "|".join(CHINESE_WORDS[key].values())


# The shape's noun phrase in any template: 红色大圆形, 红色的大圆形, 大的红色圆形.
_NOUN_PHRASE = re.compile(
    f"(?:({_words('size')})的)?({_words('color')})的?({_words('size')})?({_words('shape')})")


@pytest.mark.parametrize("wording", ["training", "evaluation"])
def test_chinese_captions_name_every_attribute_in_its_role(wording):
    for a in EVERY_EXAMPLE:
        zh = {key: CHINESE_WORDS["color" if key == "background" else key][a[key]] for key in a}
        captions = all_captions(a, ["zh"]) if wording == "training" else [eval_caption(a, "zh")]
        for c in captions:
            (size_before, color, size_after, shape), = _NOUN_PHRASE.findall(c)
            assert (color, shape) == (zh["color"], zh["shape"]) and size_before + size_after == zh["size"]
            b = zh["background"]
            background_phrases = (f"{b}背景", f"背景是{b}")
            assert sum(c.count(phrase) for phrase in background_phrases) == 1
            assert {w for w in CHINESE_WORDS["color"].values() if w in c} == {zh["color"], zh["background"]}
            assert [w for w in CHINESE_WORDS["position"].values() if w in c] == [zh["position"]]
            assert [w for w in CHINESE_WORDS["size"].values() if w in c] == [zh["size"]]


def test_each_languages_wordings_are_distinct_sentences():
    for language in LANGUAGES:
        shapes = all_captions(RED_CIRCLE, [language]) + [eval_caption(RED_CIRCLE, language)]
        digits = all_digit_captions(7, [language]) + [eval_digit_caption(7, language)]
        assert len(set(shapes)) == len(shapes) >= 4 and len(set(digits)) == len(digits) >= 4
    assert all_captions(RED_CIRCLE) == all_captions(RED_CIRCLE, ["en"]) + all_captions(RED_CIRCLE, ["zh"])


def test_evaluation_wordings_are_never_training_captions():
    for language in LANGUAGES:
        assert all(eval_caption(a, language) not in all_captions(a) for a in EVERY_EXAMPLE)
        data = make_shapes(200, language=language)
        for c, a in zip(data["captions"], data["attributes"]):
            assert c in all_captions(a, [language])
        for y in range(10):
            training = all_digit_captions(y)
            assert eval_digit_caption(y, language) not in training
            assert {digit_caption(y, t, language) for t in range(-20, 20)} <= set(training)
        assert set(digit_captions([7] * 100, seed=3, language=language)) <= set(all_digit_captions(7))


def test_chinese_shapes_are_the_same_pictures_with_chinese_captions():
    en = make_shapes(100, seed=1, compositions="train")
    zh = make_shapes(100, seed=1, compositions="train", language="zh")
    for key in ("images", "masks", "edges"):
        assert (en[key] == zh[key]).all()
    assert en["attributes"] == zh["attributes"]
    assert [caption(a, 0, "zh") for a in en["attributes"]] != zh["captions"]  # several wordings in use
    assert all(c in all_captions(a, ["zh"]) for c, a in zip(zh["captions"], zh["attributes"]))
    # As for the pictures, each item's wording depends on (seed, i) alone.
    assert make_shapes(5, seed=1, start=10, language="zh")["captions"] == make_shapes(
        15, seed=1, language="zh")["captions"][10:]
    assert ShapesDataset(3, language="zh").captions == make_shapes(3, language="zh")["captions"]


def test_chinese_digit_captions_name_the_digit():
    for y in range(10):
        for c in digit_captions([y] * 30, seed=y, language="zh"):
            words = c.replace("一个", "")  # "a", not the digit one
            named = [d for d, name in enumerate(DIGIT_NAMES_ZH) if name in words]
            assert named + [int(d) for d in re.findall(r"\d", c)] == [y]
    assert digit_caption(7, 0, "zh") == "手写的数字七"
    assert eval_digit_caption(7, "zh") == "一张数字七的照片"


@pytest.mark.parametrize("call", [
    lambda: caption(RED_CIRCLE, language="fr"),
    lambda: all_captions(RED_CIRCLE, ["en", "de"]),
    lambda: eval_caption(RED_CIRCLE, "EN"),
    lambda: make_shapes(1, language="cn"),
    lambda: ShapesDataset(1, language=None),
    lambda: digit_caption(7, language="fr"),
    lambda: digit_captions([7], language="zh-CN"),
    lambda: all_digit_captions(7, ["jp"]),
    lambda: eval_digit_caption(7, "chinese"),
])
def test_an_unknown_language_is_a_value_error_naming_the_allowed_ones(call):
    with pytest.raises(ValueError, match="en, zh"):
        call()
