"""The whole-system picture (chapter 00) says truthfully which chapters exist and which are coming."""
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minidiff.course.system import BUILT_CHAPTERS, CHAPTERS, SYSTEM, chapter_status, draw_system  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_built_chapters_are_the_notebooks_that_exist():
    notebooks = {path.name[:2] for path in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")}
    assert notebooks == BUILT_CHAPTERS, ("the chapters in chapters/ and minidiff.course.system.BUILT_CHAPTERS "
                                         "disagree: update BUILT_CHAPTERS (and the picture's boxes)")


def test_every_box_names_known_chapters_and_every_planned_chapter_has_a_box():
    named = {chapter for box in SYSTEM for chapter in box.chapters}
    assert named <= CHAPTERS.keys()
    assert {"07", "08", "09", "10", "11", "12"} <= named


def test_chapter_status_splits_built_from_coming():
    assert chapter_status(("02", "12", "13")) == (["02", "12"], ["13"])


def test_the_picture_marks_what_is_coming_and_shows_the_pictures_it_is_given():
    picture = torch.zeros(1, 1, 28, 28)
    ax = draw_system({"prompt": "“seven”", "loop": [("noise", picture), ("x̂₀", picture)],
                      "picture": [("x₀", picture)]})
    words = " ".join(text.get_text() for text in ax.texts)
    assert "built in 11" in words and "built in 12" in words
    assert "“seven”" in words and "built in 04 · 05 · 06 · 07 · 09" in words
    assert len(ax.images) == 3
    dashed = [patch for patch in ax.patches if patch.get_linestyle() == "--"]
    assert len(dashed) == sum(not chapter_status(box.chapters)[0] for box in SYSTEM) == 0  # every chapter is built
    plt.close(ax.figure)
