"""The predict / interpret / choose questions: each right answer is recognised, each wrong choice gets
its own hint, and every chapter asks at least one of them."""
import json
import re
from pathlib import Path

import pytest

from minidiff.course.questions import QUESTIONS, Question, check_answer, question

CHAPTERS = sorted((Path(__file__).resolve().parent.parent / "chapters").glob("[0-9][0-9]_*.ipynb"))


def asked(notebook: Path) -> set:
    code = "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")
    return set(re.findall(r"check_answer\(\s*\"(\w+)\"", code))


@pytest.mark.parametrize("name", sorted(QUESTIONS))
def test_every_choice_has_its_own_hint(name):
    q = QUESTIONS[name]
    assert len(q.options) >= 2 and q.why
    wrong = [option for option in q.options if option != q.answer]
    assert all(q.options[option].strip() for option in wrong)
    assert len({q.options[option] for option in wrong}) == len(wrong), "two choices share a hint"


@pytest.mark.parametrize("name", sorted(QUESTIONS))
def test_a_right_answer_is_recognised_and_a_wrong_one_gets_its_hint(name, capsys):
    q = QUESTIONS[name]
    for right in ([q.answer] if q.answer is not None else list(q.options)):  # a measured answer can be any
        measured = None if q.answer is not None else right
        assert check_answer(name, f" {right.upper()} ", measured=measured) is True  # case and spaces forgiven
        assert capsys.readouterr().out.startswith(f"✓ {name}: right. {q.why}")
        for wrong in (option for option in q.options if option != right):
            assert check_answer(name, wrong, measured=measured) is False
            assert capsys.readouterr().out.strip() == f"✗ {name}: not {wrong!r}. Hint: {q.options[wrong]}"


def test_unanswered_and_impossible_answers(capsys):
    q = question("test_colour", options={"a": "red is not it", "b": "blue is not it"}, answer="b", why="It is.")
    try:
        assert check_answer("test_colour", None) is False
        assert "not answered yet" in capsys.readouterr().out
        assert check_answer("test_colour", "z") is False
        assert "'z' is not one of the choices ('a', 'b')" in capsys.readouterr().out
        assert isinstance(q, Question)
        with pytest.raises(ValueError, match="defined twice"):
            question("test_colour", options={"a": "x", "b": "y"}, answer="a", why="")
        with pytest.raises(ValueError, match="not one of its options"):
            question("test_bad", options={"a": "x"}, answer="c", why="")
        question("test_measured", options={"a": "x", "b": "y"}, why="Measured.")
        with pytest.raises(ValueError, match="pass measured="):
            check_answer("test_measured", "a")
    finally:
        for name in ("test_colour", "test_measured"):
            QUESTIONS.pop(name, None)


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_asks_the_student_to_predict_interpret_or_choose(notebook):
    names = asked(notebook)
    assert names, f"{notebook.name} asks no question (minidiff.course.questions)"
    assert names <= QUESTIONS.keys(), f"{notebook.name} asks unknown questions {names - QUESTIONS.keys()}"


def test_every_question_is_asked_by_a_chapter():
    assert set().union(*map(asked, CHAPTERS)) == QUESTIONS.keys()
