"""minidiff: how AI image generation works, built from scratch in small readable steps.

Images are tensors in [-1, 1] with shape (B, C, H, W). Set ``MINIDIFF_FAST=1`` to make the
chapters run in minutes (CI does); committed notebook outputs come from the full mode.
"""
import os

__version__ = "0.1.0"

FAST = os.environ.get("MINIDIFF_FAST", "0") not in ("", "0", "false", "False")
