"""Every recipe runs end to end in its fast mode — train, measure, (not) ship — writing only under a
temporary runs folder: the shipped weights and manifest are never touched."""
import hashlib

import pytest

from minidiff.course.recipes.catalog import RECIPES
from minidiff.weights import checkpoints_dir


def shipped_files() -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(checkpoints_dir().iterdir())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One runs folder for the module, so ``ae_mnist`` finds its four parts' fast runs finished."""
    return tmp_path_factory.mktemp("runs")


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in RECIPES if not name.endswith("_coco")])  # test_clip_coco: on COCO's format
def test_every_recipe_runs_in_its_fast_mode(name, runs, monkeypatch):
    monkeypatch.setenv("MINIDIFF_RUNS", str(runs))
    before = shipped_files()
    metrics = RECIPES[name](fast=True, device="cpu")
    assert isinstance(metrics, dict) and metrics
    assert shipped_files() == before
    assert any(runs.iterdir()) and all(p.name.endswith("-fast") for p in runs.iterdir())


def test_every_recipe_is_in_the_catalog_once_and_records_its_command():
    import inspect
    assert len(RECIPES) == len(set(RECIPES)) >= 13
    for name, recipe in RECIPES.items():
        assert {"fast", "device"} <= set(inspect.signature(recipe).parameters), name
