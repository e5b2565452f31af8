"""The shapes judge (minidiff.models.classifier.ShapesJudge) and the shapes protocol (minidiff.metrics)."""
import pytest
import torch
import torch.nn.functional as F

from minidiff import metrics
from minidiff.course.recipes.judge import grown_judge
from minidiff.datasets.shapes import (
    ALL_SHAPES,
    ATTRIBUTES,
    NEW_SHAPES,
    SHAPES,
    TEST_SEED,
    TRAIN_SEED,
    ShapesDataset,
    attribute_labels,
)
from minidiff.models.classifier import ShapesJudge, ShapesJudgeConfig, judge_loss
from minidiff.weights import load_pretrained, read_manifest


@pytest.fixture(autouse=True)
def _tiny_models(one_thread):
    """Tiny models run fastest on one thread (``conftest.one_thread``)."""


def test_the_judge_reads_every_value_of_every_attribute():
    judge = ShapesJudge(ShapesJudgeConfig(channels=8, features=32)).eval()
    logits = judge(ShapesDataset(4, seed=0).images)
    assert logits.shape == (4, sum(len(v) for v in ATTRIBUTES.values())) == (4, 30)
    parts = judge.split(logits)
    assert list(parts) == list(ATTRIBUTES)
    assert [p.shape[1] for p in parts.values()] == [len(v) for v in ATTRIBUTES.values()]
    assert torch.equal(torch.cat(list(parts.values()), 1), logits)


def test_a_judge_of_five_shapes_has_two_more_shape_outputs_and_labels_new_shapes_after_the_old():
    judge = ShapesJudge(ShapesJudgeConfig(channels=8, features=32, shapes=5)).eval()
    parts = judge.split(judge(ShapesDataset(4, seed=0).images))
    assert parts["shape"].shape == (4, 5) and [p.shape[1] for p in parts.values()][1:] == [8, 8, 2, 9]
    stars = ShapesDataset(3, seed=0, shapes=("circle", "star", "heart")).attributes
    labels = attribute_labels(stars)[:, 0].tolist()
    assert [ALL_SHAPES[k] for k in labels] == [a["shape"] for a in stars] and ALL_SHAPES[:3] == ATTRIBUTES["shape"]


def test_a_grown_judge_reads_every_old_picture_as_the_judge_it_grew_from():
    torch.manual_seed(0)
    small = ShapesJudge(ShapesJudgeConfig(channels=8, features=32)).eval()
    grown = grown_judge(small, 5).eval()
    pictures = ShapesDataset(64, seed=TEST_SEED).images
    before, after = small.split(small(pictures)), grown.split(grown(pictures))
    assert torch.equal(after["shape"][:, :3], before["shape"])
    assert all(torch.equal(after[name], before[name]) for name in list(ATTRIBUTES)[1:])
    assert (after["shape"][:, 3:] <= before["shape"].max(1, keepdim=True).values).all()  # a new shape never wins yet


def test_a_64_pixel_picture_is_read_as_its_2x2_average():
    judge = ShapesJudge(ShapesJudgeConfig(channels=8, features=32)).eval()
    big = ShapesDataset(3, seed=0, size=64).images
    assert torch.allclose(judge.features(big), judge.features(F.avg_pool2d(big, 2)), atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 28, 28), (2, 3, 32, 64), (3, 32, 32)])
def test_the_judge_refuses_what_is_not_a_shapes_picture(shape):
    judge = ShapesJudge(ShapesJudgeConfig(channels=8, features=32))
    with pytest.raises(ValueError, match="ShapesJudge takes"):
        judge(torch.zeros(shape))


