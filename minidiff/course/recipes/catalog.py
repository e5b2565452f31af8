"""Every recipe, by chapter: importing a chapter's module registers its recipes in ``RECIPES``.
A new chapter adds its module here."""
from minidiff.course.recipes import (  # noqa: F401  (each registers its recipes)
    clip, clip_coco, codecs, concepts, controlnet, ddpm, gan, inpainting, judge, latent, text2image,
    text2image_coco)
from minidiff.course.recipes.common import RECIPES  # noqa: F401
