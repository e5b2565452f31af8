"""Shapes with captions: a procedural, offline stand-in for a captioned photo dataset like COCO.

Each picture is one coloured shape on a plain background, with a caption that says what and where
it is ("a large red circle on a blue background, top left"). Because the pictures are simple, a
small model can learn to follow the words in minutes on a CPU, which is what the text-to-image,
CLIP and ControlNet chapters need (the idea follows ControlNet's "Fill50K" toy dataset). Every
caption also exists in Chinese ("蓝色背景上的一个红色大圆形，在左上角", ``language="zh"``), each
language in a few training wordings plus one evaluation wording that no model trains on
(``eval_caption``), for zero-shot tests.

Every example ``i`` is generated from ``(seed, i)`` alone, so any subset, in any order, can be
rebuilt bit for bit: ``make_shapes(5, start=10)`` equals items 10..14 of ``make_shapes(20)``.

Drawing is anti-aliased by supersampling: we test which of 4x4 sample points inside each pixel
lie inside the shape and take the fraction that do as that pixel's "coverage" (a box filter), then
blend the shape's colour over the background by it. The tests are plain geometry in numpy (is
this point inside the circle?), not a drawing library, so the bytes are the same on every run.
Besides the picture, each example has a binary ``mask`` of the shape (for inpainting) and a
1-pixel ``edge`` map of its outline (a ControlNet condition).

**Held-out compositions.** ``HELD_OUT`` lists 24 of the 168 (shape, colour, background)
combinations (1 in 7) that no generative, CLIP or ControlNet model of the course ever trains on:
``make_shapes(..., compositions="train")`` never draws them and ``compositions="held_out"`` draws only
them, so a later chapter can ask whether a model composes words it learned apart ("a white circle
on a green background") into a picture it never saw. The list is balanced: every shape has exactly
one held-out background per colour, and no (colour, background) pair is held out for two shapes, so
every shape, colour and background, and every *pair* of them, still appears in training; only the
triple is new.

**Seeds.** Examples of ``TRAIN_SEED`` (0) train the generative models; ``TEST_SEED`` (1) holds the
test renders every protocol measures against; ``TUNE_SEED`` (2) is for choosing settings, so a
reported figure is never the one that was tuned; ``JUDGE_SEED`` (3) trains the shapes judge.

Conventions: raw arrays are uint8 (H, W, 3); tensors from ``ShapesDataset`` are float (C, H, W)
with images in [-1, 1] and the mask and edge conditions in {0, 1}.
"""
import numbers

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle")
# Shapes that no model of chapters 07–11 (and no CLIP) ever sees: chapter 12 teaches one to a trained model.
# They are drawn only when asked for (``make_shapes(..., shapes=...)``), so every stream of SHAPES stays as it was.
NEW_SHAPES = ("star", "heart")
ALL_SHAPES = SHAPES + NEW_SHAPES  # a shape's label is its index here: the first three keep theirs
COLORS = {  # name -> RGB; saturated and far apart, so each stays recognisable at 32x32
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (245, 215, 40),
    "purple": (140, 60, 180),
    "orange": (245, 135, 25),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SIZES = ("small", "large")
POSITIONS = (  # a 3x3 grid, row by row
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)

ATTRIBUTES = {  # what the judge reads, with every value it can take
    "shape": SHAPES, "color": tuple(COLORS), "background": tuple(COLORS), "size": SIZES, "position": POSITIONS,
}
TRAIN_SEED, TEST_SEED, TUNE_SEED, JUDGE_SEED = 0, 1, 2, 3

# Made by shifting the palette's order (red green blue yellow purple orange white black) by 3, 5 and 7
# places for circles, squares and triangles: each colour once as the shape and once as the background
# per shape; written out so the list is fixed whatever the palette's order becomes.
HELD_OUT = (
    ("circle", "red", "yellow"), ("circle", "green", "purple"), ("circle", "blue", "orange"),
    ("circle", "yellow", "white"), ("circle", "purple", "black"), ("circle", "orange", "red"),
    ("circle", "white", "green"), ("circle", "black", "blue"),
    ("square", "red", "orange"), ("square", "green", "white"), ("square", "blue", "black"),
    ("square", "yellow", "red"), ("square", "purple", "green"), ("square", "orange", "blue"),
    ("square", "white", "yellow"), ("square", "black", "purple"),
    ("triangle", "red", "black"), ("triangle", "green", "red"), ("triangle", "blue", "green"),
    ("triangle", "yellow", "blue"), ("triangle", "purple", "yellow"), ("triangle", "orange", "purple"),
    ("triangle", "white", "orange"), ("triangle", "black", "white"),
)
COMPOSITIONS = ("all", "train", "held_out")


def composition(attributes: dict) -> tuple[str, str, str]:
    """An example's (shape, colour, background)."""
    return attributes["shape"], attributes["color"], attributes["background"]


def is_held_out(attributes: dict) -> bool:
    """Whether an example's composition is one that no generative model may train on."""
    return composition(attributes) in _HELD_OUT_SET


_HELD_OUT_SET = frozenset(HELD_OUT)

# Geometry in units of a 32x32 image; everything scales with the requested size.
_GRID = (7.5, 16.0, 24.5)  # centre coordinates of the grid's columns (and rows)
_RADIUS = {"small": (3.0, 4.0), "large": (5.5, 6.5)}  # range of the shape's "radius" (half-size)
_JITTER = 1.0  # the centre moves up to this far from its grid point: a position is a small region
# With these numbers a shape always lies wholly inside the image: 7.5 - 1.0 - 6.5 = 0.

# Where inside a pixel we test the shape, as offsets from the pixel's top-left corner: a 4x4 grid
# for the anti-aliased picture (coverage in steps of 1/16, smooth enough), the centre for the mask.
_SUBPIXELS = ((np.arange(4) + 0.5) / 4).astype(np.float32)
_CENTER = np.array([0.5], np.float32)

# Captions: a few training wordings per language, so a text encoder learns the words, not one
# sentence. The Chinese ones put the size next to the noun ("红色的大圆形", "一个大的红色圆形"),
# never "大红色": 大红 is a colour of its own (bright red). Chinese lists its clauses in any order, so
# it has eight wordings that put the background, the shape and the position first, in turn: with
# only the first four, clip_shapes learned which colour is the background's from where it stood in
# those four sentences, and read a new sentence's colours the wrong way round (binding 12 %).
LANGUAGES = ("en", "zh")
_TEMPLATES = {  # template 0 is the canonical caption
    "en": (
        "a {size} {color} {shape} on {a_background} background, {position}",
        "a {size} {color} {shape} {where} on {background}",
        "{a_background} picture with a {size} {color} {shape} {where}",
        "{size} {color} {shape}, {position}, {background} background",
    ),
    "zh": (
        "{background}背景上的一个{color}{size}{shape}，在{position}",
        "画面{position}有一个{color}的{size}{shape}，背景是{background}",
        "一个{size}的{color}{shape}位于画面{position}，{background}背景",
        "{color}{size}{shape}，{position}，{background}背景",
        "{position}是一个{color}{size}{shape}，{background}背景",
        "{background}背景，{position}，一个{size}的{color}{shape}",
        "背景是{background}，{color}的{size}{shape}在{position}",
        "{position}：{color}的{size}{shape}，{background}背景",
    ),
}
# One wording per language that nothing trains on (see eval_caption): new words and a new sentence,
# but each attribute still named by the word the captions taught. English keeps "background", so
# Chinese keeps 背景: with 底色 ("ground colour", a synonym no caption uses) in its place, clip_shapes
# could not tell the background's colour from the shape's (51 %, a coin toss between the two) — a test
# of synonyms, which no model that has only read these captions can pass, not of understanding.
_EVAL_TEMPLATES = {
    "en": "a picture of a {size} {color} {shape} against {a_background} background, {position}",
    "zh": "一张{background}背景的图片，{position}画着一个{color}的{size}{shape}",
}
CHINESE_WORDS = {  # attribute -> value -> its Chinese word, shared by every Chinese template
    "shape": {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "五角星", "heart": "心形"},
    "color": {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
              "purple": "紫色", "orange": "橙色", "white": "白色", "black": "黑色"},
    "size": {"small": "小", "large": "大"},
    "position": {"top left": "左上角", "top": "正上方", "top right": "右上角",
                 "left": "左侧", "center": "正中间", "right": "右侧",
                 "bottom left": "左下角", "bottom": "正下方", "bottom right": "右下角"},
}
_WORDING_STREAM = 1  # tags the generator (seed, i, 1) that picks a non-English example's wording


def _check_language(language) -> str:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, got {language!r}")
    return language


def _where(position: str) -> str:
    """The position as a phrase that reads well after a noun: 'at the top left', 'in the center'."""
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def _fill(template: str, attributes: dict, language: str) -> str:
    """``template`` with the example's attributes put in, as words of ``language``."""
    a = attributes
    if language == "zh":
        words = {key: CHINESE_WORDS[key][a[key]] for key in ("size", "color", "shape", "position")}
        return template.format(**words, background=CHINESE_WORDS["color"][a["background"]])
    article = "an" if a["background"][0] in "aeiou" else "a"  # "an orange background"
    return template.format(
        size=a["size"], color=a["color"], shape=a["shape"], background=a["background"],
        a_background=f"{article} {a['background']}", position=a["position"],
        where=_where(a["position"]),
    )


def caption(attributes: dict, template: int = 0, language: str = "en") -> str:
    """The caption for one example's attributes: ``template`` picks one of the training wordings of
    ``language`` ("en" or "zh"; 0 is canonical, e.g. "a large red circle on a blue background, top
    left" or "蓝色背景上的一个红色大圆形，在左上角").

    Every template names the size, colour and shape, the background colour and the position.
    """
    templates = _TEMPLATES[_check_language(language)]
    if not 0 <= template < len(templates):
        raise ValueError(f"template must be in 0..{len(templates) - 1}, got {template}")
    return _fill(templates[template], attributes, language)


def all_captions(attributes: dict, languages=LANGUAGES) -> list[str]:
    """Every training wording of one example in each of ``languages``: what a bilingual CLIP
    trains on, so that each language's sentences and the other's land on the same picture."""
    return [caption(attributes, template, language) for language in languages
            for template in range(len(_TEMPLATES[_check_language(language)]))]


def eval_caption(attributes: dict, language: str = "en") -> str:
    """The evaluation wording of one example, e.g. "a picture of a large red circle against a blue
    background, top left": a sentence no model trains on, so a zero-shot test can ask whether a
    text encoder understood the words, not merely memorised the training sentences. Only this
    function writes it; ``caption``, ``all_captions`` and ``make_shapes`` never do."""
    return _fill(_EVAL_TEMPLATES[_check_language(language)], attributes, language)


def _wording(seed: int, i: int, language: str, english_template: int) -> int:
    """Which training template example ``i`` uses in ``language``. English keeps the one its own
    generator drew; another language draws from a generator of its own, so that asking for it
    leaves the pictures (and the English stream) exactly as they were."""
    if language == "en":
        return english_template
    rng = np.random.default_rng([seed, i, _WORDING_STREAM])
    return int(rng.integers(len(_TEMPLATES[language])))


# ---------------------------------------------------------------------------------------------
# Sampling attributes


def _sample_attributes(rng: np.random.Generator, size: int, compositions: str = "all",
                       shapes: tuple = SHAPES) -> tuple[dict, int]:
    """Draw one example's attributes (and a caption template) from its own random generator; for a
    split, draw again from the same generator until the composition belongs to it. Every allowed
    composition stays equally likely, and the "all" stream is the one the dataset always had."""
    while True:
        attributes, template = _draw_attributes(rng, size, shapes)
        if compositions == "all" or is_held_out(attributes) == (compositions == "held_out"):
            return attributes, template


def _draw_attributes(rng: np.random.Generator, size: int, shapes: tuple = SHAPES) -> tuple[dict, int]:
    colors = list(COLORS)
    color = int(rng.integers(len(colors)))
    # Any colour but the shape's own: shift by 1..len-1 places around the palette.
    background = (color + 1 + int(rng.integers(len(colors) - 1))) % len(colors)
    size_name = SIZES[int(rng.integers(len(SIZES)))]
    p = int(rng.integers(len(POSITIONS)))
    scale = size / 32
    jitter = rng.uniform(-_JITTER, _JITTER, size=2)
    cx = (_GRID[p % 3] + jitter[0]) * scale
    cy = (_GRID[p // 3] + jitter[1]) * scale
    radius = rng.uniform(*_RADIUS[size_name]) * scale
    attributes = {
        "shape": shapes[int(rng.integers(len(shapes)))],
        "color": colors[color],
        "background": colors[background],
        "size": size_name,
        "position": POSITIONS[p],
        "center": (float(cx), float(cy)),  # in pixels of the output image; (0, 0) is the top left
        "radius": float(radius),  # circle: radius; square: half the side; triangle: half the base
    }
    return attributes, int(rng.integers(len(_TEMPLATES["en"])))


# ---------------------------------------------------------------------------------------------
# Drawing: which sample points fall inside each shape. dx, dy are offsets from the shape's centre
# (x to the right, y down), r its radius; all broadcast to (batch, rows, columns).


def _inside_circle(dx, dy, r):
    return dx * dx + dy * dy <= r * r


def _inside_square(dx, dy, r):
    return (np.abs(dx) <= r) & (np.abs(dy) <= r)


def _inside_triangle(dx, dy, r):
    # Apex at the top (dy = -r), base 2r wide at the bottom (dy = r): half-width (dy + r) / 2.
    # It fills half its bounding square, which keeps it distinct from the square (all) and the
    # circle (pi/4) even when blurry.
    return (dy <= r) & (2 * np.abs(dx) <= dy + r)


_STAR_INNER = 0.5                           # inner vertices at half the tips' radius: chunkier than a pentagram's 0.38
_STAR_SECTOR = 2 * np.pi / 5
_STAR_EDGE = (_STAR_INNER * np.cos(np.pi / 5) - 1, _STAR_INNER * np.sin(np.pi / 5))  # tip → inner vertex, per unit r


def _inside_star(dx, dy, r):
    # A five-pointed star, one tip straight up at distance r. Fold the point into the sector around the
    # nearest tip (angle φ from it, |φ| ≤ 36°), then keep it if it lies on the centre's side of the edge
    # from that tip (r, 0) to the inner vertex (0.5 r at 36°): a cross product with that edge.
    angle = np.arctan2(dx, -dy)
    phi = np.abs(np.mod(angle + _STAR_SECTOR / 2, _STAR_SECTOR) - _STAR_SECTOR / 2)
    rho = np.sqrt(dx * dx + dy * dy)
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    ex, ey = _STAR_EDGE[0] * r, _STAR_EDGE[1] * r
    return ex * py - ey * (px - r) >= 0


def _inside_heart(dx, dy, r):
    # The classic heart curve (x² + y² − 1)³ ≤ x² y³ (y up), which spans x in ±1.139 and y in [−1, 1.236]:
    # scaled so its width is 2r and centred on its bounding box (height 1.96 r).
    x = dx * (1.139 / r)
    y = -dy * (1.139 / r) + 0.118
    return (x * x + y * y - 1) ** 3 <= x * x * y ** 3


_INSIDE = {"circle": _inside_circle, "square": _inside_square, "triangle": _inside_triangle,
           "star": _inside_star, "heart": _inside_heart}


def _count_inside(attributes: list[dict], size: int, offsets: np.ndarray) -> np.ndarray:
    """For each pixel of each image, how many of its sample points lie inside the shape.

    The sample points of pixel (x, y) are (x + ox, y + oy) for every ox and oy in ``offsets``
    (pixel (x, y) spans [x, x + 1) x [y, y + 1)). Returns (n, size, size) uint8 counts. Shapes of
    one kind are drawn together: each sample offset is one broadcast numpy expression over every
    pixel of every image of that kind.
    """
    pixels = np.arange(size, dtype=np.float32)
    counts = np.zeros((len(attributes), size, size), np.uint8)
    for shape, inside in _INSIDE.items():
        idx = [i for i, a in enumerate(attributes) if a["shape"] == shape]
        if not idx:
            continue
        centers = np.array([attributes[i]["center"] for i in idx], np.float32)
        cx, cy = centers[:, 0, None, None], centers[:, 1, None, None]
        r = np.array([attributes[i]["radius"] for i in idx], np.float32)[:, None, None]
        hits = np.zeros((len(idx), size, size), np.uint8)
        for oy in offsets:
            dy = pixels[None, :, None] + oy - cy  # (k, size, 1)
            for ox in offsets:
                hits += inside(pixels[None, None, :] + ox - cx, dy, r)  # (k, size, size)
        counts[idx] = hits
    return counts


def mask_outline(masks: np.ndarray) -> np.ndarray:
    """The mask's boundary: mask pixels with at least one of their 4 neighbours outside the mask.

    This is "mask minus eroded mask" and gives a closed outline one pixel wide.
    """
    padded = np.pad(masks.astype(bool), ((0, 0), (1, 1), (1, 1)))  # outside the image is outside
    eroded = (padded[:, 1:-1, 1:-1] & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1]
              & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:])
    return padded[:, 1:-1, 1:-1] & ~eroded


# ---------------------------------------------------------------------------------------------
# Public API


def _check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int, or a ValueError saying what is allowed."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 16 or size % 8:
        raise ValueError(f"size must be a multiple of 8 and at least 16 (e.g. 32 or 64), got {size!r}")
    return int(size)


def _check_shapes(shapes) -> tuple:
    if isinstance(shapes, str) or not shapes or any(shape not in ALL_SHAPES for shape in shapes):
        raise ValueError(f"shapes must be a non-empty tuple of {', '.join(ALL_SHAPES)}, got {shapes!r}")
    return tuple(shapes)


def _check_compositions(compositions) -> str:
    if compositions not in COMPOSITIONS:
        raise ValueError(f"compositions must be one of {', '.join(COMPOSITIONS)}, got {compositions!r}")
    return compositions


def shape_conditions(attributes: list[dict], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ControlNet conditions of shapes given by their ``shape``, ``center`` ((x, y) in pixels) and
    ``radius`` (in pixels) — any shape, anywhere: ``(masks, edges)``, (n, size, size) uint8 each, the mask
    1 where a pixel's centre lies inside the shape (a crisp, unbiased rasterisation: mask area ≈ shape
    area, and every pixel inside the outline is fully covered), the edge 255 on its 1-pixel outline."""
    masks = np.concatenate([_count_inside(attributes[j:j + 1024], size, _CENTER)
                            for j in range(0, len(attributes), 1024)])
    return masks, mask_outline(masks).astype(np.uint8) * 255


def make_shapes(n: int, seed: int = 0, size: int = 32, start: int = 0, compositions: str = "all",
                language: str = "en", shapes: tuple = SHAPES) -> dict:
    """Generate examples ``start .. start + n - 1`` of the shapes dataset for ``seed``.

    Returns a dict of numpy arrays and lists, one entry per example:
      images     (n, size, size, 3) uint8   the anti-aliased picture
      masks      (n, size, size)    uint8   1 where the pixel's centre lies inside the shape
      edges      (n, size, size)    uint8   255 on the mask's 1-pixel outline, else 0
      captions   list[str]                  a caption in one of ``language``'s training wordings, seeded
      attributes list[dict]                 shape, color, background, size, position, center, radius
    ``size`` is the image side in pixels, a multiple of 8 and at least 16 (the course uses 32 or 64).
    ``compositions`` is "all", "train" (never a ``HELD_OUT`` combination) or "held_out" (only those).
    ``language`` is "en" or "zh": the same pictures, captioned in English or in Chinese.
    ``shapes`` are the shapes drawn from (any of ``SHAPES + NEW_SHAPES``; ``("star",)`` draws only stars, with
    the colours, sizes and places of the usual stream). Held-out compositions concern ``SHAPES`` only.
    """
    language = _check_language(language)
    compositions = _check_compositions(compositions)
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    size = _check_size(size)
    start = _check_int("start", start, 0)
    shapes = _check_shapes(shapes)
    if compositions == "held_out" and not set(shapes) & set(SHAPES):
        raise ValueError(f"held-out compositions are of {', '.join(SHAPES)}: none of {shapes} has any")

    attributes, captions = [], []
    for i in range(start, start + n):
        a, template = _sample_attributes(np.random.default_rng([seed, i]), size, compositions, shapes)
        attributes.append(a)
        captions.append(caption(a, _wording(seed, i, language, template), language))

    # Draw in chunks so memory stays small for any n (the temporaries are float32 per pixel).
    chunks = [attributes[j:j + 1024] for j in range(0, n, 1024)]
    counts = np.concatenate([_count_inside(c, size, _SUBPIXELS) for c in chunks])
    masks, edges = shape_conditions(attributes, size)

    # Blend shape colour over background by coverage k/16 (this is the anti-aliasing), in integer
    # arithmetic rounded to nearest so every machine gets the same bytes.
    full = len(_SUBPIXELS) ** 2
    k = counts[..., None].astype(np.uint16)
    fg = np.array([COLORS[a["color"]] for a in attributes], np.uint16)[:, None, None, :]
    bg = np.array([COLORS[a["background"]] for a in attributes], np.uint16)[:, None, None, :]
    images = ((fg * k + bg * (full - k) + full // 2) // full).astype(np.uint8)
    return {"images": images, "masks": masks, "edges": edges,
            "captions": captions, "attributes": attributes}


def attribute_labels(attributes: list[dict]) -> torch.Tensor:
    """(N, 5) integer labels, one column per ``ATTRIBUTES`` key in order: each value's index in its list
    (a new shape's, in ``ALL_SHAPES``: star 3, heart 4)."""
    table = {**ATTRIBUTES, "shape": ALL_SHAPES}
    index = {name: {value: k for k, value in enumerate(values)} for name, values in table.items()}
    return torch.tensor([[index[name][a[name]] for name in ATTRIBUTES] for a in attributes], dtype=torch.long)


class ShapesDataset(torch.utils.data.Dataset):
    """``n`` shapes-with-captions examples as tensors, generated once and kept in memory.

    Item ``i`` is a dict:
      image   float (3, H, W) in [-1, 1]
      caption str
      mask    float (1, H, W) in {0, 1}, 1 on the shape (the region to inpaint)
      edge    float (1, H, W) in {0, 1}, 1 on the shape's outline (a ControlNet condition;
              conditions stay in [0, 1] like a control image, only the generated image is [-1, 1])
      index   int, the example's number i
    For fast batched use the whole set is also available as ``.images`` (N, 3, H, W), ``.masks``
    and ``.edges`` (N, 1, H, W), plus ``.captions`` and ``.attributes`` lists. ``compositions``
    picks the split, as in ``make_shapes``: models that generate train on ``"train"``; ``language``
    ("en" or "zh") the captions' language; ``shapes`` the shapes drawn from, as in ``make_shapes``.
    """

    def __init__(self, n: int = 10000, seed: int = 0, size: int = 32, compositions: str = "all",
                 language: str = "en", shapes: tuple = SHAPES):
        data = make_shapes(n, seed=seed, size=size, compositions=compositions, language=language, shapes=shapes)
        images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
        self.images = images.float() / 127.5 - 1
        self.masks = torch.from_numpy(data["masks"]).float()[:, None]
        self.edges = torch.from_numpy(data["edges"] // 255).float()[:, None]
        self.captions = data["captions"]
        self.attributes = data["attributes"]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        i = range(len(self))[i]  # a negative i counts from the end; out of range is an IndexError
        return {"image": self.images[i], "caption": self.captions[i], "mask": self.masks[i],
                "edge": self.edges[i], "index": i}