def test_the_judge_loss_learns_a_fixed_batch():
    torch.manual_seed(0)
    judge = ShapesJudge(ShapesJudgeConfig(channels=8, features=64, dropout=0.0))
    data = ShapesDataset(32, seed=0)
    batch = (((data.images + 1) * 127.5).round().to(torch.uint8), attribute_labels(data.attributes))
    optimizer = torch.optim.Adam(judge.parameters(), lr=3e-3)
    first = judge_loss(judge, batch)["loss"].item()
    for _ in range(150):
        loss = judge_loss(judge, batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first


# ----------------------------------------------------------------------------- the shapes protocol


@pytest.mark.parametrize("images, message", [
    (torch.zeros(5, 1, 32, 32), "at least 2 colour pictures"),
    (torch.zeros(1, 3, 32, 32), "at least 2 colour pictures"),
    (torch.full((4, 3, 32, 32), 2.0), r"in \[-1, 1\]"),
    (torch.full((4, 3, 32, 32), float("nan")), r"in \[-1, 1\]")])
def test_the_protocol_refuses_pictures_it_cannot_score(images, message):
    judge = ShapesJudge(ShapesJudgeConfig(channels=8, features=32))
    with pytest.raises(ValueError, match=message):
        metrics.evaluate_shapes(images, judge=judge)


def test_asking_attributes_for_another_number_of_pictures_is_refused():
    judge = ShapesJudge(ShapesJudgeConfig(channels=8, features=32))
    data = ShapesDataset(6, seed=0)
    with pytest.raises(ValueError, match="got 6 pictures but attributes for 5"):
        metrics.evaluate_shapes(data.images, data.attributes[:5], judge=judge)


# ----------------------------------------------------------------------------- the shipped judge

@pytest.mark.parametrize("size", [32, 64])
def test_the_shipped_judge_reads_test_renders_as_recorded(size):
    """≥ 99.5 % on every attribute on 2,000 test renders at each size (the manifest has 10,000)."""
    data = ShapesDataset(2000, seed=TEST_SEED, size=size)
    report = metrics.evaluate_shapes(data.images, data.attributes, compositions="all")
    assert min(report["accuracy"].values()) >= 0.995
    recorded = read_manifest()["shapes_judge"]["metrics"][f"test_accuracy_{size}"]
    assert min(v for k, v in recorded.items() if k != "all_correct") >= 0.995


@pytest.mark.parametrize("size", [32, 64])
def test_the_grown_judge_reads_the_new_shapes_and_still_the_old(size):
    """shapes_judge_plus (chapter 12): ≥ 99.5 % on every attribute of 1,000 test renders of the star and the
    heart, and of 1,000 of the three old shapes, at each size (the manifest has 10,000 of all five: 100 %)."""
    judge = load_pretrained("shapes_judge_plus")
    for shapes in (NEW_SHAPES, SHAPES):
        data = ShapesDataset(1000, seed=TEST_SEED, size=size, shapes=shapes)
        _, read = metrics.judge_read(data.images, judge)
        assert ((read == attribute_labels(data.attributes)).float().mean(0) >= 0.995).all(), shapes


def test_a_model_that_only_draws_red_circles_scores_badly():
    data = ShapesDataset(4000, seed=TRAIN_SEED, size=64, compositions="train")
    real = metrics.evaluate_shapes(data.images[:2000])
    red_circles = [i for i, a in enumerate(data.attributes) if a["shape"] == "circle" and a["color"] == "red"]
    collapsed = metrics.evaluate_shapes(data.images[red_circles])
    assert real["worst_share"] < 0.25 and collapsed["worst_share"] > 6  # red: 8× its share, circle: 3×
    assert collapsed["histograms"]["color"]["red"] == len(red_circles)
    assert collapsed["fid"] > 10 * real["fid"]


def test_the_floor_is_far_below_noise_and_blur():
    floor = metrics.shapes_real_vs_real_fid(64)
    data = ShapesDataset(2000, seed=TRAIN_SEED, size=64, compositions="train").images
    noisy = (data + 0.3 * torch.randn(data.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    blurred = F.interpolate(F.avg_pool2d(data, 4), scale_factor=4, mode="bilinear")
    assert floor < 0.2 * metrics.evaluate_shapes(noisy)["fid"]
    assert floor < 0.2 * metrics.evaluate_shapes(blurred)["fid"]
