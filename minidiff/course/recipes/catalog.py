"""Every recipe, by chapter: importing a chapter's module registers its recipes in ``RECIPES``.
A new chapter adds its module here."""
from minidiff.course.recipes import clip, clip_coco, codecs, ddpm, gan, judge, latent, text2image, text2image_coco  # noqa: F401  (each registers its recipes)
from minidiff.course.recipes.common import RECIPES  # noqa: F401
