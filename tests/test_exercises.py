"""Every exercise check accepts its reference solution and rejects a stub and a wrong answer."""
import inspect

import pytest
import torch

from minidiff import exercises, solutions

CHECKS = {name[len("check_"):]: fn for name, fn in inspect.getmembers(exercises, inspect.isfunction)
          if name.startswith("check_")}


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_reference_solution_passes(name, capsys):
    assert CHECKS[name](getattr(solutions, name)) is True
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_stub_is_reported_not_raised(name, capsys):
    assert CHECKS[name](stub) is False
    assert "not implemented yet" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_wrong_answer_fails_with_a_hint(name, capsys):
    assert CHECKS[name](lambda x, *rest: x * 0 + 0.5) is False
    assert "❌" in capsys.readouterr().out


def test_wrong_shape_is_explained(capsys):
    assert exercises.check_mosaic(lambda x, block: x[..., ::block, ::block]) is False
    assert "shape" in capsys.readouterr().out


def test_add_noise_keeps_unit_variance():
    x, noise = torch.randn(100_000), torch.randn(100_000)
    assert abs(solutions.add_noise(x, noise, 0.4).var().item() - 1) < 0.02
